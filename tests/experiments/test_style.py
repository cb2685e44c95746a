"""One palette and readable figures across the project: the colour of a method is the same in
every figure (regression, compression benchmark, federated), the support figure has its title,
one colour bar and axis labels per layer kind, and legends and ticks stay off each other."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from matplotlib.colors import to_hex

from pyro_dturbo.compression import support_figure
from pyro_dturbo.experiments import federated
from pyro_dturbo.experiments.compress import CompressConfig, support_title
from pyro_dturbo.experiments.regression import METHODS as REGRESSION_METHODS
from pyro_dturbo.experiments.regression import phase_transition_figure
from pyro_dturbo.experiments.style import (
    METHOD_COLORS,
    OTHER_COLOR,
    log_ticks,
    matrix_axis_labels,
    method_color,
)
from pyro_dturbo.federation.config import METHODS as FEDERATED_METHODS
from pyro_dturbo.models import SparsePrior, to_sparse_bayes
from pyro_dturbo.models.layers import sparse_layers
from pyro_dturbo.models.zoo import MLP, LeNet5

ROOT = Path(__file__).resolve().parents[2]


def _benchmark(name: str):
    """A benchmark script as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_compress():
    return _benchmark("compress.py")


def test_every_method_of_the_project_has_its_own_colour(bench_compress):
    families = {
        "regression": REGRESSION_METHODS,
        "compression benchmark": (*bench_compress.METHODS, "dense"),
        "federated": FEDERATED_METHODS,
    }
    for family, names in families.items():
        colours = [method_color(n) for n in names]
        assert OTHER_COLOR not in colours, family
        # the references are all black, every other method of a family has its own colour
        others = [c for n, c in zip(names, colours, strict=True) if n not in ("oracle", "dense")]
        assert len(set(others)) == len(others), family
    # the federated runs take the colour of the centralised prior they use
    assert method_color("dturbo") == method_color("turbo-chain")
    assert method_color("dturbo-independent") == method_color("turbo-independent")
    assert method_color("fedavg") == method_color("dense") == method_color("oracle")
    assert method_color("no-such-method") == OTHER_COLOR
    # the federated module re-exports the same palette, on its methods
    assert federated.method_color is method_color
    assert federated.METHOD_COLORS == {m: METHOD_COLORS[m] for m in FEDERATED_METHODS}


def test_matrix_axis_labels_per_layer_kind():
    assert matrix_axis_labels((16, 64)) == ("inputs", "units")
    assert matrix_axis_labels((16, 6, 5, 3)) == ("in x kh x kw (6 x 5 x 3)", "output channels")
    with pytest.raises(ValueError, match="shape"):
        matrix_axis_labels((3,))


def _net_with_support():
    net = to_sparse_bayes(LeNet5(in_channels=1, num_classes=3, image_size=16))
    for _, layer in sparse_layers(net):
        layer.set_prior(torch.ones_like(layer.weight_loc), torch.rand_like(layer.weight_loc))
    return net


def test_support_figure_has_a_title_one_colour_bar_and_labels_per_layer_kind():
    net = _net_with_support()
    fig = support_figure(net, title="q(s = 1): lenet5 on mnist, chain prior")
    assert fig._suptitle.get_text() == "q(s = 1): lenet5 on mnist, chain prior"
    layers = list(sparse_layers(net))
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title().split(" ")[0] for ax in panels] == [name for name, _ in layers]
    # one colour bar, for every panel: the only axes besides the panels and the empty slot
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "q(s = 1)"]
    assert len(bars) == 1
    assert len(fig.axes) == len(panels) + 1 + 1  # 5 panels in a 2 x 3 grid: one slot off
    assert {im.get_clim() for ax in panels for im in ax.images} == {(0.0, 1.0)}
    labels = {ax.get_title().split(" ")[0]: (ax.get_xlabel(), ax.get_ylabel()) for ax in panels}
    assert labels["conv1"] == ("in x kh x kw (1 x 5 x 5)", "output channels")
    assert labels["conv2"] == ("in x kh x kw (6 x 5 x 5)", "output channels")
    assert labels["fc1"] == labels["fc3"] == ("inputs", "units")
    # the panel titles carry the matrix size and the density of q(s = 1) > 0.5
    conv2 = dict(layers)["conv2"]
    density = float((conv2.support_probs > 0.5).double().mean())
    assert labels and panels[1].get_title() == f"conv2 (16 x 150): density {density:.3f}"


