import itertools

import networkx as nx
import pytest
import torch

from pyro_dturbo.models import (
    GraphMRFSupport,
    GridMRFSupport,
    IndependentSupport,
    MarkovChainSupport,
)
from tests.common import assert_close


def _configs(shape):
    n = int(torch.Size(shape).numel())
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n))).reshape((-1,) + tuple(shape))


def _brute_force_posterior_logits(support, evidence):
    configs = _configs(support.event_shape)
    flat = configs.reshape(configs.shape[0], -1)
    logw = support.log_prob(configs) + (flat * evidence.reshape(-1)).sum(-1)
    w = torch.softmax(logw, 0)
    p = (w.unsqueeze(-1) * flat).sum(0)
    return torch.logit(p).reshape(evidence.shape)


@pytest.mark.float64(reason="exact to 1e-8 against enumeration")
@pytest.mark.parametrize(
    "support",
    [
        MarkovChainSupport(0.2, 0.3).with_shape((8,)),
        MarkovChainSupport(0.1, 0.4, along="rows").with_shape((2, 4)),
        MarkovChainSupport(0.1, 0.4, along="cols").with_shape((3, 3)),
        IndependentSupport(0.3).with_shape((2, 3)),
    ],
    ids=["chain", "rows", "cols", "independent"],
)
def test_exact_structures_are_normalised_and_extrinsic_is_exact(support):
    total = torch.logsumexp(support.log_prob(_configs(support.event_shape)), 0)
    assert_close(total, torch.tensor(0.0), atol=1e-10)
    evidence = 2 * torch.randn(support.event_shape)
    extrinsic = support.extrinsic(evidence)
    assert_close(extrinsic + evidence, _brute_force_posterior_logits(support, evidence), atol=1e-8)


def test_chain_orientation_matters():
    rows = MarkovChainSupport(0.05, 0.1, along="rows").with_shape((3, 3))
    cols = MarkovChainSupport(0.05, 0.1, along="cols").with_shape((3, 3))
    s = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert rows.log_prob(s) > cols.log_prob(s)
    assert_close(rows.log_prob(s), cols.log_prob(s.T))


@pytest.mark.float64(reason="equal to 1e-10")
def test_grid_log_prob_is_product_of_row_and_column_chains_up_to_a_constant():
    grid = GridMRFSupport(0.2, 0.3).with_shape((3, 4))
    rows = MarkovChainSupport(0.2, 0.3, along="rows").with_shape((3, 4))
    cols = MarkovChainSupport(0.2, 0.3, along="cols").with_shape((3, 4))
    configs = _configs((3, 4))[::37]
    diff = grid.log_prob(configs) - rows.log_prob(configs) - cols.log_prob(configs)
    assert_close(diff - diff[0], torch.zeros_like(diff), atol=1e-10)


def test_grid_bp_close_to_enumeration_on_small_grid():
    grid = GridMRFSupport(0.3, 0.4, bp_iters=200, bp_tol=1e-10).with_shape((3, 3))
    evidence = torch.randn(3, 3)
    exact = torch.sigmoid(_brute_force_posterior_logits(grid, evidence))
    assert_close(grid.marginals(evidence), exact, atol=0.03)


def test_graph_mrf_exact_on_tree_and_log_prob_by_hand():
    tree = (
        nx.random_labeled_tree(7, seed=3)
        if hasattr(nx, "random_labeled_tree")
        else nx.random_tree(7, seed=3)
    )
    support = GraphMRFSupport(tree, coupling=1.2, bias=-0.5, bp_iters=100, bp_tol=1e-12)
    evidence = torch.randn(7)
    assert_close(
        support.extrinsic(evidence) + evidence,
        _brute_force_posterior_logits(support, evidence),
        atol=1e-7,
    )
    s = torch.tensor([1.0, 0, 0, 1, 1, 0, 1])
    agree = sum(1.0 for i, j in tree.edges if s[i] == s[j])
    assert_close(support.log_prob(s), torch.tensor(-0.5 * 4 + 1.2 * agree))


def test_gibbs_sampling_matches_enumerated_marginals():
    support = GraphMRFSupport(
        nx.cycle_graph(4), coupling=1.0, bias=[-1.0, 0.5, 0.0, -0.5], gibbs_sweeps=30
    )
    configs = _configs((4,))
    p = torch.softmax(support.log_prob(configs), 0)
    exact = (p.unsqueeze(-1) * configs).sum(0)
    samples = support.sample((4000,))
    assert samples.shape == (4000, 4)
    assert_close(samples.mean(0), exact, atol=0.04)


def test_chain_samples_have_stationary_density():
    support = MarkovChainSupport(0.05, 0.2).with_shape((50, 200))
    s = support.sample()
    assert s.shape == (50, 200)
    assert abs(float(s.mean()) - 0.2) < 0.03


def test_shapes_are_checked():
    unbound = MarkovChainSupport(0.1, 0.2)
    with pytest.raises(ValueError, match="with_shape"):
        unbound.sample()
    bound = unbound.with_shape((4,))
    with pytest.raises(ValueError, match="evidence of shape"):
        bound.extrinsic(torch.zeros(5))
    with pytest.raises(ValueError, match="event shape"):
        bound.log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        unbound.with_shape((0, 3))
    with pytest.raises(ValueError, match="grid"):
        GridMRFSupport(0.1, 0.2, grid=(3, 3)).with_shape((10,))
    with pytest.raises(ValueError, match="nodes"):
        GraphMRFSupport(nx.relabel_nodes(nx.path_graph(3), {0: "a", 1: "b", 2: "c"}))
    with pytest.raises(ValueError, match="graph has 3 nodes"):
        GraphMRFSupport(nx.path_graph(3)).with_shape((4,))


@pytest.mark.float64(reason="equal to 1e-10")
def test_batched_extrinsic_equals_layer_by_layer():
    """Chains of several layers (rows and columns, different lengths) in one padded scan."""
    from pyro_dturbo.inference.module_b import batched_extrinsic

    supports = [
        MarkovChainSupport(0.05, 0.2).with_shape((4, 7)),
        MarkovChainSupport(0.05, 0.2, along="cols").with_shape((3, 5)),
        MarkovChainSupport(0.05, 0.2).with_shape((2, 3, 2, 2)),
        MarkovChainSupport(0.1, 0.3).with_shape((6,)),
        IndependentSupport(0.2).with_shape((2, 2)),
        # loopy BP on the union of two grids and a tree (fixed iterations: no tolerance stop)
        GridMRFSupport(0.05, 0.2, bp_iters=30, bp_tol=0.0).with_shape((4, 5)),
        GridMRFSupport(0.05, 0.2, bp_iters=30, bp_tol=0.0).with_shape((3, 3)),
        GraphMRFSupport(nx.path_graph(6), coupling=1.0, bias=-1.0, bp_iters=30, bp_tol=0.0),
    ]
    evidence = [torch.randn(s.event_shape) * 3 for s in supports]
    batched = batched_extrinsic(supports, evidence)
    expected = [s.extrinsic(e) for s, e in zip(supports, evidence, strict=True)]
    assert_close(batched, expected, atol=1e-10)
    with pytest.raises(ValueError, match="evidence"):
        batched_extrinsic(supports, evidence[:-1])
