"""Messages exchanged by Turbo-VBI: Bernoulli messages (log-odds) on supports and diagonal
Gaussian messages (natural parameters) on weights.

Products, divisions (cavities) and damping are methods, so code using them reads like the
equations: ``posterior = prior * likelihood``, ``cavity = posterior / site``.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. IV.
[2] T. Minka, "Expectation Propagation for approximate Bayesian inference", UAI 2001
    (sites, cavities and products in natural parameters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PROB_EPS", "PRECISION_FLOOR", "BernoulliMessage", "GaussianMessage", "clip_logits"]

#: Probabilities exchanged between modules are clipped to [PROB_EPS, 1 - PROB_EPS].
PROB_EPS = 1e-6
#: The one floor on the precision of a Gaussian site (a weight the data say nothing about):
#: sites read off a marginal, ``q / prior``, are raised to it so they stay proper. At this
#: floor a site's evidence about the support is zero to within ``1e-12`` nats.
PRECISION_FLOOR = 1e-12


def _from_numpy(array: np.ndarray, like: Tensor | None) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if like is not None:
        tensor = tensor.to(dtype=like.dtype, device=like.device)
    return tensor


def clip_logits(logits: Tensor, eps: float = PROB_EPS) -> Tensor:
    """Clip log-odds so the probabilities they encode lie in ``[eps, 1 - eps]``.

    :param torch.Tensor logits: log-odds.
    :param float eps: smallest probability allowed.
    :returns: clipped log-odds.
    :rtype: torch.Tensor
    """
    bound = float(torch.logit(torch.tensor(1.0 - eps, dtype=torch.float64)))
    return logits.clamp(-bound, bound)


@dataclass(frozen=True)
class BernoulliMessage:
    """A factor over a binary variable ``s`` in log-odds form, ``m(s) ∝ exp(logits * s)``.

    The product of two messages adds log-odds; the quotient (a cavity) subtracts them.

    :param torch.Tensor logits: log-odds ``log m(1) - log m(0)``, any shape.

    Example::

        >>> prior = BernoulliMessage.from_probs(torch.tensor([0.1, 0.5]))
        >>> evidence = BernoulliMessage(torch.tensor([2.0, -2.0]))
        >>> posterior = prior * evidence
        >>> extrinsic = posterior / prior   # recovers the evidence
    """

    logits: Tensor

    @classmethod
    def from_probs(cls, probs: Tensor, eps: float = PROB_EPS) -> BernoulliMessage:
        """Build a message from probabilities ``m(1) / (m(0) + m(1))`` (clipped to ``eps``)."""
        probs = torch.as_tensor(probs)
        return cls(torch.logit(probs.clamp(eps, 1.0 - eps)))

    @classmethod
    def uniform(
        cls, shape: tuple[int, ...] | torch.Size, **tensor_kwargs: object
    ) -> BernoulliMessage:
        """The non-informative message (log-odds zero)."""
        return cls(torch.zeros(shape, **tensor_kwargs))  # type: ignore[call-overload]

    @property
    def probs(self) -> Tensor:
        """``m(s=1)`` after normalisation."""
        return torch.sigmoid(self.logits)

    def __mul__(self, other: BernoulliMessage) -> BernoulliMessage:
        return BernoulliMessage(self.logits + other.logits)

    def __truediv__(self, other: BernoulliMessage) -> BernoulliMessage:
        return BernoulliMessage(self.logits - other.logits)

    def damp(self, previous: BernoulliMessage, damping: float) -> BernoulliMessage:
        """Mix with the previous message in the log-odds domain.

        :param BernoulliMessage previous: the message sent last time.
        :param float damping: weight of ``previous`` in ``[0, 1)``; 0 means no damping.
        """
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"damping must be in [0, 1), got {damping}")
        if damping == 0.0:
            return self
        return BernoulliMessage((1.0 - damping) * self.logits + damping * previous.logits)

    def clip(self, eps: float = PROB_EPS) -> BernoulliMessage:
        """Clip the encoded probability to ``[eps, 1 - eps]``."""
        return BernoulliMessage(clip_logits(self.logits, eps))

    def to(self, *args: Any, **kwargs: Any) -> BernoulliMessage:
        """The message with its tensor moved / cast as by :meth:`torch.Tensor.to`."""
        return BernoulliMessage(self.logits.to(*args, **kwargs))

    def max_prob_change(self, other: BernoulliMessage) -> float:
        """``max |m(1) - other(1)|`` over all entries (0 for an empty message)."""
        if self.logits.numel() == 0:
            return 0.0
        return float((self.probs - other.probs).abs().max())

    def to_numpy(self) -> dict[str, np.ndarray]:
        """A flat dict of numpy arrays (what a wire format or a checkpoint stores)."""
        return {"logits": self.logits.detach().cpu().numpy()}

    @classmethod
    def from_numpy(
        cls, arrays: Mapping[str, np.ndarray], like: Tensor | None = None
    ) -> BernoulliMessage:
        """The inverse of :meth:`to_numpy` (cast to ``like``'s dtype and device if given).

        :raises ValueError: if the ``logits`` entry is missing.
        """
        if "logits" not in arrays:
            raise ValueError(f"BernoulliMessage needs a 'logits' array, got {sorted(arrays)}")
        return cls(_from_numpy(arrays["logits"], like))


@dataclass(frozen=True)
class GaussianMessage:
    """A diagonal Gaussian factor in natural parameters, ``m(w) ∝ exp(-precision w²/2 + eta w)``.

    Products add natural parameters and quotients subtract them, so merging sites and forming
    cavities are one line each. A message may be improper (non-positive precision) as an
    intermediate; :meth:`mean` and :meth:`variance` are only meaningful when it is proper.

    :param torch.Tensor precision: ``1 / variance``.
    :param torch.Tensor eta: precision times mean.

    Example::

        >>> prior = GaussianMessage.from_moments(torch.zeros(3), torch.ones(3))
        >>> site = GaussianMessage.from_moments(torch.ones(3), 0.5 * torch.ones(3))
        >>> posterior = prior * site          # precision 3, mean 2/3
        >>> cavity = posterior / site         # back to the prior

    References

    [1] C. E. Rasmussen, C. K. I. Williams, "Gaussian Processes for Machine Learning", 2006,
        App. A.7 (product of Gaussians).
    """

    precision: Tensor
    eta: Tensor

    @classmethod
    def from_moments(cls, mean: Tensor, variance: Tensor) -> GaussianMessage:
        """Build a message from a mean and a (positive) variance."""
        precision = 1.0 / variance
        return cls(precision, precision * mean)

    @property
    def mean(self) -> Tensor:
        return self.eta / self.precision

    @property
    def variance(self) -> Tensor:
        return 1.0 / self.precision

    def is_proper(self) -> Tensor:
        """Elementwise: whether the precision is positive and everything finite."""
        return (self.precision > 0) & torch.isfinite(self.precision) & torch.isfinite(self.eta)

    def __mul__(self, other: GaussianMessage) -> GaussianMessage:
        return GaussianMessage(self.precision + other.precision, self.eta + other.eta)

    def __truediv__(self, other: GaussianMessage) -> GaussianMessage:
        return GaussianMessage(self.precision - other.precision, self.eta - other.eta)

    def __pow__(self, power: float) -> GaussianMessage:
        return GaussianMessage(power * self.precision, power * self.eta)

    def damp(self, previous: GaussianMessage, damping: float) -> GaussianMessage:
        """Convex combination of natural parameters with the previous message.

        :param GaussianMessage previous: the message sent last time.
        :param float damping: weight of ``previous`` in ``[0, 1)``.
        """
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"damping must be in [0, 1), got {damping}")
        if damping == 0.0:
            return self
        return GaussianMessage(
            (1.0 - damping) * self.precision + damping * previous.precision,
            (1.0 - damping) * self.eta + damping * previous.eta,
        )

    def with_precision_floor(self, floor: float = PRECISION_FLOOR) -> GaussianMessage:
        """Raise precisions below ``floor`` to ``floor``, keeping ``eta`` (the pull on the mean).

        Only the precision natural parameter is changed, so a floored site still says in which
        direction the data move the weight; its evidence about the support stays finite (see
        :func:`~pyro_dturbo.ops.vb.cavity_evidence`).

        :param float floor: the smallest precision allowed (default :data:`PRECISION_FLOOR`).
        """
        return GaussianMessage(self.precision.clamp_min(floor), self.eta)

    def to(self, *args: Any, **kwargs: Any) -> GaussianMessage:
        """The message with its tensors moved / cast as by :meth:`torch.Tensor.to`."""
        return GaussianMessage(self.precision.to(*args, **kwargs), self.eta.to(*args, **kwargs))

    def reshape(self, *shape: int) -> GaussianMessage:
        return GaussianMessage(self.precision.reshape(*shape), self.eta.reshape(*shape))

    @classmethod
    def prior(cls, precision: Tensor, mean: Tensor | None = None) -> GaussianMessage:
        """``N(mean, 1 / precision)`` (``mean`` defaults to zero)."""
        mean = torch.zeros_like(precision) if mean is None else mean
        return cls(precision, precision * mean)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """A flat dict of numpy arrays: ``precision`` and ``eta``."""
        return {
            "precision": self.precision.detach().cpu().numpy(),
            "eta": self.eta.detach().cpu().numpy(),
        }

    @classmethod
    def from_numpy(
        cls, arrays: Mapping[str, np.ndarray], like: Tensor | None = None
    ) -> GaussianMessage:
        """The inverse of :meth:`to_numpy`.

        :raises ValueError: if an entry is missing or the two shapes differ.
        """
        missing = {"precision", "eta"} - set(arrays)
        if missing:
            raise ValueError(f"GaussianMessage needs arrays {sorted(missing)}")
        precision, eta = _from_numpy(arrays["precision"], like), _from_numpy(arrays["eta"], like)
        if precision.shape != eta.shape:
            raise ValueError(
                f"GaussianMessage: precision {tuple(precision.shape)} and eta "
                f"{tuple(eta.shape)} differ in shape"
            )
        return cls(precision, eta)

    def log_normalizer(self) -> Tensor:
        """``log ∫ exp(-precision w²/2 + eta w) dw`` elementwise (proper messages only)."""
        return 0.5 * (self.eta**2 / self.precision) + 0.5 * torch.log(2 * torch.pi / self.precision)
