"""Sparse linear regression (compressed sensing) as a Pyro model.

``y = X w + e``, ``e ~ Normal(0, 1 / beta)``, with the hierarchical sparse prior on ``w``.
Sites: ``"linear.support"``, ``"linear.precision"``, ``"linear.weight"``,
``"noise_precision"`` (unless fixed) and ``"obs"``.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.models.support import MarkovChainSupport

__all__ = [
    "sparse_regression_model",
    "default_regression_prior",
    "check_regression_data",
    "LAYER",
    "NOISE_PRIOR",
]

#: The site prefix of the regression weights.
LAYER = "linear"
#: Shape and rate of the (weak) Gamma prior on the noise precision when it is learned.
NOISE_PRIOR = (1.0, 1e-3)


def default_regression_prior() -> SparsePrior:
    """A Markov-chain prior for clustered sparse vectors with unit-scale active entries.

    Chain ``p01 = 0.01, p10 = 0.1`` (about 9% active, runs of 10), active precision
    ``Gamma(1, 1)`` (wide), inactive ``Gamma(100, 1e-4)``: narrow around a precision of 1e6,
    so an inactive weight cannot widen its own prior to absorb noise (a shape-1 inactive law
    lets it, and the learned noise precision then runs away).
    """
    return SparsePrior(
        MarkovChainSupport(p01=0.01, p10=0.1), active=(1.0, 1.0), inactive=(100.0, 1e-4)
    )


def check_regression_data(X: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Validate a design matrix and observations; returns them as floating tensors.

    :raises ValueError: on a non-2-D ``X``, a ``y`` whose length differs from ``X``'s rows,
        or NaN / Inf values.
    """
    X = torch.as_tensor(X)
    if not X.is_floating_point():
        X = X.to(torch.get_default_dtype())
    if X.dim() != 2:
        raise ValueError(f"X must be a matrix (M, N), got shape {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or Inf")
    if y is not None:
        y = torch.as_tensor(y, dtype=X.dtype, device=X.device)
        if y.dim() != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"y must be a vector with one entry per row of X ({X.shape[0]}), got shape "
                f"{tuple(y.shape)}"
            )
        if not torch.isfinite(y).all():
            raise ValueError("y contains NaN or Inf")
    return X, y


def sparse_regression_model(
    X: Tensor,
    y: Tensor | None = None,
    prior: SparsePrior | None = None,
    noise_precision: float | None = None,
    marginalize_support: bool = False,
) -> Tensor:
    """Sparse linear regression with a structured sparse prior, as a Pyro model.

    :param torch.Tensor X: design matrix ``(M, N)``.
    :param torch.Tensor y: observations ``(M,)``, or ``None`` to sample them.
    :param SparsePrior prior: the prior on ``w`` (default :func:`default_regression_prior`).
    :param float noise_precision: fixed ``beta``; ``None`` puts a weak Gamma prior on it
        (site ``"noise_precision"``).
    :param bool marginalize_support: sum the supports out exactly (chain / independent
        supports), as the SVI and NUTS baselines need.
    :returns: the observations (in ``X``'s dtype and device, as every tensor of the model: no
        global default dtype is needed).

    Example::

        >>> X = torch.randn(64, 128)
        >>> trace = pyro.poutine.trace(sparse_regression_model).get_trace(X)
        >>> trace.nodes["linear.support"]["value"].shape
        torch.Size([128])
    """
    X, y = check_regression_data(X, y)
    prior = prior if prior is not None else default_regression_prior()
    w = prior.model(LAYER, (X.shape[1],), marginalize_support=marginalize_support)
    # every tensor follows the data: a prior may draw in torch's default dtype (a guide's value,
    # replayed at the site, is used as it is)
    w = w.to(dtype=X.dtype, device=X.device)
    kw: dict[str, Any] = {"dtype": X.dtype, "device": X.device}
    if noise_precision is None:
        beta = pyro.sample(
            "noise_precision",
            dist.Gamma(torch.tensor(NOISE_PRIOR[0], **kw), torch.tensor(NOISE_PRIOR[1], **kw)),
        )
    else:
        if not noise_precision > 0:
            raise ValueError(f"noise_precision must be positive, got {noise_precision}")
        beta = torch.tensor(float(noise_precision), **kw)
    # w @ X.T and a trailing dim on beta keep the model vectorisable over draws
    # (Predictive(parallel=True), arviz.from_pyro's pointwise log-likelihoods).
    return pyro.sample("obs", dist.Normal(w @ X.T, beta.rsqrt().unsqueeze(-1)).to_event(1), obs=y)
