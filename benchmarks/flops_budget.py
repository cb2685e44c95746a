"""How accurate can a network within the compression target's FLOPs budget be at all?

The compression target asks for a compact network with at most 10% of the dense network's
FLOPs that loses at most one point of test accuracy. A pruned network's compact model is a
smaller dense network: fewer inputs and fewer units per layer. This script trains such small
dense networks directly, from scratch, with the dense reference's own recipe (Adam, the
reference's epochs, learning rate and batch size; :func:`~pyro_dturbo.experiments.compress.
train_dense`), and reports their test accuracy against the reference network's on the same
split and seed. It is a yardstick, not a bound: a pruned network starts from trained weights
and may beat a small network trained from scratch, but a compressed network that stays far
below every small network of its budget has room to improve, and one that matches them is
near what its budget allows.

Per data set, the reference (the digits MLP 64-256-256-10; LeNet-300-100 on ``mnist-5k``)
and small MLPs at or under 10% of its FLOPs, some of them on the central pixels only (a
``crop``: the inputs a pruned first layer keeps first). FLOPs are ``2 x`` multiply-adds of
the linear layers (the biases' additions are not counted, as in
:func:`~pyro_dturbo.compression.compression_report`). Writes ``results/flops_budget.json``
and prints the table::

    .venv/bin/python benchmarks/flops_budget.py                    # seeds 0-4
    .venv/bin/python benchmarks/flops_budget.py --seeds 0 --smoke  # seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pyro_dturbo.data import load_dataset
from pyro_dturbo.experiments.compress import CompressConfig, train_dense
from pyro_dturbo.experiments.tables import format_table, machine_info, write_json
from pyro_dturbo.inference.network import evaluate_accuracy
from pyro_dturbo.models.zoo import MLP

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "flops_budget.json"
#: per data set: (name, image side, crop side or None, hidden sizes); the first is the reference
NETWORKS: dict[str, list[tuple[str, int, int | None, tuple[int, ...]]]] = {
    "digits": [
        ("MLP 64-256-256-10 (reference)", 8, None, (256, 256)),
        ("MLP 64-60-60-10", 8, None, (60, 60)),
        ("MLP 64-64-48-10", 8, None, (64, 48)),
        ("MLP 64-100-10", 8, None, (100,)),
        ("MLP 36-80-48-10 (central 6x6)", 8, 6, (80, 48)),
    ],
    "mnist-5k": [
        ("LeNet-300-100 (reference)", 28, None, (300, 100)),
        ("MLP 784-32-10", 28, None, (32,)),
        ("MLP 784-30-30-10", 28, None, (30, 30)),
        ("MLP 400-58-40-10 (central 20x20)", 28, 20, (58, 40)),
        ("MLP 324-68-50-10 (central 18x18)", 28, 18, (68, 50)),
        ("MLP 256-84-50-10 (central 16x16)", 28, 16, (84, 50)),
    ],
}


def flops(in_features: int, hidden: tuple[int, ...], classes: int) -> int:
    """``2 x`` the multiply-adds of an MLP's linear layers."""
    sizes = (in_features, *hidden, classes)
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def crop_index(side: int, crop: int) -> torch.Tensor:
    """Flat indices of the central ``crop x crop`` pixels of a ``side x side`` image."""
    start = (side - crop) // 2
    rows = torch.arange(start, start + crop)
    return (rows[:, None] * side + rows[None, :]).reshape(-1)


def run(dataset: str, seed: int, epochs: int, smoke: bool) -> list[dict[str, Any]]:
    """Every network of ``dataset`` on ``seed``'s split, trained as the dense reference is."""
    reference = CompressConfig(dataset=dataset, seed=seed)
    data = load_dataset(dataset, seed=seed, flatten=True)
    x_train, x_test = data.x_train, data.x_test
    if smoke:
        x_train, y_train = x_train[:300], data.y_train[:300]
    else:
        y_train = data.y_train
    rows = []
    budget = None
    for name, side, crop, hidden in NETWORKS[dataset]:
        index = crop_index(side, crop) if crop else torch.arange(x_train.shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = MLP(len(index), hidden, data.num_classes)
        start = time.perf_counter()
        train_dense(
            net,
            x_train[:, index],
            y_train,
            epochs=epochs,
            batch_size=reference.network.batch_size,
            lr=reference.dense_lr,
            seed=seed,
        )
        cost = flops(len(index), hidden, data.num_classes)
        budget = budget or cost
        rows.append(
            {
                "dataset": dataset,
                "network": name,
                "seed": seed,
                "flops": cost,
                "flops_fraction": cost / budget,
                "accuracy": evaluate_accuracy(net, x_test[:, index], data.y_test),
                "train_time_s": time.perf_counter() - start,
            }
        )
    for row in rows:
        row["accuracy_loss_points"] = 100 * (rows[0]["accuracy"] - row["accuracy"])
    return rows


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data set and network: FLOPs fraction, median accuracy and points lost, worst loss."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["network"]), []).append(r)
    return [
        {
            "dataset": dataset,
            "network": network,
            "flops_fraction": group[0]["flops_fraction"],
            "accuracy_median": statistics.median(r["accuracy"] for r in group),
            "loss_median": statistics.median(r["accuracy_loss_points"] for r in group),
            "loss_max": max(r["accuracy_loss_points"] for r in group),
            "seeds": [r["seed"] for r in group],
        }
        for (dataset, network), group in groups.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, help="training epochs (the reference's: 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--smoke", action="store_true", help="300 examples, 2 epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (2 if args.smoke else CompressConfig().dense_epochs)
    records = []
    for dataset in args.datasets:
        for seed in args.seeds:
            records += run(dataset, seed, epochs, args.smoke)
            print(f"{dataset} seed {seed} done", flush=True)
    summary = summarise(records)
    print(
        format_table(
            summary,
            [
                ("data", "dataset", ""),
                ("network", "network", ""),
                ("FLOPs of reference", "flops_fraction", ".3f"),
                ("test accuracy", "accuracy_median", ".3f"),
                ("points lost", "loss_median", ".2f"),
                ("worst", "loss_max", ".2f"),
            ],
        )
    )
    write_json(
        args.out,
        {
            "command": "benchmarks/flops_budget.py " + " ".join(argv or sys.argv[1:]),
            "epochs": epochs,
            "smoke": args.smoke,
            "summary": summary,
            "records": records,
            "machine": machine_info(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
