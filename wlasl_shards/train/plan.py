"""The plan: which samples of which shards each rank and loader worker reads in an epoch.

Pure functions of dataset.json's sample counts and (seed, epoch, rank, world size, worker): no torch,
no I/O, so every rank computes the same plan without communicating, and the plan can be tested on
plain lists of `ShardPart`s.

Equal batches on every rank (DDP hangs when one rank runs out first). Every rank gets exactly
`batches_per_epoch = total // (world_size * batch_size)` batches, i.e. a budget of that many
samples times the batch size, planned from the sample counts in dataset.json before any reading:

  * pass c of epoch e: all shards shuffled by (seed, e, c), the same order on every rank, split
    among ranks (`rank_pass`); a rank takes its passes' parts in order until its budget is met,
    the last part cut to the samples still needed (`plan_rank`). A rank whose shards hold fewer
    samples than the budget goes on to pass 1, 2, ... (other shards, a new order): only then does
    it see a sample twice.
  * each pass's parts are split among the rank's workers (`split_parts`), and each worker yields
    exactly the planned samples of its parts (`worker_budget`), so the rank's samples for the epoch
    are the same multiset whatever `num_workers` is; the main process batches the merged stream
    and ends after exactly `batches_per_epoch` batches, with no partial batch.
  * a skipped (corrupt) sample is replaced by the worker reading on into its next passes, so
    skips do not change the count either.

Evaluation reads every sample of the split exactly once over all ranks and workers (same
`split_parts`, no shuffle, no budget); ranks may get different counts, which is fine for a forward
pass without collectives (gather results with `all_gather_object`, not equal-shape tensors).

Where there are fewer shards than ranks (or a rank has fewer parts than workers), `split_parts`
splits samples instead: the sharers each read the shard and keep every k-th sample. The union is
still exactly the input, at the cost of reading that shard k times.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass


class EmptyShare(Exception):
    """A rank's share of the split holds no sample to read (more ranks than samples to share)."""


@dataclass(frozen=True)
class ShardPart:
    """A shard, or the samples of it with index i (0-based, in the shard) such that
    i % stride == offset and i < stop. Splitting a part again multiplies the stride."""

    url: str  # where the shard is (from `storage.dataset_url`)
    samples: int  # samples in the whole shard, from dataset.json
    nbytes: int | None = None  # the shard's size per dataset.json: a remote object of another size is an error
    sha256: str | None = None  # the shard's sha256 per dataset.json: what a cached copy is checked against
    stride: int = 1
    offset: int = 0
    stop: int | None = None  # None: to the end of the shard

    @property
    def count(self) -> int:
        """Samples this part holds, as dataset.json counts them."""
        end = self.samples if self.stop is None else min(self.stop, self.samples)
        return len(range(self.offset, end, self.stride))

    def keeps(self, i: int) -> bool:
        """Whether sample i of the shard is in this part."""
        return i % self.stride == self.offset and (self.stop is None or i < self.stop)

    def split(self, parts: int, j: int) -> ShardPart:
        """The j-th of `parts` interleaved pieces (0 <= j < parts); the pieces partition this part."""
        return dataclasses.replace(self, stride=self.stride * parts, offset=self.offset + self.stride * j)

    def head(self, n: int) -> ShardPart:
        """The first n (>= 1) samples of this part."""
        stop = self.offset + self.stride * (n - 1) + 1
        return dataclasses.replace(self, stop=stop if self.stop is None else min(stop, self.stop))


def split_parts(parts: Sequence[ShardPart], n: int, j: int) -> list[ShardPart]:
    """The j-th of n disjoint shares of `parts` (whose union is `parts`).

    With at least n parts, every n-th part (starting at j). With fewer, share j is a piece of a
    single part: the parts are dealt round-robin and the sharers of one part interleave its samples.
    """
    if not 0 <= j < n:
        raise ValueError(f"share {j} of {n} does not exist")
    if len(parts) >= n:
        return list(parts[j::n])
    if not parts:
        return []
    u = j % len(parts)
    sharers = len(range(u, n, len(parts)))
    return [parts[u].split(sharers, j // len(parts))]


def batches_per_epoch(total_samples: int, world_size: int, batch_size: int) -> int:
    """Batches every rank yields in a training epoch: total // (world_size * batch_size), at least 1."""
    return max(1, total_samples // (world_size * batch_size))


def shard_order(parts: Sequence[ShardPart], seed: int, epoch: int, cycle: int) -> list[ShardPart]:
    """`parts` in the random order of pass `cycle` of `epoch`: a function of the arguments only, so
    every rank computes the same order without communicating."""
    order = list(parts)
    random.Random(f"wlasl-shards:{seed}:{epoch}:{cycle}").shuffle(order)  # str seeds are stable
    return order


def rank_pass(parts: Sequence[ShardPart], seed: int, epoch: int, cycle: int, rank: int,
              world_size: int) -> list[ShardPart]:
    """The rank's share of pass `cycle` of `epoch` (disjoint from the other ranks' shares)."""
    return split_parts(shard_order(parts, seed, epoch, cycle), world_size, rank)


def plan_rank(parts: Sequence[ShardPart], seed: int, epoch: int, rank: int, world_size: int,
              budget: int) -> list[list[ShardPart]]:
    """Per pass, the parts a rank reads in an epoch to get exactly `budget` samples (by dataset.json's
    counts): whole passes in order, the last part cut short. More than one pass means the rank's
    share of the split is smaller than its budget, and it sees some samples twice. EmptyShare when
    the rank's share holds no sample at all."""
    passes: list[list[ShardPart]] = []
    remaining = budget
    for cycle in itertools.count():
        if remaining <= 0:
            break
        taken = []
        for part in rank_pass(parts, seed, epoch, cycle, rank, world_size):
            n = min(part.count, remaining)
            if n > 0:
                taken.append(part if n == part.count else part.head(n))
                remaining -= n
        if not taken:
            raise EmptyShare(f"rank {rank} of {world_size} has no samples to read "
                             f"(shards: {', '.join(p.url for p in parts) or 'none'})")
        passes.append(taken)
    return passes


def worker_plan(rank_plan: Sequence[Sequence[ShardPart]], worker: int, num_workers: int) -> list[ShardPart]:
    """The parts one worker reads: its share of each pass, passes in order."""
    return [p for parts in rank_plan for p in split_parts(parts, num_workers, worker)]


def worker_budget(rank_plan: Sequence[Sequence[ShardPart]], worker: int, num_workers: int) -> int:
    """Samples the worker yields; over all workers these add up to the rank's budget."""
    return sum(p.count for p in worker_plan(rank_plan, worker, num_workers))


__all__ = ["EmptyShare", "ShardPart", "batches_per_epoch", "plan_rank", "rank_pass", "shard_order", "split_parts",
           "worker_budget", "worker_plan"]
