"""Multi-process training under torchrun: process group, per-rank device, and the few collectives the
trainer needs beyond DDP's gradient all-reduce.

`torchrun --nproc-per-node N -m wlasl_shards train ...` sets RANK, LOCAL_RANK, WORLD_SIZE and the
rendezvous variables; `init` then joins the group with NCCL when training on CUDA and gloo on the
CPU. A plain `wlasl-shards train` (no WORLD_SIZE, or 1) stays a single process with no group.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import get_worker_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int  # 0..world_size-1; rank 0 writes the files
    world_size: int
    local_rank: int  # index of this process on its node: its GPU
    owns_group: bool  # init() created the process group (and destroy() ends it)

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init(device_type: str, timeout_minutes: float = 30.0) -> Dist:
    """Join the torchrun job described by the environment (or use a group the caller already made)."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), False)
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Dist(0, 1, 0, False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = _env_int("LOCAL_RANK", 0)
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                             f"--nproc-per-node must not exceed the GPUs per node")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    info = Dist(dist.get_rank(), dist.get_world_size(), local_rank, True)
    log.info("rank %d of %d (local rank %d), backend %s", info.rank, info.world_size, local_rank, backend)
    return info


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else torch.distributed's when initialised, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of world_size {world_size}")
    return rank, world_size


def loader_worker() -> tuple[int, int]:
    """(worker id, worker count) of the DataLoader worker process this runs in; (0, 1) outside one."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def destroy(info: Dist) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, info: Dist) -> nn.Module | None:
    """DistributedDataParallel around `model` in a multi-process job, else None. DDP broadcasts rank
    0's weights and buffers when it is made, so every rank starts from the same state."""
    if not info.active:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _min_max(flag: bool) -> tuple[int, int]:
    t = torch.tensor([int(flag)], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    low, high = t.clone(), t.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return int(low.item()), int(high.item())


def all_ok(ok: bool) -> bool:
    """Whether `ok` holds on every rank (a collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok
    return _min_max(ok)[0] == 1


def agree(flag: bool, what: str) -> None:
    """Raise on every rank unless all ranks have the same `flag` (e.g. whether last.pt exists: a
    RUN_DIR that only some nodes see would make them start from different states)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    low, high = _min_max(flag)
    if low != high:
        raise ValueError(f"ranks disagree on {what} (rank {dist.get_rank()} says {flag}): "
                         f"RUN_DIR must be one directory that every node sees (a shared filesystem)")


def gather_objects(obj: object) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank; [obj] in a single process. A
    collective: every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_state(model: nn.Module, src: int = 0) -> None:
    """Every rank gets rank `src`'s parameters and buffers (in place)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for t in model.state_dict().values():
            dist.broadcast(t, src)


def fingerprint(model: nn.Module) -> str:
    """sha256 (first 16 hex digits) of every parameter and buffer's bytes, in state_dict order:
    equal on two ranks exactly when their weights are bit-identical."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_replicas(model: nn.Module, info: Dist) -> str:
    """Log this rank's weight fingerprint and raise if the ranks' weights differ (a DDP bug or a
    desynchronised job). Returns the fingerprint."""
    fp = fingerprint(model)
    log.info("rank %d weights fingerprint %s", info.rank, fp)
    if info.active:
        digest = torch.tensor([int(fp[i:i + 8], 16) for i in range(0, 16, 8)], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            digest = digest.cuda()
        gathered = [torch.zeros_like(digest) for _ in range(info.world_size)]
        dist.all_gather(gathered, digest)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError("the ranks' weights differ at the end of training: "
                               + ", ".join(f"rank {r}: {g.tolist()}" for r, g in enumerate(gathered)))
    return fp


__all__ = ["Dist", "agree", "all_ok", "broadcast_state", "check_replicas", "destroy", "dist_info", "fingerprint",
           "gather_objects", "init", "loader_worker", "wrap"]
