"""Bayesian sparse layers: mean-field Gaussian weights under the hierarchical sparse prior.

A :class:`SparseBayesLinear` or :class:`SparseBayesConv2d` keeps ``q(w_n) = N(mu_n, sigma_n^2)``
for every weight (trained by gradients with the local reparameterisation trick) and, as buffers
set by the closed-form Turbo-VBI steps, the Gaussian prior ``N(m_n, 1 / p_n)`` its KL term is
taken against (centralised training: ``m = 0``, ``p = E[rho_n]``; a federated client: its cavity)
and the support posterior ``q(s_n = 1)``. Every weight tensor is viewed as an
``(out) x (in * kh * kw)`` matrix for the support structure (PyTorch order), so chains run along
a neuron's or channel's inputs. :func:`to_sparse_bayes` turns a plain network into one built of
these layers, and :func:`network_model` states the same network as a Pyro model (sites
``"{layer}.support"``, ``"{layer}.precision"``, ``"{layer}.weight"``, ``"obs"``).

The layers are plain :class:`torch.nn.Module` s: their parameters belong to the network alone.
Nothing here reads or writes Pyro's global param store, so any number of networks of one
architecture (federated clients, say) live side by side in one process.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. III (eq. 1-4).
[2] D. P. Kingma, T. Salimans, M. Welling, "Variational Dropout and the Local Reparameterization
    Trick", NeurIPS 2015 (local reparameterisation, Sec. 2.3).
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Iterator
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.poutine.runtime import effectful
from torch import Tensor, nn

from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.ops.messages import GaussianMessage

__all__ = [
    "SparseBayesLayer",
    "SparseBayesLinear",
    "SparseBayesConv2d",
    "to_sparse_bayes",
    "sparse_layers",
    "network_kl",
    "network_model",
]

_VAR_EPS = 1e-16


class SparseBayesLayer(nn.Module):
    """Shared parts of the sparse Bayesian layers.

    Parameters ``weight_loc`` (``mu``), ``weight_log_scale`` (``log sigma``) and ``bias`` (a point
    estimate, no prior); buffers ``prior_precision`` (``p``) and ``prior_mean`` (``m``), the
    Gaussian prior ``N(m, 1 / p)`` of the KL term (:attr:`prior`, :meth:`set_prior`), and
    ``support_probs`` (``q(s = 1)``), all of the weight's shape. In training mode the forward pass
    samples the pre-activations (local reparameterisation); in eval mode it uses the posterior
    mean, or the pruned posterior mean where :attr:`mask` is set.
    """

    weight_loc: nn.Parameter
    weight_log_scale: nn.Parameter
    bias: nn.Parameter | None
    prior_precision: Tensor
    prior_mean: Tensor
    support_probs: Tensor
    mask: Tensor | None
    #: forward the posterior mean even in training mode (MAP fine-tuning)
    deterministic: bool = False
    #: the generator of the reparameterisation noise (``None``: torch's global generator);
    #: Turbo-VBI sets its own, carried in the training state
    noise_generator: torch.Generator | None = None
    #: ``(sigma^2, version of log sigma)`` of the last sampling forward pass (add_kl_grad)
    _variance_cache: tuple[Tensor, int] | None = None

    def _init_posterior(self, shape: tuple[int, ...], bias: bool, init_scale: float) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.weight_loc = nn.Parameter(torch.empty(shape))
        self.weight_log_scale = nn.Parameter(torch.full(shape, math.log(init_scale)))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None
        self.register_buffer("prior_precision", torch.ones(shape))
        self.register_buffer("prior_mean", torch.zeros(shape))
        self.register_buffer("support_probs", torch.full(shape, 0.5))
        self.register_buffer("mask", None)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # state dicts written before the layers had a prior mean: their prior was N(0, 1 / p)
        key = prefix + "prior_mean"
        if key not in state_dict and prefix + "prior_precision" in state_dict:
            state_dict[key] = torch.zeros_like(state_dict[prefix + "prior_precision"])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The ``(out, in * kh * kw)`` view the support structure lives on."""
        shape = self.weight_loc.shape
        return int(shape[0]), int(math.prod(shape[1:]))

    @property
    def weight_scale(self) -> Tensor:
        return self.weight_log_scale.exp()

    @property
    def weight_variance(self) -> Tensor:
        return (2.0 * self.weight_log_scale).exp()

    @property
    def prior(self) -> GaussianMessage:
        """The prior ``N(m, 1 / p)`` the KL term is taken against, as a message (a snapshot:
        later :meth:`set_prior` calls do not change it)."""
        return GaussianMessage.prior(self.prior_precision.clone(), self.prior_mean.clone())

    def posterior_mean(self) -> Tensor:
        """``E[w]``, zero where the layer is pruned."""
        mu = self.weight_loc
        return mu if self.mask is None else mu * self.mask

    def kl(self) -> Tensor:
        """``sum_n KL(N(mu_n, sigma_n^2) || N(m_n, 1 / p_n))``, exactly:

        ``sum_n [p_n (sigma_n^2 + (mu_n - m_n)^2) - 1 - log(p_n sigma_n^2)] / 2``.

        With ``p = E[rho]`` (centralised training) the expectation of the KL against
        ``N(0, 1 / rho)`` under ``q(rho)`` differs from this by ``(E[log rho] - log E[rho]) / 2``
        per weight, a term without ``mu`` or ``sigma``. The :attr:`mask` does not enter: a pruned
        weight keeps its ``q`` and its term.
        """
        rho, mu, log_scale = self.prior_precision, self.weight_loc, self.weight_log_scale
        # mu - 0 is mu bit for bit: a zero-mean prior gives the numbers it always gave
        diff = mu - self.prior_mean
        # log(p) and the constant carry no gradient: one fused product on the parameters
        const = 0.5 * (torch.log(rho).sum() + rho.numel())
        second_moment = torch.exp(2.0 * log_scale) + diff * diff
        return 0.5 * torch.sum(rho * second_moment) - log_scale.sum() - const

    def _moments(self) -> tuple[Tensor, Tensor]:
        mu: Tensor = self.weight_loc
        var = self.weight_variance
        # kept for add_kl_grad while log sigma is unchanged (its version counter says so)
        self._variance_cache = (var.detach(), self.weight_log_scale._version)
        if self.mask is not None:
            mu, var = mu * self.mask, var * self.mask
        return mu, var

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The layer's linear map (``F.linear``, ``F.conv2d``): each subclass defines it."""
        raise TypeError(f"{type(self).__name__} does not define its linear map _op")

    def forward(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """Pre-activations. ``weight`` (optional) replaces the posterior by a fixed value and
        ``bias`` (optional, with ``weight`` only) the layer's bias."""
        if weight is not None:
            return self._op(x, weight, self.bias if bias is None else bias)
        if bias is not None:
            raise ValueError("a bias override needs a weight override")
        if not self.training or self.deterministic:
            return self._op(x, self.posterior_mean(), self.bias)
        mu, var = self._moments()
        mean = self._op(x, mu, self.bias)
        std = torch.sqrt(self._op(x * x, var) + _VAR_EPS)
        noise = torch.randn(
            mean.shape, generator=self.noise_generator, dtype=mean.dtype, device=mean.device
        )
        return torch.addcmul(mean, std, noise)

    @torch.no_grad()
    def add_kl_grad(self, scale: float, scale_grad: bool = True) -> None:
        """Add ``scale * d KL / d(mu, log sigma)`` to the gradients, in closed form.

        ``dKL/dmu = p (mu - m)`` and ``dKL/dlog sigma = p sigma^2 - 1``: the same gradients as
        backpropagating ``scale * self.kl()``, without building its graph every step. The
        ``sigma^2`` of the last sampling forward pass is reused while ``log sigma`` has not
        changed since.

        :param bool scale_grad: ``False`` leaves ``log sigma``'s gradient alone (``None`` after
            a deterministic forward pass, so the optimiser skips it): the MAP steps, whose
            forward pass and loss do not depend on ``sigma``.
        """
        rho, mu, log_scale = self.prior_precision, self.weight_loc, self.weight_log_scale
        if mu.grad is None:
            mu.grad = torch.zeros_like(mu)
        mu.grad.addcmul_(rho, mu - self.prior_mean, value=scale)
        cache, self._variance_cache = self._variance_cache, None
        if not scale_grad:
            return
        if log_scale.grad is None:
            log_scale.grad = torch.zeros_like(log_scale)
        if cache is not None and cache[1] == log_scale._version:
            variance = torch.mul(cache[0], rho)
        else:
            variance = torch.exp(2.0 * log_scale).mul_(rho)
        log_scale.grad.add_(variance.sub_(1.0), alpha=scale)

    @torch.no_grad()
    def set_prior(
        self, prior: GaussianMessage | Tensor, support_probs: Tensor | None = None
    ) -> None:
        """Set the prior ``N(m, 1 / p)`` of the KL term (and ``q(s = 1)``).

        :param prior: a :class:`~pyro_dturbo.ops.messages.GaussianMessage` (its precision and
            mean; e.g. a federated client's cavity), or a tensor of precisions ``p`` (the
            closed-form ``E[rho]`` of centralised training), which sets a zero mean. Either of
            the weight's shape or its :attr:`matrix_shape`.
        :param torch.Tensor support_probs: ``q(s = 1)``, if it changes.
        :raises ValueError: if a message is improper somewhere (non-positive precision).
        """
        shape = self.weight_loc.shape
        if isinstance(prior, GaussianMessage):
            if not bool(prior.is_proper().all()):
                raise ValueError("set_prior needs a proper Gaussian (positive, finite precision)")
            self.prior_precision.copy_(prior.precision.reshape(shape))
            self.prior_mean.copy_(prior.mean.reshape(shape))
        else:
            self.prior_precision.copy_(prior.reshape(shape))
            self.prior_mean.zero_()
        if support_probs is not None:
            self.support_probs.copy_(support_probs.reshape(shape))

    @torch.no_grad()
    def set_posterior(self, posterior: GaussianMessage) -> None:
        """Set ``q(w) = N(mu, sigma^2)`` from a (proper) Gaussian message of the weight's shape."""
        self.weight_loc.copy_(posterior.mean.reshape(self.weight_loc.shape))
        self.weight_log_scale.copy_(
            -0.5 * torch.log(posterior.precision).reshape(self.weight_log_scale.shape)
        )

    @torch.no_grad()
    def set_mask(self, mask: Tensor | None) -> None:
        """Keep only the weights where ``mask`` is true (``None`` removes the mask)."""
        if mask is None:
            self.mask = None
            return
        self.mask = mask.reshape(self.weight_loc.shape).to(self.weight_loc.dtype)


class SparseBayesLinear(SparseBayesLayer):
    """A fully connected layer with ``q(w) = N(mu, sigma^2)`` per weight.

    :param int in_features: inputs. :param int out_features: outputs (rows of the support).
    :param bool bias: learn a bias (a point estimate).
    :param float init_scale: initial ``sigma``.

    Example::

        >>> layer = SparseBayesLinear(64, 32)
        >>> layer(torch.randn(8, 64)).shape
        torch.Size([8, 32])
        >>> layer.kl()  # sums into the ELBO through the modules

    References

    [1] Kingma, Salimans, Welling (NeurIPS 2015), Sec. 2.3.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"SparseBayesLinear needs positive sizes, got {in_features} -> {out_features}"
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_posterior((self.out_features, self.in_features), bias, init_scale)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.in_features)
            self.weight_loc.uniform_(-bound, bound)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class SparseBayesConv2d(SparseBayesLayer):
    """A 2-D convolution with ``q(w) = N(mu, sigma^2)`` per kernel weight.

    The weight ``(out, in, kh, kw)`` is the support matrix ``(out) x (in * kh * kw)``: a row is
    one output channel, so a dead row removes the channel.

    :param int in_channels: :param int out_channels: :param kernel_size: as ``nn.Conv2d``.
    :param stride: :param padding: :param dilation: as ``nn.Conv2d`` (``groups`` = 1).
    :param bool bias: learn a bias. :param float init_scale: initial ``sigma``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if min(in_channels, out_channels, kh, kw) < 1:
            raise ValueError("SparseBayesConv2d needs positive channel counts and kernel sizes")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (int(kh), int(kw))
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self._init_posterior((self.out_channels, self.in_channels, kh, kw), bias, init_scale)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.in_channels * kh * kw)
            self.weight_loc.uniform_(-bound, bound)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


