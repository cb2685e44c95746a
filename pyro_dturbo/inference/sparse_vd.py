"""Sparse variational dropout (Molchanov, Ashukha, Vetrov, ICML 2017): a compression baseline.

Each weight has a Gaussian posterior ``q(w) = N(theta, sigma^2)`` under the improper
log-uniform prior ``p(|w|) ~ 1 / |w|``; the dropout rate ``alpha = sigma^2 / theta^2`` is
learned per weight. The layers here use the paper's *additive noise reparameterisation*: the
parameters are ``theta`` and ``log sigma^2`` (not ``alpha``), and ``log alpha = log sigma^2 -
log theta^2`` is clipped to ``[-10, 10]`` [1]. In training the forward pass
uses the *local reparameterisation trick*: the pre-activations are sampled directly,
``b ~ N(x theta^T + bias, x^2 sigma^2^T)`` (for a convolution, the same with ``conv2d``),
one noise draw per example and unit [1, 2], from a :class:`torch.Generator` the layer
holds (never torch's global RNG). In eval mode a layer predicts with ``theta * mask``, the
mask dropping every weight with ``log alpha > 3`` [1].

The KL divergence to the log-uniform prior has no closed form; the paper's approximation
[1] is used (within 0.01 nats of a Monte Carlo estimate of the exact KL at the
``log alpha`` the tests check):

``-KL(q || p) ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1 / alpha) - k1``,
``k1 = 0.63576``, ``k2 = 1.87320``, ``k3 = 1.48695``.

:func:`fit_sparse_vd` maximises the stochastic ELBO ``N / B sum_batch log p(y | x, w) - beta
KL`` by Adam; it minimises that divided by ``N`` (the batch's mean cross-entropy plus ``beta
KL / N``: the same optimum, and Adam's steps do not depend on the scale, up to its
``eps``). ``beta`` warms up
linearly from 0 to 1 over ``warmup_epochs`` (per step). The
network is any ``nn.Sequential`` of the model zoo (named ``nn.Linear`` / ``nn.Conv2d``
children, :mod:`~pyro_dturbo.models.zoo`): :func:`to_sparse_vd` swaps its weight layers for
:class:`SparseVDLinear` / :class:`SparseVDConv2d` started at its weights, and
:func:`to_pruned_plain` swaps them back for plain layers holding ``theta * mask``, so that
:func:`~pyro_dturbo.compression.export_compact`, :func:`~pyro_dturbo.compression.
compression_report` (FLOPs, density, bytes) and the rest of the compression tools treat the
result exactly as the magnitude-pruned baseline.

These are plain torch modules, not Pyro ones: the method is one closed-form KL and one
reparameterised likelihood term, so Pyro's machinery (and its global param store) would add
nothing; no global state is read or written (the noise comes from the generator
:func:`fit_sparse_vd` seeds).

Example::

    >>> result = fit_sparse_vd(dense, x, y, epochs=100, batch_size=64, lr=1e-3, seed=0)
    >>> result.density, evaluate_accuracy(result.net, x_test, y_test)
    >>> compact = export_compact(result.net, input_shape=(64,))

References

[1] D. Molchanov, A. Ashukha, D. Vetrov, "Variational Dropout Sparsifies Deep Neural Networks",
    ICML 2017 (arXiv:1701.05369).
[2] D. P. Kingma, T. Salimans, M. Welling, "Variational Dropout and the Local
    Reparameterization Trick", NeurIPS 2015.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_dturbo.compression._modules import conv_kwargs, make_layer

__all__ = [
    "KL_K1",
    "KL_K2",
    "KL_K3",
    "LOG_ALPHA_CLIP",
    "PRUNE_LOG_ALPHA",
    "neg_kl_approx",
    "SparseVDLayer",
    "SparseVDLinear",
    "SparseVDConv2d",
    "sparse_vd_layers",
    "to_sparse_vd",
    "to_pruned_plain",
    "sparse_vd_kl",
    "sparse_vd_masks",
    "SparseVDResult",
    "fit_sparse_vd",
]

#: The constants of the KL approximation [1].
KL_K1, KL_K2, KL_K3 = 0.63576, 1.87320, 1.48695
#: ``log alpha`` is clipped to ``[-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP]``.
LOG_ALPHA_CLIP = 10.0
#: Weights with ``log alpha`` above this are pruned at evaluation [1].
PRUNE_LOG_ALPHA = 3.0


def neg_kl_approx(log_alpha: Tensor) -> Tensor:
    """``-KL(N(theta, alpha theta^2) || log-uniform)`` per weight, approximated as in [1].

    ``k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(exp(-log alpha)) - k1``; the second term is
    computed as ``softplus(-log alpha)`` (stable). It rises with ``log alpha`` towards 0
    (``alpha -> inf``: the weight carries no information) and falls like ``0.5 log alpha``
    for small ``alpha``.

    :param torch.Tensor log_alpha: ``log alpha`` per weight, any shape.
    :returns: ``-KL`` elementwise, the same shape.
    """
    return KL_K1 * torch.sigmoid(KL_K2 + KL_K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - KL_K1


class SparseVDLayer(nn.Module):
    """What :class:`SparseVDLinear` and :class:`SparseVDConv2d` share: ``weight`` (``theta``),
    ``log_sigma2``, an optional ``bias`` (a point estimate, as in [1]) and ``generator`` (the
    :class:`torch.Generator` of the training noise; set by :func:`fit_sparse_vd`)."""

    weight: nn.Parameter
    log_sigma2: nn.Parameter
    bias: nn.Parameter | None
    threshold: float

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None

    def _init_from(self, layer: nn.Linear | nn.Conv2d, log_sigma2: float) -> None:
        weight = layer.weight.detach().clone()
        self.weight = nn.Parameter(weight)
        self.log_sigma2 = nn.Parameter(torch.full_like(weight, float(log_sigma2)))
        bias = layer.bias
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.threshold = PRUNE_LOG_ALPHA

    @property
    def log_alpha(self) -> Tensor:
        """``log sigma^2 - log theta^2``, clipped to ``[-10, 10]`` (differentiable)."""
        log_theta2 = torch.log(self.weight.square() + 1e-16)
        return torch.clamp(self.log_sigma2 - log_theta2, -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def kl(self) -> Tensor:
        """The approximate KL divergence of the layer's weights to the prior, summed."""
        return -neg_kl_approx(self.log_alpha).sum()

    def mask(self) -> Tensor:
        """Boolean mask of the kept weights: ``log alpha <= threshold`` (default 3)."""
        return (self.log_alpha <= self.threshold).detach()

    def pruned_weight(self) -> Tensor:
        """``theta * mask``: the weight the layer predicts with in eval mode."""
        return self.weight * self.mask().to(self.weight.dtype)

    def _noise(self, like: Tensor) -> Tensor:
        if self.generator is None:
            raise RuntimeError(
                f"{type(self).__name__} in training mode needs a torch.Generator for its noise: "
                "set layer.generator (fit_sparse_vd does), or call .eval()"
            )
        noise = torch.randn(like.shape, generator=self.generator, device=self.generator.device)
        return noise.to(like)

    def _sample(self, mean: Tensor, var: Tensor) -> Tensor:
        return mean + torch.sqrt(var + 1e-8) * self._noise(mean)


