"""D-Turbo-VBI under one changed setting at a time: the measurements behind its defaults.

- ``--variant value_dtype``: the payload value dtype (float32, float16, bfloat16): accuracy
  and bytes with each (the default ``value_dtype``);
- ``--variant site_step``: how far a site moves per round (1, 0.5, and ``1/K``, the default);
- ``--variant faults``: no faults against 20% of the replies dropped and 10% corrupted (NaN,
  a wrong shape or negative variances): the run completes, every corrupted reply is rejected
  and counted, and the accuracy lost.

Everything else as in the committed config; one thread. Commands (the committed
``results/federated_variants.json``)::

    .venv/bin/python benchmarks/federated_variants.py --variant value_dtype site_step faults \
        --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pyro_dturbo.experiments.tables import format_table, machine_info, median, write_json
from pyro_dturbo.federation import FederatedConfig, run_federated

VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "value_dtype": [(d, {"value_dtype": d}) for d in ("float32", "float16", "bfloat16")],
    "site_step": [("1", {"site_step": 1.0}), ("0.5", {"site_step": 0.5}), ("1/K", {})],
    "faults": [
        ("none", {"faults": {"dropout": 0.0, "corrupt": 0.0}}),
        ("20% dropped, 10% corrupted", {"faults": {"dropout": 0.2, "corrupt": 0.1}}),
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/federated_digits.yaml")
    parser.add_argument("--variant", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=["dturbo"])
    parser.add_argument("--out", default="results/federated_variants.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(args.config)
    base = FederatedConfig.from_yaml(path) if path.exists() else FederatedConfig()
    base = base.replace(methods=tuple(args.methods))
    runs = []
    for variant in args.variant:
        for label, changes in VARIANTS[variant]:
            for seed in args.seeds:
                config = base.replace(seed=seed, **changes)
                t0 = time.perf_counter()
                result = run_federated(config, progress_bar=False)
                for name, method in result.methods.items():
                    rounds = method.rounds
                    runs.append(
                        {
                            "variant": variant,
                            "setting": label,
                            "seed": seed,
                            "method": name,
                            "accuracy": method.final["accuracy"],
                            "density": method.final["density"],
                            "MB_total": (method.final["bytes_up"] + method.final["bytes_down"])
                            / 1e6,
                            "dropped": sum(r.dropped for r in rounds),
                            "corrupted": sum(r.corrupted for r in rounds),
                            "rejected": sum(r.rejected for r in rounds),
                            "time_s": time.perf_counter() - t0,
                        }
                    )
                    print(runs[-1], flush=True)
    rows = []
    for variant in args.variant:
        for label, _ in VARIANTS[variant]:
            for name in args.methods:
                sel = [
                    r
                    for r in runs
                    if r["variant"] == variant and r["setting"] == label and r["method"] == name
                ]
                rows.append(
                    {
                        "variant": variant,
                        "setting": label,
                        "method": name,
                        "accuracy": median([r["accuracy"] for r in sel]),
                        "min_accuracy": min(r["accuracy"] for r in sel),
                        "density": median([r["density"] for r in sel]),
                        "MB_total": median([r["MB_total"] for r in sel]),
                        "corrupted": sum(r["corrupted"] for r in sel),
                        "rejected": sum(r["rejected"] for r in sel),
                        "dropped": sum(r["dropped"] for r in sel),
                    }
                )
    columns = [
        ("variant", "variant", ""),
        ("setting", "setting", ""),
        ("method", "method", ""),
        ("accuracy (median)", "accuracy", ".4f"),
        ("accuracy (min)", "min_accuracy", ".4f"),
        ("density", "density", ".4f"),
        ("MB up + down", "MB_total", ".2f"),
        ("dropped", "dropped", "d"),
        ("corrupted", "corrupted", "d"),
        ("rejected", "rejected", "d"),
    ]
    print(format_table(rows, columns))
    write_json(
        args.out,
        {
            "command": " ".join(["benchmarks/federated_variants.py", *(argv or sys.argv[1:])]),
            "machine": machine_info(),
            "config": base.to_dict(),
            "runs": runs,
            "medians": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
