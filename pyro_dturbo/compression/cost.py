"""Cost of one example's forward: dense multiply-accumulates and those of the nonzero weights.

Bytes are counted by the sparse codec, :func:`~pyro_dturbo.compression.codec.weight_bytes`.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. VI (FLOPs of the
    compact model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pyro_dturbo.compression._modules import (
    CONV_LAYERS,
    WEIGHT_LAYERS,
    effective_weight,
    evaluating,
    example_input,
)

__all__ = ["count_macs", "sparse_macs"]


@torch.no_grad()
def count_macs(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Dense multiply-accumulates of one example, counted by ``torch.utils.flop_counter``.

    Runs one zero example through ``net`` in eval mode under
    :class:`~torch.utils.flop_counter.FlopCounterMode` and returns ``flops // 2``: the matrix
    products of ``nn.Linear`` layers and the convolutions, each weight at every position it
    is applied (biases, activations and pooling are not counted).

    Example::

        >>> count_macs(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (4,))
        18

    :param torch.nn.Module net: the network.
    :param input_shape: the shape of one example, without the batch dimension.
    :returns: the MACs.
    :rtype: int
    """
    x = example_input(net, input_shape)
    with evaluating(net), FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops()) // 2


@torch.no_grad()
def _layer_positions(net: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``{layer name: positions}``: how often each weight layer applies its kernel per example."""
    positions: dict[str, int] = {}
    hooks = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            channels = out.shape[1] if isinstance(module, CONV_LAYERS) else out.shape[-1]
            positions[name] = out.numel() // channels

        return hook

    for name, module in net.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            hooks.append(module.register_forward_hook(record(name)))
    x = example_input(net, input_shape)
    try:
        with evaluating(net):
            net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return positions


@torch.no_grad()
def sparse_macs(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one example counting only the nonzero weights.

    An ``nn.Linear`` costs ``nnz(W)``, an ``nn.Conv2d`` ``nnz(W) * H_out * W_out`` (output sizes
    from forward hooks); sparse Bayesian layers count the nonzeros of ``mu * mask``. This is
    the cost a sparse kernel could reach; the compact model's dense cost is
    ``count_macs(export_compact(net, input_shape), input_shape)``.

    :param torch.nn.Module net: the network.
    :param input_shape: the shape of one example, without the batch dimension.
    :returns: the MACs.
    :rtype: int
    """
    positions = _layer_positions(net, input_shape)
    modules = dict(net.named_modules())
    return sum(
        int(torch.count_nonzero(effective_weight(modules[name]))) * count
        for name, count in positions.items()
    )
