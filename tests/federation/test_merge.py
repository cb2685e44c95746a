"""The server's merge rules (pure functions on Gaussian messages) and their exactness on a
model where the product of sites is the true posterior: Bayesian linear regression."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_dturbo.federation.codec import decode_message
from pyro_dturbo.federation.merge import (
    PROPER_FRACTION,
    cavity,
    flat_site,
    merge_sites,
    moment_average,
    product_of_sites,
    proper,
    site_from_reply,
    update_site,
)
from pyro_dturbo.ops.messages import GaussianMessage
from tests.common import assert_close
from tests.federation.common import assert_identical, full_round, make_federation, one_thread

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _random_sites(k: int, shape=(3, 4), seed: int = 0) -> list[GaussianMessage]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        # sites may have negative precisions (as in EP)
        precision = torch.rand(shape, generator=gen, dtype=F64) * 3.0 - 0.5
        eta = torch.randn(shape, generator=gen, dtype=F64)
        out.append(GaussianMessage(precision, eta))
    return out


def _prior(shape=(3, 4), seed: int = 1) -> GaussianMessage:
    gen = torch.Generator().manual_seed(seed)
    precision = torch.rand(shape, generator=gen, dtype=F64) + 0.5
    mean = torch.randn(shape, generator=gen, dtype=F64)
    return GaussianMessage.prior(precision, mean)


# -- closed forms ----------------------------------------------------------------------------
def test_merge_sites_adds_natural_parameters_prior_once():
    prior, sites = _prior(), _random_sites(4)
    merged = merge_sites(prior, sites)
    assert_close(merged.precision, prior.precision + sum(t.precision for t in sites), atol=1e-14)
    assert_close(merged.eta, prior.eta + sum(t.eta for t in sites), atol=1e-14)
    data = product_of_sites(sites)
    assert_close(data.precision, sum(t.precision for t in sites), atol=1e-14)
    assert_close(data.eta, sum(t.eta for t in sites), atol=1e-14)


def test_merge_sites_documented_example_and_edge_cases():
    prior = GaussianMessage.prior(torch.ones(3, dtype=F64))
    sites = [GaussianMessage(torch.full((3,), 2.0, dtype=F64), torch.ones(3, dtype=F64))] * 2
    assert_close(merge_sites(prior, sites).mean, torch.full((3,), 0.4, dtype=F64), atol=1e-15)
    # no sites: the prior itself; flat sites: nothing changes
    assert merge_sites(prior, []) is prior
    flat = [flat_site(prior.precision)] * 3
    assert_identical(merge_sites(prior, flat).precision, prior.precision)
    assert_identical(merge_sites(prior, flat).eta, prior.eta)
    with pytest.raises(ValueError, match="at least one"):
        product_of_sites([])


def test_flat_site_is_zero_like_its_argument():
    like = torch.randn(2, 5, dtype=F64)
    site = flat_site(like)
    assert site.precision.shape == site.eta.shape == like.shape
    assert site.precision.dtype == site.eta.dtype == F64
    assert not site.precision.any() and not site.eta.any()


@pytest.mark.parametrize("k", [0, 2, 4])
def test_cavity_of_merge_is_merge_of_the_others(k):
    prior, sites = _prior(), _random_sites(5)
    total = merge_sites(prior, sites)
    others = merge_sites(prior, sites[:k] + sites[k + 1 :])
    cav = cavity(total, sites[k])
    assert_close(cav.precision, others.precision, atol=1e-14, rtol=0)
    assert_close(cav.eta, others.eta, atol=1e-14, rtol=0)
    # a reply equal to the cavity times the old site gives the old site back
    reply = cav * sites[k]
    new = site_from_reply(reply, cav)
    assert_close(new.precision, sites[k].precision, atol=1e-14, rtol=0)
    assert_close(new.eta, sites[k].eta, atol=1e-14, rtol=0)


def test_update_site_steps():
    old, new = _random_sites(2, seed=5)
    assert update_site(old, new, 1.0) is new
    half = update_site(old, new, 0.5)
    assert_close(half.precision, 0.5 * (old.precision + new.precision), atol=1e-15)
    assert_close(half.eta, 0.5 * (old.eta + new.eta), atol=1e-15)
    # the direction: a small step stays near the old site
    quarter = update_site(old, new, 0.25)
    assert_close(quarter.precision, 0.75 * old.precision + 0.25 * new.precision, atol=1e-15)
    assert_close(quarter.eta, 0.75 * old.eta + 0.25 * new.eta, atol=1e-15)


@pytest.mark.parametrize("step", [0.0, -0.5, 1.0 + 1e-12, 2.0, math.nan])
def test_update_site_step_outside_unit_interval_raises(step):
    old, new = _random_sites(2)
    with pytest.raises(ValueError, match="step"):
        update_site(old, new, step)


def test_proper_leaves_proper_enough_messages_bit_identical():
    prior = _prior()
    message = GaussianMessage(prior.precision * PROPER_FRACTION * 1.5, torch.randn(3, 4, dtype=F64))
    out = proper(message, prior)
    assert_identical(out.precision, message.precision)
    assert_identical(out.eta, message.eta)
    # exactly at the floor is proper enough too
    at_floor = GaussianMessage(PROPER_FRACTION * prior.precision, message.eta)
    assert_identical(proper(at_floor, prior).precision, at_floor.precision)


def test_proper_floors_only_the_low_entries_and_keeps_eta():
    prior = _prior()
    precision = prior.precision.clone()
    low = torch.zeros(3, 4, dtype=torch.bool)
    low[0, 1] = low[2, 3] = low[1, 0] = True
    precision[0, 1], precision[2, 3], precision[1, 0] = -2.0, 0.0, 1e-9
    eta = torch.randn(3, 4, dtype=F64)
    out = proper(GaussianMessage(precision, eta), prior)
    assert_identical(out.eta, eta)
    assert_identical(out.precision[~low], precision[~low])
    assert_identical(out.precision[low], (PROPER_FRACTION * prior.precision)[low])
    # a custom fraction
    out = proper(GaussianMessage(precision, eta), prior, fraction=0.5)
    floor = 0.5 * prior.precision
    expected = torch.where(precision < floor, floor, precision)
    assert_identical(out.precision, expected)


def test_moment_average_by_hand():
    m1, m2 = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([3.0, 4.0], dtype=F64)
    v1, v2 = torch.tensor([0.5, 1.0], dtype=F64), torch.tensor([1.5, 3.0], dtype=F64)
    mean, variance = moment_average([m1, m2], [v1, v2], [1, 3])
    # weights 1/4 and 3/4
    assert_close(mean, torch.tensor([0.25 * 1 + 0.75 * 3, 0.25 * -2 + 0.75 * 4], dtype=F64))
    assert_close(variance, torch.tensor([0.25 * 0.5 + 0.75 * 1.5, 0.25 + 0.75 * 3], dtype=F64))
    # one weight zero: the other client alone; matrices keep their shape
    a, b = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
    mean, variance = moment_average([a, b], [a.abs(), b.abs()], [0.0, 7.0])
    assert mean.shape == (2, 3)
    assert_close(mean, b, atol=1e-15)
    assert_close(variance, b.abs(), atol=1e-15)


@pytest.mark.parametrize(
    ("means", "variances", "weights", "match"),
    [
        ([], [], [], "as many"),
        ([torch.zeros(2)], [torch.ones(2), torch.ones(2)], [1.0], "as many"),
        ([torch.zeros(2)], [torch.ones(2)], [1.0, 2.0], "as many"),
        ([torch.zeros(2), torch.ones(2)], [torch.ones(2)] * 2, [1.0, -1.0], "weights"),
        ([torch.zeros(2), torch.ones(2)], [torch.ones(2)] * 2, [0.0, 0.0], "weights"),
    ],
)
def test_moment_average_errors(means, variances, weights, match):
    with pytest.raises(ValueError, match=match):
        moment_average(means, variances, weights)


# -- K clients of one Bayesian linear regression ---------------------------------------------
ALPHA, BETA, D, K = 2.0, 25.0, 6, 4


def _regression(seed: int = 0):
    """Clients whose designs have orthogonal columns (``X_k^T X_k`` diagonal, so the
    centralised posterior precision is diagonal and a diagonal site is exact)."""
    gen = torch.Generator().manual_seed(seed)
    w_true = torch.randn(D, generator=gen, dtype=F64)
    blocks = []
    for k in range(K):
        n = 10 + 3 * k
        q, _ = torch.linalg.qr(torch.randn(n, D, generator=gen, dtype=F64))
        scales = torch.rand(D, generator=gen, dtype=F64) * 3.0 + 0.5
        x = q * scales
        y = x @ w_true + torch.randn(n, generator=gen, dtype=F64) / math.sqrt(BETA)
        blocks.append((x, y))
    return blocks


def _centralised(blocks):
    """The exact posterior from all rows at once (a full-matrix solve)."""
    x = torch.cat([b[0] for b in blocks])
    y = torch.cat([b[1] for b in blocks])
    precision = ALPHA * torch.eye(D, dtype=F64) + BETA * x.T @ x
    covariance = torch.linalg.inv(precision)
    mean = torch.linalg.solve(precision, BETA * x.T @ y)
    return mean, covariance.diagonal(), covariance


def _likelihood_site(x, y) -> GaussianMessage:
    gram = x.T @ x
    off = gram - torch.diag(gram.diagonal())
    assert float(off.abs().max()) < 1e-12  # the design: orthogonal columns per client
    return GaussianMessage(BETA * gram.diagonal(), BETA * x.T @ y)


def _prior_w() -> GaussianMessage:
    return GaussianMessage.prior(torch.full((D,), ALPHA, dtype=F64))


def _client_reply(cav: GaussianMessage, x, y) -> GaussianMessage:
    """The client's exact local posterior against its cavity, sent as moments."""
    q = cav * _likelihood_site(x, y)
    return GaussianMessage.from_moments(q.mean, q.variance)


