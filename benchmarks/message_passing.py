"""Time Module B's message passing: chain forward-backward and loopy BP on a grid.

Writes ``results/message_passing.json`` (timings and machine info) and prints a short table::

    python benchmarks/message_passing.py            # 10^6 positions / nodes
    python benchmarks/message_passing.py --smoke    # tiny sizes, a few seconds
    python benchmarks/message_passing.py --device cuda

Timings are medians over ``--repeats`` runs after one warm-up run; on CUDA every timed run is
bracketed by ``torch.cuda.synchronize()``. Besides the large cases (in ``--dtype``), every run
times forward_backward on one 512-position chain in float64, the Turbo-VBI regression setting,
where per-op overhead rather than arithmetic sets the time (at least 200 repeats).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pyro_dturbo.experiments.tables import machine_info, write_json
from pyro_dturbo.ops.chain import chain_log_init, chain_log_transition, forward_backward
from pyro_dturbo.ops.loopy import grid_edges, loopy_bp

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "results" / "message_passing.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_chain(
    chains: int,
    length: int,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    label: str = "",
) -> dict[str, Any]:
    generator = torch.Generator(device=device).manual_seed(0)
    unary = 4.0 * torch.randn(chains, length, generator=generator, device=device, dtype=dtype)
    p01 = torch.tensor(0.01, device=device, dtype=dtype)
    log_init, log_trans = chain_log_init(p01, 0.1), chain_log_transition(p01, 0.1)
    out = forward_backward(unary, log_init, log_trans)
    if not torch.isfinite(out).all():
        raise RuntimeError("forward_backward returned non-finite values")
    times = time_it(lambda: forward_backward(unary, log_init, log_trans), device, repeats)
    median = statistics.median(times)
    return {
        "name": f"forward_backward {chains}x{length}{label}",
        "chains": chains,
        "length": length,
        "positions": chains * length,
        "dtype": str(dtype).removeprefix("torch."),
        "times_s": times,
        "median_s": median,
        "min_s": min(times),
        "ns_per_position": 1e9 * median / (chains * length),
    }


def bench_grid(
    rows: int, cols: int, iters: int, device: torch.device, dtype: torch.dtype, repeats: int
) -> dict[str, Any]:
    generator = torch.Generator(device=device).manual_seed(0)
    unary = 4.0 * torch.randn(rows * cols, generator=generator, device=device, dtype=dtype)
    edge_index = torch.cat(grid_edges(rows, cols, device=device), dim=1)
    # the authors' TensorFlow demo's (github.com/cxiaab/D-turbo-vbi-FL, commit 8a89cc7) grid: chain
    # transitions along rows and columns, one shared potential
    log_trans = chain_log_transition(torch.tensor(0.01, device=device, dtype=dtype), 0.1)

    def run() -> torch.Tensor:
        # tol=0: exactly `iters` flooding sweeps, no device-to-host reads inside the loop
        return loopy_bp(unary, edge_index, log_trans, max_iters=iters, tol=0.0)  # type: ignore[return-value]

    if not torch.isfinite(run()).all():
        raise RuntimeError("loopy_bp returned non-finite values")
    times = time_it(run, device, repeats)
    median = statistics.median(times)
    return {
        "name": f"loopy_bp grid {rows}x{cols}, {iters} iterations",
        "rows": rows,
        "cols": cols,
        "nodes": rows * cols,
        "directed_edges": 2 * edge_index.shape[1],
        "iterations": iters,
        "times_s": times,
        "median_s": median,
        "min_s": min(times),
        "median_per_iteration_s": median / iters,
        "ns_per_node_iteration": 1e9 * median / (iters * rows * cols),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case")
    parser.add_argument("--grid", type=int, default=None, help="grid side (default 1000)")
    parser.add_argument("--iters", type=int, default=10, help="loopy BP iterations")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (2 if args.smoke else 7)
    side = args.grid or (30 if args.smoke else 1000)
    chain_cases = [(20, 50), (1, 1000)] if args.smoke else [(2000, 500), (1, 10**6)]

    # the regression setting: one short chain, float64, overhead-bound (so many more repeats)
    results = [
        bench_chain(1, 512, device, torch.float64, max(repeats, 200), label=" float64 (regression)")
    ]
    results += [bench_chain(c, n, device, dtype, repeats) for c, n in chain_cases]
    results.append(bench_grid(side, side, args.iters, device, dtype, repeats))
    report = {
        "benchmark": "message_passing",
        "smoke": args.smoke,
        "dtype": args.dtype,
        "repeats": repeats,
        "machine": machine_info(device),
        "results": results,
    }
    write_json(args.output, report)

    print(f"{'case':<46} {'median':>10} {'per unit':>22}")
    for r in results:
        if "ns_per_position" in r:
            unit = f"{r['ns_per_position']:.1f} ns/position"
        else:
            unit = f"{1e3 * r['median_per_iteration_s']:.2f} ms/iteration"
        print(f"{r['name']:<46} {1e3 * r['median_s']:>8.3f}ms {unit:>22}")
    print(
        f"({report['machine']['device']}, {args.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads) -> {args.output}"
    )
    return report


if __name__ == "__main__":
    main()
