import math

import pytest
import torch

from pyro_dturbo.ops.messages import PROB_EPS, BernoulliMessage, GaussianMessage, clip_logits
from tests.common import assert_close


def test_bernoulli_product_is_normalised_product_of_factors():
    a = BernoulliMessage.from_probs(torch.tensor([0.2, 0.7, 0.5]))
    b = BernoulliMessage.from_probs(torch.tensor([0.6, 0.1, 0.9]))
    pa, pb = a.probs, b.probs
    expected = pa * pb / (pa * pb + (1 - pa) * (1 - pb))
    assert_close((a * b).probs, expected, atol=1e-12)


def test_bernoulli_division_recovers_the_other_factor():
    prior = BernoulliMessage(torch.tensor([-2.0, 0.3, 4.0]))
    evidence = BernoulliMessage(torch.tensor([1.5, -0.7, 0.0]))
    assert_close(((prior * evidence) / prior).logits, evidence.logits, atol=1e-12)


def test_bernoulli_damping_and_clip():
    new, old = BernoulliMessage(torch.tensor([4.0])), BernoulliMessage(torch.tensor([0.0]))
    assert_close(new.damp(old, 0.25).logits, torch.tensor([3.0]))
    assert new.damp(old, 0.0) is new
    with pytest.raises(ValueError, match="damping"):
        new.damp(old, 1.0)
    clipped = BernoulliMessage(torch.tensor([-100.0, 100.0])).clip()
    assert_close(clipped.probs, torch.tensor([PROB_EPS, 1 - PROB_EPS]), atol=1e-12, rtol=1e-6)
    assert_close(clip_logits(torch.tensor([0.5])), torch.tensor([0.5]))


def test_gaussian_product_matches_closed_form():
    m1, v1 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    m2, v2 = torch.tensor([1.0, -3.0]), torch.tensor([0.5, 4.0])
    prod = GaussianMessage.from_moments(m1, v1) * GaussianMessage.from_moments(m2, v2)
    v = 1 / (1 / v1 + 1 / v2)
    assert_close(prod.variance, v, atol=1e-12)
    assert_close(prod.mean, v * (m1 / v1 + m2 / v2), atol=1e-12)


def test_gaussian_product_matches_numerical_density_product():
    a = GaussianMessage.from_moments(torch.tensor(0.3), torch.tensor(0.7))
    b = GaussianMessage.from_moments(torch.tensor(-1.2), torch.tensor(1.9))
    grid = torch.linspace(-12, 12, 200001)
    dens = torch.exp(-0.5 * (grid - 0.3) ** 2 / 0.7 - 0.5 * (grid + 1.2) ** 2 / 1.9)
    dens = dens / torch.trapezoid(dens, grid)
    mean = torch.trapezoid(grid * dens, grid)
    var = torch.trapezoid((grid - mean) ** 2 * dens, grid)
    prod = a * b
    assert_close(prod.mean, mean, atol=1e-6)
    assert_close(prod.variance, var, atol=1e-6)
    # log_normalizer is log of the integral of the unnormalised factor
    raw = torch.exp(-0.5 * prod.precision * grid**2 + prod.eta * grid)
    assert_close(prod.log_normalizer(), torch.log(torch.trapezoid(raw, grid)), atol=1e-6)


@pytest.mark.float64(reason="math.isclose to 1e-9 relative")
def test_gaussian_cavity_damping_floor_power():
    prior = GaussianMessage.from_moments(torch.zeros(3), torch.ones(3))
    site = GaussianMessage.from_moments(
        torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, 1.0, 2.0])
    )
    post = prior * site
    cavity = post / site
    assert_close(cavity.precision, prior.precision, atol=1e-12)
    assert_close(cavity.eta, prior.eta, atol=1e-12)
    assert_close((site**2).precision, 2 * site.precision)
    damped = post.damp(prior, 0.5)
    assert_close(damped.precision, 0.5 * (post.precision + prior.precision))
    improper = GaussianMessage(torch.tensor([-1.0, 4.0]), torch.tensor([1.0, 2.0]))
    assert improper.is_proper().tolist() == [False, True]
    floored = improper.with_precision_floor(1e-3)
    assert floored.is_proper().all()
    assert_close(floored.mean[1], torch.tensor(0.5))
    assert math.isclose(float(floored.precision[0]), 1e-3)
    assert_close(floored.eta, improper.eta)  # the floor changes the precision only
    with pytest.raises(ValueError, match="damping"):
        post.damp(prior, -0.1)
