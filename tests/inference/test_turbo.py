import pytest
import torch

from pyro_dturbo.data import clustered_sparse_regression, nmse_db, support_f1
from pyro_dturbo.inference import RegressionModuleA, TurboVBI, fit_sparse_regression
from pyro_dturbo.models import IndependentSupport, SparsePrior, default_regression_prior
from tests.common import assert_close


def test_recovers_clustered_support():
    problem = clustered_sparse_regression(160, 256, seed=1)
    result = fit_sparse_regression(problem.X, problem.y)
    assert result.converged
    assert support_f1(result.support_probs > 0.5, problem.support) >= 0.95
    assert nmse_db(result.mean, problem.weight) < -25
    assert result.mean.shape == result.variance.shape == result.support_probs.shape == (256,)
    assert 0.3 < float(result.noise_precision) / problem.noise_precision < 3


def test_clusters_do_not_grow():
    """With B's output fed back into B, clusters grow a weight per iteration until all is active."""
    problem = clustered_sparse_regression(200, 256, seed=4)
    k = int(problem.support.sum())
    result = fit_sparse_regression(problem.X, problem.y, max_iters=150)
    sizes = [h["support_size"] for h in result.history]
    assert max(sizes[len(sizes) // 2 :]) <= k + 2
    assert int((result.support_probs > 0.5).sum()) <= k + 2
    assert support_f1(result.support_probs > 0.5, problem.support) >= 0.95


def test_chain_prior_beats_independent_prior_on_clustered_data():
    chain = default_regression_prior()
    independent = chain.replace(support=IndependentSupport(chain.support.stationary))
    wins = 0
    for seed in range(4):
        p = clustered_sparse_regression(96, 256, seed=seed)
        e_chain = nmse_db(fit_sparse_regression(p.X, p.y, chain).mean, p.weight)
        e_indep = nmse_db(fit_sparse_regression(p.X, p.y, independent).mean, p.weight)
        wins += e_chain < e_indep
    assert wins >= 3


def test_resume_equals_uninterrupted_run():
    p = clustered_sparse_regression(64, 128, seed=2)
    prior = default_regression_prior()
    turbo = TurboVBI(RegressionModuleA(p.X, p.y, prior), prior, tol=1e-12)
    straight = turbo.run(max_iters=12)
    first = turbo.run(max_iters=5)
    resumed = turbo.run(first.state, max_iters=7)
    assert resumed.state.iteration == straight.state.iteration == 12
    assert_close(resumed.params["mean"], straight.params["mean"], atol=1e-12)
    assert len(resumed.history) == 12


def test_history_and_hook():
    p = clustered_sparse_regression(64, 128, seed=3)
    seen = []
    result = fit_sparse_regression(
        p.X, p.y, max_iters=5, tol=1e-12, hook_fn=lambda s: seen.append(s.iteration)
    )
    assert seen == [1, 2, 3, 4, 5]
    assert not result.converged
    for key in ("delta_pi", "delta_q", "support_size", "time_a", "time_b", "expected_log_lik"):
        assert key in result.history[-1]


def test_bad_inputs():
    X, y = torch.randn(10, 20), torch.randn(10)
    with pytest.raises(ValueError, match="one entry per row"):
        fit_sparse_regression(X, torch.randn(9))
    y_nan = y.clone()
    y_nan[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_sparse_regression(X, y_nan)
    with pytest.raises(ValueError, match="SparsePrior"):
        fit_sparse_regression(X, y, prior={"support": "chain"})
    with pytest.raises(ValueError, match="noise_precision"):
        fit_sparse_regression(X, y, noise_precision=-1.0)
    prior = SparsePrior(
        IndependentSupport(0.1), layer_priors={"conv9": SparsePrior(IndependentSupport(0.2))}
    )
    with pytest.raises(ValueError, match="conv9"):
        fit_sparse_regression(X, y, prior)
    with pytest.raises(ValueError, match="damping"):
        fit_sparse_regression(X, y, damping=1.5)
