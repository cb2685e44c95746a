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

from pyro_dturbo.inference.messages import BernoulliMessage, clip_logits
from pyro_dturbo.inference.vbi import RegressionModuleA
from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.models.regression import (
    LAYER,
    NOISE_PRIOR,
    check_regression_data,
    default_regression_prior,
    sparse_regression_model,
)
from pyro_dturbo.models.support import SupportStructure, batched_extrinsic

__all__ = [
    "ModuleA",
    "TurboState",
    "TurboResult",
    "TurboVBI",
    "SparseRegressionResult",
    "fit_sparse_regression",
]


class ModuleA(Protocol):
    """What the Turbo loop needs from Module A (regression here; networks elsewhere)."""

    @property
    def support_shape(self) -> dict[str, tuple[int, ...]]: ...

    def init_params(self, prior_probs: dict[str, Tensor]) -> dict[str, Any]: ...

    def update(
        self, params: dict[str, Any], prior_logits: dict[str, Tensor]
    ) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, float]]: ...

    def support_probs(self, params: dict[str, Any]) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class TurboState:
    """Everything needed to resume a Turbo-VBI run.

    :ivar params: Module A's posterior parameters.
    :ivar prior_logits: Module B's last extrinsic message ``logit(pi)`` per layer.
    :ivar evidence_logits: Module A's last extrinsic message ``L`` per layer.
    :ivar int iteration: turbo iterations done.
    :ivar bool converged: whether the last iteration moved ``pi`` by less than ``tol``.
    :ivar history: one record per iteration.
    """

    params: dict[str, Any]
    prior_logits: dict[str, Tensor]
    evidence_logits: dict[str, Tensor]
    iteration: int = 0
    converged: bool = False
    history: tuple[dict[str, float], ...] = ()

    def support_logits(self) -> dict[str, Tensor]:
        """Posterior log-odds of every support: ``logit(pi) + L``."""
        return {
            k: clip_logits(v + self.evidence_logits[k]) if k in self.evidence_logits else v
            for k, v in self.prior_logits.items()
        }


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
        return {k: torch.sigmoid(v) for k, v in self.state.support_logits().items()}


class TurboVBI:
    """Turbo variational Bayesian inference.

    Each iteration runs Module A given the support prior message ``pi``, sends its extrinsic
    evidence ``L`` to Module B (sum-product over the support structure of each layer), and takes
    Module B's extrinsic output as the next ``pi``; it stops when neither ``pi`` nor the
    posterior ``q(s)`` moves by more than ``tol`` (max abs change).

    :param ModuleA module_a: the variational Bayes module (e.g. :class:`RegressionModuleA`).
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
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"damping must be in [0, 1), got {damping}")
        if tol <= 0:
            raise ValueError(f"tol must be positive, got {tol}")
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        self.module_a = module_a
        self.prior = prior
        self.damping = float(damping)
        self.tol = float(tol)
        self.max_iters = int(max_iters)
        self.min_iters = int(min_iters)
        shapes = module_a.support_shape
        prior.check_layer_names(list(shapes))
        self.supports: dict[str, SupportStructure] = {
            name: prior.for_layer(name).support.with_shape(shape) for name, shape in shapes.items()
        }

    def init_state(self, like: Tensor | None = None) -> TurboState:
        """Start from the support prior's own marginals (Module B with no evidence)."""
        kw: dict[str, Any] = {}
        if like is not None:
            kw = {"dtype": like.dtype, "device": like.device}
        zero = {name: torch.zeros(sup.event_shape, **kw) for name, sup in self.supports.items()}
        prior_logits = {
            name: clip_logits(sup.extrinsic(zero[name])) for name, sup in self.supports.items()
        }
        probs = {k: torch.sigmoid(v) for k, v in prior_logits.items()}
        params = self.module_a.init_params(probs)
        return TurboState(params, prior_logits, zero)

    def step(self, state: TurboState) -> TurboState:
        """One turbo iteration: Module A, then Module B, then damping."""
        t0 = time.perf_counter()
        params, evidence, metrics = self.module_a.update(state.params, state.prior_logits)
        t1 = time.perf_counter()
        new_logits: dict[str, Tensor] = {}
        delta_pi = delta_q = 0.0
        names = list(self.supports)
        # all layers at once: chains of every layer go through one forward-backward scan
        extrinsic = batched_extrinsic(
            [self.supports[n] for n in names], [evidence[n] for n in names]
        )
        for name, ext in zip(names, extrinsic, strict=True):
            message = BernoulliMessage(ext).clip()
            old = BernoulliMessage(state.prior_logits[name])
            message = message.damp(old, self.damping)
            new_logits[name] = message.logits
            delta_pi = max(delta_pi, float((message.probs - old.probs).abs().max()))
        t2 = time.perf_counter()
        posterior = {k: torch.sigmoid(new_logits[k] + evidence[k]) for k in new_logits}
        for name, q in posterior.items():
            # Module B may be constant (independent supports): watch q(s) as well as pi.
            q_old = torch.sigmoid(state.prior_logits[name] + state.evidence_logits[name])
            delta_q = max(delta_q, float((q - q_old).abs().max()))
        record = {
            "iteration": float(state.iteration + 1),
            "delta_pi": delta_pi,
            "delta_q": delta_q,
            "support_size": float(sum(int((p > 0.5).sum()) for p in posterior.values())),
            "time_a": t1 - t0,
            "time_b": t2 - t1,
            "time": t2 - t0,
            **metrics,
        }
        converged = max(delta_pi, delta_q) < self.tol and state.iteration + 1 >= self.min_iters
        return TurboState(
            params,
            new_logits,
            evidence,
            state.iteration + 1,
            converged,
            state.history + (record,),
        )

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


