import itertools

import networkx as nx
import pytest
import torch

from pyro_dturbo.ops.chain import (
    chain_log_init,
    chain_log_transition,
    forward_backward,
)
from pyro_dturbo.ops.loopy import (
    grid_edges,
    ising_edge_log_potential,
    loopy_bp,
)


def brute_force_log_odds(unary, edge_index, edge_log_potential, node_bias=None):
    """Exact marginal log-odds of a pairwise binary MRF by enumerating all 2^N states."""
    n = unary.shape[0]
    configs = torch.tensor(list(itertools.product([0, 1], repeat=n)))  # (C, N)
    field = unary if node_bias is None else unary + node_bias
    log_joint = (configs * field).sum(-1)
    si, sj = configs[:, edge_index[0]], configs[:, edge_index[1]]  # (C, E)
    e = torch.arange(edge_index.shape[1])
    log_joint = log_joint + edge_log_potential[e, si, sj].sum(-1)
    weights = torch.softmax(log_joint, -1)
    return torch.logit((weights[:, None] * configs).sum(0))


def random_tree_problem(num_nodes: int, seed: int):
    tree = nx.random_labeled_tree(num_nodes, seed=seed)
    edge_index = torch.tensor(list(tree.edges())).T.reshape(2, -1)
    # random orientation, so both directions of the potential are exercised
    flip = torch.rand(edge_index.shape[1]) < 0.5
    edge_index = torch.where(flip, edge_index.flip(0), edge_index)
    potential = 1.5 * torch.randn(edge_index.shape[1], 2, 2)  # asymmetric
    unary = 2.0 * torch.randn(num_nodes)
    bias = torch.randn(num_nodes)
    return unary, edge_index, potential, bias


def test_grid_edges_shapes_and_ids():
    horizontal, vertical = grid_edges(3, 4)
    assert horizontal.shape == (2, 3 * 3) and vertical.shape == (2, 2 * 4)
    assert horizontal.dtype == torch.long
    # left -> right and top -> bottom
    assert (horizontal[1] - horizontal[0] == 1).all()
    assert (vertical[1] - vertical[0] == 4).all()
    assert (horizontal[0] % 4 != 3).all()  # no edge wraps around a row
    expected = {(r * 4 + c, r * 4 + c + 1) for r in range(3) for c in range(3)}
    assert set(map(tuple, horizontal.T.tolist())) == expected
    expected = {(r * 4 + c, (r + 1) * 4 + c) for r in range(2) for c in range(4)}
    assert set(map(tuple, vertical.T.tolist())) == expected
    # matches networkx's grid graph
    graph = nx.grid_2d_graph(3, 4)
    ours = {frozenset(e) for e in torch.cat([horizontal, vertical], 1).T.tolist()}
    theirs = {frozenset((a * 4 + b, c * 4 + d)) for (a, b), (c, d) in graph.edges()}
    assert ours == theirs
    h, v = grid_edges(1, 5)
    assert h.shape == (2, 4) and v.shape == (2, 0)


@pytest.mark.float64(reason="python floats give the default dtype, asserted as float64")
def test_ising_edge_log_potential():
    pot = ising_edge_log_potential(0.7, 3)
    assert pot.shape == (3, 2, 2) and pot.dtype == torch.float64
    torch.testing.assert_close(pot[1], torch.tensor([[0.7, 0.0], [0.0, 0.7]]))
    coupling = torch.tensor([0.1, -0.2], dtype=torch.float32)
    pot = ising_edge_log_potential(coupling, 2)
    assert pot.dtype == torch.float32
    torch.testing.assert_close(pot[:, 0, 0], coupling)
    torch.testing.assert_close(pot[:, 1, 1], coupling)
    assert (pot[:, 0, 1] == 0).all() and (pot[:, 1, 0] == 0).all()


@pytest.mark.float64(reason="exact to 1e-9")
def test_exact_on_a_chain():
    n = 7
    edge_index = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    potential = torch.randn(n - 1, 2, 2)
    unary = 2.0 * torch.randn(n)
    actual = loopy_bp(unary, edge_index, potential, damping=0.0, tol=1e-12, max_iters=100)
    expected = brute_force_log_odds(unary, edge_index, potential)
    torch.testing.assert_close(actual, expected, atol=1e-9, rtol=1e-9)


