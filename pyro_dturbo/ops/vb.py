"""Closed-form pieces of Turbo-VBI's Module A, as plain tensor functions.

Everything here is free of Pyro and of the rest of the package: the Gaussian posterior of a
linear model, the data's Gaussian *site* on each weight (the marginal with the prior removed),
the **extrinsic** evidence a site carries about the weight's support, and the mean-field
updates of the precisions ``q(rho)`` and the noise ``q(beta)``. The algorithm is written out in
``docs/algorithm.md``.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. IV-A, eqs. (11)-(17).
[2] M. E. Tipping, "Sparse Bayesian learning and the relevance vector machine", JMLR 2001
    (the Gaussian posterior of ``w`` and the Woodbury form).
[3] T. Minka, "Expectation Propagation for approximate Bayesian inference", UAI 2001
    (sites and cavities in natural parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pyro_dturbo.ops.messages import PRECISION_FLOOR, GaussianMessage

__all__ = [
    "GaussianPosterior",
    "gaussian_posterior",
    "site_from_marginal",
    "cavity_evidence",
    "matched_precision",
    "precision_params",
    "update_precision",
    "update_noise_precision",
]

GammaPair = tuple[float, float]


@dataclass
class GaussianPosterior:
    """The diagonal of ``q(w) = N(mean, Sigma)`` plus the data's site on every weight.

    :ivar mean: ``E[w]``. :ivar variance: ``diag Sigma``.
    :ivar site: the data's Gaussian message about each ``w_n`` with ``w_n``'s own prior removed.
    :ivar residual_sq: ``E_q ||y - X w||^2``.
    """

    mean: Tensor
    variance: Tensor
    site: GaussianMessage
    residual_sq: Tensor


def gaussian_posterior(
    X: Tensor, y: Tensor, prior_precision: Tensor, noise_precision: Tensor | float
) -> GaussianPosterior:
    """``q(w) = N(mu, Sigma)``, ``Sigma = (beta X^T X + diag(rho))^-1``, ``mu = beta Sigma X^T y``.

    With fewer rows than columns it works in the ``M x M`` Woodbury form and computes the
    site directly (no ``1/Sigma_nn - rho_n`` cancellation when ``rho_n`` is huge); otherwise by
    a Cholesky factor of the ``N x N`` precision. No explicit inverse either way. Call it in
    float64: in float32 the Woodbury site leaks ``rho`` into the evidence through rounding.

    :param torch.Tensor X: ``(M, N)`` design.
    :param torch.Tensor y: ``(M,)`` observations.
    :param torch.Tensor prior_precision: ``E[rho]``, ``(N,)``, positive.
    :param noise_precision: ``E[beta]``.
    :returns: a :class:`GaussianPosterior`.

    References

    [1] Tipping (2001), eqs. (13)-(14); Sherman-Morrison for the leave-one-prior-out site.
    """
    M, N = X.shape
    rho = prior_precision
    beta = torch.as_tensor(noise_precision, dtype=X.dtype, device=X.device)
    tiny = torch.finfo(X.dtype).tiny
    if M < N:
        # K = I / beta + X diag(1/rho) X^T; g_n = x_n^T K^-1 x_n, t_n = x_n^T K^-1 y.
        Xs = X / rho
        K = Xs @ X.T
        K.diagonal().add_(1.0 / beta)
        L = torch.linalg.cholesky(K)
        A = torch.linalg.solve_triangular(L, X, upper=False)  # L^-1 X
        b = torch.linalg.solve_triangular(L, y.unsqueeze(-1), upper=False).squeeze(-1)
        g = (A * A).sum(0)
        t = A.T @ b
        mean = t / rho
        variance = (rho - g).clamp_min(0) / rho**2
        # Leave w_n's prior out (Sherman-Morrison): h = g rho / (rho - g), eta = h t / g.
        gap = (rho - g).clamp_min(tiny)
        site = GaussianMessage(g * rho / gap, t * rho / gap).with_precision_floor()
    else:
        P = beta * (X.T @ X)
        P.diagonal().add_(rho)
        chol = torch.linalg.cholesky(P)
        mean = torch.cholesky_solve((beta * (X.T @ y)).unsqueeze(-1), chol).squeeze(-1)
        eye = torch.eye(N, dtype=X.dtype, device=X.device)
        Linv = torch.linalg.solve_triangular(chol, eye, upper=False)
        variance = (Linv * Linv).sum(0)
        site = site_from_marginal(
            GaussianMessage.from_moments(mean, variance), GaussianMessage.prior(rho)
        )
    resid = y - X @ mean
    # beta tr(X Sigma X^T) = N - sum_n rho_n Sigma_nn, from Sigma (beta X^T X + D) = I.
    trace = (N - (rho * variance).sum()).clamp_min(0) / beta
    return GaussianPosterior(mean, variance, site, resid @ resid + trace)


def site_from_marginal(
    marginal: GaussianMessage, prior: GaussianMessage, floor: float = PRECISION_FLOOR
) -> GaussianMessage:
    """The data's site on each weight: the marginal with the prior factor removed.

    ``site = q(w) / prior(w)`` in natural parameters, its precision raised to ``floor``. The
    prior may have a non-zero mean (a federated client's cavity); it is removed exactly.

    :param GaussianMessage marginal: ``q(w_n)``.
    :param GaussianMessage prior: the Gaussian prior ``q(w_n)`` was fitted under.
    :param float floor: the precision floor (default :data:`~pyro_dturbo.ops.PRECISION_FLOOR`).
    :returns: the site, a :class:`~pyro_dturbo.ops.GaussianMessage`.

    Example::

        >>> q = GaussianMessage.from_moments(torch.tensor([0.5]), torch.tensor([0.25]))
        >>> site_from_marginal(q, GaussianMessage.prior(torch.tensor([1.0]))).precision
        tensor([3.])
    """
    return (marginal / prior).with_precision_floor(floor)


def cavity_evidence(
    site: GaussianMessage, active_variance: float, inactive_variance: float
) -> Tensor:
    """Extrinsic evidence ``L_n`` about ``s_n`` from the data's site on ``w_n``.

    With the site ``N(r_n, 1/h_n)`` (natural parameters ``h_n``, ``eta_n = h_n r_n``),

        ``L_n = log N(r_n; 0, v1 + 1/h_n) - log N(r_n; 0, v0 + 1/h_n)``

    is how much better the data are explained by an active weight (prior variance ``v1``) than
    by an inactive one (``v0``). It depends on neither ``pi_n`` nor ``q(rho_n)``, so Module B
    never receives its own output back. It is evaluated in the form

        ``L_n = 1/2 log((1 + v0 h) / (1 + v1 h)) + 1/2 eta^2 (v1 - v0) / ((1 + v0 h)(1 + v1 h))``

    which has no cancellation: it is exact in float32 for sites at the precision floor
    (``L -> 0`` as ``h -> 0`` with ``eta`` fixed) and for very precise sites.

    :param GaussianMessage site: the data's site (``h`` positive).
    :param float active_variance: ``v1 = b / a``. :param float inactive_variance: ``v0``.
    :returns: ``L`` in nats, the shape of the site.

    References

    [1] ``docs/algorithm.md``, "The extrinsic A -> B message".
    [2] Xia, Tsang, Lau (arXiv:2302.10483), Sec. IV (turbo exchange of extrinsic messages).
    """
    h, eta = site.precision, site.eta
    one0 = 1.0 + inactive_variance * h
    one1 = 1.0 + active_variance * h
    log_ratio = torch.log1p((inactive_variance - active_variance) * h / one1)
    return 0.5 * log_ratio + 0.5 * eta * eta * (active_variance - inactive_variance) / (one0 * one1)


def matched_precision(
    support_probs: Tensor, site_precision: Tensor, active_variance: float, inactive_variance: float
) -> Tensor:
    """The prior precision that gives ``w_n`` the spike-and-slab posterior mean.

    Given the data's site ``N(r_n, 1/h_n)`` and ``q_n = q(s_n = 1)``, the posterior mean of
    ``w_n`` under the two-component prior (variances ``v1``, ``v0``) is
    ``h r [q / (h + 1/v1) + (1 - q) / (h + 1/v0)]``; a Gaussian prior ``N(0, 1/tau)`` gives
    ``h r / (h + tau)``. Equating them,
    ``tau = 1 / [q / (h + 1/v1) + (1 - q) / (h + 1/v0)] - h``, clamped to ``[1/v1, 1/v0]``.
    ``tau_n`` does not enter ``w_n``'s own site, so the A -> B message stays extrinsic.

    References

    [1] J. M. Hernandez-Lobato, D. Hernandez-Lobato, A. Suarez, "Expectation propagation in
        linear regression models with spike-and-slab priors", Machine Learning 2015
        (moment matching of the spike-and-slab factor against a Gaussian site).
    """
    p1, p0 = 1.0 / active_variance, 1.0 / inactive_variance
    h = site_precision
    harmonic = support_probs / (h + p1) + (1 - support_probs) / (h + p0)
    return (1.0 / harmonic - h).clamp(p1, p0)


def precision_params(
    support_probs: Tensor, active: GammaPair, inactive: GammaPair
) -> tuple[Tensor, Tensor]:
    """Gamma shape and rate of ``rho`` given (possibly soft) supports ``q(s = 1)``.

    ``q a + (1 - q) abar`` and ``q b + (1 - q) bbar``: the prior's natural parameters mixed by
    ``q`` (exact at ``q in {0, 1}``).
    """
    (a, b), (abar, bbar) = active, inactive
    q = support_probs
    return q * a + (1 - q) * abar, q * b + (1 - q) * bbar


def update_precision(
    support_probs: Tensor,
    second_moment: Tensor,
    active: GammaPair,
    inactive: GammaPair,
    demo_constants: bool = False,
) -> tuple[Tensor, Tensor]:
    """``q(rho_n) = Gamma(at_n, bt_n)``.

    ``at = q a + (1-q) abar + 1/2``, ``bt = q b + (1-q) bbar + E[w^2]/2``. With
    ``demo_constants=True`` the authors' TensorFlow demo's complex-valued form (``+1`` and
    ``E[w^2]``; github.com/cxiaab/D-turbo-vbi-FL, commit 8a89cc7).

    :param torch.Tensor support_probs: ``q(s = 1)``.
    :param torch.Tensor second_moment: ``E[w^2]`` under ``q(w)`` (about the prior mean).
    :param active: ``(a, b)``. :param inactive: ``(abar, bbar)``.
    :returns: ``(shape, rate)``.
    """
    shape, rate = precision_params(support_probs, active, inactive)
    if demo_constants:
        return shape + 1.0, rate + second_moment
    return shape + 0.5, rate + 0.5 * second_moment


def update_noise_precision(
    residual_sq: Tensor, num_obs: int, prior: GammaPair
) -> tuple[Tensor, Tensor]:
    """``q(beta) = Gamma(c + M/2, d + E||y - Xw||^2 / 2)``; returns ``(shape, rate)``."""
    c, d = prior
    return residual_sq.new_tensor(c + 0.5 * num_obs), d + 0.5 * residual_sq
