"""Stage 2: shards -> I3D. Never imports `wlasl_shards.preprocess`.

The package is also the Python API's training function: `wlasl_shards.train(shards, run_dir, **options)`
runs `wlasl_shards.api.train` (the same as `wlasl_shards.fit`). A function cannot take the name, since
importing any `wlasl_shards.train.*` module sets the attribute back to this package; a callable package
keeps `ws.train(...)` and `wlasl_shards.train.loop` both working.
"""

import sys as _sys
import types as _types


class _CallablePackage(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        from wlasl_shards.api import train

        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