@pytest.mark.float64(reason="exact to 1e-9")
@pytest.mark.parametrize("num_nodes,seed", [(2, 0), (6, 1), (10, 2), (10, 3)])
def test_exact_on_random_trees(num_nodes, seed):
    unary, edge_index, potential, bias = random_tree_problem(num_nodes, seed)
    actual = loopy_bp(
        unary, edge_index, potential, node_bias=bias, damping=0.0, tol=1e-12, max_iters=100
    )
    expected = brute_force_log_odds(unary, edge_index, potential, node_bias=bias)
    torch.testing.assert_close(actual, expected, atol=1e-9, rtol=1e-9)
    # the bias matters (the check above could not pass by ignoring it)
    without = brute_force_log_odds(unary, edge_index, potential)
    assert (without - expected).abs().max() > 1e-3


@pytest.mark.float64(reason="converges to tol=1e-11, exact to 1e-9")
def test_damped_converges_to_the_same_fixed_point():
    unary, edge_index, potential, bias = random_tree_problem(9, 4)
    expected = brute_force_log_odds(unary, edge_index, potential, node_bias=bias)
    beliefs, messages, iters = loopy_bp(
        unary,
        edge_index,
        potential,
        node_bias=bias,
        damping=0.5,
        tol=1e-11,
        max_iters=500,
        return_messages=True,
    )
    assert iters < 500  # stopped on tolerance
    assert messages.shape == (2 * edge_index.shape[1],)
    torch.testing.assert_close(beliefs, expected, atol=1e-9, rtol=1e-9)


@pytest.mark.float64(reason="converges to tol=1e-10")
def test_weakly_coupled_grid_close_to_brute_force():
    horizontal, vertical = grid_edges(3, 3)
    edge_index = torch.cat([horizontal, vertical], 1)
    coupling = 0.3 * (2 * torch.rand(edge_index.shape[1]) - 1)
    potential = ising_edge_log_potential(coupling, edge_index.shape[1])
    potential = potential + 0.1 * torch.randn_like(potential)
    unary = torch.randn(9)
    beliefs, _, iters = loopy_bp(
        unary, edge_index, potential, max_iters=200, tol=1e-10, return_messages=True
    )
    assert iters < 200
    expected = brute_force_log_odds(unary, edge_index, potential)
    assert (beliefs.sigmoid() - expected.sigmoid()).abs().max() < 0.02
    # and the couplings do something: ignoring them is further off
    assert (unary.sigmoid() - expected.sigmoid()).abs().max() > 0.02


@pytest.mark.float64(reason="converges to tol=1e-13, exact to 1e-9")
def test_chain_on_grid_edges_matches_forward_backward():
    length = 40
    p01, p10 = 0.05, 0.3
    horizontal, vertical = grid_edges(1, length)
    assert vertical.numel() == 0
    log_trans = chain_log_transition(p01, p10)
    log_init = chain_log_init(p01, p10)
    bias = torch.zeros(length)
    bias[0] = log_init[1] - log_init[0]  # the stationary start, as prior log-odds on s_0
    unary = 3.0 * torch.randn(length)
    beliefs = loopy_bp(
        unary,
        horizontal,
        log_trans.expand(length - 1, 2, 2),
        node_bias=bias,
        damping=0.0,
        tol=1e-13,
        max_iters=200,
    )
    expected = forward_backward(unary, log_init, log_trans)
    torch.testing.assert_close(beliefs, expected, atol=1e-9, rtol=1e-9)
    # the chain potential is asymmetric: reversing the edges changes the answer
    reversed_beliefs = loopy_bp(
        unary,
        horizontal.flip(0),
        log_trans.expand(length - 1, 2, 2),
        node_bias=bias,
        damping=0.0,
        tol=1e-13,
        max_iters=200,
    )
    assert (reversed_beliefs - expected).abs().max() > 1e-3


