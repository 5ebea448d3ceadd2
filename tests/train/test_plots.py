"""confusions.png and per_class.csv from hand-made confusion matrices."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from wlasl_shards.train import plots

# 5 classes; rows are the true class. "b, c" and 'say "hi"' need CSV quoting; class 3 has no clips.
CLASSES = ["a", "b, c", 'say "hi"', "none", "e"]
CONFUSION = torch.tensor([
    [3, 1, 0, 0, 0],  # a: 3/4
    [0, 1, 2, 0, 1],  # b, c: 1/4
    [0, 2, 2, 0, 0],  # say "hi": 2/4 (the 2 -> 1 pair ties with 1 -> 2)
    [0, 0, 0, 0, 0],  # none: no clips
    [0, 0, 0, 0, 2],  # e: 2/2
], dtype=torch.int64)


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def image_of(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_per_class_csv_is_worst_first_with_support_and_quoting(tmp_path):
    (png, path) = plots.write_pictures(CONFUSION, CLASSES, tmp_path)
    assert png == tmp_path / "confusions.png" and path == tmp_path / "per_class.csv"
    rows = read_csv(path)
    assert list(rows[0]) == ["gloss", "label", "support", "correct", "accuracy"]
    got = [(r["gloss"], int(r["label"]), int(r["support"]), int(r["correct"]), r["accuracy"]) for r in rows]
    assert got == [("b, c", 1, 4, 1, "0.250000"), ('say "hi"', 2, 4, 2, "0.500000"), ("a", 0, 4, 3, "0.750000"),
                   ("e", 4, 2, 2, "1.000000"), ("none", 3, 0, 0, "")]
    text = path.read_text(encoding="utf-8")
    assert '"b, c",1,4,1,0.250000' in text and '"say ""hi""",2,4,2,0.500000' in text


def test_per_class_ties_are_broken_by_label():
    confusion = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])  # classes 0 and 2 both at 1/2
    rows = plots.per_class_rows(confusion, ["x", "y", "z"])
    assert [(r["label"], r["accuracy"]) for r in rows] == [(0, 0.5), (2, 0.5), (1, 1.0)]
    # The same fraction from other counts is the same float, so it ties too.
    rows = plots.per_class_rows(torch.tensor([[2, 0, 4], [0, 1, 0], [0, 1, 2]]), ["x", "y", "z"])
    assert [r["label"] for r in rows] == [0, 2, 1]


def test_matrix_picture_is_row_normalised_with_gloss_ticks(tmp_path):
    fig = plots.confusion_figure(CONFUSION, CLASSES, title="test split")
    ax = fig.axes[0]
    (image,) = ax.images
    shares = np.ma.filled(image.get_array(), np.nan)
    assert shares[0].tolist() == [0.75, 0.25, 0.0, 0.0, 0.0]
    assert shares[1].tolist() == [0.0, 0.25, 0.5, 0.0, 0.25]
    assert np.isnan(shares[3]).all()  # no clips: drawn as "no data", not as zeros
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert ax.get_title().startswith("test split: top-1 57.1% on 14 clips, 5 classes")
    assert len(fig.axes) == 2  # the matrix and its colour bar

    plots.write_pictures(CONFUSION, CLASSES, tmp_path, title="test split")
    pixels = image_of(tmp_path / "confusions.png")
    assert pixels.shape == (800, 900, 3)
    assert pixels.std() > 20  # a drawing, not a blank page
    # The darkest cell (e: 2/2 -> 1.0) is deep blue somewhere in the picture.
    assert ((pixels[..., 2] > 80) & (pixels[..., 0] < 20) & (pixels[..., 1] < 60)).sum() > 100


def test_ticks_thin_out_as_classes_grow():
    assert plots.tick_positions(30) == list(range(30))
    assert plots.tick_positions(100) == list(range(0, 100, 4))
    classes = [f"gloss{i}" for i in range(60)]
    fig = plots.confusion_figure(torch.eye(60, dtype=torch.int64), classes)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [f"{i} gloss{i}" for i in range(0, 60, 3)]


