"""Stage 1: videos -> WebDataset shards. Never imports `wlasl_shards.train`."""
