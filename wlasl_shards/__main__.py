"""`python -m wlasl_shards` (and `torchrun -m wlasl_shards`) run the CLI."""

from wlasl_shards.cli import main

main()
