"""Reporting a federated run: ``report.json``, the accuracy-against-bytes plot, the global
support and one summary line per method.

:func:`write_federated_report` is what ``dturbo federate`` and the federated benchmark call
on the :class:`~pyro_dturbo.federation.simulation.FederatedResult` of
:func:`~pyro_dturbo.federation.simulation.run_federated`. The measures that need only the
per-round records (:func:`bytes_to_target`, :func:`summary_lines`,
:func:`plot_accuracy_vs_bytes`) also take the ``report.json`` dict itself, so a saved run can
be summarised again without its models. Every federated plot draws a method in its
:data:`METHOD_COLORS` colour, the project's one palette (:mod:`pyro_dturbo.experiments.style`;
:func:`method_color` is re-exported from there).

This module imports :mod:`pyro_dturbo.federation`, never the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyro_dturbo.experiments.style import OTHER_COLOR, matrix_axis_labels, method_color
from pyro_dturbo.experiments.tables import machine_info, write_json
from pyro_dturbo.federation.config import METHODS
from pyro_dturbo.federation.simulation import FederatedResult

__all__ = [
    "METHOD_COLORS",
    "method_color",
    "bytes_to_target",
    "cumulative_bytes",
    "summary_lines",
    "write_federated_report",
    "plot_accuracy_vs_bytes",
    "plot_global_support",
]

#: The colour of each method of :data:`~pyro_dturbo.federation.config.METHODS`: the
#: project's one palette (:data:`pyro_dturbo.experiments.style.METHOD_COLORS`) on the
#: federated methods (FedAvg, the reference, in black).
METHOD_COLORS: dict[str, str] = {name: method_color(name) for name in METHODS}
assert OTHER_COLOR not in METHOD_COLORS.values(), "one colour per federated method"

#: What a federated result may be here: the result itself, or its ``report.json`` dict.
Result = FederatedResult | Mapping[str, Any]


def _linestyle(name: str) -> str:
    return "-" if name.startswith("dturbo") else "--"


def _as_report(result: Result) -> Mapping[str, Any]:
    """The ``report.json`` dict of a result (a report dict is returned as it is)."""
    if isinstance(result, FederatedResult):
        return result.report()
    if not isinstance(result, Mapping) or "methods" not in result:
        raise ValueError(
            "expected a FederatedResult or its report dict (with 'methods'), "
            f"got {type(result).__name__}"
        )
    return result


def cumulative_bytes(rounds: Sequence[Mapping[str, Any]]) -> list[int]:
    """Bytes up + down summed over the rounds so far, after each round (integers)."""
    total, out = 0, []
    for record in rounds:
        total += int(record["bytes_up"]) + int(record["bytes_down"])
        out.append(total)
    return out


def bytes_to_target(
    result: Result, target_method: str = "fedavg", points: float = 1.0
) -> dict[str, dict[str, Any]]:
    """How many bytes each method needs to come within ``points`` accuracy points of the
    target method's final accuracy.

    For every method: ``"bytes_to_target"``, the cumulative bytes (up + down) at the end of
    the first round whose accuracy is at least ``target final accuracy - points / 100`` (``None``
    if no round gets there, or without the target method), and ``"bytes_to_target_ratio"``,
    that divided by the target method's own bytes-to-target (``None`` when either is missing).
    Only the records are read.

    Example::

        >>> bytes_to_target(result)["dturbo"]
        {'bytes_to_target': 1834212, 'bytes_to_target_ratio': 0.31}

    :param result: a :class:`~pyro_dturbo.federation.simulation.FederatedResult` or its
        ``report.json`` dict.
    :param str target_method: the reference method (FedAvg by default).
    :param float points: the tolerance, in accuracy points (percent).
    :returns: ``{method: {"bytes_to_target": int | None, "bytes_to_target_ratio": float |
        None}}``, in the result's method order.
    :rtype: dict
    """
    methods = _as_report(result)["methods"]
    reached: dict[str, int | None] = {name: None for name in methods}
    if target_method in methods:
        target = float(methods[target_method]["final"]["accuracy"]) - points / 100.0
        for name, method in methods.items():
            rounds = method["rounds"]
            for record, total in zip(rounds, cumulative_bytes(rounds), strict=True):
                if float(record["accuracy"]) >= target:
                    reached[name] = total
                    break
    reference = reached.get(target_method)
    return {
        name: {
            "bytes_to_target": value,
            "bytes_to_target_ratio": (
                None if value is None or not reference else value / reference
            ),
        }
        for name, value in reached.items()
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summary_lines(result: Result, *, target_method: str = "fedavg") -> list[str]:
    """One line per method: final accuracy, MB up and down (``1 MB = 10^6`` bytes), the mean
    upload density over the rounds after the warm-up (the config's ``warmup_rounds``; over all
    rounds when there are no more), the download density of the last round, the compact
    model's FLOPs as a percentage of the dense model's, and the bytes to come within one
    point of FedAvg's final accuracy as a ratio to FedAvg's own (``n/a`` when not reached or
    without FedAvg; see :func:`bytes_to_target`).

    Example::

        >>> print("\\n".join(summary_lines(result)))  # one line per method, wrapped here
        dturbo  accuracy 0.9694  up   1.230 MB  down   2.010 MB  density up 0.082 mean /
            down 0.075 last  FLOPs   9.1% of dense  bytes to fedavg-1pt 0.27x

    :param result: a :class:`~pyro_dturbo.federation.simulation.FederatedResult` or its
        ``report.json`` dict.
    :param str target_method: the reference of the bytes-to-target ratio.
    :returns: the lines, in the result's method order.
    :rtype: list[str]
    """
    report = _as_report(result)
    methods = report["methods"]
    targets = bytes_to_target(report, target_method)
    warmup = int(report.get("config", {}).get("warmup_rounds", 0))
    width = max((len(name) for name in methods), default=0)
    lines = []
    for name, method in methods.items():
        final, rounds = method["final"], method["rounds"]
        after = rounds[warmup:] if len(rounds) > warmup else rounds
        density_up = _mean([float(r["density_up"]) for r in after])
        density_down = float(rounds[-1]["density_down"]) if rounds else math.nan
        flops = 100.0 * final["flops_compressed"] / final["flops_dense"]
        ratio = targets[name]["bytes_to_target_ratio"]
        lines.append(
            f"{name:<{width}}  accuracy {final['accuracy']:.4f}  "
            f"up {final['bytes_up'] / 1e6:7.3f} MB  down {final['bytes_down'] / 1e6:7.3f} MB  "
            f"density up {density_up:.3f} mean / down {density_down:.3f} last  "
            f"FLOPs {flops:5.1f}% of dense  "
            f"bytes to {target_method}-1pt {'n/a' if ratio is None else f'{ratio:.2f}x'}"
        )
    return lines


def _round_record(record: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for key in ("round", "bytes_up", "bytes_down", "dropped", "rejected", "corrupted"):
        out[key] = int(out[key])
    return out


def write_federated_report(
    result: FederatedResult,
    out_dir: str | Path,
    *,
    plots: bool = True,
    engine: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write a federated run into ``out_dir``: ``report.json`` and, with ``plots``,
    ``accuracy_vs_bytes.png`` (:func:`plot_accuracy_vs_bytes`) and ``support.png``
    (:func:`plot_global_support`, when a D-Turbo-VBI method has a support).

    ``report.json`` is :meth:`FederatedResult.report` (``"config"``, and per method
    ``"rounds"`` and ``"final"``; bytes as integers, accuracy as a fraction) with two more
    top-level keys: ``"summary"`` (``{method: {"bytes_to_target", "bytes_to_target_ratio"}}``,
    see :func:`bytes_to_target`) and ``"machine"`` (:func:`~pyro_dturbo.experiments.tables.
    machine_info`) and ``"engine"`` (``{"name": "inprocess"}``, or what the Flower engine
    passes: ``{"name": "flower", "flower_bytes": {method: [{"flower_bytes_up",
    "flower_bytes_down"} per round]}}``, Flower's own ``ArrayRecord.count_bytes()``).

    Example::

        >>> paths = write_federated_report(run_federated(config), "results/federated")
        >>> sorted(paths)
        ['accuracy_vs_bytes', 'report', 'support']

    :param result: the run.
    :param out_dir: the folder (created if missing).
    :param bool plots: also draw the two figures.
    :param dict engine: the ``"engine"`` entry (default ``{"name": "inprocess"}``).
    :returns: ``{"report": path, "accuracy_vs_bytes": path, "support": path}`` (``"support"``
        only when drawn).
    :rtype: dict[str, pathlib.Path]
    """
    out = Path(out_dir)
    report = result.report()
    for method in report["methods"].values():
        method["rounds"] = [_round_record(r) for r in method["rounds"]]
        final = method["final"]
        for key in ("bytes_up", "bytes_down", "flops_dense", "flops_compressed"):
            final[key] = int(final[key])
    report["summary"] = bytes_to_target(report)
    report["machine"] = machine_info()
    report["engine"] = dict(engine) if engine is not None else {"name": "inprocess"}
    paths = {"report": write_json(out / "report.json", report)}
    if plots:
        paths["accuracy_vs_bytes"] = plot_accuracy_vs_bytes(report, out / "accuracy_vs_bytes.png")
        support = plot_global_support(result, out / "support.png")
        if support is not None:
            paths["support"] = support
    return paths


