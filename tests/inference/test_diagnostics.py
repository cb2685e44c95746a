"""ArviZ conversion of Turbo-VBI, SVI and NUTS results."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_dturbo.inference.baselines import run_mcmc, run_svi
from pyro_dturbo.inference.diagnostics import _arviz, summary, to_arviz
from pyro_dturbo.inference.regression import fit_sparse_regression
from pyro_dturbo.models import MarkovChainSupport, SparsePrior

az = _arviz()  # the ArviZ the library imports (its 1.x warning silenced)

N, M = 8, 16
WEIGHT_VARS = ("linear.weight", "linear.precision", "linear.support")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    w = torch.zeros(N)
    w[2:5] = torch.tensor([1.5, -1.2, 1.8])
    X = torch.randn(M, N, generator=g) / math.sqrt(M)
    y = X @ w + 0.03 * torch.randn(M, generator=g)
    prior = SparsePrior(MarkovChainSupport(0.1, 0.3), active=(1.0, 1.0), inactive=(1.0, 1e-4))
    return X, y, w, prior


@pytest.fixture(scope="module")
def turbo(data):
    X, y, _, prior = data
    return fit_sparse_regression(X, y, prior)  # noise precision learned


@pytest.fixture(scope="module")
def svi(data):
    X, y, _, prior = data
    return run_svi(X, y, prior, num_steps=300, lr=0.03, num_samples=200)  # noise learned


@pytest.fixture(scope="module")
def nuts(data):
    X, y, _, prior = data
    # the noise precision is fixed here: learning it makes NUTS's first warmup window slow
    return run_mcmc(X, y, prior, noise_precision=1e3, num_chains=2, warmup_steps=60, num_samples=80)


def assert_weight_vars(idata, chains, draws):
    for var in WEIGHT_VARS:
        assert idata.posterior[var].dims == ("chain", "draw", "weight_dim"), var
        assert idata.posterior[var].shape == (chains, draws, N), var
    np.testing.assert_array_equal(idata.posterior["weight_dim"].values, np.arange(N))
    assert idata.log_likelihood["obs"].shape == (chains, draws, M)
    assert idata.observed_data["obs"].shape == (M,)


def test_turbo_to_arviz(turbo, data):
    state = torch.get_rng_state()
    idata = to_arviz(turbo, num_samples=300, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert_weight_vars(idata, 1, 300)
    assert set(idata.posterior.data_vars) == {*WEIGHT_VARS, "noise_precision"}
    assert idata.posterior["noise_precision"].shape == (1, 300)
    # the draws are the Turbo posterior's
    mean = idata.posterior["linear.weight"].mean(("chain", "draw")).values
    sd = turbo.variance.sqrt().numpy()
    assert (np.abs(mean - turbo.mean.numpy()) < 5 * sd / math.sqrt(300)).all()
    support = idata.posterior["linear.support"].mean(("chain", "draw")).values
    assert np.abs(support - turbo.support_probs.numpy()).max() < 0.1
    # reproducible from the seed
    again = to_arviz(turbo, num_samples=300, seed=3)
    np.testing.assert_array_equal(
        again.posterior["linear.weight"].values, idata.posterior["linear.weight"].values
    )


def test_svi_to_arviz(svi):
    idata = to_arviz(svi)
    assert_weight_vars(idata, 1, 200)
    assert set(idata.posterior.data_vars) == {
        *WEIGHT_VARS,
        "linear.support_probs",
        "noise_precision",
    }
    assert idata.posterior["noise_precision"].shape == (1, 200)
    probs = idata.posterior["linear.support_probs"].mean(("chain", "draw")).values
    # ArviZ averages in float64: to float32 rounding when the draws are float32
    rtol = 1e-7 if svi.support_probs.dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(probs, svi.support_probs.numpy(), rtol=rtol)


def test_mcmc_to_arviz_keeps_chains(nuts):
    idata = to_arviz(nuts)
    assert_weight_vars(idata, 2, 80)
    assert set(idata.posterior.data_vars) == {*WEIGHT_VARS, "linear.support_probs"}
    np.testing.assert_array_equal(
        idata.posterior["linear.weight"].values, nuts.chain_samples["linear.weight"].numpy()
    )
    assert idata.sample_stats["diverging"].shape == (2, 80)
    assert idata.sample_stats["diverging"].dtype == bool


def test_mcmc_summary_has_r_hat(nuts):
    table = summary(nuts, ["linear.weight", "linear.support_probs"], round_to="none")
    assert isinstance(table, pd.DataFrame)
    assert {"mean", "sd", "ess_bulk", "r_hat"} <= set(table.columns)
    assert list(table.index[:2]) == ["linear.weight[0]", "linear.weight[1]"]
    assert len(table) == 2 * N
    assert table["r_hat"].iloc[:N].notna().all()
    rtol = 1e-10 if nuts.mean.dtype == torch.float64 else 1e-5  # ArviZ averages in float64
    np.testing.assert_allclose(table["mean"].values[:N], nuts.mean.numpy(), rtol=rtol)


def test_summary_of_constant_draws_is_quiet(turbo):
    # supports that are certainly active are constant in the draws: NaN r-hat, no warning
    table = summary(turbo, ["linear.support"])
    assert len(table) == N
    assert table.loc["linear.support[3]", "mean"] == 1.0


def test_summary_takes_inference_data(turbo):
    idata = to_arviz(turbo, num_samples=100)
    table = summary(idata, ["linear.weight"], kind="stats")
    assert len(table) == N and "r_hat" not in table.columns


def test_arviz_from_pyro_takes_the_mcmc_object(nuts):
    idata = az.from_pyro(nuts.mcmc)
    assert idata.posterior["linear.weight"].shape == (2, 80, N)
    assert "log_likelihood" in idata.groups()


def test_to_arviz_refuses_other_objects():
    with pytest.raises(TypeError, match="to_arviz"):
        to_arviz(object())