class SparseVDLinear(SparseVDLayer):
    """A linear layer with sparse variational dropout, started at a plain ``nn.Linear``.

    :param torch.nn.Linear layer: the layer whose weight and bias are the initial ``theta`` and
        bias (copied; dtype and device follow it).
    :param float log_sigma2: the initial ``log sigma^2`` of every weight (-10: nearly the
        point estimate, as in the paper's code).
    """

    def __init__(self, layer: nn.Linear, log_sigma2: float = -10.0) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._init_from(layer, log_sigma2)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.linear(x, self.pruned_weight(), self.bias)
        mean = F.linear(x, self.weight, self.bias)
        var = F.linear(x.square(), self.log_sigma2.exp())
        return self._sample(mean, var)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class SparseVDConv2d(SparseVDLayer):
    """A 2-d convolution with sparse variational dropout, started at a plain ``nn.Conv2d``
    (stride, padding, dilation kept; ``groups=1`` and zero padding only).

    :param torch.nn.Conv2d layer: the layer to start from (copied).
    :param float log_sigma2: the initial ``log sigma^2`` of every weight.
    :raises ValueError: on a grouped convolution or a padding mode other than zeros.
    """

    def __init__(self, layer: nn.Conv2d, log_sigma2: float = -10.0) -> None:
        super().__init__()
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise ValueError("SparseVDConv2d supports groups=1 and zero padding only")
        self.conv_args: dict[str, Any] = conv_kwargs(layer)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self._init_from(layer, log_sigma2)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.conv2d(x, self.pruned_weight(), self.bias, **self.conv_args)
        mean = F.conv2d(x, self.weight, self.bias, **self.conv_args)
        var = F.conv2d(x.square(), self.log_sigma2.exp(), None, **self.conv_args)
        return self._sample(mean, var)

    def extra_repr(self) -> str:
        shape = tuple(self.weight.shape)
        return f"{self.in_channels}, {self.out_channels}, kernel_size={shape[2:]}"


