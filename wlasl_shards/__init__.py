"""wlasl-shards: WLASL videos to WebDataset shards, and a streaming I3D trainer that reads them."""

__version__ = "0.1.0"