@dataclass
class SparseRegressionResult(TurboResult):
    """Turbo-VBI posterior for sparse linear regression.

    :ivar mean: ``E[w]``, shape ``(N,)``. :ivar variance: ``Var[w]``.
    :ivar support_probs: ``q(s = 1)``. :ivar noise_precision: ``E[beta]``.
    """

    X: Tensor | None = None
    y: Tensor | None = None
    prior: SparsePrior | None = None
    fixed_noise_precision: float | None = None

    @property
    def mean(self) -> Tensor:
        return self.params["mean"]

    @property
    def variance(self) -> Tensor:
        return self.params["variance"]

    @property
    def support_probs(self) -> Tensor:
        return self.support_probs_by_layer[LAYER].to(self.mean.dtype)

    @property
    def precision_shape(self) -> Tensor:
        return self.params["precision_shape"]

    @property
    def precision_rate(self) -> Tensor:
        return self.params["precision_rate"]

    @property
    def noise_precision(self) -> Tensor:
        return self.params["noise_shape"] / self.params["noise_rate"]

    def model(self, y: Tensor | None = None) -> Tensor:
        """The Pyro model this posterior belongs to (``y`` defaults to the fitted data)."""
        assert self.X is not None
        return sparse_regression_model(
            self.X, self.y if y is None else y, self.prior, self.fixed_noise_precision
        )

    def guide(self) -> Any:
        """A :class:`~pyro_dturbo.inference.guide.TurboGuide` holding this posterior."""
        from pyro_dturbo.inference.guide import TurboGuide

        guide = TurboGuide(self.model)
        guide.set_posterior(
            {
                LAYER: {
                    "support_probs": self.support_probs,
                    "precision_shape": self.precision_shape,
                    "precision_rate": self.precision_rate,
                    "weight_loc": self.mean,
                    "weight_scale": self.variance.sqrt(),
                }
            },
            noise=(
                None
                if self.fixed_noise_precision is not None
                else (self.params["noise_shape"], self.params["noise_rate"])
            ),
        )
        return guide


def fit_sparse_regression(
    X: Tensor,
    y: Tensor,
    prior: SparsePrior | None = None,
    *,
    noise_precision: float | None = None,
    max_iters: int = 200,
    tol: float = 1e-6,
    seed: int = 0,
    damping: float = 0.0,
    inner_iters: int = 1,
    demo_constants: bool = False,
    precision_damping: float = 0.0,
    weight_prior: str = "matched",
    progress_bar: bool = False,
    hook_fn: Callable[[TurboState], None] | None = None,
) -> SparseRegressionResult:
    """Fit ``y = X w + e`` with a structured sparse prior by Turbo-VBI.

    :param torch.Tensor X: design ``(M, N)``. :param torch.Tensor y: observations ``(M,)``.
    :param SparsePrior prior: the prior (``None``: :func:`default_regression_prior`, a chain).
    :param float noise_precision: fixed ``beta``; ``None`` learns it (weak Gamma prior).
    :param int max_iters: turbo iterations at most. :param float tol: on ``max |delta pi|``.
    :param int seed: recorded for reproducibility (the regression updates are deterministic).
    :param float damping: weight of the previous support message.
    :param int inner_iters: Module-A passes per turbo iteration.
    :param bool demo_constants: the reference demo's precision update (``+1, E[w^2]``).
    :param float precision_damping: damping of ``q(rho)`` inside Module A.
    :param str weight_prior: ``"matched"`` (default) or ``"mean_field"``, see
        :class:`~pyro_dturbo.inference.vbi.RegressionModuleA`.
    :returns: a :class:`SparseRegressionResult` (``.mean``, ``.variance``, ``.support_probs``,
        ``.noise_precision``, ``.history``, ``.converged``).
    :raises ValueError: on shape mismatches, NaN / Inf, or a bad prior.

    Example::

        >>> result = fit_sparse_regression(X, y, SparsePrior.chain(p01=0.01, p10=0.1))
        >>> active = result.support_probs > 0.5
    """
    X, y_checked = check_regression_data(X, y)
    if y_checked is None:
        raise ValueError("y is required")
    prior = prior if prior is not None else default_regression_prior()
    if not isinstance(prior, SparsePrior):
        raise ValueError(f"prior must be a SparsePrior, got {type(prior)}")
    if noise_precision is not None and not noise_precision > 0:
        raise ValueError(f"noise_precision must be positive, got {noise_precision}")
    dtype = X.dtype
    Xd, yd = X.double(), y_checked.double()  # the closed-form updates want float64
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module_a = RegressionModuleA(
            Xd,
            yd,
            prior,
            noise_precision=noise_precision,
            noise_prior=NOISE_PRIOR,
            inner_iters=inner_iters,
            demo_constants=demo_constants,
            precision_damping=precision_damping,
            weight_prior=weight_prior,
        )
        turbo = TurboVBI(module_a, prior, damping=damping, tol=tol, max_iters=max_iters)
        result = turbo.run(progress_bar=progress_bar, hook_fn=hook_fn, like=Xd)
    params = {k: (v.to(dtype) if isinstance(v, Tensor) else v) for k, v in result.params.items()}
    state = result.state
    return SparseRegressionResult(
        params,
        state,
        result.history,
        X=X,
        y=y_checked,
        prior=prior,
        fixed_noise_precision=noise_precision,
    )
