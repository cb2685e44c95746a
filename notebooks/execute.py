"""Execute the tutorials in place at their normal size, as they are committed.

    python notebooks/execute.py                      # every notebook here
    python notebooks/execute.py 01_sparse_regression.ipynb

Each notebook runs top to bottom in a fresh ``python3`` kernel, from this folder, with ``CI``
unset (the smoke setting is for the test suite), and is written back with its outputs, without
per-cell timing metadata (so a rerun changes only what the cells print and draw). tqdm's notice
that Jupyter widgets are missing is silenced: the tutorials draw no progress bars, and the
stored outputs should not carry it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def execute(path: Path, timeout: int = 1200) -> float:
    """Run ``path`` in place; returns the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        allow_errors=False,
        record_timing=False,
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: all here)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = [Path(p) if Path(p).exists() else HERE / p for p in args.notebooks]
    paths = paths or sorted(HERE.glob("*.ipynb"))
    os.environ.pop("CI", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    quiet = "ignore:IProgress not found"  # tqdm.auto, imported without ipywidgets
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    for path in paths:
        print(f"{path.name}: {execute(path.resolve(), args.timeout):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
