"""wlasl-shards: WLASL videos to WebDataset shards, and a streaming I3D trainer that reads them.

The Python API (see `wlasl_shards.api`), importable from here:

    import wlasl_shards as ws
    index = ws.build("data/wlasl", "shards/wlasl100", subset="100")
    report = ws.train("shards/wlasl100", "runs/i3d", init="rgb_imagenet.pt")
    metrics = ws.evaluate("runs/i3d/best.pt", "shards/wlasl100")

`train` is the trainer subpackage, callable: `ws.train(...)` runs `wlasl_shards.api.train`; `ws.fit` is
the same function under a name of its own.

The names are resolved on first use (PEP 562): build worker processes and the CLI import this
package, and must not pay for importing torch.
"""

import importlib as _importlib

__version__ = "0.1.0"

# Public name -> its attribute in wlasl_shards.api.
_API = {
    "synth": "synth",
    "build": "build",
    "fit": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "contact_sheet": "contact_sheet",
    "clip_dataset": "clip_dataset",
    "ClipDataset": "ClipDataset",
    "to_model_input": "to_model_input",
    "InceptionI3d": "InceptionI3d",
    "load_init": "load_init",
    "SynthConfig": "SynthConfig",
    "BuildConfig": "BuildConfig",
    "TrainConfig": "TrainConfig",
}

__all__ = ["__version__", "train", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        api = _importlib.import_module(f"{__name__}.api")
        value = getattr(api, _API[name])
        globals()[name] = value  # later look-ups find it without calling this function
        return value
    if name in ("api", "train"):  # train: the callable trainer package (see wlasl_shards/train/__init__.py)
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
