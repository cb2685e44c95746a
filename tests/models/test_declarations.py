"""Declarations round-trip losslessly and bad ones fail with a ValueError naming the field.

Round trips are checked by behaviour, not by comparing dicts: the re-loaded structure must give
the same Module B output (``extrinsic``) on random evidence and the same samples under the same
seed.
"""

import math

import networkx as nx
import pyro
import pytest
import torch
import yaml

from pyro_dturbo.inference.module_b import ModuleB
from pyro_dturbo.models import (
    GraphMRFSupport,
    GridMRFSupport,
    IndependentSupport,
    MarkovChainSupport,
    SparsePrior,
    support_from_dict,
)
from pyro_dturbo.models.support import GRAPH_GENERATORS
from pyro_dturbo.ops.messages import BernoulliMessage

CHAIN = {"type": "chain", "p01": 0.1, "p10": 0.2}


def _graph_with_edge_couplings(shape=(3, 4)):
    """A loopy graph in which half of the edges carry their own coupling, and a bias list."""
    graph = nx.cycle_graph(12)
    graph.add_edge(0, 6)
    graph.add_edge(3, 9)
    gen = torch.Generator().manual_seed(1)
    for k, (i, j) in enumerate(graph.edges):
        if k % 2 == 0:
            graph.edges[i, j]["coupling"] = 2.0 * float(torch.randn((), generator=gen)) + 1.0
    bias = (torch.randn(12, generator=gen) - 1.0).tolist()
    return GraphMRFSupport(
        graph,
        coupling=0.8,
        bias=bias,
        shape=shape,
        bp_iters=7,
        bp_damping=0.1,
        bp_tol=0.0,
        gibbs_sweeps=3,
    )


def _edited_generator_graph():
    support = GraphMRFSupport.from_generator(
        "grid_2d_graph", [3, 4], coupling=1.1, bias=-0.3, bp_iters=6, bp_tol=0.0, gibbs_sweeps=5
    )
    support.graph.edges[1, 2]["coupling"] = -1.5
    return support


SUPPORTS = {
    "chain-rows": lambda: MarkovChainSupport(0.05, 0.2).with_shape((6, 9)),
    "chain-cols": lambda: MarkovChainSupport(0.05, 0.3, along="cols").with_shape((6, 9)),
    "grid-bp-settings": lambda: GridMRFSupport(
        0.1, 0.3, grid=(9, 6), bp_iters=3, bp_damping=0.2, bp_tol=0.0, gibbs_sweeps=2
    ).with_shape((6, 9)),
    "graph-edge-couplings-bias-list": _graph_with_edge_couplings,
    "graph-generator": lambda: GraphMRFSupport.from_generator(
        "watts_strogatz_graph",
        [12, 4, 0.3],
        {"seed": 5},
        coupling=0.6,
        bias=-0.4,
        shape=(3, 4),
        bp_iters=9,
        bp_tol=0.0,
        gibbs_sweeps=4,
    ),
    "graph-generator-edited": _edited_generator_graph,
    "independent": lambda: IndependentSupport(0.2).with_shape((6, 9)),
}


def _reload(support, via, tmp_path):
    if via == "dict":
        return support_from_dict(support.to_dict())
    prior = SparsePrior(support)
    if via == "yaml-text":
        return SparsePrior.from_yaml(prior.to_yaml()).support
    path = tmp_path / "prior.yaml"
    prior.to_yaml(path)
    return SparsePrior.from_yaml(path).support


def _assert_same_behaviour(actual, expected, seed=7):
    assert type(actual) is type(expected)
    assert actual.event_shape == expected.event_shape
    evidence = 3.0 * torch.randn(expected.event_shape)
    torch.testing.assert_close(actual.extrinsic(evidence), expected.extrinsic(evidence))
    s = expected.sample()
    torch.testing.assert_close(actual.log_prob(s), expected.log_prob(s))
    pyro.set_rng_seed(seed)
    first = expected.sample((3,))
    pyro.set_rng_seed(seed)
    torch.testing.assert_close(actual.sample((3,)), first)


