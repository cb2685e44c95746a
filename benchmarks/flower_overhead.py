"""Flower's overhead: the same config in process and on a local Flower deployment, side by side.

Runs the config with the in-process engine, then on a fresh local SuperLink with one SuperNode
per client (``dturbo federate --engine flower`` does the same), and reports per method: the
mean wall time of a round in each engine (as the ServerApp / runner records it: broadcast,
training, replies, merge, evaluation), their ratio, the whole run's wall time in each, and
whether the two engines agree (accuracy to 1e-6 and bytes exactly, every round). One torch
thread per process. Command (the committed ``results/flower_overhead.json``)::

    .venv/bin/python benchmarks/flower_overhead.py --config examples/flower/federated.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pyro_dturbo.experiments.tables import format_table, machine_info, write_json
from pyro_dturbo.federation import FederatedConfig, run_federated
from pyro_dturbo.federation.deployment import run_local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/flower/federated.yaml")
    parser.add_argument("--rounds", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", default="results/flower_overhead.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = FederatedConfig.from_yaml(Path(args.config))
    if args.rounds is not None:
        config = config.replace(rounds=args.rounds)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    inprocess = run_federated(config, progress_bar=False).report()
    wall_inprocess = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config.to_yaml())
        t0 = time.perf_counter()
        flower = run_local(
            path,
            Path(tmp) / "out",
            config.clients,
            total_rounds=config.rounds * len(config.methods),
            progress_bar=True,
        )
        wall_flower = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    for name in config.methods:
        ours, theirs = flower["methods"][name]["rounds"], inprocess["methods"][name]["rounds"]
        agree = len(ours) == len(theirs) and all(
            abs(a["accuracy"] - b["accuracy"]) <= 1e-6
            and a["bytes_up"] == b["bytes_up"]
            and a["bytes_down"] == b["bytes_down"]
            for a, b in zip(ours, theirs, strict=True)
        )
        t_in = sum(r["time_s"] for r in theirs) / len(theirs)
        t_fl = sum(r["time_s"] for r in ours) / len(ours)
        rows.append(
            {
                "method": name,
                "round_s_inprocess": t_in,
                "round_s_flower": t_fl,
                "ratio": t_fl / t_in,
                "engines_agree": agree,
                "bytes_up_down": sum(r["bytes_up"] + r["bytes_down"] for r in ours),
            }
        )
    print(
        format_table(
            rows,
            [
                ("method", "method", ""),
                ("s / round in process", "round_s_inprocess", ".3f"),
                ("s / round on Flower", "round_s_flower", ".2f"),
                ("ratio", "ratio", ".0f"),
                ("engines agree", "engines_agree", ""),
            ],
        )
    )
    print(f"whole run: in process {wall_inprocess:.1f} s, Flower {wall_flower:.1f} s")
    write_json(
        args.out,
        {
            "command": "benchmarks/flower_overhead.py " + " ".join(argv or sys.argv[1:]),
            "config": config.to_dict(),
            "rows": rows,
            "wall_s": {"inprocess": wall_inprocess, "flower": wall_flower},
            # other work on the machine slows the Flower engine's many processes most
            "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
            "machine": machine_info(),
        },
    )
    return 0 if all(r["engines_agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
