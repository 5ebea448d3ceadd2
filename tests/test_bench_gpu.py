"""benchmarks/bench_gpu.py's WLASL100-shaped whole run, on a tiny dataset on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wlasl_shards.train.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_nslt_entries_and_subsample(bench, tmp_path):
    nslt = tmp_path / "nslt_3.json"
    nslt.write_text(json.dumps({f"{i:05d}": {"subset": ("train", "train", "val", "test")[i % 4],
                                             "action": [i % 3, 1 + i, 10 + 2 * i]} for i in range(20)}))
    entries = bench.read_nslt(nslt)
    assert entries[3] == ("00003", "test", 0, 13)  # inclusive range 4..16
    picked = bench.subsample(entries, 0.25)
    assert [e[1] for e in picked].count("train") == 2 and [e[1] for e in picked].count("val") == 1
    assert [e[0] for e in picked if e[1] == "train"] == ["00000", "00009"]  # rows 0 and 5 of the 10
    with pytest.raises(SystemExit, match=r"--nslt .*missing.json: no such file.*pass --nslt PATH"):
        bench.read_nslt(tmp_path / "missing.json")


@pytest.mark.slow
def test_whole_run_table_on_a_tiny_dataset(bench, tmp_path):
    """The whole-run function end to end (synthetic videos, build, train, phase timing, model-only
    rate), with the tiniest settings: the table has every row and its figures add up."""
    entries = [(f"{i + 1:05d}", split, i % 2, 10 + i % 3)
               for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2)]
    shape = bench.Shape(1.0, 12, (64, 64), 48, 8, 40, 1, 2)
    dataset = bench.wlasl_like(entries, tmp_path, shape, workers=1)
    cfg = TrainConfig(shards="", run_dir="", epochs=1, batch_size=2, accumulate=1, clip_len=8, crop_size=40,
                      num_workers=0, precise_bn_batches=1, device="cpu", progress=False)
    r = bench.whole_run(dataset, tmp_path / "run", cfg, model_passes=2)
    assert r["splits"] == {"train": 4, "val": 2, "test": 2} and r["epochs"] == 1
    assert r["gpu_busy_whole"] is None  # CPU
    assert 0 < r["train_s"] and 0 < r["validate_s"] and 0 < r["finish_s"]
    assert r["train_s"] + r["validate_s"] + r["finish_s"] < r["wall_s"]
    assert r["train_clips_per_s"] > 0 and r["model_clips_per_s"] > 0
    r["frames"] = [10, 11, 12]
    lines = bench.whole_run_table(r)
    assert "4/2/2 videos" in lines[0] and "frames 10-12 (median 11)" in lines[0]
    rows = {line[:42].strip(): line[42:].split() for line in lines[2:]}
    assert list(rows) == ["wall clock, whole train() (s)", "training epochs (s)", "val + precise BN (s)",
                          "test + report (s)", "other: set-up, checkpoints (s)",
                          "GPU busy, share of the whole wall clock", "training clips/s (metrics, epochs 2+)",
                          "model-only clips/s (resident batch)", "training / model-only"]
    assert rows["GPU busy, share of the whole wall clock"][:3] == ["-", "not", "measured"]
    shares = [float(rows[k][1].rstrip("%")) for k in list(rows)[1:5]]
    assert sum(shares) == pytest.approx(100, abs=0.3)
    ratio = float(rows["training / model-only"][0].rstrip("x"))
    assert ratio == pytest.approx(r["train_clips_per_s"] / r["model_clips_per_s"], abs=0.006)
    # the loop's phases are restored after the run
    from wlasl_shards.train import loop
    assert loop.validate.__name__ == "validate" and loop.GpuClock.__module__ == "wlasl_shards.train.device"


def test_whole_run_without_nslt_says_so(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--quick", "--nslt",
                          str(tmp_path / "nslt_100.json")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(f"--nslt {tmp_path / 'nslt_100.json'}: no such file")