@pytest.mark.parametrize("via", ["dict", "yaml-text", "yaml-file"])
@pytest.mark.parametrize("name", list(SUPPORTS))
def test_support_round_trip_keeps_behaviour(name, via, tmp_path):
    support = SUPPORTS[name]()
    _assert_same_behaviour(_reload(support, via, tmp_path), support)


def test_per_edge_couplings_survive_the_round_trip():
    support = _graph_with_edge_couplings()
    again = SparsePrior.from_yaml(SparsePrior(support).to_yaml()).support
    couplings = {(i, j): c for i, j, c in support.graph.edges(data="coupling")}
    assert {(i, j): c for i, j, c in again.graph.edges(data="coupling")} == couplings
    assert again.bias == support.bias
    evidence = 3.0 * torch.randn(3, 4)
    torch.testing.assert_close(again.extrinsic(evidence), support.extrinsic(evidence))
    # the per-edge couplings matter: the same graph without them gives another Module B output
    plain = nx.Graph()
    plain.add_nodes_from(range(12))
    plain.add_edges_from(support.graph.edges())
    uniform = GraphMRFSupport(plain, 0.8, support.bias, (3, 4), 7, 0.1, 0.0, 3)
    assert not torch.allclose(uniform.extrinsic(evidence), support.extrinsic(evidence), atol=1e-3)


def test_bp_and_gibbs_settings_survive_the_round_trip():
    support = GridMRFSupport(0.1, 0.3, bp_iters=3, bp_damping=0.2, bp_tol=0.0, gibbs_sweeps=2)
    again = support_from_dict(support.to_dict())
    assert again.bp_settings == (3, 0.2, 0.0) and again.gibbs_sweeps == 2
    graph = _graph_with_edge_couplings()
    again = support_from_dict(graph.to_dict())
    assert again.bp_settings == (7, 0.1, 0.0) and again.gibbs_sweeps == 3


def test_sparse_prior_with_layer_priors_round_trips(tmp_path):
    prior = SparsePrior(
        MarkovChainSupport(0.05, 0.2, along="cols"),
        active=(2.0, 1.0),
        inactive=(50.0, 1e-3),
        layer_priors={
            "fc1": SparsePrior(
                GridMRFSupport(0.1, 0.3, bp_iters=4, bp_damping=0.3, bp_tol=0.0, gibbs_sweeps=3),
                active=(1.5, 2.0),
                inactive=(3.0, 0.01),
            ),
            "fc2": SparsePrior(_graph_with_edge_couplings(shape=None), active=(1.0, 3.0)),
            "fc3": SparsePrior(IndependentSupport(0.3)),
        },
    )
    path = tmp_path / "prior.yaml"
    prior.to_yaml(path)
    shapes = {"fc0": (6, 9), "fc1": (6, 9), "fc2": (3, 4), "fc3": (2, 5)}
    for again in (SparsePrior.from_yaml(path), SparsePrior.from_dict(prior.to_dict())):
        assert set(again.layer_priors) == {"fc1", "fc2", "fc3"}
        for layer, shape in shapes.items():
            expected, actual = prior.for_layer(layer), again.for_layer(layer)
            assert (actual.active, actual.inactive) == (expected.active, expected.inactive)
            _assert_same_behaviour(
                actual.support.with_shape(shape), expected.support.with_shape(shape)
            )
            pyro.set_rng_seed(3)
            weights = prior.model(layer, shape)
            pyro.set_rng_seed(3)
            torch.testing.assert_close(again.model(layer, shape), weights)
        pyro.set_rng_seed(4)
        weights = prior.model("fc0", (6, 9), marginalize_support=True)
        pyro.set_rng_seed(4)
        torch.testing.assert_close(again.model("fc0", (6, 9), marginalize_support=True), weights)


# -- compact graph declarations ---------------------------------------------------------------


