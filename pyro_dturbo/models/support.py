"""Support structures: joint priors over the binary supports ``s`` of a weight tensor.

Each structure is a Pyro distribution over a {0, 1} tensor of shape ``shape`` (its event shape)
and also Module B of Turbo-VBI: :meth:`SupportStructure.extrinsic` takes Module A's evidence
log-odds about every ``s_n`` and returns the extrinsic prior log-odds ``logit(pi_n)``.

A structure may be declared without a shape (``MarkovChainSupport(p01=0.01, p10=0.1)``) and
bound to a tensor shape later with :meth:`SupportStructure.with_shape`; this is how a
:class:`~pyro_dturbo.models.prior.SparsePrior` declares one prior for many layers.

Weight tensors are viewed as matrices ``(shape[0], prod(shape[1:]))`` (rows = output units,
columns = flattened inputs, PyTorch order); a vector of length ``N`` is one row.

Every structure round-trips through :meth:`SupportStructure.to_dict` and
:func:`support_from_dict` with all of its fields (BP and Gibbs settings, per-edge couplings,
bias lists, a bound shape). A graph MRF may be declared compactly by a whitelisted networkx
generator (:data:`GRAPH_GENERATORS`), e.g. ``{"type": "graph", "generator": "grid_2d_graph",
"args": [16, 160]}``. A bad declaration raises ``ValueError`` naming the field.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. III-A (the
    Markov-chain / MRF support prior), Sec. IV-B (Module B).
"""

from __future__ import annotations

import math
import operator
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

from pyro_dturbo.ops.chain import (
    chain_log_init,
    chain_log_prob,
    chain_log_transition,
    forward_backward,
    sample_chain,
)
from pyro_dturbo.ops.loopy import grid_edges, ising_edge_log_potential, loopy_bp

__all__ = [
    "SupportStructure",
    "MarkovChainSupport",
    "GridMRFSupport",
    "GraphMRFSupport",
    "IndependentSupport",
    "GRAPH_GENERATORS",
    "support_from_dict",
]


# -- field validators: ``owner`` names the object or declaration in the error message --------
def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _check_number(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool | str | bytes) or value is None:
        raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}.{name} must be a number, got {value!r}") from None


def _check_finite(owner: str, name: str, value: Any) -> float:
    value = _check_number(owner, name, value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value}")
    return value


def _check_prob(owner: str, name: str, value: Any) -> float:
    value = _check_number(owner, name, value)
    if not (0.0 < value < 1.0):
        raise ValueError(f"{owner}.{name} must be a probability in (0, 1), got {value}")
    return value


def _check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    out: int | None = None
    if not isinstance(value, bool | str | bytes):
        try:
            out = operator.index(value)
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                out = int(value)
    if out is None:
        raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
    if out < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {out}")
    return out


def _check_along(owner: str, name: str, value: Any) -> str:
    if value not in ("rows", "cols"):
        raise ValueError(f"{owner}.{name} must be 'rows' or 'cols', got {value!r}")
    return str(value)


