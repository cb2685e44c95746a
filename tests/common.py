"""Shared test helpers (after Pyro's ``tests/common.py``)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def assert_close(
    actual: Any, expected: Any, atol: float = 1e-6, rtol: float = 1e-6, msg: str = ""
) -> None:
    """Assert two values are close, recursing into dicts and sequences."""
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{msg}: expected a mapping, got {type(actual)}"
        assert set(actual) == set(expected), f"{msg}: keys {set(actual)} != {set(expected)}"
        for key in expected:
            assert_close(actual[key], expected[key], atol, rtol, msg=f"{msg}[{key!r}]")
    elif isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        a = torch.as_tensor(actual, dtype=torch.float64)
        e = torch.as_tensor(expected, dtype=torch.float64)
        assert a.shape == e.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m: f"{msg}: {m}")
    elif isinstance(expected, Sequence) and not isinstance(expected, str):
        assert len(actual) == len(expected), f"{msg}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, atol, rtol, msg=f"{msg}[{i}]")
    elif isinstance(expected, numbers.Number):
        assert abs(float(actual) - float(expected)) <= atol + rtol * abs(float(expected)), (
            f"{msg}: {actual} != {expected}"
        )
    else:
        assert actual == expected, f"{msg}: {actual!r} != {expected!r}"