def sparse_vd_layers(net: nn.Module) -> Iterator[tuple[str, SparseVDLayer]]:
    """``(name, layer)`` for every sparse-VD layer of ``net``, in module order."""
    for name, module in net.named_modules():
        if isinstance(module, SparseVDLayer):
            yield name, module


def to_sparse_vd(net: nn.Module, *, log_sigma2: float = -10.0) -> nn.Module:
    """A copy of ``net`` with every ``nn.Linear`` / ``nn.Conv2d`` replaced by its sparse-VD
    layer, started at the plain layer's weights; ``net`` is not changed.

    With ``log sigma^2 = -10`` a weight starts at ``log alpha = -10 - log theta^2``, so the few
    with ``|theta| < e^-6.5 ~ 0.0015`` start above the pruning threshold (as in the paper's
    code; training decides whether they come back).

    :param torch.nn.Module net: a plain network (e.g. a zoo ``nn.Sequential``).
    :param float log_sigma2: the initial ``log sigma^2``.
    :raises ValueError: when ``net`` has no ``nn.Linear`` / ``nn.Conv2d`` layer.
    """
    new = copy.deepcopy(net)
    replaced = 0
    for _, parent in list(new.named_modules()):
        for child_name, child in list(parent.named_children()):
            layer: SparseVDLayer
            if isinstance(child, nn.Linear):
                layer = SparseVDLinear(child, log_sigma2)
            elif isinstance(child, nn.Conv2d):
                layer = SparseVDConv2d(child, log_sigma2)
            else:
                continue
            setattr(parent, child_name, layer)
            replaced += 1
    if isinstance(new, nn.Linear | nn.Conv2d) or not replaced:
        raise ValueError("to_sparse_vd needs a network with nn.Linear / nn.Conv2d children")
    return new