def test_regression_design_is_not_trivial():
    blocks = _regression()
    mean, variance, covariance = _centralised(blocks)
    # the posterior is diagonal: a diagonal Gaussian is exact
    off = covariance - torch.diag(covariance.diagonal())
    assert float(off.abs().max()) < 1e-14
    # and every client's data move it: no client's posterior alone equals the merged one
    for x, y in blocks:
        alone = _prior_w() * _likelihood_site(x, y)
        assert float((alone.mean - mean).abs().max()) > 1e-3
        assert float((alone.variance - variance).abs().max()) > 1e-4


def test_merge_of_likelihood_sites_is_the_centralised_posterior():
    blocks = _regression()
    mean, variance, _ = _centralised(blocks)
    merged = merge_sites(_prior_w(), [_likelihood_site(x, y) for x, y in blocks])
    assert_close(merged.mean, mean, atol=1e-10, rtol=0)
    assert_close(merged.variance, variance, atol=1e-10, rtol=0)


def _ep_rounds(blocks, step: float, rounds: int):
    prior = _prior_w()
    sites = [flat_site(prior.precision) for _ in blocks]
    errors = []
    mean, variance, _ = _centralised(blocks)
    for _ in range(rounds):
        total = merge_sites(prior, sites)
        new_sites = []
        for site, (x, y) in zip(sites, blocks, strict=True):
            cav = proper(cavity(total, site), prior)
            reply = _client_reply(cav, x, y)
            new_sites.append(update_site(site, site_from_reply(reply, cav), step))
        sites = new_sites  # parallel updates, all from the same global posterior
        q = merge_sites(prior, sites)
        errors.append(
            max(float((q.mean - mean).abs().max()), float((q.variance - variance).abs().max()))
        )
    return merge_sites(prior, sites), errors


