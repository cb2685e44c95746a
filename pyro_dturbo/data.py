"""Data: generated problems with a known truth, and how estimates are scored against it.

Everything here runs offline. :func:`clustered_sparse_regression` draws a compressed-sensing
problem whose support is a stationary binary Markov chain (the setting of DESIGN section 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pyro_dturbo.inference.chain import sample_chain

__all__ = [
    "RegressionProblem",
    "clustered_sparse_regression",
    "oracle_least_squares",
    "nmse_db",
    "support_f1",
]


@dataclass
class RegressionProblem:
    """A generated sparse regression problem ``y = X w + e``.

    :ivar X: ``(M, N)`` design, i.i.d. ``N(0, 1/M)`` entries (unit-norm columns on average).
    :ivar y: ``(M,)`` observations. :ivar weight: the true ``w``. :ivar support: the true ``s``.
    :ivar noise_precision: the true ``beta``.
    """

    X: Tensor
    y: Tensor
    weight: Tensor
    support: Tensor
    noise_precision: float


def clustered_sparse_regression(
    num_obs: int,
    num_weights: int = 512,
    *,
    p01: float = 0.01,
    p10: float = 0.1,
    snr_db: float = 30.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> RegressionProblem:
    """Draw a clustered sparse regression problem.

    The support is a stationary Markov chain (``P(0->1) = p01``, ``P(1->0) = p10``), active
    weights are ``N(0, 1)``, ``X`` has i.i.d. ``N(0, 1/M)`` entries and the noise variance is set
    so that ``||X w||^2 / M`` is ``snr_db`` above it. Reproducible from ``seed`` alone; the
    global RNG is not touched.

    :param int num_obs: ``M``. :param int num_weights: ``N``.
    :returns: a :class:`RegressionProblem`.
    :raises ValueError: on non-positive sizes or probabilities outside (0, 1).
    """
    if num_obs < 1 or num_weights < 1:
        raise ValueError(f"num_obs and num_weights must be positive, got {num_obs}, {num_weights}")
    for name, p in (("p01", p01), ("p10", p10)):
        if not 0.0 < p < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {p}")
    gen = torch.Generator().manual_seed(seed)
    support = sample_chain(
        torch.tensor(p01, dtype=dtype),
        torch.tensor(p10, dtype=dtype),
        (num_weights,),
        generator=gen,
    )
    weight = torch.randn(num_weights, generator=gen, dtype=dtype) * support
    X = torch.randn(num_obs, num_weights, generator=gen, dtype=dtype) / math.sqrt(num_obs)
    signal = X @ weight
    power = float(signal.pow(2).mean())
    noise_var = (power if power > 0 else 1.0) / 10 ** (snr_db / 10)
    y = signal + math.sqrt(noise_var) * torch.randn(num_obs, generator=gen, dtype=dtype)
    return RegressionProblem(X, y, weight, support, 1.0 / noise_var)


def oracle_least_squares(X: Tensor, y: Tensor, support: Tensor) -> Tensor:
    """Least squares restricted to the true support (zero elsewhere): the oracle estimate."""
    active = support > 0.5
    estimate = torch.zeros(X.shape[1], dtype=X.dtype)
    if active.any():
        solution = torch.linalg.lstsq(X[:, active], y.unsqueeze(-1)).solution
        estimate[active] = solution.squeeze(-1)
    return estimate


def nmse_db(estimate: Tensor, truth: Tensor) -> float:
    """Normalised squared error ``10 log10(||est - truth||^2 / ||truth||^2)`` in dB."""
    err = float((estimate - truth).pow(2).sum())
    ref = float(truth.pow(2).sum())
    return 10 * math.log10(max(err, 1e-300) / max(ref, 1e-300))


def support_f1(estimated: Tensor, truth: Tensor) -> float:
    """F1 score of an estimated support (bool / 0-1) against the true one."""
    est, true = estimated.bool(), truth > 0.5
    tp = int((est & true).sum())
    fp = int((est & ~true).sum())
    fn = int((~est & true).sum())
    if tp == 0:
        return 1.0 if fp == 0 and fn == 0 else 0.0
    return 2 * tp / (2 * tp + fp + fn)
