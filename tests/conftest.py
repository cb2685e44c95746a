"""Test settings: the dtype the suite runs in, Pyro validation, a seed per test.

The suite runs in float64 by default. ``DTURBO_TEST_DTYPE=float32`` runs it in torch's own
default dtype instead (the float32 CI job); tests marked ``@pytest.mark.float64(reason=...)``
are skipped there, with their reason.
"""

import os

import pyro
import pytest
import torch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _test_dtype() -> torch.dtype:
    name = os.environ.get("DTURBO_TEST_DTYPE", "float64")
    if name not in _DTYPES:
        raise pytest.UsageError(f"DTURBO_TEST_DTYPE must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


TEST_DTYPE = _test_dtype()


def pytest_report_header(config):
    return f"pyro_dturbo tests: default dtype {TEST_DTYPE} (DTURBO_TEST_DTYPE)"


def pytest_collection_modifyitems(config, items):
    if TEST_DTYPE == torch.float64:
        return
    for item in items:
        marker = item.get_closest_marker("float64")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"float64 only: {reason}"))


@pytest.fixture(autouse=True, scope="session")
def _test_dtype_with_validation():
    """The whole suite runs in ``TEST_DTYPE`` with Pyro's argument validation on."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(TEST_DTYPE)
    pyro.enable_validation(True)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same seed and an empty param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()


@pytest.fixture
def torch_default_dtype():
    """Run a test under torch's own default dtype (float32), whatever the suite's setting: for
    tests that library code works on data of any dtype without a global setting."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield torch.float32
    torch.set_default_dtype(dtype)
