import math

import pyro
import pytest
import torch

from pyro_dturbo.data import clustered_sparse_regression
from pyro_dturbo.inference import TurboGuide, fit_sparse_regression
from tests.common import assert_close


@pytest.fixture
def fitted():
    p = clustered_sparse_regression(48, 64, seed=0)
    return fit_sparse_regression(p.X, p.y)


def test_guide_works_with_predictive_and_elbo(fitted):
    guide = fitted.guide()
    loss = pyro.infer.Trace_ELBO(num_particles=4).loss(fitted.model, guide)
    assert torch.isfinite(torch.tensor(loss))
    samples = pyro.infer.Predictive(fitted.model, guide=guide, num_samples=6)()
    assert samples["linear.weight"].shape == (6, 64)
    assert samples["obs"].shape == (6, 48)
    assert set(samples) >= {"linear.support", "linear.precision", "noise_precision"}


def test_guide_summaries_match_the_posterior(fitted):
    guide = fitted.guide()
    assert_close(guide.support_probs()["linear"], fitted.support_probs)
    med = guide.median()
    assert_close(med["linear.weight"], fitted.mean)
    assert_close(med["linear.support"], (fitted.support_probs > 0.5).double())
    q = guide.quantiles([0.05, 0.95])
    assert q["linear.weight"].shape == (2, 64)
    assert (q["linear.weight"][0] < fitted.mean).all() and (
        fitted.mean < q["linear.weight"][1]
    ).all()
    assert (q["linear.precision"][0] < q["linear.precision"][1]).all()
    draws = guide.sample_posterior(4000)
    assert_close(
        draws["linear.weight"].mean(0),
        fitted.mean,
        atol=4 * float(fitted.variance.sqrt().max()) / 60,
    )
    with pytest.raises(ValueError, match="quantiles"):
        guide.quantiles([1.5])


def test_guide_errors():
    def model():
        pyro.sample("other", pyro.distributions.Normal(0.0, 1.0))

    guide = TurboGuide(model)
    with pytest.raises(ValueError, match="set_posterior"):
        guide()
    one = torch.ones(2)
    guide.set_posterior(
        {
            "linear": dict(
                support_probs=one / 2,
                precision_shape=one,
                precision_rate=one,
                weight_loc=one,
                weight_scale=one,
            )
        }
    )
    with pytest.raises(ValueError, match="other"):
        guide()
    with pytest.raises(ValueError, match="lacks"):
        guide.set_posterior({"linear": {"support_probs": one}})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guide_of_a_fit_runs_in_the_data_dtype(dtype, torch_default_dtype):
    """No global default dtype is needed: Predictive and the ELBO run on float32 and float64."""
    p = clustered_sparse_regression(16, 12, seed=0)
    fitted = fit_sparse_regression(p.X.to(dtype), p.y.to(dtype))
    guide = fitted.guide()
    samples = pyro.infer.Predictive(fitted.model, guide=guide, num_samples=3)()
    assert samples["obs"].shape == (3, 16)
    for site in ("linear.support", "linear.precision", "linear.weight", "noise_precision", "obs"):
        assert samples[site].dtype == dtype, site
    loss = pyro.infer.Trace_ELBO(num_particles=2).loss(fitted.model, guide)
    assert math.isfinite(loss)
    q = guide.quantiles([0.1, 0.9])
    assert q["linear.precision"].dtype == q["linear.weight"].dtype == dtype
