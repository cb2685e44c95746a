"""The tutorials: stored executed at their normal size, and smoke-run here.

The notebooks are committed with their outputs, from one top-to-bottom run at full size
(``python notebooks/execute.py``), so they read as documents. This module checks that stored
run (every code cell executed, in order, no errors, no warnings on stderr, no oversized
outputs, nothing of the machine that ran it), then executes a copy in its smoke setting (``CI``
set: tiny sizes, few steps), offline, without touching the stored file.
"""

import json
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: The largest single stored output (its JSON), in bytes: room for a PNG figure, not for a
#: data dump or an embedded video.
MAX_OUTPUT_BYTES = 1_000_000
#: The largest stored notebook, in bytes.
MAX_NOTEBOOK_BYTES = 4_000_000
#: Image formats a stored output may carry.
IMAGE_TYPES = {"image/png"}


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {
        "01_sparse_regression.ipynb",
        "02_compress_network.ipynb",
        "03_federated.ipynb",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stored_executed(path):
    """The stored notebook is one clean run: every code cell executed, top to bottom."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert cells, f"{path.name} has no code cell"
    counts = [cell.execution_count for cell in cells]
    assert all(c is not None for c in counts), (
        f"{path.name}: code cells {[i for i, c in enumerate(counts) if c is None]} were not "
        "executed; run python notebooks/execute.py"
    )
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts} are not one run from the top "
        "(python notebooks/execute.py)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stored_outputs_clean(path):
    """No error, no warning, nothing large, nothing of the machine it ran on."""
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size} B"
    nb = nbformat.read(path, as_version=4)
    machine = [t for t in (str(ROOT), str(Path.home())) if len(t) > 1] + [".venv", "site-packages"]
    for index, cell in enumerate(_code_cells(nb)):
        where = f"{path.name}, code cell {index}"
        for output in cell.outputs:
            kind = output.output_type
            assert kind != "error", f"{where}: stored with an error ({output.get('ename')})"
            size = len(json.dumps(output))
            assert size <= MAX_OUTPUT_BYTES, f"{where}: an output of {size} B"
            if kind == "stream":
                text = output.text
                if output.name == "stderr":
                    assert "Warning" not in text, f"{where}: a warning on stderr: {text[:300]}"
            else:
                data = output.get("data", {})
                images = {k for k in data if k.startswith("image/")}
                assert images <= IMAGE_TYPES, f"{where}: image types {sorted(images)}"
                assert not any(k.startswith("application/vnd.jupyter.widget") for k in data), (
                    f"{where}: a widget (it does not render where the notebook is read)"
                )
                text = "\n".join(str(v) for k, v in data.items() if not k.startswith("image/"))
            for token in machine:
                assert token not in text, f"{where}: an output names {token!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    """A copy executes in the smoke setting; the stored notebook is not written."""
    monkeypatch.setenv("CI", "1")
    # The kernel is a fresh process: make it treat warnings as errors, as the test suite does,
    # except ipykernel's own notice at shutdown (its do_shutdown is not a coroutine yet).
    monkeypatch.setenv(
        "PYTHONWARNINGS", "error,ignore::PendingDeprecationWarning:ipykernel.kernelbase"
    )
    nb = nbformat.read(path, as_version=4)
    for cell in _code_cells(nb):
        cell.outputs = []
        cell.execution_count = None
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        allow_errors=False,
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error"
