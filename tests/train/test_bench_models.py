"""benchmarks/bench_models.py on the CPU: the table's rows and figures, and its train() column."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import run_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_models_table_on_the_cpu(tiny_shards):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_models.py"), "--archs", "r3d_18",
                           "--frames", "4", "--crop", "32", "--repeats", "1", "--shards", str(tiny_shards),
                           "--train-steps", "3"], capture_output=True, text=True, env=run_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["i3d"],
                                                                                                       ["r3d_18"])}
    assert set(rows) == {"i3d", "r3d_18"}  # i3d joins as the ratios' reference
    # arch, native, params, GFLOPs, CPU input, fwd+bwd ms, x i3d, train(), /model
    i3d, r3d = rows["i3d"], rows["r3d_18"]
    assert (i3d[1], r3d[1]) == ("64x224", "16x112")
    assert (i3d[2], r3d[2]) == ("12.4M", "33.2M")  # with a 100-class head
    assert float(r3d[3]) == pytest.approx(40.7, abs=0.1)  # torchvision's published 40.697 GFLOPs
    assert i3d[6] == "1.00" and float(r3d[6]) > 0
    assert float(r3d[7]) > 0 and float(r3d[8]) > 0
    assert "no GPU: the GPU columns are not measured" in proc.stdout
