"""The hierarchical sparse prior, declared rather than coded.

For every weight ``w_n``: support ``s_n`` (jointly distributed by a
:class:`~pyro_dturbo.models.support.SupportStructure`), precision
``rho_n | s_n ~ Gamma(a, b)`` if active and ``Gamma(abar, bbar)`` if inactive (shape-rate), and
``w_n | rho_n ~ Normal(0, 1 / rho_n)``.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), eqs. (1)-(4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import yaml
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

from pyro_dturbo.models.support import (
    IndependentSupport,
    MarkovChainSupport,
    SupportStructure,
    support_from_dict,
)

__all__ = ["SparsePrior", "MarginalPrecision", "require_summable_support"]


def require_summable_support(support: SupportStructure) -> None:
    """Raise ``ValueError`` unless ``support`` can be summed out exactly (chain, independent)."""
    if not isinstance(support, MarkovChainSupport | IndependentSupport):
        raise ValueError(
            f"the support of {type(support).__name__} cannot be summed out exactly; use a "
            "MarkovChainSupport or IndependentSupport for the SVI / NUTS baselines"
        )


def _gamma_pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    try:
        shape, rate = (float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"SparsePrior.{name} must be a (shape, rate) pair, got {value!r}") from e
    for label, v in (("shape", shape), ("rate", rate)):
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"SparsePrior.{name} {label} must be positive and finite, got {v}")
    return shape, rate


@dataclass(frozen=True)
class SparsePrior:
    """A hierarchical sparse prior: support structure plus the two Gamma laws on precisions.

    :param SupportStructure support: the joint prior over supports (shape may be unbound).
    :param active: ``(a, b)``, shape and rate of ``rho`` for active weights.
    :param inactive: ``(abar, bbar)`` for inactive weights; its variance scale ``bbar/abar``
        must be below the active one ``b/a``.
    :param layer_priors: per-layer overrides, ``{layer_name: SparsePrior}``.

    Example::

        >>> prior = SparsePrior(MarkovChainSupport(p01=0.01, p10=0.1))
        >>> prior = SparsePrior.from_dict({"support": {"type": "grid", "p01": 0.05, "p10": 0.2},
        ...                                "active": [1, 1], "inactive": [1, 100]})
        >>> w = prior.model("fc1", (300, 784))      # inside a Pyro model

    References

    [1] Xia, Tsang, Lau (arXiv:2302.10483), eqs. (1)-(4); the reference demo uses
        ``a = b = 1, abar = 1, bbar = 0.01``.
    """

    support: SupportStructure
    active: tuple[float, float] = (1.0, 1.0)
    inactive: tuple[float, float] = (1.0, 0.01)
    layer_priors: Mapping[str, SparsePrior] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.support, SupportStructure):
            raise ValueError(
                f"SparsePrior.support must be a SupportStructure, got {type(self.support)}"
            )
        active = _gamma_pair("active", self.active)
        inactive = _gamma_pair("inactive", self.inactive)
        if inactive[1] / inactive[0] >= active[1] / active[0]:
            raise ValueError(
                "SparsePrior.inactive must have a smaller variance scale than active: "
                f"bbar/abar = {inactive[1] / inactive[0]:g} >= b/a = {active[1] / active[0]:g}"
            )
        object.__setattr__(self, "active", active)
        object.__setattr__(self, "inactive", inactive)
        for name, p in self.layer_priors.items():
            if not isinstance(p, SparsePrior):
                raise ValueError(f"SparsePrior.layer_priors[{name!r}] must be a SparsePrior")
        object.__setattr__(self, "layer_priors", dict(self.layer_priors))

    # -- derived quantities -----------------------------------------------------------------
    @property
    def active_variance(self) -> float:
        """``v1 = b / a``: the prior variance scale of an active weight."""
        return self.active[1] / self.active[0]

    @property
    def inactive_variance(self) -> float:
        """``v0 = bbar / abar``: the prior variance scale of an inactive weight."""
        return self.inactive[1] / self.inactive[0]

    def for_layer(self, name: str) -> SparsePrior:
        """The prior that applies to layer ``name`` (its override, or this prior)."""
        return self.layer_priors.get(name, self)

    def check_layer_names(self, names: Sequence[str]) -> None:
        """Raise ``ValueError`` if an override names a layer that does not exist."""
        unknown = sorted(set(self.layer_priors) - set(names))
        if unknown:
            raise ValueError(
                f"SparsePrior.layer_priors names unknown layers {unknown}; layers are "
                f"{sorted(names)}"
            )

    def replace(self, **changes: Any) -> SparsePrior:
        """A copy with some fields changed.

        Example::

            >>> independent = prior.replace(support=IndependentSupport(0.1))
        """
        fields: dict[str, Any] = {
            "support": self.support,
            "active": self.active,
            "inactive": self.inactive,
            "layer_priors": self.layer_priors,
        }
        fields.update(changes)
        return SparsePrior(**fields)

    def precision_params(self, support: Tensor) -> tuple[Tensor, Tensor]:
        """Gamma shape and rate of ``rho`` given (possibly soft) supports ``q(s=1)``.

        With ``q`` in [0, 1] this is the mixture of natural parameters used by Module A:
        ``q a + (1 - q) abar`` and ``q b + (1 - q) bbar``.
        """
        (a, b), (abar, bbar) = self.active, self.inactive
        return support * a + (1 - support) * abar, support * b + (1 - support) * bbar

    # -- Pyro model fragments --------------------------------------------------------------
    def model(self, name: str, shape: Sequence[int], marginalize_support: bool = False) -> Tensor:
        """Sample the sites ``{name}.support``, ``{name}.precision``, ``{name}.weight``.

        :param str name: the layer name (site prefix).
        :param shape: the weight tensor's shape.
        :param bool marginalize_support: sum the support out exactly (no ``.support`` site);
            the precision site then follows :class:`MarginalPrecision`. Used by the SVI and
            NUTS baselines.
        :returns: the sampled weight tensor.
        """
        prior = self.for_layer(name)
        support = prior.support.with_shape(shape)
        event_dims = len(support.event_shape)
        if marginalize_support:
            rho = pyro.sample(
                f"{name}.precision", MarginalPrecision(support, prior.active, prior.inactive)
            )
        else:
            s = pyro.sample(f"{name}.support", support)
            concentration, rate = prior.precision_params(s)
            rho = pyro.sample(
                f"{name}.precision", dist.Gamma(concentration, rate).to_event(event_dims)
            )
        return pyro.sample(f"{name}.weight", dist.Normal(0.0, rho.rsqrt()).to_event(event_dims))

    # -- declaration -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "support": self.support.to_dict(),
            "active": list(self.active),
            "inactive": list(self.inactive),
        }
        if self.layer_priors:
            out["layer_priors"] = {k: v.to_dict() for k, v in self.layer_priors.items()}
        return out

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SparsePrior:
        """Build from a declaration (the inverse of :meth:`to_dict`).

        :raises ValueError: naming the field on a bad or unknown value.
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"SparsePrior declaration must be a mapping, got {type(spec)}")
        unknown = set(spec) - {"support", "active", "inactive", "layer_priors"}
        if unknown:
            raise ValueError(f"SparsePrior: unknown fields {sorted(unknown)}")
        if "support" not in spec:
            raise ValueError("SparsePrior.support is required")
        kwargs: dict[str, Any] = {"support": support_from_dict(dict(spec["support"]))}
        for key in ("active", "inactive"):
            if key in spec:
                kwargs[key] = tuple(spec[key])
        if "layer_priors" in spec:
            kwargs["layer_priors"] = {
                k: cls.from_dict(v) for k, v in dict(spec["layer_priors"]).items()
            }
        return cls(**kwargs)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise to YAML (written to ``path`` when given)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> SparsePrior:
        """Load from a YAML file path or a YAML string."""
        text = Path(source).read_text() if Path(str(source)).is_file() else str(source)
        return cls.from_dict(yaml.safe_load(text))

    @classmethod
    def chain(cls, p01: float = 0.01, p10: float = 0.1, **kwargs: Any) -> SparsePrior:
        """Shorthand for a Markov-chain prior."""
        return cls(MarkovChainSupport(p01, p10), **kwargs)

    @classmethod
    def independent(cls, p: float = 0.1, **kwargs: Any) -> SparsePrior:
        """Shorthand for the unstructured (i.i.d. Bernoulli) prior."""
        return cls(IndependentSupport(p), **kwargs)


