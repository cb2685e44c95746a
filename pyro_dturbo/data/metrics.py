"""Scores of an estimate against the truth of a generated problem, and the oracle reference."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["oracle_least_squares", "nmse_db", "support_f1"]


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