def test_generator_declaration_is_compact_and_round_trips_module_b():
    """A 2,560-weight grid layer: a handful of YAML lines instead of thousands of edges."""
    shape = (16, 160)
    spec = {
        "support": {
            "type": "graph",
            "generator": "grid_2d_graph",
            "args": [16, 160],
            "coupling": 0.7,
            "bias": -1.5,
            "bp_iters": 20,
            "bp_tol": 0.0,
        }
    }
    prior = SparsePrior.from_dict(spec)
    text = prior.to_yaml()
    assert len(text.splitlines()) <= 15, text
    assert "edges" not in text
    again = SparsePrior.from_yaml(text)
    evidence = {"fc1": BernoulliMessage(3.0 * torch.randn(shape))}
    expected = ModuleB({"fc1": prior.support.with_shape(shape)})(evidence).messages["fc1"]
    actual = ModuleB({"fc1": again.support.with_shape(shape)})(evidence).messages["fc1"]
    torch.testing.assert_close(actual.logits, expected.logits)
    # nodes are numbered row-major, (r, c) -> 160 r + c, as the weight matrix is flattened
    graph = again.support.graph
    assert graph.number_of_nodes() == 2560 and graph.number_of_edges() == 16 * 159 + 15 * 160
    assert graph.has_edge(0, 1) and graph.has_edge(0, 160) and not graph.has_edge(159, 160)
    # the same graph as an edge list: the same output, thousands of lines
    dense_graph = nx.Graph()
    dense_graph.add_nodes_from(range(2560))
    dense_graph.add_edges_from(graph.edges)
    dense = GraphMRFSupport(dense_graph, coupling=0.7, bias=-1.5, bp_iters=20, bp_tol=0.0)
    assert dense.generator is None
    assert len(SparsePrior(dense).to_yaml().splitlines()) > 4000
    dense_out = ModuleB({"fc1": dense.with_shape(shape)})(evidence).messages["fc1"]
    torch.testing.assert_close(dense_out.logits, expected.logits)


def test_generator_graph_keeps_its_declaration_until_edited():
    support = GraphMRFSupport.from_generator("grid_2d_graph", [3, 4], bias=-0.5)
    assert sorted(support.graph.edges) == sorted(
        [(4 * r + c, 4 * r + c + 1) for r in range(3) for c in range(3)]
        + [(4 * r + c, 4 * r + c + 4) for r in range(2) for c in range(4)]
    )
    bound = support.with_shape((3, 4))
    spec = bound.to_dict()
    assert spec["generator"] == "grid_2d_graph" and spec["args"] == [3, 4]
    assert spec["shape"] == [3, 4] and "edges" not in spec
    bound.graph.edges[0, 1]["coupling"] = 2.5
    spec = bound.to_dict()
    assert "generator" not in spec and [0, 1, 2.5] in spec["edges"] and [1, 2] in spec["edges"]
    _assert_same_behaviour(support_from_dict(spec), bound)
    added = GraphMRFSupport.from_generator("path_graph", [4])
    added.graph.add_edge(0, 3)
    assert added.generator is None and [0, 3] in added.to_dict()["edges"]


def test_edge_list_declarations():
    plain = support_from_dict({"type": "graph", "edges": [[0, 1], [1, 2]]})
    assert plain.graph.number_of_nodes() == 3 and sorted(plain.graph.edges) == [(0, 1), (1, 2)]
    assert all(c is None for _, _, c in plain.graph.edges(data="coupling"))
    mixed = support_from_dict(
        {"type": "graph", "num_nodes": 4, "edges": [[0, 1, 0.5], [1, 2]], "coupling": 2.0}
    )
    assert mixed.graph.number_of_nodes() == 4
    assert mixed.graph.edges[0, 1] == {"coupling": 0.5} and mixed.graph.edges[1, 2] == {}
    assert mixed.to_dict()["edges"] == [[0, 1, 0.5], [1, 2]]
    by_shape = support_from_dict({"type": "graph", "edges": [[0, 1]], "shape": [2, 3]})
    assert by_shape.graph.number_of_nodes() == 6 and by_shape.event_shape == (2, 3)


