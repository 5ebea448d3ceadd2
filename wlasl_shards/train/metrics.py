"""Losses and accuracy as pure functions on logits, and sum-reducible evaluation counts.

The model's output is per time step: logits (B, C, T'). A clip's prediction is those logits
reduced over time (`reduce_time`: max, as WLASL's test does, or mean). Accuracy figures are built
from integer counts (`EvalCounts`), never from per-rank averages, so results from several ranks
or batches add up exactly: sum the counts, then divide once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

REDUCTIONS = ("max", "mean")
LOSSES = ("ce", "bce")
TOPK = (1, 5, 10)
TOP_CONFUSIONS = 20  # confused (true, predicted) pairs listed in a report


def reduce_time(logits: torch.Tensor, how: str) -> torch.Tensor:
    """(B, C, T') -> (B, C): the max or the mean over time."""
    if logits.ndim != 3:
        raise ValueError(f"expected logits (B, C, T'), got shape {tuple(logits.shape)}")
    if how == "max":
        return logits.amax(dim=2)
    if how == "mean":
        return logits.mean(dim=2)
    raise ValueError(f"time reduction must be one of {REDUCTIONS}, got {how!r}")


def average_windows(scores: torch.Tensor, windows: int) -> torch.Tensor:
    """(B * K, C) -> (B, C): the mean over each video's K consecutive rows (its windows' scores,
    `transforms.split_windows` order): the multi-view test's averaged logits."""
    if windows < 1 or scores.shape[0] % windows:
        raise ValueError(f"{scores.shape[0]} rows do not split into groups of {windows} windows")
    return scores.reshape(scores.shape[0] // windows, windows, *scores.shape[1:]).mean(dim=1)


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) int64 -> (B, C) float32: one-hot, with `smoothing` of the mass spread evenly over all
    classes (the same distribution `F.cross_entropy(label_smoothing=...)` uses)."""
    onehot = F.one_hot(labels, num_classes).to(torch.float32)
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, reduce: str = "max",
            smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the time-reduced logits: (B, C, T'), (B,) -> per-clip losses (B,) float32.

    The reduction is the one that makes the prediction (`reduce_time`), so training optimises the
    quantity that evaluation ranks.
    """
    pooled = reduce_time(logits.float(), reduce)
    return F.cross_entropy(pooled, labels, reduction="none", label_smoothing=smoothing)


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, frames: int, smoothing: float = 0.0) -> torch.Tensor:
    """WLASL's I3D loss: (B, C, T'), (B,), T -> per-clip losses (B,) float32.

    The logits are upsampled linearly to the clip's `frames` (as `F.upsample(..., mode='linear')`
    in the original); every frame's target is the clip's class. Localisation loss: binary
    cross-entropy of every frame and class; classification loss: binary cross-entropy of the max
    over time; the loss is 0.5 * loc + 0.5 * cls. Each term is a mean over its elements, so the
    batch mean of these per-clip values equals the original's batch loss.
    """
    b, c, _ = logits.shape
    per_frame = F.interpolate(logits.float(), size=frames, mode="linear", align_corners=False)
    target = smoothed_targets(labels, c, smoothing)  # (B, C): the same for every frame
    loc = F.binary_cross_entropy_with_logits(per_frame, target[:, :, None].expand(b, c, frames),
                                             reduction="none").mean(dim=(1, 2))
    cls = F.binary_cross_entropy_with_logits(per_frame.amax(dim=2), target, reduction="none").mean(dim=1)
    return 0.5 * loc + 0.5 * cls


def clip_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, frames: int, reduce: str,
              smoothing: float = 0.0) -> torch.Tensor:
    """The loss `kind` ("ce" | "bce") per clip: (B, C, T'), (B,) -> (B,) float32."""
    if kind == "ce":
        return ce_loss(logits, labels, reduce, smoothing)
    if kind == "bce":
        return bce_loss(logits, labels, frames, smoothing)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOPK) -> torch.Tensor:
    """(B, C) scores, (B,) labels -> (len(ks),) int64: how many labels are among the k best scores.
    k larger than C counts every sample (top-10 of 4 classes is always right)."""
    kmax = min(max(ks), scores.shape[1])
    best = scores.topk(kmax, dim=1).indices  # (B, kmax), best first
    hit_at = best == labels[:, None]
    return torch.stack([hit_at[:, :min(k, kmax)].any(dim=1).sum() for k in ks]).to(torch.int64)


