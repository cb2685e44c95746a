"""Pruning a sparse Bayesian network and exporting it as a smaller dense PyTorch model.

After Turbo-VBI the support posterior ``q(s_n = 1)`` says which weights are active. This module
turns that belief into a model one can ship:

- :func:`prune` sets every sparse layer's mask (``q(s = 1) > 0.5``, or ``|mu| > 0.01`` as in the
  reference demo); the network's eval-mode forward is then the *pruned posterior mean*.
- :func:`to_plain` copies it into ``nn.Linear`` / ``nn.Conv2d`` layers holding that mean, and
  :func:`export_compact` also removes every neuron / channel whose removal leaves the predictions
  unchanged, shrinking the layers: the structured sparsity becomes a smaller dense network.
- :func:`count_macs`, :func:`sparse_macs` and :func:`weight_bytes` (with the run-length codec
  :func:`run_length_encode` / :func:`run_length_decode`) measure the cost;
  :func:`compression_report` collects them into a JSON-ready dict and :func:`plot_support` draws
  ``q(s = 1)``.
- :func:`magnitude_masks` / :func:`apply_masks` give the unstructured baseline: global magnitude
  pruning of a plain network to the same density.

Supported networks are ``nn.Sequential`` chains (nested ones are read in order) of
``nn.Linear``, ``nn.Conv2d`` (``groups=1``, zero padding), :class:`SparseBayesLinear`,
:class:`SparseBayesConv2d`, ``nn.ReLU``, ``nn.Tanh``, ``nn.MaxPool2d``, ``nn.AvgPool2d``,
``nn.Flatten`` (default dims), ``nn.Dropout`` and ``nn.Identity``.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. V-VI (pruning,
    compression ratio and FLOPs of the compact model).
[2] S. Han, H. Mao, W. J. Dally, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016, Sec. 2 (sparse storage).
[3] S. Han, J. Pool, J. Tran, W. J. Dally, "Learning both Weights and Connections for Efficient
    Neural Networks", NeurIPS 2015 (magnitude pruning).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pyro_dturbo.models.layers import (
    SparseBayesConv2d,
    SparseBayesLayer,
    SparseBayesLinear,
    sparse_layers,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "prune",
    "magnitude_masks",
    "apply_masks",
    "to_plain",
    "InputSelect",
    "export_compact",
    "count_macs",
    "sparse_macs",
    "run_length_encode",
    "run_length_decode",
    "weight_bytes",
    "LayerReport",
    "compression_report",
    "plot_support",
]

#: Default thresholds of :func:`prune`, per rule.
DEFAULT_THRESHOLDS: dict[str, float] = {"support": 0.5, "magnitude": 0.01}

_INDEX_BYTES = 4  # an int32 flat index (COO) or run start / run length (RLE)
_HEADER_BYTES = 4  # the int32 run count that heads an RLE stream

_WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, SparseBayesLinear, SparseBayesConv2d)
_CONV_LAYERS = (nn.Conv2d, SparseBayesConv2d)
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Dropout, nn.Identity)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


# ---------------------------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def prune(
    net: nn.Module, *, rule: str = "support", threshold: float | None = None
) -> dict[str, Tensor]:
    """Set the mask of every sparse Bayesian layer of ``net`` in place.

    ``rule="support"`` keeps weight ``n`` where ``q(s_n = 1) > threshold`` (default 0.5, the
    posterior-majority support); ``rule="magnitude"`` keeps it where ``|mu_n| > threshold``
    (default 0.01, the reference demo's rule). The network's eval-mode forward then uses the
    pruned posterior mean ``mu * mask``.

    Example::

        >>> masks = prune(net)  # q(s = 1) > 0.5
        >>> compact = export_compact(net, input_shape=(1, 28, 28))

    :param torch.nn.Module net: a network with sparse Bayesian layers (changed in place).
    :param str rule: ``"support"`` or ``"magnitude"``.
    :param float threshold: the rule's threshold (``None``: the rule's default).
    :returns: ``{layer name: bool mask of the weight's shape}``.
    :rtype: dict[str, torch.Tensor]
    :raises ValueError: on an unknown rule, a negative magnitude threshold, or a network without
        sparse Bayesian layers.
    """
    if rule not in DEFAULT_THRESHOLDS:
        raise ValueError(f"rule must be one of {sorted(DEFAULT_THRESHOLDS)}, got {rule!r}")
    thr = DEFAULT_THRESHOLDS[rule] if threshold is None else float(threshold)
    if rule == "magnitude" and thr < 0:
        raise ValueError(f"the magnitude threshold must be >= 0, got {thr}")
    layers = list(sparse_layers(net))
    if not layers:
        raise ValueError("prune needs a network with sparse Bayesian layers (see to_sparse_bayes)")
    masks: dict[str, Tensor] = {}
    for name, layer in layers:
        score = layer.support_probs if rule == "support" else layer.weight_loc.abs()
        mask = score > thr
        layer.set_mask(mask)
        masks[name] = mask
    return masks


@torch.no_grad()
def magnitude_masks(net: nn.Module, density: float) -> dict[str, Tensor]:
    """Global magnitude pruning to a target density (the unstructured baseline [3]).

    Keeps the ``round(density * W)`` weights of largest ``|w|`` over all ``nn.Linear`` /
    ``nn.Conv2d`` layers together (``W`` weights in all); ties are broken by ``torch.topk``.
    Sparse Bayesian layers, if any, are ranked by their (pruned) posterior mean.

    Example::

        >>> masks = magnitude_masks(dense_net, density=0.05)
        >>> baseline = apply_masks(dense_net, masks)

    :param torch.nn.Module net: a network (usually a plain, trained one).
    :param float density: the fraction of weights to keep, in ``[0, 1]``.
    :returns: ``{layer name: bool mask of the weight's shape}``.
    :rtype: dict[str, torch.Tensor]
    :raises ValueError: on a density outside ``[0, 1]`` or a network without weight layers.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, _WEIGHT_LAYERS)]
    if not layers:
        raise ValueError("magnitude_masks found no Linear / Conv2d layer")
    weights = [_effective_weight(m) for _, m in layers]
    scores = torch.cat([w.abs().reshape(-1) for w in weights])
    keep = round(density * scores.numel())
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    flat[torch.topk(scores, keep, sorted=False).indices] = True
    masks: dict[str, Tensor] = {}
    start = 0
    for (name, _), w in zip(layers, weights, strict=True):
        masks[name] = flat[start : start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks


@torch.no_grad()
def apply_masks(net: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """A plain copy of ``net`` whose weights are multiplied by ``masks``.

    Sparse Bayesian layers are first replaced by their (pruned) posterior mean as in
    :func:`to_plain`. ``net`` is not changed.

    :param torch.nn.Module net: the network.
    :param dict masks: ``{layer name: mask of the weight's shape}`` (e.g. from
        :func:`magnitude_masks`).
    :returns: the masked copy.
    :raises ValueError: on a name that is not a weight layer of ``net`` or a mask of the wrong
        size.
    """
    plain = _plain_copy(net)
    for name, mask in masks.items():
        try:
            layer = plain.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"apply_masks: the network has no layer {name!r}") from err
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"apply_masks: {name!r} is a {type(layer).__name__}, not a layer")
        if mask.numel() != layer.weight.numel():
            raise ValueError(
                f"apply_masks: mask for {name!r} has {mask.numel()} entries, the weight "
                f"{tuple(layer.weight.shape)}"
            )
        layer.weight.mul_(mask.reshape(layer.weight.shape).to(layer.weight))
    return plain


