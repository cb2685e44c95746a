"""ArviZ conversion and summaries for Turbo-VBI, SVI and NUTS posteriors of sparse regression.

:func:`to_arviz` turns any of the three results into an ``InferenceData`` with the same
variables, so one plot or table compares them:

- ``posterior``: ``linear.weight``, ``linear.precision``, ``linear.support`` (0/1 draws) over
  ``(chain, draw, weight_dim)``, ``noise_precision`` where it was learned, and, for SVI and NUTS,
  ``linear.support_probs`` (the per-draw ``P(s = 1 | draw)`` whose mean is the posterior support
  probability). NUTS chains stay separate, so r-hat compares them.
- ``log_likelihood`` (``obs`` over ``obs_dim``, pointwise ``log N(y_m; x_m w, 1/beta)``) and
  ``observed_data``, for ``arviz.loo`` / ``arviz.compare`` across priors.
- ``sample_stats``: ``diverging`` for NUTS.

It is written against ``arviz.from_dict``, whose call changed between ArviZ 0.x (groups as
keywords) and 1.x (one mapping of groups); both are served.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_dturbo.inference.baselines import MCMCResult, SVIResult
from pyro_dturbo.models.regression import LAYER

if TYPE_CHECKING:
    import pandas as pd


def _arviz() -> Any:
    """ArviZ, imported on first use: with pandas and xarray it takes seconds to import, which
    every process importing :mod:`pyro_dturbo.inference` would pay (a Flower ClientApp starts
    one per round)."""
    with warnings.catch_warnings():
        # ArviZ 0.23 announces its 1.x rewrite with a FutureWarning, once a day, when imported;
        # it asks nothing of us and would make this import fail under ``-W error``.
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
        import arviz

    return arviz


__all__ = ["to_arviz", "summary"]

#: The dimension that indexes the regression weights.
WEIGHT_DIM = "weight_dim"
#: The dimension that indexes the observations.
OBS_DIM = "obs_dim"


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _dims(name: str, shape: Sequence[int]) -> list[str]:
    """Dimension names of a variable's event shape: ``weight_dim`` for the regression weights,
    ``{layer}_dim_{i}`` for other layers, none for scalars."""
    if not shape:
        return []
    layer = name.rsplit(".", 1)[0] if "." in name else name
    if layer == LAYER and len(shape) == 1:
        return [WEIGHT_DIM]
    return [f"{layer}_dim_{i}" for i in range(len(shape))]


def _turbo_draws(result: Any, num_samples: int, seed: int) -> dict[str, Tensor]:
    """``num_samples`` draws from the Turbo-VBI posterior, seeded without moving the caller's
    random streams (the draws are made where the posterior lives)."""
    guide = result.guide()
    device = torch.as_tensor(result.mean).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        draws = guide.sample_posterior(num_samples)
    return {k: v.unsqueeze(0) for k, v in draws.items()}


def _log_likelihood(
    draws: dict[str, Tensor], X: Tensor, y: Tensor, fixed_noise: float | None
) -> Tensor:
    """Pointwise ``log N(y_m; x_m . w, 1/beta)`` for every draw: ``(chain, draw, M)``."""
    w = draws[f"{LAYER}.weight"].to(X.dtype)
    if "noise_precision" in draws:
        beta = draws["noise_precision"].to(X.dtype).unsqueeze(-1)
    else:
        assert fixed_noise is not None
        beta = torch.tensor(fixed_noise, dtype=X.dtype, device=X.device)
    return dist.Normal(w @ X.T, beta.rsqrt()).log_prob(y)


def _from_dict(groups: dict[str, dict[str, np.ndarray]], **kwargs: Any) -> Any:
    az = _arviz()
    from_dict: Any = az.from_dict
    if int(az.__version__.split(".")[0]) >= 1:  # pragma: no cover - ArviZ 1.x needs Python >= 3.12
        return from_dict(groups, **kwargs)  # one mapping {group: {variable: array}}
    return from_dict(**groups, **kwargs)  # 0.x: one keyword per group


def _divergences(result: MCMCResult) -> np.ndarray:
    """``(chain, draw)`` booleans from Pyro's per-chain lists of divergent draws."""
    num_chains, num_draws = result.chain_samples[f"{LAYER}.weight"].shape[:2]
    diverging = np.zeros((num_chains, num_draws), dtype=bool)
    per_chain = result.mcmc.diagnostics().get("divergences", {})
    for chain in range(num_chains):
        diverging[chain, per_chain.get(f"chain {chain}", [])] = True
    return diverging