def test_ep_rounds_step_one_are_exact_after_one_round():
    blocks = _regression()
    mean, variance, _ = _centralised(blocks)
    q, errors = _ep_rounds(blocks, 1.0, rounds=3)
    assert errors[0] < 1e-10
    assert max(errors) < 1e-10
    assert_close(q.mean, mean, atol=1e-10, rtol=0)
    assert_close(q.variance, variance, atol=1e-10, rtol=0)


def test_ep_rounds_damped_converge_geometrically():
    blocks = _regression()
    mean, variance, _ = _centralised(blocks)
    q, errors = _ep_rounds(blocks, 0.5, rounds=30)
    assert_close(q.mean, mean, atol=1e-8, rtol=0)
    assert_close(q.variance, variance, atol=1e-8, rtol=0)
    # not there after one round, and every round at least shrinks the error (by <= ~1/2 late)
    assert errors[0] > 1e-3
    assert all(b < a for a, b in zip(errors[:20], errors[1:21], strict=True))
    ratios = [b / a for a, b in zip(errors[5:20], errors[6:21], strict=True)]
    assert max(ratios) < 0.6


# -- a silent client on the real server ------------------------------------------------------
@pytest.mark.float64(reason="sites compared at 1e-10 after float64 payloads")
def test_server_client_without_reply_keeps_its_site_and_the_merge():
    server, clients = make_federation(warmup_rounds=1)
    full_round(server, clients)  # warm-up round: moment average, then the data-share split
    assert not server._moment_round()
    before = server.state_dict()["layers"]
    prior_before = {name: st["precision"].clone() for name, st in server.state.items()}
    payloads = server.broadcast([0, 1, 2])
    replies = {k: clients[k].train(payloads[k]) for k in (0, 1)}  # client 2 says nothing
    report = server.aggregate(replies)
    assert report.accepted == [0, 1] and not report.rejected
    for name, st in server.state.items():
        active = st["active"]
        old_p, old_e = before[name]["site_precision"], before[name]["site_eta"]
        # client 2: unchanged where the weight is still in the network, reset where pruned
        assert torch.equal(st["site_precision"][2][active], old_p[2][active])
        assert torch.equal(st["site_eta"][2][active], old_e[2][active])
        assert not st["site_precision"][2][~active].any()
        assert not st["site_eta"][2][~active].any()
        # the others moved
        for k in (0, 1):
            assert not torch.equal(st["site_precision"][k][active], old_p[k][active])
        # re-merging the stored sites under the round's prior gives the global posterior
        prior = GaussianMessage.prior(prior_before[name])
        sites = [GaussianMessage(st["site_precision"][k], st["site_eta"][k]) for k in range(3)]
        merged = proper(merge_sites(prior, sites), prior)
        assert_close(st["mean"][active], merged.mean[active], atol=1e-12, rtol=0)
        assert_close(st["variance"][active], merged.variance[active], atol=0, rtol=1e-12)


