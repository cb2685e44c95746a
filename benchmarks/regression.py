"""Clustered sparse regression: Turbo-VBI (chain, grid, independent priors) against Pyro SVI,
oracle least squares and, on small problems, NUTS (the clustered-support setting of
docs/algorithm.md, "Support structures").

Writes ``results/regression.json`` (config, machine, records, per-(method, M) summary, the
smallest M with >= 90% success per method, the NUTS comparison) and ``results/regression.png``
(success rate and median NMSE against M), and prints the table::

    python benchmarks/regression.py              # N=512, M in 64..192, 10 seeds (long)
    python benchmarks/regression.py --smoke      # tiny sizes, -> results/regression_smoke.*
    python benchmarks/regression.py --no-nuts --methods turbo-chain oracle

All the logic lives in :mod:`pyro_dturbo.experiments.regression`; this script only sets the
sizes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from pyro_dturbo.experiments.regression import (
    METHODS,
    compare_regression,
    compare_with_nuts,
    format_regression_table,
    save_comparison,
    smallest_successful_m,
    summarise_nuts,
    summarise_regression,
)
from pyro_dturbo.experiments.tables import machine_info, write_json

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
FULL = {
    "num_weights": 512,
    "num_obs": [64, 80, 96, 112, 128, 160, 192],
    "seeds": 10,
    "svi_steps": 2000,
    "nuts_seeds": 3,
    "nuts_weights": 32,
    "nuts_obs": 24,
    "nuts_samples": 500,
    "nuts_warmup": 500,
    "nuts_tree_depth": 8,
}
# seeds 0 and 1 give 5 and 37 active weights at N=128 (at N=64 seed 0 has none)
SMOKE = {
    "num_weights": 128,
    "num_obs": [48, 64],
    "seeds": 2,
    "svi_steps": 50,
    "nuts_seeds": 1,
    "nuts_weights": 32,
    "nuts_obs": 24,
    "nuts_samples": 20,
    "nuts_warmup": 20,
    "nuts_tree_depth": 4,
}
DTYPE = torch.float64  # the problems' dtype; every method computes in it
DEFAULT_METHODS = ["turbo-chain", "turbo-grid", "turbo-independent", "svi", "oracle"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--num-weights", type=int, help="N (default 512)")
    parser.add_argument("--num-obs", type=int, nargs="+", help="values of M")
    parser.add_argument("--seeds", type=int, help="seeds per M (default 10)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=DEFAULT_METHODS)
    parser.add_argument("--svi-steps", type=int, help="SVI steps (default 2000)")
    parser.add_argument("--max-iters", type=int, default=200, help="Turbo-VBI iterations")
    parser.add_argument(
        "--known-noise", action="store_true", help="give every method the true noise precision"
    )
    parser.add_argument("--rate", type=float, default=0.9, help="success rate for smallest M")
    parser.add_argument("--no-nuts", action="store_true", help="skip the NUTS comparison")
    parser.add_argument(
        "--only-nuts",
        action="store_true",
        help="run only the NUTS comparison (writes regression_nuts.json)",
    )
    parser.add_argument("--nuts-seeds", type=int, help="problems in the NUTS comparison")
    parser.add_argument("--nuts-weights", type=int, help="N for the NUTS comparison (32)")
    parser.add_argument("--nuts-obs", type=int, help="M for the NUTS comparison (24)")
    parser.add_argument("--nuts-samples", type=int, help="NUTS draws (500)")
    parser.add_argument("--nuts-warmup", type=int, help="NUTS warmup steps (500)")
    parser.add_argument("--nuts-tree-depth", type=int, help="NUTS max tree depth (8)")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads for the run (default: torch's)"
    )
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = "regression_smoke" if args.smoke else "regression"
    seeds = list(range(args.seeds))
    config = {
        "smoke": args.smoke,
        "num_weights": args.num_weights,
        "num_obs": args.num_obs,
        "seeds": seeds,
        "methods": args.methods,
        "p01": 0.01,
        "p10": 0.1,
        "snr_db": 30.0,
        "svi_steps": args.svi_steps,
        "max_iters": args.max_iters,
        "known_noise": args.known_noise,
        "dtype": str(DTYPE).removeprefix("torch."),
    }
    if args.only_nuts:
        return run_nuts_only(args)
    start = time.perf_counter()
    records = compare_regression(
        args.num_obs,
        seeds,
        num_weights=args.num_weights,
        methods=args.methods,
        known_noise=args.known_noise,
        svi_steps=args.svi_steps,
        max_iters=args.max_iters,
        dtype=DTYPE,
        progress_bar=not args.no_progress_bar,
    )
    extra: dict[str, Any] = {"wall_time_s": time.perf_counter() - start}

    nuts_records: list[dict[str, Any]] = []
    if not args.no_nuts:
        nuts_config = _nuts_config(args)
        nuts_records = compare_with_nuts(
            range(args.nuts_seeds),
            **nuts_config,
            dtype=DTYPE,
            progress_bar=not args.no_progress_bar,
        )
        extra["nuts"] = {
            "config": {
                **nuts_config,
                "seeds": list(range(args.nuts_seeds)),
                "known_noise": True,
                "dtype": str(DTYPE).removeprefix("torch."),
            },
            "summary": summarise_nuts(nuts_records),
            "records": nuts_records,
        }

    paths = save_comparison(records, args.out, name, config=config, extra=extra, rate=args.rate)
    print(format_regression_table(summarise_regression(records)))
    smallest = smallest_successful_m(records, args.rate)
    print(f"\nsmallest M with >= {args.rate:.0%} success (every larger M too):")
    for method, m in smallest.items():
        print(f"  {method:<18} {'-' if m is None else m}")
    if nuts_records:
        s = extra["nuts"]["summary"]
        print(
            f"\nTurbo-VBI vs NUTS (N={args.nuts_weights}, M={args.nuts_obs}, {s['runs']} seeds): "
            f"support marginals max |diff| {s['max_abs_diff']:.3f}, "
            f"median speed-up {s['median_speedup']:.0f}x (min {s['min_speedup']:.0f}x)"
        )
    print(
        f"\n({torch.get_num_threads()} threads, torch {torch.__version__}) "
        f"-> {paths['json']}, {paths['png']}"
    )
    return {"records": records, "nuts": nuts_records, "paths": paths}


def _nuts_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "num_weights": args.nuts_weights,
        "num_obs": args.nuts_obs,
        "num_samples": args.nuts_samples,
        "warmup_steps": args.nuts_warmup,
        "max_tree_depth": args.nuts_tree_depth,
    }


def run_nuts_only(args: argparse.Namespace) -> dict[str, Any]:
    """The Turbo-VBI vs NUTS comparison alone, written to ``regression_nuts.json``."""
    nuts_config = _nuts_config(args)
    records = compare_with_nuts(
        range(args.nuts_seeds), **nuts_config, dtype=DTYPE, progress_bar=not args.no_progress_bar
    )
    summary = summarise_nuts(records)
    out = {
        "config": {
            **nuts_config,
            "seeds": list(range(args.nuts_seeds)),
            "known_noise": True,
            "dtype": str(DTYPE).removeprefix("torch."),
        },
        "summary": summary,
        "records": records,
        "machine": machine_info(),
    }
    path = args.out / ("regression_nuts_smoke.json" if args.smoke else "regression_nuts.json")
    write_json(path, out)
    print(
        f"Turbo-VBI vs NUTS (N={args.nuts_weights}, M={args.nuts_obs}, {summary['runs']} seeds): "
        f"support marginals max |diff| {summary['max_abs_diff']:.3f}, "
        f"median speed-up {summary['median_speedup']:.0f}x (min {summary['min_speedup']:.0f}x) "
        f"-> {path}"
    )
    return {"nuts": records, "paths": {"json": path}}


if __name__ == "__main__":
    main()
