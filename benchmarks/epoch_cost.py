"""What a Turbo-VBI w-step costs against a dense Adam step, and what the options would save.

One minibatch step (forward, backward, KL gradient, Adam) of the digits MLP 64-256-256-10,
batch 32, one thread, timed side by side (the variants interleaved, ``--repeats`` times,
medians), for:

- ``dense``: the plain network with Adam (the reference);
- ``local``: a step of the library's layers
  (:class:`~pyro_dturbo.models.layers.SparseBayesLinear` with the local reparameterisation: a
  second matmul for the pre-activation variance, noise per pre-activation, twice the
  parameters for Adam, the closed-form KL gradient);
- ``weight-noise``: one weight sample per minibatch shared by its examples (one matmul; the
  gradients of mean and log-scale are elementwise in the weight's gradient), a standard
  alternative with noisier gradients;
- ``mean-only``: no noise at all (a MAP step on the means, ``log sigma`` untouched so Adam
  skips it: what the fine-tuning epochs run), the floor of any variational step that keeps the
  mean's work;
- ``turbo, variance every 2nd step``: the local reparameterisation on every other step, the
  mean-only step in between.

Each variant's time per step is reported as a ratio to the dense step. ``--profile`` also
runs ``torch.profiler`` over one epoch of the dense and the library's step and reports, per
operator, the calls and the self CPU time per step (where a step's time goes). Command (the
committed ``results/epoch_cost.json``)::

    .venv/bin/python benchmarks/epoch_cost.py --profile
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pyro_dturbo.data import load_dataset
from pyro_dturbo.experiments.tables import format_table, machine_info, write_json
from pyro_dturbo.models.layers import sparse_layers, to_sparse_bayes
from pyro_dturbo.models.zoo import MLP


def _batches(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> list[tuple[Any, Any]]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + batch]], y[order[i : i + batch]]) for i in range(0, len(y), batch)]


def dense_step(
    net: nn.Module, lr: float, fused: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=fused or None)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()

    return step


def turbo_step(
    net: nn.Module, lr: float, n: int, mode: str, fused: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A w-step of the sparse Bayesian ``net`` with the noise ``mode``."""
    layers = [layer for _, layer in sparse_layers(net)]
    params = [p for layer in layers for p in (layer.weight_loc, layer.weight_log_scale)]
    others = [p for p in net.parameters() if all(p is not q for q in params)]
    opt = torch.optim.Adam(params + others, lr=lr, fused=fused or None)
    counter = {"k": 0}

    def weight_noise_forward(xb: torch.Tensor) -> torch.Tensor:
        h = xb
        for module in net:
            if module in layers:
                eps = torch.randn(module.weight_loc.shape, generator=module.noise_generator)
                w = module.weight_loc + torch.exp(module.weight_log_scale) * eps
                h = module(h, weight=w)
            else:
                h = module(h)
        return h

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        counter["k"] += 1
        use_mean = mode == "mean-only" or (mode == "every-2nd" and counter["k"] % 2 == 0)
        for layer in layers:
            layer.deterministic = use_mean
        if mode == "weight-noise":
            logits = weight_noise_forward(xb)
        else:
            logits = net(xb)
        (nn.functional.cross_entropy(logits, yb) * n).backward()
        for layer in layers:
            # a step without sampling leaves log sigma alone, as the library's MAP steps do
            layer.add_kl_grad(1.0, scale_grad=not use_mean)
        opt.step()

    return step


def profile_step(
    step: Callable[[torch.Tensor, torch.Tensor], None], batches: list[tuple[Any, Any]]
) -> dict[str, dict[str, float]]:
    """Per operator: calls and self CPU microseconds per step, over one epoch of ``step``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for xb, yb in batches:
            step(xb, yb)
    n = len(batches)
    return {
        event.key: {"calls_per_step": event.count / n, "us_per_step": event.self_cpu_time_total / n}
        for event in prof.key_averages()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved epochs per variant")
    parser.add_argument("--out", default="results/epoch_cost.json")
    parser.add_argument(
        "--profile", action="store_true", help="torch.profiler over the dense and library step"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("digits", seed=0, flatten=True)
    x, y = data.x_train, data.y_train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = MLP(data.num_features, tuple(args.hidden), data.num_classes)
    variants: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {}
    for fused in (False, True):
        tag = ", fused Adam" if fused else ""
        variants["dense" + tag] = dense_step(copy.deepcopy(plain), 3e-3, fused)
        for mode in ("local", "weight-noise", "mean-only", "every-2nd"):
            net = to_sparse_bayes(plain, init_scale=1e-3)
            net.train()
            variants[mode + tag] = turbo_step(net, 3e-3, len(y), mode, fused)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):  # the first pass warms up and is dropped
        batches = _batches(x, y, args.batch_size, repeat)
        for name, step in variants.items():
            t0 = time.perf_counter()
            for xb, yb in batches:
                step(xb, yb)
            if repeat:
                times[name].append((time.perf_counter() - t0) / len(batches))
    labels = {
        "dense": "dense Adam step",
        "local": "Turbo w-step (local reparameterisation, the library's)",
        "weight-noise": "one weight sample per minibatch",
        "mean-only": "mean only (no noise, sigma untouched; the fine-tuning step)",
        "every-2nd": "local reparameterisation every 2nd step",
    }
    rows = []
    for name, t in times.items():
        mode, _, tag = name.partition(", ")
        # each variant against the dense step with the same optimiser, and against plain Adam
        rows.append(
            {
                "variant": labels[mode] + (f", {tag}" if tag else ""),
                "ms_per_step": 1e3 * statistics.median(t),
                "ratio": statistics.median(t)
                / statistics.median(times["dense" + (", " + tag if tag else "")]),
                "ratio_to_dense_adam": statistics.median(t) / statistics.median(times["dense"]),
            }
        )
    profiles = {}
    if args.profile:
        batches = _batches(x, y, args.batch_size, args.repeats + 1)
        for name in ("dense", "local"):
            profiles[name] = profile_step(variants[name], batches)
            top = sorted(profiles[name].items(), key=lambda kv: -kv[1]["us_per_step"])[:8]
            print(f"{name}: " + ", ".join(f"{op} {v['us_per_step']:.0f} us" for op, v in top))
    print(
        format_table(
            rows,
            [
                ("variant", "variant", ""),
                ("ms / step", "ms_per_step", ".3f"),
                ("x dense (same optimiser)", "ratio", ".2f"),
                ("x dense (foreach Adam)", "ratio_to_dense_adam", ".2f"),
            ],
        )
    )
    write_json(
        args.out,
        {
            "command": "benchmarks/epoch_cost.py " + " ".join(argv or sys.argv[1:]),
            "model": f"mlp {args.hidden}",
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "rows": rows,
            "times_s_per_step": times,
            "profile_per_step": profiles,
            "machine": machine_info(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
