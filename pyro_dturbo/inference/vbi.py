"""Module A of Turbo-VBI: mean-field variational Bayes for ``w, rho, s`` (and the noise).

Plain tensor functions for the closed-form updates, and :class:`RegressionModuleA`, which
runs them for sparse linear regression given a Bernoulli prior message ``pi`` on the supports
and returns the **extrinsic** evidence ``L_n`` about each ``s_n``.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. IV-A, eqs. (11)-(17).
[2] M. E. Tipping, "Sparse Bayesian learning and the relevance vector machine", JMLR 2001
    (the Gaussian posterior of ``w`` and the Woodbury form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pyro_dturbo.inference.messages import clip_logits
from pyro_dturbo.models.prior import SparsePrior

__all__ = [
    "GaussianPosterior",
    "gaussian_posterior",
    "site_from_marginal",
    "cavity_evidence",
    "matched_precision",
    "update_precision",
    "update_noise_precision",
    "RegressionModuleA",
]

#: Smallest data precision a cavity may have (a weight the data says nothing about).
MIN_SITE_PRECISION = 1e-12


@dataclass
class GaussianPosterior:
    """The diagonal of ``q(w) = N(mean, Sigma)`` plus what the cavity needs.

    ``site_precision`` (``h_n``) and ``site_mean`` (``r_n``) describe the data's Gaussian
    message about ``w_n`` with ``w_n``'s own prior removed; ``residual_sq`` is
    ``E_q ||y - X w||^2``.
    """

    mean: Tensor
    variance: Tensor
    site_precision: Tensor
    site_mean: Tensor
    residual_sq: Tensor


def gaussian_posterior(
    X: Tensor, y: Tensor, prior_precision: Tensor, noise_precision: Tensor | float
) -> GaussianPosterior:
    """``q(w) = N(mu, Sigma)``, ``Sigma = (beta X^T X + diag(rho))^-1``, ``mu = beta Sigma X^T y``.

    With fewer rows than columns it works in the ``M x M`` Woodbury form and computes the
    cavity directly (no ``1/Sigma_nn - rho_n`` cancellation when ``rho_n`` is huge); otherwise
    by a Cholesky factor of the ``N x N`` precision. No explicit inverse either way.

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
        # Leave w_n's prior out (Sherman-Morrison): h = g rho / (rho - g), r = t / g.
        gap = (rho - g).clamp_min(torch.finfo(X.dtype).tiny)
        site_precision = (g * rho / gap).clamp_min(MIN_SITE_PRECISION)
        site_mean = t / g.clamp_min(torch.finfo(X.dtype).tiny)
    else:
        P = beta * (X.T @ X)
        P.diagonal().add_(rho)
        L = torch.linalg.cholesky(P)
        mean = torch.cholesky_solve((beta * (X.T @ y)).unsqueeze(-1), L).squeeze(-1)
        eye = torch.eye(N, dtype=X.dtype, device=X.device)
        Linv = torch.linalg.solve_triangular(L, eye, upper=False)
        variance = (Linv * Linv).sum(0)
        site_precision = (1.0 / variance - rho).clamp_min(MIN_SITE_PRECISION)
        site_mean = mean / (variance * site_precision)
    resid = y - X @ mean
    # beta tr(X Sigma X^T) = N - sum_n rho_n Sigma_nn, from Sigma (beta X^T X + D) = I.
    trace = (N - (rho * variance).sum()).clamp_min(0) / beta
    return GaussianPosterior(mean, variance, site_precision, site_mean, resid @ resid + trace)


def site_from_marginal(
    mean: Tensor, variance: Tensor, prior_precision: Tensor
) -> tuple[Tensor, Tensor]:
    """Remove the prior ``N(0, 1/rho)`` from a Gaussian marginal: the data's site on ``w_n``.

    ``h = 1/sigma^2 - rho`` (clamped positive), ``r = mu / (sigma^2 h)``.

    :returns: ``(site_precision, site_mean)``.
    """
    site_precision = (1.0 / variance - prior_precision).clamp_min(MIN_SITE_PRECISION)
    return site_precision, mean / (variance * site_precision)