def _check_damping(owner: str, name: str, value: Any) -> float:
    value = _check_number(owner, name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{name} must be in [0, 1), got {value}")
    return value


def _check_tol(owner: str, name: str, value: Any) -> float:
    value = _check_number(owner, name, value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{owner}.{name} must be finite and >= 0, got {value}")
    return value


def _check_sizes(owner: str, name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    """A tuple of positive sizes (``length`` of them when given)."""
    what = (
        f"a list of {length} positive integers"
        if length
        else "a non-empty list of positive integers"
    )
    if not _is_sequence(value) and not isinstance(value, torch.Size):
        raise ValueError(f"{owner}.{name} must be {what}, got {value!r}")
    if len(value) == 0 or (length is not None and len(value) != length):
        raise ValueError(f"{owner}.{name} must be {what}, got {list(value)!r}")
    return tuple(_check_int(owner, f"{name}[{i}]", d, 1) for i, d in enumerate(value))


def _check_shape(shape: Sequence[int] | None, owner: str = "support") -> torch.Size | None:
    if shape is None:
        return None
    return torch.Size(_check_sizes(owner, "shape", shape))


def _check_bias(owner: str, value: Any, num_nodes: int) -> float | list[float]:
    if hasattr(value, "tolist"):  # a tensor or an array
        value = value.tolist()
    if not _is_sequence(value):
        return _check_finite(owner, "bias", value)
    if len(value) != num_nodes:
        raise ValueError(
            f"{owner}.bias must be a number or have one entry per node ({num_nodes}), "
            f"got {len(value)} entries"
        )
    return [_check_finite(owner, f"bias[{i}]", b) for i, b in enumerate(value)]


def _matrix_shape(shape: torch.Size) -> tuple[int, int]:
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


class SupportStructure(TorchDistribution):
    """Base class: a distribution over binary supports with a Module-B message rule.

    Subclasses implement :meth:`log_prob`, :meth:`sample`, :meth:`extrinsic`, :meth:`to_dict`
    and :meth:`_rebind` (a copy bound to another shape).

    :param shape: the event shape, or ``None`` for an unbound declaration.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.boolean
    has_rsample = False
    #: The name used in dict / YAML declarations.
    kind: str = ""

    def __init__(self, shape: Sequence[int] | None = None, validate_args: bool | None = None):
        self._shape = _check_shape(shape, type(self).__name__)
        event_shape = self._shape if self._shape is not None else torch.Size()
        super().__init__(torch.Size(), event_shape, validate_args=False)

    # -- shape binding ---------------------------------------------------------------------
    @property
    def shape_bound(self) -> bool:
        return self._shape is not None

    def with_shape(self, shape: Sequence[int]) -> SupportStructure:
        """A copy of this structure over a tensor of the given shape."""
        return self._rebind(_check_shape(shape, type(self).__name__))  # type: ignore[arg-type]

    @abstractmethod
    def _rebind(self, shape: torch.Size) -> SupportStructure:
        """A copy of this structure bound to ``shape``."""

    def _require_shape(self) -> torch.Size:
        if self._shape is None:
            raise ValueError(
                f"{type(self).__name__} has no shape yet: call .with_shape(shape) "
                "(a SparsePrior does this for each layer)"
            )
        return self._shape

    def _check_value(self, value: Tensor) -> Tensor:
        shape = self._require_shape()
        if tuple(value.shape[value.dim() - len(shape) :]) != tuple(shape):
            raise ValueError(
                f"{type(self).__name__}: value of shape {tuple(value.shape)} does not end with "
                f"the event shape {tuple(shape)}"
            )
        return value

    def check_logits(self, logits: Tensor) -> Tensor:
        shape = self._require_shape()
        if tuple(logits.shape) != tuple(shape):
            raise ValueError(
                f"{type(self).__name__}: evidence of shape {tuple(logits.shape)} does not match "
                f"the support shape {tuple(shape)}"
            )
        return logits

    # -- Module B ----------------------------------------------------------------------------
    @abstractmethod
    def extrinsic(self, evidence_logits: Tensor) -> Tensor:
        """Module B: extrinsic prior log-odds ``logit(pi_n)`` given evidence ``L_n``.

        Returns the posterior log-odds of ``s_n`` under this structure with unary evidence
        ``L``, minus ``L_n`` itself, so that the message carries no echo of its input.

        :param torch.Tensor evidence_logits: Module A's log-odds, shape = the support shape.
        :returns: extrinsic log-odds of the same shape.
        """

    def marginals(self, evidence_logits: Tensor | None = None) -> Tensor:
        """Posterior ``P(s_n = 1 | evidence)`` (prior marginals when no evidence is given)."""
        shape = self._require_shape()
        if evidence_logits is None:
            evidence_logits = torch.zeros(shape, dtype=torch.get_default_dtype())
        return torch.sigmoid(self.extrinsic(evidence_logits) + evidence_logits)

    # -- declaration -----------------------------------------------------------------------
    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The declaration of this structure (``{"type": ..., **fields}``), lossless:
        :func:`support_from_dict` rebuilds a structure with the same behaviour (the same
        :meth:`extrinsic` outputs and, under the same seed, the same samples).

        Example::

            >>> support = MarkovChainSupport(0.01, 0.1, along="cols")
            >>> support_from_dict(support.to_dict())
            MarkovChainSupport(p01=0.01, p10=0.1, along='cols')
        """

    def _shape_dict(self) -> dict[str, Any]:
        return {} if self._shape is None else {"shape": list(self._shape)}

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> Any:
        if tuple(batch_shape) == ():
            return self
        return super().expand(batch_shape, _instance)

    def __repr__(self) -> str:
        parts = [
            f"{k}=<{len(v)} values>" if isinstance(v, list) and len(v) > 8 else f"{k}={v!r}"
            for k, v in self.to_dict().items()
            if k not in ("type", "edges", "shape")
        ]
        args = ", ".join(parts)
        shape = f", shape={tuple(self._shape)}" if self._shape is not None else ""
        return f"{type(self).__name__}({args}{shape})"


class MarkovChainSupport(SupportStructure):
    """Each row (or column) of the support matrix is a stationary binary Markov chain.

    ``P(s'=1 | s=0) = p01``, ``P(s'=0 | s=1) = p10``, started at the stationary law
    ``lambda = p01 / (p01 + p10)``; the mean length of an active run is ``1 / p10``.
    ``log_prob`` is exact and Module B is exact forward-backward, batched over all chains.

    :param float p01: probability that an inactive weight is followed by an active one.
    :param float p10: probability that an active weight is followed by an inactive one.
    :param str along: ``"rows"`` (chains run along each row) or ``"cols"``.
    :param shape: the event shape, or ``None``.

    Example::

        >>> support = MarkovChainSupport(p01=0.01, p10=0.1).with_shape((512,))
        >>> s = support.sample()
        >>> support.log_prob(s)

    References

    [1] Xia, Tsang, Lau (arXiv:2302.10483), eq. (3) (the Markov chain support prior).
    """

    kind = "chain"

    def __init__(
        self,
        p01: float,
        p10: float,
        along: str = "rows",
        shape: Sequence[int] | None = None,
        validate_args: bool | None = None,
    ):
        self.p01 = _check_prob(type(self).__name__, "p01", p01)
        self.p10 = _check_prob(type(self).__name__, "p10", p10)
        self.along = _check_along(type(self).__name__, "along", along)
        self._param_cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        super().__init__(shape, validate_args)

    def _rebind(self, shape: torch.Size) -> MarkovChainSupport:
        return MarkovChainSupport(self.p01, self.p10, self.along, shape)

    @property
    def stationary(self) -> float:
        """The stationary probability ``lambda`` that a weight is active."""
        return self.p01 / (self.p01 + self.p10)

    def chains(self, x: Tensor) -> Tensor:
        """View ``(..., *shape)`` as ``(..., num_chains, length)``."""
        shape = self._require_shape()
        rows, cols = _matrix_shape(shape)
        x = x.reshape(x.shape[: x.dim() - len(shape)] + (rows, cols))
        return x.transpose(-1, -2) if self.along == "cols" else x

    def unchain(self, x: Tensor) -> Tensor:
        shape = self._require_shape()
        if self.along == "cols":
            x = x.transpose(-1, -2)
        return x.reshape(x.shape[:-2] + shape)

    def log_params(self, like: Tensor) -> tuple[Tensor, Tensor]:
        # Module B calls this every turbo iteration: build the tensors once per dtype/device.
        key = (like.dtype, like.device)
        if key not in self._param_cache:
            p01 = torch.tensor(self.p01, dtype=like.dtype, device=like.device)
            p10 = torch.tensor(self.p10, dtype=like.dtype, device=like.device)
            self._param_cache[key] = (chain_log_init(p01, p10), chain_log_transition(p01, p10))
        return self._param_cache[key]

    def log_prob(self, value: Tensor) -> Tensor:
        value = self._check_value(value)
        if not value.is_floating_point():
            value = value.to(torch.get_default_dtype())
        log_init, log_trans = self.log_params(value)
        return chain_log_prob(self.chains(value), log_init, log_trans).sum(-1)

    def sample(
        self, sample_shape: torch.Size | list[int] | tuple[int, ...] = torch.Size()
    ) -> Tensor:
        shape = self._require_shape()
        rows, cols = _matrix_shape(shape)
        chain_shape = (rows, cols) if self.along == "rows" else (cols, rows)
        p01 = torch.tensor(self.p01, dtype=torch.get_default_dtype())
        p10 = torch.tensor(self.p10, dtype=torch.get_default_dtype())
        chains = sample_chain(p01, p10, tuple(sample_shape) + chain_shape)
        return self.unchain(chains)

    def extrinsic(self, evidence_logits: Tensor) -> Tensor:
        evidence_logits = self.check_logits(evidence_logits)
        log_init, log_trans = self.log_params(evidence_logits)
        posterior = forward_backward(self.chains(evidence_logits), log_init, log_trans)
        return self.unchain(posterior) - evidence_logits

    def to_dict(self) -> dict[str, Any]:
        out = {"type": self.kind, "p01": self.p01, "p10": self.p10, "along": self.along}
        return out | self._shape_dict()


class IndependentSupport(SupportStructure):
    """I.i.d. Bernoulli supports: the unstructured ablation (Module B is a constant).

    :param float p: prior probability that a weight is active.
    :param shape: the event shape, or ``None``.
    """

    kind = "independent"

    def __init__(
        self, p: float, shape: Sequence[int] | None = None, validate_args: bool | None = None
    ):
        self.p = _check_prob(type(self).__name__, "p", p)
        super().__init__(shape, validate_args)

    def _rebind(self, shape: torch.Size) -> IndependentSupport:
        return IndependentSupport(self.p, shape)

    @property
    def stationary(self) -> float:
        return self.p

    def log_prob(self, value: Tensor) -> Tensor:
        shape = self._require_shape()
        value = self._check_value(value).to(torch.get_default_dtype())
        logp = value * math.log(self.p) + (1 - value) * math.log1p(-self.p)
        return logp.reshape(logp.shape[: logp.dim() - len(shape)] + (-1,)).sum(-1)

    def sample(
        self, sample_shape: torch.Size | list[int] | tuple[int, ...] = torch.Size()
    ) -> Tensor:
        shape = self._require_shape()
        probs = torch.full(tuple(sample_shape) + tuple(shape), self.p)
        return torch.bernoulli(probs)

    def extrinsic(self, evidence_logits: Tensor) -> Tensor:
        evidence_logits = self.check_logits(evidence_logits)
        return torch.full_like(evidence_logits, math.log(self.p) - math.log1p(-self.p))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "p": self.p} | self._shape_dict()


class _PairwiseMRFSupport(SupportStructure):
    """Shared machinery for pairwise binary MRFs.

    The density is ``p(s) ∝ exp(sum_n bias_n s_n + sum_(i,j) log psi_ij(s_i, s_j))``;
    :meth:`log_prob` returns this **unnormalised** log-density (the partition function is
    intractable on loopy graphs). :meth:`sample` runs vectorised Gibbs sweeps over a graph
    colouring (approximate; ``gibbs_sweeps`` sets the length). Module B is loopy belief
    propagation (flooding schedule, damped), exact on trees.
    """

    def __init__(
        self,
        shape: Sequence[int] | None,
        bp_iters: int = 50,
        bp_damping: float = 0.5,
        bp_tol: float = 1e-6,
        gibbs_sweeps: int = 100,
    ):
        owner = type(self).__name__
        self.bp_iters = _check_int(owner, "bp_iters", bp_iters, 1)
        self.bp_damping = _check_damping(owner, "bp_damping", bp_damping)
        self.bp_tol = _check_tol(owner, "bp_tol", bp_tol)
        self.gibbs_sweeps = _check_int(owner, "gibbs_sweeps", gibbs_sweeps, 1)
        super().__init__(shape)
        self._graph_cache: dict[tuple[Any, ...], tuple[Tensor, Tensor, Tensor, list[Tensor]]] = {}

    @property
    def bp_settings(self) -> tuple[int, float, float]:
        """``(bp_iters, bp_damping, bp_tol)``: MRFs with equal settings can share one BP run."""
        return self.bp_iters, self.bp_damping, self.bp_tol

    def _bp_kwargs(self) -> dict[str, Any]:
        return {
            "bp_iters": self.bp_iters,
            "bp_damping": self.bp_damping,
            "bp_tol": self.bp_tol,
            "gibbs_sweeps": self.gibbs_sweeps,
        }

    @abstractmethod
    def _build(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Edge index (2, E), edge log-potentials (E, 2, 2), node bias (N,)."""

    def _colouring(self, edge_index: Tensor, num_nodes: int) -> list[Tensor]:
        graph = nx.Graph()
        graph.add_nodes_from(range(num_nodes))
        graph.add_edges_from(edge_index.t().tolist())
        colour = nx.greedy_color(graph, strategy="largest_first")
        groups: dict[int, list[int]] = {}
        for node, c in colour.items():
            groups.setdefault(c, []).append(node)
        return [torch.tensor(sorted(v), dtype=torch.long) for _, v in sorted(groups.items())]

    def factor_graph(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        key = (like.dtype, like.device)
        if key not in self._graph_cache:
            edge_index, log_pot, bias = self._build(like.dtype, like.device)
            n = math.prod(self._require_shape())
            colours = [c.to(like.device) for c in self._colouring(edge_index.cpu(), n)]
            self._graph_cache[key] = (edge_index, log_pot, bias, colours)
        return self._graph_cache[key]

    def log_prob(self, value: Tensor) -> Tensor:
        """Unnormalised log-density ``sum_n bias_n s_n + sum_e log psi_e(s_i, s_j)``."""
        shape = self._require_shape()
        value = self._check_value(value)
        value = value.to(torch.get_default_dtype()) if not value.is_floating_point() else value
        flat = value.reshape(value.shape[: value.dim() - len(shape)] + (-1,))
        edge_index, log_pot, bias, _ = self.factor_graph(flat)
        si, sj = flat[..., edge_index[0]], flat[..., edge_index[1]]
        pair = (
            (1 - si) * (1 - sj) * log_pot[:, 0, 0]
            + (1 - si) * sj * log_pot[:, 0, 1]
            + si * (1 - sj) * log_pot[:, 1, 0]
            + si * sj * log_pot[:, 1, 1]
        )
        return (flat * bias).sum(-1) + pair.sum(-1)

    def _conditional_logits(
        self, flat: Tensor, edge_index: Tensor, log_pot: Tensor, bias: Tensor
    ) -> Tensor:
        si, sj = flat[..., edge_index[0]], flat[..., edge_index[1]]
        # d/ds_i of log psi(s_i, s_j) and d/ds_j of log psi(s_i, s_j), at the neighbours' values.
        to_i = (1 - sj) * (log_pot[:, 1, 0] - log_pot[:, 0, 0]) + sj * (
            log_pot[:, 1, 1] - log_pot[:, 0, 1]
        )
        to_j = (1 - si) * (log_pot[:, 0, 1] - log_pot[:, 0, 0]) + si * (
            log_pot[:, 1, 1] - log_pot[:, 1, 0]
        )
        logits = bias.expand(flat.shape).clone()
        logits.index_add_(-1, edge_index[0], to_i)
        logits.index_add_(-1, edge_index[1], to_j)
        return logits

    def sample(
        self, sample_shape: torch.Size | list[int] | tuple[int, ...] = torch.Size()
    ) -> Tensor:
        """Approximate samples by ``gibbs_sweeps`` colour-blocked Gibbs sweeps."""
        shape = self._require_shape()
        n = math.prod(shape)
        like = torch.zeros((), dtype=torch.get_default_dtype())
        edge_index, log_pot, bias, colours = self.factor_graph(like)
        flat = torch.bernoulli(torch.full(tuple(sample_shape) + (n,), 0.5, dtype=like.dtype))
        for _ in range(self.gibbs_sweeps):
            for nodes in colours:
                logits = self._conditional_logits(flat, edge_index, log_pot, bias)
                flat[..., nodes] = torch.bernoulli(torch.sigmoid(logits[..., nodes]))
        return flat.reshape(tuple(sample_shape) + tuple(shape))

    def extrinsic(self, evidence_logits: Tensor) -> Tensor:
        evidence_logits = self.check_logits(evidence_logits)
        flat = evidence_logits.reshape(-1)
        edge_index, log_pot, bias, _ = self.factor_graph(flat)
        beliefs = loopy_bp(
            flat,
            edge_index,
            log_pot,
            node_bias=bias,
            max_iters=self.bp_iters,
            damping=self.bp_damping,
            tol=self.bp_tol,
        )
        assert isinstance(beliefs, Tensor)
        return (beliefs - flat).reshape(evidence_logits.shape)


class GridMRFSupport(_PairwiseMRFSupport):
    """Chains along the rows *and* the columns of the support matrix at once.

    ``p(s) ∝ prod_rows chain(s_row) * prod_cols chain(s_col)``, both chains with the same
    ``p01, p10`` (the authors' TensorFlow demo's (github.com/cxiaab/D-turbo-vbi-FL, commit 8a89cc7)
    structure). A row or column start carries the stationary
    law; every other weight is tied to its left and upper neighbours by the transition matrix.
    Module B is loopy BP; ``log_prob`` is unnormalised.

    :param float p01: inactive -> active transition probability.
    :param float p10: active -> inactive transition probability.
    :param grid: the 2-D layout ``(rows, cols)`` of the support; by default the weight matrix
        view of ``shape`` (a vector of length ``N`` is one row).
    :param shape: the event shape, or ``None``.
    :param int bp_iters: loopy-BP iterations (``>= 1``); ``bp_damping`` (in ``[0, 1)``) and
        ``bp_tol`` (``>= 0``) as in :func:`~pyro_dturbo.ops.loopy.loopy_bp`.
    :param int gibbs_sweeps: Gibbs sweeps per :meth:`sample` call (``>= 1``).

    Example::

        >>> support = GridMRFSupport(0.05, 0.2, bp_iters=20).with_shape((16, 32))
        >>> pi = torch.sigmoid(support.extrinsic(torch.randn(16, 32)))

    References

    [1] Xia, Tsang, Lau (arXiv:2302.10483), Sec. III-A (the 2-D/3-D MRF support prior).
    """

    kind = "grid"

    def __init__(
        self,
        p01: float,
        p10: float,
        grid: Sequence[int] | None = None,
        shape: Sequence[int] | None = None,
        bp_iters: int = 50,
        bp_damping: float = 0.5,
        bp_tol: float = 1e-6,
        gibbs_sweeps: int = 100,
    ):
        self.p01 = _check_prob(type(self).__name__, "p01", p01)
        self.p10 = _check_prob(type(self).__name__, "p10", p10)
        self.grid: tuple[int, int] | None = None
        if grid is not None:
            rows, cols = _check_sizes(type(self).__name__, "grid", grid, 2)
            self.grid = rows, cols
        if shape is not None and self.grid is not None:
            if math.prod(self.grid) != math.prod(shape):
                raise ValueError(
                    f"GridMRFSupport.grid {self.grid} does not hold {math.prod(shape)} weights "
                    f"(shape {tuple(shape)})"
                )
        super().__init__(shape, bp_iters, bp_damping, bp_tol, gibbs_sweeps)

    def _rebind(self, shape: torch.Size) -> GridMRFSupport:
        return GridMRFSupport(self.p01, self.p10, self.grid, shape, **self._bp_kwargs())

    @property
    def stationary(self) -> float:
        return self.p01 / (self.p01 + self.p10)

    def _build(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        rows, cols = self.grid or _matrix_shape(self._require_shape())
        horizontal, vertical = grid_edges(rows, cols, device=device)
        edge_index = torch.cat([horizontal, vertical], dim=1)
        p01 = torch.tensor(self.p01, dtype=dtype, device=device)
        p10 = torch.tensor(self.p10, dtype=dtype, device=device)
        log_trans = chain_log_transition(p01, p10)
        log_pot = log_trans.expand(edge_index.shape[1], 2, 2).contiguous()
        log_init = chain_log_init(p01, p10)
        start_logit = log_init[1] - log_init[0]
        ids = torch.arange(rows * cols, device=device).reshape(rows, cols)
        bias = torch.zeros(rows * cols, dtype=dtype, device=device)
        bias[ids[:, 0]] += start_logit  # row chains start in the first column
        bias[ids[0, :]] += start_logit  # column chains start in the first row
        return edge_index, log_pot, bias

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "p01": self.p01, "p10": self.p10}
        if self.grid is not None:
            out["grid"] = list(self.grid)
        return out | self._shape_dict() | self._bp_kwargs()


#: The networkx generators a graph declaration may name, with their arguments in order. All
#: arguments are required except ``periodic`` (default false); the random generators require a
#: ``seed``, so that a declaration always builds the same graph.
GRAPH_GENERATORS: dict[str, tuple[str, ...]] = {
    "grid_2d_graph": ("m", "n", "periodic"),
    "triangular_lattice_graph": ("m", "n", "periodic"),
    "hexagonal_lattice_graph": ("m", "n", "periodic"),
    "path_graph": ("n",),
    "cycle_graph": ("n",),
    "star_graph": ("n",),
    "wheel_graph": ("n",),
    "ladder_graph": ("n",),
    "circular_ladder_graph": ("n",),
    "complete_graph": ("n",),
    "complete_bipartite_graph": ("n1", "n2"),
    "barbell_graph": ("m1", "m2"),
    "lollipop_graph": ("m", "n"),
    "balanced_tree": ("r", "h"),
    "hypercube_graph": ("n",),
    "empty_graph": ("n",),
    "random_labeled_tree": ("n", "seed"),
    "random_regular_graph": ("d", "n", "seed"),
    "watts_strogatz_graph": ("n", "k", "p", "seed"),
    "newman_watts_strogatz_graph": ("n", "k", "p", "seed"),
    "gnp_random_graph": ("n", "p", "seed"),
    "barabasi_albert_graph": ("n", "m", "seed"),
}
_OPTIONAL_GENERATOR_ARGS = {"periodic": False}


def _generator_argument(owner: str, label: str, key: str, value: Any) -> Any:
    if key == "periodic":
        if not isinstance(value, bool):
            raise ValueError(f"{owner}.{label} (periodic) must be true or false, got {value!r}")
        return value
    if key == "p":
        value = _check_number(owner, label, value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{owner}.{label} (p) must be a probability in [0, 1], got {value}")
        return value
    return _check_int(owner, label, value, 0)


def _generate_graph(
    owner: str, generator: Any, args: Any, kwargs: Any
) -> tuple[nx.Graph, dict[str, Any]]:
    """Build a whitelisted networkx graph, nodes relabelled ``0..N-1`` in sorted order.

    :returns: the graph and its normalised declaration ``{"generator", "args", "kwargs"}``.
    """
    if not isinstance(generator, str) or generator not in GRAPH_GENERATORS:
        raise ValueError(
            f"{owner}.generator must be one of {sorted(GRAPH_GENERATORS)}, got {generator!r}"
        )
    params = GRAPH_GENERATORS[generator]
    signature = f"{generator}({', '.join(params)})"
    if not _is_sequence(args):
        raise ValueError(f"{owner}.args must be a list of arguments to {signature}, got {args!r}")
    if not isinstance(kwargs, Mapping):
        raise ValueError(
            f"{owner}.kwargs must be a mapping of arguments to {signature}, got {kwargs!r}"
        )
    if len(args) > len(params):
        raise ValueError(
            f"{owner}.args: {signature} takes {len(params)} arguments, got {len(args)}"
        )
    bound: dict[str, Any] = {}
    for i, (key, value) in enumerate(zip(params, args, strict=False)):
        bound[key] = _generator_argument(owner, f"args[{i}]", key, value)
    for key, value in kwargs.items():
        if key not in params:
            raise ValueError(f"{owner}.kwargs: {signature} has no argument {key!r}")
        if key in bound:
            raise ValueError(f"{owner}.kwargs.{key}: given twice (also in args)")
        bound[key] = _generator_argument(owner, f"kwargs.{key}", key, value)
    missing = [k for k in params if k not in bound and k not in _OPTIONAL_GENERATOR_ARGS]
    if missing:
        why = " (a random generator needs a seed to be reproducible)" if "seed" in missing else ""
        raise ValueError(f"{owner}: {signature} needs {missing} in args or kwargs{why}")
    try:
        graph = getattr(nx, generator)(**bound)
    except (nx.NetworkXError, ValueError, TypeError) as e:
        raise ValueError(f"{owner}: networkx.{signature} failed on {bound}: {e}") from None
    graph = nx.convert_node_labels_to_integers(nx.Graph(graph), ordering="sorted")
    spec = {
        "generator": generator,
        "args": [bound[k] for k in params[: len(args)]],
        "kwargs": {k: bound[k] for k in kwargs},
    }
    return graph, spec


def _edge_signature(graph: nx.Graph) -> tuple[int, frozenset[tuple[Any, Any, Any]]]:
    edges = graph.edges(data="coupling")
    return graph.number_of_nodes(), frozenset((min(i, j), max(i, j), c) for i, j, c in edges)


def _edge_list_graph(owner: str, num_nodes: Any, edges: Any, shape: Any) -> nx.Graph:
    """The graph of an edge-list declaration: ``[[i, j], ...]`` or ``[[i, j, coupling], ...]``."""
    if not _is_sequence(edges):
        raise ValueError(
            f"{owner}.edges must be a list of [i, j] or [i, j, coupling], got {edges!r}"
        )
    parsed: list[tuple[int, int, float | None]] = []
    seen: dict[tuple[int, int], int] = {}
    for k, edge in enumerate(edges):
        if not _is_sequence(edge) or len(edge) not in (2, 3):
            raise ValueError(f"{owner}.edges[{k}] must be [i, j] or [i, j, coupling], got {edge!r}")
        i = _check_int(owner, f"edges[{k}][0]", edge[0], 0)
        j = _check_int(owner, f"edges[{k}][1]", edge[1], 0)
        if i == j:
            raise ValueError(f"{owner}.edges[{k}] = {list(edge)!r} is a self-loop")
        key = (min(i, j), max(i, j))
        if key in seen:
            raise ValueError(f"{owner}.edges[{k}] repeats edges[{seen[key]}] ({i}, {j})")
        seen[key] = k
        c = _check_finite(owner, f"edges[{k}][2]", edge[2]) if len(edge) == 3 else None
        parsed.append((i, j, c))
    if num_nodes is not None:
        n = _check_int(owner, "num_nodes", num_nodes, 1)
    elif shape is not None:
        n = math.prod(_check_sizes(owner, "shape", shape))
    elif parsed:
        n = 1 + max(max(i, j) for i, j, _ in parsed)
    else:
        raise ValueError(f"{owner}.num_nodes is required for a graph without edges")
    for k, (i, j, _) in enumerate(parsed):
        if max(i, j) >= n:
            raise ValueError(
                f"{owner}.edges[{k}] = [{i}, {j}] names node {max(i, j)}, but the graph has "
                f"{n} nodes (0..{n - 1})"
            )
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for i, j, c in parsed:
        if c is None:
            graph.add_edge(i, j)
        else:
            graph.add_edge(i, j, coupling=c)
    return graph


class GraphMRFSupport(_PairwiseMRFSupport):
    """An Ising-type pairwise MRF on any networkx graph whose nodes index the weights.

    ``p(s) ∝ exp(sum_n bias_n s_n + sum_(i,j) J_ij 1[s_i = s_j])`` with ``J_ij`` the edge
    attribute ``"coupling"`` where present, else ``coupling``. Nodes must be the integers
    ``0 .. N-1`` (flattened weight indices, row-major). Module B is loopy BP (exact on trees);
    ``log_prob`` is unnormalised. :meth:`from_generator` builds the graph from a whitelisted
    networkx generator and keeps that compact declaration for :meth:`to_dict`.

    :param networkx.Graph graph: the dependency graph (undirected, no self-loops).
    :param float coupling: default edge coupling ``J`` (positive favours agreement).
    :param bias: node log-odds, a float or a sequence of length ``N`` (negative favours
        sparsity).
    :param shape: the event shape (its size must be ``N``), or ``None`` for ``(N,)``.
    :param int bp_iters: loopy-BP iterations; ``bp_damping``, ``bp_tol`` and ``gibbs_sweeps``
        as in :class:`GridMRFSupport`.

    Example::

        >>> graph = networkx.path_graph(4)
        >>> graph.edges[0, 1]["coupling"] = 3.0      # a per-edge coupling
        >>> support = GraphMRFSupport(graph, coupling=1.0, bias=-0.5)
        >>> support.to_dict()["edges"]
        [[0, 1, 3.0], [1, 2], [2, 3]]
    """

    kind = "graph"

    def __init__(
        self,
        graph: nx.Graph,
        coupling: float = 1.0,
        bias: float | Sequence[float] = 0.0,
        shape: Sequence[int] | None = None,
        bp_iters: int = 50,
        bp_damping: float = 0.5,
        bp_tol: float = 1e-6,
        gibbs_sweeps: int = 100,
    ):
        owner = type(self).__name__
        if not isinstance(graph, nx.Graph):
            raise ValueError(f"{owner}.graph must be a networkx graph, got {type(graph)}")
        if graph.is_directed() or graph.is_multigraph():
            raise ValueError(f"{owner}.graph must be an undirected simple nx.Graph")
        n = graph.number_of_nodes()
        if n == 0 or set(graph.nodes) != set(range(n)):
            raise ValueError(
                f"{owner}.graph nodes must be the integers 0..N-1 (flattened weight "
                "indices); relabel with networkx.convert_node_labels_to_integers"
            )
        if nx.number_of_selfloops(graph):
            raise ValueError(f"{owner}.graph has self-loops {list(nx.selfloop_edges(graph))}")
        for i, j, c in graph.edges(data="coupling"):
            if c is not None:
                _check_finite(owner, f"graph.edges[{i}, {j}]['coupling']", c)
        self.graph = graph
        self.coupling = _check_finite(owner, "coupling", coupling)
        self.bias: float | list[float] = _check_bias(owner, bias, n)
        if shape is None:
            shape = (n,)
        shape = _check_shape(shape, owner)
        assert shape is not None
        if math.prod(shape) != n:
            raise ValueError(
                f"{owner}: shape {tuple(shape)} holds {math.prod(shape)} weights but the "
                f"graph has {n} nodes"
            )
        self._generator: dict[str, Any] | None = None
        self._generator_signature: Any = None
        super().__init__(shape, bp_iters, bp_damping, bp_tol, gibbs_sweeps)

    @classmethod
    def from_generator(
        cls,
        generator: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        coupling: float = 1.0,
        bias: float | Sequence[float] = 0.0,
        shape: Sequence[int] | None = None,
        bp_iters: int = 50,
        bp_damping: float = 0.5,
        bp_tol: float = 1e-6,
        gibbs_sweeps: int = 100,
    ) -> GraphMRFSupport:
        """A graph MRF on ``networkx.<generator>(*args, **kwargs)``, nodes relabelled
        ``0..N-1`` in sorted order (so ``grid_2d_graph(m, n)`` numbers its nodes row-major).

        :param str generator: one of :data:`GRAPH_GENERATORS`; the random ones need a ``seed``.
        :param args: positional arguments of the generator.
        :param kwargs: keyword arguments of the generator.
        :returns: the support; its :meth:`to_dict` is the compact generator declaration as long
            as the graph's edges and per-edge couplings are left as generated.
        :raises ValueError: on a generator outside the whitelist or bad arguments.

        Example::

            >>> support = GraphMRFSupport.from_generator("grid_2d_graph", [16, 160], bias=-1.0)
            >>> support.to_dict()["generator"]
            'grid_2d_graph'
        """
        graph, spec = _generate_graph(cls.__name__, generator, args, kwargs or {})
        out = cls(graph, coupling, bias, shape, bp_iters, bp_damping, bp_tol, gibbs_sweeps)
        out._generator = spec
        out._generator_signature = _edge_signature(graph)
        return out

    @property
    def generator(self) -> dict[str, Any] | None:
        """The generator declaration ``{"generator", "args", "kwargs"}`` this graph was built
        from, or ``None`` (not built by one, or its edges or couplings changed since)."""
        if self._generator is None or _edge_signature(self.graph) != self._generator_signature:
            return None
        return {
            k: (list(v) if k == "args" else dict(v) if k == "kwargs" else v)
            for k, v in self._generator.items()
        }

    def _rebind(self, shape: torch.Size) -> GraphMRFSupport:
        out = GraphMRFSupport(self.graph, self.coupling, self.bias, shape, **self._bp_kwargs())
        out._generator, out._generator_signature = self._generator, self._generator_signature
        return out

    def _build(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        edges = list(self.graph.edges(data="coupling", default=self.coupling))
        n = self.graph.number_of_nodes()
        if edges:
            edge_index = torch.tensor([[i, j] for i, j, _ in edges], device=device).t()
            couplings = torch.tensor([c for _, _, c in edges], dtype=dtype, device=device)
        else:
            edge_index = torch.zeros(2, 0, dtype=torch.long, device=device)
            couplings = torch.zeros(0, dtype=dtype, device=device)
        log_pot = ising_edge_log_potential(couplings, edge_index.shape[1])
        bias = torch.as_tensor(self.bias, dtype=dtype, device=device).expand(n).contiguous()
        return edge_index, log_pot.to(dtype=dtype, device=device), bias

    def to_dict(self) -> dict[str, Any]:
        """The declaration: the generator form when the graph came from
        :meth:`from_generator` unchanged, else ``num_nodes`` and the edge list, an edge with its
        own coupling as ``[i, j, coupling]``."""
        out: dict[str, Any] = {"type": self.kind}
        generator = self.generator
        n = self.graph.number_of_nodes()
        if generator is not None:
            out["generator"] = generator["generator"]
            if generator["args"]:
                out["args"] = generator["args"]
            if generator["kwargs"]:
                out["kwargs"] = generator["kwargs"]
        else:
            out["num_nodes"] = n
            out["edges"] = [
                [i, j] if c is None else [i, j, float(c)]
                for i, j, c in self.graph.edges(data="coupling")
            ]
        out["coupling"] = self.coupling
        out["bias"] = list(self.bias) if isinstance(self.bias, list) else self.bias
        if tuple(self._require_shape()) != (n,):
            out |= self._shape_dict()
        return out | self._bp_kwargs()


_KINDS: dict[str, type[SupportStructure]] = {
    cls.kind: cls
    for cls in (MarkovChainSupport, GridMRFSupport, GraphMRFSupport, IndependentSupport)
}

_BP_FIELDS = ("bp_iters", "bp_damping", "bp_tol", "gibbs_sweeps")
#: ``{type: (required fields, optional fields)}`` of a support declaration.
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chain": (("p01", "p10"), ("along", "shape")),
    "grid": (("p01", "p10"), ("grid", "shape", *_BP_FIELDS)),
    "independent": (("p",), ("shape",)),
    "graph": (
        (),
        ("generator", "args", "kwargs", "num_nodes", "edges", "coupling", "bias", "shape")
        + _BP_FIELDS,
    ),
}
_VALIDATORS: dict[str, Any] = {
    "p01": _check_prob,
    "p10": _check_prob,
    "p": _check_prob,
    "along": _check_along,
    "shape": lambda owner, name, v: _check_sizes(owner, name, v),
    "grid": lambda owner, name, v: _check_sizes(owner, name, v, 2),
    "bp_iters": lambda owner, name, v: _check_int(owner, name, v, 1),
    "bp_damping": _check_damping,
    "bp_tol": _check_tol,
    "gibbs_sweeps": lambda owner, name, v: _check_int(owner, name, v, 1),
    "coupling": _check_finite,
}


def support_from_dict(spec: Mapping[str, Any], *, where: str = "support") -> SupportStructure:
    """Build a support structure from its declaration, e.g. ``{"type": "chain", "p01": 0.01,
    "p10": 0.1}``; the inverse of :meth:`SupportStructure.to_dict`.

    A graph is declared either by a networkx generator from :data:`GRAPH_GENERATORS`
    (``generator``, ``args``, ``kwargs``) or by an edge list (``edges: [[i, j], ...]``, an edge
    with its own coupling as ``[i, j, coupling]``; ``num_nodes`` defaults to the size of
    ``shape``, else to one more than the largest node index).

    :param spec: the declaration.
    :param str where: what error messages call the declaration (``"support"``).
    :returns: the support structure.
    :raises ValueError: naming the field, on an unknown type, a missing, unknown or bad field.

    Example::

        >>> support_from_dict({"type": "graph", "generator": "grid_2d_graph", "args": [16, 160],
        ...                    "coupling": 0.5, "bias": -1.0})
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping with a 'type', got {spec!r}")
    if "type" not in spec:
        raise ValueError(f"{where}.type is required, one of {sorted(_KINDS)}")
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{where}.type must be one of {sorted(_KINDS)}, got {kind!r}")
    required, optional = _FIELDS[kind]
    fields = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted((k for k in fields if k not in required + optional), key=str)
    if unknown:
        raise ValueError(
            f"{where}: unknown fields {unknown} for type {kind!r}; its fields are "
            f"{sorted(required + optional)}"
        )
    for name in required:
        if name not in fields:
            raise ValueError(f"{where}.{name} is required for type {kind!r}")
    kwargs = {
        name: _VALIDATORS[name](where, name, value)
        for name, value in fields.items()
        if name in _VALIDATORS
    }
    try:
        if kind != "graph":
            return _KINDS[kind](**kwargs)
        common = {"coupling": kwargs.pop("coupling", 1.0), **kwargs}
        if "generator" in fields:
            clash = sorted(k for k in ("edges", "num_nodes") if k in fields)
            if clash:
                raise ValueError(f"{where}: give a generator or an edge list {clash}, not both")
            graph, generated = _generate_graph(
                where, fields["generator"], fields.get("args", []), fields.get("kwargs", {})
            )
        else:
            stray = sorted(k for k in ("args", "kwargs") if k in fields)
            if stray:
                raise ValueError(f"{where}: {stray} need a generator")
            if "edges" not in fields and "num_nodes" not in fields:
                raise ValueError(
                    f"{where}: type 'graph' needs a generator (e.g. generator: grid_2d_graph, "
                    "args: [16, 160]) or an edge list (edges: [[0, 1], [1, 2], ...])"
                )
            graph = _edge_list_graph(
                where, fields.get("num_nodes"), fields.get("edges", []), fields.get("shape")
            )
            generated = None
        bias = _check_bias(where, fields.get("bias", 0.0), graph.number_of_nodes())
        support = GraphMRFSupport(graph, bias=bias, **common)
        if generated is not None:
            support._generator = generated
            support._generator_signature = _edge_signature(graph)
        return support
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: {e}") from e