def test_random_generators_need_a_seed_and_are_reproducible():
    spec = {"type": "graph", "generator": "random_regular_graph", "args": [3, 20]}
    with pytest.raises(ValueError, match=r"^support: random_regular_graph\(d, n, seed\) needs "):
        support_from_dict(spec)
    first = support_from_dict({**spec, "kwargs": {"seed": 11}})
    second = support_from_dict({**spec, "kwargs": {"seed": 11}})
    other = support_from_dict({**spec, "args": [3, 20, 12]})
    assert set(first.graph.edges) == set(second.graph.edges) != set(other.graph.edges)
    assert first.to_dict()["kwargs"] == {"seed": 11} and other.to_dict()["args"] == [3, 20, 12]


@pytest.mark.parametrize(
    "generator, args, nodes",
    [
        ("path_graph", [5], 5),
        ("cycle_graph", [6], 6),
        ("star_graph", [4], 5),
        ("complete_graph", [4], 4),
        ("balanced_tree", [2, 3], 15),
        ("hypercube_graph", [3], 8),
        ("hexagonal_lattice_graph", [2, 2], 16),
        ("watts_strogatz_graph", [10, 4, 0.2, 0], 10),
    ],
)
def test_whitelisted_generators_build_integer_graphs(generator, args, nodes):
    support = support_from_dict({"type": "graph", "generator": generator, "args": args})
    assert sorted(support.graph.nodes) == list(range(nodes))
    again = support_from_dict(support.to_dict())
    assert set(again.graph.edges) == set(support.graph.edges)


def test_unknown_generator_lists_the_whitelist():
    with pytest.raises(ValueError, match=r"^support\.generator must be one of \[") as info:
        support_from_dict({"type": "graph", "generator": "read_edgelist", "args": ["x"]})
    for name in ("grid_2d_graph", "random_regular_graph", "watts_strogatz_graph"):
        assert name in str(info.value) and name in GRAPH_GENERATORS


# -- bad declarations -------------------------------------------------------------------------


def _graph(**fields):
    return {"support": {"type": "graph", **fields}}


#: The start of every message about the top-level support declaration.
S = r"^SparsePrior\.support"

