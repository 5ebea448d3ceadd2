"""Loader worker processes that live across epochs (`loader.WorkerPool`, issue 14 section 2): the
very batches of DataLoader's fresh workers, the same RNG draw, errors as one line, early stops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.handmade import TRAIN_SIZES, cfg, make_dataset
from wlasl_shards.train import data, loader


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    """train: 5 shards (31 samples); val: 3 shards (7 samples)."""
    return make_dataset(tmp_path_factory.mktemp("ds"), {"train": TRAIN_SIZES, "val": [3, 1, 3]})


def _batches(batches) -> tuple[list, torch.Tensor]:
    """The batches of one iteration, and the next numbers torch's global generator gives after it."""
    torch.manual_seed(7)
    out = list(batches)
    return out, torch.rand(3)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # on 2-core machines
@pytest.mark.parametrize("workers", [2, 3])
def test_pool_gives_the_very_batches_of_fresh_dataloader_workers(ds, workers):
    c = cfg(num_workers=workers)
    with loader.WorkerPool(workers) as pool:
        pids = pool.pids()
        for epoch in (0, 1):
            want, rng_want = _batches(loader.make_train_loader(ds, c, epoch))
            got, rng_got = _batches(loader.make_train_loader(ds, c, epoch, pool=pool))
            assert len(got) == len(want) == 15
            for (x1, y1), (x2, y2) in zip(want, got):
                assert torch.equal(y1, y2) and torch.equal(x1, x2)
            assert torch.equal(rng_got, rng_want)  # the base-seed draw is kept: dropout sees the same numbers
            want_eval = list(loader.make_eval_loader(ds, c, "val"))
            got_eval = list(loader.make_eval_loader(ds, c, "val", pool=pool))
            assert [ids for _, _, ids in got_eval] == [ids for _, _, ids in want_eval] and len(got_eval) == 7
            assert all(torch.equal(a[0], b[0]) for a, b in zip(want_eval, got_eval))
        assert pool.pids() == pids and all(p.is_alive() for p in pool._procs)  # the same processes throughout
    assert not any(p.is_alive() for p in pool._procs)


def test_pool_stops_early_and_goes_on_with_the_next_stream(ds):
    c = cfg(num_workers=2)
    with loader.WorkerPool(2, ahead=2) as pool:
        first = iter(loader.make_train_loader(ds, c, 0, pool=pool))
        next(first)
        first.close()  # precise BN takes a few batches only
        got = list(loader.make_train_loader(ds, c, 0, pool=pool))
        want = list(loader.make_train_loader(ds, c, 0))
        assert all(torch.equal(a[1], b[1]) for a, b in zip(got, want)) and len(got) == len(want)


def test_clips_cross_in_slots_made_once_and_reused(ds):
    """Training clips come through each worker's few shared-memory slots (7 here), none through a
    fresh segment, and the batches are the in-process ones."""
    c = cfg(num_workers=2)
    with loader.WorkerPool.for_config(c) as pool:
        for epoch in (0, 1):
            want = list(loader.make_train_loader(ds, c, epoch))
            got = list(loader.make_train_loader(ds, c, epoch, pool=pool))
            assert len(got) == len(want) == 15
            assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(want, got))
        made = pool.crossings["new_slot"]
        assert pool.crossings == {"slot": 60, "new_slot": made, "segment": 0} and 2 <= made <= 2 * 7


def test_clips_a_consumer_keeps_are_never_overwritten(ds):
    """A consumer that keeps every clip holds all the slots: the rest come through torch's segments,
    every clip right; once it lets them go, the slots serve again and no new one is made."""
    c = cfg(num_workers=2)
    want = [e["clip"] for e in loader.make_train_loader(ds, c, 0)._examples()]
    with loader.WorkerPool.for_config(c) as pool:  # 7 slots per worker
        kept = [e["clip"] for e in loader.make_train_loader(ds, c, 0, pool=pool)._examples()]
        assert len(kept) == len(want) == 30 and all(torch.equal(a, b) for a, b in zip(kept, want))
        assert pool.crossings == {"slot": 14, "new_slot": 14, "segment": 16}
        del kept
        assert len(list(loader.make_train_loader(ds, c, 1, pool=pool))) == 15
        assert pool.crossings == {"slot": 44, "new_slot": 14, "segment": 16}


