"""The WebDataset input pipeline on tiny shards written here with the contract's own functions.

Every sample gets its own class (label == global sample number), so labels identify samples.
"""

from __future__ import annotations

import collections
import hashlib
import io
import itertools
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import encode_jpeg
from wlasl_shards import shards
from wlasl_shards.train import data
from wlasl_shards.train.data import LoaderConfig, ShardPart

FRAMES, SIZE, CROP, CLIP = 20, 32, 24, 8
TRAIN_SIZES = [7, 5, 9, 4, 6]  # 31 samples, 5 shards: divisible by neither 2 nor 3


def frame(value: int) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8, flat: survives JPEG almost exactly."""
    return np.full((SIZE, SIZE, 3), value % 256, np.uint8)


def sample_blob(label: int, count: int, codec: str) -> tuple[bytes, list[int] | None]:
    if codec == "npy":
        return shards.encode_npy(np.stack([frame(label * 7 + t) for t in range(count)])), None
    jpegs = [encode_jpeg(frame(label * 7 + t), 90) for t in range(count)]
    return b"".join(jpegs), np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).tolist()


def members(label: int, split: str, count: int, codec: str, bad: str | None) -> list[tuple[str, bytes]]:
    """The tar members of one sample; `bad` breaks it: json | jpeg | no-cls | label."""
    blob, offsets = sample_blob(label, count, codec)
    video_id = f"v{label:03d}.mp4"  # a dot, so the key must be sanitised
    meta = {"video_id": video_id, "label": label, "split": split, "num_frames": count,
            "frames": shards.frames_meta(codec, count, SIZE, SIZE, offsets)}
    if bad == "jpeg":
        blob = bytes(len(blob))  # zeros: offsets valid, no frame decodes
    out = shards.sample_members(shards.sample_key(video_id), meta, blob)
    if bad == "json":
        out = [(n, b"{not json" if n.endswith(".json") else d) for n, d in out]
    elif bad == "no-cls":
        out = [(n, d) for n, d in out if not n.endswith(".cls")]
    elif bad == "label":
        out = [(n, b"seven" if n.endswith(".cls") else d) for n, d in out]
    return out


def make_dataset(root: Path, splits: dict[str, list[int]], codec: str = "jpeg", count: int = FRAMES,
                 bad: dict[int, str] | None = None) -> Path:
    """Shards of `splits` ({split: samples per shard}) and dataset.json under root. Samples are
    numbered across all splits; `bad` maps sample numbers to a way of breaking them."""
    bad = bad or {}
    index_splits, label = {}, 0
    for split, sizes in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i, size in enumerate(sizes):
            name = shards.shard_name(split, i)
            with tarfile.open(root / name, "w", format=tarfile.PAX_FORMAT) as tar:
                for _ in range(size):
                    for mname, blob in members(label, split, count, codec, bad.get(label)):
                        tar.addfile(shards.tar_member(mname, len(blob)), io.BytesIO(blob))
                    label += 1
            raw = (root / name).read_bytes()
            records.append(shards.ShardRecord(name, size, size * count, len(raw),
                                              hashlib.sha256(raw).hexdigest()).to_json())
        index_splits[split] = {"samples": sum(sizes), "shards": records}
    index = {"format": shards.FORMAT_NAME, "format_version": shards.FORMAT_VERSION,
             "classes": [f"gloss{i}" for i in range(label)], "splits": index_splits,
             "params": {"fps": 25.0, "size": SIZE, "codec": codec}}
    (root / shards.INDEX_NAME).write_text(json.dumps(index))
    return root


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    """train: 5 shards (31 samples, labels 0..30); val: 3 shards (7 samples, labels 31..37)."""
    return make_dataset(tmp_path_factory.mktemp("ds"), {"train": TRAIN_SIZES, "val": [3, 1, 3]})


def cfg(**kw) -> LoaderConfig:
    return LoaderConfig(**{"clip_len": CLIP, "crop_size": CROP, "batch_size": 2, "num_workers": 0,
                           "shuffle_buffer": 4, "pin_memory": False, **kw})


def train_labels(ds: Path, c: LoaderConfig, epoch: int = 0, rank: int = 0, world: int = 1) -> list[int]:
    loader = data.make_train_loader(ds, c, epoch, rank, world)
    out = []
    for clips, labels in loader:
        assert clips.shape == (c.batch_size, CLIP, CROP, CROP, 3) and clips.dtype == torch.uint8
        assert labels.dtype == torch.int64
        out += labels.tolist()
    return out


def eval_ids(ds: Path, c: LoaderConfig, split: str = "val", rank: int = 0, world: int = 1) -> list[str]:
    ids = []
    for clips, labels, vids in data.make_eval_loader(ds, c, split, rank, world):
        assert clips.shape[0] == labels.shape[0] == len(vids)
        ids += vids
    return ids


# ------------------------------------------------------------------------------ index and paths


def test_load_index_from_directory_or_file(ds):
    assert data.load_index(ds)["splits"]["train"]["samples"] == 31
    assert data.load_index(ds / shards.INDEX_NAME) == data.load_index(str(ds))
    urls = data.shard_urls(ds / shards.INDEX_NAME, "val")
    assert urls == [str(ds / f"val/shard-00000{i}.tar") for i in range(3)]
    assert all(Path(u).is_file() for u in urls)
    assert data.shard_urls(f"file://{ds}", "val") == urls


def test_bad_dataset_arguments_say_what_is_wrong(ds, tmp_path):
    with pytest.raises(ValueError, match="no dataset.json at"):
        data.load_index(tmp_path)
    with pytest.raises(ValueError, match="unsupported URL scheme ftp://"):
        data.load_index("ftp://host/shards")
    with pytest.raises(ValueError, match="no split 'test' \\(has train, val\\)"):
        data.shard_urls(ds, "test")
    with pytest.raises(ValueError, match="crop_size 48 is larger"):
        data.make_eval_loader(ds, cfg(crop_size=48))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        data.make_train_loader(ds, cfg(batch_size=0), 0)
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1, got rank 2 of world_size 2"):
        data.make_train_loader(ds, cfg(), 0, rank=2, world_size=2)


# ------------------------------------------------------------------------------------ the plan


def parts(sizes=TRAIN_SIZES) -> list[ShardPart]:
    return [ShardPart(f"s{i}", n) for i, n in enumerate(sizes)]


def kept(ps: list[ShardPart]) -> list[tuple[str, int]]:
    return [(p.url, i) for p in ps for i in range(p.samples) if p.keeps(i)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 11])
def test_split_parts_partitions_the_samples(n):
    every = kept(parts())
    shares = [kept(data.split_parts(parts(), n, j)) for j in range(n)]
    assert sorted(s for share in shares for s in share) == sorted(every)
    assert all(share for share in shares)  # fewer parts than shares: samples are split instead
    for share, j in zip(shares, range(n)):
        assert sum(p.count for p in data.split_parts(parts(), n, j)) == len(share)


def test_split_parts_of_split_parts_still_partitions():
    rank = data.split_parts(parts([10]), 2, 1)  # odd samples
    workers = [data.split_parts(rank, 3, w) for w in range(3)]
    assert sorted(s for w in workers for s in kept(w)) == [("s0", i) for i in (1, 3, 5, 7, 9)]
    assert [kept(w) for w in workers] == [[("s0", 1), ("s0", 7)], [("s0", 3), ("s0", 9)], [("s0", 5)]]


def test_head_takes_the_first_samples_of_a_part():
    p = ShardPart("s", 10).split(3, 1)  # 1, 4, 7
    assert kept([p.head(2)]) == [("s", 1), ("s", 4)] and p.head(2).count == 2
    assert p.head(3).count == 3


def test_shard_order_depends_on_seed_epoch_and_cycle_only():
    ps = parts()
    assert data.shard_order(ps, 0, 0, 0) == data.shard_order(list(ps), 0, 0, 0)
    orders = {tuple(p.url for p in data.shard_order(ps, s, e, c)) for s in (0, 1) for e in (0, 1) for c in (0, 1)}
    assert len(orders) > 4
    assert [p.url for p in data.shard_order(ps, 0, 0, 0)] != [p.url for p in data.shard_order(ps, 0, 1, 0)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_plans_meet_the_budget_exactly(world, epoch):
    budget = data.batches_per_epoch(31, world, 2) * 2
    for rank in range(world):
        plan = data.plan_rank(parts(), 0, epoch, rank, world, budget)
        assert sum(p.count for ps in plan for p in ps) == budget
        for workers in (1, 2, 3):
            assert sum(data.worker_budget(plan, w, workers) for w in range(workers)) == budget
        if len(plan) == 1:  # one pass: no sample twice
            assert len(set(kept(plan[0]))) == budget


def test_batches_per_epoch():
    assert data.batches_per_epoch(31, 2, 2) == 7
    assert data.batches_per_epoch(31, 3, 2) == 5
    assert data.batches_per_epoch(3, 4, 8) == 1  # never zero: a rank with no batch breaks the loop


# -------------------------------------------------------------------------------------- stages


def test_shuffle_buffer_is_a_seeded_permutation():
    items = list(range(50))
    a = list(data.shuffle_buffer(items, 10, random.Random(1)))
    assert sorted(a) == items and a != items
    assert a == list(data.shuffle_buffer(iter(items), 10, random.Random(1)))
    assert list(data.shuffle_buffer(items, 0, random.Random(1))) == items
    assert sorted(data.shuffle_buffer(items[:3], 10, random.Random(1))) == [0, 1, 2]


def test_map_samples_skips_counts_and_bounds_failures_in_a_row():
    def fn(s):
        if s["x"] < 0:
            raise ValueError("negative")
        return s["x"]

    errors = data.SkipCounter(max_consecutive=2)
    samples = [{"x": 1}, {"x": -1, "__url__": "u", "__key__": "k"}, {"x": -2}, {"x": 3}, {"x": -3}]
    assert list(data.map_samples(samples, fn, errors)) == [1, 3]
    assert errors.skipped == 3 and errors.reasons[0] == "u: k: ValueError: negative"
    with pytest.raises(data.DataError, match="3 bad samples in a row .*shard u, sample k"):
        list(data.map_samples([{"x": -1, "__url__": "u", "__key__": "k"}] * 3, fn, data.SkipCounter(2)))


# --------------------------------------------------------------------------------- train loader


def test_same_seed_and_epoch_give_the_same_stream_and_other_epochs_differ(ds):
    c = cfg()
    loader = data.make_train_loader(ds, c, 3)
    first = [(x.clone(), y.clone()) for x, y in loader]
    again = list(loader)  # iterating again replays the epoch
    assert len(first) == len(loader) == 15
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert train_labels(ds, c, epoch=3) == [int(v) for _, y in first for v in y]
    assert train_labels(ds, c, epoch=4) != train_labels(ds, c, epoch=3)
    assert train_labels(ds, cfg(seed=1), epoch=3) != train_labels(ds, c, epoch=3)


def test_clips_are_windows_of_the_video(ds):
    """Flat frames hold label * 7 + t: a clip is 8 consecutive values of its own sample."""
    for clips, labels in data.make_train_loader(ds, cfg(), 0):
        for clip, label in zip(clips, labels.tolist()):
            values = clip.float().mean(dim=(1, 2, 3)).round().long() - label * 7
            assert values.tolist() == list(range(values[0], values[0] + CLIP)), (label, values)
            assert 0 <= values[0] <= FRAMES - CLIP


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_same_number_of_batches(ds, world):
    c = cfg()
    expected = data.batches_per_epoch(31, world, c.batch_size)
    cycled = False
    for epoch in (0, 1):
        for rank in range(world):
            labels = train_labels(ds, c, epoch, rank, world)
            assert len(labels) == expected * c.batch_size
            plan = data.plan_rank(data.shard_parts(ds, "train"), c.seed, epoch, rank, world, len(labels))
            if len(plan) == 1:  # the rank's shards had enough: no sample twice
                assert len(set(labels)) == len(labels)
            else:
                cycled = True
                assert max(collections.Counter(labels).values()) <= len(plan)
    assert cycled or world == 2  # 31 samples over 3 ranks of 10: some rank must go round again


def test_only_the_window_frames_are_decoded(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "a", {"train": [4, 4]})
    short = make_dataset(tmp_path / "b", {"train": [4, 4]}, count=5)  # padded: 5 distinct frames of 8
    opened = []
    real_decode = shards.simplejpeg.decode_jpeg
    monkeypatch.setattr(shards.simplejpeg, "decode_jpeg", lambda *a, **k: opened.append(1) or real_decode(*a, **k))
    assert len(train_labels(root, cfg())) == 8
    assert len(opened) == 8 * CLIP  # 8 of 20 frames per video
    opened.clear()
    assert len(train_labels(short, cfg())) == 8
    assert len(opened) == 8 * 5


def test_npy_shards_read_too(tmp_path):
    root = make_dataset(tmp_path, {"train": [3, 3]}, codec="npy")
    for clips, labels in data.make_train_loader(root, cfg(flip=False), 0):
        for clip, label in zip(clips, labels.tolist()):
            start = int(clip[0, 0, 0, 0]) - label * 7  # npy is lossless: exact values
            expected = torch.tensor([label * 7 + start + t for t in range(CLIP)], dtype=torch.uint8)
            assert torch.equal(clip[:, 5, 7, 1], expected)


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
        procs = list(data.make_train_loader(ds, cfg(num_workers=workers), epoch))
        threads = list(data.make_train_loader(ds, cfg(num_workers=workers, worker_mode="thread"), epoch))
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

    merged = list(data.round_robin_threads([lambda: stream("a", 2), lambda: stream("b", 4),
                                            lambda: stream("c", 3)], ahead=2))
    assert merged == ["a0", "b0", "c0", "a1", "b1", "c1", "b2", "c2", "b3"]
    with pytest.raises(OSError, match="b broke"):
        list(data.round_robin_threads([lambda: stream("a", 5), lambda: stream("b", 1, fail=True)], ahead=1))
    closed = []

    def endless(name: str):
        try:
            for i in itertools.count():
                yield f"{name}{i}"
        finally:
            closed.append(name)

    it = data.round_robin_threads([lambda: endless("x"), lambda: endless("y")], ahead=3)
    assert [next(it) for _ in range(5)] == ["x0", "y0", "x1", "y1", "x2"]
    it.close()  # the consumer stops: both threads end and close their streams
    assert sorted(closed) == ["x", "y"]
    assert not [t for t in threading.enumerate() if t.name.startswith("wlasl-loader")]


def test_batches_held_by_the_caller_are_never_overwritten(ds):
    """Collated CPU batches live in recycled memory (BufferPool): a batch still referenced must keep its
    values while later batches are made."""
    held = [(x, x.clone()) for x, _ in data.make_train_loader(ds, cfg(), 0)]
    assert len(held) == 15
    assert len({x.data_ptr() for x, _ in held}) == 15  # all alive, so all in different buffers
    for x, copy in held:
        assert torch.equal(x, copy)


def test_buffer_pool_recycles_memory_only_when_no_view_is_left():
    pool = data.BufferPool(keep=2)
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
    batches = list(data.make_eval_loader(root, cfg(crop_size=30), "val"))
    assert len(batches) == 2
    for clips, labels, vids in batches:
        assert clips.shape == (1, 12, 30, 30, 3) and vids == [f"v{labels.item():03d}.mp4"]
        assert clips[0, :, 0, 0, 0].tolist() == [(labels.item() * 7 + t) % 256 for t in range(12)]


def test_eval_pads_short_videos_and_batches_of_several(tmp_path):
    root = make_dataset(tmp_path, {"val": [3]}, codec="npy", count=4)
    (clips, labels, vids), (clips2, _, vids2) = list(data.make_eval_loader(root, cfg(eval_batch_size=2), "val"))
    assert clips.shape == (2, 9, CROP, CROP, 3) and len(vids) == 2  # 4 frames padded to 9
    assert clips[0, :, 0, 0, 0].tolist() == [0, 7 * 0 + 1, 2, 3, 3, 3, 3, 3, 3]
    assert clips2.shape == (1, 9, CROP, CROP, 3) and vids2 == ["v002.mp4"]


# ------------------------------------------------------------------------------------- bad data


def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog):
    bad = {1: "json", 3: "jpeg", 4: "no-cls", 6: "label"}
    root = make_dataset(tmp_path, {"train": [8], "val": [8]}, bad=bad)
    loader = data.make_eval_loader(root, cfg(), "train")
    ids = [v for _, _, vids in loader for v in vids]
    assert ids == ["v000.mp4", "v002.mp4", "v005.mp4", "v007.mp4"]
    assert loader.skipped == 4
    reasons = "\n".join(loader.skip_reasons)
    for why in ("JSONDecodeError", "missing member .cls", "label b'seven' is not an integer", "v003"):
        assert why in reasons
    assert "train/shard-000000.tar" in reasons
    assert "skipped a bad sample" in caplog.text
    # Training replaces skipped samples: still exactly 4 full batches of 2, and thread workers report
    # their skips as worker processes do.
    for c in (cfg(), cfg(num_workers=2, worker_mode="thread")):
        train = data.make_train_loader(root, c, 0)
        assert len([y for _, y in train]) == 4 and train.skipped >= 1
        assert all(0 <= label < 16 and label not in bad for _, y in train for label in y.tolist())


def test_a_truncated_shard_loses_its_tail_only(tmp_path):
    root = make_dataset(tmp_path, {"val": [3, 3]})
    shard = root / "val/shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:2500])  # inside the first sample's frames
    loader = data.make_eval_loader(root, cfg(), "val")
    ids = [v for _, _, vids in loader for v in vids]
    assert ids == ["v000.mp4", "v001.mp4", "v002.mp4"]
    assert loader.skipped == 1 and "val/shard-000001.tar" in loader.skip_reasons[0]


@pytest.mark.parametrize("workers, mode", [(0, "process"), (2, "process"), (2, "thread")])
def test_too_many_bad_samples_in_a_row_stop_naming_the_shard(tmp_path, workers, mode):
    root = make_dataset(tmp_path, {"train": [2, 6]}, bad={3: "json", 4: "jpeg", 5: "label", 6: "json"})
    with pytest.raises(data.DataError, match="4 bad samples in a row.*train/shard-000001.tar"):
        list(data.make_eval_loader(root, cfg(max_consecutive_errors=3, num_workers=workers, worker_mode=mode),
                                   "train"))
    assert len(eval_ids(root, cfg(max_consecutive_errors=4), "train")) == 4


@pytest.mark.parametrize("codec", ["npy", "jpeg"])
def test_train_example_is_the_pure_transform_cropped_while_decoding(codec):
    """The fast path (crop inside decode_frames, mirror as BGR bytes reversed) equals
    transforms.train_crop on the decoded frames with the same rng draws, for every crop position and
    flip coin drawn."""
    from wlasl_shards.train import transforms

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, SIZE, SIZE + 8, 3), dtype=np.uint8)
    if codec == "npy":
        blob, offsets = shards.encode_npy(frames), None
    else:
        jpegs = [encode_jpeg(f, 90) for f in frames]
        blob, offsets = b"".join(jpegs), np.cumsum([0] + [len(j) for j in jpegs]).tolist()
    meta = {"video_id": "x", "label": 1,
            "frames": shards.frames_meta(codec, 12, SIZE, SIZE + 8, offsets)}
    sample = {"json": json.dumps(meta).encode(), "cls": b"1", shards.EXT_FRAMES[codec]: blob}
    decoded = shards.decode_frames(sample)
    flipped = []
    for seed in range(8):
        got = data.train_example(sample, cfg(flip=True), 3, np.random.default_rng(seed))["clip"].numpy()
        ref = np.random.default_rng(seed)
        window = transforms.train_window(12, CLIP, ref)
        assert np.array_equal(got, transforms.train_crop(decoded[window], CROP, True, ref))
        ref = np.random.default_rng(seed)
        window = transforms.train_window(12, CLIP, ref)
        flipped.append(not np.array_equal(got, transforms.train_crop(decoded[window], CROP, False, ref)))
    assert any(flipped) and not all(flipped)
    bgr = shards.decode_frames(sample, [3, 0], (2, 5, 20), channels="BGR")
    assert np.array_equal(bgr, decoded[[3, 0], 2:22, 5:25, ::-1])
    with pytest.raises(ValueError, match="channels must be 'RGB' or 'BGR', got 'rgb'"):
        shards.decode_frames(sample, channels="rgb")
