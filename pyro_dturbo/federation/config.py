"""The settings of a federated experiment, declared in YAML (or Python) and validated.

Example (``configs/federated_digits.yaml``)::

    dataset: digits            # any load_dataset name
    model: mlp                 # zoo name; hidden: [256, 256] for mlp
    hidden: [256, 256]
    clients: 10
    partition: {type: iid}     # or {type: dirichlet, alpha: 0.5} or {type: shards, per_client: 2}
    participation: 1.0         # fraction of clients per round
    rounds: 40
    local_epochs: 2
    batch_size: 32
    lr: 0.003
    seed: 0
    prior: {support: {type: chain, p01: 0.05, p10: 0.2}, active: [1, 1], inactive: [1, 0.0001]}
    aggregation: product       # or moment_average
    codec: auto                # coo | rle | auto (the smaller)
    value_dtype: float16
    methods: [dturbo, dturbo-moment, dturbo-independent, fedavg, fedavg-topk, stc]
    faults: {dropout: 0.0, corrupt: 0.0}

Every bad value is a ``ValueError`` naming its field, raised when the config is built, before
any data is loaded or any training starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pyro_dturbo.data.datasets import DATASETS
from pyro_dturbo.data.partition import PARTITION_SCHEMES
from pyro_dturbo.federation.client import SITES
from pyro_dturbo.federation.codec import CODECS
from pyro_dturbo.federation.server import AGGREGATIONS
from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.models.zoo import ZOO

__all__ = ["FederatedConfig", "METHODS", "VALUE_DTYPE_NAMES", "CORRUPTIONS", "DECISION_ROUNDS"]

#: the methods :func:`~pyro_dturbo.federation.simulation.run_federated` runs, by name
METHODS: tuple[str, ...] = (
    "dturbo",
    "dturbo-moment",
    "dturbo-independent",
    "fedavg",
    "fedavg-topk",
    "stc",
)
#: rounds after the warm-up in which the support is decided, when ``finetune_rounds`` is not set
DECISION_ROUNDS = 5
#: the payload value dtypes, by name
VALUE_DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: how an injected fault corrupts a reply (one drawn per corrupted reply)
CORRUPTIONS: tuple[str, ...] = ("nan", "shape", "variance")

_DEFAULT_PRIOR: dict[str, Any] = {
    "support": {"type": "chain", "p01": 0.05, "p10": 0.2},
    "active": [1, 1],
    "inactive": [1, 0.0001],
}


def _error(name: str, message: str) -> ValueError:
    return ValueError(f"FederatedConfig.{name}: {message}")


@dataclass(frozen=True)
class FederatedConfig:
    """One federated experiment: data, clients, schedule, prior, payloads, methods, faults.

    The first block of fields is fixed (``report.json`` and other tools read them); the rest
    are D-Turbo-VBI's own settings with defaults.

    :param str dataset: a :func:`~pyro_dturbo.data.load_dataset` name.
    :param str model: a zoo name (:data:`~pyro_dturbo.models.zoo.ZOO`).
    :param hidden: hidden widths for ``model: mlp``.
    :param int clients: number of clients ``K``.
    :param dict partition: ``{type: iid}``, ``{type: dirichlet, alpha: a}`` or
        ``{type: shards, per_client: s}``.
    :param float participation: fraction of clients drawn each round, in ``(0, 1]``.
    :param int rounds: communication rounds. :param int local_epochs: epochs per round.
    :param int batch_size: local minibatch size. :param float lr: local Adam learning rate.
    :param int seed: seeds the split, the partition, the models, sampling and faults.
    :param dict prior: a :class:`~pyro_dturbo.models.SparsePrior` declaration.
    :param str aggregation: ``product`` (sites multiplied) or ``moment_average`` (the
        authors' demo), for the method ``dturbo``.
    :param str codec: ``coo``, ``rle`` or ``auto`` (the smaller per block).
    :param str value_dtype: ``float32``, ``float16`` or ``bfloat16``.
    :param methods: which of :data:`METHODS` to run, in order.
    :param dict faults: ``{dropout: p, corrupt: p}``, per reply: lost / corrupted.
    :param int warmup_rounds: rounds of w-steps before the first closed-form step.
    :param int finetune_rounds: the last rounds, with the support frozen: the clients take
        MAP steps on the pruned mean and only means travel (the federated counterpart of
        centralised fine-tuning). ``None``: all rounds but the warm-up and the
        :data:`DECISION_ROUNDS` after it, in which the support is decided.
    :param float site_step: how far a site moves to a client's new one (``None``: ``1/K``).
    :param float init_precision: the prior precision before the first closed-form step.
    :param float init_scale: the clients' initial posterior standard deviation ``sigma``
        (a site is ``q_k / cavity``, so ``sigma`` must start near its fixed point, not at a
        tiny value whose precision no data gave; see ``docs/algorithm.md``).
    :param str site: how a reply carries the client's data (``marginal`` or ``curvature``,
        :data:`~pyro_dturbo.federation.client.SITES`).
    :param float test_fraction: held-out fraction of the data set (the global test set).
    :param dict baselines: ``{density: d}``, the top-k / STC density (``null``: D-Turbo-VBI's
        mean upload density of the same run, or 0.05 without it).
    """

    dataset: str = "digits"
    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    clients: int = 10
    partition: dict[str, Any] = field(default_factory=lambda: {"type": "iid"})
    participation: float = 1.0
    rounds: int = 40
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.003
    seed: int = 0
    prior: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULT_PRIOR))
    aggregation: str = "product"
    codec: str = "auto"
    value_dtype: str = "float16"
    methods: tuple[str, ...] = METHODS
    faults: dict[str, float] = field(default_factory=lambda: {"dropout": 0.0, "corrupt": 0.0})
    warmup_rounds: int = 5
    finetune_rounds: int | None = None
    site_step: float | None = None
    init_precision: float = 1.0
    init_scale: float = 1e-3
    site: str = "marginal"
    test_fraction: float = 0.2
    baselines: dict[str, Any] = field(default_factory=lambda: {"density": None})

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "hidden", tuple(self.hidden))
        set_(self, "methods", tuple(self.methods))
        self._check()

    def _check(self) -> None:  # noqa: C901 (one check per field, in order)
        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise _error(name, f"must be an integer >= {low}, got {value!r}")

        def number(name: str, value: Any, low: float, high: float, closed_low: bool) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _error(name, f"must be a number, got {value!r}")
            ok = (value >= low if closed_low else value > low) and value <= high
            if not ok or not math.isfinite(value):
                bracket = "[" if closed_low else "("
                raise _error(name, f"must be in {bracket}{low}, {high}], got {value!r}")
            return float(value)

        if self.dataset not in DATASETS:
            raise _error("dataset", f"must be one of {list(DATASETS)}, got {self.dataset!r}")
        if self.model not in ZOO:
            raise _error("model", f"must be one of {sorted(ZOO)}, got {self.model!r}")
        if not self.hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden
        ):
            raise _error("hidden", f"must be positive integers, got {list(self.hidden)!r}")
        integer("clients", 1)
        self._check_partition()
        number("participation", self.participation, 0.0, 1.0, closed_low=False)
        integer("rounds", 1)
        integer("local_epochs", 1)
        integer("batch_size", 1)
        number("lr", self.lr, 0.0, math.inf, closed_low=False)
        integer("seed", 0)
        if not isinstance(self.prior, Mapping):
            raise _error(
                "prior", f"must be a mapping (a SparsePrior declaration), got {self.prior!r}"
            )
        try:
            SparsePrior.from_dict(self.prior)
        except ValueError as error:
            raise _error("prior", str(error)) from None
        if self.aggregation not in AGGREGATIONS:
            raise _error(
                "aggregation", f"must be one of {list(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if self.codec not in CODECS:
            raise _error("codec", f"must be one of {list(CODECS)}, got {self.codec!r}")
        if self.value_dtype not in VALUE_DTYPE_NAMES:
            raise _error(
                "value_dtype", f"must be one of {list(VALUE_DTYPE_NAMES)}, got {self.value_dtype!r}"
            )
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            raise _error(
                "methods", f"must be distinct names from {list(METHODS)}, got {list(self.methods)}"
            )
        if not isinstance(self.faults, Mapping) or set(self.faults) - {"dropout", "corrupt"}:
            raise _error("faults", f"takes only dropout and corrupt, got {self.faults!r}")
        for key in ("dropout", "corrupt"):
            number(f"faults.{key}", self.faults.get(key, 0.0), 0.0, 1.0, closed_low=True)
        if self.faults.get("dropout", 0.0) + self.faults.get("corrupt", 0.0) > 1.0:
            raise _error("faults", "dropout + corrupt must be <= 1")
        integer("warmup_rounds", 0)
        if self.warmup_rounds >= self.rounds:
            raise _error(
                "warmup_rounds", f"must be < rounds ({self.rounds}), got {self.warmup_rounds}"
            )
        if self.finetune_rounds is not None:
            integer("finetune_rounds", 0)
            if self.finetune_rounds and self.rounds - self.finetune_rounds <= self.warmup_rounds:
                raise _error(
                    "finetune_rounds",
                    f"must leave at least one round between the warm-up ({self.warmup_rounds}) "
                    f"and fine-tuning in {self.rounds} rounds, got {self.finetune_rounds}",
                )
        if self.site_step is not None:
            number("site_step", self.site_step, 0.0, 1.0, closed_low=False)
        number("init_precision", self.init_precision, 0.0, math.inf, closed_low=False)
        number("init_scale", self.init_scale, 0.0, math.inf, closed_low=False)
        if self.site not in SITES:
            raise _error("site", f"must be one of {list(SITES)}, got {self.site!r}")
        number("test_fraction", self.test_fraction, 0.0, 1.0, closed_low=False)
        if not isinstance(self.baselines, Mapping) or set(self.baselines) - {"density"}:
            raise _error("baselines", f"takes only density, got {self.baselines!r}")
        density = self.baselines.get("density")
        if density is not None:
            number("baselines.density", density, 0.0, 1.0, closed_low=False)

    def _check_partition(self) -> None:
        spec = self.partition
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise _error("partition", f"must be a mapping with a type, got {spec!r}")
        kind = spec["type"]
        if kind not in PARTITION_SCHEMES:
            raise _error(
                "partition.type", f"must be one of {list(PARTITION_SCHEMES)}, got {kind!r}"
            )
        allowed = {"iid": set(), "dirichlet": {"alpha"}, "shards": {"per_client"}}[kind]
        extra = set(spec) - {"type"} - allowed
        if extra:
            raise _error(
                "partition", f"{kind} takes {sorted(allowed) or 'no options'}, got {sorted(extra)}"
            )
        if kind == "dirichlet":
            alpha = spec.get("alpha", 0.5)
            if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
                raise _error("partition.alpha", f"must be positive, got {alpha!r}")
        if kind == "shards":
            per = spec.get("per_client", 2)
            if isinstance(per, bool) or not isinstance(per, int) or per < 1:
                raise _error("partition.per_client", f"must be an integer >= 1, got {per!r}")

    # -- derived ---------------------------------------------------------------------------
    @property
    def freeze_round(self) -> int | None:
        """The first round with the support frozen (``None``: never)."""
        finetune = self.finetune_rounds
        if finetune is None:
            finetune = max(0, self.rounds - self.warmup_rounds - DECISION_ROUNDS)
        return self.rounds - finetune if finetune > 0 else None

    def sparse_prior(self, independent: bool = False) -> SparsePrior:
        """The declared prior; ``independent=True``: the same Gamma laws with independent
        supports at the declared support's stationary density (the ablation)."""
        prior = SparsePrior.from_dict(self.prior)
        if not independent:
            return prior
        density = float(prior.support.stationary)
        return SparsePrior.independent(density, active=prior.active, inactive=prior.inactive)

    def partition_kwargs(self) -> dict[str, Any]:
        spec = dict(self.partition)
        kind = spec.pop("type")
        out: dict[str, Any] = {"scheme": kind}
        if kind == "dirichlet":
            out["alpha"] = float(spec.get("alpha", 0.5))
        if kind == "shards":
            out["shards_per_client"] = int(spec.get("per_client", 2))
        return out

    # -- (de)serialisation -----------------------------------------------------------------
    def replace(self, **changes: Any) -> FederatedConfig:
        """A copy with some fields changed; an unknown field is a ``ValueError`` naming it."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"FederatedConfig has no field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"], out["methods"] = list(self.hidden), list(self.methods)
        return out

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> FederatedConfig:
        """Build from a mapping; an unknown key is a ``ValueError`` naming it."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"a FederatedConfig is a mapping, got {type(spec).__name__}")
        return cls().replace(**dict(spec))

    @classmethod
    def from_yaml(cls, source: str | Path) -> FederatedConfig:
        """Read a YAML file (a path) or YAML text.

        :raises FileNotFoundError: naming a missing file.
        :raises ValueError: on a YAML syntax error (file and line) or a bad field.
        """
        text, where = _read(source)
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f", line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{where}{line}: invalid YAML ({error})") from None
        return cls.from_dict(spec or {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _read(source: str | Path) -> tuple[str, str]:
    if isinstance(source, Path) or (
        "\n" not in str(source) and str(source).endswith((".yaml", ".yml"))
    ):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no config file at {path}")
        return path.read_text(), str(path)
    return str(source), "<yaml text>"
