"""Measured comparisons on clustered sparse regression: Turbo-VBI against its baselines.

This module holds every line the regression benchmark (``benchmarks/regression.py``), the
``dturbo demo`` command and the tutorial share: run the methods on generated problems
(:func:`compare_regression`), score them against oracle least squares, summarise per method and
number of observations (:func:`summarise_regression`, :func:`format_regression_table`,
:func:`smallest_successful_m`), plot the phase
transition (:func:`plot_phase_transition`), compare with NUTS where NUTS can run
(:func:`compare_with_nuts`) and write it all as JSON plus a PNG (:func:`save_comparison`).

Methods (names used in the records):

- ``"turbo-chain"``: Turbo-VBI with the Markov-chain support prior (the generating structure).
- ``"turbo-grid"``: Turbo-VBI with a 2-D grid MRF prior; the ``N`` weights are laid out row-major
  on the most nearly square grid :func:`grid_layout` finds (``16 x 32`` for ``N = 512``), so
  horizontal edges follow the vector order (broken at row ends) and vertical edges tie weights
  ``cols`` apart: a mis-specified but still clustered prior.
- ``"turbo-independent"``: Turbo-VBI with i.i.d. supports of the chain's stationary activity
  ``p01 / (p01 + p10)`` (Module B off: the unstructured ablation).
- ``"svi"``: Pyro SVI (:func:`~pyro_dturbo.inference.baselines.run_svi`) on the chain model
  with the support summed out, ``AutoNormal`` guide; ``"svi-lowrank"`` the same with
  ``AutoLowRankMultivariateNormal``, ``"svi-delta"`` with ``AutoDelta`` (MAP).
- ``"mcmc"``: Pyro NUTS (:func:`~pyro_dturbo.inference.baselines.run_mcmc`), small ``N`` only.
- ``"oracle"``: least squares on the true support (the reference every method is scored
  against; it always "succeeds").

Every prior is :func:`~pyro_dturbo.models.default_regression_prior` with its support swapped
(``prior.replace(support=...)``), so tuning of the Gamma laws flows into every method.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. VI (simulations).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_dturbo.data import (
    RegressionProblem,
    clustered_sparse_regression,
    nmse_db,
    oracle_least_squares,
    support_f1,
)
from pyro_dturbo.experiments.tables import format_table, machine_info, median, summarise, write_json
from pyro_dturbo.inference.baselines import run_mcmc, run_svi
from pyro_dturbo.inference.regression import fit_sparse_regression
from pyro_dturbo.models import (
    GridMRFSupport,
    IndependentSupport,
    MarkovChainSupport,
    SparsePrior,
    default_regression_prior,
)

__all__ = [
    "METHODS",
    "TURBO_METHODS",
    "SVI_GUIDES",
    "SUCCESS_MARGIN_DB",
    "grid_layout",
    "regression_priors",
    "compare_regression",
    "summarise_regression",
    "smallest_successful_m",
    "REGRESSION_COLUMNS",
    "format_regression_table",
    "phase_transition_figure",
    "plot_phase_transition",
    "compare_with_nuts",
    "summarise_nuts",
    "save_comparison",
]

#: Every method :func:`compare_regression` knows.
METHODS = (
    "turbo-chain",
    "turbo-grid",
    "turbo-independent",
    "svi",
    "svi-lowrank",
    "svi-delta",
    "mcmc",
    "oracle",
)
#: The SVI methods and the autoguide each uses (see :func:`~.baselines.run_svi`).
SVI_GUIDES = {"svi": "normal", "svi-lowrank": "lowrank", "svi-delta": "delta"}
#: The Turbo-VBI methods and the support structure each uses.
TURBO_METHODS = ("turbo-chain", "turbo-grid", "turbo-independent")
#: A run succeeds when its NMSE is at most this far above the oracle's.
SUCCESS_MARGIN_DB = 3.0

_DEFAULT_METHODS = ("turbo-chain", "turbo-grid", "turbo-independent", "svi", "oracle")


def grid_layout(num_weights: int) -> tuple[int, int]:
    """The most nearly square ``(rows, cols)`` with ``rows * cols = num_weights``, ``rows <=
    cols``: ``512 -> (16, 32)``, ``256 -> (16, 16)``, a prime ``p -> (1, p)``."""
    if num_weights < 1:
        raise ValueError(f"num_weights must be positive, got {num_weights}")
    rows = max(r for r in range(1, math.isqrt(num_weights) + 1) if num_weights % r == 0)
    return rows, num_weights // rows


def regression_priors(
    num_weights: int, p01: float = 0.01, p10: float = 0.1
) -> dict[str, SparsePrior]:
    """The prior each method uses, keyed by method name (the SVI methods and ``"mcmc"`` use the
    chain).

    All are :func:`~pyro_dturbo.models.default_regression_prior` with the support replaced by
    a structure matching the generating chain's ``p01, p10``.

    :param int num_weights: ``N`` (sets the grid layout, see :func:`grid_layout`).
    :returns: ``{method: SparsePrior}``.
    """
    base = default_regression_prior()
    chain = base.replace(support=MarkovChainSupport(p01, p10))
    return {
        "turbo-chain": chain,
        "turbo-grid": base.replace(support=GridMRFSupport(p01, p10, grid=grid_layout(num_weights))),
        "turbo-independent": base.replace(support=IndependentSupport(p01 / (p01 + p10))),
        **{method: chain for method in SVI_GUIDES},
        "mcmc": chain,
    }


def _fit(
    method: str,
    problem: RegressionProblem,
    prior: SparsePrior | None,
    oracle: Tensor,
    *,
    noise_precision: float | None,
    seed: int,
    max_iters: int,
    svi_steps: int,
    mcmc_samples: int,
    mcmc_warmup: int,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Run one method; returns the weight estimate, the estimated support and extra fields."""
    X, y = problem.X, problem.y
    if method == "oracle":
        return oracle, problem.support > 0.5, {"iterations": 0}
    if method in TURBO_METHODS:
        result = fit_sparse_regression(
            X, y, prior, noise_precision=noise_precision, max_iters=max_iters, seed=seed
        )
        total = sum(r["time"] for r in result.history)
        extra = {
            "iterations": len(result.history),
            "converged": bool(result.converged),
            "time_b_fraction": sum(r["time_b"] for r in result.history) / total if total else 0.0,
        }
        return result.mean, result.support_probs > 0.5, extra
    if method in SVI_GUIDES:
        svi = run_svi(
            X,
            y,
            prior,
            noise_precision=noise_precision,
            guide=SVI_GUIDES[method],
            num_steps=svi_steps,
            seed=seed,
        )
        return svi.mean, svi.support_probs > 0.5, {"iterations": svi_steps}
    if method == "mcmc":
        mcmc = run_mcmc(
            X,
            y,
            prior,
            noise_precision=noise_precision,
            num_samples=mcmc_samples,
            warmup_steps=mcmc_warmup,
            seed=seed,
        )
        return mcmc.mean, mcmc.support_probs > 0.5, {"iterations": mcmc_samples + mcmc_warmup}
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def compare_regression(
    num_obs_list: Sequence[int],
    seeds: Sequence[int],
    *,
    num_weights: int = 512,
    p01: float = 0.01,
    p10: float = 0.1,
    snr_db: float = 30.0,
    methods: Sequence[str] = _DEFAULT_METHODS,
    known_noise: bool = False,
    svi_steps: int = 2000,
    mcmc_samples: int = 500,
    mcmc_warmup: int = 500,
    max_iters: int = 200,
    priors: Mapping[str, SparsePrior] | None = None,
    dtype: torch.dtype = torch.float64,
    progress_bar: bool = True,
) -> list[dict[str, Any]]:
    """Run every method on clustered sparse regression problems, one per ``(M, seed)``.

    Each problem is :func:`~pyro_dturbo.data.clustered_sparse_regression` ``(M, N, seed=seed)``
    in ``dtype``; every method sees the same ``X, y`` and is scored against oracle least squares
    on it. The default dtype is neither read nor changed.

    :param num_obs_list: the numbers of observations ``M`` to try.
    :param seeds: problem seeds (each method is also given the seed).
    :param int num_weights: ``N``. :param float p01, p10, snr_db: the generating process.
    :param methods: names from :data:`METHODS`.
    :param bool known_noise: give every method the true noise precision (default: learned).
    :param int svi_steps: SVI gradient steps. :param int mcmc_samples, mcmc_warmup: NUTS.
    :param int max_iters: Turbo-VBI iteration budget.
    :param priors: per-method priors (default :func:`regression_priors`).
    :param torch.dtype dtype: the problems' dtype (every method computes in it).
    :param bool progress_bar: a tqdm bar over the runs.
    :returns: one record per ``(method, M, seed)`` with ``method, num_obs, num_weights, seed,
        nmse_db, oracle_nmse_db, success, support_f1, time_s, iterations``; Turbo-VBI records
        add ``converged`` and ``time_b_fraction`` (share of the iteration time in Module B).
    :raises ValueError: on an unknown method.

    Example::

        >>> records = compare_regression([96, 128], seeds=range(3), methods=["turbo-chain",
        ...                              "turbo-independent", "oracle"])
        >>> print(format_regression_table(summarise_regression(records)))
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    all_priors = regression_priors(num_weights, p01, p10)
    all_priors.update(priors or {})
    num_obs_list, seeds = [int(m) for m in num_obs_list], [int(s) for s in seeds]
    records: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(num_obs_list) * len(seeds) * len(methods),
        disable=not progress_bar,
        desc="regression",
    )
    for num_obs in num_obs_list:
        for seed in seeds:
            problem = clustered_sparse_regression(
                num_obs, num_weights, p01=p01, p10=p10, snr_db=snr_db, seed=seed, dtype=dtype
            )
            # solved once per problem: the oracle record equals its own reference exactly
            oracle = oracle_least_squares(problem.X, problem.y, problem.support)
            oracle_nmse = nmse_db(oracle, problem.weight)
            for method in methods:
                bar.set_postfix(method=method, M=num_obs, seed=seed)
                start = time.perf_counter()
                estimate, support, extra = _fit(
                    method,
                    problem,
                    all_priors.get(method),
                    oracle,
                    noise_precision=problem.noise_precision if known_noise else None,
                    seed=seed,
                    max_iters=max_iters,
                    svi_steps=svi_steps,
                    mcmc_samples=mcmc_samples,
                    mcmc_warmup=mcmc_warmup,
                )
                elapsed = time.perf_counter() - start
                nmse = nmse_db(estimate, problem.weight)
                records.append(
                    {
                        "method": method,
                        "num_obs": num_obs,
                        "num_weights": num_weights,
                        "seed": seed,
                        "nmse_db": nmse,
                        "oracle_nmse_db": oracle_nmse,
                        # NaN compares False: a diverged run fails
                        "success": bool(nmse <= oracle_nmse + SUCCESS_MARGIN_DB),
                        "support_f1": support_f1(support, problem.support),
                        "support_size": int(support.sum()),
                        "true_support_size": int(problem.support.sum()),
                        "time_s": elapsed,
                        **extra,
                    }
                )
                bar.update()
    bar.close()
    return records


def summarise_regression(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per ``(method, M)``: runs, success rate and medians of NMSE, oracle NMSE, F1 and time.

    Methods keep their first-seen order; ``M`` ascends within a method.

    :returns: one dict per group with ``method, num_obs, runs, success_rate, median_nmse_db,
        median_oracle_nmse_db, median_support_f1, median_time_s, median_iterations`` and
        ``median_time_b_fraction`` (``None`` for methods without a Module B).
    """
    methods = list(dict.fromkeys(r["method"] for r in records))
    return summarise(
        [{**r, "num_obs": int(r["num_obs"])} for r in records],
        ("method", "num_obs"),
        {
            "success_rate": lambda rs: sum(bool(r["success"]) for r in rs) / len(rs),
            "median_nmse_db": "nmse_db",
            "median_oracle_nmse_db": "oracle_nmse_db",
            "median_support_f1": "support_f1",
            "median_time_s": "time_s",
            "median_iterations": "iterations",
            "median_time_b_fraction": "time_b_fraction",
        },
        order=lambda key: (methods.index(key[0]), key[1]),
    )