# ---------------------------------------------------------------------------------------------
# Plain and compact export
# ---------------------------------------------------------------------------------------------


def _effective_weight(layer: nn.Module) -> Tensor:
    """The weight the layer predicts with: the pruned posterior mean, or the plain weight."""
    if isinstance(layer, SparseBayesLayer):
        return layer.posterior_mean().detach()
    weight = layer.weight
    assert isinstance(weight, Tensor)
    return weight.detach()


def _bias(layer: nn.Module) -> Tensor | None:
    bias = layer.bias
    return bias.detach() if isinstance(bias, Tensor) else None


def _conv_args(layer: nn.Module) -> dict[str, Any]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}


def _make_layer(
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


def _plain_layer(layer: SparseBayesLayer) -> nn.Module:
    conv = isinstance(layer, SparseBayesConv2d)
    return _make_layer(
        "conv" if conv else "linear",
        _effective_weight(layer),
        _bias(layer),
        _conv_args(layer) if conv else None,
    )


def _plain_copy(net: nn.Module) -> nn.Module:
    if isinstance(net, SparseBayesLayer):
        return _plain_layer(net)
    plain = copy.deepcopy(net)
    for _, parent in list(plain.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, SparseBayesLayer):
                setattr(parent, child_name, _plain_layer(child))
    return plain


def to_plain(net: nn.Module) -> nn.Sequential:
    """A plain PyTorch copy of a (sparse Bayesian) network.

    Every sparse Bayesian layer becomes an ``nn.Linear`` / ``nn.Conv2d`` holding its pruned
    posterior mean ``mu * mask`` and its bias, so the copy predicts what ``net.eval()`` does.
    Layer names are kept; a root that is not an ``nn.Sequential`` is wrapped in one. The copy
    is returned in eval mode (call ``.train()`` to fine-tune it); ``net`` is not changed.

    Example::

        >>> plain = to_plain(net)
        >>> torch.allclose(plain(x), net.eval()(x))
        True

    :param torch.nn.Module net: the network.
    :returns: the plain copy.
    :rtype: torch.nn.Sequential
    """
    plain = _plain_copy(net)
    if not isinstance(plain, nn.Sequential):
        plain = nn.Sequential(plain)
    return plain.eval()


class InputSelect(nn.Module):
    """Keep only some inputs: ``x.flatten(1).index_select(1, index)`` or, for images, the
    input channels ``x.index_select(1, index)``.

    Leads a compact model (:func:`export_compact`) whose first layer ignores some inputs.

    :param torch.Tensor index: the kept feature (or channel) indices, ascending.
    :param bool flatten: flatten the input to ``(batch, features)`` first.
    """

    index: Tensor

    def __init__(self, index: Tensor, flatten: bool = True) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).clone())
        self.flatten = bool(flatten)

    def forward(self, x: Tensor) -> Tensor:
        if self.flatten:
            x = x.flatten(1)
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"kept={self.index.numel()}, flatten={self.flatten}"


