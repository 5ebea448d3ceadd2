"""Issue 13 §3 and §5: frame stride, multi-clip evaluation, WLASL's padding and train splits.

Index maths on plain numbers; the loader on lossless hand-made shards (flat frames hold
label * 7 + t, `handmade`); the trainer, evaluate and the CLI on the tiny npy shards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from tests.train.handmade import CLIP, CROP, FRAMES, cfg, make_dataset
from wlasl_shards.cli import main
from wlasl_shards.train import loader, metrics
from wlasl_shards.train import transforms as tf
from wlasl_shards.train.evaluate import EvaluateConfig, evaluate, run_eval
from wlasl_shards.train.loop import TrainConfig, prepare_run_dir, train
from wlasl_shards.train.predict import clip_input
from wlasl_shards.train.records import read_metrics

# ------------------------------------------------------------------------------ index maths


def test_stride_windows_take_every_sth_frame_and_reach_both_ends():
    starts = set()
    for seed in range(300):
        idx = tf.train_window(20, 4, np.random.default_rng(seed), stride=3)  # spans 10 frames
        np.testing.assert_array_equal(idx, idx[0] + np.arange(4) * 3)
        starts.add(int(idx[0]))
    assert starts == set(range(11))  # 0 .. 20 - 10


def test_stride_1_and_last_padding_make_the_old_draws():
    for n in (3, 8, 9, 40):
        a, b = np.random.default_rng(5), np.random.default_rng(5)
        np.testing.assert_array_equal(tf.train_window(n, 8, a), tf.train_window(n, 8, b, 1, "last"))
        assert a.random() == b.random()  # the same draws, so everything drawn after them is unchanged
    # The old rule, written out: a start in 0..n-clip_len from one integers() call, no draw for short videos.
    rng = np.random.default_rng(11)
    start = int(np.random.default_rng(11).integers(0, 40 - 8 + 1))
    np.testing.assert_array_equal(tf.train_window(40, 8, rng), np.arange(start, start + 8))


def test_short_videos_take_every_sth_frame_of_the_whole_video_padded():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(tf.train_window(5, 4, rng, stride=2), [0, 2, 4, 4])
    np.testing.assert_array_equal(tf.train_window(7, 4, rng, stride=2), [0, 2, 4, 6])  # exactly the span: no draw
    np.testing.assert_array_equal(tf.train_window(1, 3, rng, stride=4), [0, 0, 0])
    assert tf.window_span(16, 4) == 61


def test_first_or_last_padding_is_one_coin_only_for_short_videos():
    kinds = set()
    for seed in range(40):
        coin = np.random.default_rng(seed).random()
        idx = tf.train_window(5, 8, np.random.default_rng(seed), pad="first-or-last")
        fill = 0 if coin > 0.5 else 4  # WLASL's rule: random_sample() > 0.5 pads with the first frame
        np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, fill, fill, fill])
        kinds.add(fill)
    assert kinds == {0, 4}
    # No padding needed: no coin, the same draws as "last".
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(tf.train_window(30, 8, a, pad="first-or-last"), tf.train_window(30, 8, b))
    np.testing.assert_array_equal(tf.train_window(8, 8, a, pad="first-or-last"), np.arange(8))
    assert a.random() == b.random()
    with pytest.raises(ValueError, match="pad must be one of"):
        tf.train_window(5, 8, a, pad="first")


def test_eval_indices_with_a_stride():
    np.testing.assert_array_equal(tf.eval_indices(10, 9, 2), [0, 2, 4, 6, 8, 8, 8, 8, 8])
    np.testing.assert_array_equal(tf.eval_indices(20, 1, 3), [0, 3, 6, 9, 12, 15, 18])
    np.testing.assert_array_equal(tf.eval_indices(12, 9, 1), np.arange(12))


def test_eval_windows_are_uniformly_spaced():
    # 17 possible starts of a 4-frame window in 20 frames; mmaction2's offsets int((k + 1/2) * 17 / 3).
    np.testing.assert_array_equal(tf.eval_windows(20, 4, 3), [2, 3, 4, 5, 8, 9, 10, 11, 14, 15, 16, 17])
    np.testing.assert_array_equal(tf.eval_windows(20, 4, 1), [8, 9, 10, 11])  # one window: the middle one
    np.testing.assert_array_equal(tf.eval_windows(20, 4, 2, stride=2), [3, 5, 7, 9, 10, 12, 14, 16])
    np.testing.assert_array_equal(tf.eval_windows(5, 4, 2, stride=2), [0, 2, 4, 4, 0, 2, 4, 4])  # short: padded
    for n in range(1, 40):
        for clip_len, clips, stride in ((4, 3, 1), (5, 2, 3), (8, 5, 2)):
            idx = tf.eval_windows(n, clip_len, clips, stride).reshape(clips, clip_len)
            assert idx.min() >= 0 and idx.max() <= n - 1
            if n > tf.window_span(clip_len, stride):
                np.testing.assert_array_equal(np.diff(idx, axis=1), stride)
                assert (np.diff(idx[:, 0]) >= 0).all()
    with pytest.raises(ValueError, match="clips must be >= 1"):
        tf.eval_windows(20, 4, 0)


def test_split_and_average_windows():
    clips = torch.arange(2 * 6).reshape(2, 6, 1, 1, 1)  # 2 videos of 3 windows of 2 frames
    split = tf.split_windows(clips, 3)
    assert split.shape == (6, 2, 1, 1, 1) and split[4].flatten().tolist() == [8, 9]
    scores = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [0.0, 6.0]])
    assert metrics.average_windows(scores, 2).tolist() == [[2.0, 1.0], [2.5, 5.0]]
    with pytest.raises(ValueError, match="do not split into 4 windows"):
        tf.split_windows(clips, 4)


def test_predict_samples_like_evaluation():
    frames = np.broadcast_to(np.arange(20, dtype=np.uint8)[:, None, None, None], (20, 8, 8, 3)).copy()
    assert clip_input(frames, 4, stride=2)[0, :, 0, 0, 0].tolist() == list(range(0, 20, 2))
    x = clip_input(frames, 4, stride=2, windows=2, clip_len=4)
    assert x.shape == (1, 8, 4, 4, 3) and x[0, :, 0, 0, 0].tolist() == [3, 5, 7, 9, 10, 12, 14, 16]


# ------------------------------------------------------------------------------- the loader


@pytest.fixture(scope="module")
def lossless(tmp_path_factory) -> Path:
    """npy shards: train 2 shards (6 samples, labels 0..5), val 1 shard (5 samples, 6..10), 20 frames."""
    return make_dataset(tmp_path_factory.mktemp("lossless"), {"train": [3, 3], "val": [5]}, codec="npy")


def _values(clip: torch.Tensor, label: int) -> list[int]:
    return (clip[:, 0, 0, 0].long() - label * 7).tolist()


def test_a_stride_2_train_clip_holds_every_second_frame_of_a_window(lossless):
    starts = set()
    for epoch in range(3):
        for clips, labels in loader.make_train_loader(lossless, cfg(frame_stride=2), epoch):
            assert clips.shape[1:] == (CLIP, CROP, CROP, 3)
            for clip, label in zip(clips, labels.tolist()):
                values = _values(clip, label)
                assert values == list(range(values[0], values[0] + 2 * CLIP, 2)), (label, values)
                assert 0 <= values[0] <= FRAMES - tf.window_span(CLIP, 2)
                starts.add(values[0])
    assert len(starts) > 1


def test_short_training_clips_padded_with_the_first_or_the_last_frame(tmp_path):
    short = make_dataset(tmp_path, {"train": [8]}, codec="npy", count=5)
    kinds = []
    for clips, labels in loader.make_train_loader(short, cfg(pad="first-or-last"), 0):
        for clip, label in zip(clips, labels.tolist()):
            values = _values(clip, label)
            assert values[:5] == [0, 1, 2, 3, 4] and values[5:] in ([0, 0, 0], [4, 4, 4]), values
            kinds.append(values[5])
    assert sorted(set(kinds)) == [0, 4]
    for clips, labels in loader.make_train_loader(short, cfg(), 0):  # the default: the last frame
        assert all(_values(c, lab)[5:] == [4, 4, 4] for c, lab in zip(clips, labels.tolist()))


def test_eval_clips_give_k_windows_per_video_and_full_batches(lossless):
    c = cfg(frame_stride=2, eval_clips=2, eval_batch_size=2)
    sizes = []
    for clips, labels, _ in loader.make_eval_loader(lossless, c, "val"):
        sizes.append(len(labels))
        for clip, label in zip(clips, labels.tolist()):
            assert _values(clip, label) == tf.eval_windows(FRAMES, CLIP, 2, 2).tolist()
    assert sizes == [2, 2, 1]  # every video has 2 x 8 frames: batches fill whatever the video lengths
    c = cfg(frame_stride=3)
    for clips, labels, _ in loader.make_eval_loader(lossless, c, "val"):
        assert _values(clips[0], labels[0]) == [*range(0, FRAMES, 3), 18, 18]  # 7 frames, padded to 9
        break


def test_loader_config_checks_the_sampling_options():
    for bad, match in [({"frame_stride": 0}, "frame_stride must be >= 1, got 0"),
                       ({"eval_clips": -1}, "eval_clips must be >= 0, got -1"),
                       ({"pad": "first"}, "pad must be one of")]:
        with pytest.raises(ValueError, match=match):
            cfg(**bad).check()


# -------------------------------------------------------------------------------- run_eval


class TinyModel(torch.nn.Module):
    """(N, 3, L, H, W) -> (N, C, L) logits that depend on each frame and class (no parameters)."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frame = x.mean(dim=(1, 3, 4))  # (N, L)
        c = torch.arange(self.classes, dtype=x.dtype)[None, :, None]
        return torch.sin(frame[:, None, :] * (c + 1) * 3.0 + c)


