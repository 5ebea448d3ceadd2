"""Every arch from a checkpoint of ours: `evaluate` and `predict` follow its arch, input convention,
channels and sampling; predict's probabilities are the model's own on that input.

The checkpoints are made directly (weights as built, the config `train` would write), not trained:
training each arch is the learning test's and the CLI round trip's job (test_models.py). Archs that
take any size run at 8 frames of 40 px on the tiny synthetic shards; those that take exactly 16 x 224
on 224 px npy shards, with one eval window per video.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.train.conftest import write_npy_dataset
from wlasl_shards import api, storage
from wlasl_shards.train import checkpoint as ckpt_io
from wlasl_shards.train import models
from wlasl_shards.train.loop import TrainConfig
from wlasl_shards.train.predict import load_frames


@pytest.fixture(scope="module")
def shards_224(tmp_path_factory):
    """2 classes x 1 video per split, 16 frames of 224 px (npy: no decoding cost)."""
    return write_npy_dataset(tmp_path_factory.mktemp("npy224"), classes=2, per_class={"train": 1, "val": 1, "test": 1},
                             frames=16, size=224)


def _checkpoint(path, name: str, shards, channels: str, preprocessing: dict, eval_clips: int = 1) -> dict:
    """best.pt of a fresh `name` model with the config `train` would record for it."""
    index = storage.load_index(shards)
    arch = models.get(name)
    small = arch.frames is None
    cfg = TrainConfig(shards=str(shards), run_dir=str(path.parent), arch=name, channels=channels,
                      clip_len=8 if small else 16, crop_size=40 if small else 224, frame_stride=1,
                      eval_clips=0 if small else eval_clips)
    torch.manual_seed(0)
    model = models.build(name, len(index["classes"])).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = ckpt_io.make(model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1),
                      epoch=1, step=1, best=None, config=cfg.resolved(), classes=list(index["classes"]),
                      preprocessing=preprocessing)
    ckpt_io.save(path, ck)
    return ck


# Their wrapper, registry entry shape and input convention are a smaller sibling's (swin3d_t,
# videomae-base), which this test covers; building, saving and evaluating them costs a minute here.
BY_SIBLING = {"swin3d_s", "swin3d_b", "videomae-large"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in models.NAMES if n not in BY_SIBLING])
def test_evaluate_and_predict_follow_the_checkpoints_arch(name, tiny_shards, tiny_wlasl, shards_224, tmp_path):
    arch = models.get(name)
    small = arch.frames is None
    shards = tiny_shards if small else shards_224
    prep = ckpt_io.preprocessing_params(storage.load_index(tiny_shards))
    if not small:
        prep = {**prep, "size": 256}  # predict makes frames of 256 px from the video, as such a build would
    channels = "bgr" if name in ("i3d", "s3d") else "rgb"  # both orders reach the device transfer
    ck = _checkpoint(tmp_path / "best.pt", name, shards, channels, prep)

    out = api.evaluate(str(tmp_path / "best.pt"), str(shards), split="test", device="cpu", num_workers=0,
                       progress=False)
    assert out["count"] == storage.load_index(shards)["splits"]["test"]["samples"]
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert (out["frame_stride"], out["eval_clips"]) == (1, ck["config"]["eval_clips"])

    video = sorted((tiny_wlasl / "videos").glob("*.mp4"))[0]
    [result] = api.predict(str(tmp_path / "best.pt"), [str(video)], top_k=2, device="cpu", progress=False)
    # The model's own probabilities on the same frames: the centre crop, this arch's input convention
    # and channel order, every frame (or the one window of 16), its time reduction.
    frames, _ = load_frames(video, prep, None)
    crop = ck["config"]["crop_size"]
    y, x = (frames.shape[1] - crop) // 2, (frames.shape[2] - crop) // 2
    clip = torch.from_numpy(frames[:, y:y + crop, x:x + crop].copy())
    if not small:
        start = (len(clip) - 16 + 1) // 2 if len(clip) > 16 else 0  # the one window: the middle one
        clip = clip[start:start + 16] if len(clip) >= 16 else torch.cat([clip, clip[-1:].expand(16 - len(clip),
                                                                                                 -1, -1, -1)])
    elif len(clip) < 9:
        clip = torch.cat([clip, clip[-1:].expand(9 - len(clip), -1, -1, -1)])
    if channels == "bgr":
        clip = clip.flip(-1)
    spec = models.get(name).spec
    x_in = clip[None].permute(0, 4, 1, 2, 3).float() / 255
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1, 1)
    model = models.build(name, len(ck["classes"])).eval()
    model.load_state_dict(ck["model"])
    with torch.no_grad():
        logits = model((x_in - mean) / std).float()
    reduced = logits.amax(-1) if ck["config"]["eval_reduce"] == "max" else logits.mean(-1)
    probs = torch.softmax(reduced[0], 0)
    got = {t["label"]: t["probability"] for t in result["top"]}
    assert got == pytest.approx({i: float(probs[i]) for i in got}, abs=1e-4)
    assert list(got) == probs.topk(2).indices.tolist()


@pytest.mark.slow
def test_features_of_a_fixed_length_arch_are_one_step_per_eval_window(tiny_shards, shards_224, tmp_path):
    """mvit_v2_s takes exactly 16 frames: `features` gives its penultimate features of each of the
    checkpoint's K eval windows, (K, 768), as its evaluation sees the video."""
    import io

    import numpy as np

    from wlasl_shards.train import data

    prep = {**ckpt_io.preprocessing_params(storage.load_index(tiny_shards)), "size": 256}
    _checkpoint(tmp_path / "best.pt", "mvit_v2_s", shards_224, "rgb", prep, eval_clips=2)
    index = api.features(str(tmp_path / "best.pt"), str(shards_224), str(tmp_path / "feats"), splits=("test",),
                         device="cpu", num_workers=0, progress=False)
    assert (index["arch"], index["dims"]) == ("mvit_v2_s", 768)
    assert index["windows"] == {"clips": 2, "clip_len": 16, "frame_stride": 1}
    parts = data.shard_parts(tmp_path / "feats", "test", {"splits": index["splits"]})
    samples = list(data.read_parts(parts, data.SkipCounter(0)))
    assert len(samples) == 2
    for sample in samples:
        feats = np.load(io.BytesIO(sample["features.npy"]), allow_pickle=False)
        assert feats.shape == (2, 768) and np.isfinite(feats).all()
        assert json.loads(sample["json"])["features"]["eval_frames"] == 32  # 2 windows of 16