BAD = [
    # SparsePrior fields
    (
        {"support": CHAIN, "active": 1.0},
        r"^SparsePrior\.active must be a \(shape, rate\) pair, got 1\.0$",
    ),
    (
        {"support": CHAIN, "inactive": [1.0]},
        r"^SparsePrior\.inactive must be a \(shape, rate\) pair",
    ),
    (
        {"support": CHAIN, "active": ["1", 1]},
        r"^SparsePrior\.active must be a \(shape, rate\) pair",
    ),
    ({"support": CHAIN, "colour": 1}, r"^SparsePrior: unknown fields \['colour'\]"),
    ({"active": [1, 1]}, S + r" is required"),
    ({"support": "chain"}, S + r" must be a mapping"),
    ({"support": CHAIN, "layer_priors": ["fc1"]}, r"^SparsePrior\.layer_priors must be a mapping"),
    (
        {"support": CHAIN, "layer_priors": {"fc2": {"support": {**CHAIN, "p01": 2.0}}}},
        r"^SparsePrior\.layer_priors\['fc2'\]\.support\.p01 must be a probability in \(0, 1\)",
    ),
    (
        {"support": CHAIN, "layer_priors": {"fc2": {"support": CHAIN, "inactive": [1, 10]}}},
        r"^SparsePrior\.layer_priors\['fc2'\]\.inactive must have a smaller variance",
    ),
    # support: type, required and unknown fields
    ({"support": {"p01": 0.1}}, S + r"\.type is required"),
    ({"support": {"type": 3}}, S + r"\.type must be one of"),
    ({"support": {"type": "grid", "p10": 0.2}}, S + r"\.p01 is required for type 'grid'$"),
    ({"support": {"type": "independent"}}, S + r"\.p is required for type 'independent'"),
    ({"support": {**CHAIN, "colour": 1}}, S + r": unknown fields \['colour'\] for type 'chain'"),
    (_graph(p01=0.1, p10=0.2), S + r": unknown fields \['p01', 'p10'\] for type 'graph'"),
    (_graph(), S + r": type 'graph' needs a generator .* or an edge list"),
    # support: wrong types and values
    ({"support": {**CHAIN, "p01": "abc"}}, S + r"\.p01 must be a number, got 'abc'"),
    ({"support": {**CHAIN, "p01": "0.1"}}, S + r"\.p01 must be a number, got '0\.1'"),
    ({"support": {"type": "independent", "p": True}}, S + r"\.p must be a number"),
    ({"support": {**CHAIN, "along": 3}}, S + r"\.along must be 'rows' or 'cols'"),
    ({"support": {**CHAIN, "shape": [0, 3]}}, S + r"\.shape\[0\] must be >= 1"),
    ({"support": {**CHAIN, "shape": 12}}, S + r"\.shape must be a non-empty list"),
    ({"support": {**CHAIN, "type": "grid", "grid": "4x8"}}, S + r"\.grid must be a list of 2"),
    ({"support": {**CHAIN, "type": "grid", "grid": [4]}}, S + r"\.grid must be a list of 2"),
    (
        {"support": {**CHAIN, "type": "grid", "bp_iters": -3}},
        S + r"\.bp_iters must be >= 1, got -3",
    ),
    (
        {"support": {**CHAIN, "type": "grid", "bp_iters": 2.5}},
        S + r"\.bp_iters must be an integer, got 2\.5",
    ),
    (
        {"support": {**CHAIN, "type": "grid", "bp_damping": 1.0}},
        S + r"\.bp_damping must be in \[0, 1\), got 1\.0",
    ),
    (
        {"support": {**CHAIN, "type": "grid", "bp_damping": -0.1}},
        S + r"\.bp_damping must be in \[0, 1\)",
    ),
    (
        {"support": {**CHAIN, "type": "grid", "bp_tol": -1e-3}},
        S + r"\.bp_tol must be finite and >= 0",
    ),
    ({"support": {**CHAIN, "type": "grid", "gibbs_sweeps": 0}}, S + r"\.gibbs_sweeps must be >= 1"),
    (
        {"support": {**CHAIN, "type": "grid", "grid": [3, 3], "shape": [10]}},
        S + r": GridMRFSupport\.grid \(3, 3\) does not hold 10 weights",
    ),
    # graph: couplings, bias, edges, generators
    (
        _graph(generator="path_graph", args=[3], coupling=math.inf),
        S + r"\.coupling must be finite, got inf",
    ),
    (_graph(edges=[[0, 1, math.inf]]), S + r"\.edges\[0\]\[2\] must be finite, got inf"),
    (_graph(edges=[[0, 1, math.nan]]), S + r"\.edges\[0\]\[2\] must be finite, got nan"),
    (_graph(edges=[[0, 1, "strong"]]), S + r"\.edges\[0\]\[2\] must be a number"),
    (_graph(edges=[[0, 1], [1]]), S + r"\.edges\[1\] must be \[i, j\] or \[i, j, coupling\]"),
    (_graph(edges="0-1"), S + r"\.edges must be a list"),
    (_graph(edges=[[0, 1], [1, 5]], num_nodes=3), S + r"\.edges\[1\] = \[1, 5\] names node 5"),
    (_graph(edges=[[0, -1]]), S + r"\.edges\[0\]\[1\] must be >= 0"),
    (_graph(edges=[[1, 1]]), S + r"\.edges\[0\] = \[1, 1\] is a self-loop"),
    (_graph(edges=[[0, 1], [1, 0]]), S + r"\.edges\[1\] repeats edges\[0\]"),
    (_graph(edges=[[0, 1]], num_nodes=0), S + r"\.num_nodes must be >= 1"),
    (
        _graph(edges=[[0, 1], [1, 2]], bias=[0.0, 1.0]),
        S + r"\.bias must be a number or have one entry per node \(3\), got 2",
    ),
    (_graph(edges=[[0, 1], [1, 2]], bias=[0.0, math.nan, 0.0]), S + r"\.bias\[1\] must be finite"),
    (_graph(edges=[[0, 1]], bias="low"), S + r"\.bias must be a number"),
    (_graph(generator="read_edgelist"), S + r"\.generator must be one of \[.*'grid_2d_graph'"),
    (
        _graph(generator="grid_2d_graph", args=[4, 4], edges=[[0, 1]]),
        S + r": give a generator or an edge list \['edges'\], not both",
    ),
    (_graph(edges=[[0, 1]], args=[3]), S + r": \['args'\] need a generator"),
    (
        _graph(generator="grid_2d_graph", args=[4]),
        S + r": grid_2d_graph\(m, n, periodic\) needs \['n'\]",
    ),
    (
        _graph(generator="path_graph", args=[3, 4]),
        S + r"\.args: path_graph\(n\) takes 1 arguments, got 2",
    ),
    (_graph(generator="path_graph", args=[3.5]), S + r"\.args\[0\] must be an integer"),
    (_graph(generator="path_graph", args=3), S + r"\.args must be a list"),
    (
        _graph(generator="path_graph", kwargs={"m": 3}),
        S + r"\.kwargs: path_graph\(n\) has no argument 'm'",
    ),
    (_graph(generator="path_graph", args=[3], kwargs={"n": 3}), S + r"\.kwargs\.n: given twice"),
    (
        _graph(generator="grid_2d_graph", args=[2, 2], kwargs={"periodic": 1}),
        S + r"\.kwargs\.periodic \(periodic\) must be true or false",
    ),
    (
        _graph(generator="watts_strogatz_graph", args=[10, 2, 1.5, 0]),
        S + r"\.args\[2\] \(p\) must be a probability",
    ),
    (
        _graph(generator="random_regular_graph", args=[3, 5, 0]),
        S + r": networkx\.random_regular_graph\(d, n, seed\) failed",
    ),
    (
        _graph(generator="path_graph", args=[3], shape=[2, 2]),
        S + r": GraphMRFSupport: shape \(2, 2\) holds 4 weights",
    ),
]