def _success_rates(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    rates: dict[str, dict[int, float]] = {}
    for row in summarise_regression(records):
        rates.setdefault(row["method"], {})[row["num_obs"]] = row["success_rate"]
    return rates


def smallest_successful_m(
    records: Sequence[Mapping[str, Any]], rate: float = 0.9
) -> dict[str, int | None]:
    """Per method, the smallest ``M`` from which on every tested ``M`` succeeds at ``rate``.

    A lucky success below a failing ``M`` does not count: with success rates ``{64: 0.9,
    80: 0.5, 96: 1.0}`` the answer is 96. ``None`` when the largest tested ``M`` falls short.

    :param float rate: the success rate required (0.9: nine runs in ten).
    :returns: ``{method: M or None}``.
    """
    out: dict[str, int | None] = {}
    for method, by_m in _success_rates(records).items():
        best: int | None = None
        for num_obs in sorted(by_m, reverse=True):
            if by_m[num_obs] < rate:
                break
            best = num_obs
        out[method] = best
    return out


#: The columns of :func:`format_regression_table`: header, summary key, format.
REGRESSION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("method", "method", ""),
    ("M", "num_obs", ""),
    ("runs", "runs", ""),
    ("success", "success_rate", ".0%"),
    ("NMSE dB", "median_nmse_db", ".1f"),
    ("oracle dB", "median_oracle_nmse_db", ".1f"),
    ("F1", "median_support_f1", ".2f"),
    ("time s", "median_time_s", ".3f"),
    ("iters", "median_iterations", ".0f"),
    ("B share", "median_time_b_fraction", ".0%"),
)


