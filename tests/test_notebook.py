"""examples/wlasl_i3d_training.ipynb: committed without outputs, and it runs top to bottom.

The run executes every committed cell with nbclient in a kernel of this interpreter, on the synthetic
data, with a parameters cell injected after the notebook's own (papermill's convention) that makes
the dataset and the training tiny. A last injected cell prints the values the notebook computed as
JSON, and the test asserts on them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "wlasl_i3d_training.ipynb"
KERNEL = "wlasl-shards-test"

# 4 glosses x 3 videos (1 train / 1 val / 1 test each), 2 epochs of one optimiser step.
TINY_PARAMETERS = "EPOCHS, CLASSES, VIDEOS_PER_CLASS = 2, 4, 3"
REPORT = """
import json
print("RESULT " + json.dumps({
    "num_shards": num_shards,
    "samples": {split: s["samples"] for split, s in index["splits"].items()},
    "epoch_records": len([r for r in result["history"] if r["kind"] == "epoch"]),
    "fit_test_top1": result["test"]["top1"],
    "test_top1": test_top1,
    "test_count": test["count"],
    "prediction_frames": prediction["frames"],
    "probabilities": [t["probability"] for t in prediction["top"]],
    "glosses": index["classes"],
    "predicted": [t["gloss"] for t in prediction["top"]],
}))
"""


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = code_cells(nb)
    assert cells, "the notebook has no code cells"
    for cell in cells:
        assert cell.outputs == [], f"cell {cell.id} was committed with outputs"
        assert cell.execution_count is None, f"cell {cell.id} was committed with an execution count"
    # The first cell explains the switch to the real data and to Kinetics weights.
    intro = nb.cells[0]
    assert intro.cell_type == "markdown"
    for needle in ('SOURCE = "/path/to/wlasl-processed"', "SUBSET", "INIT", "rgb_imagenet.pt", "SMALL = False"):
        assert needle in intro.source, needle
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is cells[0]
    for name in ("SOURCE = None", "INIT = None", "SMALL = True", "EPOCHS", "CLASSES, VIDEOS_PER_CLASS"):
        assert name in params[0].source, name


@pytest.fixture
def kernel_of_this_interpreter(tmp_path, monkeypatch) -> str:
    """A kernelspec running `sys.executable`, found through JUPYTER_PATH: nothing installed globally."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "wlasl-shards test", "language": "python",
        # One intra-op thread: the tiny I3D steps gain nothing from a second one, and on a shared
        # 2-core machine a thread waiting for a busy core made them up to 10x slower (measured).
        "env": {"PYTHONPATH": str(REPO), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "OMP_NUM_THREADS": "1"},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no profile written to the home directory
    return KERNEL


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_synthetic_data(kernel_of_this_interpreter, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    committed = len(nb.cells)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(TINY_PARAMETERS, metadata={"tags": ["injected-parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    work = tmp_path / "cwd"
    work.mkdir()
    client = NotebookClient(nb, kernel_name=kernel_of_this_interpreter, timeout=300,
                            resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError naming the cell when one fails

    assert len(nb.cells) == committed + 2
    lines = [line for c in code_cells(nb) for o in c.outputs if o.output_type == "stream" and o.name == "stdout"
             for line in o.text.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1
    got = json.loads(lines[0][len("RESULT "):])

    assert got["samples"] == {"train": 4, "val": 4, "test": 4}
    assert got["num_shards"] == 3  # one per split at these sizes
    assert got["glosses"] and len(got["glosses"]) == 4
    assert got["epoch_records"] == 2
    assert 0.0 <= got["test_top1"] <= 1.0 and got["test_count"] == 4
    # evaluate() on best.pt reproduces the test figure the run itself reported.
    assert got["test_top1"] == got["fit_test_top1"]
    assert got["prediction_frames"] > 0
    assert len(got["probabilities"]) == 4  # top-5 of 4 classes
    assert got["probabilities"] == sorted(got["probabilities"], reverse=True)
    assert math.isclose(sum(got["probabilities"]), 1.0, rel_tol=1e-5)
    assert sorted(got["predicted"]) == sorted(got["glosses"])

    # The contact sheet and the curves were drawn as images.
    sources = {c.source.strip(): c for c in code_cells(nb)}
    sheet = next(c for s, c in sources.items() if s.startswith("ws.contact_sheet("))
    curves = next(c for s, c in sources.items() if "plt.show()" in s)
    for cell in (sheet, curves):
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:40]
    # Everything was written under the notebook's working directory.
    assert (work / "wlasl_work" / "synthetic" / "WLASL_v0.3.json").is_file()
    assert len(list((work / "wlasl_work" / "runs").glob("*/best.pt"))) == 1
