"""models/: the registry (one table), the library wrappers, load_init for every arch, model_input, param_groups.

Each arch is built once (test_arch): forward at the small CI input and at its native input, penultimate
features, and the `--init` round trip from the library constructor's own 400-class state_dict.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import click.testing
import pytest
import torch
from click.testing import CliRunner

from wlasl_shards import cli
from wlasl_shards.train import models
from wlasl_shards.train.models import library
from wlasl_shards.train.transforms import to_model_input

SMALL_FRAMES, SMALL_CROP = 8, 64
# Their wrapper code is a smaller sibling's (swin3d_t, mvit_v2_s, videomae-base), which the native-input
# forward and the comparison with the library's own forward cover; each such pass costs them 20-30 s here.
NATIVE_BY_SIBLING = {"swin3d_s", "swin3d_b"}
LIBRARY_CHECK_BY_SIBLING = {"swin3d_s", "swin3d_b", "mvit_v1_b", "videomae-large"}


def _small_input(arch: models.Arch) -> torch.Tensor:
    return torch.randn(1, 3, arch.frames or SMALL_FRAMES, arch.crop or SMALL_CROP, arch.crop or SMALL_CROP)


def _library_model(name: str, num_classes: int) -> torch.nn.Module:
    """The library's own constructor, as the published weights were made (no wrapper)."""
    if name == "i3d":
        return models.InceptionI3d(num_classes)
    if name.startswith("videomae"):
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification
        return VideoMAEForVideoClassification(VideoMAEConfig(num_labels=num_classes, **library.VIDEOMAE_SIZES[name]))
    from torchvision.models import video
    return getattr(video, name)(num_classes=num_classes)


