"""wlasl-shards: WLASL videos to WebDataset shards, and a streaming I3D trainer that reads them.

The Python API (see `wlasl_shards.api`), importable from here:

    import wlasl_shards as ws
    index = ws.build("data/wlasl", "shards/wlasl100", subset="100")
    report = ws.fit("shards/wlasl100", "runs/i3d", init="rgb_imagenet.pt")
    metrics = ws.evaluate("runs/i3d/best.pt", "shards/wlasl100")

`ws.fit` is the training function; `wlasl_shards.train` is the trainer's package (stage 2), and
`wlasl_shards.preprocess` the shard writer's (stage 1).

The names are resolved on first use (PEP 562): build worker processes and the CLI import this
package, and must not pay for importing torch.
"""

import importlib as _importlib

__version__ = "0.1.0"

# Public names, all attributes of wlasl_shards.api of the same name.
_API = ("synth", "build", "merge", "inspect_shards", "fit", "evaluate", "predict", "features", "contact_sheet",
        "clip_dataset", "ClipDataset", "to_model_input", "InceptionI3d", "load_init", "SynthConfig", "BuildConfig",
        "InspectConfig", "TrainConfig", "EvaluateConfig", "PredictConfig", "FeaturesConfig", "archs", "build_model")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        api = _importlib.import_module(f"{__name__}.api")
        value = getattr(api, name)
        globals()[name] = value  # later look-ups find it without calling this function
        return value
    if name in ("api", "preprocess", "train"):  # the modules, for `ws.api.fit` and the like without an import
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