@torch.no_grad()
def to_pruned_plain(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every sparse-VD layer replaced by a plain ``nn.Linear`` /
    ``nn.Conv2d`` holding ``theta * mask`` and the bias; in eval mode it predicts exactly what
    ``net`` does in eval mode. ``net`` is not changed."""
    new = copy.deepcopy(net)
    for _, parent in list(new.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, SparseVDLayer):
                bias = child.bias.detach() if child.bias is not None else None
                if isinstance(child, SparseVDConv2d):
                    plain = make_layer("conv", child.pruned_weight(), bias, child.conv_args)
                else:
                    plain = make_layer("linear", child.pruned_weight(), bias)
                setattr(parent, child_name, plain)
    new.eval()
    return new


def sparse_vd_kl(net: nn.Module) -> Tensor:
    """The approximate KL of all sparse-VD layers of ``net``, summed."""
    terms = [layer.kl() for _, layer in sparse_vd_layers(net)]
    if not terms:
        raise ValueError("the network has no sparse-VD layer (see to_sparse_vd)")
    return torch.stack(terms).sum()


@torch.no_grad()
def sparse_vd_masks(net: nn.Module) -> dict[str, Tensor]:
    """``{layer name: bool mask (log alpha <= 3)}`` of every sparse-VD layer."""
    return {name: layer.mask() for name, layer in sparse_vd_layers(net)}


def _density(masks: dict[str, Tensor]) -> tuple[int, int]:
    kept = sum(int(m.sum()) for m in masks.values())
    return kept, sum(m.numel() for m in masks.values())


@dataclass(repr=False)
class SparseVDResult:
    """The outcome of :func:`fit_sparse_vd`.

    :ivar torch.nn.Module net: the pruned plain network (:func:`to_pruned_plain`, eval mode).
    :ivar torch.nn.Module svd_net: the trained sparse-VD network (eval mode).
    :ivar dict masks: ``{layer name: bool mask}`` of the kept weights.
    :ivar float density: kept weights / all weights (biases not counted).
    :ivar list history: one dict per epoch: ``epoch``, ``kl_weight`` (``beta`` at the epoch's
        end), ``loss`` (mean of ``nll + beta KL / N`` over the steps), ``nll`` (mean
        cross-entropy), ``kl`` (nats, at the epoch's end), ``density``, ``time`` (seconds)
        and, with ``eval_data``, ``test_accuracy`` (the pruned network's).
    """

    net: nn.Module
    svd_net: nn.Module
    masks: dict[str, Tensor]
    density: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def weights_kept(self) -> int:
        return _density(self.masks)[0]

    @property
    def weights(self) -> int:
        return _density(self.masks)[1]

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        parts = [
            f"epochs={len(self.history)}",
            f"density={self.density:.4f} ({self.weights_kept}/{self.weights})",
        ]
        for key in ("kl", "nll", "test_accuracy"):
            if key in last:
                parts.append(f"{key}={last[key]:.4g}")
        return f"SparseVDResult({', '.join(parts)})"


def _accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((net(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


def fit_sparse_vd(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup_epochs: int = 5,
    log_sigma2: float = -10.0,
    eval_data: tuple[Tensor, Tensor] | None = None,
) -> SparseVDResult:
    """Train ``net`` by sparse variational dropout and prune at ``log alpha > 3``.

    ``net`` (plain, e.g. a trained dense zoo network; not changed) is copied into sparse-VD
    layers started at its weights (:func:`to_sparse_vd`, ``log sigma^2 = log_sigma2``), trained
    by minibatch Adam on ``-ELBO / N`` (mean cross-entropy ``+ beta KL / N``, ``beta`` rising
    linearly from 0 to 1 over the first ``warmup_epochs`` epochs) with the local
    reparameterisation trick, then converted by :func:`to_pruned_plain`. All randomness (the
    minibatch order and the noise) comes from generators seeded with ``seed``; torch's global
    RNG is not used. Tensors follow ``net``'s dtype and device.

    :param torch.nn.Module net: the network (``nn.Linear`` / ``nn.Conv2d`` children).
    :param torch.Tensor x: training inputs, shaped as ``net`` takes them.
    :param torch.Tensor y: integer class labels.
    :param int epochs: passes over the data.
    :param int batch_size: minibatch size ``B``.
    :param float lr: Adam's learning rate.
    :param int seed: seeds the minibatch order and the noise.
    :param int warmup_epochs: epochs of the linear KL warm-up (0: ``beta = 1`` from the start).
    :param float log_sigma2: the initial ``log sigma^2`` of every weight.
    :param eval_data: ``(x_test, y_test)`` to record the pruned network's accuracy per epoch.
    :returns: a :class:`SparseVDResult`.
    :raises ValueError: on non-positive ``epochs`` / ``batch_size`` / ``lr``, a negative
        ``warmup_epochs`` or mismatched ``x`` and ``y``.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0 or warmup_epochs < 0:
        raise ValueError(
            "fit_sparse_vd needs epochs >= 1, batch_size >= 1, lr > 0 and warmup_epochs >= 0, "
            f"got {epochs}, {batch_size}, {lr}, {warmup_epochs}"
        )
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(
            f"x and y must hold the same, nonzero number of examples: {len(x)}, {len(y)}"
        )
    svd = to_sparse_vd(net, log_sigma2=log_sigma2)
    first = next(svd.parameters())
    x, y = x.to(device=first.device, dtype=first.dtype), y.to(first.device)
    noise = torch.Generator(device=first.device).manual_seed(seed)
    order = torch.Generator().manual_seed(seed + 1)
    for _, layer in sparse_vd_layers(svd):
        layer.generator = noise
    num_data = len(y)
    steps_per_epoch = math.ceil(num_data / batch_size)
    warmup_steps = warmup_epochs * steps_per_epoch
    opt = torch.optim.Adam(svd.parameters(), lr=lr)
    history: list[dict[str, Any]] = []
    step = 0
    beta = 1.0
    for epoch in range(epochs):
        start = time.perf_counter()
        svd.train()
        perm = torch.randperm(num_data, generator=order).to(first.device)
        loss_sum = nll_sum = 0.0
        for i in range(0, num_data, batch_size):
            idx = perm[i : i + batch_size]
            step += 1
            beta = min(1.0, step / warmup_steps) if warmup_steps else 1.0
            nll = F.cross_entropy(svd(x[idx]), y[idx])
            loss = nll + beta * sparse_vd_kl(svd) / num_data
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            nll_sum += nll.item()
        svd.eval()
        with torch.no_grad():
            kl = float(sparse_vd_kl(svd))
            kept, total = _density(sparse_vd_masks(svd))
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "kl_weight": beta,
            "loss": loss_sum / steps_per_epoch,
            "nll": nll_sum / steps_per_epoch,
            "kl": kl,
            "density": kept / total,
            "time": time.perf_counter() - start,
        }
        if eval_data is not None:
            record["test_accuracy"] = _accuracy(
                svd,
                eval_data[0].to(device=first.device, dtype=first.dtype),
                eval_data[1].to(first.device),
            )
        history.append(record)
    for _, layer in sparse_vd_layers(svd):
        layer.generator = None  # the trained network holds no RNG state
    svd.eval()
    masks = sparse_vd_masks(svd)
    kept, total = _density(masks)
    return SparseVDResult(
        net=to_pruned_plain(svd), svd_net=svd, masks=masks, density=kept / total, history=history
    )
