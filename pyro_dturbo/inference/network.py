"""Turbo-VBI for neural networks: Module A by minibatch gradients, closed-form ``rho`` / ``s``.

:class:`NetworkModuleA` implements the :class:`~pyro_dturbo.inference.turbo.ModuleA` protocol
for a network built of :class:`~pyro_dturbo.models.layers.SparseBayesLayer` s. One Module-A
update runs ``steps_per_iter`` gradient steps on the negative ELBO per datum

    ``mean_batch[-log p(y | x, w)] + (kl_weight / N) * sum_n KL(q(w_n) || N(0, 1/E[rho_n]))``

(one reduction throughout: the mean over the data set, i.e. the minibatch sum scaled by ``N / B``
and divided by ``N``), with the local reparameterisation trick, then the closed-form steps for
all layers: the cavity evidence ``L`` about each support (extrinsic: it does not contain ``pi``),
``q(s) = sigmoid(logit(pi) + L)`` and ``q(rho) = Gamma(at, bt)``. Module B (in
:class:`~pyro_dturbo.inference.turbo.TurboVBI`) turns ``L`` into the next ``pi``.

The whole training state (network, optimiser, data order, random generators) is part of the
turbo state, so a run saved with :func:`save_checkpoint` and resumed reproduces the
uninterrupted run exactly.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. IV-A (Module A for
    DNNs: gradient steps on q(w), eq. 14-18 for q(rho), q(s)).
[2] D. P. Kingma, T. Salimans, M. Welling, NeurIPS 2015 (local reparameterisation).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_dturbo.inference.guide import TurboGuide
from pyro_dturbo.inference.turbo import TurboResult, TurboState, TurboVBI
from pyro_dturbo.models.layers import SparseBayesLayer, network_model, sparse_layers
from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.ops.messages import BernoulliMessage, GaussianMessage
from pyro_dturbo.ops.vb import cavity_evidence, site_from_marginal, update_precision

__all__ = [
    "NetworkConfig",
    "NetworkModuleA",
    "NetworkResult",
    "fit_network",
    "default_network_prior",
    "evaluate_accuracy",
    "save_checkpoint",
    "load_checkpoint",
    "HyperStep",
    "hyper_step",
    "freeze_pruned_moments",
]


def default_network_prior() -> SparsePrior:
    """The default prior for networks: chains along each neuron's inputs.

    ``p01 = 0.05``, ``p10 = 0.2`` (a stationary density of 20%, active runs of 5 on average);
    Gamma laws as the authors' demo (github.com/cxiaab/D-turbo-vbi-FL, commit 8a89cc7): active
    ``(1, 1)``, inactive ``(1, 0.01)``.
    """
    return SparsePrior.chain(p01=0.05, p10=0.2, active=(1.0, 1.0), inactive=(1.0, 0.01))


def _check_classification(x: Tensor, y: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{name}: inputs and labels must be tensors")
    if y.dim() != 1 or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: labels must be a 1-D integer tensor, got {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} inputs but {len(y)} labels")
    if len(y) == 0:
        raise ValueError(f"{name}: no data")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: inputs contain NaN or Inf")


@torch.no_grad()
def evaluate_accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> float:
    """Accuracy of ``net`` in eval mode (the posterior mean, or the pruned mean if masked)."""
    was_training = net.training
    net.eval()
    first = next(net.parameters())
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device=first.device, dtype=first.dtype)
        correct += int((net(xb).argmax(-1) == y[i : i + batch_size].to(first.device)).sum())
    net.train(was_training)
    return correct / len(x)


_CONFIG_CHOICES = {
    "weight_prior": ("mean_field", "log_mixture"),
    "finetune": ("map", "vb"),
    "evidence": ("curvature", "marginal"),
    "prune": ("finetune", "iteration"),
}


@dataclass(frozen=True)
class NetworkConfig:
    """How a network is trained by Turbo-VBI: one place for every setting.

    :param int epochs: passes over the data, fine-tuning included.
    :param int batch_size: minibatch size ``B``.
    :param float lr: Adam learning rate for ``mu`` and the biases.
    :param int steps_per_iter: gradient steps per turbo iteration (``None``: one epoch).
    :param float kl_weight: weight of the KL term (1 is the ELBO).
    :param float finetune_kl_weight: its weight in the fine-tuning epochs (``None``: the same;
        0 retrains the kept weights on the data term alone, as pruning pipelines usually do).
    :param float init_precision: ``E[rho]`` before the first closed-form step (the authors'
        demo: prior variance 1, so the weights learn before the prior prunes them).
    :param float scale_lr: learning-rate multiplier for ``log sigma``.
    :param str weight_prior: the prior precision of the w-steps' KL: ``"mean_field"`` is
        ``E_q[rho]``; ``"log_mixture"`` is ``exp(q log(1/v1) + (1-q) log(1/v0))``, which depends
        on ``q(s)`` only and shrinks the weights the support calls inactive harder.
    :param str finetune: how ``q(w)`` trains once the support is frozen: ``"map"`` steps on
        the pruned posterior mean itself (the variances stay as they were),
        ``"vb"`` keeps the reparameterised steps.
    :param str evidence: how the data's site on each weight is read for the A -> B message:
        ``"curvature"`` from the data term's gradients during the steps (the precision is
        ``2 dE/d sigma^2``, the mean from ``dE/d mu``: no prior enters it), ``"marginal"`` as
        ``q(w) / prior`` (``1/sigma^2 - E[rho]``), which lags a changed prior by an iteration
        because ``sigma`` has not reached its new fixed point. On the digits MLP
        (3 seeds) ``"curvature"`` cuts that echo about tenfold but its gradient noise biases
        ``L`` towards "active" (density 0.67-0.75 against 0.03), so ``"marginal"`` is the
        default; see ``docs/algorithm.md``.
    :param str prune: when weights are removed: ``"finetune"`` masks them once, when the
        support is frozen for fine-tuning; ``"iteration"`` after every closed-form step (the
        weights with ``q(s) < 0.5`` are exactly zero and frozen, their ``q(w)`` is the
        prior). The federated clients work this way (a pruned weight is never sent), so one
        client reproduces it. A removed weight keeps the evidence it last had; Module B alone
        may turn it back on.
    :param int warmup_epochs: epochs of w-steps under ``E[rho] = init_precision`` first.
    :param int finetune_epochs: the last epochs: the support is frozen at ``q(s) > 0.5``,
        pruned weights are masked out and only ``q(w)`` trains.
    :param float damping: weight of the previous support message in Module B, ``[0, 1)``.
    :param bool demo_constants: the authors' demo's ``+1, E[w^2]`` precision update.
    :param int seed: seeds the data order and the reparameterisation noise.
    :raises ValueError: naming the field, on a bad value.

    Example::

        >>> config = NetworkConfig(epochs=80, warmup_epochs=3, finetune_epochs=30)
        >>> result = fit_network(net, x, y, prior, config)
        >>> result = fit_network(net, x, y, prior, config, lr=1e-2)   # one field changed
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    steps_per_iter: int | None = None
    kl_weight: float = 1.0
    finetune_kl_weight: float | None = None
    init_precision: float = 1.0
    scale_lr: float = 10.0
    weight_prior: str = "mean_field"
    finetune: str = "map"
    evidence: str = "marginal"
    prune: str = "finetune"
    warmup_epochs: int = 0
    finetune_epochs: int = 0
    damping: float = 0.0
    demo_constants: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name, choices in _CONFIG_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"NetworkConfig.{name} must be one of {list(choices)}, got "
                    f"{getattr(self, name)!r}"
                )
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "steps_per_iter": self.steps_per_iter is None or self.steps_per_iter >= 1,
            "kl_weight": self.kl_weight >= 0,
            "finetune_kl_weight": self.finetune_kl_weight is None or self.finetune_kl_weight >= 0,
            "init_precision": self.init_precision > 0,
            "scale_lr": self.scale_lr > 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "finetune_epochs": 0 <= self.finetune_epochs < self.epochs,
            "damping": 0.0 <= self.damping < 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"NetworkConfig.{name} is out of range: {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> NetworkConfig:
        """A copy with some fields changed; an unknown field is a ``ValueError`` naming it."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"NetworkConfig has no field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> NetworkConfig:
        """Build from a mapping (the inverse of :meth:`to_dict`), checking every field."""
        return cls().replace(**dict(spec))


class _DataTermSums:
    """Running sums of the data term's gradients over the steps of one iteration.

    The data's site on each weight is read off them (:meth:`NetworkModuleA.data_site`):
    ``sum dE/dmu``, ``sum dE/d log sigma / sigma^2`` and ``sum mu``, each per step, where ``E``
    is the minibatch mean of the negative log-likelihood (scaled to the data set at the end).
    """

    def __init__(self, layer: SparseBayesLayer):
        zeros = torch.zeros_like(layer.weight_loc)
        self.grad_mu, self.grad_var, self.mu = zeros.clone(), zeros.clone(), zeros.clone()
        self.count = 0

    @torch.no_grad()
    def add(self, layer: SparseBayesLayer) -> None:
        mu, log_scale = layer.weight_loc, layer.weight_log_scale
        if mu.grad is None or log_scale.grad is None:
            return
        self.grad_mu.add_(mu.grad)
        # dE/d sigma^2 = dE/d log sigma / (2 sigma^2)
        self.grad_var.addcdiv_(log_scale.grad, torch.exp(2.0 * log_scale), value=0.5)
        self.mu.add_(mu)
        self.count += 1

    def site(self, num_data: int) -> GaussianMessage:
        """``h = 2 N <dE/d sigma^2>``, ``eta = h <mu> - N <dE/d mu>`` (floored precision)."""
        scale = num_data / self.count
        precision = 2.0 * scale * self.grad_var
        eta = precision * (self.mu / self.count) - scale * self.grad_mu
        return GaussianMessage(precision, eta).with_precision_floor()


class NetworkModuleA:
    """Module A for a classification network with sparse Bayesian layers.

    One update runs ``steps_per_iter`` minibatch Adam steps on the negative ELBO per datum,
    the KL term's gradient added in closed form, then for every layer the data's Gaussian site
    on each weight, the **extrinsic** evidence ``L`` about its support, and the closed-form
    ``q(s)``, ``q(rho)``. The network is trained in place, but :meth:`update` never changes the
    ``params`` it is given: the network, the optimiser, the data order and the random
    generators are loaded from them and a new snapshot is returned, so one state can be resumed
    any number of times with the same result.

    :param torch.nn.Module net: the network (see :func:`~pyro_dturbo.models.to_sparse_bayes`).
    :param SparsePrior prior: the prior (per-layer overrides by layer name).
    :param torch.Tensor x: training inputs. :param torch.Tensor y: integer labels.
    :param NetworkConfig config: the settings (default: ``NetworkConfig()``).
    """

    def __init__(
        self,
        net: nn.Module,
        prior: SparsePrior,
        x: Tensor,
        y: Tensor,
        config: NetworkConfig | None = None,
    ):
        config = config if config is not None else NetworkConfig()
        if not isinstance(config, NetworkConfig):
            raise ValueError(f"config must be a NetworkConfig, got {type(config).__name__}")
        self.config = config
        _check_classification(x, y, "NetworkModuleA")
        self.layers: dict[str, SparseBayesLayer] = dict(sparse_layers(net))
        if not self.layers:
            raise ValueError(
                "the network has no sparse Bayesian layer: convert it with to_sparse_bayes()"
            )
        prior.check_layer_names(list(self.layers))
        self.net, self.prior = net, prior
        first = next(net.parameters())
        self.device = first.device
        # inputs in the network's own dtype (float32 data into a float64 network and back)
        self.x = x.to(device=self.device, dtype=first.dtype)
        self.y = y.to(self.device).long()
        self.num_data = len(y)
        self.batch_size = min(int(config.batch_size), self.num_data)
        self.steps_per_epoch = math.ceil(self.num_data / self.batch_size)
        self.steps_per_iter = int(config.steps_per_iter or self.steps_per_epoch)
        iters_per_epoch = self.steps_per_epoch / self.steps_per_iter
        self.warmup_iters = round(config.warmup_epochs * iters_per_epoch)
        self.total_iters = max(1, round(config.epochs * iters_per_epoch))
        # iteration after which the support is frozen and masks applied (fine-tuning)
        self.freeze_after: int | None = None
        if config.finetune_epochs > 0:
            self.freeze_after = self.total_iters - round(config.finetune_epochs * iters_per_epoch)
        scales: list[nn.Parameter] = []
        others: list[nn.Parameter] = []
        for pname, param in net.named_parameters():
            (scales if pname.endswith("weight_log_scale") else others).append(param)
        groups: list[dict[str, Any]] = [
            {"params": others},
            {"params": scales, "lr": config.lr * config.scale_lr},
        ]
        self.optimizer = torch.optim.Adam(groups, lr=config.lr, foreach=True)

    # -- the protocol ----------------------------------------------------------------------
    @property
    def support_shape(self) -> dict[str, tuple[int, ...]]:
        return {name: layer.matrix_shape for name, layer in self.layers.items()}

    def support_probs(self, params: dict[str, Any]) -> dict[str, Tensor]:
        return {name: p.clone() for name, p in params["support_probs"].items()}

    def init_params(self, prior: dict[str, BernoulliMessage]) -> dict[str, Any]:
        """Snapshot the network as it is, with ``E[rho] = init_precision`` everywhere."""
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.set_prior(
                    torch.full_like(layer.weight_loc, self.config.init_precision),
                    prior[name].probs.to(layer.weight_loc),
                )
        order = torch.Generator().manual_seed(self.config.seed)
        noise = torch.Generator(device=self.device).manual_seed(self.config.seed)
        return self._snapshot(
            data={
                "generator": order.get_state(),
                "perm": torch.randperm(self.num_data, generator=order).to(self.device),
                "pos": 0,
            },
            noise=noise.get_state(),
            iteration=0,
            evidence={
                name: torch.zeros(shape, dtype=self.x.dtype, device=self.device)
                for name, shape in self.support_shape.items()
            },
            optimizer=_copy_tensors(self.optimizer.state_dict()),
        )

    def update(
        self, params: dict[str, Any], prior: dict[str, BernoulliMessage]
    ) -> tuple[dict[str, Any], dict[str, BernoulliMessage] | None, dict[str, float]]:
        """``steps_per_iter`` w-steps, then the closed-form ``q(s)``, ``q(rho)`` for all layers.

        ``params`` is not changed (its tensors are copied in, never shared). Once the support
        is frozen (fine-tuning) only ``q(w)`` moves and the evidence returned is ``None``.
        """
        frozen = self.freeze_after is not None and params["iteration"] >= self.freeze_after
        state, metrics, sums = self._w_steps(params, frozen)
        iteration = state["iteration"]
        if frozen:
            # fine-tuning under a fixed support: no new evidence, masks stay, only w moves
            return self._snapshot(evidence=params["evidence"], **state), None, metrics
        warm = iteration <= self.warmup_iters
        evidence = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                shape = layer.matrix_shape
                pruned = None if layer.mask is None else layer.mask.reshape(shape) == 0
                step = hyper_step(
                    self.data_site(name, sums.get(name)),
                    layer.weight_loc.reshape(shape),
                    layer.weight_variance.reshape(shape),
                    prior[name],
                    self.prior.for_layer(name),
                    weight_prior=self.config.weight_prior,
                    demo_constants=self.config.demo_constants,
                    pruned=pruned,
                    previous=params["evidence"][name],
                )
                evidence[name] = step.evidence
                if warm:
                    continue
                layer.set_prior(step.precision, step.support_probs)
                if self.config.prune == "iteration":
                    self._prune_to_prior(layer, step.support_probs > 0.5)
                elif self.freeze_after is not None and iteration >= self.freeze_after:
                    layer.set_mask(step.support_probs > 0.5)
            if self.config.prune == "iteration" and not warm:
                freeze_pruned_moments(self.optimizer, self.layers.values())
                state["optimizer"] = _copy_tensors(self.optimizer.state_dict())
        if warm:
            # no message yet: a flat evidence keeps Module B at its prior
            evidence = {k: torch.zeros_like(v) for k, v in evidence.items()}
        # during the warm-up no support is set and the network is dense: density 1
        metrics["density"] = 1.0 if warm else self._density()
        return self._snapshot(evidence=evidence, **state), _messages(evidence), metrics

    def w_steps(
        self, params: dict[str, Any], curvature: bool = False, map: bool = False
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, GaussianMessage]]:
        """Only the ``steps_per_iter`` w-steps, against each layer's Gaussian prior as it is
        in ``params`` (a federated client's cavity): no closed-form step, no message.

        :param bool curvature: also read the data's site on every weight off the steps'
            gradients (:meth:`data_site` with ``evidence="curvature"``).
        :param bool map: steps on the (pruned) posterior mean itself, as the fine-tuning of
            ``finetune="map"`` (no curvature then).
        :returns: the new params (``params`` is not changed), the metrics of the steps, and
            ``{layer: data site}`` (empty without ``curvature``).
        """
        state, metrics, sums = self._w_steps(params, frozen=map, curvature=curvature and not map)
        sites = {name: self.data_site(name, sums[name]) for name in sums}
        return self._snapshot(evidence=params["evidence"], **state), metrics, sites

    def _w_steps(
        self, params: dict[str, Any], frozen: bool, curvature: bool | None = None
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, _DataTermSums]]:
        """Load ``params``, run the steps; the layers are left trained. Masked weights are
        frozen: their gradients are zeroed (and :func:`freeze_pruned_moments` zeroed their
        Adam momentum), so Adam leaves them exactly where they are."""
        self._load(params)
        data = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in params["data"].items()}
        order = torch.Generator().set_state(data["generator"])
        noise = torch.Generator(device=self.device).set_state(params["noise"])
        t0 = time.perf_counter()
        self.net.train()
        if curvature is None:
            curvature = self.config.evidence == "curvature" and not frozen
        for layer in self.layers.values():
            # MAP fine-tuning: under the frozen support, steps on the posterior mean alone
            layer.deterministic = frozen and self.config.finetune == "map"
            layer.noise_generator = noise
        # running sums stay on the device: no host sync per step
        loss_sum = torch.zeros((), dtype=self.x.dtype, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        # the gradient sums of the curvature site (only allocated when that site is read)
        sums = {n: _DataTermSums(layer) for n, layer in self.layers.items()} if curvature else {}
        masked = [layer for layer in self.layers.values() if layer.mask is not None]
        seen = 0
        kl_weight = self.config.kl_weight
        if frozen and self.config.finetune_kl_weight is not None:
            kl_weight = self.config.finetune_kl_weight
        kl_scale = kl_weight / self.num_data
        try:
            for _ in range(self.steps_per_iter):
                if data["pos"] >= self.num_data:
                    # drawn on the CPU generator (reproducible), moved once per epoch
                    data["perm"] = torch.randperm(self.num_data, generator=order).to(self.device)
                    data["pos"] = 0
                idx = data["perm"][data["pos"] : data["pos"] + self.batch_size]
                data["pos"] += self.batch_size
                xb, yb = self.x[idx], self.y[idx]
                logits = self.net(xb)
                nll = F.cross_entropy(logits, yb)
                self.optimizer.zero_grad(set_to_none=True)
                nll.backward()
                if curvature:
                    for name, layer in self.layers.items():
                        sums[name].add(layer)
                # the KL term's gradient in closed form (same as backpropagating it); MAP
                # steps leave log sigma without a gradient, so Adam skips it
                for layer in self.layers.values():
                    layer.add_kl_grad(kl_scale, scale_grad=not layer.deterministic)
                for layer in masked:
                    _mask_grads(layer)
                self.optimizer.step()
                loss_sum += nll.detach() * len(idx)
                correct += (logits.detach().argmax(-1) == yb).sum()
                seen += len(idx)
        finally:
            for layer in self.layers.values():
                layer.noise_generator = None
        with torch.no_grad():
            kl = sum(float(layer.kl()) for layer in self.layers.values())
        # report -ELBO / N, with the KL at the end of the steps
        metrics = self._metrics(
            float(loss_sum) / seen + kl_scale * kl, int(correct) / seen, time.perf_counter() - t0
        )
        data["generator"] = order.get_state()
        state = {
            "data": data,
            "noise": noise.get_state(),
            "iteration": params["iteration"] + 1,
            "optimizer": _copy_tensors(self.optimizer.state_dict()),
        }
        return state, metrics, sums

    @staticmethod
    @torch.no_grad()
    def _prune_to_prior(layer: SparseBayesLayer, keep: Tensor) -> None:
        """Mask the weights outside ``keep`` and set their ``q(w)`` to the layer's prior
        ``N(0, 1 / p)`` (a removed weight holds no information from the data)."""
        layer.set_mask(keep)
        assert layer.mask is not None
        pruned = torch.eq(layer.mask, 0)
        layer.weight_loc.masked_fill_(pruned, 0.0)
        log_scale = -0.5 * torch.log(layer.prior_precision)
        layer.weight_log_scale.copy_(torch.where(pruned, log_scale, layer.weight_log_scale))

    @torch.no_grad()
    def data_site(self, name: str, sums: _DataTermSums | None = None) -> GaussianMessage:
        """The data's Gaussian site on every weight of layer ``name``, in its matrix shape.

        With the data term's gradient sums of the last steps (``evidence="curvature"``): for a
        locally quadratic data term ``E(w) = h (w - r)^2 / 2`` summed over the data set,
        ``h = 2 dE/d sigma^2`` and ``eta = h r = h mu - dE/d mu`` (the expectations taken by
        the reparameterised minibatch gradients, averaged over the steps). Neither involves the
        prior, so a changed ``pi`` cannot echo back through ``sigma``. Without sums: the
        marginal ``q(w)`` divided by the layer's Gaussian prior.
        """
        layer = self.layers[name]
        shape = layer.matrix_shape
        if sums is None or sums.count == 0:
            marginal = GaussianMessage.from_moments(layer.weight_loc, layer.weight_variance)
            return site_from_marginal(marginal, layer.prior).reshape(*shape)
        return sums.site(self.num_data).reshape(*shape)

    def _density(self) -> float:
        kept = sum(int((layer.support_probs > 0.5).sum()) for layer in self.layers.values())
        total = sum(layer.support_probs.numel() for layer in self.layers.values())
        return kept / total

    def _metrics(self, loss: float, accuracy: float, time_w: float) -> dict[str, float]:
        return {"loss": loss, "accuracy": accuracy, "density": self._density(), "time_w": time_w}

    # -- state -----------------------------------------------------------------------------
    def _snapshot(self, **extra: Any) -> dict[str, Any]:
        net_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return {
            "net": net_state,
            "support_probs": {
                name: layer.support_probs.reshape(layer.matrix_shape).clone()
                for name, layer in self.layers.items()
            },
            **extra,
        }

    def _load(self, params: dict[str, Any]) -> None:
        for name, layer in self.layers.items():
            layer.set_mask(params["net"].get(f"{name}.mask"))  # masks come and go with the phase
        self.net.load_state_dict(params["net"])  # copies the values in
        # Adam's state tensors would be shared with params and changed by the next steps
        self.optimizer.load_state_dict(_copy_tensors(params["optimizer"]))


@dataclass
class NetworkResult(TurboResult):
    """A trained sparse Bayesian network: ``net`` (in place), ``params``, ``state``, ``history``."""

    net: nn.Module | None = None
    prior: SparsePrior | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        parts = [self._summary()]
        for key in ("accuracy", "test_accuracy", "density"):
            if key in last:
                parts.append(f"{key}={last[key]:.4f}")
        return f"NetworkResult({', '.join(parts)})"

    @property
    def support_probs(self) -> dict[str, Tensor]:
        """``q(s = 1)`` per layer, in the layer's weight shape."""
        assert self.net is not None
        return {name: layer.support_probs.clone() for name, layer in sparse_layers(self.net)}

    def model(self, x: Tensor, y: Tensor | None = None, num_data: int | None = None) -> Tensor:
        """The Pyro model this posterior belongs to: :func:`~pyro_dturbo.models.network_model`
        with the fitted network and prior."""
        assert self.net is not None and self.prior is not None
        return network_model(self.net, x, y, self.prior, num_data=num_data)

    def guide(self) -> Any:
        """A :class:`~pyro_dturbo.inference.guide.TurboGuide` over every layer's sites.

        ``q(s)`` and ``q(w)`` are the layers' own; ``q(rho) = Gamma(at, bt)`` is the
        closed-form update from them. Works with :class:`pyro.infer.Predictive` and
        ``Trace_ELBO`` on :meth:`model`.

        Example::

            >>> predictive = Predictive(result.model, guide=result.guide(), num_samples=50)
            >>> labels = predictive(x_test)["obs"]          # (50, len(x_test))
        """
        assert self.net is not None and self.prior is not None
        layers = {}
        with torch.no_grad():
            for name, layer in sparse_layers(self.net):
                q = layer.support_probs
                mu, var = layer.weight_loc, layer.weight_variance
                layer_prior = self.prior.for_layer(name)
                shape, rate = update_precision(
                    q, mu * mu + var, layer_prior.active, layer_prior.inactive
                )
                layers[name] = {
                    "support_probs": q,
                    "precision_shape": shape,
                    "precision_rate": rate,
                    "weight_loc": mu,
                    "weight_scale": var.sqrt(),
                }
        guide = TurboGuide(self.model)
        guide.set_posterior(layers)
        return guide


def fit_network(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    prior: SparsePrior | None = None,
    config: NetworkConfig | None = None,
    *,
    state: TurboState | None = None,
    progress_bar: bool = False,
    hook_fn: Callable[[TurboState], None] | None = None,
    eval_data: tuple[Tensor, Tensor] | None = None,
    **changes: Any,
) -> NetworkResult:
    """Train a sparse Bayesian network by Turbo-VBI.

    :param torch.nn.Module net: a network with sparse Bayesian layers, trained in place.
    :param torch.Tensor x: training inputs. :param torch.Tensor y: integer labels.
    :param SparsePrior prior: the prior (``None``: :func:`default_network_prior`).
    :param NetworkConfig config: the settings (``None``: ``NetworkConfig()``).
    :param TurboState state: resume from this state (e.g. :func:`load_checkpoint`).
    :param bool progress_bar: a tqdm bar with loss, accuracy, density (and test accuracy).
    :param hook_fn: called with the state after every iteration.
    :param eval_data: ``(x, y)`` to report test accuracy in the history after each iteration.
    :param changes: fields of :class:`NetworkConfig` to change (``epochs=30``, ``lr=1e-2``).
    :returns: a :class:`NetworkResult`.
    :raises ValueError: on a bad config field (named), bad data, or a prior naming a layer the
        network does not have.

    Example::

        >>> net = to_sparse_bayes(MLP(64, (128, 128), 10))
        >>> result = fit_network(net, x, y, SparsePrior.chain(0.05, 0.2), epochs=30)
        >>> prune(net)
        >>> compact = export_compact(net, input_shape=(64,))
    """
    prior = prior if prior is not None else default_network_prior()
    config = (config if config is not None else NetworkConfig()).replace(**changes)
    module_a = NetworkModuleA(net, prior, x, y, config)
    total = module_a.total_iters
    turbo = TurboVBI(
        module_a, prior, damping=config.damping, tol=1e-12, max_iters=total, min_iters=total
    )
    if state is None:
        with torch.no_grad():
            state = turbo.init_state(like=next(net.parameters()))
    remaining = total - state.iteration

    def hook(s: TurboState) -> None:
        if eval_data is not None:
            s.history[-1]["test_accuracy"] = evaluate_accuracy(net, *eval_data)
        if hook_fn is not None:
            hook_fn(s)

    if remaining > 0:
        result = turbo.run(state, max_iters=remaining, progress_bar=progress_bar, hook_fn=hook)
        state = result.state
    module_a._load(state.params)
    for layer in module_a.layers.values():
        layer.deterministic = False  # leave the network as a plain variational one
    return NetworkResult(state.params, state, list(state.history), net=net, prior=prior)


def _copy_tensors(obj: Any) -> Any:
    """A copy of nested dicts / lists / tuples whose tensors are cloned (an optimizer's state
    dict): what ``copy.deepcopy`` gives for such a tree, without its per-object bookkeeping,
    which costs more than the copies themselves on a small network."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {key: _copy_tensors(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_copy_tensors(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_copy_tensors(value) for value in obj)
    return obj


def _messages(logits: dict[str, Tensor]) -> dict[str, BernoulliMessage]:
    return {k: BernoulliMessage(v.clone()) for k, v in logits.items()}


@torch.no_grad()
def _mask_grads(layer: SparseBayesLayer) -> None:
    mask = layer.mask
    assert mask is not None
    for param in (layer.weight_loc, layer.weight_log_scale):
        if param.grad is not None:
            param.grad.mul_(mask)


@torch.no_grad()
def freeze_pruned_moments(optimizer: torch.optim.Optimizer, layers: Any) -> None:
    """Zero Adam's first moment of every masked weight (``exp_avg``).

    With its gradient zeroed too, Adam's step on such a weight is exactly zero, so a pruned
    weight stays where it was put until it is unmasked (then it starts with no momentum).
    """
    for layer in layers:
        if layer.mask is None:
            continue
        for param in (layer.weight_loc, layer.weight_log_scale):
            moments = optimizer.state.get(param, {})
            if "exp_avg" in moments:
                moments["exp_avg"].mul_(layer.mask)


@dataclass(frozen=True)
class HyperStep:
    """The closed-form part of one turbo iteration for one layer (:func:`hyper_step`).

    :ivar evidence: the extrinsic evidence ``L`` (A -> B message, log-odds).
    :ivar support_probs: ``q(s = 1) = sigmoid(logit(pi) + L)``, clipped.
    :ivar precision: the prior precision the next w-steps use (``E[rho]`` for
        ``weight_prior="mean_field"``).
    """

    evidence: Tensor
    support_probs: Tensor
    precision: Tensor


@torch.no_grad()
def hyper_step(
    site: GaussianMessage,
    mean: Tensor,
    variance: Tensor,
    pi: BernoulliMessage,
    prior: SparsePrior,
    *,
    weight_prior: str = "mean_field",
    demo_constants: bool = False,
    pruned: Tensor | None = None,
    previous: Tensor | None = None,
) -> HyperStep:
    """The closed-form steps of Turbo-VBI for one layer, given the data's Gaussian site.

    ``L = cavity_evidence(site)`` (where ``pruned``, the ``previous`` evidence, the last the
    weight had while it was in the network: a removed weight is exactly zero and its new
    site says nothing, so only Module B's ``pi`` can bring it back),
    ``q(s) = sigmoid(logit(pi) + L)``, ``q(rho) = Gamma(at, bt)`` from
    ``E[w^2] = mean^2 + variance`` and the next prior precision. The centralised Module A and
    the federated server both call it, the server with the product of the clients' sites.

    :param GaussianMessage site: the data's site on every weight (matrix shape).
    :param mean: ``E[w]`` under ``q(w)``. :param variance: ``Var[w]``.
    :param BernoulliMessage pi: Module B's message.
    :param SparsePrior prior: the layer's prior (its Gamma laws).
    :param str weight_prior: as :class:`NetworkConfig`.
    :param bool demo_constants: as :func:`~pyro_dturbo.ops.vb.update_precision`.
    :param pruned: bool mask of removed weights, or ``None``.
    :param previous: the previous evidence (needed with ``pruned``).

    References

    [1] Xia, Tsang, Lau (arXiv:2302.10483), eq. 14-18; ``docs/algorithm.md``.
    """
    L = cavity_evidence(site, prior.active_variance, prior.inactive_variance)
    if pruned is not None:
        if previous is None:
            raise ValueError("hyper_step: pruned weights need the previous evidence")
        L = torch.where(pruned, previous.to(L), L)
    q = (pi.to(L) * BernoulliMessage(L)).clip().probs
    shape, rate = update_precision(
        q, mean * mean + variance, prior.active, prior.inactive, demo_constants
    )
    mean_field = shape / rate
    if weight_prior == "mean_field":
        precision = mean_field
    else:
        # exp(E_q(s)[log(1 / v_s)]): halfway on the log scale for an undecided support
        log1, log0 = -math.log(prior.active_variance), -math.log(prior.inactive_variance)
        precision = torch.exp(q * log1 + (1 - q) * log0)
    return HyperStep(L, q, precision)


def save_checkpoint(path: str | Path, state: TurboState) -> None:
    """Write a turbo state (network, optimiser, data order, generators, messages) to ``path``."""
    torch.save(
        {
            "params": state.params,
            "prior_logits": state.prior_logits,
            "evidence_logits": state.evidence_logits,
            "iteration": state.iteration,
            "converged": state.converged,
            "history": [dict(r) for r in state.history],
        },
        Path(path),
    )


def load_checkpoint(path: str | Path) -> TurboState:
    """Read a state written by :func:`save_checkpoint` (tensors only, ``weights_only``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    raw = torch.load(path, weights_only=True)
    return TurboState(
        raw["params"],
        _messages(raw["prior_logits"]),
        _messages(raw["evidence_logits"]),
        int(raw["iteration"]),
        bool(raw["converged"]),
        tuple(raw["history"]),
    )
