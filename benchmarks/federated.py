"""Federated compression: D-Turbo-VBI (product of sites, moment averaging, independent prior)
against FedAvg, FedAvg + top-k and STC on real bytes (experiments of the kind of
arXiv:2404.07532, on small data sets).

For every cell of the grid (data set x number of clients x partition) and every seed,
:func:`~pyro_dturbo.federation.simulation.run_federated` runs all methods from the same initial
network on the same partition, every payload counted in bytes. Per method it records the
final test accuracy, the bytes up and down, the mean upload density over the rounds after the
warm-up against the download density of the last round (and their ratio), the compact model's
FLOPs as a percentage of the dense model's, and the bytes (up + down) until the first round
within one point of FedAvg's final accuracy, as a ratio to FedAvg's own bytes-to-target
(:func:`~pyro_dturbo.experiments.federated.bytes_to_target`; ``reached`` says whether the
method got there). Medians over seeds per (data set, clients, partition, method).

``--server-timing`` times the D-Turbo-VBI server alone (``broadcast`` + ``aggregate``) for
K = 10, 100, 1000 light simulated clients on the digits MLP with hidden [64]: the replies are
synthesised without training (:class:`LightClient`: each client's downlink decoded, its mean
perturbed a little, a variance set inside its cavity's, re-encoded in the client's reply
format); one warm round, then the median of three, for the product rule and moment averaging.
Seconds per round, per client, and ``t(K) / K`` against K = 10 (about 1 when the server's
cost grows linearly in K).

Writes ``results/federated.json`` (the exact commands first, the base config, the machine,
per-seed records with their per-round curves, medians, ``"server_timing"``),
``results/federated_accuracy_vs_bytes.png`` (accuracy against cumulative bytes, one panel per
(data set, partition) at 10 clients, seed 0) and ``results/federated_bytes_to_target.png``
(bytes-to-target ratio per method), and prints the median table. The committed results are
(about 13 minutes on two shared CPU cores)::

    python benchmarks/federated.py --datasets digits --clients 10 \\
        --partitions iid dirichlet --seeds 0 1 2 --server-timing --no-progress-bar
    python benchmarks/federated.py --datasets mnist1d --clients 10 --partitions iid \\
        --seeds 0 --server-timing --merge --no-progress-bar

The second adds its cell to the first's JSON (``--merge`` keeps the records of the other
cells, recomputes the medians and appends its command) and replaces its server timing: the
first run's simulated clients sent uninformative replies, so the server pruned every weight
after one round and timed empty payloads; the committed timing is the second's. Other uses::

    python benchmarks/federated.py                 # the full grid (an hour or more on two cores)
    python benchmarks/federated.py --quick         # a small grid, into a temporary folder
    python benchmarks/federated.py --server-timing --no-grid

Times are wall-clock on the CPU with ``--threads`` intra-op threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_dturbo.experiments.federated import (
    METHOD_COLORS,
    bytes_to_target,
    cumulative_bytes,
    method_color,
)
from pyro_dturbo.experiments.tables import format_table, machine_info, median, summarise, write_json
from pyro_dturbo.federation.codec import Block, Message, decode_message, encode_message
from pyro_dturbo.federation.config import METHODS, FederatedConfig
from pyro_dturbo.federation.server import UP, DTurboServer
from pyro_dturbo.federation.simulation import load_federated_data, run_federated
from pyro_dturbo.models.layers import to_sparse_bayes
from pyro_dturbo.models.zoo import MLP

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "federated_digits.yaml"
DEFAULT_OUT = ROOT / "results" / "federated.json"
DIRICHLET_ALPHA = 0.5
TARGET_METHOD = "fedavg"
TARGET_POINTS = 1.0
FULL = {
    "datasets": ["digits", "mnist1d"],
    "clients": [10, 50],
    "partitions": ["iid", "dirichlet"],
    "seeds": [0, 1, 2],
    "timing_clients": [10, 100, 1000],
}
QUICK = {
    "datasets": ["digits"],
    "clients": [5],
    "partitions": ["iid", "dirichlet"],
    "seeds": [0],
    "rounds": 6,
    "hidden": [32],
    "timing_clients": [10, 100],
}
# the server timing: the network, the rounds and the aggregation rules
TIMING_HIDDEN = (64,)
TIMING_WARM_ROUNDS = 1
TIMING_ROUNDS = 3
TIMING_AGGREGATIONS = ("product", "moment_average")
# per-round fields kept in a record's curve (the rest of a RoundRecord is 0 without faults)
ROUND_KEYS = ("round", "accuracy", "bytes_up", "bytes_down", "density_up", "density_down")
CELL_KEYS = ("dataset", "clients", "partition")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid for a smoke run")
    parser.add_argument("--datasets", nargs="+", help="data sets (digits mnist1d)")
    parser.add_argument("--clients", type=int, nargs="+", help="numbers of clients (10 50)")
    parser.add_argument(
        "--partitions",
        nargs="+",
        choices=("iid", "dirichlet"),
        help=f"partitions (iid dirichlet; Dirichlet alpha {DIRICHLET_ALPHA})",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (0 1 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds (default: the config's); warm-up and fine-tuning rounds scale with it",
    )
    parser.add_argument("--hidden", type=int, nargs="+", help="MLP hidden widths (the config's)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods (default: all six)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="base FederatedConfig YAML (default configs/federated_digits.yaml; "
        "FederatedConfig() defaults when it does not exist)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results JSON (default results/federated.json; a temporary folder with --quick); "
        "the PNGs go next to it",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add to an existing --out JSON: keep its records of the cells not run now (and "
        "its server timing unless timed now), recompute the medians, append the command",
    )
    parser.add_argument(
        "--server-timing",
        action="store_true",
        help="time the D-Turbo-VBI server alone for K = 10, 100, 1000 simulated clients",
    )
    parser.add_argument(
        "--timing-clients", type=int, nargs="+", help="K of --server-timing (10 100 1000)"
    )
    parser.add_argument("--no-grid", action="store_true", help="skip the federated runs")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: stable timings)"
    )
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    defaults = {**FULL, **QUICK} if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="federated_quick_")) / "federated.json"
            if args.quick
            else DEFAULT_OUT
        )
    if args.rounds is not None and args.rounds < 2:
        parser.error(f"--rounds must be >= 2, got {args.rounds}")
    return args


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def base_config(args: argparse.Namespace) -> FederatedConfig:
    """The config file's experiment (or the library defaults), with --rounds / --hidden."""
    config = FederatedConfig.from_yaml(args.config) if args.config.exists() else FederatedConfig()
    changes: dict[str, Any] = {"methods": tuple(args.methods)}
    if args.hidden is not None:
        changes["hidden"] = tuple(args.hidden)
    if args.rounds is not None and args.rounds != config.rounds:
        # the warm-up (and a fine-tuning the config sets) keep their share of the rounds;
        # finetune_rounds None keeps the library's rule (all rounds after the decision rounds)
        rounds = args.rounds
        warmup = min(max(1, round(config.warmup_rounds * rounds / config.rounds)), rounds - 1)
        changes.update(rounds=rounds, warmup_rounds=warmup)
        if config.finetune_rounds is not None:
            finetune = round(config.finetune_rounds * rounds / config.rounds)
            # the support freezes after the warm-up
            changes["finetune_rounds"] = max(0, min(finetune, rounds - warmup - 1))
    return config.replace(**changes)


