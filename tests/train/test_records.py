"""records.py: metrics.jsonl written by Recorder and read by read_metrics (one JSON-lines reader)."""

from __future__ import annotations

import json
import math

import pytest

from wlasl_shards.train.records import METRICS_FILE, Recorder, check_tensorboard, finite, read_metrics, renumber_epochs


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_finite_turns_nan_and_inf_into_null():
    assert finite({"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": 2, "e": "x"}) == \
        {"a": None, "b": [1.0, None, {"c": None}], "d": 2, "e": "x"}


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    path = tmp_path / METRICS_FILE
    assert read_metrics(path) == []  # no file yet
    path.write_text('{"kind": "step", "epoch": 1, "step": 1}\n[1, 2]\n{"kind": "epoch", "epoch": 1, "st')
    assert read_metrics(path) == [{"kind": "step", "epoch": 1, "step": 1}]  # records only, torn line dropped


def test_recorder_writes_records_and_keeps_only_saved_epochs_on_resume(tmp_path):
    rec = Recorder(tmp_path, is_writer=True, keep_epochs_below=1)
    for epoch in (1, 2):
        rec.write({"kind": "step", "epoch": epoch, "step": epoch, "loss": math.nan}, epoch)
        rec.write({"kind": "epoch", "epoch": epoch, "step": epoch, "val": {"top1": 0.5}}, epoch)
    rec.write({"kind": "test", "epoch": 2, "step": 2}, 2)
    rec.close()
    path = tmp_path / METRICS_FILE
    assert _lines(path)[0] == {"kind": "step", "epoch": 1, "step": 1, "loss": None}  # standard JSON
    with path.open("a") as f:
        f.write('{"kind": "step", "epoch": 3, "st')  # a kill during an append
    # Resuming after epoch 1 was saved: epoch 2's records and the test record go, the torn line too.
    Recorder(tmp_path, is_writer=True, keep_epochs_below=2).close()
    assert _lines(path) == [{"kind": "step", "epoch": 1, "step": 1, "loss": None},
                            {"kind": "epoch", "epoch": 1, "step": 1, "val": {"top1": 0.5}}]
    # Other ranks write nothing and leave the file alone.
    other = Recorder(tmp_path, is_writer=False, keep_epochs_below=1)
    other.write({"kind": "step", "epoch": 1, "step": 9}, 9)
    assert len(_lines(path)) == 2


def test_an_old_run_numbered_from_0_is_renumbered_on_resume(tmp_path):
    old = [{"kind": "step", "epoch": 0, "step": 1}, {"kind": "epoch", "epoch": 0, "step": 1},
           {"kind": "step", "epoch": 1, "step": 2}, {"kind": "epoch", "epoch": 1, "step": 2},
           {"kind": "test", "epoch": 0, "step": 2}]
    assert [r["epoch"] for r in renumber_epochs(old)] == [1, 1, 2, 2, 1]
    new = renumber_epochs(old)
    assert renumber_epochs(new) == new  # numbered from 1 already: unchanged
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in old))
    Recorder(tmp_path, is_writer=True, keep_epochs_below=2).close()  # resuming at epoch 2: epoch 1 was saved
    assert read_metrics(tmp_path / METRICS_FILE) == [{"kind": "step", "epoch": 1, "step": 1},
                                                     {"kind": "epoch", "epoch": 1, "step": 1}]


def test_check_tensorboard():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install tensorboard"):
            check_tensorboard()
    else:
        check_tensorboard()
