"""The Turbo-VBI loop: Module A (variational Bayes) and Module B (support message passing)
exchange extrinsic messages about the supports until they agree.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. IV, Alg. 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_dturbo.inference.module_b import ModuleB
from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.ops.messages import BernoulliMessage

__all__ = ["ModuleA", "TurboState", "TurboResult", "TurboVBI"]

Messages = dict[str, BernoulliMessage]


class ModuleA(Protocol):
    """What the Turbo loop needs from Module A (regression here; networks elsewhere)."""

    @property
    def support_shape(self) -> dict[str, tuple[int, ...]]: ...

    def init_params(self, prior: Messages) -> dict[str, Any]: ...

    def update(
        self, params: dict[str, Any], prior: Messages
    ) -> tuple[dict[str, Any], Messages | None, dict[str, float]]:
        """One pass given Module B's messages ``pi``; returns new params (the input is not
        changed), the extrinsic evidence ``L`` per layer (``None`` once the supports are
        frozen: no new evidence, so Module B does not run and ``pi`` stays), and scalar
        metrics."""
        ...


@dataclass(frozen=True)
class TurboState:
    """Everything needed to resume a Turbo-VBI run.

    A state is a value: :meth:`TurboVBI.step` returns a new one and never changes its input,
    so one state can be resumed any number of times with the same result.

    :ivar params: Module A's posterior parameters (including its random generator's state).
    :ivar prior: Module B's last extrinsic message ``pi`` per layer.
    :ivar evidence: Module A's last extrinsic message ``L`` per layer.
    :ivar int iteration: turbo iterations done.
    :ivar bool converged: whether the last iteration moved ``pi`` by less than ``tol``.
    :ivar history: one record per iteration.
    """

    params: dict[str, Any]
    prior: Messages
    evidence: Messages
    iteration: int = 0
    converged: bool = False
    history: tuple[dict[str, float], ...] = ()

    @property
    def prior_logits(self) -> dict[str, Tensor]:
        """``logit(pi)`` per layer."""
        return {k: m.logits for k, m in self.prior.items()}

    @property
    def evidence_logits(self) -> dict[str, Tensor]:
        """``L`` per layer."""
        return {k: m.logits for k, m in self.evidence.items()}

    def posterior(self) -> Messages:
        """``q(s)`` per layer: the product ``pi * L``, clipped."""
        return {
            k: (m * self.evidence[k]).clip() if k in self.evidence else m
            for k, m in self.prior.items()
        }

    def support_logits(self) -> dict[str, Tensor]:
        """Posterior log-odds of every support: ``logit(pi) + L``."""
        return {k: m.logits for k, m in self.posterior().items()}


@dataclass
class TurboResult:
    """The outcome of :meth:`TurboVBI.run`: ``params``, the resumable ``state`` and ``history``."""

    params: dict[str, Any]
    state: TurboState
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.state.converged

    @property
    def support_probs_by_layer(self) -> dict[str, Tensor]:
        return {k: m.probs for k, m in self.state.posterior().items()}

    def _summary(self) -> str:
        """``iterations=..., converged=..., active=k/n``: what every result's repr starts with."""
        probs = self.support_probs_by_layer
        active = sum(int((p > 0.5).sum()) for p in probs.values())
        total = sum(p.numel() for p in probs.values())
        return (
            f"iterations={self.state.iteration}, converged={self.converged}, "
            f"active={active}/{total}"
        )

    def __repr__(self) -> str:
        # a one-line summary: the tensors and the history stay behind their attributes
        return f"{type(self).__name__}({self._summary()})"


