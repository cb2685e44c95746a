import itertools

import pyro.distributions as dist
import pytest
import torch

from pyro_dturbo.models import (
    GridMRFSupport,
    IndependentSupport,
    MarginalPrecision,
    MarkovChainSupport,
    SparsePrior,
)
from tests.common import assert_close

# Round trips of declarations (by behaviour) and bad declarations: tests/models/test_declarations.py


def test_swap_structure_in_one_line():
    prior = SparsePrior.chain(0.01, 0.1)
    swapped = prior.replace(support=IndependentSupport(0.1))
    assert isinstance(swapped.support, IndependentSupport)
    assert swapped.active == prior.active and swapped.inactive == prior.inactive


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"support": {"type": "chain", "p01": 1.2, "p10": 0.1}}, "p01"),
        ({"support": {"type": "chain", "p01": 0.1, "p10": 0.0}}, "p10"),
        ({"support": {"type": "independent", "p": -0.1}}, "p"),
        ({"support": {"type": "grid", "p01": 0.1, "p10": float("nan")}}, "p10"),
        ({"support": {"type": "chain", "p01": 0.1, "p10": 0.1}, "active": [0, 1]}, "active"),
        ({"support": {"type": "chain", "p01": 0.1, "p10": 0.1}, "inactive": [1, -2]}, "inactive"),
        ({"support": {"type": "chain", "p01": 0.1, "p10": 0.1}, "inactive": [1, 10]}, "inactive"),
        ({"support": {"type": "bogus"}}, "support.type"),
        ({"support": {"type": "chain", "p01": 0.1, "p10": 0.1}, "colour": 1}, "colour"),
        ({"support": {"type": "chain", "p01": 0.1, "p10": 0.1, "along": "diag"}}, "along"),
        ({"support": {"type": "chain", "p01": 0.1, "p10": 0.1}, "active": 1.0}, "active"),
        ({"support": {"type": "graph", "p01": 0.1, "p10": 0.1}}, "p01"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(spec, field):
    with pytest.raises(ValueError, match=field):
        SparsePrior.from_dict(spec)


def test_layer_priors_and_unknown_layer_names():
    special = SparsePrior(IndependentSupport(0.3))
    prior = SparsePrior(MarkovChainSupport(0.1, 0.2), layer_priors={"fc2": special})
    assert prior.for_layer("fc2") is special
    assert prior.for_layer("fc1") is prior
    prior.check_layer_names(["fc1", "fc2"])
    with pytest.raises(ValueError, match="fc2"):
        prior.check_layer_names(["fc1", "fc3"])
    again = SparsePrior.from_dict(prior.to_dict())
    assert isinstance(again.for_layer("fc2").support, IndependentSupport)


def _brute_force_marginal(support, active, inactive, rho):
    """log sum_s p(s) prod_n Gamma(rho_n | s_n) by enumeration."""
    n = rho.numel()
    terms = []
    for bits in itertools.product([0.0, 1.0], repeat=n):
        s = torch.tensor(bits).reshape(rho.shape)
        conc = torch.where(s > 0, active[0], inactive[0])
        rate = torch.where(s > 0, active[1], inactive[1])
        terms.append(support.log_prob(s) + dist.Gamma(conc, rate).log_prob(rho).sum())
    return torch.logsumexp(torch.stack(terms), 0)


@pytest.mark.parametrize(
    "support",
    [
        MarkovChainSupport(0.2, 0.4).with_shape((7,)),
        MarkovChainSupport(0.3, 0.1, along="cols").with_shape((2, 3)),
        IndependentSupport(0.3).with_shape((6,)),
    ],
    ids=["chain", "chain-cols", "independent"],
)
def test_marginal_precision_matches_enumeration(support):
    active, inactive = (1.0, 1.0), (20.0, 0.1)
    rho = dist.Gamma(2.0, 0.05).sample(support.event_shape)
    marginal = MarginalPrecision(support, active, inactive)
    assert_close(
        marginal.log_prob(rho), _brute_force_marginal(support, active, inactive, rho), atol=1e-9
    )
    assert marginal.sample((3,)).shape == (3,) + tuple(support.event_shape)


def test_marginal_precision_refuses_mrf():
    with pytest.raises(ValueError, match="cannot be summed out"):
        MarginalPrecision(GridMRFSupport(0.1, 0.2).with_shape((3, 3)), (1, 1), (10, 0.01))
