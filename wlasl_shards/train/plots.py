"""Result pictures: confusions.png and per_class.csv from a confusion matrix, curves.png from a run's records.

The confusion pictures are drawn from the integer counts `metrics.EvalCounts.confusion` (rows: true
class, columns: top-1 prediction), so a run's pictures agree exactly with its report.json. Up to `MATRIX_MAX_CLASSES`
classes the picture is the row-normalised matrix; above that a 2000 x 2000 matrix is unreadable
at any size, so it becomes a bar chart of the most confused (true -> predicted) pairs. Output is a
function of the input only (fixed figure size, ties broken by class order), so the same counts give
the same bytes.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from wlasl_shards import storage
from wlasl_shards.train import metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

CONFUSIONS_FILE = "confusions.png"
PER_CLASS_FILE = "per_class.csv"
CURVES_FILE = "curves.png"
PER_CLASS_COLUMNS = ("gloss", "label", "support", "correct", "accuracy")
MATRIX_MAX_CLASSES = 100  # above this, the bar chart of pairs instead of the matrix
BAR_PAIRS = 30  # confused pairs in the bar chart
TICK_LABELS_ALL = 30  # up to this many classes every gloss is a tick label; above, every k-th
TICK_LABELS_MAX = 25  # the most tick labels per axis when they are thinned out
CELL_TEXT_MAX = 12  # up to this many classes each cell also shows its share as a number
FIGSIZE = (9.0, 8.0)  # inches, at DPI: a 900 x 800 PNG whatever the class count
DPI = 100


def check_confusion(confusion: torch.Tensor, classes: Sequence[str]) -> None:
    """ValueError unless `confusion` is (C, C) non-negative integer counts and `classes` has C names."""
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {tuple(confusion.shape)}")
    if confusion.dtype.is_floating_point or confusion.dtype.is_complex or confusion.dtype == torch.bool:
        raise ValueError(f"confusion must hold integer counts, got dtype {confusion.dtype}")
    if len(classes) != confusion.shape[0]:
        raise ValueError(f"{len(classes)} class names for a {confusion.shape[0]}-class confusion matrix")
    if confusion.numel() and int(confusion.min()) < 0:
        raise ValueError(f"confusion counts must be >= 0, got {int(confusion.min())}")


# ----------------------------------------------------------------------------------------- per class


def per_class_rows(confusion: torch.Tensor, classes: Sequence[str]) -> list[dict]:
    """(C, C) counts -> one row per class {"gloss", "label", "support", "correct", "accuracy"},
    worst accuracy first, ties by label; classes without clips last (by label), accuracy None."""
    check_confusion(confusion, classes)
    support = confusion.sum(dim=1).tolist()
    correct = confusion.diagonal().tolist()
    rows = [{"gloss": g, "label": i, "support": n, "correct": k, "accuracy": k / n if n else None}
            for i, (g, n, k) in enumerate(zip(classes, support, correct))]
    # Equal fractions give equal floats (division is correctly rounded), so ties are exact.
    return sorted(rows, key=lambda r: (r["accuracy"] is None, r["accuracy"] or 0.0, r["label"]))


def per_class_csv(rows: Sequence[dict]) -> str:
    """`per_class_rows` -> CSV text with a header; accuracy to 6 decimals, empty for no clips.
    The csv module quotes glosses holding commas, quotes or newlines."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PER_CLASS_COLUMNS)
    for r in rows:
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.6f}"
        writer.writerow([r["gloss"], r["label"], r["support"], r["correct"], acc])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- confusions


def row_normalised(confusion: torch.Tensor) -> np.ndarray:
    """(C, C) counts -> (C, C) float64: each row divided by its sum; NaN rows for classes without
    clips (drawn as "no data", not as "never predicted")."""
    counts = confusion.detach().cpu().to(torch.float64).numpy()
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


def tick_positions(num_classes: int) -> list[int]:
    """Class indices that get a tick label: all up to TICK_LABELS_ALL, else every k-th so that at
    most TICK_LABELS_MAX remain (names of 100 classes at 8 px each would overlap)."""
    if num_classes <= TICK_LABELS_ALL:
        return list(range(num_classes))
    step = math.ceil(num_classes / TICK_LABELS_MAX)
    return list(range(0, num_classes, step))