def cavity_evidence(
    site_mean: Tensor, site_precision: Tensor, active_variance: float, inactive_variance: float
) -> Tensor:
    """Extrinsic evidence ``L_n`` about ``s_n`` from the data's site on ``w_n``.

    ``L_n = log N(r_n; 0, v1 + 1/h_n) - log N(r_n; 0, v0 + 1/h_n)``: how much better the data
    are explained by an active weight (variance ``v1 = b/a``) than by an inactive one
    (``v0 = bbar/abar``). It depends on neither ``pi_n`` nor ``q(rho_n)``, so Module B never
    receives its own output back.

    References

    [1] DESIGN.md section 4 ("The message A -> B must be extrinsic").
    """
    site_var = 1.0 / site_precision
    var1 = active_variance + site_var
    var0 = inactive_variance + site_var
    r2 = site_mean * site_mean
    return 0.5 * (torch.log(var0) - torch.log(var1)) + 0.5 * r2 * (1.0 / var0 - 1.0 / var1)


def matched_precision(
    support_probs: Tensor, site_precision: Tensor, active_variance: float, inactive_variance: float
) -> Tensor:
    """The prior precision that gives ``w_n`` the spike-and-slab posterior mean.

    Given the data's site ``N(r_n, 1/h_n)`` and ``q_n = q(s_n = 1)``, the posterior mean of
    ``w_n`` under the two-component prior (variances ``v1``, ``v0``) is
    ``h r [q / (h + 1/v1) + (1 - q) / (h + 1/v0)]``; a Gaussian prior ``N(0, 1/tau)`` gives
    ``h r / (h + tau)``. Equating them,
    ``tau = 1 / [q / (h + 1/v1) + (1 - q) / (h + 1/v0)] - h``, clamped to ``[1/v1, 1/v0]``.
    A weight with ``q = 0.8`` is then shrunk like a spike-and-slab posterior would (by about
    ``q``), where the mean-field ``E[rho]`` would already pull it most of the way to zero
    (the narrow inactive Gamma dominates the shape mixture ``q a + (1 - q) abar``). ``tau_n``
    does not enter ``w_n``'s own site, so the A -> B message stays extrinsic.

    References

    [1] J. M. Hernandez-Lobato, D. Hernandez-Lobato, A. Suarez, "Expectation propagation in
        linear regression models with spike-and-slab priors", Machine Learning 2015
        (moment matching of the spike-and-slab factor against a Gaussian site).
    """
    p1, p0 = 1.0 / active_variance, 1.0 / inactive_variance
    h = site_precision
    harmonic = support_probs / (h + p1) + (1 - support_probs) / (h + p0)
    return (1.0 / harmonic - h).clamp(p1, p0)


def update_precision(
    support_probs: Tensor, second_moment: Tensor, prior: SparsePrior, demo_constants: bool = False
) -> tuple[Tensor, Tensor]:
    """``q(rho_n) = Gamma(at_n, bt_n)``.

    ``at = q a + (1-q) abar + 1/2``, ``bt = q b + (1-q) bbar + E[w^2]/2``. With
    ``demo_constants=True`` the reference demo's complex-valued form (``+1`` and ``E[w^2]``).

    :returns: ``(shape, rate)``.
    """
    shape, rate = prior.precision_params(support_probs)
    if demo_constants:
        return shape + 1.0, rate + second_moment
    return shape + 0.5, rate + 0.5 * second_moment


