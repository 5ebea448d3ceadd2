"""The loaders of one rank on tiny hand-made shards (`handmade`): exact and equal batch counts,
determinism, worker processes vs threads, batch buffers, evaluation coverage."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pytest
import torch

from tests.train.handmade import CROP, TRAIN_SIZES, cfg, eval_ids, make_dataset, train_labels
from wlasl_shards.train import data, loader, plan


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    """train: 5 shards (31 samples, labels 0..30); val: 3 shards (7 samples, labels 31..37)."""
    return make_dataset(tmp_path_factory.mktemp("ds"), {"train": TRAIN_SIZES, "val": [3, 1, 3]})


def test_bad_loader_arguments_say_what_is_wrong(ds, tmp_path):
    with pytest.raises(ValueError, match="crop_size 48 is larger"):
        loader.make_eval_loader(ds, cfg(crop_size=48))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        loader.make_train_loader(ds, cfg(batch_size=0), 0)
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1, got rank 2 of world_size 2"):
        loader.make_train_loader(ds, cfg(), 0, rank=2, world_size=2)


# --------------------------------------------------------------------------------- train loader


def test_same_seed_and_epoch_give_the_same_stream_and_other_epochs_differ(ds):
    c = cfg()
    batches = loader.make_train_loader(ds, c, 3)
    first = [(x.clone(), y.clone()) for x, y in batches]
    again = list(batches)  # iterating again replays the epoch
    assert len(first) == len(batches) == 15
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert train_labels(ds, c, epoch=3) == [int(v) for _, y in first for v in y]
    assert train_labels(ds, c, epoch=4) != train_labels(ds, c, epoch=3)
    assert train_labels(ds, cfg(seed=1), epoch=3) != train_labels(ds, c, epoch=3)


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_same_number_of_batches(ds, world):
    c = cfg()
    expected = plan.batches_per_epoch(31, world, c.batch_size)
    cycled = False
    for epoch in (0, 1):
        for rank in range(world):
            labels = train_labels(ds, c, epoch, rank, world)
            assert len(labels) == expected * c.batch_size
            rank_plan = plan.plan_rank(data.shard_parts(ds, "train"), c.seed, epoch, rank, world, len(labels))
            if len(rank_plan) == 1:  # the rank's shards had enough: no sample twice
                assert len(set(labels)) == len(labels)
            else:
                cycled = True
                assert max(collections.Counter(labels).values()) <= len(rank_plan)
    assert cycled or world == 2  # 31 samples over 3 ranks of 10: some rank must go round again

def test_workers_give_the_same_samples_as_the_main_process(ds):
    for rank, world in ((0, 1), (1, 2)):
        inline = train_labels(ds, cfg(num_workers=0), 1, rank, world)
        workers = train_labels(ds, cfg(num_workers=2), 1, rank, world)
        assert len(workers) == len(inline)
        assert sorted(workers) == sorted(inline)
    assert sorted(eval_ids(ds, cfg(num_workers=2), "train")) == [f"v{i:03d}.mp4" for i in range(31)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # on 2-core machines
@pytest.mark.parametrize("workers", [2, 3])
def test_thread_workers_give_the_very_batches_of_worker_processes(ds, workers):
    """Same streams, same round-robin merge as DataLoader: identical batches, pixels included, for
    training (3 workers: streams of unequal length end at different times) and for evaluation."""
    for epoch in (0, 1):
        procs = list(loader.make_train_loader(ds, cfg(num_workers=workers), epoch))
        threads = list(loader.make_train_loader(ds, cfg(num_workers=workers, worker_mode="thread"), epoch))
        assert len(threads) == len(procs) == 15
        for (x1, y1), (x2, y2) in zip(procs, threads):
            assert torch.equal(y1, y2) and torch.equal(x1, x2)
    assert (eval_ids(ds, cfg(num_workers=workers, worker_mode="thread"), "train")
            == eval_ids(ds, cfg(num_workers=workers), "train"))


def test_round_robin_threads_orders_raises_and_stops_early():
    import threading

    def stream(name: str, n: int, fail: bool = False):
        for i in range(n):
            yield f"{name}{i}"
        if fail:
            raise OSError(f"{name} broke")

    merged = list(loader.round_robin_threads([lambda: stream("a", 2), lambda: stream("b", 4),
                                            lambda: stream("c", 3)], ahead=2))
    assert merged == ["a0", "b0", "c0", "a1", "b1", "c1", "b2", "c2", "b3"]
    with pytest.raises(OSError, match="b broke"):
        list(loader.round_robin_threads([lambda: stream("a", 5), lambda: stream("b", 1, fail=True)], ahead=1))
    closed = []

    def endless(name: str):
        try:
            for i in itertools.count():
                yield f"{name}{i}"
        finally:
            closed.append(name)

    it = loader.round_robin_threads([lambda: endless("x"), lambda: endless("y")], ahead=3)
    assert [next(it) for _ in range(5)] == ["x0", "y0", "x1", "y1", "x2"]
    it.close()  # the consumer stops: both threads end and close their streams
    assert sorted(closed) == ["x", "y"]
    assert not [t for t in threading.enumerate() if t.name.startswith("wlasl-loader")]


def test_batches_held_by_the_caller_are_never_overwritten(ds):
    """Collated CPU batches live in recycled memory (BufferPool): a batch still referenced must keep its
    values while later batches are made."""
    held = [(x, x.clone()) for x, _ in loader.make_train_loader(ds, cfg(), 0)]
    assert len(held) == 15
    assert len({x.data_ptr() for x, _ in held}) == 15  # all alive, so all in different buffers
    for x, copy in held:
        assert torch.equal(x, copy)


def test_buffer_pool_recycles_memory_only_when_no_view_is_left():
    pool = loader.BufferPool(keep=2)
    t = pool.empty((2, 3, 4))
    t.fill_(7)
    ptr = t.data_ptr()
    del t
    u = pool.empty((4, 6))  # same size, other shape: the freed buffer again
    assert u.data_ptr() == ptr and u.shape == (4, 6)
    row, arr = u[1], u.numpy()
    del u
    assert pool.empty((4, 6)).data_ptr() != ptr  # a view and a numpy array still hold it
    del row
    assert pool.empty((4, 6)).data_ptr() != ptr
    del arr
    v = pool.empty((24,))
    assert v.data_ptr() == ptr and v.dtype == torch.uint8
    assert pool.empty((5,)).shape == (5,)  # no free buffer of that size: a new one
    many = [pool.empty((8,)) for _ in range(4)]
    del many
    assert sum(b.size == 8 for b in pool._free) == 2  # at most `keep` held back


# ---------------------------------------------------------------------------------- eval loader


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_eval_covers_every_sample_exactly_once_over_ranks(ds, world):
    ids = [v for rank in range(world) for v in eval_ids(ds, cfg(), "train", rank, world)]
    assert sorted(ids) == [f"v{i:03d}.mp4" for i in range(31)]
    ids = [v for rank in range(world) for v in eval_ids(ds, cfg(), "val", rank, world)]
    assert sorted(ids) == [f"v{i:03d}.mp4" for i in range(31, 38)]


def test_eval_batches_hold_all_frames_center_cropped(tmp_path):
    root = make_dataset(tmp_path, {"val": [2]}, codec="npy", count=12)
    batches = list(loader.make_eval_loader(root, cfg(crop_size=30), "val"))
    assert len(batches) == 2
    for clips, labels, vids in batches:
        assert clips.shape == (1, 12, 30, 30, 3) and vids == [f"v{labels.item():03d}.mp4"]
        assert clips[0, :, 0, 0, 0].tolist() == [(labels.item() * 7 + t) % 256 for t in range(12)]


def test_eval_pads_short_videos_and_batches_of_several(tmp_path):
    root = make_dataset(tmp_path, {"val": [3]}, codec="npy", count=4)
    (clips, labels, vids), (clips2, _, vids2) = list(loader.make_eval_loader(root, cfg(eval_batch_size=2), "val"))
    assert clips.shape == (2, 9, CROP, CROP, 3) and len(vids) == 2  # 4 frames padded to 9
    assert clips[0, :, 0, 0, 0].tolist() == [0, 7 * 0 + 1, 2, 3, 3, 3, 3, 3, 3]
    assert clips2.shape == (1, 9, CROP, CROP, 3) and vids2 == ["v002.mp4"]



def test_a_rank_with_nothing_to_read_stops_with_data_error(tmp_path):
    root = make_dataset(tmp_path, {"train": [1]})  # one sample for two ranks: rank 1's share is empty
    with pytest.raises(data.DataError, match="rank 1 of 2 has no samples to read"):
        list(loader.make_train_loader(root, cfg(batch_size=1), 0, rank=1, world_size=2))


# --------------------------------------------------------------------------- mid-epoch resume


def _position_after(ds: Path, c, epoch: int, k: int) -> dict:
    """Where a loader of `epoch` that yielded `k` batches stopped (`TrainLoader.position`)."""
    first = loader.make_train_loader(ds, c, epoch)
    batches = iter(first)
    for _ in range(k):
        next(batches)
    position = first.position()
    batches.close()
    return position


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("workers,mode", [(0, "process"), (3, "process"), (3, "thread")])
def test_a_resumed_loader_yields_the_rest_of_the_epoch_exactly_without_decoding_the_used_clips(
        tmp_path, monkeypatch, workers, mode):
    """31 samples in 5 shards, samples 3 and 17 bad (skipped, replaced): after k batches, the resumed
    loader gives the uninterrupted epoch's batches k.., pixels and skip count included, and decodes
    only the clips it yields (and the bad JPEG if it comes after the position)."""
    ds = make_dataset(tmp_path / "ds", {"train": TRAIN_SIZES}, bad={3: "json", 17: "jpeg"})
    c = cfg(num_workers=workers, worker_mode=mode)
    full_loader = loader.make_train_loader(ds, c, 1)
    full = [(x.clone(), y.clone()) for x, y in full_loader]
    assert len(full) == 15 and full_loader.skipped == 2
    decoded: list[int] = []
    frames = data._frames
    monkeypatch.setattr(data, "_frames", lambda *a, **kw: decoded.append(1) or frames(*a, **kw))
    for k in (1, 6, 14):
        position = _position_after(ds, c, 1, k)
        decoded.clear()
        resumed = loader.make_train_loader(ds, c, 1, done=k, position=position)
        rest = [(x.clone(), y.clone()) for x, y in resumed]
        assert len(resumed) == 15 and len(rest) == 15 - k
        for (x1, y1), (x2, y2) in zip(full[k:], rest):
            assert torch.equal(y1, y2) and torch.equal(x1, x2)
        assert resumed.skipped == 2
        if mode == "thread" or workers == 0:  # decoding in this process, where it is counted
            assert 2 * (15 - k) <= len(decoded) <= 2 * (15 - k) + 1


def test_a_position_of_other_workers_is_refused(ds):
    first = loader.make_train_loader(ds, cfg(num_workers=2, worker_mode="thread"), 0)
    batches = iter(first)
    next(batches)
    position = first.position()
    batches.close()
    assert [w["produced"] for w in position["workers"]] == [1, 1] and position["first_worker"] == 0
    with pytest.raises(data.DataError, match="a position of 2 loader workers cannot resume with 1"):
        list(loader.make_train_loader(ds, cfg(), 0, done=1, position=position))


def test_group_by_length_batches_equal_frame_counts_within_a_bound():
    def ex(n: int, t: int) -> dict:
        return {"clip": torch.zeros(t, 1, 1, 3), "video_id": n}

    lengths = [9, 12, 9, 9, 12, 20, 12, 9]
    examples = [ex(n, t) for n, t in enumerate(lengths)]

    def groups(batch_size: int, hold: int) -> list[list[int]]:
        return [[e["video_id"] for e in g] for g in loader.group_by_length(examples, batch_size, hold)]

    # Full groups as soon as they fill; the rest at the end, largest first, then by first arrival.
    assert groups(3, 100) == [[0, 2, 3], [1, 4, 6], [5], [7]]
    assert groups(1, 0) == [[n] for n in range(8)]  # batch 1: every video as it comes
    # At most 2 waiting: a third sends the largest waiting group out short (the oldest among equals).
    assert groups(3, 2) == [[0, 2], [1, 4], [3], [5], [6], [7]]
    for batch_size, hold in ((2, 0), (3, 2), (4, 5), (8, 8)):
        got = list(loader.group_by_length(examples, batch_size, hold))
        assert sorted(e["video_id"] for g in got for e in g) == list(range(8))
        assert all(len({e["clip"].shape[0] for e in g}) == 1 and len(g) <= batch_size for g in got)


def test_eval_loader_never_pads_and_keeps_every_video(tmp_path):
    from tests.train.conftest import write_npy_dataset

    root = write_npy_dataset(tmp_path / "mixed", per_class={"val": 3}, frames=(12, 10, 12, 5, 14, 10), size=32)
    for workers, mode in ((0, "process"), (2, "thread"), (2, "process")):
        batches = list(loader.make_eval_loader(root, cfg(crop_size=32, eval_batch_size=3, num_workers=workers,
                                                         worker_mode=mode), "val"))
        assert sorted(v for _, _, vids in batches for v in vids) == [f"val{n:03d}" for n in range(12)]
        # 4 videos of 12 frames, 4 of 10, 2 of 14 and 2 of 5 (padded to 9): batches of 3 at most.
        assert sorted(tuple(c.shape[:2]) for c, _, _ in batches) == [(1, 10), (1, 12), (2, 9), (2, 14), (3, 10),
                                                                    (3, 12)]
        for clips, _, vids in batches:  # 5 frames are padded to the protocol's 9 alone, never to a neighbour's T
            n = [int(v[3:]) for v in vids]
            assert clips.shape[1] == max(9, (12, 10, 12, 5, 14, 10)[n[0] % 6])
            assert len({(12, 10, 12, 5, 14, 10)[i % 6] for i in n}) == 1
