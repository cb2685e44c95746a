"""Result objects print a one-line summary, not their tensors and histories."""

import torch

from pyro_dturbo.inference import fit_network, fit_sparse_regression, run_mcmc, run_svi
from pyro_dturbo.models import SparsePrior, to_sparse_bayes
from pyro_dturbo.models.zoo import MLP
from tests.inference.test_baselines import chain_prior, clustered_problem


def _one_line(text: str, limit: int = 200) -> None:
    assert "\n" not in text and len(text) <= limit, text
    assert "tensor(" not in text


def test_regression_result_repr_is_a_summary():
    X, y, *_ = clustered_problem(N=40, M=30)
    result = fit_sparse_regression(X, y, chain_prior(), max_iters=20)
    text = repr(result)
    _one_line(text)
    active = int((result.support_probs > 0.5).sum())
    assert text.startswith("SparseRegressionResult(") and f"active={active}/40" in text
    assert f"iterations={result.state.iteration}" in text and "noise_precision=" in text


def test_network_result_repr_is_a_summary():
    torch.manual_seed(0)
    net = to_sparse_bayes(MLP(8, (6,), num_classes=3))
    x, y = torch.randn(40, 8), torch.randint(3, (40,))
    prior = SparsePrior.chain(p01=0.05, p10=0.2)
    result = fit_network(net, x, y, prior, epochs=2, batch_size=20)
    text = repr(result)
    _one_line(text)
    assert text.startswith("NetworkResult(iterations=")
    assert f"/{8 * 6 + 6 * 3})" in text or f"/{8 * 6 + 6 * 3}," in text
    assert "accuracy=" in text and "density=" in text


def test_svi_and_mcmc_result_reprs_are_summaries():
    X, y, *_ = clustered_problem(N=6, M=10)
    svi = run_svi(X, y, chain_prior(), num_steps=20, num_samples=10)
    mcmc = run_mcmc(X, y, chain_prior(), num_samples=5, warmup_steps=5, max_tree_depth=4)
    for result, name, draws in ((svi, "SVIResult", 10), (mcmc, "MCMCResult", 5)):
        text = repr(result)
        _one_line(text)
        assert text.startswith(f"{name}(draws={draws}, active=") and "/6," in text
