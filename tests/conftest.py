import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_float64():
    """Every test: float64, a fixed seed, Pyro validation on, a clean param store."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    pyro.clear_param_store()
    yield
    torch.set_default_dtype(dtype)
