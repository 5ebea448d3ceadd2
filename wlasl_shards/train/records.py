"""A run's records: metrics.jsonl (written by `Recorder`, read by `read_metrics`), TensorBoard, and the
JSON hygiene they share.

metrics.jsonl is a journal of the package's one JSON-lines format (`storage.append_line` /
`storage.read_lines`): one record per line, {"kind": "step" | "epoch" | "test", "epoch", "step", ...},
epochs numbered from 1 as the log numbers them. A kill can tear the last line; readers skip it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from wlasl_shards import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively through dicts and lists, so the JSON files stay standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl ([] when there is none): `storage.read_lines`, which skips lines
    that do not parse (a torn last line after a kill), keeping the records (JSON objects) only."""
    return [r for r in storage.read_lines(path) if isinstance(r, dict)]


def renumber_epochs(records: list[dict]) -> list[dict]:
    """`records` with epochs numbered from 1. Runs of tool versions that wrote checkpoint version 1
    numbered them from 0, which a record of epoch 0 gives away (numbered from 1 there is none): their
    "epoch" fields get 1 added, so a resumed old run reads as one run in the new numbering."""
    if not any(r.get("epoch") == 0 for r in records):
        return records
    return [{**r, "epoch": r["epoch"] + 1} if isinstance(r.get("epoch"), int) else r for r in records]


def check_tensorboard() -> None:
    """ValueError unless TensorBoard logging can work (checked before anything is written)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ValueError("tensorboard=True (--tensorboard) needs the tensorboard package: "
                         "pip install tensorboard") from None


class Recorder:
    """metrics.jsonl and TensorBoard of a run; a no-op on ranks other than 0 (`is_writer` False)."""

    def __init__(self, run: Path, is_writer: bool, keep_epochs_below: int, tensorboard: bool = False,
                 keep_steps_to: int | None = None):
        """Start recording into `run`. Records an earlier, interrupted attempt left are kept for the
        epochs below `keep_epochs_below` (those its last.pt saved) and dropped from there on, test
        records included, so the file then reads as one run's; with `keep_steps_to` (a last.pt saved
        inside epoch `keep_epochs_below`) that epoch's step records up to that step are kept too."""
        self.path = Path(run) / METRICS_FILE
        self.is_writer = is_writer
        self.tb = None
        if not is_writer:
            return
        kept = [r for r in renumber_epochs(read_metrics(self.path))
                if r.get("kind") != "test" and r.get("epoch", 0) < keep_epochs_below
                or keep_steps_to is not None and r.get("kind") == "step" and r.get("epoch") == keep_epochs_below
                and r.get("step", math.inf) <= keep_steps_to]
        storage.write_bytes(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept).encode())
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # checked at start-up (check_tensorboard)

            self.tb = SummaryWriter(str(Path(run) / TENSORBOARD_DIR))

    def write(self, record: dict, step: int) -> None:
        """Append `record` (NaN / inf as null) to metrics.jsonl; its numbers also go to TensorBoard at `step`."""
        if not self.is_writer:
            return
        storage.append_line(self.path, finite(record))
        if self.tb is not None:
            kind = record.get("kind", "")
            for key, value in _flatten(record).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


__all__ = ["METRICS_FILE", "TENSORBOARD_DIR", "Recorder", "check_tensorboard", "finite", "read_metrics",
           "renumber_epochs"]
