import itertools

import pytest
import torch

from pyro_dturbo.ops.chain import (
    chain_log_init,
    chain_log_prob,
    chain_log_transition,
    chain_marginals,
    forward_backward,
    sample_chain,
)


def all_configurations(length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=length)))


def brute_force_log_odds(unary, log_init, log_trans):
    """Posterior log-odds by enumerating all 2^L chains; unary (B, L), params (B, 2[, 2])."""
    configs = all_configurations(unary.shape[-1])  # (C, L)
    log_joint = chain_log_prob(configs, log_init[:, None], log_trans[:, None])  # (B, C)
    log_joint = log_joint + (configs * unary[:, None]).sum(-1)
    weights = torch.softmax(log_joint, dim=-1)
    probs = (weights[..., None] * configs).sum(-2)
    return torch.logit(probs)


def random_params(batch: int):
    p01 = 0.05 + 0.9 * torch.rand(batch)
    p10 = 0.05 + 0.9 * torch.rand(batch)
    return p01, p10


@pytest.mark.float64(reason="python floats give the default dtype, asserted as float64")
def test_log_init_and_transition_values():
    p01, p10 = torch.tensor([0.01, 0.3]), torch.tensor([0.1, 0.6])
    init = chain_log_init(p01, p10).exp()
    lam = p01 / (p01 + p10)
    torch.testing.assert_close(init, torch.stack([1 - lam, lam], -1))
    trans = chain_log_transition(p01, p10).exp()
    assert trans.shape == (2, 2, 2)
    torch.testing.assert_close(trans.sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(trans[1], torch.tensor([[0.7, 0.3], [0.6, 0.4]]))
    # the initial law is stationary: init @ T == init
    torch.testing.assert_close((init[:, None, :] @ trans).squeeze(-2), init)
    # python floats are accepted and give the default dtype
    assert chain_log_init(0.2, 0.3).dtype == torch.float64
    assert chain_log_transition(0.2, torch.tensor(0.3, dtype=torch.float32)).dtype == torch.float32


@pytest.mark.parametrize("length", [1, 2, 5, 8])
def test_chain_log_prob_normalised_and_matches_enumeration(length):
    p01, p10 = random_params(3)
    log_init, log_trans = chain_log_init(p01, p10), chain_log_transition(p01, p10)
    configs = all_configurations(length)
    log_p = chain_log_prob(configs, log_init[:, None], log_trans[:, None])  # (3, C)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(3))
    # explicit product for one configuration per chain
    for b in range(3):
        s = configs[-2].long()
        expected = log_init[b, s[0]] + sum(log_trans[b, s[t - 1], s[t]] for t in range(1, length))
        torch.testing.assert_close(log_p[b, -2], torch.as_tensor(expected))
    # bool values give the same answer
    torch.testing.assert_close(
        chain_log_prob(configs.bool(), log_init[:, None], log_trans[:, None]), log_p
    )


@pytest.mark.float64(reason="equal to brute force to 1e-10")
@pytest.mark.parametrize("length", [1, 2, 5, 8])
def test_forward_backward_matches_brute_force(length):
    batch = 6
    p01, p10 = random_params(batch)
    log_init, log_trans = chain_log_init(p01, p10), chain_log_transition(p01, p10)
    unary = 3.0 * torch.randn(batch, length)
    actual = forward_backward(unary, log_init, log_trans)
    expected = brute_force_log_odds(unary, log_init, log_trans)
    assert actual.shape == (batch, length)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.float64(reason="equal to brute force to 1e-10")
def test_forward_backward_non_stationary_init_and_broadcasting():
    # an arbitrary initial law, one set of parameters shared by a (2, 3) batch of chains
    log_init = torch.log_softmax(torch.randn(2), -1)
    log_trans = torch.log_softmax(torch.randn(2, 2), -1)
    unary = torch.randn(2, 3, 7)
    actual = forward_backward(unary, log_init, log_trans)
    flat = unary.reshape(6, 7)
    expected = brute_force_log_odds(flat, log_init.expand(6, 2), log_trans.expand(6, 2, 2))
    torch.testing.assert_close(actual, expected.reshape(2, 3, 7), atol=1e-10, rtol=1e-10)


def test_forward_backward_detects_a_wrong_prior():
    # guard against a test that cannot fail: a different transition gives different answers
    p01, p10 = random_params(2)
    unary = torch.randn(2, 6)
    good = forward_backward(unary, chain_log_init(p01, p10), chain_log_transition(p01, p10))
    bad = forward_backward(unary, chain_log_init(p01, p10), chain_log_transition(p10, p01))
    assert (good - bad).abs().max() > 1e-3


def test_chain_marginals_and_flat_prior():
    p01, p10 = 0.02, 0.2
    log_init, log_trans = chain_log_init(p01, p10), chain_log_transition(p01, p10)
    unary = 2.0 * torch.randn(4, 30)
    post = forward_backward(unary, log_init, log_trans)
    torch.testing.assert_close(chain_marginals(unary, p01, p10), post.sigmoid())
    # without evidence the extrinsic message is the stationary prior log-odds
    flat = forward_backward(torch.zeros(2, 50), log_init, log_trans)
    lam = p01 / (p01 + p10)
    torch.testing.assert_close(flat, torch.full((2, 50), lam).logit())


@pytest.mark.float64(reason="the default dtype is the float64 reference")
def test_float32_stable_long_chain_large_evidence():
    length = 5000
    unary = 50.0 * torch.randn(3, length).sign() * torch.rand(3, length)
    unary[0, 1000:1200] = 0.0  # a long stretch without evidence
    unary[1] = -50.0
    p01, p10 = 0.01, 0.1
    expected = chain_marginals(unary, p01, p10)
    actual = chain_marginals(unary.float(), p01, p10)
    assert actual.dtype == torch.float32
    assert torch.isfinite(actual).all()
    assert torch.isfinite(
        forward_backward(
            unary.float(),
            chain_log_init(torch.tensor(p01).float(), p10),
            chain_log_transition(torch.tensor(p01).float(), p10),
        )
    ).all()
    torch.testing.assert_close(actual.double(), expected, atol=1e-3, rtol=0)


def test_forward_backward_differentiable():
    p01 = torch.tensor(0.2, requires_grad=True)
    unary = torch.randn(2, 9, requires_grad=True)
    out = forward_backward(unary, chain_log_init(p01, 0.3), chain_log_transition(p01, 0.3))
    out.sum().backward()
    assert torch.isfinite(unary.grad).all() and torch.isfinite(p01.grad)


@pytest.mark.float64(reason="asserts draws in the float64 default dtype")
@pytest.mark.parametrize("p01,p10", [(0.1, 0.3), (0.02, 0.2)])
def test_sample_chain_statistics(p01, p10):
    chains, length = 200, 2000
    generator = torch.Generator().manual_seed(1)
    s = sample_chain(p01, p10, (chains, length), generator=generator)
    assert s.shape == (chains, length) and s.dtype == torch.float64
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    lam = p01 / (p01 + p10)

    # first position is a stationary draw (independent across chains)
    first = s[:, 0].mean()
    assert abs(first - lam) < 4 * (lam * (1 - lam) / chains) ** 0.5 + 0.01

    # overall frequency: correlated samples; the variance of the mean of a stationary two-state
    # chain inflates by (1 + r) / (1 - r), r = 1 - p01 - p10 its autocorrelation
    r = 1 - p01 - p10
    se = (lam * (1 - lam) * (1 + r) / (1 - r) / s.numel()) ** 0.5
    assert abs(s.mean() - lam) < 4 * se

    prev, cur = s[:, :-1], s[:, 1:]
    n0 = (prev == 0).sum()
    n1 = (prev == 1).sum()
    est01 = ((prev == 0) & (cur == 1)).sum() / n0
    est10 = ((prev == 1) & (cur == 0)).sum() / n1
    assert abs(est01 - p01) < 4 * (p01 * (1 - p01) / n0) ** 0.5
    assert abs(est10 - p10) < 4 * (p10 * (1 - p10) / n1) ** 0.5

    # second-order check: transitions do not depend on the state two steps back
    mask = (s[:, :-2] == 1) & (s[:, 1:-1] == 0)
    est = (s[:, 2:][mask] == 1).double().mean()
    assert abs(est - p01) < 4 * (p01 * (1 - p01) / mask.sum()) ** 0.5


def test_sample_chain_per_chain_params_and_generator():
    p01 = torch.tensor([0.05, 0.5])
    p10 = torch.tensor([0.5, 0.05])
    s = sample_chain(p01, p10, (2, 20000), generator=torch.Generator().manual_seed(0))
    lam = p01 / (p01 + p10)
    assert abs(s[0].mean() - lam[0]) < 0.03 and abs(s[1].mean() - lam[1]) < 0.03
    a = sample_chain(0.1, 0.2, (3, 50), generator=torch.Generator().manual_seed(5))
    b = sample_chain(0.1, 0.2, (3, 50), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert sample_chain(torch.tensor(0.1, dtype=torch.float32), 0.2, (4, 1)).dtype == torch.float32


def test_sample_chain_exact_law_on_short_chains():
    # the empirical law of (s_0, s_1, s_2) matches chain_log_prob on every configuration
    p01, p10 = 0.3, 0.6
    n = 100000
    s = sample_chain(p01, p10, (n, 3), generator=torch.Generator().manual_seed(1))
    codes = (s * torch.tensor([4.0, 2.0, 1.0])).sum(-1).long()
    counts = torch.bincount(codes, minlength=8).double()
    configs = all_configurations(3)
    probs = chain_log_prob(configs, chain_log_init(p01, p10), chain_log_transition(p01, p10)).exp()
    # Pearson's chi-square with 7 degrees of freedom; 24.32 is its 0.999 quantile
    chi2 = ((counts - n * probs) ** 2 / (n * probs)).sum()
    assert chi2 < 24.32


# forward_backward picks its scan by size: doubling (Hillis-Steele) for small problems, the
# work-efficient odd-even recursion (finished by doubling) for large ones. Force each in turn.
SCAN_PATHS = {"doubling": 10**12, "odd_even": 0}


@pytest.fixture(params=sorted(SCAN_PATHS))
def scan_path(request, monkeypatch):
    import pyro_dturbo.ops.chain as chain_module

    monkeypatch.setattr(chain_module, "_DOUBLING_MAX_POSITIONS", SCAN_PATHS[request.param])
    return request.param


@pytest.mark.float64(reason="equal to brute force to 1e-10")
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 8])
def test_both_scan_paths_match_brute_force(scan_path, length, requires_grad):
    batch = 5
    p01, p10 = random_params(batch)  # one chain law per row
    log_init, log_trans = chain_log_init(p01, p10), chain_log_transition(p01, p10)
    unary = (3.0 * torch.randn(batch, length)).requires_grad_(requires_grad)
    actual = forward_backward(unary, log_init, log_trans)
    expected = brute_force_log_odds(unary.detach(), log_init, log_trans)
    torch.testing.assert_close(actual.detach(), expected, atol=1e-10, rtol=1e-10)