def test_run_eval_averages_the_time_reduced_logits_of_the_k_windows():
    torch.manual_seed(0)
    k, length, classes = 3, 4, 5
    batches = [(torch.randint(0, 256, (b, k * length, 2, 2, 3), dtype=torch.uint8), torch.randint(0, classes, (b,)))
               for b in (2, 3)]
    model = TinyModel(classes)
    for reduce in ("max", "mean"):
        counts = run_eval(model, batches, torch.device("cpu"), classes, reduce, windows=k)
        scores, labels = [], []
        for clips, y in batches:
            for clip, label in zip(clips, y.tolist()):
                per_window = [metrics.reduce_time(model(tf.to_model_input(w[None])), reduce)[0]
                              for w in clip.split(length)]
                scores.append(torch.stack(per_window).mean(dim=0))
                labels.append(label)
        scores, labels = torch.stack(scores), torch.tensor(labels)
        expected = metrics.EvalCounts.zeros(classes)
        expected.add(scores, labels, F.cross_entropy(scores, labels, reduction="none"))
        assert counts.count == 5
        assert torch.equal(counts.confusion, expected.confusion) and torch.equal(counts.topk, expected.topk)
        assert float(counts.loss_sum) == pytest.approx(float(expected.loss_sum), rel=1e-6)
        if reduce == "max":  # (the mean of per-frame logits is the same however the frames are grouped)
            plain = run_eval(model, batches, torch.device("cpu"), classes, reduce)  # one clip of 12 frames each
            assert float(plain.loss_sum) != pytest.approx(float(expected.loss_sum), rel=1e-6)


