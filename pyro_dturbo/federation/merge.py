"""Merging the clients' Gaussian sites: pure functions on :class:`~pyro_dturbo.ops.GaussianMessage`.

The server of D-Turbo-VBI keeps one diagonal Gaussian *site* ``t_k(w)`` per client, in natural
parameters. The global posterior is the prior times the product of the sites, the prior counted
once:

    ``q(w) ∝ N(w; m, 1/p) * prod_k t_k(w)``        (:func:`merge_sites`)

client ``k``'s *cavity* is ``q / t_k`` (:func:`cavity`), and a client's reply ``q_k`` (its local
posterior after training against that cavity) gives its new site ``t_k' = q_k / cavity_k``
(:func:`site_from_reply`). Parallel updates from one cavity overshoot, so the stored site moves
only part of the way, ``t_k <- t_k^(1-a) * t_k'^a`` in natural parameters (:func:`update_site`;
power EP / damped PVI). Sites may have negative precisions (as in EP); what must stay proper is
every distribution a client trains against and the global posterior, so :func:`proper` floors
those at a fraction of the prior's precision.

``aggregation="moment_average"`` (the authors' demo) is :func:`moment_average`: the data-size
weighted average of the clients' means and variances, each client having trained against the
full prior.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Bayesian Federated Model Compression for Communication
    and Computation Efficiency", arXiv:2404.07532 (D-Turbo-VBI).
[2] T. D. Bui, C. V. Nguyen, S. Swaroop, R. E. Turner, "Partitioned Variational Inference: A
    unified framework encompassing federated and continual learning", arXiv:1811.11206, 2018
    (one factor per client, damped updates ``t <- t + rho (q_new - q_old)``).
[3] H. Guo, P. Greengard, H. Wang, A. Gelman, Y. Kim, E. P. Xing, "Federated Learning as
    Variational Inference: A Scalable Expectation Propagation Approach", ICLR 2023 (FedEP:
    damping ``1/K``).
[4] T. Minka, "Expectation Propagation for approximate Bayesian inference", UAI 2001.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pyro_dturbo.ops.messages import GaussianMessage

__all__ = [
    "PROPER_FRACTION",
    "merge_sites",
    "product_of_sites",
    "cavity",
    "site_from_reply",
    "update_site",
    "proper",
    "moment_average",
    "weighted_average",
    "flat_site",
]

#: The smallest precision a cavity or the global posterior may have, as a fraction of the
#: prior's precision at that weight.
PROPER_FRACTION = 1e-3


def flat_site(like: Tensor) -> GaussianMessage:
    """The site that says nothing: precision and ``eta`` zero."""
    return GaussianMessage(torch.zeros_like(like), torch.zeros_like(like))


def product_of_sites(sites: Sequence[GaussianMessage]) -> GaussianMessage:
    """``prod_k t_k``: the data's site on every weight (natural parameters summed).

    :raises ValueError: on an empty sequence.
    """
    if not sites:
        raise ValueError("product_of_sites needs at least one site")
    precision = torch.stack([t.precision for t in sites]).sum(0)
    eta = torch.stack([t.eta for t in sites]).sum(0)
    return GaussianMessage(precision, eta)


def merge_sites(prior: GaussianMessage, sites: Sequence[GaussianMessage]) -> GaussianMessage:
    """The global posterior ``prior * prod_k t_k`` (the prior counted once).

    Example::

        >>> prior = GaussianMessage.prior(torch.ones(3))
        >>> sites = [GaussianMessage(torch.full((3,), 2.0), torch.ones(3))] * 2
        >>> merge_sites(prior, sites).mean      # (0 + 1 + 1) / (1 + 2 + 2)
        tensor([0.4000, 0.4000, 0.4000])
    """
    if not sites:
        return prior
    return prior * product_of_sites(sites)


def cavity(posterior: GaussianMessage, site: GaussianMessage) -> GaussianMessage:
    """``q / t_k``: the global posterior without client ``k``'s site."""
    return posterior / site


def site_from_reply(reply: GaussianMessage, cavity: GaussianMessage) -> GaussianMessage:
    """A client's new site ``t_k' = q_k / cavity_k`` from its local posterior ``q_k``."""
    return reply / cavity


def update_site(old: GaussianMessage, new: GaussianMessage, step: float) -> GaussianMessage:
    """Move a stored site part of the way to a client's new one: ``old^(1-step) * new^step``.

    :param float step: in ``(0, 1]``; 1 replaces the site.
    :raises ValueError: if ``step`` is outside ``(0, 1]``.
    """
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if step == 1.0:
        return new
    return new.damp(old, 1.0 - step)


def proper(
    message: GaussianMessage, prior: GaussianMessage, fraction: float = PROPER_FRACTION
) -> GaussianMessage:
    """``message`` with every precision below ``fraction * prior.precision`` raised to it,
    ``eta`` kept: a cavity or a posterior a client can train against.

    Where the message is already proper enough it is returned bit for bit, so with one client
    (whose cavity is the prior) nothing is changed.
    """
    floor = fraction * prior.precision
    low = message.precision < floor
    if not bool(low.any()):
        return message
    return GaussianMessage(torch.where(low, floor, message.precision), message.eta)


def weighted_average(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``sum_k w_k x_k / sum_k w_k`` (one tensor: itself, bit for bit).

    :param weights: non-negative (e.g. the clients' numbers of examples), not all zero.
    :raises ValueError: on empty or mismatched inputs, or weights that do not sum to > 0.
    """
    if not tensors or len(tensors) != len(weights):
        raise ValueError("weighted_average needs as many tensors as weights (>= 1)")
    w = torch.as_tensor(
        [float(v) for v in weights], dtype=tensors[0].dtype, device=tensors[0].device
    )
    if bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be >= 0 and sum to > 0, got {list(weights)}")
    w = w / w.sum()
    shape = (-1,) + (1,) * tensors[0].dim()
    return (w.reshape(shape) * torch.stack(list(tensors))).sum(0)


def moment_average(
    means: Sequence[Tensor], variances: Sequence[Tensor], weights: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """The weighted average of means and of variances (the authors' demo's merge).

    :param weights: non-negative (e.g. the clients' numbers of examples), not all zero.
    :returns: ``(mean, variance)``.
    :raises ValueError: on empty or mismatched inputs, or weights that do not sum to > 0.
    """
    if not means or len(means) != len(variances) or len(means) != len(weights):
        raise ValueError("moment_average needs as many means, variances and weights (>= 1)")
    return weighted_average(means, weights), weighted_average(variances, weights)