def update_noise_precision(
    residual_sq: Tensor, num_obs: int, prior: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """``q(beta) = Gamma(c + M/2, d + E||y - Xw||^2 / 2)``; returns ``(shape, rate)``."""
    c, d = prior
    return residual_sq.new_tensor(c + 0.5 * num_obs), d + 0.5 * residual_sq


class RegressionModuleA:
    """Module A for ``y = X w + e``: closed-form mean-field updates, extrinsic evidence out.

    :param torch.Tensor X: ``(M, N)``; :param torch.Tensor y: ``(M,)``.
    :param SparsePrior prior: the prior (its support is only used by Module B).
    :param noise_precision: fixed ``beta``, or ``None`` to learn it with ``noise_prior``.
    :param noise_prior: Gamma ``(shape, rate)`` prior on ``beta`` when learned.
    :param int inner_iters: passes of the w / s / rho / beta updates per turbo iteration.
    :param bool demo_constants: use the reference demo's ``+1, E[w^2]`` precision update.
    :param float precision_damping: weight of the previous ``q(rho)`` natural parameters.
    :param str weight_prior: the prior precision ``q(w)`` is computed with:
        ``"mean_field"`` uses ``E_q[rho]`` (plain mean-field VB); ``"matched"`` (default) uses
        :func:`matched_precision`, which matches each weight's spike-and-slab posterior mean
        and, measured by ``benchmarks/regression.py``, recovers clustered supports at fewer
        measurements (``q(rho)`` is still updated and reported).
    """

    layer = "linear"

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        prior: SparsePrior,
        noise_precision: float | None = None,
        noise_prior: tuple[float, float] = (1.0, 1e-3),
        inner_iters: int = 1,
        demo_constants: bool = False,
        precision_damping: float = 0.0,
        weight_prior: str = "matched",
    ):
        if weight_prior not in ("matched", "mean_field"):
            raise ValueError(
                f"weight_prior must be 'matched' or 'mean_field', got {weight_prior!r}"
            )
        self.weight_prior = weight_prior
        if not 0.0 <= precision_damping < 1.0:
            raise ValueError(f"precision_damping must be in [0, 1), got {precision_damping}")
        self.precision_damping = float(precision_damping)
        self.X, self.y, self.prior = X, y, prior
        self.fixed_noise = noise_precision
        self.noise_prior = noise_prior
        self.inner_iters = int(inner_iters)
        self.demo_constants = demo_constants

    @property
    def support_shape(self) -> dict[str, tuple[int, ...]]:
        return {self.layer: (self.X.shape[1],)}

    def support_probs(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """``q(s = 1)`` per layer."""
        return {self.layer: params["support_probs"]}

    def init_params(self, prior_probs_by_layer: dict[str, Tensor]) -> dict[str, Tensor]:
        """Start on the inactive side: ``q(s) = pi``, ``E[rho]`` at its prior mean, and a
        learned noise precision at ``1 / var(y)`` (all of ``y`` counted as noise), so the
        first cavities are cautious and the strongest weights switch on first."""
        prior_probs = prior_probs_by_layer[self.layer]
        (a, b), (abar, bbar) = self.prior.active, self.prior.inactive
        mean_precision = prior_probs * (a / b) + (1 - prior_probs) * (abar / bbar)
        y_var = self.y.var() if self.y.numel() > 1 else self.y.new_tensor(1.0)
        beta = (
            self.y.new_tensor(float(self.fixed_noise))
            if self.fixed_noise is not None
            else 1.0 / y_var.clamp_min(1e-12)
        )
        shape = torch.ones_like(prior_probs)
        return {
            "support_probs": prior_probs.clone(),
            "precision_shape": shape,
            "precision_rate": shape / mean_precision,
            "noise_shape": beta.new_tensor(1.0),
            "noise_rate": 1.0 / beta,
        }

    def update(
        self, params: dict[str, Tensor], prior_logits: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, float]]:
        """One Module-A pass given Module B's log-odds ``logit(pi)`` per layer.

        :returns: ``(params, evidence_logits, metrics)``: the new posterior parameters, the
            extrinsic ``L`` per layer to send to Module B, and scalar diagnostics.
        """
        params = dict(params)
        logits = prior_logits[self.layer]
        M = self.X.shape[0]
        for _ in range(self.inner_iters):
            rho = params["precision_shape"] / params["precision_rate"]
            if self.weight_prior == "matched" and "site_precision" in params:
                rho = matched_precision(
                    params["support_probs"],
                    params["site_precision"],
                    self.prior.active_variance,
                    self.prior.inactive_variance,
                )
            beta = params["noise_shape"] / params["noise_rate"]
            post = gaussian_posterior(self.X, self.y, rho, beta)
            evidence = cavity_evidence(
                post.site_mean,
                post.site_precision,
                self.prior.active_variance,
                self.prior.inactive_variance,
            )
            q = torch.sigmoid(clip_logits(logits + evidence))
            second = post.mean**2 + post.variance
            shape, rate = update_precision(q, second, self.prior, self.demo_constants)
            if self.precision_damping > 0:
                d = self.precision_damping  # damp q(rho) in natural parameters
                shape = (1 - d) * shape + d * params["precision_shape"]
                rate = (1 - d) * rate + d * params["precision_rate"]
            params.update(
                support_probs=q,
                precision_shape=shape,
                precision_rate=rate,
                mean=post.mean,
                variance=post.variance,
                site_precision=post.site_precision,
            )
            if self.fixed_noise is None:
                noise_shape, noise_rate = update_noise_precision(
                    post.residual_sq, M, self.noise_prior
                )
                params.update(noise_shape=noise_shape, noise_rate=noise_rate)
        beta = params["noise_shape"] / params["noise_rate"]
        e_log_beta = torch.digamma(params["noise_shape"]) - torch.log(params["noise_rate"])
        if self.fixed_noise is not None:
            e_log_beta = torch.log(beta)
        expected_log_lik = (
            0.5 * M * (e_log_beta - math.log(2 * math.pi)) - 0.5 * beta * post.residual_sq
        )
        metrics = {
            "expected_log_lik": float(expected_log_lik),
            "noise_precision": float(beta),
        }
        return params, {self.layer: evidence}, metrics