@pytest.mark.float64(reason="sites compared at 1e-10 after float64 payloads")
@pytest.mark.parametrize("site_step", [1.0, 0.5])
def test_server_sites_are_reply_over_cavity(site_step):
    """The stored sites after a product round are ``old^(1-a) (q_k / cavity_k)^a``
    (merge.py's rules)."""
    server, clients = make_federation(warmup_rounds=1, site_step=site_step)
    full_round(server, clients)
    before = server.state_dict()["layers"]
    prior_before = {name: st["precision"].clone() for name, st in server.state.items()}
    payloads = server.broadcast([0, 1, 2])
    replies = {k: clients[k].train(payloads[k]) for k in (0, 1, 2)}
    decoded = {k: decode_message(p) for k, p in replies.items()}
    server.aggregate(replies)
    for name, st in server.state.items():
        prior = GaussianMessage.prior(prior_before[name])
        old = [
            GaussianMessage(before[name]["site_precision"][k], before[name]["site_eta"][k])
            for k in range(3)
        ]
        total = merge_sites(prior, old)
        sent = before[name]["active"]
        still = st["active"] & sent
        for k in range(3):
            cav = proper(cavity(total, old[k]), prior)
            block = decoded[k].blocks[name]
            q = GaussianMessage.from_moments(block.values["mean"], block.values["variance"])
            cav_sent = GaussianMessage(cav.precision[sent], cav.eta[sent])
            old_sent = GaussianMessage(old[k].precision[sent], old[k].eta[sent])
            new = update_site(old_sent, site_from_reply(q, cav_sent), site_step)
            expected_p = torch.zeros_like(st["site_precision"][k])
            expected_e = torch.zeros_like(st["site_eta"][k])
            expected_p[sent], expected_e[sent] = new.precision, new.eta
            assert_close(st["site_precision"][k][still], expected_p[still], atol=1e-10, rtol=1e-10)
            assert_close(st["site_eta"][k][still], expected_e[still], atol=1e-10, rtol=1e-10)