def test_support_figure_of_a_dense_net_and_its_default_title():
    fig = support_figure(to_sparse_bayes(MLP(12, (5,), 3)))
    panels = [ax for ax in fig.axes if ax.images]
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in panels] == [("inputs", "units")] * 2
    assert fig._suptitle.get_text() == "q(s = 1) per layer"
    assert sum(ax.get_ylabel() == "q(s = 1)" for ax in fig.axes) == 1


def test_support_title_names_dataset_model_and_prior(tmp_path):
    assert support_title(CompressConfig(dataset="mnist1d", model="mlp", prior="grid")) == (
        "q(s = 1): mlp on mnist1d, grid prior"
    )
    path = tmp_path / "mine.yaml"
    SparsePrior.chain(layer_priors={"conv1": SparsePrior.chain()}).to_yaml(path)
    title = support_title(CompressConfig(dataset="mnist-5k", model="lenet5", prior=str(path)))
    assert title == "q(s = 1): lenet5 on mnist-5k, mine.yaml (chain) + 1 layer override(s) prior"


def _regression_records():
    records = []
    for method, m, seed in itertools.product(("turbo-chain", "svi", "oracle"), (40, 60), (0, 1)):
        records.append(
            {
                "method": method,
                "num_obs": m,
                "seed": seed,
                "num_weights": 64,
                "nmse_db": -10.0 - m / 10 - seed,
                "oracle_nmse_db": -30.0,
                "success": m > 50,
                "support_f1": 0.9,
                "time_s": 0.1,
                "iterations": 10,
                "time_b_fraction": 0.1,
            }
        )
    return records


def _compress_records(methods):
    records = [
        {
            "method": method,
            "seed": seed,
            "density": 0.02 * (i + 1),
            "accuracy": 0.95 - 0.01 * i,
            "accuracy_dense": 0.99,
        }
        for i, method in enumerate(methods)
        for seed in range(2)
    ]
    summary = [
        {
            "method": method,
            "flops_ratio": 12.0 - i,
            "epoch_time": 0.1 + 0.01 * i,
            "epoch_time_dense": 0.05,
        }
        for i, method in enumerate(methods)
    ]
    return records, summary


def _line_colours(fig):
    return {
        line.get_label(): to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()
    }


def _scatter_colours(fig):
    return {c.get_label(): to_hex(c.get_facecolor()[0]) for ax in fig.axes for c in ax.collections}


def test_the_same_method_has_the_same_colour_in_different_figures(bench_compress):
    regression = phase_transition_figure(_regression_records())
    records, summary = _compress_records(bench_compress.METHODS)
    compress = bench_compress.figure(records, summary)
    lines, points = _line_colours(regression), _scatter_colours(compress)
    for method in ("turbo-chain", "svi"):
        assert lines[method] == points[method] == method_color(method)
    assert lines["oracle"] == method_color("oracle")
    # the bars of the FLOPs panel too, in the summary's order
    flops = compress.axes[1]
    assert [to_hex(bar.get_facecolor()) for bar in flops.patches] == [
        method_color(m) for m in bench_compress.METHODS
    ]


def _overlaps(boxes):
    return [
        (i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if a.overlaps(b)
    ]


def test_legends_sit_off_the_data_and_tick_labels_do_not_overlap(bench_compress):
    records, summary = _compress_records(bench_compress.METHODS)
    figures = [
        bench_compress.figure(records, summary),
        phase_transition_figure(_regression_records()),
    ]
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert all(ax.get_legend() is None for ax in fig.axes)
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                ticks = [t for t in axis.get_ticklabels(which="both") if t.get_text()]
                visible = [t for t in ticks if _inside(t, axis)]
                assert not _overlaps([t.get_window_extent(renderer) for t in visible])


def _inside(label, axis):
    low, high = sorted(axis.get_view_interval())
    position = label.get_position()[0 if axis.axis_name == "x" else 1]
    return low <= position <= high


def test_log_ticks_are_plain_numbers():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0.03, 0.2], [1, 2])
    ax.set_xscale("log")
    log_ticks(ax.xaxis)
    fig.canvas.draw()
    texts = [t.get_text() for t in ax.xaxis.get_ticklabels(which="both") if t.get_text()]
    low, high = ax.get_xlim()
    shown = [float(t) for t in texts if low <= float(t) <= high]
    assert sorted(shown) == [0.05, 0.1, 0.2]
    assert all("10^" not in t and "$" not in t for t in texts)