@contextmanager
def _evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; every submodule's own mode is restored afterwards."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for module, mode in modes:
            module.training = mode


def _like(net: nn.Module) -> dict[str, Any]:
    tensor: Tensor | None = next(iter(net.parameters()), None)
    if tensor is None:
        tensor = next(iter(net.buffers()), None)
    if tensor is None:
        return {"dtype": torch.get_default_dtype()}
    return {"dtype": tensor.dtype, "device": tensor.device}


def _example(net: nn.Module, input_shape: Sequence[int]) -> Tensor:
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be positive sizes of one example, got {input_shape}")
    return torch.zeros((1, *shape), **_like(net))


def _chain(net: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules of a (nested) ``nn.Sequential`` in order, with their dotted names."""
    if not isinstance(net, nn.Sequential):
        raise ValueError(f"export needs an nn.Sequential network, got {type(net).__name__}")
    chain: list[tuple[str, nn.Module]] = []
    for child_name, child in net.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(child, nn.Sequential):
            chain += _chain(child, prefix=f"{name}.")
        elif isinstance(child, _WEIGHT_LAYERS + _ELEMENTWISE + _POOLS + (nn.Flatten,)):
            chain.append((name, child))
        else:
            raise ValueError(
                f"export does not support module {name!r} of type {type(child).__name__}; "
                "supported: Linear, Conv2d, SparseBayesLinear, SparseBayesConv2d, ReLU, Tanh, "
                "MaxPool2d, AvgPool2d, Flatten, Dropout, Identity"
            )
    return chain


def _has_padding(padding: Any) -> bool:
    if isinstance(padding, str):
        return padding != "valid"
    if isinstance(padding, int):
        return padding > 0
    return any(int(p) > 0 for p in padding)


@dataclass
class _Stage:
    """One weight layer of the chain while it is being shrunk."""

    name: str
    kind: str  # "linear" or "conv"
    weight: Tensor
    bias: Tensor | None
    conv_args: dict[str, Any] | None
    out_shape: tuple[int, ...]  # output of one example in the dummy forward (with batch 1)
    out_index: Tensor  # original indices of the kept rows (neurons / channels)
    in_index: Tensor  # original indices of the kept input units (first stage: features/channels)
    ops: list[tuple[str, nn.Module]]  # the channel-wise modules that follow the layer
    dense_weight_shape: tuple[int, ...]
    dense_in_units: int

    @property
    def padded(self) -> bool:
        return self.conv_args is not None and _has_padding(self.conv_args["padding"])

    def unit_outputs(self) -> Tensor:
        """``(units, positions)``: what each unit emits after ``ops`` if its row is all zero.

        Such a unit's pre-activation is its bias everywhere (a convolution with a zero kernel
        gives the bias even at the borders); the activation and pooling then act per channel,
        and a flatten keeps each channel's positions consecutive.
        """
        units = self.weight.shape[0]
        bias = self.bias if self.bias is not None else self.weight.new_zeros(units)
        spatial = self.out_shape[2:]
        x = bias.reshape(1, units, *[1] * len(spatial)).expand(1, units, *spatial).clone()
        for _, op in self.ops:
            x = op(x)
        return x.reshape(units, -1)


def _trace(
    net: nn.Module, input_shape: Sequence[int]
) -> tuple[list[tuple[str, nn.Module]], list[_Stage]]:
    """Walk the chain with a dummy example: the modules before the first layer, the stages."""
    chain = _chain(net)
    prefix: list[tuple[str, nn.Module]] = []
    stages: list[_Stage] = []
    x = _example(net, input_shape)
    with torch.no_grad(), _evaluating(net):
        for name, module in chain:
            ndim = x.dim()
            if isinstance(module, _WEIGHT_LAYERS):
                conv = isinstance(module, _CONV_LAYERS)
                if ndim != (4 if conv else 2):
                    raise ValueError(
                        f"{name} ({type(module).__name__}) receives a {ndim}-D input; export "
                        f"needs {'(B, C, H, W)' if conv else '(B, F)'} there (missing Flatten?)"
                    )
                if isinstance(module, nn.Conv2d) and (
                    module.groups != 1 or module.padding_mode != "zeros"
                ):
                    raise ValueError(f"{name}: export supports Conv2d with groups=1, zero padding")
                weight = _effective_weight(module).clone()
                bias = _bias(module)
                # input units: features / channels of the first layer, else previous rows
                in_units = int(stages[-1].weight.shape[0] if stages else weight.shape[1])
                stages.append(
                    _Stage(
                        name=name,
                        kind="conv" if conv else "linear",
                        weight=weight,
                        bias=None if bias is None else bias.clone(),
                        conv_args=_conv_args(module) if conv else None,
                        out_shape=(),
                        out_index=torch.arange(weight.shape[0], device=weight.device),
                        in_index=torch.arange(in_units, device=weight.device),
                        ops=[],
                        dense_weight_shape=tuple(weight.shape),
                        dense_in_units=in_units,
                    )
                )
            elif isinstance(module, _POOLS) and ndim != 4:
                raise ValueError(f"{name} ({type(module).__name__}) needs a (B, C, H, W) input")
            elif isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1):
                raise ValueError(f"{name}: export supports nn.Flatten(start_dim=1, end_dim=-1)")
            try:
                x = module(x)
            except RuntimeError as err:
                raise ValueError(
                    f"input_shape {tuple(input_shape)} does not fit {name}: {err}"
                ) from err
            if isinstance(module, _WEIGHT_LAYERS):
                stages[-1].out_shape = tuple(x.shape)
            elif stages:
                stages[-1].ops.append((name, copy.deepcopy(module).eval()))
            else:
                prefix.append((name, module))
    if not stages:
        raise ValueError("export needs a network with at least one Linear / Conv2d layer")
    return prefix, stages


def _keep_one(remove: Tensor) -> Tensor:
    """``~remove``, but never empty: a layer keeps at least one (then inert) unit."""
    keep = ~remove
    if not keep.any():
        keep[0] = True
    return keep


@torch.no_grad()
def _shrink(stages: list[_Stage]) -> None:
    """Remove dead and unused units until nothing changes (see :func:`export_compact`)."""
    changed = True
    while changed:
        changed = False
        first = stages[0]
        out_first = first.weight.shape[0]
        cols = first.weight.reshape(out_first, first.in_index.numel(), -1)
        keep = _keep_one((cols == 0).all(dim=(0, 2)))
        if not keep.all():
            first.weight = cols[:, keep].reshape(out_first, -1, *first.weight.shape[2:])
            first.in_index = first.in_index[keep]
            changed = True
        for cur, nxt in zip(stages[:-1], stages[1:], strict=True):
            units = cur.weight.shape[0]
            out_next = nxt.weight.shape[0]
            grouped = nxt.weight.reshape(out_next, units, -1)  # next layer's columns per unit
            unused = (grouped == 0).all(dim=(0, 2))
            dead = (cur.weight.reshape(units, -1) == 0).all(dim=1) & ~unused
            remove = unused.clone()
            if dead.any():
                emitted = cur.unit_outputs()[dead]  # (dead units, positions)
                if nxt.kind == "linear":
                    foldable = torch.ones(len(emitted), dtype=torch.bool, device=dead.device)
                else:
                    zero = (emitted == 0).all(dim=1)
                    constant = (emitted == emitted[:, :1]).all(dim=1)
                    # zero padding breaks a constant map at the borders: only zeros are safe
                    foldable = zero | (constant & (not nxt.padded))
                columns = grouped[:, dead][:, foldable]
                emitted = emitted[foldable]
                if nxt.kind == "linear":
                    # a constant input times its columns is a constant shift of the next layer
                    shift = torch.einsum("oup,up->o", columns, emitted)
                else:
                    shift = torch.einsum("oup,u->o", columns, emitted[:, 0])
                if foldable.any():
                    bias = nxt.bias if nxt.bias is not None else nxt.weight.new_zeros(out_next)
                    nxt.bias = bias + shift
                    remove[dead.nonzero().squeeze(1)[foldable]] = True
            keep = _keep_one(remove)
            if remove.all() and not unused[keep].all():
                # the one unit a layer keeps must contribute nothing now: it was folded
                grouped = grouped.clone()
                grouped[:, keep] = 0
                nxt.weight = grouped.reshape(nxt.weight.shape)
                changed = True
            if keep.all():
                continue
            cur.weight = cur.weight[keep]
            cur.bias = None if cur.bias is None else cur.bias[keep]
            cur.out_index = cur.out_index[keep]
            nxt.weight = grouped[:, keep].reshape(out_next, -1, *nxt.weight.shape[2:])
            nxt.in_index = nxt.in_index[keep]
            changed = True


def _compact(net: nn.Module, input_shape: Sequence[int]) -> tuple[nn.Sequential, list[_Stage]]:
    prefix, stages = _trace(net, input_shape)
    _shrink(stages)
    children: list[tuple[str, nn.Module]] = [(n, copy.deepcopy(m)) for n, m in prefix]
    first = stages[0]
    if first.in_index.numel() < first.dense_in_units:
        children.append(("input_select", InputSelect(first.in_index, flatten=first.kind != "conv")))
    for stage in stages:
        layer = _make_layer(stage.kind, stage.weight, stage.bias, stage.conv_args)
        children.append((stage.name, layer))
        children += stage.ops
    names: set[str] = set()
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in children:
        safe = name.replace(".", "_")
        while safe in names:
            safe += "_"
        names.add(safe)
        modules[safe] = module
    return nn.Sequential(modules).eval(), stages


def export_compact(net: nn.Module, input_shape: tuple[int, ...]) -> nn.Sequential:
    """A smaller plain network that predicts exactly what the pruned posterior mean does.

    Walks the ``nn.Sequential`` chain and removes hidden unit ``j`` (a neuron, or a channel) of
    a layer when

    (a) its weight row is all zero: it emits the constant ``ops(b_j)`` (its activation and
        pooling applied to the bias). Before an ``nn.Linear`` that constant times the unit's
        columns (through a ``Flatten``, a channel's ``H * W`` consecutive columns) is added to
        the next bias. Before an ``nn.Conv2d`` with zero padding a constant channel is not
        constant at the borders, so it is removed only if the constant is exactly 0 (e.g. ReLU
        with ``b_j <= 0``); without padding ``c * sum(kernel)`` is folded into the next bias;
    (b) the next layer's weights for it are all zero: its output is unused.

    Inputs of the first layer with all-zero weights are dropped by a leading
    :class:`InputSelect` (a feature each for an ``nn.Linear``; only whole input channels for an
    ``nn.Conv2d``). The output layer keeps all its outputs, and a layer keeps at least one unit
    (an inert one if all are removable). Removal repeats until nothing changes, since removing
    a unit can leave others dead. Dropout and identity modules are kept (eval mode, identity).

    Example::

        >>> prune(net)
        >>> compact = export_compact(net, input_shape=(1, 28, 28))
        >>> (compact(x) - net.eval()(x)).abs().max() < 1e-5
        True

    :param torch.nn.Module net: an ``nn.Sequential`` of the supported modules (sparse Bayesian
        layers are read as their pruned posterior mean, plain layers as they are).
    :param tuple input_shape: the shape of one example, without the batch dimension (used for
        a dummy forward that gives the spatial size behind every ``Flatten``).
    :returns: the compact network in eval mode; its layers keep their original names (dots
        replaced by ``_``) and an ``input_select`` module may lead the first layer.
    :rtype: torch.nn.Sequential
    :raises ValueError: on an unsupported module (naming its type) or an ``input_shape`` that
        does not fit the network.
    """
    compact, _ = _compact(net, input_shape)
    return compact


# ---------------------------------------------------------------------------------------------
# Cost: MACs and bytes
# ---------------------------------------------------------------------------------------------


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
    x = _example(net, input_shape)
    with _evaluating(net), FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops()) // 2


@torch.no_grad()
def _layer_positions(net: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``{layer name: positions}``: how often each weight layer applies its kernel per example."""
    positions: dict[str, int] = {}
    hooks = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            channels = out.shape[1] if isinstance(module, _CONV_LAYERS) else out.shape[-1]
            positions[name] = out.numel() // channels

        return hook

    for name, module in net.named_modules():
        if isinstance(module, _WEIGHT_LAYERS):
            hooks.append(module.register_forward_hook(record(name)))
    x = _example(net, input_shape)
    try:
        with _evaluating(net):
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
        int(torch.count_nonzero(_effective_weight(modules[name]))) * count
        for name, count in positions.items()
    )