def _expected_t(arch: models.Arch, frames: int) -> int:
    if not arch.time_logits:
        return 1
    return max(-(-frames // 8) - 1, 1)  # I3D and S3D: ceil(T / 8) feature steps, pooled 2 at a time


@pytest.mark.slow
@pytest.mark.parametrize("name", models.NAMES)
def test_arch(tmp_path, name):
    torch.manual_seed(0)
    arch = models.get(name)
    model = models.build(name, 10).eval()
    assert models.arch_of(model) == name and model.num_classes == 10

    # Forward at the small CI input and at the native one: shapes, finite values, features.
    inputs = [_small_input(arch)]
    if arch.frames is None and name not in NATIVE_BY_SIBLING:  # MViT, VideoMAE: the small input is the native one
        inputs.append(torch.randn(1, 3, arch.native_frames, arch.native_crop, arch.native_crop))
    for x in inputs:
        models.check_input(name, x.shape[2], x.shape[3])
        with torch.no_grad():
            logits = model(x)
            feats = models.clip_features(model, name, x)
        t = _expected_t(arch, x.shape[2])
        assert logits.shape == (1, 10, t) and torch.isfinite(logits).all(), (name, tuple(x.shape))
        assert feats.shape == (1, models.feature_dim(name), -(-x.shape[2] // 8) if arch.time_logits else 1)
        assert torch.isfinite(feats).all()
        if name == "i3d":  # features() is I3D's own, unchanged
            with torch.no_grad():
                torch.testing.assert_close(feats, model.features(x).mean((3, 4)))
        elif name not in {"s3d", *LIBRARY_CHECK_BY_SIBLING} and x is inputs[0]:  # S3D: test_s3d_logits_are_torchvisions
            # Our forward re-traces the library's: the same logits as its own forward.
            with torch.no_grad():
                theirs = model.net(x.transpose(1, 2)).logits if name.startswith("videomae") else model.net(x)
            torch.testing.assert_close(logits[..., 0], theirs, rtol=1e-5, atol=1e-5)

    # --init from a 400-class state_dict in the library constructor's own layout (the published files'):
    # `net` is that constructor's model; its tensors drawn afresh, so that "bit-identical" means copied.
    # VideoMAE: the constructor itself (save_pretrained needs the library object), as a dir and .safetensors.
    if name.startswith("videomae"):
        lib = _library_model(name, 400)
        source = lib.state_dict()
    else:
        own = model.state_dict() if name == "i3d" else model.net.state_dict()
        head = arch.head_prefix[len("" if name == "i3d" else models.NET_PREFIX):]
        source = OrderedDict((k, torch.randn((400, *v.shape[1:]) if k.startswith(head) else v.shape)
                              if v.is_floating_point() else v + 1) for k, v in own.items())
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(arch.head_prefix)}
    files = [tmp_path / "k400.pth"]
    torch.save(source, files[0])
    if name == "videomae-base":  # (videomae-large: the same code, 1.2 GB per copy)
        from safetensors.torch import save_file
        lib.save_pretrained(tmp_path / "pretrained")
        (tmp_path / "pretrained" / "preprocessor_config.json").write_text(
            json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
        save_file({k: v.contiguous() for k, v in source.items()}, tmp_path / "k400.safetensors")
        files += [tmp_path / "pretrained", tmp_path / "k400.safetensors"]
    prefix = "" if name == "i3d" else models.NET_PREFIX
    for file in files:
        report = models.load_init(model, file)
        assert report["head"] == "replaced" and report["source_classes"] == 400 and report["num_classes"] == 10
        assert report["added_prefix"] == prefix and report["missing"] == report["unexpected"] == []
        loaded = model.state_dict()
        for key, value in source.items():
            if (prefix + key).startswith(arch.head_prefix):
                continue
            assert torch.equal(loaded[prefix + key], value), (file, key)
        for key, value in fresh_head.items():
            assert loaded[key].shape[0] == 10 and torch.equal(loaded[key], value), key
        if file.name == "pretrained":
            # save_pretrained writes the original layout's q_bias / v_bias: load_init renamed them.
            from safetensors.torch import load_file
            assert any(k.endswith("q_bias") for k in load_file(file / "model.safetensors"))
            spec = models.init_input_spec(name, str(file))
            assert spec == models.InputSpec("preprocessor_config.json", (0.5,) * 3, (0.25,) * 3)
        else:
            assert models.init_input_spec(name, str(file)) == arch.spec


def test_s3d_logits_are_torchvisions():
    """head_pool is torchvision's AvgPool3d((2, 7, 7)) at 224; torchvision then averages the per-time
    logits inside forward, ours keep time (eval_reduce "mean" gives torchvision's)."""
    torch.manual_seed(1)
    model = models.build("s3d", 7).eval()
    x = torch.randn(1, 3, 24, 224, 224)
    with torch.no_grad():
        ours, theirs = model(x), model.net(x)
    assert ours.shape == (1, 7, 2)  # 24 frames: 3 feature steps, two windows of 2
    torch.testing.assert_close(ours.mean(-1), theirs, rtol=1e-5, atol=1e-5)


def test_small_crops_where_the_arch_allows():
    """S3D's pool is head_pool (any crop); VideoResNet's is adaptive."""
    torch.manual_seed(0)
    for name, frames, crop in (("s3d", 16, 32), ("r2plus1d_18", 4, 16)):
        with torch.no_grad():
            out = models.build(name, 3).eval()(torch.randn(2, 3, frames, crop, crop))
        assert out.shape[:2] == (2, 3) and torch.isfinite(out).all()


def test_wrong_file_names_missing_unexpected_and_misshaped_keys(tmp_path):
    model = models.build("r3d_18", 10)
    state = OrderedDict(_library_model("r3d_18", 400).state_dict())
    state["layer1.0.conv1.0.weights"] = state.pop("layer1.0.conv1.0.weight")
    state["stem.0.weight"] = torch.zeros(64, 3, 1, 7, 7)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        models.load_init(model, path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} does not fit r3d_18(num_classes=10): ")
    assert "1 missing keys: net.layer1.0.conv1.0.weight" in message
    assert "1 unexpected keys: net.layer1.0.conv1.0.weights" in message
    assert "1 shape mismatches: net.stem.0.weight: (64, 3, 1, 7, 7) in file vs (64, 3, 3, 7, 7) in model" in message
    # Another arch's file: every key named in one message.
    torch.save(models.InceptionI3d(400).state_dict(), tmp_path / "i3d.pt")
    with pytest.raises(ValueError, match=r"not fit r3d_18\(num_classes=10\): \d+ missing keys: .*; \d+ unexpected"):
        models.load_init(model, tmp_path / "i3d.pt")
    # A directory that is no save_pretrained one, a junk .safetensors file.
    with pytest.raises(ValueError, match="without config.json, not a save_pretrained directory"):
        models.load_init(model, tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 10)
    with pytest.raises(ValueError, match=r"junk\.safetensors: not a loadable safetensors file"):
        models.load_init(model, tmp_path / "junk.safetensors")


def test_registry_refusals():
    with pytest.raises(ValueError, match=r"arch must be one of i3d, r3d_18, .*videomae-large; got 'resnet50'"):
        models.get("resnet50")
    for name in ("mvit_v1_b", "mvit_v2_s", "videomae-base", "videomae-large"):
        with pytest.raises(ValueError, match=f"arch {name} takes exactly 16 frames, got 8"):
            models.check_input(name, 8, 224)
        with pytest.raises(ValueError, match=f"arch {name} takes exactly 224 crop, got 112"):
            models.check_input(name, 16, 112)
        models.check_input(name, 16, 224)
    models.check_input("i3d", 1, 1)
    with pytest.raises(ValueError, match="arch s3d needs crop >= 32, got 16"):
        models.check_input("s3d", 8, 16)
    # S3D's unpadded temporal max pools leave nothing of fewer than 5 frames (a RuntimeError), and the
    # backward pass of 5 frames corrupts the heap on torch 2.14's CPU (glibc aborts): refused below 6.
    with pytest.raises(ValueError, match="arch s3d needs frames >= 6, got 5"):
        models.check_input("s3d", 5, 32)
    models.check_input("s3d", 6, 32)
    net = models.build("s3d", 3).train()
    logits = net(torch.randn(2, 3, 6, 32, 32))
    logits.float().mean().backward()
    assert logits.shape == (2, 3, 1)
    with pytest.raises(ValueError, match="dropout 0.5: arch r3d_18 has no dropout"):
        models.build("r3d_18", 4, dropout=0.5)
    assert models.build("r3d_18", 4, dropout=0.0).num_classes == 4
    with pytest.raises(ValueError, match="drop_path 0.1: arch s3d has no stochastic depth"):
        models.build("s3d", 4, drop_path=0.1)
    with pytest.raises(ValueError, match="drop_path 0.1: arch videomae-base has no stochastic depth"):
        models.build("videomae-base", 4, drop_path=0.1)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        models.build("s3d", 4, dropout=1.0)


def test_dropout_and_drop_path_reach_the_library_model():
    from torchvision.ops import StochasticDepth
    assert models.build("i3d", 4).dropout.p == 0.5 and models.build("i3d", 4, dropout=0.1).dropout.p == 0.1
    assert models.build("s3d", 4).net.classifier[0].p == 0.2
    assert models.build("s3d", 4, dropout=0.3).net.classifier[0].p == 0.3
    swin = models.build("swin3d_t", 4, drop_path=0.2)
    rates = [m.p for m in swin.modules() if isinstance(m, StochasticDepth)]
    assert max(rates) == pytest.approx(0.2) and rates[0] == 0.0 and rates == sorted(rates)
    assert all(m.p == 0.0 for m in models.build("swin3d_t", 4).modules() if isinstance(m, StochasticDepth))
    mvit = models.build("mvit_v2_s", 4, drop_path=0.3)
    assert max(m.p for m in mvit.modules() if isinstance(m, StochasticDepth)) == pytest.approx(0.3)


def test_model_input_values_and_channel_order():
    batch = torch.arange(2 * 3 * 2 * 2 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 2, 2, 3)
    batch[0, 0, 0, 0] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    # I3D: exactly to_model_input, bit for bit.
    assert torch.equal(models.model_input(batch, models.I3D_INPUT), to_model_input(batch))
    assert torch.equal(models.model_input(batch), to_model_input(batch))
    spec = models.get("r3d_18").spec
    assert spec.mean == pytest.approx((0.43216, 0.394666, 0.37645))
    assert spec.std == pytest.approx((0.22803, 0.22145, 0.216989))
    assert spec.name == "R3D_18_Weights.KINETICS400_V1.transforms()"
    out = models.model_input(batch, spec)
    assert out.shape == (2, 3, 3, 2, 2) and out.dtype == torch.float32 and out.is_contiguous()
    for c, value in enumerate((0, 128, 255)):
        expected = (torch.tensor(value / 255.0, dtype=torch.float32) - spec.mean[c]) / spec.std[c]
        assert out[0, c, 0, 0, 0].item() == pytest.approx(expected.item(), abs=1e-6)
    assert models.get("videomae-base").spec == models.IMAGENET_INPUT
    assert models.get("swin3d_t").spec.mean == pytest.approx(models.IMAGENET_INPUT.mean)
    assert models.get("mvit_v1_b").spec.mean == pytest.approx((0.45,) * 3)
    # bgr: the channel order reversed before normalising.
    bgr = models.model_input(batch, models.I3D_INPUT, "bgr")
    assert torch.equal(bgr, to_model_input(batch.flip(-1)))
    assert bgr[0, 0, 0, 0, 0].item() == pytest.approx(1.0) and bgr[0, 2, 0, 0, 0].item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="channels must be one of \\('rgb', 'bgr'\\), got 'rbg'"):
        models.model_input(batch, spec, "rbg")
    with pytest.raises(ValueError, match="expected a \\(B, T, H, W, 3\\) uint8 batch"):
        models.model_input(batch.float(), spec)
    # The spec a checkpoint config stores, and old configs (no arch, no input_spec): I3D's.
    assert models.spec_from_config({}) == models.I3D_INPUT
    assert models.spec_from_config({"arch": "r3d_18"}) == spec
    assert models.spec_from_config({"input_spec": spec.as_config()}) == spec


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    torch.manual_seed(0)
    model = models.build("r3d_18", 5).eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x)
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.05, atol=0.05 * fp32.abs().max().item())


def test_param_groups():
    i3d = models.build("i3d", 4)
    (group,) = models.param_groups(i3d, "i3d", weight_decay=1e-7)
    assert group["weight_decay"] == 1e-7 and group["lr_scale"] == 1.0
    assert [id(p) for p in group["params"]] == [id(p) for p in i3d.parameters()]

    swin = models.build("swin3d_t", 4)
    names = {id(p): n for n, p in swin.named_parameters()}
    groups = models.param_groups(swin, "swin3d_t", weight_decay=0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(swin.parameters()))
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert "net.features.0.0.attn.relative_position_bias_table" in no_decay
    assert {"net.head.bias", "net.norm.weight", "net.patch_embed.proj.bias"} <= no_decay
    assert {"net.head.weight", "net.patch_embed.proj.weight", "net.features.0.0.attn.qkv.weight"} <= decay
    assert not decay & no_decay
    mvit = models.build("mvit_v2_s", 4)
    mvit_no_decay = {n for n, p in mvit.named_parameters() if models.no_weight_decay(n, p)}
    assert "net.pos_encoding.class_token" in mvit_no_decay and "net.blocks.0.attn.rel_pos_h" in mvit_no_decay
    assert "net.blocks.0.attn.qkv.weight" not in mvit_no_decay

    vmae = models.build("videomae-base", 4)
    layer_id = models.get("videomae-base").layer_id
    assert layer_id("net.videomae.embeddings.patch_embeddings.projection.weight") == 0
    assert layer_id("net.videomae.encoder.layer.0.attention.attention.query.weight") == 1
    assert layer_id("net.videomae.encoder.layer.11.output.dense.bias") == 12
    assert layer_id("net.fc_norm.weight") == layer_id("net.classifier.weight") == 13
    groups = models.param_groups(vmae, "videomae-base", weight_decay=0.05, layer_decay=0.75)
    names = {id(p): n for n, p in vmae.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["net.classifier.weight"] == 1.0
    assert scale["net.videomae.encoder.layer.11.output.dense.weight"] == pytest.approx(0.75)
    assert scale["net.videomae.embeddings.patch_embeddings.projection.weight"] == pytest.approx(0.75 ** 13)
    assert len(scale) == len(list(vmae.parameters()))
    assert models.get("mvit_v1_b").layer_id("net.blocks.15.mlp.0.weight") == 16
    assert models.get("mvit_v1_b").layer_id("net.head.1.weight") == 17
    with pytest.raises(ValueError, match="layer_decay 0.75: arch r3d_18 has no layers to decay"):
        models.param_groups(models.build("r3d_18", 4), "r3d_18", weight_decay=0.0, layer_decay=0.75)


def test_param_counts_match_the_published_models():
    # torchvision's weights meta "num_params" (400 classes); I3D: pytorch-i3d's rgb_imagenet.pt.
    assert models.param_count("r3d_18") == 33371472 and models.param_count("mvit_v2_s") == 34537744
    assert models.param_count("swin3d_b") == 88048984 and models.param_count("i3d") == 12697264


def test_archs_command_lists_every_arch():
    res = _cli("archs")
    assert res.exit_code == 0
    out = res.stdout
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["arch", "frames", "crop", "input", "params"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip()}
    assert list(rows) == list(models.NAMES)
    assert "16" in rows["mvit_v2_s"].split()[1] and "224" in rows["mvit_v2_s"].split()[2]
    assert "34.5M" in rows["mvit_v2_s"] and "12.7M" in rows["i3d"] and "[-1, 1]" in rows["i3d"]
    assert "Tong et al. 2022" in rows["videomae-base"] and "imagenet" in rows["videomae-base"]


def _cli(*args: str) -> click.testing.Result:
    """The real CLI, in this process (a subprocess would import torch again: seconds per call)."""
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_train_evaluate_predict_another_arch_through_the_cli(tiny_shards, tiny_wlasl, tmp_path):
    """`train --arch r3d_18` end to end: its checkpoint records the arch and its input convention, and
    `evaluate` and `predict` follow it (the same logits as the model on torchvision's normalisation)."""
    run = tmp_path / "run"
    res = _cli("train", str(tiny_shards), str(run), "--arch", "r3d_18", "--epochs", "1", "--batch-size", "2",
               "--accumulate", "1", "--optimizer", "adam", "--lr", "1e-4", "--frames", "8", "--crop-size", "32",
               "--frame-stride", "1", "--workers", "0", "--precise-bn-batches", "1", "--device", "cpu", "--no-progress")
    assert res.exit_code == 0, res.output[-3000:]
    from wlasl_shards.train import checkpoint as ckpt_io
    ck = ckpt_io.load(run / "best.pt")
    spec = models.get("r3d_18").spec
    assert ck["config"]["arch"] == "r3d_18" and ck["config"]["dropout"] is None
    assert ck["config"]["input_spec"] == spec.as_config()
    assert all(k.startswith(models.NET_PREFIX) for k in ck["model"])
    assert json.loads((run / "config.json").read_text())["arch"] == "r3d_18"

    res = _cli("evaluate", str(run / "best.pt"), str(tiny_shards), "--split", "test", "--workers", "0",
               "--device", "cpu", "--output", str(tmp_path / "eval.json"), "--no-progress")
    assert res.exit_code == 0, res.output[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())["count"] == 4

    video = sorted((tiny_wlasl / "videos").glob("*.mp4"))[0]
    res = _cli("predict", str(run / "best.pt"), str(video), "--json", "--top-k", "4", "--device", "cpu")
    assert res.exit_code == 0, res.output[-3000:]
    [result] = json.loads(res.stdout)
    from wlasl_shards.train.evaluate import model_from_checkpoint
    from wlasl_shards.train.predict import clip_input, load_frames
    model = model_from_checkpoint(ck, torch.device("cpu"))
    frames, _ = load_frames(video, ck["preprocessing"], None)
    with torch.no_grad():
        probs = torch.softmax(model(models.model_input(clip_input(frames, 32), spec)).mean(-1)[0], 0)
    got = {t["label"]: t["probability"] for t in result["top"]}
    assert got == pytest.approx({i: float(p) for i, p in enumerate(probs)}, abs=1e-5)

    # features: the arch's penultimate features (512-d, time pooled inside: one step per video).
    import io

    import numpy as np

    from wlasl_shards import api
    from wlasl_shards.train import data
    out = tmp_path / "feats"
    index = api.features(str(run / "best.pt"), str(tiny_shards), str(out), splits=("test",), device="cpu",
                         num_workers=0, progress=False)
    assert (index["arch"], index["layer"], index["dims"]) == ("r3d_18", "penultimate", 512)
    parts = data.shard_parts(out, "test", {"splits": index["splits"]})
    samples = list(data.read_parts(parts, data.SkipCounter(0)))
    assert len(samples) == 4
    for sample in samples:
        feats = np.load(io.BytesIO(sample["features.npy"]), allow_pickle=False)
        assert feats.shape == (1, 512) and np.isfinite(feats).all() and np.abs(feats).max() > 0
        assert json.loads(sample["json"])["features"]["dims"] == 512

    # Bad input at the boundary: one line, exit 2.
    res = _cli("train", str(tiny_shards), str(tmp_path / "bad"), "--arch", "mvit_v2_s", "--frames", "8")
    assert res.exit_code == 2 and res.stderr.strip().splitlines()[-1:] == [
        "Error: arch mvit_v2_s takes exactly 16 frames, got 8 (its position embeddings are for 16 frames at 224)"]
    res = _cli("train", str(tiny_shards), str(tmp_path / "bad"), "--arch", "videomae-base", "--eval-clips", "0")
    assert res.exit_code == 2 and res.stderr.strip().splitlines()[-1:] == [
        "Error: arch videomae-base takes exactly 16 frames, and eval_clips 0 evaluates every frame of a video at "
        "once: pass eval_clips K (--eval-clips, e.g. 5)"]
    res = _cli("train", str(tiny_shards), str(tmp_path / "bad"), "--arch", "resnet")
    assert res.exit_code == 2 and "arch must be one of i3d, r3d_18" in res.stderr
    torch.save(models.InceptionI3d(400).state_dict(), tmp_path / "i3d.pt")
    res = _cli("train", str(tiny_shards), str(tmp_path / "bad"), "--arch", "r3d_18", "--frames", "8",
               "--crop-size", "32", "--init", str(tmp_path / "i3d.pt"), "--device", "cpu", "--workers", "0")
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert "does not fit r3d_18(num_classes=4): " in res.stderr and "missing keys" in res.stderr


@pytest.mark.slow
def test_a_small_arch_learns_from_scratch(learn_shards, tmp_path):
    """Issue 13 §7: torchvision's mc3_18 from scratch on the learning test's synthetic signs (10 classes),
    on the CPU: val top-1 >= 5x chance. Adam 1e-4 (the from-scratch recipe I3D's learning test uses),
    16-frame clips of 40 px, every frame, 6 epochs; the rest of the data settings as I3D's test."""
    from tests.train.conftest import LEARN
    from wlasl_shards.train.loop import TrainConfig, train

    settings = {**LEARN, "epochs": 6, "crop_size": 40, "dropout": None, "frame_stride": 1}
    report = train(TrainConfig(shards=str(learn_shards), run_dir=str(tmp_path / "run"), arch="mc3_18", **settings))
    assert report["config"]["arch"] == "mc3_18" and report["config"]["optimizer"] == "adam"
    assert report["best_val"]["top1"] >= 0.5  # chance is 0.1
    assert report["test"]["top1"] >= 0.3  # not selected on: looser, still 3x chance


def test_a_wlasl_checkpoint_with_bgr_channels_reproduces_its_logits(tmp_path):
    """Issue 13 §5: WLASL's released I3D weights saw OpenCV's BGR frames scaled to [-1, 1]. Such a file
    (a 100-gloss state_dict, here with DataParallel's `module.` prefix) through `--init`, fed our RGB
    frames with channels "bgr", gives the original pipeline's logits exactly; RGB does not."""
    torch.manual_seed(0)
    original = models.InceptionI3d(100).eval()
    with torch.no_grad():  # weights that tell the channels apart, as trained ones do (a fresh model hardly does)
        original.Conv3d_1a_7x7.conv3d.weight[:, 0] *= 20
        original.Conv3d_1a_7x7.conv3d.weight[:, 2] = 0
        original.logits.conv3d.bias.zero_()  # a fresh head's bias would outweigh the features' part
    torch.save({f"module.{k}": v for k, v in original.state_dict().items()}, tmp_path / "nslt_100.pt")
    ours = models.build("i3d", 100)
    report = models.load_init(ours, tmp_path / "nslt_100.pt", arch="i3d")
    assert report["head"] == "loaded" and report["stripped_prefix"] == "module."
    ours.eval()
    rgb = torch.randint(0, 256, (1, 12, 32, 32, 3), dtype=torch.uint8)
    bgr = rgb.flip(-1)  # what OpenCV's VideoCapture gives for the same frames
    with torch.no_grad():
        want = original(bgr.permute(0, 4, 1, 2, 3).float() / 255 * 2 - 1)
        got = ours(models.model_input(rgb, models.I3D_INPUT, "bgr"))
        wrong = ours(models.model_input(rgb, models.I3D_INPUT, "rgb"))
    assert torch.equal(got, want)
    assert (wrong - want).abs().max() > 0.01 * want.abs().max()


def test_torchvision_input_conventions_are_its_presets():
    """The registry writes torchvision's Kinetics-400 mean/std down (importing torchvision costs every
    command seconds of start-up): they must be what its weights' transforms() say."""
    from torchvision.models import video

    for weights, (mean, std) in models.TORCHVISION_STATS.items():
        preset = getattr(video, weights).KINETICS400_V1.transforms()
        assert (tuple(preset.mean), tuple(preset.std)) == (mean, std), weights
    tv_archs = [a for a in models.ARCHS.values() if a.family not in ("i3d", "videomae")]
    assert {a.spec.name.split(".")[0] for a in tv_archs} == set(models.TORCHVISION_STATS)
