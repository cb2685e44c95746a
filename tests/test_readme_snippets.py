"""The README's Python snippets run: each ```python block is executed in a small setting.

Every block is matched by a line it contains to a list of text substitutions that shrink its
sizes (problem size, epochs, rounds, steps); each substitution must find its text, so a README
edit that changes a size fails here instead of running the full setting. A block with no entry
fails too: add one below. The blocks run in torch's float32 default dtype with a temporary
folder as the working directory, so whatever they write (``results/...``, ``copy.pt``) lands
there; paths into the repository are made absolute.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: ``marker -> [(old, new), ...]``: the block holding ``marker`` runs with each ``old``
#: replaced by ``new`` (every ``old`` must occur in it).
SMALL: dict[str, list[tuple[str, str]]] = {
    "fit_sparse_regression(problem.X": [
        ("num_obs=128, num_weights=512", "num_obs=48, num_weights=64"),
        ("num_steps=500", "num_steps=20"),
    ],
    "fit_network(net": [
        ("(256, 256)", "(16, 16)"),
        ("epochs=30, batch_size", "epochs=1, batch_size"),
        ("epochs=80, finetune_epochs=30", "epochs=3, finetune_epochs=1"),
        ("warmup_epochs=3", "warmup_epochs=1"),
        ("progress_bar=True", "progress_bar=False"),
    ],
    "load_compact(": [],
    "run_federated(config": [
        ('"configs/federated_digits.yaml"', repr(str(ROOT / "configs" / "federated_digits.yaml"))),
        (
            '.replace(methods=["dturbo", "fedavg"])',
            '.replace(methods=["dturbo", "fedavg"]).replace(rounds=3, warmup_rounds=1, '
            "finetune_rounds=1, clients=2, local_epochs=1, hidden=(16,))",
        ),
        ("progress_bar=True", "progress_bar=False"),
    ],
}


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _small(block: str) -> str:
    markers = [m for m in SMALL if m in block]
    assert len(markers) == 1, (
        f"README block matches {markers or 'no'} small setting(s); give it one in "
        f"tests/test_readme_snippets.py:\n{block}"
    )
    for old, new in SMALL[markers[0]]:
        assert old in block, f"README block no longer contains {old!r}:\n{block}"
        block = block.replace(old, new)
    return block


def _block(marker: str) -> str:
    found = [b for b in python_blocks(README.read_text(encoding="utf-8")) if marker in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {marker!r}"
    return _small(found[0])


def _run(code: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    namespace = {} if namespace is None else namespace
    namespace.setdefault("__name__", "readme_snippet")
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


@pytest.fixture(autouse=True)
def _as_a_reader_runs_them(tmp_path, monkeypatch):
    """In a temporary folder, in torch's own default dtype (float32: the suite's float64 is not
    what a reader has), on one thread."""
    monkeypatch.chdir(tmp_path)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


def test_every_python_block_has_a_small_setting():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= len(SMALL)
    for block in blocks:
        _small(block)


def test_regression_example(capsys):
    ns = _run(_block("fit_sparse_regression(problem.X"))
    printed = capsys.readouterr().out.split()
    from pyro_dturbo.data import nmse_db

    # the printed NMSE is the fit's, computed from the estimate
    assert float(printed[0]) == pytest.approx(nmse_db(ns["result"].mean, ns["problem"].weight))
    assert printed[1] in ("True", "False")
    assert ns["active"].shape == (64,) and ns["active"].dtype == torch.bool
    assert len(ns["svi"].losses) == 20
    assert "posterior" in ns["idata"].groups()


def test_compression_example_and_loading_the_compact_model():
    from pyro_dturbo.compression import save_compact

    ns = _run(_block("fit_network(net"))
    report = ns["report"]
    # the figures the README quotes for this snippet, computed (their values depend on sizes)
    for key in ("density", "accuracy_compressed", "accuracy_dense"):
        assert 0.0 <= float(report[key]) <= 1.0, key
    # the loading snippet reads what `dturbo compress --out results/compress_run` writes
    save_compact(ns["compact"], Path("results/compress_run/compact.pt"))
    loaded = _run(_block("load_compact("))
    with torch.no_grad():
        expected = ns["compact"](ns["data"].x_test).argmax(-1) == ns["data"].y_test
    assert float(loaded["accuracy"]) == pytest.approx(float(expected.double().mean()))
    assert Path("copy.pt").is_file()
    assert type(loaded["same"]) is type(loaded["model"])


def test_federated_example():
    ns = _run(_block("run_federated(config"))
    assert set(ns["result"].methods) == {"dturbo", "fedavg"}
    dturbo = ns["dturbo"]
    assert len(dturbo.rounds) == 3
    assert dturbo.rounds[-1].bytes_up > 0
    assert 0.0 <= dturbo.final["accuracy"] <= 1.0 and not math.isnan(dturbo.final["accuracy"])
    assert dturbo.model is not None
    assert Path("results/fed").is_dir()
