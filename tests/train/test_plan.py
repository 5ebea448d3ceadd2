"""The plan (which shard parts each rank and worker reads) on plain lists of ShardParts: no shards."""

from __future__ import annotations

import pytest

from wlasl_shards.train import plan
from wlasl_shards.train.plan import ShardPart

TRAIN_SIZES = [7, 5, 9, 4, 6]  # as handmade's: 31 samples, 5 shards, divisible by neither 2 nor 3


def parts(sizes=TRAIN_SIZES) -> list[ShardPart]:
    return [ShardPart(f"s{i}", n) for i, n in enumerate(sizes)]


def kept(ps: list[ShardPart]) -> list[tuple[str, int]]:
    return [(p.url, i) for p in ps for i in range(p.samples) if p.keeps(i)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 11])
def test_split_parts_partitions_the_samples(n):
    every = kept(parts())
    shares = [kept(plan.split_parts(parts(), n, j)) for j in range(n)]
    assert sorted(s for share in shares for s in share) == sorted(every)
    assert all(share for share in shares)  # fewer parts than shares: samples are split instead
    for share, j in zip(shares, range(n)):
        assert sum(p.count for p in plan.split_parts(parts(), n, j)) == len(share)


def test_split_parts_of_split_parts_still_partitions():
    rank = plan.split_parts(parts([10]), 2, 1)  # odd samples
    workers = [plan.split_parts(rank, 3, w) for w in range(3)]
    assert sorted(s for w in workers for s in kept(w)) == [("s0", i) for i in (1, 3, 5, 7, 9)]
    assert [kept(w) for w in workers] == [[("s0", 1), ("s0", 7)], [("s0", 3), ("s0", 9)], [("s0", 5)]]


def test_head_takes_the_first_samples_of_a_part():
    p = ShardPart("s", 10).split(3, 1)  # 1, 4, 7
    assert kept([p.head(2)]) == [("s", 1), ("s", 4)] and p.head(2).count == 2
    assert p.head(3).count == 3


def test_shard_order_depends_on_seed_epoch_and_cycle_only():
    ps = parts()
    assert plan.shard_order(ps, 0, 0, 0) == plan.shard_order(list(ps), 0, 0, 0)
    orders = {tuple(p.url for p in plan.shard_order(ps, s, e, c)) for s in (0, 1) for e in (0, 1) for c in (0, 1)}
    assert len(orders) > 4
    assert [p.url for p in plan.shard_order(ps, 0, 0, 0)] != [p.url for p in plan.shard_order(ps, 0, 1, 0)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_plans_meet_the_budget_exactly(world, epoch):
    budget = plan.batches_per_epoch(31, world, 2) * 2
    for rank in range(world):
        rank_plan = plan.plan_rank(parts(), 0, epoch, rank, world, budget)
        assert sum(p.count for ps in rank_plan for p in ps) == budget
        for workers in (1, 2, 3):
            assert sum(plan.worker_budget(rank_plan, w, workers) for w in range(workers)) == budget
        if len(rank_plan) == 1:  # one pass: no sample twice
            assert len(set(kept(rank_plan[0]))) == budget


def test_batches_per_epoch():
    assert plan.batches_per_epoch(31, 2, 2) == 7
    assert plan.batches_per_epoch(31, 3, 2) == 5
    assert plan.batches_per_epoch(3, 4, 8) == 1  # never zero: a rank with no batch breaks the loop


def test_a_rank_without_samples_is_told_so():
    with pytest.raises(plan.EmptyShare, match="rank 1 of 2 has no samples to read \\(shards: s0\\)"):
        plan.plan_rank(parts([1]), 0, 0, 1, 2, budget=1)
    assert plan.plan_rank(parts([1]), 0, 0, 0, 2, budget=3) == [[ShardPart("s0", 1, stride=2)]] * 3