def _accuracy_line(confusion: torch.Tensor) -> str:
    n = int(confusion.sum())
    top1 = f"{int(confusion.diagonal().sum()) / n:.1%}" if n else "n/a"
    return f"top-1 {top1} on {n} clips, {confusion.shape[0]} classes"


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def confusion_figure(confusion: torch.Tensor, classes: Sequence[str], title: str | None = None) -> Figure:
    """A matplotlib Figure (Agg canvas, FIGSIZE at DPI) of the counts: the row-normalised matrix
    for up to MATRIX_MAX_CLASSES classes, else a horizontal bar chart of the BAR_PAIRS most
    confused (true -> predicted) pairs with their counts. `title` goes before the top-1 line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_confusion(confusion, classes)
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    heading = f"{title}: {_accuracy_line(confusion)}" if title else _accuracy_line(confusion)
    c = confusion.shape[0]
    if c <= MATRIX_MAX_CLASSES:
        _draw_matrix(fig, ax, confusion, classes)
        ax.set_title(f"{heading}\nrows normalised to 1 per true class", fontsize=10)
    else:
        _draw_pairs(ax, confusion, classes)
        ax.set_title(f"{heading}\nthe {BAR_PAIRS} most frequent confusions (of {c} classes)", fontsize=10)
    fig.tight_layout()
    return fig


def _draw_matrix(fig: Figure, ax, confusion: torch.Tensor, classes: Sequence[str]) -> None:
    import matplotlib

    shares = row_normalised(confusion)
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#e0e0e0")
    image = ax.imshow(np.ma.masked_invalid(shares), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class's clips (grey: no clips)")
    c = confusion.shape[0]
    ticks = tick_positions(c)
    size = 9 if c <= 12 else 7 if c <= TICK_LABELS_ALL else 6
    names = [_short(classes[i]) if c <= TICK_LABELS_ALL else f"{i} {_short(classes[i], 14)}" for i in ticks]
    ax.set_xticks(ticks, names, rotation=90, fontsize=size)
    ax.set_yticks(ticks, names, fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= CELL_TEXT_MAX:
        for t in range(c):
            for p in range(c):
                share = shares[t, p]
                if np.isnan(share) or confusion[t, p] == 0:
                    continue
                ax.text(p, t, f"{share:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if share > 0.5 else "black")


def _draw_pairs(ax, confusion: torch.Tensor, classes: Sequence[str]) -> None:
    pairs = metrics.top_confusions(confusion, classes, limit=BAR_PAIRS)
    if not pairs:
        ax.text(0.5, 0.5, "no confusions: every clip was predicted correctly", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    # Most confused on top: barh draws the first bar at the bottom.
    y = np.arange(len(pairs))[::-1]
    counts = [p["count"] for p in pairs]
    ax.barh(y, counts, color="#4a7ab5")
    ax.set_yticks(y, [f"{_short(p['true'], 20)} → {_short(p['pred'], 20)}" for p in pairs], fontsize=8)
    ax.set_ylim(-0.6, len(pairs) - 0.4)
    for yi, p in zip(y, pairs):
        ax.text(p["count"], yi, f" {p['count']} ({p['share']:.0%})", va="center", fontsize=7)
    ax.set_xlim(0, max(counts) * 1.18)
    ax.set_xlabel("clips (share of the true class's clips)")
    ax.set_ylabel("true → predicted")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_axisbelow(True)
    ax.grid(axis="x", alpha=0.3)


# ----------------------------------------------------------------------------------------- files


def write_confusions(confusion: torch.Tensor, classes: Sequence[str], path: Path, title: str | None = None) -> Path:
    """`confusion_figure` -> a PNG at `path`; returns `path`."""
    fig = confusion_figure(confusion, classes, title)
    # No metadata: matplotlib's "Software" entry names its version, which would change the bytes.
    storage.write_atomic(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}))
    return path


def write_per_class(confusion: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
    """`per_class_rows` -> a UTF-8 CSV at `path`; returns `path`."""
    text = per_class_csv(per_class_rows(confusion, classes))
    storage.write_bytes(path, text.encode("utf-8"))
    return path


def write_pictures(confusion: torch.Tensor, classes: Sequence[str], out_dir: Path, prefix: str = "",
                   title: str | None = None) -> list[Path]:
    """(C, C) int64 counts -> [out_dir/<prefix>confusions.png, out_dir/<prefix>per_class.csv].

    `prefix` keeps pictures of several evaluations apart in one directory (e.g. "eval_test_");
    `title` names what was evaluated in the picture's heading (e.g. "test split, best.pt").
    Raises ValueError for a non-square or negative matrix or a class list of another length.
    """
    check_confusion(confusion, classes)
    confusion = confusion.detach().cpu().to(torch.int64)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_confusions(confusion, classes, out_dir / f"{prefix}{CONFUSIONS_FILE}", title),
               write_per_class(confusion, classes, out_dir / f"{prefix}{PER_CLASS_FILE}")]
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


# ----------------------------------------------------------------------------------------- curves


def curves_figure(records: list[dict]) -> Figure:
    """Loss and accuracy per epoch (train and val) from metrics.jsonl's epoch records, on an axis of
    their epoch numbers (from 1); a dotted line marks best.pt's epoch. A 1000 x 400 px Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r for r in records if r.get("kind") == "epoch"]
    x = [r["epoch"] for r in epochs]

    def series(part: str, key: str) -> list[float]:
        return [((r.get(part) or {}).get(key) if part else r.get(key)) or math.nan for r in epochs]

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(x, series("train", "loss"), "o-", label="train")
    ax_loss.plot(x, series("val", "loss"), "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(x, series("train", "top1"), "o-", label="train top-1")
    ax_acc.plot(x, series("val", "top1"), "o-", label="val top-1")
    ax_acc.plot(x, series("val", "top5"), "o--", label="val top-5")
    ax_acc.plot(x, series("val", "per_class_mean"), "o:", label="val per-class")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    best = [r["epoch"] for r in epochs if r.get("best")]
    if best:
        ax_acc.axvline(best[-1], color="grey", linestyle=":", label=f"best.pt (epoch {best[-1]})")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def write_curves(records: list[dict], path: Path) -> Path:
    """`curves_figure` -> a PNG at `path`; returns `path`."""
    fig = curves_figure(records)
    storage.write_atomic(path, lambda f: fig.savefig(f, format="png"))
    return path


__all__ = ["BAR_PAIRS", "CONFUSIONS_FILE", "CURVES_FILE", "MATRIX_MAX_CLASSES", "PER_CLASS_COLUMNS", "PER_CLASS_FILE",
           "check_confusion", "confusion_figure", "curves_figure", "per_class_csv", "per_class_rows", "row_normalised",
           "tick_positions", "write_confusions", "write_curves", "write_per_class", "write_pictures"]