# ----------------------------------------------------------------------------- the trainer

SMALL_RUN = dict(epochs=1, batch_size=4, accumulate=1, optimizer="adam", lr=1e-4, clip_len=4, crop_size=24,
                 precise_bn_batches=1, num_workers=0, log_every=1, progress=False, seed=0)


def test_train_on_train_and_val_with_strided_multi_clip_eval(npy_shards, tmp_path, caplog):
    """8 train + 4 val samples: 12 clips an epoch; report.json and evaluate record the protocol, and
    evaluate follows the checkpoint's sampling (its val loss is the run's)."""
    run = tmp_path / "run"
    cfg = TrainConfig(shards=str(npy_shards), run_dir=str(run), train_splits=("train", "val"), frame_stride=2,
                      eval_clips=2, pad="first-or-last", **SMALL_RUN)
    with caplog.at_level(logging.WARNING, logger="wlasl_shards.train.loop"):
        report = train(cfg)
    assert "the val split is in the training data" in caplog.text
    epoch = next(r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch")
    assert epoch["train"]["clips"] == 12
    assert epoch["val"]["count"] == 4 and report["test"]["count"] == 4
    assert report["protocol"] == {"train_splits": ["train", "val"], "frame_stride": 2, "eval_clips": 2,
                                  "pad": "first-or-last", "channels": "rgb", "selection_split": "val"}
    saved = json.loads((run / "config.json").read_text())
    assert saved["train_splits"] == ["train", "val"] and saved["eval_clips"] == 2
    out = evaluate(EvaluateConfig(str(run / "best.pt"), str(npy_shards), split="val", device="cpu", num_workers=0,
                                  progress=False))
    assert (out["frame_stride"], out["eval_clips"]) == (2, 2)
    assert out["loss"] == pytest.approx(epoch["val"]["loss"], rel=1e-5)
    every = evaluate(EvaluateConfig(str(run / "best.pt"), str(npy_shards), split="val", device="cpu", num_workers=0,
                                    progress=False, eval_clips=0, frame_stride=1))
    assert (every["frame_stride"], every["eval_clips"]) == (1, 0) and every["loss"] != out["loss"]
    # A resume with other sampling is refused by the config diff.
    with pytest.raises(ValueError, match=r"different config \(frame_stride: 2 -> 1\)"):
        prepare_run_dir(dataclasses.replace(cfg, frame_stride=1, resume=True), True)


def test_a_config_from_before_the_sampling_options_resumes_with_their_defaults(tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(shards=str(tmp_path), run_dir=str(run))
    old = cfg.resolved()
    for name in ("frame_stride", "eval_clips", "pad", "train_splits"):
        del old[name]
    run.mkdir()
    (run / "config.json").write_text(json.dumps(old))
    prepare_run_dir(dataclasses.replace(cfg, resume=True), True)  # no difference: the defaults
    (run / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"train_splits: \['train'\] -> \['train', 'val'\]"):
        prepare_run_dir(dataclasses.replace(cfg, train_splits=("train", "val"), resume=True), True)


def test_train_splits_are_checked(npy_shards, tmp_path):
    base = dict(shards=str(npy_shards), run_dir=str(tmp_path / "run"))
    for bad, match in [((), "train_splits must be split names"), ("train", "train_splits must be split names"),
                       (("train", "train"), "each once"), (("train", "test"), "must not hold 'test'")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**base, train_splits=bad).check()
    res = CliRunner().invoke(main, ["train", str(npy_shards), str(tmp_path / "run"), "--train-splits", "train,dev",
                                    "--crop-size", "32", "--workers", "0", "--no-progress"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].endswith("has no split 'dev' (it has test, train, val)")
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()
    res = CliRunner().invoke(main, ["train", str(npy_shards), str(tmp_path / "run"), "--train-splits", "train,"])
    assert res.exit_code == 2 and "--train-splits" in res.output and "empty split name" in res.output
    res = CliRunner().invoke(main, ["train", str(npy_shards), str(tmp_path / "run"), "--frame-stride", "0"])
    assert res.exit_code == 2 and "--frame-stride" in res.output
