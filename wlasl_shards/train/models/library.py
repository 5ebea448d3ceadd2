"""Library-backed video models behind one interface: torchvision's video models and transformers' VideoMAE.

Each wrapper holds the library model as `self.net` (so our checkpoints have "net." keys; `weights.load_init`
maps the library's own state_dicts onto it) and gives what the trainer needs of every arch:

    forward(x)    (B, 3, T, H, W) float, normalised -> logits (B, classes, T')  (T' = 1 where time is pooled)
    penultimate   (B, 3, T, H, W) -> (B, D, t): the features the head reads, pooled over space
                  (t = 1 where the library pools time before its head)

The libraries' own forward passes are re-traced step by step (same modules, same order) to stop before
the head; the tests check that the logits equal the library's own forward.
"""

from __future__ import annotations

import torch
from torch import nn

from wlasl_shards.train.models.i3d import head_pool


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"expected input (B, 3, T, H, W), got {tuple(x.shape)}")


def _scale_stochastic_depth(net: nn.Module, drop_path: float, base: float) -> None:
    """Rescale every StochasticDepth's p by drop_path / base: a constructor that hard-codes its rate
    (torchvision's swin3d_*: a rate rising linearly with depth to `base`) gets the same profile to `drop_path`."""
    from torchvision.ops import StochasticDepth
    for module in net.modules():
        if isinstance(module, StochasticDepth):
            module.p = module.p * drop_path / base


class LibraryModel(nn.Module):
    """A library's video model (`net`) split at its head: `penultimate`, then `head`."""

    def __init__(self, arch: str, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.net = net

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, t) -> (B, classes, t)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised -> logits (B, classes, T')."""
        return self.head(self.penultimate(x))


class VideoResNetModel(LibraryModel):
    """r3d_18, mc3_18, r2plus1d_18: stem, layer1-4, adaptive average pool (any T, H, W), fc."""

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 512, 1)."""
        _check_input(x)
        net = self.net
        x = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x)))))
        return net.avgpool(x).flatten(2)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.fc(features.transpose(1, 2)).transpose(1, 2)


class S3DModel(LibraryModel):
    """S3D with `head_pool` for torchvision's fixed AvgPool3d((2, 7, 7)): identical at 224, any crop here.

    torchvision averages the logits over time inside forward; here they keep time (B, classes, T') and
    the trainer's eval_reduce ("mean" by default: torchvision's rule) reduces them.
    """

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 1024, ceil(T / 8)): the last feature map averaged over space."""
        _check_input(x)
        return self.net.features(x).mean((3, 4))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        # head_pool's temporal window (min(2, t), stride 1) on the space-pooled map = torchvision's pool.
        pooled = head_pool(features[..., None, None])
        return self.net.classifier(pooled).squeeze(4).squeeze(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        return self.net.classifier(head_pool(self.net.features(x))).squeeze(4).squeeze(3)


class MViTModel(LibraryModel):
    """MViT v1/v2: patchify, position encoding, blocks, norm, the class token, head (16 x 224 only)."""

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 16, 224, 224) -> (B, D, 1): the normalised class token."""
        _check_input(x)
        net = self.net
        x = net.conv_proj(x).flatten(2).transpose(1, 2)
        x = net.pos_encoding(x)
        thw = (net.pos_encoding.temporal_size,) + net.pos_encoding.spatial_size
        for block in net.blocks:
            x, thw = block(x, thw)
        return net.norm(x)[:, 0, :, None]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.head(features[..., 0])[..., None]


class SwinModel(LibraryModel):
    """Video Swin: patch embedding (pads to the patch size), stages, norm, average pool, head."""

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, D, 1)."""
        _check_input(x)
        net = self.net
        x = net.norm(net.features(net.pos_drop(net.patch_embed(x))))
        return net.avgpool(x.permute(0, 4, 1, 2, 3)).flatten(2)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.head(features[..., 0])[..., None]


class VideoMAEModel(LibraryModel):
    """transformers' VideoMAEForVideoClassification (`net`), which takes (B, T, 3, H, W): permuted here."""

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 16, 224, 224) -> (B, D, 1): tokens averaged then fc_norm (VideoMAE's mean pooling), or
        the first token without mean pooling."""
        _check_input(x)
        net = self.net
        tokens = net.videomae(x.transpose(1, 2)).last_hidden_state
        out = net.fc_norm(tokens.mean(1)) if net.fc_norm is not None else tokens[:, 0]
        return out[..., None]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(features[..., 0])[..., None]


# ------------------------------------------------------------------------------------ constructors


def torchvision_video(arch: str, constructor: str, num_classes: int, *, dropout: float | None,
                      drop_path: float) -> nn.Module:
    """torchvision.models.video.<constructor>(num_classes=...) in its wrapper; no weights downloaded."""
    from torchvision.models import video

    kwargs: dict = {"num_classes": num_classes}
    if constructor.startswith("mvit"):
        kwargs["stochastic_depth_prob"] = drop_path
    if dropout is not None:
        kwargs["dropout"] = dropout
    net = getattr(video, constructor)(weights=None, **kwargs)
    if constructor.startswith("swin3d"):
        _scale_stochastic_depth(net, drop_path, SWIN_DEPTH_RATE[constructor])
    cls = {"r3d_18": VideoResNetModel, "mc3_18": VideoResNetModel, "r2plus1d_18": VideoResNetModel,
           "s3d": S3DModel, "mvit_v1_b": MViTModel, "mvit_v2_s": MViTModel}.get(constructor, SwinModel)
    return cls(arch, net, num_classes)


# The stochastic depth rate torchvision's swin3d_* constructors hard-code (the deepest block's).
SWIN_DEPTH_RATE = {"swin3d_t": 0.1, "swin3d_s": 0.1, "swin3d_b": 0.1}

# VideoMAE sizes: ViT-B is VideoMAEConfig()'s defaults; ViT-L as MCG-NJU/videomae-large's config.json.
VIDEOMAE_SIZES = {
    "videomae-base": {},
    "videomae-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "intermediate_size": 4096},
}


def videomae(arch: str, num_classes: int, *, dropout: float | None, drop_path: float) -> nn.Module:
    """VideoMAEForVideoClassification from its config (16 frames, 224, tubelet 2, patch 16); nothing downloaded."""
    del drop_path  # refused upstream when non-zero: transformers' VideoMAE has no stochastic depth
    try:
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification
    except ImportError as err:
        raise ValueError(f"arch {arch} needs the transformers package: pip install 'wlasl-shards[videomae]' "
                         f"({err})") from None
    config = VideoMAEConfig(num_labels=num_classes, **VIDEOMAE_SIZES[arch])
    if dropout is not None:
        config.hidden_dropout_prob = dropout
    return VideoMAEModel(arch, VideoMAEForVideoClassification(config), num_classes)


__all__ = ["LibraryModel", "MViTModel", "S3DModel", "SwinModel", "VIDEOMAE_SIZES", "VideoMAEModel",
           "VideoResNetModel", "torchvision_video", "videomae"]
