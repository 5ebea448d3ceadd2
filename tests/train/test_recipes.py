"""Recipes: optimiser kinds, warm-up + cosine schedule, per-arch defaults and their resolution."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from wlasl_shards.train import loop, recipes
from wlasl_shards.train.loop import TrainConfig

BASE = {"shards": "s", "run_dir": "r"}


def test_warmup_cosine_values():
    # 4 warm-up steps of 10: 1/4, 2/4, 3/4, 1, then a half cosine over the 6 steps left.
    factors = [recipes.warmup_cosine(step, 4, 10) for step in range(11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0
    assert factors[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert factors[10] == pytest.approx(0.0)
    assert recipes.warmup_cosine(12, 4, 10) == pytest.approx(0.0)  # past the end: stays at 0


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def test_cosine_without_warmup_is_the_seeds_schedule():
    p = [torch.nn.Parameter(torch.zeros(2))]
    ours, seed = _sgd(p), _sgd(p)
    a = recipes.cosine(ours, 20, 0)
    b = torch.optim.lr_scheduler.CosineAnnealingLR(seed, T_max=20)
    assert type(a) is type(b)
    for _ in range(20):
        ours.step(), seed.step(), a.step(), b.step()
        assert ours.param_groups[0]["lr"] == seed.param_groups[0]["lr"]


def test_cosine_with_warmup_per_step_and_resumes_from_its_state():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = _sgd(p)
    sched = recipes.cosine(opt, 10, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs[:5] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    # A resumed run: a fresh scheduler loading the state (weights_only-loadable) goes on identically.
    state = sched.state_dict()
    opt2 = _sgd(p)
    opt2.load_state_dict(opt.state_dict())
    sched2 = recipes.cosine(opt2, 10, 4)
    sched2.load_state_dict(state)
    for _ in range(4):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_make_optimizer_applies_lr_scale_and_group_weight_decay():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    groups = [{"params": [a], "lr_scale": 0.5}, {"params": [b], "weight_decay": 0.0}]
    opt = recipes.make_optimizer(recipes.OPTIMIZERS["adamw"], groups, 1e-3, 0.05)
    assert isinstance(opt, torch.optim.AdamW)
    g0, g1 = opt.param_groups
    assert (g0["lr"], g0["weight_decay"]) == (5e-4, 0.05)
    assert (g1["lr"], g1["weight_decay"]) == (1e-3, 0.0)
    assert "lr_scale" not in g0


def test_i3d_resolves_to_the_seed_recipe():
    r = TrainConfig(**BASE).resolve()
    assert (r.arch, r.optimizer, r.lr, r.weight_decay, r.clip_len) == ("i3d", "sgd", 0.01, 1e-7, 64)
    assert (r.warmup_epochs, r.layer_decay, r.drop_path, r.label_smoothing) == (0.0, None, 0.0, 0.0)
    assert (r.dropout, r.eval_reduce) == (0.5, "max")
    # Another optimiser than the recipe's: that optimiser's own defaults, no warm-up.
    adam = TrainConfig(**BASE, optimizer="adam").resolve()
    assert (adam.lr, adam.weight_decay, adam.warmup_epochs) == (1e-3, 1e-7, 0.0)
    # Explicit values win; resolving twice changes nothing.
    mine = TrainConfig(**BASE, lr=0.5, clip_len=16).resolve()
    assert (mine.lr, mine.clip_len) == (0.5, 16) and mine.resolve() == mine


def test_a_resolved_config_is_not_resolved_again_and_reads_its_init_dir_once(tmp_path):
    # Resolved, a config is its own resolution: check / loader_config / resolved use it as it is,
    # also where fields stay None (r3d_18 has no dropout; adam no layer decay).
    for options in ({}, {"arch": "r3d_18"}, {"arch": "videomae-base", "optimizer": "adam"}):
        r = TrainConfig(**BASE, **options).resolve()
        assert r.resolve() is r and r.loader_config() == TrainConfig(**BASE, **options).loader_config()
    assert TrainConfig(**BASE, arch="r3d_18").resolve().dropout is None
    # An --init save_pretrained dir's preprocessor_config.json: read once, when config.json's input_spec
    # is first asked for; every later checkpoint (and setup's Setup.spec) gets that same spec.
    stats = tmp_path / "preprocessor_config.json"
    stats.write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    cfg = TrainConfig(**BASE, arch="videomae-base", init=str(tmp_path)).resolve()
    first = {"name": "preprocessor_config.json", "mean": [0.5] * 3, "std": [0.25] * 3}
    assert cfg.resolved()["input_spec"] == first
    stats.write_text(json.dumps({"image_mean": [0.1] * 3, "image_std": [0.2] * 3}))
    assert cfg.resolved()["input_spec"] == first and cfg.input_spec.as_config() == first
    again = TrainConfig(**BASE, arch="videomae-base", init=str(tmp_path))  # another config reads it anew
    assert again.resolved()["input_spec"]["mean"] == [0.1] * 3 and again.input_spec.std == (0.2,) * 3


@pytest.mark.parametrize("arch", sorted(recipes.RECIPES))
def test_every_arch_default_recipe_passes_the_checks(arch):
    TrainConfig(**BASE, arch=arch).check()  # the recipe's values fit the arch (sizes, drop path, layer decay)


def test_arch_recipes_scale_their_sources_lr_to_the_recipe_batch():
    assert recipes.recipe("r3d_18").lr == pytest.approx(0.64 * 16 / (64 * 24))
    vmae = TrainConfig(**BASE, arch="videomae-base").resolve()
    assert (vmae.optimizer, vmae.clip_len, vmae.layer_decay, vmae.label_smoothing) == ("adamw", 16, 0.75, 0.1)
    assert vmae.lr == pytest.approx(5e-4 * 16 / 256)
    assert set(recipes.RECIPES) >= {"i3d", "s3d", "mvit_v2_s", "swin3d_t", "videomae-large"}
    # A recipe's warm-up (10 epochs for the video ResNets) is capped at a quarter of a short run.
    assert TrainConfig(**BASE, arch="r3d_18").resolve().warmup_epochs == 10
    assert TrainConfig(**BASE, arch="r3d_18", epochs=8).resolve().warmup_epochs == 2
    with pytest.raises(ValueError, match="arch must be one of .*got 'vgg'"):
        recipes.recipe("vgg")


@pytest.mark.parametrize("options, message", [
    ({"optimizer": "adam", "warmup_epochs": 2}, "warmup_epochs 2: optimizer 'adam' steps its lr on the val loss"),
    ({"warmup_epochs": 100}, r"warmup_epochs must be in \[0, epochs=60\], got 100"),
    ({"layer_decay": 0.75}, "layer_decay 0.75: arch i3d has no layers to decay"),
    ({"layer_decay": 1.5, "arch": "videomae-base"}, r"layer_decay must be in \(0, 1\], got 1.5"),
    ({"drop_path": 0.1}, "drop_path 0.1: arch i3d has no stochastic depth"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of .*got 'rmsprop'"),
])
def test_recipe_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**BASE, **options).check()


def test_a_run_from_before_recipes_resumes_with_the_same_config():
    # config.json of a run from before arch/recipes: explicit seed values, no new fields.
    now = TrainConfig(**BASE).resolved()
    old = {k: v for k, v in now.items() if k not in ("arch", "warmup_epochs", "layer_decay", "drop_path")}
    assert loop._differences(old, now) == []
    assert loop._differences(old, dataclasses.replace(TrainConfig(**BASE), warmup_epochs=1).resolved()) == [
        "warmup_epochs: 0.0 -> 1"]


def test_slow_batchnorm_archs_are_the_ones_precise_bn_is_for():
    from wlasl_shards.train import models
    from wlasl_shards.train.precise_bn import slow_batchnorm

    assert slow_batchnorm(models.build("i3d", 3)) == 0.01
    assert slow_batchnorm(models.build("s3d", 3)) == 0.001
    assert slow_batchnorm(models.build("r3d_18", 3)) is None  # torchvision's default 0.1