class TurboVBI:
    """Turbo variational Bayesian inference.

    Each iteration runs Module A given the support prior message ``pi``, sends its extrinsic
    evidence ``L`` to Module B (:class:`~pyro_dturbo.inference.module_b.ModuleB`: sum-product
    over the support structure of each layer), and takes Module B's extrinsic output as the
    next ``pi``; it stops when neither ``pi`` nor the posterior ``q(s)`` moves by more than
    ``tol`` (max abs change).

    :param ModuleA module_a: the variational Bayes module (e.g.
        :class:`~pyro_dturbo.inference.regression.RegressionModuleA`).
    :param SparsePrior prior: the prior; per-layer overrides apply by name.
    :param float damping: weight of the previous ``pi`` message, in ``[0, 1)``.
    :param float tol: convergence tolerance on ``max |delta pi|`` and ``max |delta q(s)|``.
    :param int max_iters: default iteration budget for :meth:`run`.
    :param int min_iters: iterations to run before convergence may stop the loop.

    Example::

        >>> module_a = RegressionModuleA(X, y, prior)
        >>> turbo = TurboVBI(module_a, prior, damping=0.2)
        >>> result = turbo.run(progress_bar=True)
        >>> result = turbo.run(result.state, max_iters=50)   # resume

    References

    [1] Xia, Tsang, Lau (arXiv:2302.10483), Alg. 1.
    """

    def __init__(
        self,
        module_a: ModuleA,
        prior: SparsePrior,
        *,
        damping: float = 0.0,
        tol: float = 1e-6,
        max_iters: int = 200,
        min_iters: int = 1,
    ):
        if tol <= 0:
            raise ValueError(f"tol must be positive, got {tol}")
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        self.module_a = module_a
        self.prior = prior
        self.tol = float(tol)
        self.max_iters = int(max_iters)
        self.min_iters = int(min_iters)
        shapes = module_a.support_shape
        prior.check_layer_names(list(shapes))
        self.module_b = ModuleB(
            {name: prior.for_layer(name).support.with_shape(s) for name, s in shapes.items()},
            damping=damping,
        )

    @property
    def damping(self) -> float:
        return self.module_b.damping

    def init_state(self, like: Tensor | None = None) -> TurboState:
        """Start from the support prior's own marginals (Module B with no evidence)."""
        kw: dict[str, Any] = {}
        if like is not None:
            kw = {"dtype": like.dtype, "device": like.device}
        prior = self.module_b.initial(**kw)
        zero = {k: BernoulliMessage(torch.zeros_like(m.logits)) for k, m in prior.items()}
        params = self.module_a.init_params(prior)
        return TurboState(params, prior, zero)

    def step(self, state: TurboState) -> TurboState:
        """One turbo iteration: Module A, then Module B (which clips and damps)."""
        t0 = time.perf_counter()
        params, evidence, metrics = self.module_a.update(state.params, state.prior)
        t1 = time.perf_counter()
        if evidence is None:  # frozen supports (fine-tuning): Module B has nothing new
            new = TurboState(params, state.prior, state.evidence, state.iteration + 1)
            delta_pi, time_b = 0.0, 0.0
        else:
            out = self.module_b(evidence, state.prior)
            new = TurboState(params, out.messages, evidence, state.iteration + 1)
            delta_pi, time_b = out.delta_pi, out.time
        posterior, old_posterior = new.posterior(), state.posterior()
        # Module B may be constant (independent supports): watch q(s) as well as pi.
        delta_q = max(
            (posterior[k].max_prob_change(old_posterior[k]) for k in posterior), default=0.0
        )
        record = {
            "iteration": state.iteration + 1,  # counts are ints (JSON integers)
            "delta_pi": delta_pi,
            "delta_q": delta_q,
            "support_size": sum(int((m.logits > 0).sum()) for m in posterior.values()),
            "time_a": t1 - t0,
            "time_b": time_b,
            "time": t1 - t0 + time_b,
            **metrics,
        }
        converged = max(delta_pi, delta_q) < self.tol and state.iteration + 1 >= self.min_iters
        return replace(new, converged=converged, history=state.history + (record,))

    def run(
        self,
        state: TurboState | None = None,
        *,
        max_iters: int | None = None,
        progress_bar: bool = False,
        hook_fn: Callable[[TurboState], None] | None = None,
        like: Tensor | None = None,
    ) -> TurboResult:
        """Iterate until convergence or ``max_iters`` more iterations.

        :param TurboState state: resume from this state (default: a fresh start).
        :param int max_iters: iterations to run in this call (default: the constructor's).
        :param bool progress_bar: show a tqdm bar with ``delta pi`` and the support size.
        :param hook_fn: called with the state after every iteration.
        :returns: a :class:`TurboResult`.
        """
        state = state if state is not None else self.init_state(like)
        if state.converged:
            state = replace(state, converged=False)
        budget = self.max_iters if max_iters is None else int(max_iters)
        bar = tqdm(range(budget), disable=not progress_bar, desc="Turbo-VBI", leave=False)
        for _ in bar:
            state = self.step(state)
            record = state.history[-1]
            postfix = {"delta_pi": f"{record['delta_pi']:.2e}"}
            # networks report their training metrics; regression its support size
            for key in ("loss", "accuracy", "test_accuracy", "density"):
                if key in record:
                    postfix[key] = f"{record[key]:.4g}"
            if "density" not in record:
                postfix["support"] = str(int(record["support_size"]))
            bar.set_postfix(postfix)
            if hook_fn is not None:
                hook_fn(state)
            if state.converged:
                break
        bar.close()
        return TurboResult(state.params, state, list(state.history))