@pytest.mark.parametrize("spec, message", BAD, ids=[m for _, m in BAD])
def test_bad_declarations_raise_value_error_naming_the_field(spec, message):
    with pytest.raises(ValueError, match=message):
        SparsePrior.from_dict(spec)


def test_bad_declarations_through_support_from_dict_name_the_field():
    with pytest.raises(ValueError, match=r"^support\.p01 is required for type 'grid'$"):
        support_from_dict({"type": "grid", "p10": 0.1})
    with pytest.raises(ValueError, match=r"^layer\.p must be a number"):
        support_from_dict({"type": "independent", "p": [0.1]}, where="layer")


def test_bad_constructor_arguments_raise_value_error_naming_the_field():
    with pytest.raises(ValueError, match=r"^GridMRFSupport\.grid must be a list of 2"):
        GridMRFSupport(0.1, 0.2, grid=(3,))
    with pytest.raises(ValueError, match=r"^GridMRFSupport\.bp_iters must be an integer"):
        GridMRFSupport(0.1, 0.2, bp_iters=2.5)
    with pytest.raises(ValueError, match=r"^GridMRFSupport\.gibbs_sweeps must be >= 1"):
        GridMRFSupport(0.1, 0.2, gibbs_sweeps=-1)
    with pytest.raises(ValueError, match=r"^GridMRFSupport\.bp_tol must be finite"):
        GridMRFSupport(0.1, 0.2, bp_tol=math.nan)
    with pytest.raises(ValueError, match=r"^MarkovChainSupport\.p01 must be a number"):
        MarkovChainSupport("0.1", 0.2)
    graph = nx.path_graph(3)
    graph.edges[0, 1]["coupling"] = math.inf
    with pytest.raises(ValueError, match=r"^GraphMRFSupport\.graph\.edges\[0, 1\]\['coupling'\]"):
        GraphMRFSupport(graph)
    loop = nx.path_graph(3)
    loop.add_edge(2, 2)
    with pytest.raises(ValueError, match=r"^GraphMRFSupport\.graph has self-loops"):
        GraphMRFSupport(loop)
    with pytest.raises(ValueError, match=r"^GraphMRFSupport\.graph must be an undirected"):
        GraphMRFSupport(nx.DiGraph(nx.path_graph(3)))
    with pytest.raises(ValueError, match=r"^GraphMRFSupport\.bias\[2\] must be finite"):
        GraphMRFSupport(nx.path_graph(3), bias=[0.0, 0.0, math.inf])
    with pytest.raises(ValueError, match=r"^SparsePrior\.active must be a \(shape, rate\) pair"):
        SparsePrior(IndependentSupport(0.1), active=1.0)