def _both_paths(monkeypatch, *args):
    import pyro_dturbo.ops.chain as chain_module

    out = {}
    for name, limit in SCAN_PATHS.items():
        monkeypatch.setattr(chain_module, "_DOUBLING_MAX_POSITIONS", limit)
        out[name] = forward_backward(*args)
    return out["doubling"], out["odd_even"]


@pytest.mark.float64(reason="paths agree to 1e-10; float64 reference for float32")
@pytest.mark.parametrize("length", [2, 3, 31, 64, 777])
def test_scan_paths_agree_on_long_chains(monkeypatch, length):
    # batch (2, 3), per-chain transitions, shared initial law, both dtypes
    p01, p10 = random_params(6)
    log_trans = chain_log_transition(p01, p10).reshape(2, 3, 2, 2)
    log_init = chain_log_init(0.2, 0.3)
    unary = 4.0 * torch.randn(2, 3, length)
    doubling, odd_even = _both_paths(monkeypatch, unary, log_init, log_trans)
    assert doubling.shape == odd_even.shape == (2, 3, length)
    torch.testing.assert_close(doubling, odd_even, atol=1e-10, rtol=1e-10)
    doubling32, odd_even32 = _both_paths(
        monkeypatch, unary.float(), log_init.float(), log_trans.float()
    )
    torch.testing.assert_close(doubling32, odd_even32, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(odd_even32.double(), odd_even, atol=1e-4, rtol=1e-5)


@pytest.mark.float64(reason="values and gradients agree to 1e-10")
def test_scan_paths_agree_on_gradients(monkeypatch):
    import pyro_dturbo.ops.chain as chain_module

    unary = torch.randn(3, 40)
    grads, values = [], []
    for limit in SCAN_PATHS.values():
        monkeypatch.setattr(chain_module, "_DOUBLING_MAX_POSITIONS", limit)
        p01 = torch.tensor(0.1, requires_grad=True)
        u = unary.clone().requires_grad_()
        out = forward_backward(u, chain_log_init(p01, 0.3), chain_log_transition(p01, 0.3))
        grads.append(torch.autograd.grad(out.pow(2).sum(), (u, p01)))
        with torch.no_grad():  # the in-place fast path gives the same values
            plain = forward_backward(u, chain_log_init(p01, 0.3), chain_log_transition(p01, 0.3))
        torch.testing.assert_close(plain, out.detach(), atol=1e-12, rtol=1e-12)
        values.append(plain)
    torch.testing.assert_close(values[0], values[1], atol=1e-10, rtol=1e-10)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("p01,p10", [(1e-6, 1e-6), (0.01, 0.1), (0.999, 0.2), (1e-6, 1 - 1e-6)])
def test_float32_extreme_evidence_and_rare_transitions(scan_path, p01, p10):
    # |L| up to 1e4 (far beyond exp's float32 range) next to weak evidence and silent stretches
    length = 3000
    unary = torch.randn(4, length) * torch.tensor([1.0, 10.0, 200.0, 1e4])[:, None]
    unary[:, 1000:1500] = 0.0
    unary[2, ::7] = -unary[2, ::7].abs()
    log_init = chain_log_init(torch.tensor(p01, dtype=torch.float32), p10)
    log_trans = chain_log_transition(torch.tensor(p01, dtype=torch.float32), p10)
    actual = forward_backward(unary.float(), log_init, log_trans)
    # the float64 reference sees the same (float32-rounded) chain law
    expected = forward_backward(unary, log_init.double(), log_trans.double())
    assert actual.dtype == torch.float32 and torch.isfinite(actual).all()
    torch.testing.assert_close(actual.double().sigmoid(), expected.sigmoid(), atol=1e-5, rtol=0)
    moderate = expected.abs() < 30
    torch.testing.assert_close(actual.double()[moderate], expected[moderate], atol=1e-3, rtol=1e-4)