@pytest.mark.float64(reason="converges to tol=1e-9")
def test_warm_start_and_iteration_budget():
    horizontal, vertical = grid_edges(5, 5)
    edge_index = torch.cat([horizontal, vertical], 1)
    potential = ising_edge_log_potential(0.4, edge_index.shape[1])
    unary = torch.randn(25)
    cold, messages, iters = loopy_bp(
        unary, edge_index, potential, tol=1e-9, max_iters=500, return_messages=True
    )
    assert iters > 1 and iters < 500
    warm, warm_messages, warm_iters = loopy_bp(
        unary,
        edge_index,
        potential,
        tol=1e-9,
        max_iters=500,
        init_messages=messages,
        return_messages=True,
    )
    assert warm_iters == 1
    torch.testing.assert_close(warm, cold, atol=1e-8, rtol=0)
    # a capped run stops at the cap and is not yet converged
    capped, _, capped_iters = loopy_bp(
        unary, edge_index, potential, tol=1e-9, max_iters=2, return_messages=True
    )
    assert capped_iters == 2
    assert (capped - cold).abs().max() > 1e-6
    # tol <= 0 runs exactly max_iters
    _, _, fixed = loopy_bp(unary, edge_index, potential, tol=0.0, max_iters=7, return_messages=True)
    assert fixed == 7
    # warm start from a small perturbation of the new evidence converges faster than cold
    unary2 = unary + 0.05 * torch.randn(25)
    _, _, cold2 = loopy_bp(
        unary2, edge_index, potential, tol=1e-9, max_iters=500, return_messages=True
    )
    _, _, warm2 = loopy_bp(
        unary2,
        edge_index,
        potential,
        tol=1e-9,
        max_iters=500,
        init_messages=messages,
        return_messages=True,
    )
    assert warm2 < cold2


def test_loopy_edge_cases():
    unary, edge_index, potential, bias = random_tree_problem(6, 5)
    # no edges: beliefs are the evidence plus the bias
    empty = torch.zeros(2, 0, dtype=torch.long)
    torch.testing.assert_close(
        loopy_bp(unary, empty, torch.zeros(0, 2, 2), node_bias=bias), unary + bias
    )
    # one shared potential broadcasts over all edges
    shared = loopy_bp(unary, edge_index, potential[0], tol=1e-12, max_iters=300)
    torch.testing.assert_close(
        shared,
        brute_force_log_odds(unary, edge_index, potential[0].expand(edge_index.shape[1], 2, 2)),
    )
    with pytest.raises(ValueError):
        loopy_bp(unary, edge_index, potential, damping=1.0)
    with pytest.raises(ValueError):
        loopy_bp(unary, edge_index, potential, init_messages=torch.zeros(3))


def test_float32_grid_runs_finite():
    horizontal, vertical = grid_edges(30, 40)
    edge_index = torch.cat([horizontal, vertical], 1)
    log_trans = chain_log_transition(0.01, 0.1).float()
    unary = (20.0 * torch.randn(1200)).float()
    beliefs = loopy_bp(unary, edge_index, log_trans, max_iters=20, tol=0.0)
    assert beliefs.dtype == torch.float32 and torch.isfinite(beliefs).all()


@pytest.mark.float64(reason="gradients exact to 1e-8")
def test_differentiable_path_matches_and_has_gradients():
    unary, edge_index, potential, bias = random_tree_problem(5, 6)
    fast = loopy_bp(
        unary, edge_index, potential, node_bias=bias, max_iters=20, tol=0.0, damping=0.0
    )
    unary = unary.clone().requires_grad_()
    slow = loopy_bp(
        unary, edge_index, potential, node_bias=bias, max_iters=20, tol=0.0, damping=0.0
    )
    assert slow.requires_grad
    torch.testing.assert_close(slow, fast)
    # after enough sweeps BP is exact on a tree, so gradients are those of the exact marginals

    def exact(u):
        return brute_force_log_odds(u, edge_index, potential, node_bias=bias)

    (grad,) = torch.autograd.grad(slow.sum(), unary)
    (expected,) = torch.autograd.grad(exact(unary).sum(), unary)
    torch.testing.assert_close(grad, expected, atol=1e-8, rtol=1e-8)
