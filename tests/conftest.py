import pyro
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _float64_with_validation():
    """The whole suite runs in float64 with Pyro's argument validation on."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(True)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same seed and an empty param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
