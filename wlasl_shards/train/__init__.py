"""Stage 2: shards -> I3D. Never imports `wlasl_shards.preprocess`."""