def cell_config(
    base: FederatedConfig, dataset: str, clients: int, partition: str, seed: int
) -> FederatedConfig:
    spec: dict[str, Any] = {"type": partition}
    if partition == "dirichlet":
        spec["alpha"] = DIRICHLET_ALPHA
    return base.replace(dataset=dataset, clients=clients, partition=spec, seed=seed)


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------


def method_records(
    result: Any, cell: Mapping[str, Any], seed: int, warmup_rounds: int
) -> list[dict[str, Any]]:
    """One record per method of one run (``result``: a FederatedResult)."""
    targets = bytes_to_target(result, TARGET_METHOD, TARGET_POINTS)
    records = []
    for name, method in result.methods.items():
        rounds = [r.to_dict() for r in method.rounds]
        final = method.final
        after = [r for r in rounds if r["round"] > warmup_rounds] or rounds
        density_up = statistics.fmean(r["density_up"] for r in after)
        density_down = float(rounds[-1]["density_down"])
        target = targets[name]
        records.append(
            {
                **cell,
                "seed": seed,
                "method": name,
                "accuracy": float(final["accuracy"]),
                "bytes_up": int(final["bytes_up"]),
                "bytes_down": int(final["bytes_down"]),
                "bytes_total": int(final["bytes_up"]) + int(final["bytes_down"]),
                "density_up_mean": density_up,
                "density_down_final": density_down,
                "density_up_down_ratio": density_up / density_down if density_down else None,
                "density_final": float(final["density"]),
                "flops_dense": int(final["flops_dense"]),
                "flops_compressed": int(final["flops_compressed"]),
                "flops_percent": 100.0 * final["flops_compressed"] / final["flops_dense"],
                "bytes_to_target": target["bytes_to_target"],
                "bytes_to_target_ratio": target["bytes_to_target_ratio"],
                "reached": target["bytes_to_target"] is not None,
                "time_s": float(sum(r["time_s"] for r in rounds)),
                "rounds": [{k: r[k] for k in ROUND_KEYS} for r in rounds],
            }
        )
    return records


