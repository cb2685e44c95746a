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

import errno
import math
import os
import re
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


def _gamma_pair(name: str, value: Any) -> tuple[float, float]:
    """``value`` as a ``(shape, rate)`` pair of positive finite numbers; ``name`` is the field's
    full name in messages (``"SparsePrior.active"``)."""
    if hasattr(value, "tolist"):  # a tensor or an array
        value = value.tolist()
    bad = ValueError(f"{name} must be a (shape, rate) pair, got {value!r}")
    if not isinstance(value, Sequence) or isinstance(value, str | bytes) or len(value) != 2:
        raise bad
    if any(isinstance(v, bool | str | bytes) or v is None for v in value):
        raise bad
    try:
        shape, rate = (float(v) for v in value)
    except (TypeError, ValueError):
        raise bad from None
    for label, v in (("shape", shape), ("rate", rate)):
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} {label} must be positive and finite, got {v}")
    return shape, rate


def _check_gamma_laws(where: str, active: Any, inactive: Any) -> tuple[tuple[float, float], ...]:
    a = _gamma_pair(f"{where}.active", active)
    i = _gamma_pair(f"{where}.inactive", inactive)
    if i[1] / i[0] >= a[1] / a[0]:
        raise ValueError(
            f"{where}.inactive must have a smaller variance scale than active: "
            f"bbar/abar = {i[1] / i[0]:g} >= b/a = {a[1] / a[0]:g}"
        )
    return a, i


_FIELDS = ("support", "active", "inactive", "layer_priors")


class _Loader(yaml.SafeLoader):
    """Safe YAML loading that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and
    refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = str(self.construct_scalar(key_node))
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"the key {key!r} is given twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Dumper(yaml.SafeDumper):
    """Safe YAML dumping with lists of scalars on one line (``active: [1.0, 1.0]``, and one edge
    ``- [0, 1]`` per line)."""


def _represent_list(dumper: yaml.SafeDumper, data: Sequence[Any]) -> yaml.SequenceNode:
    flow = all(not isinstance(v, list | tuple | dict) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def _yaml_source(source: Any) -> tuple[str, str | None]:
    """``(text, file name or None)``: a path-like object, or a one-line string that ends in
    ``.yaml`` / ``.yml`` or names an existing file, is read as a file; any other string (multi-
    line YAML included, of any length) is the YAML text itself."""
    if isinstance(source, os.PathLike):
        path = Path(source)
    elif isinstance(source, str):
        line = source.strip()
        if "\n" in line or not line:
            return source, None
        is_file = line.lower().endswith((".yaml", ".yml")) and ": " not in line
        if not is_file and len(line) < 4096:
            try:
                is_file = Path(line).is_file()
            except (OSError, ValueError):  # a name too long, a NUL byte: not a file name
                is_file = False
        if not is_file:
            return source, None
        path = Path(line)
    else:
        raise ValueError(
            f"SparsePrior.from_yaml needs a file path or YAML text, got {type(source).__name__}"
        )
    try:
        return path.read_text(), str(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, "SparsePrior.from_yaml: no such file", str(path)
        ) from None


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

    [1] Xia, Tsang, Lau (arXiv:2302.10483), eqs. (1)-(4); the authors' demo
    (github.com/cxiaab/D-turbo-vbi-FL, commit 8a89cc7) uses
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
        active, inactive = _check_gamma_laws("SparsePrior", self.active, self.inactive)
        object.__setattr__(self, "active", active)
        object.__setattr__(self, "inactive", inactive)
        if not isinstance(self.layer_priors, Mapping):
            raise ValueError(
                f"SparsePrior.layer_priors must be a mapping, got {type(self.layer_priors)}"
            )
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
        """The declaration of this prior; lossless, :meth:`from_dict` inverts it.

        Example::

            >>> SparsePrior.chain(0.01, 0.1).to_dict()
            {'support': {'type': 'chain', 'p01': 0.01, 'p10': 0.1, 'along': 'rows'},
             'active': [1.0, 1.0], 'inactive': [1.0, 0.01]}
        """
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

        The fields are ``support`` (required: a declaration for
        :func:`~pyro_dturbo.models.support.support_from_dict`), ``active`` and ``inactive``
        (``[shape, rate]`` pairs) and ``layer_priors`` (``{layer: declaration}``).

        :param spec: the declaration.
        :returns: the prior.
        :raises ValueError: naming the field (``SparsePrior.layer_priors['fc1'].support.p01``)
            on a missing, unknown or bad value.

        Example::

            >>> SparsePrior.from_dict({"support": {"type": "chain", "p01": 0.01, "p10": 0.1},
            ...                        "active": [1, 1], "inactive": [1, 100]})
        """
        return cls._from_dict(spec, "SparsePrior")

    @classmethod
    def _from_dict(cls, spec: Any, where: str) -> SparsePrior:
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where} must be a mapping with a 'support', got {spec!r}")
        unknown = sorted((k for k in spec if k not in _FIELDS), key=str)
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}; its fields are {list(_FIELDS)}")
        if "support" not in spec:
            raise ValueError(f"{where}.support is required")
        support = support_from_dict(spec["support"], where=f"{where}.support")
        active, inactive = _check_gamma_laws(
            where, spec.get("active", cls.active), spec.get("inactive", cls.inactive)
        )
        layer_priors: dict[str, SparsePrior] = {}
        overrides = spec.get("layer_priors", {})
        if not isinstance(overrides, Mapping):
            raise ValueError(
                f"{where}.layer_priors must be a mapping {{layer: prior}}, got {overrides!r}"
            )
        for name, value in overrides.items():
            if not isinstance(name, str):
                raise ValueError(f"{where}.layer_priors keys must be layer names, got {name!r}")
            layer_priors[name] = cls._from_dict(value, f"{where}.layer_priors[{name!r}]")
        return cls(support, active, inactive, layer_priors)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise :meth:`to_dict` to YAML (written to ``path`` when given).

        :param path: a file to write, or ``None``.
        :returns: the YAML text.
        """
        text = yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> SparsePrior:
        """Load from a YAML file or a YAML string (of any length).

        ``source`` is read as a file when it is a path object, or a one-line string that ends
        in ``.yaml`` / ``.yml`` or names an existing file; any other string is YAML text.

        :param source: the file or the text.
        :returns: the prior.
        :raises FileNotFoundError: naming the file when it does not exist.
        :raises ValueError: on invalid YAML (naming the file and line) or a bad declaration
            (naming the file and field).

        Example::

            >>> prior = SparsePrior.from_yaml("prior.yaml")
            >>> prior = SparsePrior.from_yaml("support: {type: chain, p01: 1e-2, p10: 0.1}")
        """
        text, name = _yaml_source(source)
        origin = name if name is not None else "YAML text"
        try:
            spec = yaml.load(text, Loader=_Loader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"{origin}: invalid YAML{where}: {e.problem or e}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{origin}: invalid YAML: {e}") from None
        if spec is None:
            raise ValueError(f"{origin}: empty YAML, expected a SparsePrior declaration")
        if name is None and isinstance(spec, str) and "\n" not in text.strip():
            raise ValueError(
                f"SparsePrior.from_yaml: {source!r} is neither an existing file nor a YAML "
                "declaration"
            )
        try:
            return cls.from_dict(spec)
        except ValueError as e:
            if name is None:
                raise
            raise ValueError(f"{name}: {e}") from e

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
