"""Helpers shared by the compression modules: which modules a chain may hold, the weight a
layer predicts with, plain copies of sparse Bayesian layers, and a dummy forward in eval mode."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from pyro_dturbo.models.layers import SparseBayesConv2d, SparseBayesLayer, SparseBayesLinear

#: Modules with a weight matrix (or kernel) that export and cost read.
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, SparseBayesLinear, SparseBayesConv2d)
#: The convolutions among them.
CONV_LAYERS = (nn.Conv2d, SparseBayesConv2d)
#: Modules that act on each value alone (the identity in eval mode, for dropout).
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Dropout, nn.Identity)
POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def effective_weight(layer: nn.Module) -> Tensor:
    """The weight the layer predicts with: the pruned posterior mean, or the plain weight."""
    if isinstance(layer, SparseBayesLayer):
        return layer.posterior_mean().detach()
    weight = layer.weight
    assert isinstance(weight, Tensor)
    return weight.detach()


def bias_of(layer: nn.Module) -> Tensor | None:
    """The layer's bias, detached, or ``None``."""
    bias = layer.bias
    return bias.detach() if isinstance(bias, Tensor) else None


def conv_kwargs(layer: nn.Module) -> dict[str, Any]:
    """The ``nn.Conv2d`` arguments besides the sizes: stride, padding, dilation."""
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}


def make_layer(
    kind: str, weight: Tensor, bias: Tensor | None, conv_args: dict[str, Any] | None = None
) -> nn.Module:
    """A plain Linear / Conv2d holding copies of ``weight`` and ``bias`` (no RNG is used)."""
    factory = {"dtype": weight.dtype, "device": weight.device}
    new: nn.Linear | nn.Conv2d
    if kind == "linear":
        new = nn.utils.skip_init(
            nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None, **factory
        )
    else:
        new = nn.utils.skip_init(
            nn.Conv2d,
            weight.shape[1],
            weight.shape[0],
            tuple(weight.shape[2:]),
            bias=bias is not None,
            **(conv_args or {}),
            **factory,
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            assert new.bias is not None
            new.bias.copy_(bias)
    return new


def plain_layer(layer: SparseBayesLayer) -> nn.Module:
    """A plain Linear / Conv2d holding the pruned posterior mean of a sparse Bayesian layer."""
    conv = isinstance(layer, SparseBayesConv2d)
    return make_layer(
        "conv" if conv else "linear",
        effective_weight(layer),
        bias_of(layer),
        conv_kwargs(layer) if conv else None,
    )


def plain_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` with every sparse Bayesian layer replaced by :func:`plain_layer`."""
    if isinstance(net, SparseBayesLayer):
        return plain_layer(net)
    plain = copy.deepcopy(net)
    for _, parent in list(plain.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, SparseBayesLayer):
                setattr(parent, child_name, plain_layer(child))
    return plain


@contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; every submodule's own mode is restored afterwards."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for module, mode in modes:
            module.training = mode


def module_like(net: nn.Module) -> dict[str, Any]:
    """``{"dtype", "device"}`` of the network's first parameter (or buffer)."""
    tensor: Tensor | None = next(iter(net.parameters()), None)
    if tensor is None:
        tensor = next(iter(net.buffers()), None)
    if tensor is None:
        return {"dtype": torch.get_default_dtype()}
    return {"dtype": tensor.dtype, "device": tensor.device}


def example_input(net: nn.Module, input_shape: Sequence[int]) -> Tensor:
    """One zero example ``(1, *input_shape)`` in the network's dtype and device."""
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be positive sizes of one example, got {input_shape}")
    return torch.zeros((1, *shape), **module_like(net))
