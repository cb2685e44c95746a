import pytest
import torch

from pyro_dturbo.inference.vbi import (
    RegressionModuleA,
    cavity_evidence,
    gaussian_posterior,
    matched_precision,
    site_from_marginal,
    update_precision,
)
from pyro_dturbo.models import MarkovChainSupport, SparsePrior
from tests.common import assert_close


def _dense_posterior(X, y, rho, beta):
    Sigma = torch.linalg.inv(beta * X.T @ X + torch.diag(rho))
    return Sigma @ (beta * X.T @ y), Sigma


@pytest.mark.parametrize("M, N", [(6, 10), (12, 5)], ids=["woodbury", "cholesky"])
def test_gaussian_posterior_matches_dense_inverse(M, N):
    X, y = torch.randn(M, N), torch.randn(M)
    rho = torch.rand(N) * 10 + 0.1
    beta = 3.0
    post = gaussian_posterior(X, y, rho, beta)
    mu, Sigma = _dense_posterior(X, y, rho, beta)
    assert_close(post.mean, mu, atol=1e-9)
    assert_close(post.variance, Sigma.diagonal(), atol=1e-9)
    resid = y - X @ mu
    assert_close(post.residual_sq, resid @ resid + torch.trace(X @ Sigma @ X.T), atol=1e-9)
    # the site: remove w_n's prior from its marginal
    h, r = site_from_marginal(mu, Sigma.diagonal(), rho)
    assert_close(post.site_precision, h, rtol=1e-7, atol=1e-9)
    assert_close(post.site_mean, r, rtol=1e-7, atol=1e-9)


def test_site_is_the_leave_one_prior_out_posterior():
    X, y = torch.randn(7, 9), torch.randn(7)
    rho = torch.rand(9) + 0.5
    post = gaussian_posterior(X, y, rho, 2.0)
    n = 4
    rho_flat = rho.clone()
    rho_flat[n] = 1e-12  # no prior on w_n: its marginal is the data's site
    mu, Sigma = _dense_posterior(X, y, rho_flat, 2.0)
    assert_close(post.site_mean[n], mu[n], rtol=1e-6)
    assert_close(post.site_precision[n], 1 / Sigma[n, n], rtol=1e-6)


def test_cavity_evidence_is_a_log_likelihood_ratio():
    r, h = torch.tensor([0.0, 0.5, 3.0]), torch.tensor([10.0, 100.0, 1.0])
    v1, v0 = 1.0, 1e-4
    normal = torch.distributions.Normal
    expected = normal(0, (v1 + 1 / h).sqrt()).log_prob(r) - normal(0, (v0 + 1 / h).sqrt()).log_prob(
        r
    )
    assert_close(cavity_evidence(r, h, v1, v0), expected, atol=1e-12)


def test_precision_update_closed_form():
    prior = SparsePrior(MarkovChainSupport(0.1, 0.2), active=(2.0, 3.0), inactive=(50.0, 0.01))
    q, ew2 = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.4, 0.2, 1.0])
    shape, rate = update_precision(q, ew2, prior)
    assert_close(shape, torch.tensor([2.5, 50.5, 26.5]))
    assert_close(rate, torch.tensor([3.2, 0.11, 1.505 + 0.5]))
    shape_d, rate_d = update_precision(q, ew2, prior, demo_constants=True)
    assert_close(shape_d, shape + 0.5)
    assert_close(rate_d, rate + 0.5 * ew2)


def test_module_a_message_is_extrinsic():
    """L_n must not depend on pi: only the other weights' beliefs may enter it."""
    X, y = torch.randn(20, 30), torch.randn(20)
    prior = SparsePrior(MarkovChainSupport(0.1, 0.2), inactive=(100.0, 1e-4))
    module = RegressionModuleA(X, y, prior, noise_precision=50.0)
    params = module.init_params({"linear": torch.full((30,), 0.3)})
    logits = torch.randn(30)
    _, ev1, _ = module.update(params, {"linear": logits})
    changed = logits.clone()
    changed[7] += 5.0
    params2, ev2, _ = module.update(params, {"linear": changed})
    assert_close(ev1["linear"], ev2["linear"], atol=1e-12)
    # ...while q(s_7) and q(rho_7) do follow pi
    params1, _, _ = module.update(params, {"linear": logits})
    assert float(params2["support_probs"][7]) > float(params1["support_probs"][7])
    # and changing w_7's own prior precision leaves L_7 unchanged too
    params_rho = dict(params)
    params_rho["precision_rate"] = params["precision_rate"].clone()
    params_rho["precision_rate"][7] *= 1e-3
    _, ev3, _ = module.update(params_rho, {"linear": logits})
    assert_close(ev3["linear"][7], ev1["linear"][7], rtol=1e-8)


@pytest.mark.parametrize("weight_prior", ["matched", "mean_field"])
def test_own_support_belief_does_not_enter_own_evidence(weight_prior):
    X, y = torch.randn(20, 30), torch.randn(20)
    prior = SparsePrior(MarkovChainSupport(0.1, 0.2), inactive=(100.0, 1e-4))
    module = RegressionModuleA(X, y, prior, noise_precision=50.0, weight_prior=weight_prior)
    params = module.init_params({"linear": torch.full((30,), 0.3)})
    logits = {"linear": torch.randn(30)}
    params, _, _ = module.update(params, logits)
    _, ev1, _ = module.update(params, logits)
    moved = dict(params)
    moved["support_probs"] = params["support_probs"].clone()
    moved["support_probs"][7] = 1 - moved["support_probs"][7]
    moved["precision_rate"] = params["precision_rate"].clone()
    moved["precision_rate"][7] *= 50.0
    _, ev2, _ = module.update(moved, logits)
    assert_close(ev2["linear"][7], ev1["linear"][7], rtol=1e-8)
    assert not torch.allclose(ev2["linear"], ev1["linear"])  # the others do see w_7's prior


def test_matched_precision_reproduces_spike_and_slab_mean():
    q, h, r = torch.tensor([0.0, 0.3, 0.8, 1.0]), torch.tensor([50.0, 5.0, 200.0, 1.0]), 0.7
    v1, v0 = 1.0, 1e-4
    tau = matched_precision(q, h, v1, v0)
    slab = h * r / (h + 1 / v1)
    spike = h * r / (h + 1 / v0)
    assert_close(h * r / (h + tau), q * slab + (1 - q) * spike, rtol=1e-9)
    with pytest.raises(ValueError, match="weight_prior"):
        RegressionModuleA(torch.randn(3, 4), torch.randn(3), SparsePrior.chain(), weight_prior="x")
