"""`evaluate` against a direct forward pass over the shards, and `predict` on video files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.train.conftest import TINY_SIZE
from wlasl_shards import shards, storage
from wlasl_shards.preprocess.build import BuildConfig, build
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import data
from wlasl_shards.train.evaluate import EvaluateConfig, model_from_checkpoint
from wlasl_shards.train.evaluate import evaluate as evaluate_config
from wlasl_shards.train.predict import PredictConfig, clip_input
from wlasl_shards.train.predict import predict as predict_config


def evaluate(checkpoint: Path, shards: Path, **options) -> dict:
    """evaluate.evaluate on an EvaluateConfig of these arguments."""
    return evaluate_config(EvaluateConfig(str(checkpoint), str(shards), progress=False, **options))


def predict(checkpoint: Path, videos: list[Path], **options) -> list[dict]:
    """predict.predict on a PredictConfig of these arguments."""
    return predict_config(PredictConfig(str(checkpoint), tuple(str(v) for v in videos), progress=False, **options))


def direct_logits(checkpoint: Path, dataset: Path, split: str) -> dict[str, tuple[int, torch.Tensor]]:
    """{video_id: (label, logits (C,) max over time)}: the shards read with the contract's own
    functions, the eval transform, one video per forward pass."""
    ck = ckpt_io.load(checkpoint)
    model = model_from_checkpoint(ck, torch.device("cpu"))
    out = {}
    for url in data.shard_urls(dataset, split):
        with open(url, "rb") as f:
            for sample in shards.read_samples(f):
                meta = json.loads(sample["json"])
                clip = clip_input(shards.decode_frames(sample), ck["config"]["crop_size"])
                x = clip.permute(0, 4, 1, 2, 3).float() / 255 * 2 - 1
                with torch.no_grad():
                    out[meta["video_id"]] = (meta["label"], model(x)[0].amax(dim=1))
    return out


def wlasl_instances(root: Path) -> dict[str, dict]:
    """video_id -> its WLASL_v0.3.json instance (bbox, split, ...) plus the gloss."""
    out = {}
    for entry in json.loads((root / "WLASL_v0.3.json").read_text()):
        for inst in entry["instances"]:
            out[inst["video_id"]] = {**inst, "gloss": entry["gloss"]}
    return out


# ----------------------------------------------------------------------------------------- evaluate


def test_evaluate_counts_every_sample_once_and_equals_direct_forward(reference_run, tiny_shards, tmp_path):
    best = reference_run / "best.pt"
    direct = direct_logits(best, tiny_shards, "test")
    assert len(direct) == storage.load_index(tiny_shards)["splits"]["test"]["samples"]
    labels = torch.tensor([label for label, _ in direct.values()])
    logits = torch.stack([lg for _, lg in direct.values()])
    expected_top1 = (logits.argmax(1) == labels).float().mean().item()
    expected_loss = F.cross_entropy(logits, labels).item()

    for workers, mode in ((0, "process"), (2, "process"), (2, "thread")):
        got = evaluate(best, tiny_shards, split="test", device="cpu", num_workers=workers, worker_mode=mode,
                       output=str(tmp_path / "eval_test.json"))
        assert got["count"] == len(direct)
        assert got["top1"] == pytest.approx(expected_top1)
        assert got["loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert got["top10"] == 1.0 and got["skipped"] == 0
        assert sum(c["count"] for c in got["per_class"].values()) == len(direct)
    report = json.loads((reference_run / "report.json").read_text())
    assert report["test"]["top1"] == pytest.approx(got["top1"])  # the run's own test = evaluate(best.pt)
    # The JSON and the pictures beside it: the same test counts as the training run's own.
    assert json.loads((tmp_path / "eval_test.json").read_text()) == got
    assert (tmp_path / "eval_test_per_class.csv").read_text() == (reference_run / "per_class.csv").read_text()
    assert (tmp_path / "eval_test_confusions.png").is_file()


def test_evaluate_refuses_other_classes(reference_run, tiny_shards, tmp_path):
    index = json.loads((tiny_shards / "dataset.json").read_text())
    index["classes"] = index["classes"][::-1]
    (tmp_path / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="class list differs from the checkpoint's"):
        evaluate(reference_run / "best.pt", tmp_path, device="cpu")


def test_evaluate_refuses_a_bare_state_dict(tmp_path, tiny_shards, reference_run):
    bare = tmp_path / "bare.pt"
    torch.save(ckpt_io.load(reference_run / "best.pt")["model"], bare)
    with pytest.raises(ValueError, match="not a wlasl-shards training checkpoint"):
        evaluate(bare, tiny_shards)
    with pytest.raises(ValueError, match="no such file"):
        evaluate(tmp_path / "missing.pt", tiny_shards)


# ------------------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("codec", ["jpeg", "npy"])
def test_predict_with_the_box_sees_the_shard_pixels(codec, reference_run, tiny_shards, tiny_wlasl, tmp_path):
    """With the signer box the shard was cut with, predict's probabilities are evaluation's:
    for JPEG shards through the same ffmpeg JPEGs, for npy shards through the raw frames."""
    best = reference_run / "best.pt"
    if codec == "npy":
        tiny_shards = tmp_path / "npy"
        build(BuildConfig(source=str(tiny_wlasl), output=str(tiny_shards), size=TINY_SIZE, codec="npy", workers=1,
                          progress=False))
        ck = ckpt_io.load(best)
        ck["preprocessing"] = ckpt_io.preprocessing_params(storage.load_index(tiny_shards))
        best = tmp_path / "npy.pt"
        ckpt_io.save(best, ck)
    direct = direct_logits(best, tiny_shards, "test")
    instances = wlasl_instances(tiny_wlasl)
    video_id, (label, logits) = next(iter(direct.items()))
    inst = instances[video_id]
    [res] = predict(best, [tiny_wlasl / "videos" / f"{video_id}.mp4"], top_k=4, device="cpu", bbox=inst["bbox"])
    probs = torch.softmax(logits, 0)
    assert [t["label"] for t in res["top"]] == probs.argsort(descending=True).tolist()
    assert [t["probability"] for t in res["top"]] == pytest.approx(probs.sort(descending=True).values.tolist(),
                                                                   abs=1e-5)
    index = storage.load_index(tiny_shards)
    assert [t["gloss"] for t in res["top"]] == [index["classes"][t["label"]] for t in res["top"]]
    assert res["crop"] == "bbox"


def test_predict_top_k_without_box(reference_run, tiny_wlasl):
    videos = sorted((tiny_wlasl / "videos").glob("*.mp4"))[:2]
    results = predict(reference_run / "best.pt", videos, top_k=3, device="cpu")
    assert [r["video"] for r in results] == [str(v) for v in videos]
    for r in results:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert r["crop"].startswith("bbox (no bbox: center crop)") and r["frames"] >= 9
    [every] = predict(reference_run / "best.pt", videos[:1], top_k=10, device="cpu")
    assert len(every["top"]) == 4  # only 4 classes
    assert sum(t["probability"] for t in every["top"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_bad_video_names_the_file(reference_run, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match=f"video {junk}: "):
        predict(reference_run / "best.pt", [junk], device="cpu")
    with pytest.raises(ValueError, match=f"video {tmp_path / 'gone.mp4'}: not a file"):
        predict(reference_run / "best.pt", [tmp_path / "gone.mp4"], device="cpu")
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        predict(reference_run / "best.pt", [junk], top_k=0)
    with pytest.raises(ValueError, match="no videos given"):
        predict(reference_run / "best.pt", [])


def test_configs_refuse_bad_options_naming_them(reference_run, tiny_shards):
    best = reference_run / "best.pt"
    with pytest.raises(ValueError, match="num_workers must be >= 0, got -1"):
        evaluate(best, tiny_shards, num_workers=-1)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        evaluate(best, tiny_shards, batch_size=0)
    with pytest.raises(ValueError, match="reduce must be one of .* got 'median'"):
        evaluate(best, tiny_shards, reduce="median")
    with pytest.raises(ValueError, match="worker_mode must be one of .* got 'fiber'"):
        evaluate(best, tiny_shards, worker_mode="fiber")
    with pytest.raises(ValueError, match=r"bbox must be \(x1, y1, x2, y2\), got \(1.0, 2.0\)"):
        predict(best, [tiny_shards / "x.mp4"], bbox=(1.0, 2.0))


@pytest.mark.slow
def test_predict_with_trained_model_finds_the_true_gloss(learned_run, learn_src, learn_shards):
    """The learning run's best.pt on the test videos: predict's top-5 = evaluation's top-5, and the
    true gloss is in it for most videos."""
    run, report, _ = learned_run
    instances = wlasl_instances(learn_src)
    test_ids = [v for v, inst in instances.items() if inst["split"] == "test"]
    paths = [learn_src / "videos" / f"{v}.mp4" for v in test_ids]
    hits = 0
    for video_id, path in zip(test_ids, paths):
        [res] = predict(run / "best.pt", [path], top_k=5, device="cpu", bbox=instances[video_id]["bbox"])
        assert len(res["top"]) == 5
        hits += instances[video_id]["gloss"] in [t["gloss"] for t in res["top"]]
    assert hits == round(report["test"]["top5"] * report["test"]["count"])
    assert hits / len(test_ids) >= 0.6


@pytest.mark.parametrize("codec", ["jpeg", "npy"])
def test_predict_bounds_a_video_by_the_builds_frame_limit(codec, tiny_wlasl):
    from wlasl_shards.train.predict import load_frames

    video = sorted((tiny_wlasl / "videos").glob("*.mp4"))[0]
    prep = {"fps": 25.0, "size": 32, "crop_resolved": "center", "codec": codec, "jpeg_qscale": 3}
    frames, _ = load_frames(video, prep)
    assert len(frames) > 9
    with pytest.raises(ValueError, match=f"video {video}: .*too long"):
        load_frames(video, {**prep, "max_frames": len(frames) - 1})
    assert len(load_frames(video, {**prep, "max_frames": len(frames)})[0]) == len(frames)


def test_grouped_eval_batches_give_batch_1_logits_and_metrics(tmp_path):
    """--batch-size > 1 batches videos of one frame count only: on a split of mixed lengths every
    video's logits are its batch-1 logits (float32 rounding), and so are the metrics."""
    from tests.train.conftest import write_npy_dataset
    from wlasl_shards.train.loader import make_eval_loader
    from wlasl_shards.train.loop import TrainConfig, train
    from wlasl_shards.train.transforms import to_model_input

    root = write_npy_dataset(tmp_path / "mixed", per_class={"train": 1, "val": 1, "test": 3},
                             frames=(12, 10, 12, 5, 14, 10), size=32)
    run = tmp_path / "run"
    train(TrainConfig(shards=str(root), run_dir=str(run), epochs=1, batch_size=2, accumulate=1, clip_len=8,
                      crop_size=32, precise_bn_batches=1, num_workers=0, progress=False, eval_batch_size=3))
    ck = ckpt_io.load(run / "best.pt")
    model = model_from_checkpoint(ck, torch.device("cpu"))

    def logits(batch_size: int) -> dict[str, torch.Tensor]:
        out, sizes = {}, []
        cfg = data.LoaderConfig(clip_len=8, crop_size=32, eval_batch_size=batch_size, num_workers=0)
        for clips, _, vids in make_eval_loader(root, cfg, "test"):
            sizes.append(len(vids))
            with torch.no_grad():
                out.update(zip(vids, model(to_model_input(clips))))
        assert max(sizes) == min(batch_size, 4)  # the 12-frame and 10-frame videos do share batches
        return out

    one, grouped = logits(1), logits(4)
    assert sorted(one) == sorted(grouped) and len(one) == 12
    for vid in one:
        assert grouped[vid].shape == one[vid].shape
        torch.testing.assert_close(grouped[vid], one[vid], rtol=1e-4, atol=1e-5)
    a, b = (evaluate(run / "best.pt", root, split="test", device="cpu", num_workers=0, batch_size=n) for n in (1, 4))
    assert b["count"] == a["count"] == 12
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for key in ("top1", "top5", "top10", "per_class_mean", "per_class", "confusions"):
        assert b[key] == a[key], key