@dataclass
class EvalCounts:
    """Counts of one evaluation, additive over batches and ranks (`add`, `all_reduce`).

    `confusion[t, p]` counts the clips of class t predicted (top-1) as p; its row sums are the
    per-class sample counts and its diagonal the per-class hits.
    """

    confusion: torch.Tensor  # (C, C) int64
    topk: torch.Tensor  # (len(TOPK),) int64: top-k hits
    loss_sum: torch.Tensor  # () float64: sum of per-clip losses

    @classmethod
    def zeros(cls, num_classes: int) -> EvalCounts:
        return cls(torch.zeros(num_classes, num_classes, dtype=torch.int64),
                   torch.zeros(len(TOPK), dtype=torch.int64), torch.zeros((), dtype=torch.float64))

    def add(self, scores: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor) -> None:
        """Count a batch: scores (B, C) (time-reduced logits), labels (B,), per-clip losses (B,)."""
        scores, labels, losses = scores.detach().float().cpu(), labels.cpu(), losses.detach().cpu()
        c = self.confusion.shape[0]
        pred = scores.argmax(dim=1)
        self.confusion += torch.bincount(labels * c + pred, minlength=c * c).reshape(c, c)
        self.topk += topk_hits(scores, labels)
        self.loss_sum += losses.double().sum()

    def all_reduce(self) -> None:
        """Sum the counts over all ranks (no-op without an initialised process group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        for name in ("confusion", "topk", "loss_sum"):
            t = getattr(self, name).to(device)
            dist.all_reduce(t)
            setattr(self, name, t.cpu())

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def summary(self) -> dict:
        """{"count", "loss", "top1", "top5", "top10", "per_class_mean"}: fractions of clips; the
        per-class mean is the mean of the top-1 accuracies of the classes that have clips here.
        NaN when nothing was counted."""
        n = self.count
        per_class = per_class_accuracy(self.confusion)
        present = [a for a in per_class if a is not None]
        out = {"count": n, "loss": float(self.loss_sum) / n if n else math.nan}
        for k, hits in zip(TOPK, self.topk.tolist()):
            out[f"top{k}"] = hits / n if n else math.nan
        out["per_class_mean"] = sum(present) / len(present) if present else math.nan
        return out


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """(C, C) counts -> per class, top-1 accuracy, None for a class without clips."""
    totals = confusion.sum(dim=1).tolist()
    hits = confusion.diagonal().tolist()
    return [h / t if t else None for h, t in zip(hits, totals)]


def top_confusions(confusion: torch.Tensor, classes: Sequence[str], limit: int = TOP_CONFUSIONS) -> list[dict]:
    """The most frequent wrong (true, predicted) pairs: [{"true", "pred", "count", "share"}], most
    frequent first (ties in class order); share = count / clips of the true class."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    totals = confusion.sum(dim=1)
    flat = off.flatten()
    order = torch.argsort(-flat, stable=True)[:limit].tolist()  # stable: ties in class order
    c = confusion.shape[0]
    out = []
    for i in order:
        n = int(flat[i])
        if n == 0:
            break
        t, p = divmod(i, c)
        out.append({"true": classes[t], "pred": classes[p], "count": n, "share": n / int(totals[t])})
    return out


def report(counts: EvalCounts, classes: Sequence[str]) -> dict:
    """`summary()` plus per-class accuracy {gloss: {"accuracy", "count"}} (classes with clips) and
    the top confused pairs: what report.json and `evaluate` hold."""
    per_class = per_class_accuracy(counts.confusion)
    totals = counts.confusion.sum(dim=1).tolist()
    return {
        **counts.summary(),
        "per_class": {g: {"accuracy": a, "count": n} for g, a, n in zip(classes, per_class, totals) if n},
        "confusions": top_confusions(counts.confusion, classes),
    }


__all__ = ["EvalCounts", "LOSSES", "REDUCTIONS", "TOPK", "average_windows", "bce_loss", "ce_loss", "clip_loss",
           "per_class_accuracy",
           "reduce_time", "report", "smoothed_targets", "top_confusions", "topk_hits"]