def _figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: pyplot's backend is left alone
    return fig


def _title(config: Mapping[str, Any]) -> str:
    model = config.get("model", "?")
    if model == "mlp" and config.get("hidden"):
        model = f"mlp {list(config['hidden'])}"
    return (
        f"{config.get('dataset', '?')} / {model}: {config.get('clients', '?')} clients, "
        f"{config.get('rounds', '?')} rounds"
    )


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_accuracy_vs_bytes(
    result: Result, path: str | Path, *, target_method: str = "fedavg", points: float = 1.0
) -> Path:
    """Test accuracy against the cumulative bytes (up + down), one line per method in its
    :data:`METHOD_COLORS` colour (D-Turbo-VBI solid, baselines dashed), on a log axis; with
    FedAvg in the run, a dotted line at its final accuracy minus ``points`` points. The legend
    sits below the axes, off the data.

    :param result: a :class:`~pyro_dturbo.federation.simulation.FederatedResult` or its
        ``report.json`` dict.
    :param path: the file to write (``accuracy_vs_bytes.png``; parent folders are created).
    :param str target_method: the method of the reference line.
    :param float points: the reference line's distance below its final accuracy.
    :returns: the path written.
    :rtype: pathlib.Path
    """
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter, PercentFormatter

    report = _as_report(result)
    methods = report["methods"]
    fig = _figure((7.0, 5.0))
    ax = fig.subplots()
    for name, method in methods.items():
        rounds = method["rounds"]
        if not rounds:
            continue
        ax.plot(
            cumulative_bytes(rounds),
            [float(r["accuracy"]) for r in rounds],
            color=method_color(name),
            linestyle=_linestyle(name),
            marker="o",
            markersize=3,
            linewidth=1.6,
            label=name,
        )
    if target_method in methods:
        level = float(methods[target_method]["final"]["accuracy"]) - points / 100.0
        ax.axhline(
            level,
            color=method_color(target_method),
            linestyle=":",
            linewidth=1.2,
            label=f"{target_method} final - {points:g} point",
        )
    ax.set_xscale("log")
    # bytes as 10 kB, 2 MB, ...; minor ticks labelled too (at 2 and 5) when the range is short
    ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
    low, high = ax.get_xlim()
    if math.log10(high / low) < 2.5:
        ax.xaxis.set_minor_locator(LogLocator(base=10.0, subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(EngFormatter(unit="B"))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set(
        xlabel="cumulative bytes (up + down)",
        ylabel="test accuracy",
        title=_title(report.get("config", {})),
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="x", alpha=0.1)
    ax.tick_params(labelsize=9)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    return _save(fig, path)


def plot_global_support(
    result: FederatedResult, path: str | Path, method: str = "dturbo"
) -> Path | None:
    """The final global support of a D-Turbo-VBI method as heat maps, one panel per layer.

    Each panel shows the layer's kept weights (:attr:`MethodResult.support`) as its
    ``(out, in * kh * kw)`` matrix, rows being units (axes labelled per layer kind, see
    :func:`~pyro_dturbo.experiments.style.matrix_axis_labels`), on one shared two-colour scale
    (pruned / kept); the title names the data set, the model, the method and the density.
    If ``method`` has no support, the first D-Turbo-VBI method of the run that has one is
    drawn instead.

    :param result: the run.
    :param path: the file to write (``support.png``; parent folders are created).
    :param str method: the method to draw.
    :returns: the path written, or ``None`` (nothing written) when no D-Turbo-VBI method of
        the run has a support.
    :rtype: pathlib.Path | None
    """
    from matplotlib.colors import ListedColormap

    candidates = [method] + [n for n in result.methods if n.startswith("dturbo") and n != method]
    chosen = next(
        (n for n in candidates if n in result.methods and result.methods[n].support), None
    )
    if chosen is None:
        return None
    support = result.methods[chosen].support
    assert support is not None
    masks = {
        name: mask.detach().cpu().bool().reshape(mask.shape[0], -1)
        for name, mask in support.items()
    }
    shapes = {name: tuple(mask.shape) for name, mask in support.items()}
    kept = sum(int(m.sum()) for m in masks.values())
    density = kept / sum(m.numel() for m in masks.values())
    ncols = min(3, len(masks))
    nrows = math.ceil(len(masks) / ncols)
    fig = _figure((4.5 * ncols + 0.8, 3.6 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    cmap = ListedColormap(["#f0f0f0", method_color(chosen)])
    image = None
    for ax, (name, mask) in zip(axes, masks.items(), strict=False):
        image = ax.imshow(
            mask.numpy().astype(float),
            vmin=0.0,
            vmax=1.0,
            cmap=cmap,
            aspect="auto",
            interpolation="nearest",
        )
        rows, cols = mask.shape
        xlabel, ylabel = matrix_axis_labels(shapes[name])
        ax.set(
            title=f"{name} ({rows} x {cols}): density {float(mask.double().mean()):.3f}",
            xlabel=xlabel,
            ylabel=ylabel,
        )
        ax.tick_params(labelsize=8)
    for ax in axes[len(masks) :]:
        ax.set_axis_off()
    bar = fig.colorbar(image, ax=list(axes[: len(masks)]), ticks=[0.25, 0.75], shrink=0.8)
    bar.ax.set_yticklabels(["pruned", "kept"])
    fig.suptitle(
        f"global support of {chosen}, {_title(result.config.to_dict())}: density {density:.3f}"
    )
    return _save(fig, path)
