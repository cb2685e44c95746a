"""Support structures: joint priors over the binary supports ``s`` of a weight tensor.

Each structure is a Pyro distribution over a {0, 1} tensor of shape ``shape`` (its event shape)
and also Module B of Turbo-VBI: :meth:`SupportStructure.extrinsic` takes Module A's evidence
log-odds about every ``s_n`` and returns the extrinsic prior log-odds ``logit(pi_n)``.

A structure may be declared without a shape (``MarkovChainSupport(p01=0.01, p10=0.1)``) and
bound to a tensor shape later with :meth:`SupportStructure.with_shape`; this is how a
:class:`~pyro_dturbo.models.prior.SparsePrior` declares one prior for many layers.

Weight tensors are viewed as matrices ``(shape[0], prod(shape[1:]))`` (rows = output units,
columns = flattened inputs, PyTorch order); a vector of length ``N`` is one row.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. III-A (the
    Markov-chain / MRF support prior), Sec. IV-B (Module B).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
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
    "support_from_dict",
]


def _check_prob(owner: str, name: str, value: float) -> float:
    value = float(value)
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise ValueError(f"{owner}.{name} must be a probability in (0, 1), got {value}")
    return value


def _check_shape(shape: Sequence[int] | None) -> torch.Size | None:
    if shape is None:
        return None
    shape = torch.Size(int(d) for d in shape)
    if len(shape) == 0 or any(d <= 0 for d in shape):
        raise ValueError(f"support shape must be non-empty with positive sizes, got {tuple(shape)}")
    return shape


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
        self._shape = _check_shape(shape)
        event_shape = self._shape if self._shape is not None else torch.Size()
        super().__init__(torch.Size(), event_shape, validate_args=False)

    # -- shape binding ---------------------------------------------------------------------
    @property
    def shape_bound(self) -> bool:
        return self._shape is not None

    def with_shape(self, shape: Sequence[int]) -> SupportStructure:
        """A copy of this structure over a tensor of the given shape."""
        return self._rebind(_check_shape(shape))  # type: ignore[arg-type]

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
        """The declaration of this structure (``{"type": ..., **fields}``)."""

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> Any:
        if tuple(batch_shape) == ():
            return self
        return super().expand(batch_shape, _instance)

    def __repr__(self) -> str:
        fields = {k: v for k, v in self.to_dict().items() if k not in ("type", "edges")}
        args = ", ".join(f"{k}={v!r}" for k, v in fields.items())
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
        if along not in ("rows", "cols"):
            raise ValueError(f"MarkovChainSupport.along must be 'rows' or 'cols', got {along!r}")
        self.along = along
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
        return {"type": self.kind, "p01": self.p01, "p10": self.p10, "along": self.along}


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
        return {"type": self.kind, "p": self.p}


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
        if int(bp_iters) < 1:
            raise ValueError(f"{type(self).__name__}.bp_iters must be >= 1, got {bp_iters}")
        if not 0.0 <= float(bp_damping) < 1.0:
            raise ValueError(
                f"{type(self).__name__}.bp_damping must be in [0, 1), got {bp_damping}"
            )
        self.bp_iters = int(bp_iters)
        self.bp_damping = float(bp_damping)
        self.bp_tol = float(bp_tol)
        self.gibbs_sweeps = int(gibbs_sweeps)
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
    ``p01, p10`` (the reference demo's structure). A row or column start carries the stationary
    law; every other weight is tied to its left and upper neighbours by the transition matrix.
    Module B is loopy BP; ``log_prob`` is unnormalised.

    :param float p01: inactive -> active transition probability.
    :param float p10: active -> inactive transition probability.
    :param grid: the 2-D layout ``(rows, cols)`` of the support; by default the weight matrix
        view of ``shape`` (a vector of length ``N`` is one row).
    :param shape: the event shape, or ``None``.
    :param int bp_iters: loopy-BP iterations; ``bp_damping``, ``bp_tol`` as in
        :func:`~pyro_dturbo.ops.loopy.loopy_bp`.

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
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        if grid is not None and len(grid) != 2:
            raise ValueError(f"GridMRFSupport.grid must be (rows, cols), got {grid}")
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
        return out


class GraphMRFSupport(_PairwiseMRFSupport):
    """An Ising-type pairwise MRF on any networkx graph whose nodes index the weights.

    ``p(s) ∝ exp(sum_n bias_n s_n + sum_(i,j) J_ij 1[s_i = s_j])`` with ``J_ij`` the edge
    attribute ``"coupling"`` where present, else ``coupling``. Nodes must be the integers
    ``0 .. N-1`` (flattened weight indices, row-major). Module B is loopy BP (exact on trees);
    ``log_prob`` is unnormalised.

    :param networkx.Graph graph: the dependency graph.
    :param float coupling: default edge coupling ``J`` (positive favours agreement).
    :param bias: node log-odds, a float or a sequence of length ``N`` (negative favours
        sparsity).
    :param shape: the event shape (its size must be ``N``), or ``None`` for ``(N,)``.
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
        if not isinstance(graph, nx.Graph):
            raise ValueError(f"GraphMRFSupport.graph must be a networkx graph, got {type(graph)}")
        n = graph.number_of_nodes()
        if n == 0 or set(graph.nodes) != set(range(n)):
            raise ValueError(
                "GraphMRFSupport.graph nodes must be the integers 0..N-1 (flattened weight "
                "indices); relabel with networkx.convert_node_labels_to_integers"
            )
        self.graph = graph
        self.coupling = float(coupling)
        if not math.isfinite(self.coupling):
            raise ValueError(f"GraphMRFSupport.coupling must be finite, got {coupling}")
        if isinstance(bias, int | float):
            self.bias: float | list[float] = float(bias)
        else:
            self.bias = [float(b) for b in bias]
            if len(self.bias) != n:
                raise ValueError(f"GraphMRFSupport.bias has {len(self.bias)} entries, graph {n}")
        if shape is None:
            shape = (n,)
        if math.prod(shape) != n:
            raise ValueError(
                f"GraphMRFSupport: shape {tuple(shape)} holds {math.prod(shape)} weights but the "
                f"graph has {n} nodes"
            )
        super().__init__(shape, bp_iters, bp_damping, bp_tol, gibbs_sweeps)

    def _rebind(self, shape: torch.Size) -> GraphMRFSupport:
        return GraphMRFSupport(self.graph, self.coupling, self.bias, shape, **self._bp_kwargs())

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
        return {
            "type": self.kind,
            "num_nodes": self.graph.number_of_nodes(),
            "edges": [list(e) for e in self.graph.edges],
            "coupling": self.coupling,
            "bias": self.bias,
        }


_KINDS: dict[str, type[SupportStructure]] = {
    cls.kind: cls
    for cls in (MarkovChainSupport, GridMRFSupport, GraphMRFSupport, IndependentSupport)
}


def support_from_dict(spec: dict[str, Any]) -> SupportStructure:
    """Build a support structure from its declaration, e.g. ``{"type": "chain", "p01": 0.01,
    "p10": 0.1}``; the inverse of :meth:`SupportStructure.to_dict`.

    :raises ValueError: on an unknown type or a bad / unknown field.
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"support declaration must be a dict with a 'type', got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in _KINDS:
        raise ValueError(f"support.type must be one of {sorted(_KINDS)}, got {kind!r}")
    if kind == "graph":
        graph = nx.Graph()
        graph.add_nodes_from(range(int(spec.pop("num_nodes"))))
        graph.add_edges_from(tuple(e) for e in spec.pop("edges", []))
        spec["graph"] = graph
    try:
        return _KINDS[kind](**spec)
    except TypeError as e:
        raise ValueError(f"support ({kind}): {e}") from e