class MarginalPrecision(TorchDistribution):
    """``p(rho) = sum_s p(s) prod_n Gamma(rho_n; a_{s_n}, b_{s_n})``: the support summed out.

    Exact for :class:`~pyro_dturbo.models.support.MarkovChainSupport` (a hidden Markov model
    whose emissions are the two Gamma laws, evaluated by Pyro's
    :class:`~pyro.distributions.DiscreteHMM`) and :class:`IndependentSupport` (a two-component
    mixture per weight). MRF supports have no exact sum and raise ``ValueError``.

    :param SupportStructure support: a shape-bound chain or independent support.
    :param active: ``(a, b)``; :param inactive: ``(abar, bbar)``.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.positive
    has_rsample = False

    def __init__(
        self,
        support: SupportStructure,
        active: tuple[float, float],
        inactive: tuple[float, float],
        validate_args: bool | None = None,
    ):
        require_summable_support(support)
        self.support_dist = support
        self.active, self.inactive = active, inactive
        super().__init__(torch.Size(), support.event_shape, validate_args=False)

    def _emissions(self, like: Tensor) -> tuple[Tensor, Tensor]:
        kw = {"dtype": like.dtype, "device": like.device}
        concentration = torch.tensor([self.inactive[0], self.active[0]], **kw)  # type: ignore[arg-type]
        rate = torch.tensor([self.inactive[1], self.active[1]], **kw)  # type: ignore[arg-type]
        return concentration, rate

    def sample(
        self, sample_shape: torch.Size | list[int] | tuple[int, ...] = torch.Size()
    ) -> Tensor:
        s = self.support_dist.sample(sample_shape)
        concentration = torch.where(s > 0.5, self.active[0], self.inactive[0])
        rate = torch.where(s > 0.5, self.active[1], self.inactive[1])
        return dist.Gamma(concentration, rate).sample()

    def log_prob(self, value: Tensor) -> Tensor:
        concentration, rate = self._emissions(value)
        support = self.support_dist
        if isinstance(support, IndependentSupport):
            emit = dist.Gamma(concentration, rate).log_prob(value.unsqueeze(-1))
            logw = torch.tensor([math.log1p(-support.p), math.log(support.p)], dtype=value.dtype)
            lp = torch.logsumexp(emit + logw, dim=-1)
            return lp.reshape(lp.shape[: lp.dim() - len(self.event_shape)] + (-1,)).sum(-1)
        assert isinstance(support, MarkovChainSupport)
        log_init, log_trans = support.log_params(value)
        hmm = dist.DiscreteHMM(log_init, log_trans, dist.Gamma(concentration, rate))
        return hmm.log_prob(support.chains(value)).sum(-1)
