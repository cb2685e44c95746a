"""Structured network compression: Turbo-VBI (chain prior, independent ablation) against
magnitude pruning and mean-field SVI at the same density and sparse variational dropout at its
own, on the digits MLP (experiments of the kind of arXiv:2302.10483, Sec. VI, on a small data
set) or another data set and zoo model (``--dataset``, ``--model``).

Per seed, :func:`~pyro_dturbo.experiments.compress.run_compression` trains the dense MLP, then
Turbo-VBI from its weights (chain prior with the defaults, the same with ``finetune="vb"``, the
chain prior with the ``log_mixture`` weight prior, the authors' demo
(github.com/cxiaab/D-turbo-vbi-FL, commit 8a89cc7)'s grid MRF prior, then the
independent prior as the ablation); the dense network of the chain run is then pruned by
magnitude to the chain run's density (fine-tuned for the same epochs), fitted by SVI
(``AutoNormal``, Gaussian prior) pruned to that density too, and trained by sparse variational
dropout (``sparse-vd``: Molchanov, Ashukha, Vetrov, ICML 2017, arXiv:1701.05369; ``--svd-epochs``
epochs from the dense weights, Adam at ``1e-3``, KL warm-up over 5 epochs, pruned at
``log alpha > 3``; it chooses its own density). ``--methods`` runs a subset (``turbo-chain``
always runs: the others start from its dense network and density).

Writes ``results/compress.json`` (config, machine, per-seed records, medians per method, the
targets as pass / fail, timings), ``results/compress.png`` (accuracy against density per
method, FLOPs ratio, epoch times) and ``results/compress_support.png`` (``q(s = 1)`` of seed 0's
chain network), and prints the table::

    python benchmarks/compress.py                      # 3 seeds, 80 epochs (minutes)
    python benchmarks/compress.py --timing --alexnet   # plus the dedicated epoch timings
    python benchmarks/compress.py --smoke              # tiny sizes, into a temporary folder

Another data set or model (``--dataset``, ``--model``) writes ``compress_<dataset>_<model>.json``
/ ``.png`` / ``_support.png`` instead. The committed results came from
``python benchmarks/compress.py --timing --alexnet`` (``results/compress.json``) and, for
LeNet-300-100 on 5,000 MNIST digits (``results/compress_mnist-5k_lenet300100.json``), from::

    python benchmarks/compress.py --dataset mnist-5k --model lenet300100 --seeds 0 1 2 \\
        --methods turbo-chain turbo-grid turbo-independent magnitude svi sparse-vd

Epoch times are wall-clock on the CPU with ``--threads`` intra-op threads (default 1, for
stable numbers); dense and Turbo epochs are always measured in the same process, one after the
other, and compared as ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_dturbo.compression import (
    apply_masks,
    compression_report,
    magnitude_masks,
    plot_support,
)
from pyro_dturbo.data import ClassificationData, load_dataset
from pyro_dturbo.experiments.compress import (
    COMPRESS_NETWORK,
    STRUCTURE_KEYS,
    CompressConfig,
    magnitude_baseline,
    network_prior,
    run_compression,
    sparse_vd_baseline,
    support_title,
    svi_baseline,
    train_dense,
)
from pyro_dturbo.experiments.style import log_ticks, method_color
from pyro_dturbo.experiments.tables import format_table, machine_info, median, summarise, write_json
from pyro_dturbo.inference.network import NetworkConfig, fit_network
from pyro_dturbo.models.layers import to_sparse_bayes
from pyro_dturbo.models.zoo import MLP, DemoAlexNet

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
METHODS = (
    "turbo-chain",
    "turbo-chain-vb-finetune",
    "turbo-chain-log-mixture",
    "turbo-grid",
    "turbo-independent",
    "magnitude",
    "svi",
    "sparse-vd",
)
FULL = {
    "seeds": [0, 1, 2],
    "epochs": 80,
    "finetune_epochs": 30,
    "dense_epochs": 30,
    "svi_epochs": 30,
    "svd_epochs": 80,
    "hidden": [256, 256],
    "timing_repeats": 5,
    "timing_epochs": 6,
    "alexnet_epochs": 4,
    "alexnet_examples": 2000,
}
SMOKE = {
    "seeds": [0],
    "epochs": 12,
    "finetune_epochs": 4,
    "dense_epochs": 4,
    "svi_epochs": 2,
    "svd_epochs": 3,
    "hidden": [64, 64],
    "timing_repeats": 2,
    "timing_epochs": 3,
    "alexnet_epochs": 2,
    "alexnet_examples": 128,
}
# the compression targets: sparsity, accuracy, FLOPs, structure and the epoch-time budget
TARGETS = {
    "fraction_pruned": 0.95,
    "accuracy_loss_points": 1.0,
    "flops_fraction": 0.10,
    "fraction_in_whole_units": 0.5,
    "epoch_time_ratio": 1.5,
}
# report entries kept in a record (the rest, e.g. the live networks, stay out of the JSON)
REPORT_KEYS = (
    "density",
    "fraction_pruned",
    "weights",
    "weights_kept",
    "accuracy_dense",
    "accuracy_posterior_mean",
    "max_abs_logit_diff",
    "flops_dense",
    "flops_compressed",
    "flops_sparse",
    "flops_ratio",
    "fraction_in_whole_units",
    "neurons_kept",
    "bytes_dense",
    "bytes_compressed",
    "bytes_coo",
    "bytes_rle",
    "epoch_time_dense",
    "epoch_time_turbo",
    "epoch_time_ratio",
    "wall_time_turbo",
    "layers",
    "history",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default results/, a temporary one with --smoke)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, help="Turbo-VBI epochs, fine-tuning included (80)")
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        help="last Turbo epochs under a frozen support; magnitude pruning fine-tunes as long (30)",
    )
    parser.add_argument("--dense-epochs", type=int, help="dense Adam epochs (30)")
    parser.add_argument("--svi-epochs", type=int, help="SVI AutoNormal epochs (30)")
    parser.add_argument(
        "--svd-epochs", type=int, help="sparse variational dropout epochs (80, as Turbo's)"
    )
    parser.add_argument("--hidden", type=int, nargs="+", help="MLP hidden widths (256 256)")
    parser.add_argument("--dataset", default="digits", help="data set (default digits)")
    parser.add_argument(
        "--model", default="mlp", help="zoo model (default mlp; --hidden sizes the MLP only)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        help="methods to run (default all; turbo-chain always runs)",
    )
    parser.add_argument(
        "--timing", action="store_true", help="dedicated dense vs Turbo epoch timings on the MLP"
    )
    parser.add_argument("--timing-repeats", type=int, help="timing repeats (5)")
    parser.add_argument("--timing-epochs", type=int, help="epochs per timing repeat (6)")
    parser.add_argument(
        "--alexnet",
        action="store_true",
        help="dense vs Turbo epoch timings of DemoAlexNet on random CIFAR-shaped data",
    )
    parser.add_argument("--alexnet-epochs", type=int, help="AlexNet epochs per method (4)")
    parser.add_argument("--alexnet-examples", type=int, help="random 3x32x32 examples (2000)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: stable timings)"
    )
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0 <= args.finetune_epochs < args.epochs:
        parser.error(f"--finetune-epochs must be in [0, --epochs), got {args.finetune_epochs}")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="compress_smoke_")) if args.smoke else DEFAULT_OUT
    args.methods = [m for m in METHODS if m == "turbo-chain" or m in (args.methods or METHODS)]
    return args


def _stem(args: argparse.Namespace) -> str:
    """``compress`` for the digits MLP, ``compress_<dataset>_<model>`` otherwise."""
    if (args.dataset, args.model) == ("digits", "mlp"):
        return "compress"
    return f"compress_{args.dataset}_{args.model}"


def _config(
    args: argparse.Namespace,
    seed: int,
    prior: str,
    weight_prior: str = "mean_field",
    finetune: str = "map",
) -> CompressConfig:
    network = COMPRESS_NETWORK.replace(
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        weight_prior=weight_prior,
        finetune=finetune,
    )
    return CompressConfig(
        dataset=args.dataset,
        model=args.model,
        hidden=tuple(args.hidden),
        prior=prior,
        network=network,
        dense_epochs=args.dense_epochs,
        seed=seed,
    )


def _turbo_record(method: str, seed: int, report: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"method": method, "seed": seed}
    record["accuracy"] = report["accuracy_compressed"]
    record.update({key: report[key] for key in REPORT_KEYS if key in report})
    return record


def run_seed(args: argparse.Namespace, seed: int, support_png: Path | None) -> list[dict[str, Any]]:
    """The methods of ``args.methods`` on one seed; returns one record per method."""
    progress = not args.no_progress_bar
    chain = run_compression(_config(args, seed, "chain"), progress_bar=progress)
    records = [_turbo_record("turbo-chain", seed, chain)]
    _print_record(records[-1])
    if support_png is not None:
        config = _config(args, seed, "chain")
        title = f"{support_title(config)}, seed {seed}"
        plot_support(chain["_net"], support_png, title=title)

    variants = {
        "turbo-chain-vb-finetune": _config(args, seed, "chain", finetune="vb"),
        "turbo-chain-log-mixture": _config(args, seed, "chain", weight_prior="log_mixture"),
        "turbo-grid": _config(args, seed, "grid"),
        "turbo-independent": _config(args, seed, "independent"),
    }
    for method, variant in variants.items():
        if method in args.methods:
            report = run_compression(variant, progress_bar=progress)
            records.append(_turbo_record(method, seed, report))
            _print_record(records[-1])

    dense, data = chain["_dense"], chain["_data"]
    base = {"seed": seed, "accuracy_dense": chain["accuracy_dense"]}
    config = chain["config"]
    if "magnitude" in args.methods:
        magnitude = magnitude_baseline(
            dense,
            data,
            chain["density"],
            finetune_epochs=args.finetune_epochs,
            batch_size=config["batch_size"],
            lr=config["lr"],
            seed=seed,
        )
        structure = _magnitude_structure(dense, data, chain["density"])
        records.append({**base, **magnitude, **structure})
        _print_record(records[-1])

    baselines = []
    if "svi" in args.methods:
        baselines.append(
            svi_baseline(
                dense,
                data,
                chain["density"],
                epochs=args.svi_epochs,
                finetune_epochs=args.finetune_epochs,
                batch_size=config["batch_size"],
                lr=config["lr"],
                seed=seed,
            )
        )
    if "sparse-vd" in args.methods:
        baselines.append(
            sparse_vd_baseline(
                dense, data, epochs=args.svd_epochs, batch_size=config["batch_size"], seed=seed
            )
        )
    for record in baselines:
        # these run later in the process than the dense epochs they are compared with: same
        # net, data, batch size and thread count, so the ratio is still like for like
        record["epoch_time_dense"] = chain["epoch_time_dense"]
        record["epoch_time_ratio"] = record["epoch_time"] / chain["epoch_time_dense"]
        records.append({**base, **record})
        _print_record(records[-1])
    return records


def _magnitude_structure(
    dense: torch.nn.Module, data: ClassificationData, density: float
) -> dict[str, Any]:
    """FLOPs, bytes and neurons of the magnitude-pruned network. They depend on the masks
    alone, which fine-tuning keeps, so the masked copy before fine-tuning measures them."""
    report = compression_report(
        apply_masks(dense, magnitude_masks(dense, density)), data.input_shape
    )
    return {key: report[key] for key in STRUCTURE_KEYS}


def _print_record(record: Mapping[str, Any]) -> None:
    flops = record.get("flops_ratio")
    print(
        f"  seed {record['seed']} {record['method']:<18} density {record['density']:.4f}  "
        f"accuracy {record['accuracy']:.4f} (dense {record['accuracy_dense']:.4f})"
        + (f"  FLOPs / {flops:.1f}" if flops is not None else ""),
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# Dedicated timings
# ---------------------------------------------------------------------------------------------


def _epoch_times(
    dense: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    dense_lr: float,
    lr: float,
    prior: str,
    seed: int,
) -> dict[str, list[float]]:
    """Dense Adam epochs on ``dense``, then Turbo-VBI epochs from its weights, in this order.

    The Turbo run has no warm-up (every epoch runs Module B) and its last half is fine-tuning
    under a frozen support, so both phases are timed.
    """
    dense_times = train_dense(
        dense, x, y, epochs=epochs, batch_size=batch_size, lr=dense_lr, seed=seed
    )
    net = to_sparse_bayes(dense)
    config = NetworkConfig(
        epochs=2 * epochs, batch_size=batch_size, lr=lr, finetune_epochs=epochs, seed=seed
    )
    result = fit_network(net, x, y, network_prior(prior), config)
    history = result.history
    return {
        "dense": dense_times,
        "turbo": [h["time"] for h in history[:epochs]],
        "turbo_finetune": [h["time"] for h in history[epochs:]],
        "turbo_w_steps": [h["time_w"] for h in history[:epochs]],
        "turbo_module_b": [h["time_b"] for h in history[:epochs]],
    }


def _summarise_times(runs: Sequence[Mapping[str, list[float]]]) -> dict[str, Any]:
    """Medians over repeats of per-repeat medians (each run's first epoch dropped as warm-up)."""

    def per_run(key: str) -> list[float]:
        out = []
        for run in runs:
            times = run[key][1:] if len(run[key]) > 1 else run[key]
            out.append(statistics.median(times))
        return out

    dense = per_run("dense")
    summary: dict[str, Any] = {"epoch_time_dense": statistics.median(dense)}
    for key in ("turbo", "turbo_finetune", "turbo_w_steps", "turbo_module_b"):
        values = per_run(key)
        summary[f"epoch_time_{key}"] = statistics.median(values)
        summary[f"ratio_{key}"] = statistics.median(
            v / d for v, d in zip(values, dense, strict=True)
        )
    summary["median_ratio"] = summary["ratio_turbo"]
    return summary


def time_mlp(args: argparse.Namespace) -> dict[str, Any]:
    """Dense vs Turbo epochs of the digits MLP, ``--timing-repeats`` times, alternating."""
    config = _config(args, 0, "chain")
    data = load_dataset("digits", seed=0, flatten=True)
    runs = []
    for repeat in range(args.timing_repeats):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(repeat)
            dense = MLP(data.num_features, tuple(args.hidden), data.num_classes)
        runs.append(
            _epoch_times(
                dense,
                data.x_train,
                data.y_train,
                epochs=args.timing_epochs,
                batch_size=config.network.batch_size,
                dense_lr=config.dense_lr,
                lr=config.network.lr,
                prior="chain",
                seed=repeat,
            )
        )
        print(
            f"  timing repeat {repeat}: dense {statistics.median(runs[-1]['dense']):.4f} s, "
            f"Turbo {statistics.median(runs[-1]['turbo']):.4f} s per epoch",
            flush=True,
        )
    return {
        "model": f"mlp {list(args.hidden)}",
        "dataset": "digits",
        "num_train": len(data.y_train),
        "batch_size": config.network.batch_size,
        "repeats": args.timing_repeats,
        "epochs": args.timing_epochs,
        **_summarise_times(runs),
        "runs": runs,
    }


def time_alexnet(args: argparse.Namespace) -> dict[str, Any]:
    """Dense vs Turbo epochs of DemoAlexNet on random 3x32x32 inputs with random labels."""
    config = _config(args, 0, "chain")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.alexnet_examples, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.alexnet_examples,), generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dense = DemoAlexNet()
    times = _epoch_times(
        dense,
        x,
        y,
        epochs=args.alexnet_epochs,
        batch_size=config.network.batch_size,
        dense_lr=config.dense_lr,
        lr=config.network.lr,
        prior="chain",
        seed=0,
    )
    return {
        "model": "DemoAlexNet",
        "data": f"random normal, {args.alexnet_examples} x 3 x 32 x 32, random labels",
        "batch_size": config.network.batch_size,
        "epochs": args.alexnet_epochs,
        **_summarise_times([times]),
        "runs": [times],
    }