def run_grid(args: argparse.Namespace, base: FederatedConfig) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for dataset in args.datasets:
        for clients in args.clients:
            for partition in args.partitions:
                cell = {"dataset": dataset, "clients": clients, "partition": partition}
                for seed in args.seeds:
                    config = cell_config(base, dataset, clients, partition, seed)
                    print(f"{dataset}, {clients} clients, {partition}, seed {seed}", flush=True)
                    start = time.perf_counter()
                    result = run_federated(config, progress_bar=not args.no_progress_bar)
                    new = method_records(result, cell, seed, config.warmup_rounds)
                    for record in new:
                        _print_record(record)
                    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
                    records.extend(new)
    return records


def _print_record(record: Mapping[str, Any]) -> None:
    ratio = record["bytes_to_target_ratio"]
    print(
        f"  {record['method']:<18} accuracy {record['accuracy']:.4f}  "
        f"MB up {record['bytes_up'] / 1e6:7.3f} down {record['bytes_down'] / 1e6:7.3f}  "
        f"density up {record['density_up_mean']:.3f} / down {record['density_down_final']:.3f}  "
        f"FLOPs {record['flops_percent']:5.1f}%  "
        f"to target {'not reached' if ratio is None else f'{ratio:.2f}x'}  "
        f"{record['time_s']:.0f} s",
        flush=True,
    )


def _reached(records: Sequence[Mapping[str, Any]]) -> str:
    return f"{sum(bool(r['reached']) for r in records)}/{len(records)}"


SUMMARY_FIELDS: dict[str, Any] = {
    "accuracy": "accuracy",
    "bytes_up": "bytes_up",
    "bytes_down": "bytes_down",
    "bytes_total": "bytes_total",
    "mb_up": lambda rs: median(r["bytes_up"] / 1e6 for r in rs),
    "mb_down": lambda rs: median(r["bytes_down"] / 1e6 for r in rs),
    "density_up_mean": "density_up_mean",
    "density_down_final": "density_down_final",
    "density_up_down_ratio": "density_up_down_ratio",
    "density_final": "density_final",
    "flops_percent": "flops_percent",
    "bytes_to_target": "bytes_to_target",
    "bytes_to_target_ratio": "bytes_to_target_ratio",
    "reached": _reached,
    "time_s": "time_s",
}