def test_above_100_classes_the_picture_is_a_bar_chart_of_the_top_pairs(tmp_path):
    c = 101
    classes = [f"g{i}" for i in range(c)]
    confusion = torch.eye(c, dtype=torch.int64) * 3
    for i in range(40):  # 40 confused pairs i -> i + 1 with counts 1..40
        confusion[i, i + 1] = i + 1
    confusion[50, 0] = 11  # ties with 10 -> 11 (count 11): the lower flat index, 10 -> 11, comes first
    fig = plots.confusion_figure(confusion, classes)
    ax = fig.axes[0]
    assert len(ax.images) == 0 and len(fig.axes) == 1
    bars = sorted(ax.patches, key=lambda p: -p.get_y())  # top to bottom
    assert len(bars) == plots.BAR_PAIRS
    assert [round(b.get_width()) for b in bars] == list(range(40, 11, -1)) + [11]
    ticks = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())), reverse=True)
    top = [text for _, text in ticks]  # top to bottom
    assert top[:2] == ["g39 → g40", "g38 → g39"]
    assert top[-2:] == ["g11 → g12", "g10 → g11"]
    assert "30 most frequent confusions" in ax.get_title()

    plots.write_pictures(confusion, classes, tmp_path)
    pixels = image_of(tmp_path / "confusions.png")
    assert pixels.shape == (800, 900, 3) and pixels.std() > 20


def test_pictures_are_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    plots.write_pictures(CONFUSION, CLASSES, a)
    plots.write_pictures(CONFUSION.clone(), list(CLASSES), b, prefix="eval_test_")
    assert (a / "confusions.png").read_bytes() == (b / "eval_test_confusions.png").read_bytes()
    assert (a / "per_class.csv").read_bytes() == (b / "eval_test_per_class.csv").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == ["confusions.png", "per_class.csv"]  # no temporaries left


def test_nothing_counted_and_nothing_confused_still_draw(tmp_path):
    plots.write_pictures(torch.zeros(3, 3, dtype=torch.int64), ["x", "y", "z"], tmp_path)
    assert [r["accuracy"] for r in read_csv(tmp_path / "per_class.csv")] == ["", "", ""]
    assert image_of(tmp_path / "confusions.png").shape == (800, 900, 3)
    fig = plots.confusion_figure(torch.eye(120, dtype=torch.int64), [str(i) for i in range(120)])
    assert len(fig.axes[0].patches) == 0 and "top-1 100.0% on 120 clips" in fig.axes[0].get_title()


@pytest.mark.parametrize("confusion, classes, message", [
    (torch.zeros(2, 3, dtype=torch.int64), ["a", "b"], "square"),
    (torch.zeros(2, 2, dtype=torch.int64), ["a"], "1 class names for a 2-class"),
    (torch.tensor([[1, -1], [0, 1]]), ["a", "b"], "must be >= 0, got -1"),
    (torch.zeros(2, 2), ["a", "b"], "integer counts, got dtype torch.float32"),
])
def test_bad_input_is_a_value_error(tmp_path, confusion, classes, message):
    with pytest.raises(ValueError, match=message):
        plots.write_pictures(confusion, classes, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_csv_text_round_trips_odd_glosses():
    classes = ["new\nline", "=sum", "ü"]
    text = plots.per_class_csv(plots.per_class_rows(torch.eye(3, dtype=torch.int64), classes))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["gloss"] for r in rows] == classes


def test_curves_are_drawn_on_the_epoch_numbers_of_the_records(tmp_path):
    records = [{"kind": "step", "epoch": 1, "step": 1, "loss": 9.0}]
    for epoch, top1 in ((1, 0.25), (2, 0.5), (3, 0.4)):
        records.append({"kind": "epoch", "epoch": epoch, "step": epoch, "best": epoch <= 2,
                        "train": {"loss": 2.0 / epoch, "top1": top1}, "val": {"loss": 1.0, "top1": top1}})
    fig = plots.curves_figure(records)
    ax_loss, ax_acc = fig.axes
    assert [list(line.get_xdata()) for line in ax_loss.lines] == [[1, 2, 3]] * 2  # train, val: epochs from 1
    assert list(ax_acc.lines[1].get_ydata()) == [0.25, 0.5, 0.4]
    assert ax_acc.lines[-1].get_label() == "best.pt (epoch 2)" and list(ax_acc.lines[-1].get_xdata()) == [2, 2]
    path = plots.write_curves(records, tmp_path / plots.CURVES_FILE)
    assert image_of(path).shape == (400, 1000, 3)
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left
