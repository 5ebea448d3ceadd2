"""The Python API: each function returns what the files (and the CLI) say, `clip_dataset` streams the
trainer's clips, the README's custom loop runs, and `import wlasl_shards` does not import torch."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

import wlasl_shards as ws
from tests.conftest import TINY
from tests.train.conftest import SMALL
from wlasl_shards import api, shards
from wlasl_shards.cli import main as cli
from wlasl_shards.train import transforms
from wlasl_shards.train.records import read_metrics

REPO = Path(__file__).resolve().parents[1]

# 4 glosses x 3 videos: 4 train / 4 val / 4 test, 160x120 and 320x240, 12-20 frames.
SYNTH = dataclasses.replace(TINY, videos_per_class=3)
SIZE = 64  # the quick start's shard size, which the README loop's 56 px crops need
FIT = {**SMALL, "batch_size": 4, "precise_bn_batches": 1}

# The README's "Python API" loop, verbatim; the test only points it at its own shards.
SNIPPET = '''\
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
import wlasl_shards as ws

device = "cuda" if torch.cuda.is_available() else "cpu"
dataset = ws.clip_dataset("demo/shards", "train", clip_len=16, crop_size=56)  # (clip, label) pairs
loader = DataLoader(dataset, batch_size=4, num_workers=2)  # each worker batches its share
model = ws.InceptionI3d(num_classes=len(dataset.classes))
# ws.load_init(model, "rgb_imagenet.pt")  # Kinetics-400 weights; the head is replaced for your classes
model.to(device).train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
for epoch in range(2):
    dataset.set_epoch(epoch)  # a new shard order, new windows, crops and flips
    for clips, labels in loader:  # (B, 16, 56, 56, 3) uint8, (B,) int64
        x = ws.to_model_input(clips.to(device))  # (B, 3, 16, 56, 56) float32 in [-1, 1]
        logits = model(x).amax(dim=2)  # (B, classes, T') -> max over time, WLASL's rule
        loss = F.cross_entropy(logits, labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: loss {loss.item():.4f}")
'''


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while this module runs: these I3D steps are tiny, and on a shared 2-core
    machine a second OpenMP thread waiting for a busy core made them up to 10x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict]:
    """(root, summary) of a synthetic WLASL-layout dataset made with `ws.synth` from a config."""
    root = tmp_path_factory.mktemp("api_source")
    return root, ws.synth(root, SYNTH, progress=False)


@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> tuple[Path, dict]:
    """(shards directory, the index `ws.build` returned)."""
    out = tmp_path_factory.mktemp("api_shards")
    return out, ws.build(source[0], out, size=SIZE, workers=1, progress=False)


@pytest.fixture(scope="module")
def fitted(built, tmp_path_factory) -> tuple[Path, dict]:
    """(run_dir, what `ws.fit` returned) of a 2-epoch run of one optimiser step each."""
    run = tmp_path_factory.mktemp("api_run") / "run"
    return run, ws.fit(built[0], run, **FIT)


def read_split(dataset: Path, split: str) -> list[tuple[dict, np.ndarray]]:
    """(metadata, all frames (T, H, W, 3) uint8) of every sample of `split`, in shard order."""
    index = json.loads((dataset / shards.INDEX_NAME).read_text())
    out = []
    for rec in index["splits"][split]["shards"]:
        with open(dataset / rec["name"], "rb") as f:
            for sample in shards.read_samples(f):
                out.append((json.loads(sample["json"]), shards.decode_frames(sample)))
    return out


# ------------------------------------------------------------------------------- the package


def test_import_does_not_import_torch():
    code = ("import json, sys, wlasl_shards; "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'all': wlasl_shards.__all__, "
            "'dir': dir(wlasl_shards), 'version': wlasl_shards.__version__}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["torch"] is False
    assert got["version"] == ws.__version__
    assert set(got["all"]) <= set(got["dir"])
    for name in ("build", "merge", "inspect_shards", "fit", "evaluate", "predict", "features", "synth", "clip_dataset",
                 "to_model_input", "InceptionI3d", "BuildConfig", "TrainConfig", "SynthConfig", "EvaluateConfig",
                 "PredictConfig", "FeaturesConfig", "InspectConfig"):
        assert name in got["all"], name


def test_top_level_names_resolve_to_the_api():
    import wlasl_shards.train.loop

    for name in ws.__all__:
        assert getattr(ws, name) is not None
        if name != "__version__":
            assert getattr(ws, name) is getattr(api, name), name
    assert ws.fit is api.fit and ws.build is api.build and ws.evaluate is api.evaluate
    assert ws.InceptionI3d is wlasl_shards.train.models.i3d.InceptionI3d
    assert ws.to_model_input is transforms.to_model_input
    # `train` is the trainer's package and nothing else: a plain module, not callable, not an API name.
    assert type(ws.train) is type(ws) and not callable(ws.train) and "train" not in ws.__all__
    assert not hasattr(api, "train")
    assert ws.train.loop.train is wlasl_shards.train.loop.train
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ws.nope  # noqa: B018


# ------------------------------------------------------------------------------ synth and build


def test_synth_returns_what_it_wrote(source):
    root, summary = source
    nslt = json.loads((root / f"nslt_{SYNTH.classes}.json").read_text())
    assert summary["videos"] == len(nslt) == len(list((root / "videos").glob("*.mp4"))) == 12
    assert summary["splits"] == {s: sum(e["subset"] == s for e in nslt.values()) for s in ("train", "val", "test")}
    assert summary["splits"] == {"train": 4, "val": 4, "test": 4}


def test_build_returns_the_index_in_dataset_json(source, built):
    out, index = built
    assert index == json.loads((out / shards.INDEX_NAME).read_text())
    assert index["params"]["size"] == SIZE
    assert {s: v["samples"] for s, v in index["splits"].items()} == {"train": 4, "val": 4, "test": 4}
    # A BuildConfig works as well as keywords; the finished build is re-read, unchanged.
    cfg = ws.BuildConfig(source=str(source[0]), output=str(out), size=SIZE, workers=1, progress=False)
    assert ws.build(cfg) == index


def test_unknown_or_repeated_options_are_type_errors_naming_them(source, tmp_path):
    with pytest.raises(TypeError, match="'sise'"):
        ws.build(source[0], tmp_path / "out", sise=SIZE)
    with pytest.raises(TypeError, match="'output'"):
        ws.build(source[0], tmp_path / "out", output=str(tmp_path / "other"))
    with pytest.raises(TypeError, match="'epoch'"):
        ws.fit(tmp_path / "shards", tmp_path / "run", epoch=3)
    with pytest.raises(TypeError, match="'class_count'"):
        ws.synth(tmp_path / "synth", class_count=3)
    with pytest.raises(TypeError, match=r"build\(\) needs output: build\(source, output, \*\*options\)"):
        ws.build(source[0])
    with pytest.raises(TypeError, match=r"fit\(\) needs run_dir"):
        ws.fit(tmp_path / "shards")
    with pytest.raises(ValueError, match="size must be >= 16, got 8"):
        ws.build(source[0], tmp_path / "out", size=8)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ train


def test_fit_returns_the_report_and_the_metrics_records(fitted):
    run, result = fitted
    report = {k: v for k, v in result.items() if k != "history"}
    assert report == json.loads((run / "report.json").read_text())
    assert result["history"] == read_metrics(run / "metrics.jsonl")
    epochs = [r for r in result["history"] if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [r["kind"] for r in result["history"]].count("test") == 1
    assert report["epochs"] == 2 and report["steps"] == 2 and report["test"]["count"] == 4
    assert 0.0 <= report["test"]["top1"] <= 1.0


def test_fit_takes_a_config_whose_fields_options_override(built, tmp_path):
    cfg = ws.TrainConfig(shards=str(built[0]), run_dir=str(tmp_path / "run"), **FIT)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):  # checked before any training
        ws.fit(cfg, epochs=0)
    with pytest.raises(TypeError, match="run_dir"):
        ws.fit(cfg, tmp_path / "other")
    assert not (tmp_path / "run").exists() and not (tmp_path / "other").exists()


# ------------------------------------------------------------------------- evaluate and predict


def test_evaluate_equals_the_cli_json(fitted, built, tmp_path):
    best = str(fitted[0] / "best.pt")
    (tmp_path / "api").mkdir()
    (tmp_path / "cli").mkdir()
    metrics = ws.evaluate(best, str(built[0]), split="val", device="cpu", num_workers=1, worker_mode="thread",
                          output=tmp_path / "api" / "m.json")
    res = CliRunner().invoke(cli, ["evaluate", best, str(built[0]), "--split", "val", "--device", "cpu",
                                   "--workers", "1", "--worker-mode", "thread", "--output",
                                   str(tmp_path / "cli" / "m.json")])
    assert res.exit_code == 0, res.output
    assert metrics == json.loads((tmp_path / "cli" / "m.json").read_text())
    # The API writes what the command writes: the JSON and the pictures beside it.
    for name in ("m.json", "eval_val_per_class.csv"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert (tmp_path / "api" / "eval_val_confusions.png").is_file()
    assert metrics["split"] == "val" and metrics["count"] == 4 and 0.0 <= metrics["top1"] <= 1.0


def test_predict_equals_the_cli_json(fitted, source):
    best = str(fitted[0] / "best.pt")
    video = sorted((source[0] / "videos").glob("*.mp4"))[0]
    got = ws.predict(best, video, top_k=3, device="cpu", progress=False)  # one path: a list of one result
    assert ws.predict(ws.PredictConfig(best, (str(video),), top_k=3, device="cpu")) == got
    res = CliRunner().invoke(cli, ["predict", best, str(video), "--top-k", "3", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert got == json.loads(res.stdout)
    assert len(got) == 1 and got[0]["video"] == str(video) and len(got[0]["top"]) == 3
    probs = [t["probability"] for t in got[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0.0 < sum(probs) <= 1.0 + 1e-6


def test_contact_sheet_has_a_row_per_sample(built):
    sheet = ws.contact_sheet(built[0], samples=3, split="test", frames_per_row=4, thumb=32)
    assert sheet.mode == "RGB" and sheet.height == 3 * 32 and sheet.width > 4 * 32


# ----------------------------------------------------------------------------------- clip_dataset


def test_clip_dataset_train_clips_are_crops_of_the_labelled_video(built):
    out, index = built
    videos = {meta["label"]: frames for meta, frames in read_split(out, "train")}
    assert len(videos) == 4  # one training video per class: the label names the video
    ds = ws.clip_dataset(out, clip_len=8, crop_size=40)
    assert ds.classes == index["classes"] and ds.num_samples == 4
    items = list(ds)
    assert sorted(label for _, label in items) == sorted(videos)
    for clip, label in items:
        assert isinstance(label, int)
        assert clip.dtype == torch.uint8 and tuple(clip.shape) == (8, 40, 40, 3)
        assert find_window(clip.numpy(), videos[label]), f"clip of label {label} is no window+crop(+flip) of it"


def find_window(clip: np.ndarray, frames: np.ndarray) -> bool:
    """Whether `clip` is frames[s:s+len(clip)] (padded with the last frame), cropped at some (y, x)
    and maybe mirrored: the training transform."""
    t, c = len(clip), clip.shape[1]
    for start in range(max(1, len(frames) - t + 1)):
        idx = np.minimum(np.arange(start, start + t), len(frames) - 1)
        window = frames[idx]
        for flipped in (window, window[:, :, ::-1]):
            for y in range(flipped.shape[1] - c + 1):
                for x in range(flipped.shape[2] - c + 1):
                    if np.array_equal(flipped[0, y:y + c, x:x + c], clip[0]) and \
                            np.array_equal(flipped[:, y:y + c, x:x + c], clip):
                        return True
    return False


def test_clip_dataset_is_deterministic_per_seed_and_epoch(built):
    ds = ws.clip_dataset(built[0], clip_len=8, crop_size=40, seed=0)

    def run(d):
        return [(label, clip.numpy().tobytes()) for clip, label in d]

    first = run(ds)
    assert run(ds) == first
    assert run(ws.clip_dataset(built[0], clip_len=8, crop_size=40, seed=0)) == first
    assert run(ws.clip_dataset(built[0], clip_len=8, crop_size=40, seed=1)) != first
    ds.set_epoch(1)
    assert run(ds) != first
    assert run(ws.clip_dataset(built[0], clip_len=8, crop_size=40, seed=0, epoch=1)) == run(ds)


def test_clip_dataset_eval_is_every_frame_centre_cropped_in_shard_order(built):
    out, _ = built
    ds = ws.clip_dataset(out, "test", crop_size=40)
    expected = read_split(out, "test")
    items = list(ds)
    assert ds.num_samples == len(items) == len(expected) == 4
    for (clip, label), (meta, frames) in zip(items, expected):
        assert label == meta["label"]
        want = transforms.eval_crop(frames[transforms.eval_indices(len(frames))], 40)
        assert clip.dtype == torch.uint8 and torch.equal(clip, torch.from_numpy(want))
    # train=True on another split gives training clips of it.
    assert {tuple(c.shape) for c, _ in ws.clip_dataset(out, "val", train=True, clip_len=8, crop_size=40)} == {
        (8, 40, 40, 3)}


def test_clip_dataset_in_loader_workers_and_ranks_reads_each_sample_once(built):
    out, _ = built
    ds = ws.clip_dataset(out, "test", crop_size=40)
    alone = sorted((label, clip.numpy().tobytes()) for clip, label in ds)
    two_workers = DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted((int(label), clip.numpy().tobytes()) for clip, label in two_workers) == alone
    shares = [ws.clip_dataset(out, "test", crop_size=40, rank=r, world_size=2) for r in (0, 1)]
    assert [s.num_samples for s in shares] == [2, 2]
    assert sorted((label, clip.numpy().tobytes()) for s in shares for clip, label in s) == alone
    # Training: every rank the same number of clips, together the whole split.
    train = [ws.clip_dataset(out, clip_len=8, crop_size=40, rank=r, world_size=2) for r in (0, 1)]
    labels = [[label for _, label in t] for t in train]
    assert [t.num_samples for t in train] == [len(x) for x in labels] == [2, 2]
    assert sorted(labels[0] + labels[1]) == [0, 1, 2, 3]


def test_clip_dataset_rejects_bad_options(built):
    with pytest.raises(ValueError, match="crop_size 65 is larger than the frames"):
        ws.clip_dataset(built[0], crop_size=65)
    with pytest.raises(ValueError, match="no split 'dev'"):
        ws.clip_dataset(built[0], "dev", crop_size=40)
    with pytest.raises(ValueError, match="clip_len must be >= 1, got 0"):
        ws.clip_dataset(built[0], clip_len=0, crop_size=40)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        ws.clip_dataset(built[0], crop_size=40, epoch=-1)


# -------------------------------------------------------------------------------- README loop


@pytest.mark.slow
def test_readme_training_loop_runs(built):
    code = SNIPPET.replace('"demo/shards"', repr(str(built[0])))  # the only change: its own shards
    assert code.count(repr(str(built[0]))) == 1
    namespace: dict = {"__name__": "readme_loop"}
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own text
    lines = stdout.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 0", "epoch 1"]
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert math.isfinite(namespace["loss"].item())
    # 4 training clips per epoch, batched by 2 loader workers: 2 batches of 2, 4 optimiser steps in all.
    assert namespace["dataset"].num_samples == 4 and tuple(namespace["clips"].shape) == (2, 16, 56, 56, 3)
