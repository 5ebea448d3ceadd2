"""Evaluation with a torch.compile'd model (issue 14 section 2): dynamic shapes, the same logits.

Inductor compiles the whole I3D in ~10 minutes on a 2-core CPU, so the exactness test compiles a tiny
model made of I3D's own SAME-padded blocks (whose padding depends on the frame count, the part that
dynamic shapes must get right); the wiring tests (evaluate, the CLI, val and test inside train)
replace torch.compile by a recorder and check the compiled module is the one that runs.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch._dynamo.utils import counters

from tests.train.conftest import SMALL
from wlasl_shards.cli import main
from wlasl_shards.train.evaluate import EvaluateConfig, eval_model, evaluate, run_eval
from wlasl_shards.train.loop import TrainConfig, train
from wlasl_shards.train.models.i3d import MaxPool3dSame, Unit3D


class TinyI3D(nn.Module):
    """(B, 3, T, H, W) -> (B, 5, T'): a strided SAME conv, a SAME max pool and a 1x1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Unit3D(3, 4, (3, 3, 3), (2, 2, 2))
        self.pool = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.head = Unit3D(4, 5, batch_norm=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv(x))).mean((3, 4))


@pytest.mark.slow  # inductor's C++ compilation: ~1-1.5 min on 2 shared cores
def test_compiled_eval_logits_equal_eager_for_every_frame_count():
    torch.manual_seed(0)
    model = TinyI3D().eval()
    compiled = eval_model(model, compile=True)
    assert eval_model(model, compile=False) is model
    # 4 frame counts, T and ceil(T / 2) odd in each: the SAME pads take the same branch (each further
    # residue class is a graph of its own, ~1 min of inductor here, hence one class only).
    frames = (9, 13, 17, 21)
    batches = [(torch.randint(0, 256, (2, t, 16, 16, 3), dtype=torch.uint8), torch.tensor([t % 5, 1]))
               for t in frames]
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for (clips, _), t in zip(batches, frames):
            x = clips.permute(0, 4, 1, 2, 3).float() / 255 * 2 - 1
            got, want = compiled(x), model(x)
            assert got.shape == want.shape == (2, 5, (t + 3) // 4)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] - graphs == 1  # dynamic: one graph for every frame count
    eager = run_eval(model, batches, torch.device("cpu"), 5)
    again = run_eval(compiled, batches, torch.device("cpu"), 5)
    assert eager.count == again.count == 8
    assert torch.equal(eager.confusion, again.confusion)
    assert abs(float(eager.loss_sum) - float(again.loss_sum)) < 1e-4


class Recorder:
    """Stands in for torch.compile: the module it returns counts its calls (and runs the module)."""

    def __init__(self) -> None:
        self.made: list[tuple[dict, list[int]]] = []

    def __call__(self, module: nn.Module, **kwargs) -> nn.Module:
        calls: list[int] = []
        self.made.append((kwargs, calls))

        class Counted(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, x):
                calls.append(x.shape[2])
                return self.inner(x)

        return Counted()


def test_evaluate_compile_runs_the_dynamic_compiled_model(reference_run, tiny_shards, tmp_path, monkeypatch):
    best = str(reference_run / "best.pt")
    plain = evaluate(EvaluateConfig(best, str(tiny_shards), device="cpu", num_workers=0, progress=False))
    fake = Recorder()
    monkeypatch.setattr(torch, "compile", fake)
    got = evaluate(EvaluateConfig(best, str(tiny_shards), device="cpu", num_workers=0, progress=False, compile=True))
    assert got == plain
    ((kwargs, calls),) = fake.made
    assert kwargs == {"dynamic": True} and len(calls) == plain["count"]
    # the command's --compile
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(main, ["evaluate", best, str(tiny_shards), "--device", "cpu", "--workers", "0",
                                    "--compile", "--no-progress", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["top1"] == plain["top1"] and len(fake.made) == 2


def test_train_compile_validates_and_tests_with_the_dynamic_compiled_model(tiny_shards, tmp_path, monkeypatch):
    fake = Recorder()
    monkeypatch.setattr(torch, "compile", fake)
    cfg = TrainConfig(shards=str(tiny_shards), run_dir=str(tmp_path / "run"), compile=True, device="cpu",
                      **{**SMALL, "epochs": 1, "precise_bn_batches": 1})
    report = train(cfg)
    (train_kwargs, train_calls), (eval_kwargs, eval_calls) = fake.made
    assert train_kwargs == {} and len(train_calls) == 4  # 8 train clips in batches of 2
    assert eval_kwargs == {"dynamic": True}
    val = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "epoch"][0]["val"]
    assert len(eval_calls) == val["count"] + report["test"]["count"] == 8  # 4 val + 4 test videos, batch 1