def format_regression_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`summarise_regression`'s rows (readable as plain text too)."""
    return format_table(summary, REGRESSION_COLUMNS)


def phase_transition_figure(records: Sequence[Mapping[str, Any]]) -> Any:
    """The figure of :func:`plot_phase_transition`, not saved: a
    :class:`matplotlib.figure.Figure` on the Agg canvas.

    Each method is drawn in its :func:`~pyro_dturbo.experiments.style.method_color` colour
    (the oracle dashed); one legend for both panels sits below them, off the data.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    from pyro_dturbo.experiments.style import method_color

    summary = summarise_regression(records)
    methods = list(dict.fromkeys(r["method"] for r in summary))
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_rate, ax_nmse = fig.subplots(1, 2)
    for method in methods:
        rows = [r for r in summary if r["method"] == method]
        ms = [r["num_obs"] for r in rows]
        style = {
            "color": method_color(method),
            "linestyle": "--" if method == "oracle" else "-",
            "marker": "o",
            "label": method,
        }
        ax_rate.plot(ms, [r["success_rate"] for r in rows], **style)
        ax_nmse.plot(ms, [r["median_nmse_db"] for r in rows], **style)
    num_weights = sorted({int(r["num_weights"]) for r in records if "num_weights" in r})
    ax_rate.set(
        xlabel="observations M",
        ylabel=f"success rate (NMSE <= oracle + {SUCCESS_MARGIN_DB:g} dB)",
        ylim=(-0.05, 1.05),
        title=f"Phase transition, N = {', '.join(map(str, num_weights))}",
    )
    ax_rate.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax_nmse.set(xlabel="observations M", ylabel="median NMSE (dB)", title="Estimation error")
    for ax in (ax_rate, ax_nmse):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    handles, labels = ax_rate.get_legend_handles_labels()
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(6, len(handles)), frameon=False
        )
    return fig


def plot_phase_transition(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Two panels against ``M``: success rate and median NMSE per method, saved as PNG.

    Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so it neither needs
    a display nor changes pyplot's backend (safe inside notebooks); see
    :func:`phase_transition_figure`.

    :param str path: the PNG file to write (parent folders are created).
    :returns: the path written.
    """
    fig = phase_transition_figure(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def compare_with_nuts(
    seeds: Sequence[int],
    *,
    num_weights: int = 32,
    num_obs: int = 24,
    p01: float = 0.05,
    p10: float = 0.2,
    snr_db: float = 30.0,
    num_samples: int = 500,
    warmup_steps: int = 500,
    max_tree_depth: int = 8,
    max_iters: int = 200,
    inactive: tuple[float, float] = (1.0, 1e-4),
    dtype: torch.dtype = torch.float64,
    progress_bar: bool = True,
) -> list[dict[str, Any]]:
    """Turbo-VBI against NUTS on small problems, both with the chain prior and the true noise
    precision: how far apart the support marginals are and how much faster Turbo-VBI is.

    The defaults (``p01 = 0.05, p10 = 0.2``: about 20% active in runs of 5) keep a few active
    weights in a 32-weight vector; with the ``N = 512`` setting's ``p01 = 0.01`` most such
    short vectors would have no active weight at all.

    ``inactive`` is the inactive Gamma law of the prior both methods use. The default
    ``(1, 1e-4)`` is one under which NUTS mixes (r-hat < 1.05 in ``tests/inference``); with the
    regression default's narrow ``(100, 1e-4)`` the chains rarely cross the gap between the two
    precision laws (r-hat about 1.6 measured), so NUTS is no reference there. The problems are
    drawn in ``dtype``.

    :returns: one record per seed: ``seed, num_weights, num_obs, max_abs_diff`` and
        ``mean_abs_diff`` (of ``q(s = 1)`` against NUTS's support marginals),
        ``weight_max_abs_diff`` (posterior means), ``turbo_time_s, nuts_time_s`` and
        ``speedup`` (``nuts_time_s / turbo_time_s``).
    """
    prior = regression_priors(num_weights, p01, p10)["turbo-chain"].replace(inactive=inactive)
    records = []
    for seed in tqdm(list(seeds), disable=not progress_bar, desc="turbo vs NUTS"):
        seed = int(seed)
        problem = clustered_sparse_regression(
            num_obs, num_weights, p01=p01, p10=p10, snr_db=snr_db, seed=seed, dtype=dtype
        )
        beta = problem.noise_precision
        start = time.perf_counter()
        turbo = fit_sparse_regression(
            problem.X, problem.y, prior, noise_precision=beta, max_iters=max_iters, seed=seed
        )
        turbo_time = time.perf_counter() - start
        start = time.perf_counter()
        nuts = run_mcmc(
            problem.X,
            problem.y,
            prior,
            noise_precision=beta,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            max_tree_depth=max_tree_depth,
            seed=seed,
        )
        nuts_time = time.perf_counter() - start
        diff = (turbo.support_probs - nuts.support_probs.to(turbo.support_probs)).abs()
        records.append(
            {
                "seed": seed,
                "num_weights": num_weights,
                "num_obs": num_obs,
                "true_support_size": int(problem.support.sum()),
                "max_abs_diff": float(diff.max()),
                "mean_abs_diff": float(diff.mean()),
                "weight_max_abs_diff": float((turbo.mean - nuts.mean.to(turbo.mean)).abs().max()),
                "turbo_time_s": turbo_time,
                "nuts_time_s": nuts_time,
                "speedup": nuts_time / turbo_time,
            }
        )
    return records


def summarise_nuts(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Worst-case marginal gap and median speed-up over :func:`compare_with_nuts` records."""
    if not records:
        return {"runs": 0}
    return {
        "runs": len(records),
        "max_abs_diff": max(r["max_abs_diff"] for r in records),
        "median_max_abs_diff": median(r["max_abs_diff"] for r in records),
        "median_speedup": median(r["speedup"] for r in records),
        "min_speedup": min(r["speedup"] for r in records),
    }


def save_comparison(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    name: str = "regression",
    *,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    rate: float = 0.9,
) -> dict[str, Path]:
    """Write ``{name}.json`` (config, machine, summary, smallest successful ``M``, records and
    ``extra``) and ``{name}.png`` (:func:`plot_phase_transition`) into ``out_dir``.

    :returns: ``{"json": path, "png": path}``.
    """
    out_dir = Path(out_dir)
    report = {
        "config": dict(config or {}),
        "machine": machine_info(),
        "success_margin_db": SUCCESS_MARGIN_DB,
        "summary": summarise_regression(records),
        "smallest_successful_m": {
            "rate": rate,
            "by_method": smallest_successful_m(records, rate),
        },
        **dict(extra or {}),
        "records": [dict(r) for r in records],
    }
    json_path = write_json(out_dir / f"{name}.json", report)
    png_path = plot_phase_transition(records, out_dir / f"{name}.png")
    return {"json": json_path, "png": png_path}
