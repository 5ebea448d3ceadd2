"""The CLI is a layer over the API: each command's defaults are its config dataclass's, `--workers 0` means
the same everywhere, and `wlasl-shards demo` runs every step, printing each step's own command."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from wlasl_shards import api
from wlasl_shards.cli import main
from wlasl_shards.preprocess.build import worker_processes


@pytest.fixture
def captured(monkeypatch) -> list:
    """The config each stage function is called with; the call then stops (the command exits 2)."""
    seen: list = []

    def capture(cfg, *args, **kwargs):
        seen.append(cfg)
        raise ValueError("captured")

    from wlasl_shards.train import evaluate, features, loop, predict

    for module, name in ((api.synth_mod, "synth"), (api.build_mod, "build"), (loop, "train"),
                         (evaluate, "evaluate"), (predict, "predict"), (features, "extract")):
        monkeypatch.setattr(module, name, capture)
    return seen


def config_of(captured: list, *args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2 and "Error: captured" in result.output, result.output
    return captured.pop()


def test_every_command_defaults_to_its_config_dataclass(captured, tmp_path):
    ck, shards, video = str(tmp_path / "best.pt"), str(tmp_path / "shards"), str(tmp_path / "v.mp4")
    assert config_of(captured, "synth", str(tmp_path / "s")) == api.SynthConfig()
    assert config_of(captured, "build", "src", shards) == api.BuildConfig(source="src", output=shards)
    assert config_of(captured, "train", shards, "run") == api.TrainConfig(shards=shards, run_dir="run")
    # evaluate writes beside the checkpoint by default, as it always has.
    assert config_of(captured, "evaluate", ck, shards) == api.EvaluateConfig(
        ck, shards, output=str(tmp_path / "eval_test.json"))
    assert config_of(captured, "predict", ck, video) == api.PredictConfig(ck, (video,))
    assert config_of(captured, "features", ck, shards, "out") == api.FeaturesConfig(ck, shards, "out")


def test_workers_0_is_this_process_in_every_command(captured, tmp_path):
    ck, shards = str(tmp_path / "best.pt"), str(tmp_path / "shards")
    zero, three = ["--workers", "0"], ["--workers", "3"]
    # synth and build: 0 worker processes, the videos are converted in this process.
    assert config_of(captured, "synth", "s", *zero).workers == 0
    assert config_of(captured, "build", "src", shards, *zero).workers == 0
    assert [worker_processes(w) for w in (None, 0, 1, 3)] == [os.cpu_count() or 1, 1, 1, 3]
    assert config_of(captured, "synth", "s", *three).workers == 3
    assert config_of(captured, "build", "src", shards, *three).workers == 3
    # The loaders: 0 = read in this process.
    assert config_of(captured, "train", shards, "run", *zero).num_workers == 0
    assert config_of(captured, "evaluate", ck, shards, *zero).num_workers == 0
    assert config_of(captured, "features", ck, shards, "out", *zero).num_workers == 0
    assert config_of(captured, "train", shards, "run", *three).num_workers == 3
    for args in (["synth", "s"], ["build", "src", shards], ["train", shards, "run"], ["evaluate", ck, shards],
                 ["features", ck, shards, "out"]):
        result = CliRunner().invoke(main, [*args, "--workers", "-1"])
        assert result.exit_code == 2 and "-1 is not in the range x>=0" in result.output, args
        assert "0 = none: the work runs in this process" in help_of(args[0]), args[0]


def help_of(command: str) -> str:
    return " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())


def test_help_shows_the_dataclass_defaults():
    out = help_of("build")
    assert "[default: 128MB]" in out and "[default: 256]" in out
    out = help_of("synth")
    assert "[default: 40, 80]" in out and "[default: 1280; x>=64]" in out
    out = help_of("train")
    assert "[default: 60]" in out and "[default: flip]" in out


def test_demo_refuses_a_directory_with_files(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    result = CliRunner().invoke(main, ["demo", str(tmp_path)])
    assert result.exit_code == 2 and "DIRECTORY must be empty or missing" in result.output


@pytest.mark.slow
def test_demo_runs_every_step_printing_its_command(tmp_path):
    where = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", str(where), "--settings", "tiny"])
    assert result.exit_code == 0, result.output
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert [c[:2] for c in commands] == [["wlasl-shards", step] for step in
                                         ("synth", "build", "inspect", "train", "evaluate", "predict")]
    assert commands[1][2:4] == [str(where / "wlasl"), str(where / "shards")]
    assert commands[2][2:] == [str(where / "shards"), "--verify", "--sheet", str(where / "sheet.png")]
    assert commands[4][2:4] == [str(where / "run" / "best.pt"), str(where / "shards")]
    video = Path(commands[5][3])
    assert video.parent == where / "wlasl" / "videos" and video.is_file()
    # Each step's own output follows its command, and the files are where the end says.
    assert "verified 3 shards: 0 mismatches" in result.stdout
    assert f"{video} (" in result.stdout and "Done. In " in result.stdout
    for name in ("wlasl/WLASL_v0.3.json", "shards/dataset.json", "sheet.png", "run/best.pt", "run/report.json",
                 "run/curves.png", "run/eval_test.json", "run/eval_test_confusions.png", "run/eval_test_per_class.csv"):
        assert (where / name).is_file(), name


@pytest.mark.parametrize("raised, code, line", [
    ("nospace", 2, "Error: no space left on "),
    ("interrupt", 130, "interrupted; resume with: wlasl-shards train "),
])
def test_train_ends_a_full_disk_or_ctrl_c_in_one_line(raised, code, line, monkeypatch, tmp_path):
    from wlasl_shards import storage
    from wlasl_shards.train import loop

    def fail(cfg):
        if raised == "nospace":
            raise storage.NoSpace(storage.no_space_message(tmp_path / "run" / "best.pt"))
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", fail)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "shards"), str(tmp_path / "run")])
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line) and "Traceback" not in result.output, result.output
    if raised == "interrupt":
        assert lines[0].endswith("--resume (and the same options)")
    else:
        assert lines[0].endswith(f"writing {tmp_path / 'run' / 'best.pt'}")


def test_train_checkpoint_every_is_off_by_default_and_checked(captured, tmp_path):
    shards, run = str(tmp_path / "shards"), str(tmp_path / "run")
    assert config_of(captured, "train", shards, run).checkpoint_every is None
    assert config_of(captured, "train", shards, run, "--checkpoint-every", "50").checkpoint_every == 50
    result = CliRunner().invoke(main, ["train", shards, run, "--checkpoint-every", "0"])
    assert result.exit_code == 2 and "'--checkpoint-every': 0 is not in the range x>=1" in result.output


def test_sampling_and_protocol_options_reach_the_configs(captured, tmp_path):
    """Issue 13 §3/§5: --frame-stride, --eval-clips, --pad, --train-splits (a comma-separated list)."""
    ck, shards = str(tmp_path / "best.pt"), str(tmp_path / "shards")
    cfg = config_of(captured, "train", shards, "run", "--frame-stride", "2", "--eval-clips", "3", "--pad",
                    "first-or-last", "--train-splits", "train, val")
    assert (cfg.frame_stride, cfg.eval_clips, cfg.pad, cfg.train_splits) == (2, 3, "first-or-last", ("train", "val"))
    cfg = config_of(captured, "evaluate", ck, shards)
    assert (cfg.frame_stride, cfg.eval_clips) == (None, None)  # the checkpoint's
    cfg = config_of(captured, "evaluate", ck, shards, "--frame-stride", "2", "--eval-clips", "0")
    assert (cfg.frame_stride, cfg.eval_clips) == (2, 0)
    cfg = config_of(captured, "predict", ck, str(tmp_path / "v.mp4"), "--eval-clips", "4")
    assert (cfg.frame_stride, cfg.eval_clips) == (None, 4)
    assert "[default: train]" in help_of("train") and "[default: last]" in help_of("train")
