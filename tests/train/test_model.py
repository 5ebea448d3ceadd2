"""models/i3d.py, weights.py: Inception-I3D against the Kinetics-400 layout, SAME padding, pooling, load_init."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from tests.conftest import FIXTURES, REFERENCE
from wlasl_shards.train.models.i3d import InceptionI3d, Unit3D, head_pool, same_padding, same_padding_3d
from wlasl_shards.train.models.weights import load_init

LAYOUT = FIXTURES / "kinetics400_rgb_checkpoint_layout.json"
REFERENCE_LAYOUT = REFERENCE / "i3d" / "kinetics400_rgb_checkpoint_layout.json"

# Counted from the layout file (everything but the BatchNorm running statistics):
# 12,287,264 backbone + 1024 * 400 + 400 head. (The "~12.3 M" usually quoted is the backbone.)
PARAMS_400 = 12_697_264
BACKBONE_PARAMS = 12_287_264


class NotATensor:
    """Something a checkpoint file must never make us unpickle."""


def _layout(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


@pytest.fixture(scope="module")
def kinetics_state() -> dict[str, torch.Tensor]:
    """A 400-class state_dict with every tensor (running stats and step counters too) randomised,
    so an equal tensor after loading proves it was copied."""
    torch.manual_seed(0)
    state = InceptionI3d(400).state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            value.fill_(7)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        else:
            value.normal_()
    return state


# ------------------------------------------------------------------------------------- the layout


def test_state_dict_matches_the_kinetics_checkpoint_layout():
    reference = json.loads(LAYOUT.read_text())
    assert len(reference) == 287 and not any(k.endswith("num_batches_tracked") for k in reference)
    model = InceptionI3d()
    assert _layout(model) == reference
    assert list(_layout(model)) == list(reference)  # same order too (head first, as in the file)
    # Our state_dict adds exactly one step counter per BatchNorm.
    bns = [k for k in reference if k.endswith(".bn.weight")]
    assert len(model.state_dict()) - len(reference) == len(bns) == 57


@pytest.mark.skipif(not REFERENCE_LAYOUT.is_file(), reason="no ../shared/reference")
def test_fixture_is_the_reference_layout():
    assert json.loads(LAYOUT.read_text()) == json.loads(REFERENCE_LAYOUT.read_text())


def test_parameter_count():
    reference = json.loads(LAYOUT.read_text())
    from_file = sum(math.prod(s) for k, s in reference.items() if "running_" not in k)
    assert from_file == PARAMS_400
    model = InceptionI3d()
    assert sum(p.numel() for p in model.parameters()) == PARAMS_400
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("logits.")) == BACKBONE_PARAMS
    assert sum(p.numel() for p in InceptionI3d(100).parameters()) == BACKBONE_PARAMS + 1024 * 100 + 100


def test_batchnorm_eps_momentum_and_head():
    model = InceptionI3d(num_classes=7, dropout=0.3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(bns) == 57 and all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv3d)}
    assert len(convs) == 58 and all(m.bias is None for n, m in convs.items() if n != "logits.conv3d")
    assert model.logits.conv3d.bias.shape == (7,) and model.logits.bn is None
    assert model.dropout.p == 0.3 and InceptionI3d().dropout.p == 0.5


def test_bad_constructor_arguments():
    for kwargs, message in [({"num_classes": 0}, "num_classes must be >= 1, got 0"),
                            ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
                            ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0")]:
        with pytest.raises(ValueError, match=message):
            InceptionI3d(**kwargs)


# --------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape, feature_shape, out_t", [
    ((8, 64, 64), (1, 2, 2), 1),        # the smallest supported clip and crop
    ((16, 112, 112), (2, 4, 4), 1),
    ((32, 64, 64), (4, 2, 2), 3),
    ((9, 64, 96), (2, 2, 3), 1),        # non-square, odd T
    ((12, 97, 65), (2, 4, 3), 1),       # odd sizes: ceil at every stride
    ((8, 256, 256), (1, 8, 8), 1),      # where the original's fixed 7x7 pooling breaks
])
def test_output_shapes(shape, feature_shape, out_t):
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=5).eval()
    x = torch.rand(2, 3, *shape) * 2 - 1
    with torch.no_grad():
        features = model.features(x)
        logits = model(x)
    assert features.shape == (2, 1024, *feature_shape)
    assert logits.shape == (2, 5, out_t) and torch.isfinite(logits).all()
    assert features.min() >= 0  # ReLU outputs: the zero padding of the max pools is harmless


def test_bad_input_shape_is_a_value_error():
    model = InceptionI3d(num_classes=5)
    with pytest.raises(ValueError, match=r"expected input \(B, 3, T, H, W\), got \(1, 1, 8, 64, 64\)"):
        model(torch.zeros(1, 1, 8, 64, 64))
    with pytest.raises(ValueError, match=r"got \(3, 8, 64, 64\)"):
        model.features(torch.zeros(3, 8, 64, 64))


def test_trains_one_step():
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=3).train()
    logits = model(torch.rand(2, 3, 8, 64, 64) * 2 - 1)
    nn.functional.cross_entropy(logits.mean(2), torch.tensor([0, 2])).backward()
    assert model.Conv3d_1a_7x7.conv3d.weight.grad.abs().sum() > 0
    assert model.logits.conv3d.bias.grad.shape == (3,)
    assert int(model.Conv3d_1a_7x7.bn.num_batches_tracked) == 1


# --------------------------------------------------------------------------------- SAME padding


def test_same_padding_follows_tensorflow():
    assert same_padding(64, 7, 2) == (2, 3)    # even input, stride 2: extra pixel at the end
    assert same_padding(65, 7, 2) == (3, 3)
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(8, 2, 2) == (0, 0)
    assert same_padding(7, 2, 2) == (0, 1)
    assert same_padding(5, 1, 1) == (0, 0)
    assert same_padding_3d((8, 64, 65), (7, 7, 7), (2, 2, 2)) == [(2, 3), (2, 3), (3, 3)]
    for size in range(1, 40):
        for kernel in (1, 2, 3, 7):
            for stride in (1, 2):
                before, after = same_padding(size, kernel, stride)
                assert 0 <= after - before <= 1
                assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


@pytest.mark.parametrize("size", [(8, 64, 64), (9, 65, 63), (7, 33, 100)])
def test_stem_outputs_ceil_of_input_over_stride(size):
    model = InceptionI3d(num_classes=2)
    x = torch.zeros(1, 3, *size)
    conv = model.Conv3d_1a_7x7(x)
    assert conv.shape[2:] == tuple(math.ceil(s / 2) for s in size)
    pooled = model.MaxPool3d_2a_3x3(conv)
    t, h, w = conv.shape[2:]
    assert pooled.shape[2:] == (t, math.ceil(h / 2), math.ceil(w / 2))


def test_same_padding_puts_the_extra_pixel_at_the_end():
    # A (1, 1, 2) all-ones kernel: output j sums inputs j and j + 1; the last one sees one zero pad.
    unit = Unit3D(1, 1, (1, 1, 2), batch_norm=False, relu=False, bias=True)
    with torch.no_grad():
        unit.conv3d.weight.fill_(1.0)
        unit.conv3d.bias.zero_()
        x = torch.arange(1.0, 6.0).reshape(1, 1, 1, 1, 5)
        assert unit(x).flatten().tolist() == [3.0, 5.0, 7.0, 9.0, 5.0]
        # Stride 2 on an even size: total padding kernel - stride = 1 for k=3, again at the end.
        unit = Unit3D(1, 1, (1, 1, 3), (1, 1, 2), batch_norm=False, relu=False, bias=True)
        unit.conv3d.weight.fill_(1.0)
        unit.conv3d.bias.zero_()
        x = torch.arange(1.0, 7.0).reshape(1, 1, 1, 1, 6)
        assert unit(x).flatten().tolist() == [1 + 2 + 3, 3 + 4 + 5, 5 + 6]


def test_symmetric_padding_shortcut_equals_explicit_padding():
    torch.manual_seed(0)
    unit = Unit3D(4, 6, (3, 3, 3)).eval()
    x = torch.randn(1, 4, 5, 9, 8)
    with torch.no_grad():
        padded = nn.functional.pad(x, (1, 1, 1, 1, 1, 1))
        expected = torch.relu(unit.bn(nn.functional.conv3d(padded, unit.conv3d.weight)))
        torch.testing.assert_close(unit(x), expected)


# -------------------------------------------------------------------------------------- pooling


def test_head_pool_equals_fixed_2x7x7_pool_at_224():
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=10).eval()
    x = torch.rand(1, 3, 16, 224, 224) * 2 - 1
    original_pool = nn.AvgPool3d((2, 7, 7), stride=1)
    with torch.no_grad():
        features = model.features(x)
        assert features.shape == (1, 1024, 2, 7, 7)
        assert torch.equal(head_pool(features), original_pool(features))
        original = model.logits(original_pool(features)).squeeze(4).squeeze(3)
        assert torch.equal(model(x), original)
        # A longer map: the temporal window slides with stride 1.
        longer = torch.rand(2, 1024, 5, 7, 7)
        assert head_pool(longer).shape == (2, 1024, 4, 1, 1)
        assert torch.equal(head_pool(longer), original_pool(longer))


def test_head_pool_elsewhere_is_a_full_spatial_mean():
    feats = torch.rand(2, 8, 3, 4, 5)
    torch.testing.assert_close(head_pool(feats)[..., 0, 0], (feats[:, :, :-1] + feats[:, :, 1:]).mean((3, 4)) / 2)
    one_frame = torch.rand(2, 8, 1, 2, 2)
    torch.testing.assert_close(head_pool(one_frame)[:, :, 0, 0, 0], one_frame.mean((2, 3, 4)))


# ----------------------------------------------------------------------------------- load_init


def _save(state, path, **kwargs):
    torch.save(state, path, **kwargs)
    return path


@pytest.mark.parametrize("variant", ["as_is", "no_num_batches_tracked", "module_prefix", "compiled_ddp",
                                     "training_checkpoint", "legacy_format"])
def test_load_init_kinetics_into_10_classes(tmp_path, kinetics_state, variant):
    if variant == "no_num_batches_tracked":
        saved = OrderedDict((k, v) for k, v in kinetics_state.items() if not k.endswith("num_batches_tracked"))
    elif variant == "module_prefix":
        saved = OrderedDict((f"module.{k}", v) for k, v in kinetics_state.items())
    elif variant == "compiled_ddp":
        saved = OrderedDict((f"module._orig_mod.{k}", v) for k, v in kinetics_state.items())
    elif variant == "training_checkpoint":
        saved = {"model": kinetics_state, "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}
    else:
        saved = kinetics_state
    path = _save(saved, tmp_path / "rgb_imagenet.pt", _use_new_zipfile_serialization=variant != "legacy_format")
    model = InceptionI3d(num_classes=10)
    fresh_head = model.logits.conv3d.weight.detach().clone()
    report = load_init(model, path)

    loaded = model.state_dict()
    for key, value in _backbone(kinetics_state).items():
        if key.endswith("num_batches_tracked") and variant == "no_num_batches_tracked":
            assert int(loaded[key]) == 0
        else:
            assert torch.equal(loaded[key], value), key
    assert loaded["logits.conv3d.weight"].shape == (10, 1024, 1, 1, 1)
    assert torch.equal(loaded["logits.conv3d.weight"], fresh_head)  # the new head is kept as initialised
    assert report["head"] == "replaced" and report["source_classes"] == 400 and report["num_classes"] == 10
    assert report["source"] == str(path)
    assert report["unwrapped"] == (variant == "training_checkpoint")
    prefixes = {"module_prefix": "module.", "compiled_ddp": "module._orig_mod."}
    assert report["stripped_prefix"] == prefixes.get(variant, "")
    assert report["loaded"] == (285 if variant == "no_num_batches_tracked" else 285 + 57)
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 8, 64, 64)).shape == (1, 10, 1)


def test_load_init_same_class_count_loads_the_head_too(kinetics_state):
    model = InceptionI3d(num_classes=400)
    report = load_init(model, kinetics_state)
    assert report["head"] == "loaded" and report["source"] == "<state_dict>"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kinetics_state.items())


def test_load_init_backbone_only(kinetics_state):
    model = InceptionI3d(num_classes=10)
    report = load_init(model, _backbone(kinetics_state))
    assert report["head"] == "absent" and report["source_classes"] is None


def test_load_init_renamed_key_names_the_key_and_file(tmp_path, kinetics_state):
    state = OrderedDict(kinetics_state)
    state["Mixed_4c.b1b.conv3d.weights"] = state.pop("Mixed_4c.b1b.conv3d.weight")
    path = _save(state, tmp_path / "renamed.pt")
    model = InceptionI3d(num_classes=10)
    before = model.Conv3d_1a_7x7.conv3d.weight.detach().clone()
    with pytest.raises(ValueError) as err:
        load_init(model, path)
    message = str(err.value)
    assert str(path) in message
    assert "1 missing keys: Mixed_4c.b1b.conv3d.weight" in message
    assert "1 unexpected keys: Mixed_4c.b1b.conv3d.weights" in message
    assert torch.equal(model.Conv3d_1a_7x7.conv3d.weight, before)  # nothing loaded on error
    # Without strict_backbone the rest is loaded and the problem reported.
    report = load_init(model, path, strict_backbone=False)
    assert report["missing"] == ["Mixed_4c.b1b.conv3d.weight"]
    assert report["unexpected"] == ["Mixed_4c.b1b.conv3d.weights"]
    assert torch.equal(model.Conv3d_1a_7x7.conv3d.weight, kinetics_state["Conv3d_1a_7x7.conv3d.weight"])


def test_load_init_lists_shape_mismatches_and_counts(kinetics_state):
    flow = InceptionI3d(num_classes=10, in_channels=2)  # a 2-channel (optical flow) model
    with pytest.raises(ValueError, match=r"1 shape mismatches: Conv3d_1a_7x7.conv3d.weight: "
                                         r"\(64, 3, 7, 7, 7\) in file vs \(64, 2, 7, 7, 7\) in model"):
        load_init(flow, kinetics_state)
    truncated = {k: v for k, v in kinetics_state.items() if not k.startswith("Mixed_5")}
    with pytest.raises(ValueError, match=r"60 missing keys: Mixed_5b\.b0\.conv3d\.weight, .*\(55 more\)"):
        load_init(InceptionI3d(num_classes=10), truncated)


def test_load_init_refuses_pickled_objects(tmp_path, kinetics_state):
    path = _save({"model": kinetics_state, "x": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: refused, it holds a pickled .*NotATensor object"):
        load_init(InceptionI3d(num_classes=10), path)


@pytest.mark.parametrize("content, reason", [
    (b"definitely not a checkpoint" * 8, "not a loadable PyTorch checkpoint"),
    (b"PK\x03\x04" + b"\x00" * 64, "not a loadable PyTorch checkpoint"),
    (b"", "empty file"),
])
def test_load_init_garbage_file(tmp_path, content, reason):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"checkpoint {path}: {reason}"):
        load_init(InceptionI3d(num_classes=10), path)


def test_load_init_not_a_state_dict(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_init(InceptionI3d(num_classes=10), tmp_path / "missing.pt")
    path = _save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: expected a state_dict \(name -> tensor\), got list"):
        load_init(InceptionI3d(num_classes=10), path)
    path = _save({"epoch": 3, "lr": 0.1}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match=r"2 entries are not tensors"):
        load_init(InceptionI3d(num_classes=10), path)


def test_replace_logits():
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=400).to(torch.float64)
    stem = model.Conv3d_1a_7x7.conv3d.weight.detach().clone()
    model.replace_logits(100)
    assert model.num_classes == 100 and model.logits.conv3d.weight.shape == (100, 1024, 1, 1, 1)
    assert model.logits.conv3d.weight.dtype == torch.float64
    assert torch.equal(model.Conv3d_1a_7x7.conv3d.weight, stem)
    assert list(model.state_dict())[:2] == ["logits.conv3d.weight", "logits.conv3d.bias"]
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        model.replace_logits(0)