# -- YAML ----------------------------------------------------------------------------------------


def test_from_yaml_reads_yaml_text_of_any_length():
    prior = SparsePrior(_graph_with_edge_couplings(), layer_priors={"fc": SparsePrior.chain()})
    text = prior.to_yaml()
    assert len(text.encode()) > 255 and text.count("\n") > 1
    _assert_same_behaviour(SparsePrior.from_yaml(text).support, prior.support)
    one_line = yaml.safe_dump(prior.to_dict(), default_flow_style=True, width=10**6).strip()
    assert len(one_line) > 255 and "\n" not in one_line
    _assert_same_behaviour(SparsePrior.from_yaml(one_line).support, prior.support)


def test_from_yaml_reads_files(tmp_path):
    prior = SparsePrior(GridMRFSupport(0.1, 0.3, bp_iters=3, bp_tol=0.0), active=(2.0, 1.0))
    for name in ("prior.yaml", "prior.yml", "prior.txt"):
        path = tmp_path / name
        prior.to_yaml(path)
        for source in (path, str(path)):
            again = SparsePrior.from_yaml(source)
            assert again.active == (2.0, 1.0)
            shape = (4, 5)
            _assert_same_behaviour(again.support.with_shape(shape), prior.support.with_shape(shape))


def test_from_yaml_missing_file_names_the_file(tmp_path):
    path = tmp_path / "missing.yaml"
    for source in (path, str(path)):
        with pytest.raises(FileNotFoundError, match="missing.yaml"):
            SparsePrior.from_yaml(source)
    with pytest.raises(ValueError, match=r"'missing-prior' is neither an existing file nor"):
        SparsePrior.from_yaml("missing-prior")


def test_from_yaml_syntax_error_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    text = "support:\n  type: chain\n  p01: 0.1\n   p10: 0.2\nactive: [1, 1]\n"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.yaml: invalid YAML at line 4, column \d+: mapping"):
        SparsePrior.from_yaml(path)
    with pytest.raises(ValueError, match=r"^YAML text: invalid YAML at line 4"):
        SparsePrior.from_yaml(text)
    path.write_text("support: {type: chain, p01: 0.1, p10: 0.2\nactive: [1, 1]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: invalid YAML at line 2"):
        SparsePrior.from_yaml(str(path))


def test_from_yaml_bad_values_name_the_file_and_the_field(tmp_path):
    path = tmp_path / "prior.yaml"
    path.write_text("support: {type: chain, p01: 0.1, p10: 0.2}\nactive: 1.0\n")
    with pytest.raises(
        ValueError, match=r"prior\.yaml: SparsePrior\.active must be a \(shape, rate\) pair"
    ):
        SparsePrior.from_yaml(path)
    path.write_text("support:\n  type: chain\n  p01: 0.1\n  p01: 0.2\n  p10: 0.2\n")
    with pytest.raises(ValueError, match=r"prior\.yaml: invalid YAML at line 4.*'p01' is given"):
        SparsePrior.from_yaml(path)
    path.write_text("")
    with pytest.raises(ValueError, match=r"prior\.yaml: empty YAML"):
        SparsePrior.from_yaml(path)


def test_from_yaml_reads_exponents_without_a_dot_as_floats():
    text = "support: {type: chain, p01: 1e-3, p10: 2E-1}\ninactive: [1, 1e-2]"
    prior = SparsePrior.from_yaml(text)
    assert prior.support.p01 == 1e-3 and prior.support.p10 == 0.2
    assert prior.inactive == (1.0, 0.01)
