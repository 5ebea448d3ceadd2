"""Weights from disk into any registry model: our checkpoints, bare state_dicts, safetensors, save_pretrained dirs.

Nothing is unpickled: torch files are read with `torch.load(weights_only=True)` (`read_checkpoint`),
`.safetensors` files with `safetensors.torch.load_file`. A library model sits in our wrapper as `net`, so
our checkpoints have "net."-prefixed keys while the library's own files (torchvision's published `.pth`,
a transformers `save_pretrained` directory) have none: `load_init` puts the prefix on when that is what
makes the file fit.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

logger = logging.getLogger(__name__)

class LoadReport(TypedDict):
    """What `load_init` did."""

    source: str  # the file, or "<state_dict>"
    loaded: int  # tensors copied into the model
    head: str  # "loaded", "replaced" (class count differs: model's fresh head kept) or "absent"
    source_classes: int | None  # the checkpoint's head size, None without a head
    num_classes: int  # the model's head size
    unwrapped: bool  # the file was a training checkpoint {"model": state_dict, ...}
    stripped_prefix: str  # wrapper prefix removed from every key ("module.", "_orig_mod.", ...) or ""
    missing: list[str]  # model keys the checkpoint lacks (only with strict_backbone=False)
    unexpected: list[str]  # checkpoint keys the model lacks (only with strict_backbone=False)
    mismatched: list[str]  # "key: file shape vs model shape" (only with strict_backbone=False)
    added_prefix: str  # prefix put before every file key to fit the model ("net." for a library's own layout) or ""


_SHOW = 5  # keys listed per kind of problem in an error message
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# torch's names for a pickled global that weights_only refused: "Unsupported global: GLOBAL x.y was not an
# allowed global" (torch 2.4-2.12) and "Trying to load unsupported GLOBAL x.y whose module x is blocked" (2.13+).
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([^\s,]+)", re.IGNORECASE)


def _refusal_detail(text: str) -> str:
    """The cause in torch's weights_only error text, without its advice (which says to drop weights_only)."""
    lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in text.splitlines()]
    lines = [line for line in lines if line and "weights_only" not in line and "Weights only load failed" not in line
             and "documentation of torch.load" not in line and not line.startswith("(")]
    return next((line for line in lines if "nsupported" in line), lines[0] if lines else "")


def read_checkpoint(path: str) -> Any:
    """torch.load(weights_only=True) onto the CPU; ValueError naming the file and the real cause
    (a refused pickled object, junk bytes, an empty or missing file).

    A refused file is never loaded another way: the message says what it holds, and never repeats
    torch's advice to re-run with weights_only=False (that would run whatever code the file pickles)."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path}: no such file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path}: empty file")
    try:
        # weights_only: tensors and plain containers only; nothing in the file can run code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (bad zip), EOFError, ... depending on the junk
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours part of its message
        refused = _REFUSED_GLOBAL.search(text)
        if refused:
            raise ValueError(f"checkpoint {path}: refused, it holds a pickled {refused.group(1).rstrip('.')} object: "
                             "pickled code, which loading could run; the file will not be loaded (only tensors "
                             "and plain containers are)") from None
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # a pickle's protocol opcode: not junk, a pickle weights_only refused
        if "Weights only load failed" in text and pickled:
            raise ValueError(f"checkpoint {path}: refused, it holds pickled data other than tensors and plain "
                             f"containers ({_refusal_detail(text)}), which loading could run as code; the file "
                             "will not be loaded") from None
        raise ValueError(f"checkpoint {path}: not a loadable PyTorch checkpoint "
                         f"({type(err).__name__}: {_refusal_detail(text)})") from None


def _as_state_dict(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], bool, str]:
    """A checkpoint object -> (flat state dict, unwrapped {"model": ...}, stripped key prefix)."""
    unwrapped = False
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj, unwrapped = obj["model"], True
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"checkpoint {source}: expected a state_dict (name -> tensor), "
                         f"got {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint {source}: {len(bad)} entries are not tensors, e.g. {bad[:_SHOW]}")
    state = dict(obj)
    stripped = ""
    # DataParallel / DistributedDataParallel save "module.*", a torch.compile'd model "_orig_mod.*".
    while prefix := next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None):
        state = {k[len(prefix):]: v for k, v in state.items()}
        stripped += prefix
    return state, unwrapped, stripped


def _listing(what: str, items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {what}: {', '.join(items[:_SHOW])}{more}"


# A save_pretrained directory's files, in the order they are tried.
PRETRAINED_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: not a loadable safetensors file ({err})") from None


def preprocessor_stats(directory: Path) -> tuple[list[float] | None, list[float] | None]:
    """image_mean / image_std of a save_pretrained dir's preprocessor_config.json, (None, None) without one."""
    path = directory / PREPROCESSOR_CONFIG
    if not path.is_file():
        return None, None
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {directory}: unreadable {PREPROCESSOR_CONFIG} ({err})") from None
    mean, std = config.get("image_mean"), config.get("image_std")
    if mean is None or std is None:
        return None, None
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3
            and all(isinstance(v, (int, float)) for v in mean + std) and all(v > 0 for v in std)):
        raise ValueError(f"checkpoint {directory}: {PREPROCESSOR_CONFIG} image_mean / image_std must be 3 numbers "
                         f"each (std > 0), got {mean!r} / {std!r}")
    return [float(v) for v in mean], [float(v) for v in std]