def summarise_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Medians over seeds per (data set, clients, partition, method) (``reached``: how many
    seeds got to the target; the ratio's median is over those that did)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    partitions = list(dict.fromkeys(r["partition"] for r in records))

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        dataset, clients, partition, method = key
        rank = METHODS.index(method) if method in METHODS else len(METHODS)
        return datasets.index(dataset), clients, partitions.index(partition), rank

    return summarise(records, (*CELL_KEYS, "method"), SUMMARY_FIELDS, order=order)


TABLE_COLUMNS = (
    ("data", "dataset", ""),
    ("K", "clients", "d"),
    ("partition", "partition", ""),
    ("method", "method", ""),
    ("seeds", "runs", "d"),
    ("acc", "accuracy", ".4f"),
    ("MB up", "mb_up", ".3f"),
    ("MB down", "mb_down", ".3f"),
    ("dens up", "density_up_mean", ".3f"),
    ("dens down", "density_down_final", ".3f"),
    ("up/down", "density_up_down_ratio", ".2f"),
    ("FLOPs %", "flops_percent", ".1f"),
    ("B->target", "bytes_to_target_ratio", ".3f"),
    ("reached", "reached", ""),
    ("time s", "time_s", ".0f"),
)


# ---------------------------------------------------------------------------------------------
# Server timing
# ---------------------------------------------------------------------------------------------


class LightClient:
    """A simulated client that replies without training, in the client's reply format.

    It keeps what a real client holds between rounds (the support it was sent, its cavity's
    precision) and answers a downlink with its mean perturbed by ``noise`` standard deviations,
    the variance ``1 / (cavity precision + data_precision)`` (inside the cavity, so every site
    is proper; fine-tuning rounds: means only), its biases as received, ``num_examples`` and
    the round acknowledged; the support is not resent (the server sent it). The data precision
    is that of a client whose data pin the weights down: the server then keeps most of them
    active, as in a trained network, instead of pruning an uninformed model to nothing.
    """

    def __init__(
        self,
        num_examples: int,
        generator: torch.Generator,
        noise: float = 1e-2,
        data_precision: float = 1e4,
    ):
        self.num_examples = num_examples
        self.generator = generator
        self.noise = noise
        self.data_precision = data_precision
        self.known: dict[str, torch.Tensor] = {}
        self.prior_precision: dict[str, torch.Tensor] = {}

    def reply(self, payload: bytes, codec: str, value_dtype: str) -> bytes:
        message = decode_message(payload)
        blocks: dict[str, Block] = {}
        for name, block in message.blocks.items():
            if "value" in block.values:  # a bias (dense): sent back as it came
                blocks[name] = Block(tuple(block.shape), None, {"value": block.values["value"]})
                continue
            mask = block.mask if block.mask is not None else self.known[name]
            self.known[name] = mask = mask.to(torch.bool).reshape(block.shape)
            mean = block.values["mean"]
            if "prior_precision" in block.values:
                precision = self.prior_precision.setdefault(
                    name, torch.ones(mask.shape, dtype=mean.dtype)
                )
                precision[mask] = block.values["prior_precision"].to(mean.dtype)
            variance = 1.0 / (self.prior_precision[name][mask] + self.data_precision)
            shift = torch.randn(mean.shape, generator=self.generator, dtype=mean.dtype)
            values = {"mean": mean + self.noise * variance.sqrt() * shift}
            if "variance" in block.values:
                values["variance"] = variance
            blocks[name] = Block(
                tuple(block.shape),
                mask,
                values,
                log_fields=("variance",) if "variance" in values else (),
                known_mask=True,
            )
        scalars = {"num_examples": self.num_examples, "ack": message.round}
        reply = Message(UP, message.round, message.client, blocks, scalars=scalars)
        return encode_message(reply, codec, value_dtype)


def time_server(
    base: FederatedConfig, clients: int, aggregation: str, seed: int = 0
) -> dict[str, Any]:
    """Seconds per round of ``broadcast`` + ``aggregate`` for ``clients`` simulated clients."""
    config = base.replace(
        dataset="digits", model="mlp", hidden=TIMING_HIDDEN, clients=clients, seed=seed
    )
    config = config.replace(partition={"type": "iid"})
    data, parts = load_federated_data(config)
    sizes = [len(idx) for idx in parts]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        plain = MLP(data.num_features, TIMING_HIDDEN, data.num_classes)
    net = to_sparse_bayes(plain.to(dtype=data.x_train.dtype), init_scale=config.init_scale)
    server = DTurboServer(
        net,
        config.sparse_prior(),
        sizes,
        aggregation=aggregation,
        site_step=config.site_step,
        init_precision=config.init_precision,
        warmup_rounds=0,  # every timed round is a round of the rule itself
        codec=config.codec,
        value_dtype=config.value_dtype,
    )
    generator = torch.Generator().manual_seed(seed)
    light = [LightClient(n, generator) for n in sizes]
    ids = list(range(clients))
    rounds = []
    for _ in range(TIMING_WARM_ROUNDS + TIMING_ROUNDS):
        density = server.density_down()
        t0 = time.perf_counter()
        payloads = server.broadcast(ids)
        t_broadcast = time.perf_counter() - t0
        replies = {
            k: light[k].reply(p, config.codec, config.value_dtype) for k, p in payloads.items()
        }
        t0 = time.perf_counter()
        report = server.aggregate(replies)
        t_aggregate = time.perf_counter() - t0
        if report.rejected:
            raise RuntimeError(f"the server rejected synthetic replies: {report.rejected}")
        rounds.append(
            {
                "broadcast_s": t_broadcast,
                "aggregate_s": t_aggregate,
                "round_s": t_broadcast + t_aggregate,
                "density_down": density,
                "bytes_down": sum(len(p) for p in payloads.values()),
                "bytes_up": sum(len(p) for p in replies.values()),
            }
        )
    timed = rounds[TIMING_WARM_ROUNDS:]
    seconds = statistics.median(r["round_s"] for r in timed)
    return {
        "aggregation": aggregation,
        "clients": clients,
        "seconds_per_round": seconds,
        "broadcast_s": statistics.median(r["broadcast_s"] for r in timed),
        "aggregate_s": statistics.median(r["aggregate_s"] for r in timed),
        "seconds_per_client": seconds / clients,
        "density_down": statistics.median(r["density_down"] for r in timed),
        "rounds": rounds,
    }


def server_timing(args: argparse.Namespace, base: FederatedConfig) -> dict[str, Any]:
    rows = []
    for aggregation in TIMING_AGGREGATIONS:
        reference = None
        for clients in args.timing_clients:
            row = time_server(base, clients, aggregation)
            if reference is None:
                reference = row
            # t(K) / K against the smallest K: roughly constant when the cost grows linearly
            row["per_client_ratio"] = row["seconds_per_client"] / reference["seconds_per_client"]
            row["relative_to_clients"] = reference["clients"]
            print(
                f"  server {aggregation:<15} K {clients:>5}: {row['seconds_per_round']:.4f} s "
                f"per round ({row['seconds_per_client'] * 1e3:.3f} ms per client)",
                flush=True,
            )
            rows.append(row)
    return {
        "model": f"mlp {list(TIMING_HIDDEN)}",
        "dataset": "digits",
        "warm_rounds": TIMING_WARM_ROUNDS,
        "timed_rounds": TIMING_ROUNDS,
        "codec": base.codec,
        "value_dtype": base.value_dtype,
        "threads": torch.get_num_threads(),
        "note": (
            "broadcast + aggregate of a DTurboServer (warmup_rounds=0) with every client in "
            "every round; replies synthesised without training (LightClient: downlink "
            "decoded, mean perturbed, variance 1 / (cavity precision + 1e4), the client's reply "
            "format); median of the timed rounds after the warm ones (broadcast_s and "
            "aggregate_s are their own medians); per_client_ratio = (t(K) / K) / (t(K0) / K0), "
            "K0 the smallest K"
        ),
        "rows": rows,
    }


TIMING_COLUMNS = (
    ("aggregation", "aggregation", ""),
    ("K", "clients", "d"),
    ("s / round", "seconds_per_round", ".4f"),
    ("broadcast s", "broadcast_s", ".4f"),
    ("aggregate s", "aggregate_s", ".4f"),
    ("density", "density_down", ".3f"),
    ("ms / client", "ms_per_client", ".3f"),
    ("t(K)/K vs K=10", "per_client_ratio", ".2f"),
)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _methods_in(records: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {r["method"] for r in records}
    return [m for m in METHOD_COLORS if m in present]


def plot_accuracy_vs_bytes(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Seed-0 curves (the smallest seed run) at 10 clients (the fewest run, without 10), one
    panel per (data set, partition); log x; the legend below the panels."""
    from matplotlib.ticker import EngFormatter, PercentFormatter

    if not records:
        return None
    counts = sorted({r["clients"] for r in records})
    clients = 10 if 10 in counts else counts[0]
    chosen = [r for r in records if r["clients"] == clients]
    panels = list(dict.fromkeys((r["dataset"], r["partition"]) for r in chosen))
    fig = _figure((5.2 * len(panels), 4.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (dataset, partition) in zip(axes, panels, strict=True):
        cell = [r for r in chosen if r["dataset"] == dataset and r["partition"] == partition]
        seed = min(r["seed"] for r in cell)
        by_method = {r["method"]: r for r in cell if r["seed"] == seed}
        for name in _methods_in(cell):
            if name not in by_method:
                continue
            rounds = by_method[name]["rounds"]
            ax.plot(
                cumulative_bytes(rounds),
                [r["accuracy"] for r in rounds],
                color=method_color(name),
                linestyle="-" if name.startswith("dturbo") else "--",
                marker="o",
                markersize=2.5,
                linewidth=1.5,
                label=name,
            )
        if TARGET_METHOD in by_method:
            level = by_method[TARGET_METHOD]["accuracy"] - TARGET_POINTS / 100.0
            ax.axhline(
                level,
                color=method_color(TARGET_METHOD),
                linestyle=":",
                linewidth=1.0,
                label=f"{TARGET_METHOD} final - {TARGET_POINTS:g} point",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set(
            xlabel="cumulative bytes (up + down)",
            ylabel="test accuracy",
            title=f"{dataset}, {partition}, {clients} clients, seed {seed}",
        )
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=9)
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=min(7, len(handles)),
        fontsize=9,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_bytes_to_target(
    records: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], path: Path
) -> Path | None:
    """Per cell, the bytes-to-target ratio of every method: the median over the seeds that
    reached the target as a bar, each such seed as a dot; ``x`` marks a method that reached
    it in no seed."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    if not records:
        return None
    cells = list(dict.fromkeys(tuple(r[k] for k in CELL_KEYS) for r in records))
    methods = _methods_in(records)
    fig = _figure((max(4.0, 0.75 * len(methods) + 1.5) * len(cells), 4.4))
    axes = fig.subplots(1, len(cells), squeeze=False, sharey=True)[0]
    values = [r["bytes_to_target_ratio"] for r in records if r["bytes_to_target_ratio"]]
    top = max(values, default=1.0) * 2.0
    bottom = min(values, default=1.0) / 1.6
    for ax, cell in zip(axes, cells, strict=True):
        rows = {r["method"]: r for r in summary if tuple(r[k] for k in CELL_KEYS) == cell}
        for i, name in enumerate(methods):
            row = rows.get(name)
            ratio = row["bytes_to_target_ratio"] if row else None
            if ratio is None:
                ax.scatter([i], [top / 1.5], marker="x", color=method_color(name), s=50)
                ax.annotate(
                    "not\nreached",
                    (i, top / 1.5),
                    xytext=(0, -6),
                    textcoords="offset points",
                    ha="center",
                    va="top",
                    fontsize=7,
                )
                continue
            ax.bar(
                [i], [ratio - bottom], bottom=bottom, color=method_color(name), alpha=0.8, width=0.7
            )
            ax.annotate(
                f"{ratio:.2f}\n({row['reached']})",
                (i, ratio),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
            seeds = [
                r["bytes_to_target_ratio"]
                for r in records
                if tuple(r[k] for k in CELL_KEYS) == cell
                and r["method"] == name
                and r["bytes_to_target_ratio"] is not None
            ]
            ax.scatter([i] * len(seeds), seeds, color="k", s=10, zorder=3)
        ax.axhline(1.0, color=method_color(TARGET_METHOD), linestyle=":", linewidth=1.0)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        dataset, clients, partition = cell
        ax.set_title(f"{dataset}, {partition}, {clients} clients", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel(f"bytes to {TARGET_METHOD} final - {TARGET_POINTS:g} pt / {TARGET_METHOD}'s")
    fig.suptitle(
        "bytes (up + down) to come within one point of FedAvg's final accuracy, "
        "relative to FedAvg (median; dots: seeds; x: not reached)",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _git_state() -> dict[str, Any]:
    """The commit the library ran at and the files of the package that differed from it."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "pyro_dturbo")
    return {"commit": git("rev-parse", "HEAD") or None, "package_changes": changed.splitlines()}


def _config_file(path: Path) -> str | None:
    """The base config's path, relative to the repository when inside it (``None``: none)."""
    if not path.exists():
        return None
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def _cell_of(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(record[k] for k in (*CELL_KEYS, "seed"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/federated.py", *argv])
    git_state = _git_state()  # before the runs: the code they import
    start = time.perf_counter()
    base = base_config(args)
    out: Path = args.out
    paths = {
        "json": out,
        "accuracy_vs_bytes": out.with_name(f"{out.stem}_accuracy_vs_bytes.png"),
        "bytes_to_target": out.with_name(f"{out.stem}_bytes_to_target.png"),
    }

    records = [] if args.no_grid else run_grid(args, base)
    timing = None
    if args.server_timing:
        print("server timing", flush=True)
        timing = server_timing(args, base)
    wall = time.perf_counter() - start

    grid = {
        "datasets": [] if args.no_grid else list(args.datasets),
        "clients": [] if args.no_grid else list(args.clients),
        "partitions": [] if args.no_grid else list(args.partitions),
        "seeds": [] if args.no_grid else list(args.seeds),
        "dirichlet_alpha": DIRICHLET_ALPHA,
        "timing_clients": list(args.timing_clients) if args.server_timing else [],
    }
    config = {**base.to_dict(), "freeze_round": getattr(base, "freeze_round", None)}
    run = {
        "command": command,
        "grid": grid,
        "wall_time_s": wall,
        "machine": machine_info(),
        "git": git_state,
        "config": config,
    }
    previous: dict[str, Any] = {}
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        ran = {_cell_of(r) for r in records}
        records = [r for r in previous.get("records", []) if _cell_of(r) not in ran] + records
        if timing is None:
            timing = previous.get("server_timing")
    runs = [*previous.get("runs", []), run]
    summary = summarise_records(records)
    report = {
        "command": [r["command"] for r in runs],
        "description": __doc__.split("\n\n")[0].replace("\n", " "),
        "config": config,
        "config_file": _config_file(args.config),
        "target": {"method": TARGET_METHOD, "points": TARGET_POINTS},
        "machine": machine_info(),
        "wall_time_s": sum(r["wall_time_s"] for r in runs),
        "runs": runs,
        "summary": summary,
        "server_timing": timing,
        "records": records,
    }
    write_json(paths["json"], report)
    plot_accuracy_vs_bytes(records, paths["accuracy_vs_bytes"])
    plot_bytes_to_target(records, summary, paths["bytes_to_target"])

    if summary:
        print()
        print(format_table(summary, TABLE_COLUMNS, style="text"))
        print(
            "\n(medians over seeds; dens up = mean upload density after the warm-up, dens down "
            "= download density of the last round;\n B->target = bytes (up + down) to come "
            f"within {TARGET_POINTS:g} point of {TARGET_METHOD}'s final accuracy / "
            f"{TARGET_METHOD}'s, over the seeds that reached it)"
        )
    if timing is not None:
        rows = [{**r, "ms_per_client": 1e3 * r["seconds_per_client"]} for r in timing["rows"]]
        print(f"\nserver timing ({timing['model']}, median of {timing['timed_rounds']} rounds):")
        print(format_table(rows, TIMING_COLUMNS, style="text"))
    print(
        f"\n({torch.get_num_threads()} threads, torch {torch.__version__}, {wall:.0f} s) -> "
        + ", ".join(str(p) for p in paths.values())
    )
    return {"records": records, "summary": summary, "server_timing": timing, "paths": paths}


if __name__ == "__main__":
    main()
