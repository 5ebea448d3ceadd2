"""The model registry: ONE table, arch name -> constructor, input convention, sizes, head, recipe facts.

    i3d                               Inception-I3D (i3d.py), pytorch-i3d's layout; the default, bit for bit
    r3d_18 mc3_18 r2plus1d_18 s3d     torchvision's video convnets (library.py)
    mvit_v1_b mvit_v2_s               torchvision's multiscale ViTs: exactly 16 frames at 224
    swin3d_t swin3d_s swin3d_b        torchvision's Video Swin transformers
    videomae-base videomae-large      transformers' VideoMAEForVideoClassification: exactly 16 frames at 224

Every model takes (B, 3, T, H, W) float already normalised by its `InputSpec` (`model_input` does that on
the device from the uint8 batch) and returns logits (B, classes, T'). Input conventions are the ones the
published Kinetics-400 weights were trained with: torchvision's `<Weights>.KINETICS400_V1.transforms()`
mean/std (TORCHVISION_STATS; torchvision itself is imported only to build one of its models), VideoMAE's
from MCG-NJU's preprocessor_config.json.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wlasl_shards.train.models import library
from wlasl_shards.train.models.i3d import FEATURE_DIM, KINETICS_CLASSES, InceptionI3d
from wlasl_shards.train.models.weights import (
    PREPROCESSOR_CONFIG,
    LoadReport,
    load_init,
    preprocessor_stats,
    read_checkpoint,
)
from wlasl_shards.train.transforms import to_model_input

NET_PREFIX = "net."  # where a library model sits in its wrapper (library.py)
CHANNELS = ("rgb", "bgr")


@dataclass(frozen=True)
class InputSpec:
    """How uint8 frames become the model's input: x / 255, then (x - mean) / std per channel (RGB order).

    The I3D convention "[-1, 1]" is x / 255 * 2 - 1, computed as `transforms.to_model_input` does (bit for
    bit the seed's); its mean/std (0.5) say the same in the other form.
    """

    name: str  # "[-1, 1]", "<torchvision weights>.transforms()", "imagenet", or "preprocessor_config.json"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_config(self) -> dict:
        """What a checkpoint's config stores ("input_spec")."""
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_config(cls, value: dict) -> InputSpec:
        return cls(str(value["name"]), tuple(float(v) for v in value["mean"]),  # type: ignore[arg-type]
                   tuple(float(v) for v in value["std"]))  # type: ignore[arg-type]


I3D_INPUT = InputSpec("[-1, 1]", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_INPUT = InputSpec("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # MCG-NJU's VideoMAE


# The mean/std of torchvision's `<Weights>.KINETICS400_V1.transforms()` per weights enum, as written
# here: importing torchvision to read them costs seconds of every command's start-up (a test checks these
# against torchvision's own presets).
_KINETICS = ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))  # the video ResNets' and S3D's
TORCHVISION_STATS = {
    "R3D_18_Weights": _KINETICS, "MC3_18_Weights": _KINETICS, "R2Plus1D_18_Weights": _KINETICS,
    "S3D_Weights": _KINETICS,
    "MViT_V1_B_Weights": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
    "MViT_V2_S_Weights": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
    "Swin3D_T_Weights": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "Swin3D_S_Weights": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "Swin3D_B_Weights": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _torchvision_input(weights: str) -> InputSpec:
    """The input convention of torchvision's `<weights>.KINETICS400_V1` (TORCHVISION_STATS)."""
    mean, std = TORCHVISION_STATS[weights]
    return InputSpec(f"{weights}.KINETICS400_V1.transforms()", mean, std)


# ----------------------------------------------------------------------------------- layer ids


def _block_layer_id(name: str, *, embed: tuple[str, ...], block: str, num_layers: int) -> int:
    """Layer-wise lr decay ids of a ViT: the embeddings 0, block i -> i + 1, the rest (norm, head) last."""
    if name.startswith(embed):
        return 0
    match = re.match(re.escape(block) + r"(\d+)\.", name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def _vit_layer_id(embed: tuple[str, ...], block: str, num_layers: int) -> Callable[[str], int]:
    return functools.partial(_block_layer_id, embed=embed, block=block, num_layers=num_layers)


# ------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Arch:
    """One arch: how to build it, what it takes, where its head is, how its logits and weights are treated."""

    name: str
    family: str  # "i3d", "videoresnet", "s3d", "mvit", "swin3d", "videomae"
    summary: str  # one line for `wlasl-shards archs`
    make: Callable[..., nn.Module]  # (num_classes, *, dropout, drop_path) -> model; dropout None = its default
    spec: InputSpec  # input convention of the published Kinetics-400 weights
    frames: int | None  # the exact clip length it takes, or None (any from min_frames)
    min_frames: int
    crop: int | None  # the exact crop it takes, or None (any from min_crop)
    min_crop: int
    native_frames: int  # the published weights' clip length (benchmarks)
    native_crop: int
    head_prefix: str  # state_dict keys of the head (replaced for another class count)
    time_logits: bool  # logits keep time (T' > 1 for long clips); else T' = 1
    eval_reduce: str  # default reduction of logits over time: "max" (WLASL's rule) | "mean"
    dropout: float | None  # default dropout; None: the arch has none (a non-zero dropout is refused)
    drop_path: bool  # stochastic depth supported (build's drop_path)
    feature_dim: int  # D of clip_features
    layer_id: Callable[[str], int] | None  # param name -> layer for layer-wise lr decay; None: not a ViT
    kinetics_top1: float | None  # Kinetics-400 top-1 of the published weights, as their owners publish it
    extra: str | None = None  # the pip extra it needs beyond the base install
    # (pattern, replacement) for file keys of the published layout that the library model names otherwise
    key_renames: tuple[tuple[str, str], ...] = ()


def _i3d(num_classes: int, *, dropout: float | None, drop_path: float) -> nn.Module:
    del drop_path
    return InceptionI3d(num_classes, dropout=0.5 if dropout is None else dropout)


def _tv(constructor: str) -> Callable[..., nn.Module]:
    return functools.partial(library.torchvision_video, constructor, constructor)


def _table() -> dict[str, Arch]:
    resnet = dict(family="videoresnet", frames=None, min_frames=1, crop=None, min_crop=16, native_frames=16,
                  native_crop=112, head_prefix="net.fc.", time_logits=False, eval_reduce="mean", dropout=None,
                  drop_path=False, feature_dim=512, layer_id=None, kinetics_top1=None)
    mvit = dict(family="mvit", frames=16, min_frames=16, crop=224, min_crop=224, native_frames=16, native_crop=224,
                head_prefix="net.head.", time_logits=False, eval_reduce="mean", dropout=0.5, drop_path=True,
                feature_dim=768)
    swin = dict(family="swin3d", frames=None, min_frames=1, crop=None, min_crop=32, native_frames=32,
                native_crop=224, head_prefix="net.head.", time_logits=False, eval_reduce="mean", dropout=0.0,
                drop_path=True, layer_id=None)
    vmae = dict(family="videomae", spec=IMAGENET_INPUT, frames=16, min_frames=16, crop=224, min_crop=224,
                native_frames=16, native_crop=224, head_prefix="net.classifier.", time_logits=False,
                eval_reduce="mean", dropout=0.0, drop_path=False, extra="videomae",
                # MCG-NJU's files, and what transformers' save_pretrained writes, keep the original q_bias /
                # v_bias (the key projection has none); transformers 5 modules call them query.bias / value.bias.
                key_renames=((r"\.attention\.attention\.q_bias$", ".attention.attention.query.bias"),
                             (r"\.attention\.attention\.v_bias$", ".attention.attention.value.bias")))
    mvit_id = _vit_layer_id(("net.conv_proj.", "net.pos_encoding."), "net.blocks.", 16)
    archs = [
        Arch("i3d", "i3d", "Inception-I3D (Carreira & Zisserman 2017), pytorch-i3d's layout; WLASL's baseline",
             _i3d, I3D_INPUT, None, 1, None, 1, 64, 224, "logits.", True, "max", 0.5, False, FEATURE_DIM, None, 71.1),
        Arch("r3d_18", summary="ResNet3D-18 (Tran et al. 2018), torchvision", make=_tv("r3d_18"),
             spec=_torchvision_input("R3D_18_Weights"), **{**resnet, "kinetics_top1": 63.2}),
        Arch("mc3_18", summary="Mixed-convolution MC3-18 (Tran et al. 2018), torchvision", make=_tv("mc3_18"),
             spec=_torchvision_input("MC3_18_Weights"), **{**resnet, "kinetics_top1": 63.96}),
        Arch("r2plus1d_18", summary="R(2+1)D-18 (Tran et al. 2018), torchvision", make=_tv("r2plus1d_18"),
             spec=_torchvision_input("R2Plus1D_18_Weights"), **{**resnet, "kinetics_top1": 67.463}),
        Arch("s3d", "s3d", "S3D (Xie et al. 2018), torchvision; NLA-SLR's RGB backbone", _tv("s3d"),
             _torchvision_input("S3D_Weights"), None, 6, None, 32, 128, 224, "net.classifier.", True, "mean", 0.2,
             False, 1024, None, 68.368),
        Arch("mvit_v1_b", summary="MViT v1-B 16x4 (Fan et al. 2021), torchvision", make=_tv("mvit_v1_b"),
             spec=_torchvision_input("MViT_V1_B_Weights"), layer_id=mvit_id, kinetics_top1=78.477, **mvit),
        Arch("mvit_v2_s", summary="MViT v2-S 16x4 (Li et al. 2022), torchvision; Logos' backbone",
             make=_tv("mvit_v2_s"), spec=_torchvision_input("MViT_V2_S_Weights"), layer_id=mvit_id,
             kinetics_top1=80.757, **mvit),
        Arch("swin3d_t", summary="Video Swin-T (Liu et al. 2022), torchvision", make=_tv("swin3d_t"),
             spec=_torchvision_input("Swin3D_T_Weights"), feature_dim=768, kinetics_top1=77.715, **swin),
        Arch("swin3d_s", summary="Video Swin-S (Liu et al. 2022), torchvision", make=_tv("swin3d_s"),
             spec=_torchvision_input("Swin3D_S_Weights"), feature_dim=768, kinetics_top1=79.521, **swin),
        Arch("swin3d_b", summary="Video Swin-B (Liu et al. 2022), torchvision", make=_tv("swin3d_b"),
             spec=_torchvision_input("Swin3D_B_Weights"), feature_dim=1024, kinetics_top1=79.427, **swin),
        Arch("videomae-base", summary="VideoMAE ViT-B/16 (Tong et al. 2022), transformers; SignNet's backbone",
             make=functools.partial(library.videomae, "videomae-base"), feature_dim=768,
             layer_id=_vit_layer_id(("net.videomae.embeddings.",), "net.videomae.encoder.layer.", 12),
             kinetics_top1=80.9, **vmae),
        Arch("videomae-large", summary="VideoMAE ViT-L/16 (Tong et al. 2022), transformers",
             make=functools.partial(library.videomae, "videomae-large"), feature_dim=1024,
             layer_id=_vit_layer_id(("net.videomae.embeddings.",), "net.videomae.encoder.layer.", 24),
             kinetics_top1=84.7, **vmae),
    ]
    return {a.name: a for a in archs}


ARCHS: dict[str, Arch] = _table()
NAMES = tuple(ARCHS)


def get(name: str) -> Arch:
    """The registry's entry; ValueError listing the names for an unknown one."""
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"arch must be one of {', '.join(NAMES)}; got {name!r}") from None


def arch_of(model: nn.Module) -> str:
    """The arch name of a model `build` made (InceptionI3d: "i3d")."""
    return "i3d" if isinstance(model, InceptionI3d) else str(model.arch)


def check_options(name: str, *, dropout: float | None = None, drop_path: float = 0.0,
                  layer_decay: float | None = None) -> None:
    """ValueError naming the option, the value and the arch when `name` cannot take it: a dropout out of
    [0, 1) or non-zero for an arch without one, a drop path out of [0, 1) or non-zero for an arch
    without stochastic depth, a layer decay out of (0, 1] or for an arch without layers to decay."""
    arch = get(name)
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if dropout and arch.dropout is None:
        raise ValueError(f"dropout {dropout}: arch {name} has no dropout (use 0 or leave it unset)")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
    if drop_path and not arch.drop_path:
        raise ValueError(f"drop_path {drop_path}: arch {name} has no stochastic depth (these do: "
                         f"{', '.join(n for n, a in ARCHS.items() if a.drop_path)})")
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if layer_decay is not None and arch.layer_id is None:
        raise ValueError(f"layer_decay {layer_decay}: arch {name} has no layers to decay (ViTs do: "
                         f"{', '.join(n for n, a in ARCHS.items() if a.layer_id is not None)})")


def build(name: str, num_classes: int, *, dropout: float | None = None, drop_path: float = 0.0) -> nn.Module:
    """A freshly initialised `name` model with a `num_classes` head (nothing downloaded).

    dropout None: the arch's default (I3D 0.5); `check_options` refuses what the arch cannot take.
    """
    arch = get(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    check_options(name, dropout=dropout, drop_path=drop_path)
    return arch.make(num_classes, dropout=None if arch.dropout is None else dropout, drop_path=drop_path)


def default_dropout(name: str) -> float | None:
    return get(name).dropout


def check_input(name: str, frames: int, crop: int) -> None:
    """ValueError naming the arch and the value when it cannot take clips of `frames` x `crop` x `crop`."""
    arch = get(name)
    for what, value, exact, least in (("frames", frames, arch.frames, arch.min_frames),
                                      ("crop", crop, arch.crop, arch.min_crop)):
        if exact is not None and value != exact:
            raise ValueError(f"arch {name} takes exactly {exact} {what}, got {value}"
                             f" (its position embeddings are for {arch.frames} frames at {arch.crop})")
        if value < least:
            raise ValueError(f"arch {name} needs {what} >= {least}, got {value}")


def feature_dim(name: str) -> int:
    return get(name).feature_dim


def clip_features(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features: (B, 3, T, H, W) normalised -> (B, D, t) float.

    I3D: Mixed_5c averaged over H, W (t = ceil(T / 8)); S3D: its last map averaged over space likewise;
    the others: the vector their head reads (t = 1)."""
    get(name)
    if name == "i3d":
        return model.features(x).mean((3, 4))
    return model.penultimate(x)


# ----------------------------------------------------------------------------------- optimiser


_NO_DECAY_NAMES = ("pos", "class_token", "cls_token", "rel_pos", "relative_position_bias_table")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights (1-d tensors), position embeddings, class tokens, relative-position tables."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or any(part in leaf for part in _NO_DECAY_NAMES)


def param_groups(model: nn.Module, name: str, *, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Optimiser parameter groups: [{"params", "weight_decay", "lr_scale"}], ordered by (layer, no-decay).

    I3D: ONE group of every parameter in model.parameters() order (what the seed's optimiser gets).
    Others: decay / no-decay groups (see `no_weight_decay`); with `layer_decay` (ViTs only), one pair per
    layer with lr_scale = layer_decay ** (num_layers + 1 - layer_id), the optimiser multiplying its lr by it.
    """
    arch = get(name)
    check_options(name, layer_decay=layer_decay)
    if name == "i3d" and layer_decay is None:
        params = list(model.parameters())
        return [{"params": params, "weight_decay": weight_decay, "lr_scale": 1.0}]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ids = {n: arch.layer_id(n) for n, _ in named} if layer_decay is not None else {n: 0 for n, _ in named}
    top = max(ids.values())  # = num_layers + 1: the head's id
    groups: dict[tuple[int, bool], dict] = {}
    for n, p in named:
        skip = no_weight_decay(n, p)
        group = groups.setdefault((ids[n], skip), {
            "params": [], "weight_decay": 0.0 if skip else weight_decay,
            "lr_scale": 1.0 if layer_decay is None else layer_decay ** (top - ids[n])})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


# ----------------------------------------------------------------------------------------- input


def model_input(batch: torch.Tensor, spec: InputSpec = I3D_INPUT, channels: str = "rgb") -> torch.Tensor:
    """(B, T, H, W, 3) uint8 (on the device) -> (B, 3, T, H, W) float32 normalised per `spec`, contiguous.

    "[-1, 1]" is exactly `transforms.to_model_input`; other specs: x / 255, then (x - mean) / std.
    channels "bgr" reverses the channel order first (WLASL's released I3D weights saw OpenCV's BGR frames).
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    if batch.dtype != torch.uint8 or batch.ndim != 5 or batch.shape[-1] != 3:
        raise ValueError(f"expected a (B, T, H, W, 3) uint8 batch, got {tuple(batch.shape)} {batch.dtype}")
    if channels == "bgr":
        batch = batch.flip(-1)
    if spec.name == I3D_INPUT.name:
        return to_model_input(batch)
    x = batch.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(mean).div_(std)


def spec_from_config(config: dict) -> InputSpec:
    """A checkpoint config's input spec: its "input_spec", else the arch's (old checkpoints: I3D's)."""
    if config.get("input_spec"):
        return InputSpec.from_config(config["input_spec"])
    return get(config.get("arch", "i3d")).spec


def input_from_config(config: dict) -> tuple[InputSpec, str]:
    """(input spec, channels) of a checkpoint's config: what the device transfer of evaluate / predict /
    features applies (old checkpoints: I3D's [-1, 1], RGB)."""
    return spec_from_config(config), str(config.get("channels", "rgb"))


def init_input_spec(name: str, init: str | None) -> InputSpec:
    """The input spec a run of `name` from `init` uses: an --init save_pretrained dir's own
    preprocessor_config.json mean/std when it has them, else the arch's."""
    if init is not None and os.path.isdir(init):
        mean, std = preprocessor_stats(Path(init))
        if mean is not None:
            return InputSpec(PREPROCESSOR_CONFIG, tuple(mean), tuple(std))  # type: ignore[arg-type]
    return get(name).spec


def param_count(name: str, num_classes: int = KINETICS_CLASSES) -> int:
    """Parameters of `name` with a `num_classes` head, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build(name, num_classes)
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "CHANNELS", "FEATURE_DIM", "KINETICS_CLASSES", "InceptionI3d", "I3D_INPUT", "IMAGENET_INPUT",
           "NAMES", "NET_PREFIX", "TORCHVISION_STATS", "Arch", "InputSpec", "LoadReport", "arch_of", "build",
           "check_input", "check_options", "clip_features", "default_dropout", "feature_dim", "get",
           "init_input_spec", "input_from_config", "load_init", "model_input", "no_weight_decay",
           "param_count", "param_groups", "read_checkpoint", "spec_from_config"]
