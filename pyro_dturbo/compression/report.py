"""The compression report of a pruned network (JSON-ready) and a plot of its support posterior.

:func:`compression_report` measures a pruned network against its dense architecture: kept
weights, units of the :func:`~pyro_dturbo.compression.export.export_compact` model, FLOPs
(:mod:`~pyro_dturbo.compression.cost`), bytes (:func:`~pyro_dturbo.compression.codec.weight_bytes`)
and, with test data, accuracies. :func:`plot_support` draws ``q(s = 1)`` of every sparse layer.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. VI (compression
    ratio and FLOPs of the compact model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyro_dturbo.compression._modules import effective_weight, evaluating, module_like
from pyro_dturbo.compression.codec import weight_bytes
from pyro_dturbo.compression.cost import count_macs, sparse_macs
from pyro_dturbo.compression.export import compact_stages
from pyro_dturbo.models.layers import sparse_layers

__all__ = ["LayerReport", "compression_report", "plot_support", "support_figure"]


@dataclass
class LayerReport:
    """Compression of one weight layer.

    ``units`` are the layer's rows (neurons or output channels); ``units_kept`` and
    ``inputs_kept`` (input features of an ``nn.Linear``, input channels of an ``nn.Conv2d``)
    describe the layer in the compact model of :func:`export_compact`. MACs are per example;
    bytes are for the weights only (see :func:`weight_bytes`).
    """

    name: str
    shape: tuple[int, ...]
    weights: int
    weights_kept: int
    density: float
    units: int
    units_kept: int
    inputs_kept: int
    macs_dense: int
    macs_compact: int
    bytes_dense: int
    bytes_coo: int
    bytes_rle: int


def _whole_unit_counts(kept: Tensor) -> tuple[int, int]:
    """(pruned weights, those in an all-pruned row or column of the matrix view)."""
    pruned = ~kept.reshape(kept.shape[0], -1)
    dead_rows = pruned.all(dim=1, keepdim=True)
    dead_cols = pruned.all(dim=0, keepdim=True)
    return int(pruned.sum()), int((pruned & (dead_rows | dead_cols)).sum())


@torch.no_grad()
def _logits(net: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    like = module_like(net)
    with evaluating(net):
        return torch.cat(
            [net(x[i : i + batch_size].to(**like)) for i in range(0, len(x), batch_size)]
        )


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(-1) == y.to(logits.device)).double().mean())


@torch.no_grad()
def compression_report(
    net: nn.Module,
    input_shape: Sequence[int],
    *,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    dense_net: nn.Module | None = None,
) -> dict[str, Any]:
    """Measure a pruned network against its dense architecture; a JSON-ready dict.

    Keys: ``"layers"`` (a :class:`LayerReport` dict per weight layer), ``"weights"``,
    ``"weights_kept"``, ``"parameters_dense"`` / ``"parameters_compact"`` (weights and
    biases of the dense architecture / the :func:`export_compact` model), ``"density"``,
    ``"fraction_pruned"``, ``"neurons_kept"`` (layer -> units in the compact model),
    ``"flops_dense"`` / ``"flops_compressed"`` (twice the MACs :func:`count_macs` finds in
    the dense architecture / the :func:`export_compact` model), ``"flops_sparse"`` (twice
    :func:`sparse_macs`), ``"flops_ratio"`` (``flops_dense / flops_compressed``: how many
    times fewer FLOPs), ``"bytes_dense"``, ``"bytes_coo"``, ``"bytes_rle"``,
    ``"bytes_compressed"`` (per layer the smallest of dense, COO and RLE, summed) and
    ``"fraction_in_whole_units"``: the share of pruned weights that lie in an all-pruned row
    (a dead neuron / channel) or all-pruned column of their layer's ``(out, in * kh * kw)``
    matrix, a measure of how structured the sparsity is (0 when nothing is pruned). With test
    data also ``"accuracy_compressed"`` (compact model), ``"accuracy_posterior_mean"`` (``net``
    in eval mode, masked), ``"accuracy_dense"`` (``dense_net``, if given) and
    ``"max_abs_logit_diff"`` (compact model against ``net``).

    A weight counts as kept when it is nonzero in the pruned posterior mean ``mu * mask``.
    Biases are not counted (except in the ``parameters_*`` keys). Every count (weights, units,
    MACs, FLOPs, bytes, parameters) is a Python ``int``, so JSON writes it as an integer; the
    keys, units and definitions are listed in ``docs/report.md``.

    Example::

        >>> prune(net)
        >>> report = compression_report(net, (1, 28, 28), x_test=x, y_test=y)
        >>> json.dumps(report)

    :param torch.nn.Module net: a pruned sparse Bayesian ``nn.Sequential`` (see :func:`prune`).
    :param input_shape: the shape of one example, without the batch dimension.
    :param torch.Tensor x_test: test inputs. :param torch.Tensor y_test: integer labels.
    :param torch.nn.Module dense_net: the unpruned reference network, for ``"accuracy_dense"``.
    :returns: the report.
    :rtype: dict
    :raises ValueError: if only one of ``x_test`` / ``y_test`` is given, or as
        :func:`export_compact`.
    """
    if (x_test is None) != (y_test is None):
        raise ValueError("compression_report needs both x_test and y_test, or neither")
    compact, stages = compact_stages(net, input_shape)
    modules = dict(net.named_modules())
    layers: list[LayerReport] = []
    pruned = pruned_in_units = 0
    for stage in stages:
        kept = effective_weight(modules[stage.name]) != 0
        positions = math.prod(stage.out_shape[2:])
        bytes_ = weight_bytes(kept)
        layers.append(
            LayerReport(
                name=stage.name,
                shape=stage.dense_weight_shape,
                weights=kept.numel(),
                weights_kept=int(kept.sum()),
                density=float(kept.sum()) / kept.numel(),
                units=stage.dense_weight_shape[0],
                units_kept=int(stage.weight.shape[0]),
                inputs_kept=int(stage.weight.shape[1]),
                macs_dense=kept.numel() * positions,
                macs_compact=stage.weight.numel() * positions,
                bytes_dense=bytes_["dense"],
                bytes_coo=bytes_["coo"],
                bytes_rle=bytes_["rle"],
            )
        )
        layer_pruned, layer_in_units = _whole_unit_counts(kept)
        pruned += layer_pruned
        pruned_in_units += layer_in_units
    weights = sum(r.weights for r in layers)
    weights_kept = sum(r.weights_kept for r in layers)
    # parameters (weights and biases) of the dense architecture and of the compact model
    parameters_dense = sum(
        r.weights + (r.units if getattr(modules[r.name], "bias", None) is not None else 0)
        for r in layers
    )
    parameters_compact = sum(int(p.numel()) for p in compact.parameters())
    flops_dense = 2 * count_macs(net, input_shape)
    flops_compressed = 2 * count_macs(compact, input_shape)
    report: dict[str, Any] = {
        "layers": [asdict(r) for r in layers],
        "weights": weights,
        "weights_kept": weights_kept,
        "parameters_dense": parameters_dense,
        "parameters_compact": parameters_compact,
        "density": weights_kept / weights,
        "fraction_pruned": 1.0 - weights_kept / weights,
        "neurons_kept": {r.name: r.units_kept for r in layers},
        "flops_dense": flops_dense,
        "flops_compressed": flops_compressed,
        "flops_sparse": 2 * sparse_macs(net, input_shape),
        "flops_ratio": flops_dense / flops_compressed,
        "bytes_dense": sum(r.bytes_dense for r in layers),
        "bytes_compressed": sum(min(r.bytes_dense, r.bytes_coo, r.bytes_rle) for r in layers),
        "bytes_coo": sum(r.bytes_coo for r in layers),
        "bytes_rle": sum(r.bytes_rle for r in layers),
        "fraction_in_whole_units": pruned_in_units / pruned if pruned else 0.0,
    }
    if x_test is not None and y_test is not None:
        compact_logits = _logits(compact, x_test)
        net_logits = _logits(net, x_test)
        report["accuracy_compressed"] = _accuracy(compact_logits, y_test)
        report["accuracy_posterior_mean"] = _accuracy(net_logits, y_test)
        if dense_net is not None:
            report["accuracy_dense"] = _accuracy(_logits(dense_net, x_test), y_test)
        diff = (compact_logits - net_logits.to(compact_logits)).abs()
        report["max_abs_logit_diff"] = float(diff.max()) if diff.numel() else 0.0
    return report


@torch.no_grad()
def support_figure(net: nn.Module, *, title: str | None = None) -> Any:
    """The figure of :func:`plot_support`, not saved: a
    :class:`matplotlib.figure.Figure` on the Agg canvas (pyplot's backend is untouched).

    :param torch.nn.Module net: a network with sparse Bayesian layers.
    :param str title: the figure's title (e.g. naming the data set, model and prior);
        ``None`` for ``"q(s = 1) per layer"``.
    :returns: the figure.
    :raises ValueError: if the network has no sparse Bayesian layer.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from pyro_dturbo.experiments.style import matrix_axis_labels

    layers = list(sparse_layers(net))
    if not layers:
        raise ValueError("plot_support needs a network with sparse Bayesian layers")
    ncols = min(3, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = Figure(figsize=(4.2 * ncols + 1.0, 3.4 * nrows + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    image = None
    for ax, (name, layer) in zip(axes, layers, strict=False):
        probs = layer.support_probs.reshape(layer.matrix_shape).detach().cpu().double().numpy()
        kept = layer.mask if layer.mask is not None else layer.support_probs > 0.5
        density = float((kept != 0).double().mean())
        image = ax.imshow(
            probs, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest"
        )
        xlabel, ylabel = matrix_axis_labels(tuple(layer.weight_loc.shape))
        rows, cols = probs.shape
        ax.set(
            title=f"{name} ({rows} x {cols}): density {density:.3f}",
            xlabel=xlabel,
            ylabel=ylabel,
        )
        # a few integer ticks: long axes (784 inputs) stay readable
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.tick_params(labelsize=8)
    for ax in axes[len(layers) :]:
        ax.set_axis_off()
    # one colour bar for all panels: they share the fixed [0, 1] scale
    assert image is not None
    fig.colorbar(image, ax=list(axes[: len(layers)]), label="q(s = 1)", shrink=0.9)
    fig.suptitle(title if title is not None else "q(s = 1) per layer")
    return fig


def plot_support(net: nn.Module, path: str | Path, *, title: str | None = None) -> Path:
    """Heat maps of ``q(s = 1)``, one per sparse Bayesian layer, saved as an image.

    Each panel shows the layer's ``(out, in * kh * kw)`` matrix (rows are neurons or channels;
    axes labelled ``inputs`` / ``units`` for a dense layer, ``in x kh x kw`` / ``output
    channels`` for a conv layer), titled with the layer name, its matrix size and its density
    (the kept fraction of the mask if set, else of ``q(s = 1) > 0.5``). All panels share the
    fixed ``[0, 1]`` colour scale and one colour bar; ``title`` heads the figure
    (``dturbo compress`` names the data set, the model and the prior). See
    :func:`support_figure`.

    :param torch.nn.Module net: a network with sparse Bayesian layers.
    :param str path: the file to write (PNG by its suffix; parent folders are created).
    :param str title: the figure's title.
    :returns: the path written.
    :raises ValueError: if the network has no sparse Bayesian layer.
    """
    fig = support_figure(net, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