def to_arviz(result: Any, *, num_samples: int = 500, seed: int = 0) -> Any:
    """An ``arviz.InferenceData`` holding a Turbo-VBI, SVI or NUTS posterior.

    :param result: a :class:`~pyro_dturbo.inference.turbo.SparseRegressionResult` (or any
        Turbo result with a ``guide()`` returning a
        :class:`~pyro_dturbo.inference.guide.TurboGuide`), an
        :class:`~pyro_dturbo.inference.baselines.SVIResult` or an
        :class:`~pyro_dturbo.inference.baselines.MCMCResult`.
    :param int num_samples: draws from a Turbo posterior (SVI and NUTS results bring their own).
    :param int seed: seeds those draws (the caller's RNG state is left as it was).
    :returns: ``InferenceData`` with ``posterior`` (one chain for Turbo and SVI, NUTS's chains
        kept apart), ``log_likelihood`` and ``observed_data`` where the result holds its data,
        and ``sample_stats.diverging`` for NUTS.
    :raises TypeError: for any other object.

    Example::

        >>> idata = to_arviz(run_mcmc(X, y, prior, noise_precision=1e3, num_chains=2))
        >>> az.summary(idata, var_names=["linear.weight"])["r_hat"].max()
        >>> az.plot_forest([to_arviz(turbo), idata], model_names=["Turbo-VBI", "NUTS"],
        ...                var_names=["linear.support"])
    """
    groups: dict[str, dict[str, np.ndarray]] = {}
    if isinstance(result, MCMCResult):
        draws = dict(result.chain_samples)
        groups["sample_stats"] = {"diverging": _divergences(result)}
    elif isinstance(result, SVIResult):
        draws = {k: v.unsqueeze(0) for k, v in result.samples.items()}
    elif callable(getattr(result, "guide", None)):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        draws = _turbo_draws(result, num_samples, seed)
    else:
        raise TypeError(
            "to_arviz takes a Turbo-VBI result with a guide(), an SVIResult or an MCMCResult; "
            f"got {type(result).__name__}"
        )
    groups["posterior"] = {k: _numpy(v) for k, v in draws.items()}
    dims = {k: _dims(k, v.shape[2:]) for k, v in draws.items()}
    coords = {
        name: np.arange(size)
        for k, v in draws.items()
        for name, size in zip(dims[k], v.shape[2:], strict=True)
    }
    X, y = getattr(result, "X", None), getattr(result, "y", None)
    if X is not None and y is not None and f"{LAYER}.weight" in draws:
        fixed = getattr(result, "fixed_noise_precision", None)
        groups["log_likelihood"] = {"obs": _numpy(_log_likelihood(draws, X, y, fixed))}
        groups["observed_data"] = {"obs": _numpy(y)}
        dims["obs"] = [OBS_DIM]
        coords[OBS_DIM] = np.arange(y.shape[0])
    return _from_dict(groups, dims=dims, coords=coords)


@contextmanager
def _quiet_constant_draws() -> Iterator[None]:
    # A variable that is constant in the draws (a support that is certainly active, all draws 1)
    # has zero within-chain variance; ArviZ divides by it, warns, and reports r-hat / ESS as NaN,
    # which is the right answer. Only those numpy warnings are silenced.
    with warnings.catch_warnings():
        for message in ("invalid value encountered", "divide by zero encountered"):
            warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
        yield


def summary(
    result: Any,
    var_names: Sequence[str] | None = None,
    *,
    num_samples: int = 500,
    seed: int = 0,
    **kwargs: Any,
) -> pd.DataFrame:
    """``arviz.summary`` of a result (or of an ``InferenceData``): means, sds, HDIs, and for
    several chains r-hat and ESS.

    :param result: anything :func:`to_arviz` takes, or an ``InferenceData``.
    :param var_names: variables to include (default all), e.g. ``["linear.weight"]``.
    :param int num_samples: draws from a Turbo posterior; :param int seed: their seed.
    :param kwargs: passed to ``arviz.summary`` (``kind``, ``hdi_prob``, ``round_to``, ...).
    :returns: a ``pandas.DataFrame`` with one row per scalar (``linear.weight[3]``, ...).

    Example::

        >>> summary(mcmc_result, ["linear.weight", "linear.support_probs"])["r_hat"].max()
    """
    import pandas as pd

    az = _arviz()
    idata = (
        result
        if isinstance(result, az.InferenceData)
        else to_arviz(result, num_samples=num_samples, seed=seed)
    )
    with _quiet_constant_draws():
        table = az.summary(
            idata, var_names=list(var_names) if var_names is not None else None, **kwargs
        )
    assert isinstance(table, pd.DataFrame)
    return table
