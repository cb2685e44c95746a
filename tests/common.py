"""Shared test helpers (after Pyro's ``tests/common.py``)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

#: Default tolerances by the lower precision of the two values compared: float64 (or numbers)
#: at 1e-6, float32 at torch's own float32 defaults (``torch.testing.assert_close``).
_TOLERANCES = {torch.float64: (1e-6, 1e-6), torch.float32: (1e-5, 1.3e-6)}


def _default_tolerances(actual: Any, expected: Any) -> tuple[float, float]:
    dtypes = {v.dtype for v in (actual, expected) if isinstance(v, torch.Tensor)}
    low = dtypes & {torch.float32, torch.float16, torch.bfloat16}
    return _TOLERANCES[torch.float32 if low else torch.float64]


def assert_close(
    actual: Any,
    expected: Any,
    atol: float | None = None,
    rtol: float | None = None,
    msg: str = "",
) -> None:
    """Assert two values are close, recursing into dicts and sequences.

    ``atol`` and ``rtol`` default to 1e-6, or to torch's float32 tolerances where either value
    is a tensor of lower precision than float64 (the float32 test job).
    """
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{msg}: expected a mapping, got {type(actual)}"
        assert set(actual) == set(expected), f"{msg}: keys {set(actual)} != {set(expected)}"
        for key in expected:
            assert_close(actual[key], expected[key], atol, rtol, msg=f"{msg}[{key!r}]")
    elif isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        default_atol, default_rtol = _default_tolerances(actual, expected)
        atol = default_atol if atol is None else atol
        rtol = default_rtol if rtol is None else rtol
        a = torch.as_tensor(actual, dtype=torch.float64)
        e = torch.as_tensor(expected, dtype=torch.float64)
        assert a.shape == e.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m: f"{msg}: {m}")
    elif isinstance(expected, Sequence) and not isinstance(expected, str):
        assert len(actual) == len(expected), f"{msg}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, atol, rtol, msg=f"{msg}[{i}]")
    elif isinstance(expected, numbers.Number):
        atol = _TOLERANCES[torch.float64][0] if atol is None else atol
        rtol = _TOLERANCES[torch.float64][1] if rtol is None else rtol
        assert abs(float(actual) - float(expected)) <= atol + rtol * abs(float(expected)), (
            f"{msg}: {actual} != {expected}"
        )
    else:
        assert actual == expected, f"{msg}: {actual!r} != {expected!r}"


#: report.json's fixed layout (other tools read these names: they do not change)
ROUND_KEYS = {
    "round",
    "accuracy",
    "bytes_up",
    "bytes_down",
    "density_up",
    "density_down",
    "dropped",
    "rejected",
    "corrupted",
    "time_s",
}
FINAL_KEYS = {"accuracy", "density", "flops_dense", "flops_compressed", "bytes_up", "bytes_down"}
