"""Execute the tutorials in their smoke setting (``CI`` set: tiny sizes, few steps), offline."""

from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert any(p.name == "01_sparse_regression.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    # The kernel is a fresh process: make it treat warnings as errors, as the test suite does,
    # except ipykernel's own notice at shutdown (its do_shutdown is not a coroutine yet).
    monkeypatch.setenv(
        "PYTHONWARNINGS", "error,ignore::PendingDeprecationWarning:ipykernel.kernelbase"
    )
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} is stored with outputs; clear them"
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
