import itertools

import networkx as nx
import pytest
import torch

from pyro_dturbo.inference import ModuleB, RegressionModuleA, TurboVBI
from pyro_dturbo.models import (
    GraphMRFSupport,
    GridMRFSupport,
    IndependentSupport,
    MarkovChainSupport,
    SparsePrior,
)
from pyro_dturbo.ops import PROB_EPS, BernoulliMessage
from tests.common import assert_close


def _supports():
    return {
        "a": MarkovChainSupport(0.05, 0.2).with_shape((3, 7)),
        "b": MarkovChainSupport(0.05, 0.2, along="cols").with_shape((4, 5)),
        "c": GridMRFSupport(0.1, 0.3, bp_iters=40, bp_tol=0.0).with_shape((3, 4)),
        "d": GraphMRFSupport(nx.path_graph(6), coupling=1.0, bias=-1.0, bp_iters=40, bp_tol=0.0),
        "e": IndependentSupport(0.2).with_shape((5,)),
    }


def _evidence(supports, scale=3.0):
    return {k: BernoulliMessage(scale * torch.randn(s.event_shape)) for k, s in supports.items()}


def _brute_force_extrinsic(support, evidence):
    """Posterior log-odds by enumerating every support, minus the evidence."""
    shape = support.event_shape
    n = evidence.numel()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n))).reshape(-1, *shape)
    log_joint = support.log_prob(states) + (states * evidence).reshape(len(states), -1).sum(-1)
    weights = torch.softmax(log_joint, 0)
    p1 = (weights[:, None] * states.reshape(len(states), -1)).sum(0).reshape(shape)
    return torch.logit(p1) - evidence


@pytest.mark.float64(reason="exact to 1e-8 against enumeration")
def test_module_b_is_exact_on_chains_and_trees():
    supports = {
        "chain": MarkovChainSupport(0.1, 0.3).with_shape((2, 5)),
        "tree": GraphMRFSupport(
            nx.balanced_tree(2, 2), coupling=0.8, bias=-0.5, bp_iters=60, bp_tol=0.0
        ),
    }
    evidence = _evidence(supports, 2.0)
    out = ModuleB(supports, eps=1e-12)(evidence)
    for name, support in supports.items():
        expected = _brute_force_extrinsic(support, evidence[name].logits)
        assert_close(out.messages[name].logits, expected, atol=1e-8)


def test_module_b_equals_each_support_alone_then_clip_and_damp():
    supports = _supports()
    evidence = _evidence(supports, 20.0)  # large enough that clipping acts
    previous = _evidence(supports, 1.0)
    damping = 0.3
    out = ModuleB(supports, damping=damping)(evidence, previous)
    bound = float(torch.logit(torch.tensor(1 - PROB_EPS, dtype=torch.float64)))
    delta = 0.0
    for name, support in supports.items():
        alone = support.extrinsic(evidence[name].logits).clamp(-bound, bound)
        expected = (1 - damping) * alone + damping * previous[name].logits
        assert_close(out.messages[name].logits, expected, atol=1e-10)
        delta = max(delta, float((expected.sigmoid() - previous[name].probs).abs().max()))
    assert out.delta_pi == pytest.approx(delta, abs=1e-12)
    assert out.time >= 0.0


def test_initial_messages_are_the_prior_marginals():
    supports = {"a": MarkovChainSupport(0.02, 0.2).with_shape((2, 6))}
    initial = ModuleB(supports).initial()
    stationary = 0.02 / 0.22
    assert_close(initial["a"].probs, torch.full((2, 6), stationary), atol=1e-10)


def test_module_b_checks_its_inputs():
    supports = _supports()
    module_b = ModuleB(supports)
    evidence = _evidence(supports)
    with pytest.raises(ValueError, match="evidence for layers"):
        module_b({k: v for k, v in evidence.items() if k != "a"})
    bad = dict(evidence, a=BernoulliMessage(torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="does not match"):
        module_b(bad)
    with pytest.raises(ValueError, match="damping"):
        ModuleB(supports, damping=1.0)
    with pytest.raises(ValueError, match="shape-bound"):
        ModuleB({"x": MarkovChainSupport(0.1, 0.2)})


def test_turbo_vbi_runs_the_same_module_b():
    X, y = torch.randn(20, 12), torch.randn(20)
    prior = SparsePrior.chain(0.1, 0.2)
    turbo = TurboVBI(RegressionModuleA(X, y, prior), prior, damping=0.25, tol=1e-12)
    assert isinstance(turbo.module_b, ModuleB) and turbo.damping == 0.25
    state = turbo.init_state(like=X)
    new = turbo.step(state)
    # the loop's pi is exactly Module B's output on the evidence it was sent
    expected = turbo.module_b(new.evidence, state.prior).messages
    assert_close(new.prior_logits, {k: m.logits for k, m in expected.items()}, atol=0, rtol=0)
    assert new.history[-1]["delta_pi"] == turbo.module_b(new.evidence, state.prior).delta_pi
    # the step returned a new state and left the old one as it was
    assert state.iteration == 0 and state.history == ()