def run_length_encode(mask_1d: Tensor) -> Tensor:
    """The runs of active (nonzero) entries of a vector, as ``(start, length)`` rows.

    Example::

        >>> run_length_encode(torch.tensor([1, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool))
        tensor([[0, 2],
                [7, 1]])

    :param torch.Tensor mask_1d: a 1-D mask (bool, or numbers where nonzero is active).
    :returns: a ``(runs, 2)`` long tensor of run starts and lengths, in order.
    :rtype: torch.Tensor
    :raises ValueError: if the mask is not 1-D.
    """
    if mask_1d.dim() != 1:
        raise ValueError(f"run_length_encode needs a 1-D mask, got shape {tuple(mask_1d.shape)}")
    active = (mask_1d != 0).to(torch.int8)
    padded = F.pad(active, (1, 1))
    edges = padded[1:] - padded[:-1]
    starts = (edges == 1).nonzero().squeeze(1)
    ends = (edges == -1).nonzero().squeeze(1)
    return torch.stack([starts, ends - starts], dim=1)


def run_length_decode(runs: Tensor, length: int) -> Tensor:
    """The bool mask of ``length`` entries whose active runs are ``runs`` (inverse of
    :func:`run_length_encode`).

    :param torch.Tensor runs: a ``(runs, 2)`` integer tensor of ``(start, length)`` rows.
    :param int length: the length of the mask.
    :returns: the 1-D bool mask.
    :rtype: torch.Tensor
    :raises ValueError: on a badly shaped run table or a run outside ``[0, length)``.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    runs = torch.as_tensor(runs, dtype=torch.long)
    if runs.dim() != 2 or runs.shape[1] != 2:
        raise ValueError(f"runs must have shape (runs, 2), got {tuple(runs.shape)}")
    starts, lengths = runs[:, 0], runs[:, 1]
    if runs.numel() and (
        (starts < 0).any() or (lengths < 0).any() or (starts + lengths > length).any()
    ):
        raise ValueError(f"runs fall outside a mask of length {length}")
    # +1 where a run starts, -1 where it ends; the running sum is positive inside runs
    delta = torch.zeros(length + 1, dtype=torch.long, device=runs.device)
    delta.index_add_(0, starts, torch.ones_like(starts))
    delta.index_add_(0, starts + lengths, -torch.ones_like(starts))
    return delta.cumsum(0)[:length] > 0


def weight_bytes(mask: Tensor, bits: int = 32) -> dict[str, int]:
    """Storage of one layer's kept weights in three formats, in bytes.

    The mask is read in row-major order of its ``(out, in * kh * kw)`` matrix view, i.e.
    ``mask.reshape(-1)`` (PyTorch's order). With ``v = bits / 8`` bytes per value,
    ``nnz`` kept entries and ``R`` runs of consecutive kept entries (runs may cross row ends):

    - ``"dense"``: every value, ``numel * v``;
    - ``"coo"``: each kept value with its int32 flat index, ``nnz * (v + 4)``;
    - ``"rle"``: run-length cluster coding, an int32 run count, then each run as int32
      ``(start, length)``, then the kept values: ``4 + 8 * R + nnz * v``;
    - ``"best"``: ``min(dense, coo, rle)``: a sender ships whichever is smallest.

    Clustered supports (the Turbo-VBI prior's aim) have few runs, so ``rle`` wins there.

    Example::

        >>> weight_bytes(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool))
        {'dense': 32, 'coo': 24, 'rle': 32, 'best': 24}

    :param torch.Tensor mask: the layer's mask (bool, or numbers where nonzero is kept).
    :param int bits: bits per stored value (a positive multiple of 8).
    :returns: ``{"dense", "coo", "rle", "best"}`` byte counts.
    :rtype: dict[str, int]
    :raises ValueError: if ``bits`` is not a positive multiple of 8.

    References

    [2] Han, Mao, Dally (ICLR 2016), Sec. 2 (sparse storage with indices).
    """
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    value = bits // 8
    flat = mask.reshape(-1)
    nnz = int(torch.count_nonzero(flat))
    runs = int(run_length_encode(flat).shape[0])
    coo = nnz * (value + _INDEX_BYTES)
    rle = _HEADER_BYTES + 2 * _INDEX_BYTES * runs + nnz * value
    return {
        "dense": flat.numel() * value,
        "coo": coo,
        "rle": rle,
        "best": min(flat.numel() * value, coo, rle),
    }


# ---------------------------------------------------------------------------------------------
# Report and plot
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerReport:
    """Compression of one weight layer.

    ``units`` are the layer's rows (neurons or output channels); ``units_kept`` and
    ``inputs_kept`` (input features of an ``nn.Linear``, input channels of an ``nn.Conv2d``)
    describe the layer in the compact model of :func:`export_compact`. MACs are per example;
    bytes are for the weights only (see :func:`weight_bytes`).
    """

    name: str
    shape: tuple[int, ...]
    weights: int
    weights_kept: int
    density: float
    units: int
    units_kept: int
    inputs_kept: int
    macs_dense: int
    macs_compact: int
    bytes_dense: int
    bytes_coo: int
    bytes_rle: int


def _whole_unit_counts(kept: Tensor) -> tuple[int, int]:
    """(pruned weights, those in an all-pruned row or column of the matrix view)."""
    pruned = ~kept.reshape(kept.shape[0], -1)
    dead_rows = pruned.all(dim=1, keepdim=True)
    dead_cols = pruned.all(dim=0, keepdim=True)
    return int(pruned.sum()), int((pruned & (dead_rows | dead_cols)).sum())


@torch.no_grad()
def _logits(net: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    like = _like(net)
    with _evaluating(net):
        return torch.cat(
            [net(x[i : i + batch_size].to(**like)) for i in range(0, len(x), batch_size)]
        )


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(-1) == y.to(logits.device)).double().mean())


@torch.no_grad()
def compression_report(
    net: nn.Module,
    input_shape: Sequence[int],
    *,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    dense_net: nn.Module | None = None,
) -> dict[str, Any]:
    """Measure a pruned network against its dense architecture; a JSON-ready dict.

    Keys: ``"layers"`` (a :class:`LayerReport` dict per weight layer), ``"weights"``,
    ``"weights_kept"``, ``"density"``, ``"fraction_pruned"``, ``"neurons_kept"`` (layer ->
    units in the compact model), ``"flops_dense"`` / ``"flops_compressed"`` (twice the MACs
    :func:`count_macs` finds in the dense architecture / the :func:`export_compact` model),
    ``"flops_sparse"`` (twice :func:`sparse_macs`), ``"flops_ratio"`` (``flops_dense /
    flops_compressed``: how many times fewer FLOPs), ``"bytes_dense"``, ``"bytes_coo"``,
    ``"bytes_rle"``, ``"bytes_compressed"`` (per layer the smallest of dense, COO and RLE,
    summed) and
    ``"fraction_in_whole_units"``: the share of pruned weights that lie in an all-pruned row
    (a dead neuron / channel) or all-pruned column of their layer's ``(out, in * kh * kw)``
    matrix, a measure of how structured the sparsity is (0 when nothing is pruned). With test
    data also ``"accuracy_compressed"`` (compact model), ``"accuracy_posterior_mean"`` (``net``
    in eval mode, masked), ``"accuracy_dense"`` (``dense_net``, if given) and
    ``"max_abs_logit_diff"`` (compact model against ``net``).

    A weight counts as kept when it is nonzero in the pruned posterior mean ``mu * mask``.
    Biases are not counted.

    Example::

        >>> prune(net)
        >>> report = compression_report(net, (1, 28, 28), x_test=x, y_test=y)
        >>> json.dumps(report)

    :param torch.nn.Module net: a pruned sparse Bayesian ``nn.Sequential`` (see :func:`prune`).
    :param input_shape: the shape of one example, without the batch dimension.
    :param torch.Tensor x_test: test inputs. :param torch.Tensor y_test: integer labels.
    :param torch.nn.Module dense_net: the unpruned reference network, for ``"accuracy_dense"``.
    :returns: the report.
    :rtype: dict
    :raises ValueError: if only one of ``x_test`` / ``y_test`` is given, or as
        :func:`export_compact`.
    """
    if (x_test is None) != (y_test is None):
        raise ValueError("compression_report needs both x_test and y_test, or neither")
    compact, stages = _compact(net, input_shape)
    modules = dict(net.named_modules())
    layers: list[LayerReport] = []
    pruned = pruned_in_units = 0
    for stage in stages:
        kept = _effective_weight(modules[stage.name]) != 0
        positions = math.prod(stage.out_shape[2:])
        bytes_ = weight_bytes(kept)
        layers.append(
            LayerReport(
                name=stage.name,
                shape=stage.dense_weight_shape,
                weights=kept.numel(),
                weights_kept=int(kept.sum()),
                density=float(kept.sum()) / kept.numel(),
                units=stage.dense_weight_shape[0],
                units_kept=int(stage.weight.shape[0]),
                inputs_kept=int(stage.weight.shape[1]),
                macs_dense=kept.numel() * positions,
                macs_compact=stage.weight.numel() * positions,
                bytes_dense=bytes_["dense"],
                bytes_coo=bytes_["coo"],
                bytes_rle=bytes_["rle"],
            )
        )
        layer_pruned, layer_in_units = _whole_unit_counts(kept)
        pruned += layer_pruned
        pruned_in_units += layer_in_units
    weights = sum(r.weights for r in layers)
    weights_kept = sum(r.weights_kept for r in layers)
    flops_dense = 2 * count_macs(net, input_shape)
    flops_compressed = 2 * count_macs(compact, input_shape)
    report: dict[str, Any] = {
        "layers": [asdict(r) for r in layers],
        "weights": weights,
        "weights_kept": weights_kept,
        "density": weights_kept / weights,
        "fraction_pruned": 1.0 - weights_kept / weights,
        "neurons_kept": {r.name: r.units_kept for r in layers},
        "flops_dense": flops_dense,
        "flops_compressed": flops_compressed,
        "flops_sparse": 2 * sparse_macs(net, input_shape),
        "flops_ratio": flops_dense / flops_compressed,
        "bytes_dense": sum(r.bytes_dense for r in layers),
        "bytes_compressed": sum(min(r.bytes_dense, r.bytes_coo, r.bytes_rle) for r in layers),
        "bytes_coo": sum(r.bytes_coo for r in layers),
        "bytes_rle": sum(r.bytes_rle for r in layers),
        "fraction_in_whole_units": pruned_in_units / pruned if pruned else 0.0,
    }
    if x_test is not None and y_test is not None:
        compact_logits = _logits(compact, x_test)
        net_logits = _logits(net, x_test)
        report["accuracy_compressed"] = _accuracy(compact_logits, y_test)
        report["accuracy_posterior_mean"] = _accuracy(net_logits, y_test)
        if dense_net is not None:
            report["accuracy_dense"] = _accuracy(_logits(dense_net, x_test), y_test)
        diff = (compact_logits - net_logits.to(compact_logits)).abs()
        report["max_abs_logit_diff"] = float(diff.max()) if diff.numel() else 0.0
    return report


@torch.no_grad()
def plot_support(net: nn.Module, path: str | Path) -> Path:
    """Heat maps of ``q(s = 1)``, one per sparse Bayesian layer, saved as an image.

    Each panel shows the layer's ``(out, in * kh * kw)`` matrix (rows are neurons or channels)
    on a fixed ``[0, 1]`` colour scale, titled with the layer name and its density (the kept
    fraction of the mask if set, else of ``q(s = 1) > 0.5``). Drawn on a bare
    :class:`matplotlib.figure.Figure` with the Agg canvas, so pyplot's backend is untouched.

    :param torch.nn.Module net: a network with sparse Bayesian layers.
    :param str path: the file to write (PNG by its suffix; parent folders are created).
    :returns: the path written.
    :raises ValueError: if the network has no sparse Bayesian layer.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = list(sparse_layers(net))
    if not layers:
        raise ValueError("plot_support needs a network with sparse Bayesian layers")
    ncols = min(3, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.5 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for ax, (name, layer) in zip(axes, layers, strict=False):
        probs = layer.support_probs.reshape(layer.matrix_shape).detach().cpu().double().numpy()
        kept = layer.mask if layer.mask is not None else layer.support_probs > 0.5
        density = float((kept != 0).double().mean())
        image = ax.imshow(
            probs, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest"
        )
        fig.colorbar(image, ax=ax, label="q(s = 1)")
        ax.set(title=f"{name}: density {density:.3f}", xlabel="input (in * kh * kw)", ylabel="unit")
    for ax in axes[len(layers) :]:
        ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
