"""One look for every figure of the project: a colour per method, the layer axes' labels.

:data:`METHOD_COLORS` gives each method name of the project one fixed colour, used by every
plot (the regression comparison and demo, the compression benchmark, the federated report and
benchmarks): a method looks the same in every figure. The rules:

- each algorithm has its own colour, and the names that can share a figure (the regression
  methods, the compression benchmark's, the federated ones) all differ;
- the federated D-Turbo-VBI runs take the colour of the centralised prior they use
  (``dturbo`` is ``turbo-chain``'s blue, ``dturbo-independent`` ``turbo-independent``'s
  purple): the same method, centralised or federated;
- the references are black: the dense network, FedAvg (the dense federated baseline) and
  the oracle (drawn dashed).

:func:`method_color` returns a name's colour (grey for a name the palette does not know),
:func:`matrix_axis_labels` the axis labels of a layer's ``(out, in * kh * kw)`` matrix view and
:func:`log_ticks` plain, non-overlapping tick labels on a log axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "METHOD_COLORS",
    "REFERENCE_COLOR",
    "OTHER_COLOR",
    "method_color",
    "matrix_axis_labels",
    "log_ticks",
]

#: The colour of the references: the dense network, FedAvg, the oracle.
REFERENCE_COLOR = "#000000"

#: The colour of a method name :data:`METHOD_COLORS` does not know.
OTHER_COLOR = "#7f7f7f"

#: One fixed colour per method name of the project (matplotlib's ``tab10`` / ``tab20``
#: colours; the references in black).
METHOD_COLORS: dict[str, str] = {
    # Turbo-VBI, by prior (centralised and federated)
    "turbo-chain": "#1f77b4",
    "dturbo": "#1f77b4",
    "turbo-chain-vb-finetune": "#aec7e8",
    "turbo-chain-log-mixture": "#393b79",
    "dturbo-moment": "#17becf",
    "turbo-grid": "#8c564b",
    "turbo-independent": "#9467bd",
    "dturbo-independent": "#9467bd",
    # the baselines
    "svi": "#d62728",
    "svi-lowrank": "#ff9896",
    "svi-delta": "#8c6d31",
    "mcmc": "#e377c2",
    "magnitude": "#bcbd22",
    "sparse-vd": "#637939",
    "fedavg-topk": "#ff7f0e",
    "stc": "#2ca02c",
    # the references
    "dense": REFERENCE_COLOR,
    "fedavg": REFERENCE_COLOR,
    "oracle": REFERENCE_COLOR,
}


def method_color(name: str) -> str:
    """The colour of a method in every plot of the project (:data:`OTHER_COLOR`, grey, for a
    name not in :data:`METHOD_COLORS`).

    :param str name: a method name, e.g. ``"turbo-chain"`` or ``"fedavg"``.
    :returns: a matplotlib colour (hex string).
    :rtype: str
    """
    return METHOD_COLORS.get(name, OTHER_COLOR)


def matrix_axis_labels(weight_shape: Sequence[int]) -> tuple[str, str]:
    """``(xlabel, ylabel)`` of a layer's weight drawn as its ``(out, in * kh * kw)`` matrix.

    A dense layer's columns are its inputs and its rows its units; a conv layer's columns are
    the ``in x kh x kw`` entries of each filter and its rows the output channels.

    Example::

        >>> matrix_axis_labels((16, 64))
        ('inputs', 'units')
        >>> matrix_axis_labels((16, 6, 5, 5))
        ('in x kh x kw (6 x 5 x 5)', 'output channels')

    :param weight_shape: ``(out, in)`` or ``(out, in, kh, kw)``.
    :returns: the two labels.
    :rtype: tuple[str, str]
    :raises ValueError: on a shape of another length.
    """
    shape = tuple(int(d) for d in weight_shape)
    if len(shape) == 2:
        return "inputs", "units"
    if len(shape) == 4:
        return f"in x kh x kw ({shape[1]} x {shape[2]} x {shape[3]})", "output channels"
    raise ValueError(f"expected a dense (out, in) or conv (out, in, kh, kw) shape, got {shape}")


def log_ticks(axis: Any, *, decades: float = 2.5) -> None:
    """Plain tick labels on a log-scaled matplotlib axis (``0.05``, ``0.1``, ``20``): the
    powers of ten, and 2 and 5 times them when the axis spans fewer than ``decades`` decades
    (more labels would crowd); no other minor labels. Call it once the data are drawn.

    :param axis: an ``ax.xaxis`` or ``ax.yaxis`` on a log scale.
    :param float decades: below this span the 2 / 5 ticks are labelled too.
    """
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_locator(LogLocator(base=10.0))
    axis.set_major_formatter(plain)
    low, high = sorted(abs(v) for v in axis.get_view_interval())
    if low > 0 and math.log10(high / low) < decades:
        axis.set_minor_locator(LogLocator(base=10.0, subs=(2.0, 5.0)))
        axis.set_minor_formatter(plain)
    else:
        axis.set_minor_formatter(NullFormatter())