def read_weights(source: str | os.PathLike) -> tuple[Any, str]:
    """A weights source on disk -> (object holding the state_dict, its path).

    `source`: a torch file (`read_checkpoint`), a `.safetensors` file, or a save_pretrained directory
    (config.json + model.safetensors, or pytorch_model.bin read with weights_only). A directory's
    preprocessor_config.json is the input convention's, not the weights': `models.init_input_spec` reads it.
    """
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"checkpoint {path}: a directory without config.json, not a save_pretrained directory")
        for name in PRETRAINED_WEIGHTS:
            if (path / name).is_file():
                file = str(path / name)
                obj = _read_safetensors(file) if name.endswith(".safetensors") else read_checkpoint(file)
                return obj, file
        raise ValueError(f"checkpoint {path}: a save_pretrained directory without {' or '.join(PRETRAINED_WEIGHTS)}")
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ValueError(f"checkpoint {path}: no such file")
        return _read_safetensors(str(path)), str(path)
    return read_checkpoint(str(path)), str(path)


def _head_fits(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], file_head: set[str],
               own_head: set[str]) -> bool:
    """The file's head is the model's but for the class count: same keys, same shapes after dim 0, one
    class count across them, another than the model's."""
    if file_head != own_head or not own_head:
        return False
    counts = {int(state[k].shape[0]) for k in file_head if state[k].dim() >= 1}
    return (len(counts) == 1 and all(state[k].dim() == own[k].dim() >= 1 and state[k].shape[1:] == own[k].shape[1:]
                                     for k in file_head)
            and counts != {int(own[k].shape[0]) for k in own_head})


def _describe(model: nn.Module, arch: str) -> str:
    if arch == "i3d":  # the message test_model.py and features' refusal know
        return f"InceptionI3d(num_classes={model.num_classes}, in_channels={model.in_channels})"
    return f"{arch}(num_classes={model.num_classes})"


def load_init(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *, arch: str | None = None,
              strict_backbone: bool = True) -> LoadReport:
    """Load weights of `model`'s arch into `model`, in place: our checkpoints, the library's own layout.

    `source`: a torch file (a plain state_dict as written by any PyTorch, with or without BatchNorm
    `num_batches_tracked`, DataParallel's `module.` or torch.compile's `_orig_mod.` prefix; torchvision's
    published `.pth` files; a training checkpoint `{"model": state_dict, ...}`), a `.safetensors` file,
    a save_pretrained directory, or such a mapping directly. `arch` defaults to the model's own (`model.arch`,
    "i3d" for InceptionI3d). Torch files are read with `torch.load(weights_only=True)`: a file that holds
    anything but tensors and plain containers is refused. If the checkpoint's head (the arch's head keys)
    has another class count than the model's (400 Kinetics classes vs. 100 glosses), the backbone is
    loaded and the model's freshly initialised head kept.

    With `strict_backbone` (default), any missing or unexpected backbone key or shape mismatch is ONE
    ValueError listing them; without it, the matching tensors are loaded and the rest reported.
    """
    from wlasl_shards.train import models  # the registry imports this module

    arch = arch or models.arch_of(model)
    head_prefix = models.get(arch).head_prefix
    if isinstance(source, Mapping):
        name, obj = "<state_dict>", source
    else:
        obj, file = read_weights(source)
        name = os.fspath(source) if file == os.fspath(source) else file
    state, unwrapped, stripped = _as_state_dict(obj, name)

    own = model.state_dict()
    added = ""
    # The library's own layout (no "net." before its keys) onto our wrapper, which holds it as `net`.
    if models.NET_PREFIX and all(k.startswith(models.NET_PREFIX) for k in own) \
            and not any(k.startswith(models.NET_PREFIX) for k in state):
        state = {models.NET_PREFIX + k: v for k, v in state.items()}
        added = models.NET_PREFIX
    renames = models.get(arch).key_renames
    if renames:  # the published layout's names for tensors the library model now names otherwise
        def renamed(key: str) -> str:
            for pattern, replacement in renames:
                key = re.sub(pattern, replacement, key)
            return key
        state = {(k if k in own else renamed(k)): v for k, v in state.items()}
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    own_head = {k for k in own if k.startswith(head_prefix)}
    file_head = {k for k in state if k.startswith(head_prefix)}

    # The head: loaded if it fits, kept fresh if only the class count differs.
    first = sorted(file_head)[0] if file_head else None
    source_classes = int(state[first].shape[0]) if first is not None and state[first].dim() >= 1 else None
    head = "absent"
    if file_head:
        head = "loaded"
        if _head_fits(state, own, file_head, own_head):
            head = "replaced"
            state = {k: v for k, v in state.items() if k not in file_head}

    fresh_head = own_head if head != "loaded" else set()
    missing = [k for k in own if k not in state and k not in optional and k not in fresh_head]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: {tuple(v.shape)} in file vs {tuple(own[k].shape)} in model"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if strict_backbone and (missing or unexpected or mismatched):
        problems = [_listing(what, items) for what, items in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                    if items]
        raise ValueError(f"checkpoint {name} does not fit {_describe(model, arch)}: " + "; ".join(problems))

    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
    report = LoadReport(source=name, loaded=len(usable), head=head, source_classes=source_classes,
                        num_classes=model.num_classes, unwrapped=unwrapped, stripped_prefix=stripped,
                        missing=missing, unexpected=unexpected, mismatched=mismatched, added_prefix=added)
    if head == "replaced":
        logger.info("%s: backbone loaded (%d tensors); head has %d classes, model %d: new head kept",
                    name, len(usable), source_classes, model.num_classes)
    else:  # a mapping is a checkpoint already read (evaluate, predict): nothing for the user to check
        logger.log(logging.DEBUG if isinstance(source, Mapping) else logging.INFO, "%s: loaded %d tensors (head %s)",
                   name, len(usable), head)
    return report


__all__ = ["LoadReport", "PREPROCESSOR_CONFIG", "PRETRAINED_WEIGHTS", "load_init", "preprocessor_stats",
           "read_checkpoint", "read_weights"]
