"""The repository stands alone: no file points at material outside it, and the README's code
imports names that exist."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

#: Pointers to documents or trackers that are not part of the repository.
FORBIDDEN = (
    "../shared",
    "shared/DESIGN",
    "DESIGN.md",
    "DESIGN section",
    "STYLE.md",
    "the compression issue",
    "the federation issue",
    "groundwork issue",
)

_SKIP_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    "build",
    "dist",
}


def _repository_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore (``git ls-files``); without git,
    every file outside caches and virtual environments."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        files = sorted({f for f in out.decode().split("\0") if f})
        if files:
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            files.append((Path(dirpath) / name).relative_to(ROOT).as_posix())
    return files


def _text(path: Path) -> str | None:
    """The file's text, or ``None`` for a binary (or missing) file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _offences() -> list[str]:
    found = []
    for rel in sorted(_repository_files()):
        if rel == THIS:
            continue
        text = _text(ROOT / rel)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), start=1):
            for phrase in FORBIDDEN:
                if phrase in line:
                    found.append(f"{rel}:{lineno}: {phrase!r}: {line.strip()[:120]}")
    return found


def test_no_pointers_outside_the_repository():
    offences = _offences()
    assert not offences, "files point at material outside the repository:\n" + "\n".join(offences)


def _readme_python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python[ \t]*\n(.*?)^```", readme, flags=re.DOTALL | re.MULTILINE)


def _imports(source: str) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every import of a code block (``name`` None for ``import x``)."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            out.extend((alias.name, None) for alias in node.names)
    return out


def test_readme_has_python_blocks():
    assert _readme_python_blocks(), "README.md has no ```python block"


@pytest.mark.parametrize("index", range(len(_readme_python_blocks())))
def test_readme_python_block_imports_exist(index):
    block = _readme_python_blocks()[index]
    missing = []
    for module_name, name in _imports(block):
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            missing.append(f"import {module_name}: {e}")
            continue
        if name is not None and name != "*" and not hasattr(module, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"from {module_name} import {name}: no such name")
    assert not missing, f"README python block {index}:\n" + "\n".join(missing)
