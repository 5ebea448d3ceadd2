"""Stage 2: shards -> I3D (trainer, evaluation, prediction, features). Never imports `wlasl_shards.preprocess`.

The Python API's training function is `wlasl_shards.fit` (`wlasl_shards.api.fit`); this package holds
the stage's modules only.
"""