# ---------------------------------------------------------------------------------------------
# Summary, targets, plot
# ---------------------------------------------------------------------------------------------


def summarise_methods(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Medians per method over seeds, methods in the order of ``METHODS``."""
    return summarise(
        records,
        ("method",),
        {
            "density": "density",
            "accuracy": "accuracy",
            "accuracy_dense": "accuracy_dense",
            "accuracy_loss_points": lambda rs: median(
                100 * (r["accuracy_dense"] - r["accuracy"]) for r in rs
            ),
            "flops_ratio": "flops_ratio",
            "flops_fraction": lambda rs: median(
                r["flops_compressed"] / r["flops_dense"] for r in rs if "flops_dense" in r
            ),
            "fraction_in_whole_units": "fraction_in_whole_units",
            "bytes_compressed": "bytes_compressed",
            "epoch_time": lambda rs: median(
                r.get("epoch_time_turbo", r.get("epoch_time")) for r in rs
            ),
            "epoch_time_dense": "epoch_time_dense",
            "epoch_time_ratio": "epoch_time_ratio",
        },
        order=lambda key: METHODS.index(key[0]),
    )


def _check(value: float | None, target: float, passes: bool, description: str) -> dict[str, Any]:
    return {"description": description, "value": value, "target": target, "pass": passes}


def check_targets(
    summary: Sequence[Mapping[str, Any]], timing: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """The targets on the chain prior's medians; ``pass`` is what was measured, nothing more."""
    by = {row["method"]: row for row in summary}
    chain, independent = by["turbo-chain"], by.get("turbo-independent")
    pruned = 1.0 - chain["density"]
    loss = chain["accuracy_loss_points"]
    flops = chain["flops_fraction"]
    whole = chain["fraction_in_whole_units"]
    checks = {
        "fraction_pruned": _check(
            pruned,
            TARGETS["fraction_pruned"],
            pruned >= TARGETS["fraction_pruned"],
            "fraction of weights pruned >= 0.95",
        ),
        "accuracy_loss": _check(
            loss,
            TARGETS["accuracy_loss_points"],
            loss <= TARGETS["accuracy_loss_points"],
            "test accuracy lost against dense <= 1 point",
        ),
        "compact_flops": _check(
            flops,
            TARGETS["flops_fraction"],
            flops <= TARGETS["flops_fraction"],
            "compact model FLOPs <= 10% of dense",
        ),
        "whole_units": _check(
            whole,
            TARGETS["fraction_in_whole_units"],
            whole > TARGETS["fraction_in_whole_units"],
            "most pruned weights in whole rows / columns",
        ),
    }
    if independent is not None:  # not run when --methods leaves it out
        checks["chain_beats_independent"] = _check(
            chain["accuracy"] - independent["accuracy"],
            0.0,
            chain["accuracy"] > independent["accuracy"],
            "chain prior accuracy > independent prior accuracy "
            f"(densities {chain['density']:.4f} vs {independent['density']:.4f})",
        )
    ratio = chain["epoch_time_ratio"]
    checks["epoch_time_ratio"] = _check(
        ratio,
        TARGETS["epoch_time_ratio"],
        ratio <= TARGETS["epoch_time_ratio"],
        "Turbo / dense epoch time <= 1.5 (whole runs: warm-up, selection and fine-tuning)",
    )
    if timing is not None:
        ratio = timing["median_ratio"]
        checks["epoch_time_ratio_timing"] = _check(
            ratio,
            TARGETS["epoch_time_ratio"],
            ratio <= TARGETS["epoch_time_ratio"],
            "Turbo / dense epoch time <= 1.5 (dedicated timing, Module B every epoch)",
        )
    return checks


def figure(records: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]) -> Any:
    """The figure of :func:`plot`, not saved: accuracy against density per method (dense as a
    line), FLOPs ratio, epoch times (horizontal bars, the method names level beside them);
    every method in its ``method_color`` colour (the project's one palette), one legend below
    the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=(15, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_flops, ax_time = fig.subplots(1, 3)
    for method in METHODS:
        rs = [r for r in records if r["method"] == method]
        if not rs:
            continue
        ax_acc.scatter(
            [max(r["density"], 1e-5) for r in rs],
            [r["accuracy"] for r in rs],
            color=method_color(method),
            label=method,
            alpha=0.8,
        )
    dense = method_color("dense")
    dense_accuracy = statistics.median(r["accuracy_dense"] for r in records)
    ax_acc.axhline(dense_accuracy, color=dense, linestyle="--", label="dense")
    ax_acc.axhline(dense_accuracy - 0.01, color=dense, linestyle=":", label="dense - 1 point")
    ax_acc.set(xscale="log", xlabel="density (kept weights)", ylabel="test accuracy")
    log_ticks(ax_acc.xaxis)
    ax_acc.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax_acc.set_title("Accuracy against density (one point per seed)")

    # horizontal bars: the long method names read level, one per row
    rows = [r for r in summary if r["flops_ratio"] is not None]
    bars = ax_flops.barh(
        [r["method"] for r in rows],
        [r["flops_ratio"] for r in rows],
        color=[method_color(r["method"]) for r in rows],
    )
    ax_flops.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    target = 1 / TARGETS["flops_fraction"]
    ax_flops.axvline(target, color=dense, linestyle="--")
    ax_flops.set(xscale="log", xlabel="dense FLOPs / compact FLOPs (median)")
    ax_flops.margins(x=0.15)
    log_ticks(ax_flops.xaxis)
    ax_flops.set_title("FLOPs reduction of the compact model")

    names = ["dense"] + [r["method"] for r in summary if r["epoch_time"] is not None]
    dense_time = median(r["epoch_time_dense"] for r in summary)
    values = [dense_time] + [r["epoch_time"] for r in summary if r["epoch_time"] is not None]
    bars = ax_time.barh(names, values, color=[method_color(n) for n in names])
    ax_time.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    ax_time.set(xlabel="seconds per epoch (median)")
    ax_time.margins(x=0.15)
    ax_time.set_title("Epoch time (same process, same threads)")
    for ax in (ax_flops, ax_time):
        ax.invert_yaxis()  # the first method on top
        ax.tick_params(axis="y", labelsize=8)
    for ax in (ax_acc, ax_flops, ax_time):
        ax.grid(alpha=0.3)
    handles, labels = ax_acc.get_legend_handles_labels()
    handles.append(Line2D([], [], color=dense, linestyle="--"))
    labels.append(f"FLOPs target ({target:g}x)")
    fig.legend(
        handles, labels, loc="outside lower center", ncols=5, fontsize="small", frameon=False
    )
    return fig


def plot(
    records: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], path: Path
) -> Path:
    """Accuracy against density per method (dense as a line), FLOPs ratio, epoch times
    (:func:`figure`), saved."""
    fig = figure(records, summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


TABLE_COLUMNS = (
    ("method", "method", ""),
    ("density", "density", ".4f"),
    ("acc", "accuracy", ".4f"),
    ("dense", "accuracy_dense", ".4f"),
    ("loss pt", "accuracy_loss_points", ".2f"),
    ("FLOPs/", "flops_ratio", ".1f"),
    ("whole", "fraction_in_whole_units", ".2f"),
    ("epoch s", "epoch_time", ".4f"),
    ("x dense", "epoch_time_ratio", ".2f"),
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = {
        "smoke": args.smoke,
        "dataset": args.dataset,
        "model": args.model,
        "hidden": list(args.hidden),
        "seeds": list(args.seeds),
        "methods": list(args.methods),
        "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "dense_epochs": args.dense_epochs,
        "svi_epochs": args.svi_epochs,
        "svd_epochs": args.svd_epochs,
        "threads": args.threads,
        "compress_config": _config(args, 0, "chain").to_dict(),
        "priors": {kind: network_prior(kind).to_dict() for kind in ("chain", "independent")},
        "targets": TARGETS,
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(args)
    paths = {
        "json": out / f"{stem}.json",
        "png": out / f"{stem}.png",
        "support_png": out / f"{stem}_support.png",
    }

    records: list[dict[str, Any]] = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        first = seed == args.seeds[0]
        records.extend(run_seed(args, seed, paths["support_png"] if first else None))
    summary = summarise_methods(records)

    timing = alexnet = None
    if args.timing:
        print("timing: digits MLP, dense vs Turbo epochs", flush=True)
        timing = time_mlp(args)
    if args.alexnet:
        print("timing: DemoAlexNet on random CIFAR-shaped data", flush=True)
        alexnet = time_alexnet(args)
    checks = check_targets(summary, timing)

    report = {
        "config": config,
        "machine": machine_info(),
        "wall_time_s": time.perf_counter() - start,
        "summary": summary,
        "targets": checks,
        "timing": timing,
        "alexnet_timing": alexnet,
        "records": records,
    }
    write_json(paths["json"], report)
    plot(records, summary, paths["png"])

    print()
    print(format_table(summary, TABLE_COLUMNS, style="text"))
    print("\n(medians over seeds; loss pt = points of test accuracy lost against dense;")
    print(" FLOPs/ = dense FLOPs / compact FLOPs; whole = pruned weights in whole rows/columns)")
    if timing is not None:
        print(
            f"\nMLP epoch timing ({timing['repeats']} repeats): dense "
            f"{timing['epoch_time_dense']:.4f} s, Turbo {timing['epoch_time_turbo']:.4f} s "
            f"(w-steps {timing['epoch_time_turbo_w_steps']:.4f} s, Module B "
            f"{timing['epoch_time_turbo_module_b']:.4f} s), fine-tuning "
            f"{timing['epoch_time_turbo_finetune']:.4f} s; "
            f"median ratio {timing['median_ratio']:.2f}"
        )
    if alexnet is not None:
        print(
            f"AlexNet epoch timing ({alexnet['epochs']} epochs): dense "
            f"{alexnet['epoch_time_dense']:.3f} s, Turbo {alexnet['epoch_time_turbo']:.3f} s, "
            f"fine-tuning {alexnet['epoch_time_turbo_finetune']:.3f} s; "
            f"ratio {alexnet['median_ratio']:.2f}"
        )
    print("\ntargets (turbo-chain medians):")
    for check in checks.values():
        value = check["value"]
        shown = "-" if value is None else f"{value:.4g}"
        print(f"  {'PASS' if check['pass'] else 'FAIL'}  {check['description']}: {shown}")
    print(
        f"\n({torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{report['wall_time_s']:.0f} s) -> {paths['json']}, {paths['png']}, "
        f"{paths['support_png']}"
    )
    return {"records": records, "summary": summary, "targets": checks, "paths": paths}


if __name__ == "__main__":
    main()