def _convert(layer: nn.Module, init_from_weights: bool, init_scale: float) -> SparseBayesLayer:
    new: SparseBayesLayer
    if isinstance(layer, nn.Linear):
        new = SparseBayesLinear(
            layer.in_features, layer.out_features, layer.bias is not None, init_scale
        )
    else:
        assert isinstance(layer, nn.Conv2d)
        if layer.groups != 1:
            raise ValueError("to_sparse_bayes supports Conv2d with groups=1 only")
        if layer.padding_mode != "zeros":
            raise ValueError("to_sparse_bayes supports Conv2d with padding_mode='zeros' only")
        new = SparseBayesConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,  # type: ignore[arg-type]
            layer.stride,  # type: ignore[arg-type]
            layer.padding,  # type: ignore[arg-type]
            layer.dilation,  # type: ignore[arg-type]
            layer.bias is not None,
            init_scale,
        )
    new = new.to(dtype=layer.weight.dtype, device=layer.weight.device)
    if init_from_weights:
        with torch.no_grad():
            new.weight_loc.copy_(layer.weight)
            if layer.bias is not None and new.bias is not None:
                new.bias.copy_(layer.bias)
    return new


def to_sparse_bayes(
    module: nn.Module,
    prior: SparsePrior | None = None,
    *,
    init_from_weights: bool = True,
    init_scale: float = 1e-3,
) -> nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` / ``nn.Conv2d`` layers are sparse Bayesian.

    The input is not changed. Layers are named by their dotted module path (``"fc1"``,
    ``"features.0"``), the names per-layer priors use.

    :param torch.nn.Module module: a plain network (or a single Linear / Conv2d layer).
    :param SparsePrior prior: if given, its per-layer names are checked against the network.
    :param bool init_from_weights: start ``mu`` (and the biases) at the network's weights;
        otherwise at a fresh PyTorch-style initialisation.
    :param float init_scale: initial posterior standard deviation ``sigma``.
    :returns: the converted copy.
    :raises ValueError: if the network has no Linear / Conv2d layer, or the prior names a layer
        the network does not have.

    Example::

        >>> net = to_sparse_bayes(MLP(64, (128,), 10), SparsePrior.chain(0.05, 0.2))
        >>> [name for name, _ in sparse_layers(net)]
        ['fc1', 'fc2']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"to_sparse_bayes expects an nn.Module, got {type(module).__name__}")
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return _convert(module, init_from_weights, init_scale)
    converted = copy.deepcopy(module)
    replaced = []
    for name, child in list(converted.named_modules()):
        for child_name, grandchild in list(child.named_children()):
            if isinstance(grandchild, (nn.Linear, nn.Conv2d)):
                path = f"{name}.{child_name}" if name else child_name
                layer = _convert(grandchild, init_from_weights, init_scale)
                setattr(child, child_name, layer)
                replaced.append(path)
    if not replaced:
        raise ValueError("to_sparse_bayes found no nn.Linear or nn.Conv2d layer to convert")
    if prior is not None:
        prior.check_layer_names(replaced)
    return converted


def sparse_layers(module: nn.Module) -> Iterator[tuple[str, SparseBayesLayer]]:
    """``(name, layer)`` for every sparse Bayesian layer of ``module``, in order."""
    for name, child in module.named_modules():
        if isinstance(child, SparseBayesLayer):
            yield name, child


def network_kl(module: nn.Module) -> Tensor:
    """The summed KL terms of all sparse Bayesian layers of ``module``."""
    terms = [layer.kl() for _, layer in sparse_layers(module)]
    if not terms:
        raise ValueError("the module has no sparse Bayesian layer")
    return torch.stack(terms).sum()


def network_model(
    net: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    prior: SparsePrior | None = None,
    *,
    num_data: int | None = None,
    weight_scale: float = 1.0,
    marginalize_support: bool = False,
) -> Tensor:
    """The network as a Pyro model: priors on every weight tensor, a categorical likelihood.

    With ``prior=None`` every weight is ``N(0, weight_scale^2)`` (the Gaussian-prior baseline);
    with a :class:`SparsePrior` each layer has the hierarchical sites ``"{layer}.support"``,
    ``"{layer}.precision"``, ``"{layer}.weight"``. Biases are the network's own parameters, seen
    by Pyro's handlers as param sites ``"{layer}.bias"`` (so :class:`pyro.infer.SVI` trains them)
    but never written to Pyro's global param store. ``x`` may be a minibatch of a data set of
    size ``num_data``: the likelihood is scaled by ``num_data / len(x)`` through a subsampled
    plate. Every tensor follows the network's dtype and device.

    :param torch.nn.Module net: a network with sparse Bayesian layers (:func:`to_sparse_bayes`).
    :param torch.Tensor x: inputs. :param torch.Tensor y: integer labels (``None``: sample them).
    :param SparsePrior prior: the sparse prior, or ``None`` for a Gaussian prior.
    :param int num_data: size of the full data set (default ``len(x)``).
    :returns: the logits.
    """
    layers = list(sparse_layers(net))
    if not layers:
        raise ValueError("network_model needs a network with sparse Bayesian layers")
    overrides: dict[str, dict[str, Tensor]] = {}
    for name, layer in layers:
        like = layer.weight_loc
        shape = tuple(like.shape)
        if prior is None:
            loc = like.new_zeros(shape)
            scale = like.new_tensor(float(weight_scale))
            w = pyro.sample(f"{name}.weight", dist.Normal(loc, scale).to_event(len(shape)))
        else:
            w = prior.for_layer(name).model(name, shape, marginalize_support)
        # a prior may draw in torch's default dtype; the network computes in its own
        overrides[name] = {"weight": w.to(dtype=like.dtype, device=like.device)}
        if layer.bias is not None:
            overrides[name]["bias"] = _local_param(f"{name}.bias", layer.bias)
    num_data = len(x) if num_data is None else int(num_data)
    hooks = [
        layer.register_forward_pre_hook(_override(overrides[name]), with_kwargs=True)
        for name, layer in layers
    ]
    try:
        logits = net(x)
    finally:
        for hook in hooks:
            hook.remove()
    with pyro.plate("data", num_data, subsample_size=len(x)):
        pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
    return logits


def _local_param(name: str, value: nn.Parameter) -> Tensor:
    """``value`` as the param site ``name`` of a Pyro model, outside Pyro's global param store.

    Handlers see an ordinary param site (a trace records it; :class:`pyro.infer.SVI` finds the
    parameter through the value's ``unconstrained`` reference, as for ``pyro.param``), but the
    value is the module's own parameter, so two networks never share one.
    """
    view = value.view_as(value)
    view.unconstrained = weakref.ref(value)  # type: ignore[attr-defined]

    def read(*args: Any, **kwargs: Any) -> Tensor:
        return view

    site: Tensor = effectful(read, type="param")(
        name, value, constraint=constraints.real, event_dim=None, name=name
    )
    return site


def _override(values: dict[str, Tensor]) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args, {**kwargs, **values}

    return hook