def test_slots_are_reused_grown_and_given_up_as_the_trainer_frees_them():
    """A worker's slot writer on its own (eval clips differ in length): a new slot travels once, a freed
    one that fits is reused as it is, a too-small one is grown (and travels again), and with every slot
    held the clip goes as it is."""
    busy = torch.zeros(2, dtype=torch.uint8)
    writer = loader._SlotWriter(busy)

    def clip(frames: int, value: int) -> dict:
        return {"clip": torch.full((frames, 2, 2, 3), value, dtype=torch.uint8), "label": value}

    def pack(frames: int, value: int) -> tuple:
        packed = writer.pack(clip(frames, value))
        if "clip" in packed:
            return None, None
        writer.sent(packed, delivered=True)
        k, shape, new = packed[loader._SLOT]
        assert shape == (frames, 2, 2, 3) and packed["label"] == value
        assert torch.equal(writer.buffers[k][:frames * 12], torch.full((frames * 12,), value, dtype=torch.uint8))
        return k, new

    k0, new0 = pack(1, 10)
    k1, new1 = pack(3, 11)
    assert (k0, k1) == (0, 1) and new0 is not None and new1 is not None and busy.tolist() == [1, 1]
    assert pack(1, 12) == (None, None)  # both held by the trainer: the clip goes as it is
    busy[0] = 0  # the trainer let go of slot 0 (12 bytes): a 2-frame clip does not fit it, so it grows
    k, new = pack(2, 13)
    assert k == 0 and new is not None and new.numel() == 24
    busy[:] = 0
    assert pack(2, 14) == (0, None)  # fits slot 0 (24 bytes) best; the trainer has it mapped already
    packed = writer.pack(clip(3, 15))
    writer.sent(packed, delivered=False)  # a cancelled stream: never sent, so the slot is free again
    assert packed[loader._SLOT][0] == 1 and busy.tolist() == [1, 0]


def test_pool_worker_error_is_the_one_line_it_is_in_process(ds, tmp_path):
    root = make_dataset(tmp_path / "broken", {"train": [3, 3]})
    (root / "train" / "shard-000001.tar").unlink()
    c = cfg(num_workers=2, shard_errors="stop", batch_size=1)
    with pytest.raises(data.DataError) as inline:
        list(loader.make_train_loader(root, cfg(num_workers=0, shard_errors="stop", batch_size=1), 0))
    with loader.WorkerPool(2) as pool:
        with pytest.raises(data.DataError) as pooled:
            list(loader.make_train_loader(root, c, 0, pool=pool))
        assert str(pooled.value) == str(inline.value) and "\n" not in str(pooled.value)
        assert len(list(loader.make_train_loader(ds, c, 0, pool=pool))) == 31  # the pool still works
    with pytest.raises(ValueError, match="a pool of 2 workers for a loader of 3"):
        with loader.WorkerPool(2) as pool:
            list(loader.make_train_loader(ds, cfg(num_workers=3), 0, pool=pool))


def test_a_worker_killed_mid_epoch_ends_the_epoch_in_an_error_naming_it(ds):
    """A pool worker that dies (the OOM killer, SIGBUS on a full /dev/shm) is an error within seconds,
    naming the worker and the signal, never a wait for it forever."""
    import os
    import signal
    import time

    c = cfg(num_workers=2)
    with loader.WorkerPool.for_config(c) as pool:
        batches = iter(loader.make_train_loader(ds, c, 0, pool=pool))
        next(batches)
        pid = pool.pids()[1]
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(data.DataError) as err:
            list(batches)
        assert str(err.value) == f"loader worker 1 (pid {pid}) was killed by SIGKILL"
        assert time.monotonic() - started < 5


def test_pool_workers_end_when_the_trainer_is_killed(tmp_path):
    """SIGKILL runs no clean-up: the workers notice their parent is gone and end (no orphans)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys, time\nfrom wlasl_shards.train.loader import WorkerPool\npool = WorkerPool(2)\n"
              "print(*pool.pids(), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _alive(p)]
    assert len(pids) == 2 and alive == []


def _alive(pid: int) -> bool:
    import os
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # an exited child of init waits to be reaped: a zombie is gone
        return f.read().split(")")[-1].split()[0] != "Z"
