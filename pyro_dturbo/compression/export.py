"""Export: a pruned sparse Bayesian network as a plain, and a smaller dense, PyTorch model.

:func:`to_plain` copies a network into ``nn.Linear`` / ``nn.Conv2d`` layers holding the pruned
posterior mean, and :func:`export_compact` also removes every neuron / channel whose removal
leaves the predictions unchanged, shrinking the layers: the structured sparsity becomes a
smaller dense network.

Supported networks are ``nn.Sequential`` chains (nested ones are read in order) of
``nn.Linear``, ``nn.Conv2d`` (``groups=1``, zero padding), :class:`SparseBayesLinear`,
:class:`SparseBayesConv2d`, ``nn.ReLU``, ``nn.Tanh``, ``nn.MaxPool2d``, ``nn.AvgPool2d``,
``nn.Flatten`` (default dims), ``nn.Dropout`` and ``nn.Identity``.

:func:`save_compact` writes a compact model as one file (``torch.save`` of the module) and
:func:`load_compact` reads it back with ``torch.load(weights_only=True)``, allowing only the
module classes an exported model can hold (:data:`COMPACT_MODULES`).

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. V-VI (the compact
    model).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyro_dturbo.compression._modules import (
    CONV_LAYERS,
    ELEMENTWISE,
    POOLS,
    WEIGHT_LAYERS,
    bias_of,
    conv_kwargs,
    effective_weight,
    evaluating,
    example_input,
    make_layer,
    plain_copy,
)

__all__ = [
    "to_plain",
    "InputSelect",
    "export_compact",
    "COMPACT_MODULES",
    "save_compact",
    "load_compact",
]


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
    plain = plain_copy(net)
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


def _chain(net: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules of a (nested) ``nn.Sequential`` in order, with their dotted names."""
    if not isinstance(net, nn.Sequential):
        raise ValueError(f"export needs an nn.Sequential network, got {type(net).__name__}")
    chain: list[tuple[str, nn.Module]] = []
    for child_name, child in net.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(child, nn.Sequential):
            chain += _chain(child, prefix=f"{name}.")
        elif isinstance(child, WEIGHT_LAYERS + ELEMENTWISE + POOLS + (nn.Flatten,)):
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
    x = example_input(net, input_shape)
    with torch.no_grad(), evaluating(net):
        for name, module in chain:
            ndim = x.dim()
            if isinstance(module, WEIGHT_LAYERS):
                conv = isinstance(module, CONV_LAYERS)
                if ndim != (4 if conv else 2):
                    raise ValueError(
                        f"{name} ({type(module).__name__}) receives a {ndim}-D input; export "
                        f"needs {'(B, C, H, W)' if conv else '(B, F)'} there (missing Flatten?)"
                    )
                if isinstance(module, nn.Conv2d) and (
                    module.groups != 1 or module.padding_mode != "zeros"
                ):
                    raise ValueError(f"{name}: export supports Conv2d with groups=1, zero padding")
                weight = effective_weight(module).clone()
                bias = bias_of(module)
                # input units: features / channels of the first layer, else previous rows
                in_units = int(stages[-1].weight.shape[0] if stages else weight.shape[1])
                stages.append(
                    _Stage(
                        name=name,
                        kind="conv" if conv else "linear",
                        weight=weight,
                        bias=None if bias is None else bias.clone(),
                        conv_args=conv_kwargs(module) if conv else None,
                        out_shape=(),
                        out_index=torch.arange(weight.shape[0], device=weight.device),
                        in_index=torch.arange(in_units, device=weight.device),
                        ops=[],
                        dense_weight_shape=tuple(weight.shape),
                        dense_in_units=in_units,
                    )
                )
            elif isinstance(module, POOLS) and ndim != 4:
                raise ValueError(f"{name} ({type(module).__name__}) needs a (B, C, H, W) input")
            elif isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1):
                raise ValueError(f"{name}: export supports nn.Flatten(start_dim=1, end_dim=-1)")
            try:
                x = module(x)
            except RuntimeError as err:
                raise ValueError(
                    f"input_shape {tuple(input_shape)} does not fit {name}: {err}"
                ) from err
            if isinstance(module, WEIGHT_LAYERS):
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


def compact_stages(
    net: nn.Module, input_shape: Sequence[int]
) -> tuple[nn.Sequential, list[_Stage]]:
    """The compact model of :func:`export_compact` and the shrunk stage of every weight layer
    (its kept weight, output shape and dense weight shape, for the report)."""
    prefix, stages = _trace(net, input_shape)
    _shrink(stages)
    children: list[tuple[str, nn.Module]] = [(n, copy.deepcopy(m)) for n, m in prefix]
    first = stages[0]
    if first.in_index.numel() < first.dense_in_units:
        children.append(("input_select", InputSelect(first.in_index, flatten=first.kind != "conv")))
    for stage in stages:
        layer = make_layer(stage.kind, stage.weight, stage.bias, stage.conv_args)
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
    compact, _ = compact_stages(net, input_shape)
    return compact


#: The module classes a compact model (:func:`export_compact`) is built from: the only globals
#: :func:`load_compact` lets ``torch.load`` unpickle.
COMPACT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    InputSelect,
)


def save_compact(model: nn.Module, path: str | Path) -> Path:
    """Write a compact model (:func:`export_compact`) as one file: ``torch.save`` of the module.

    ``dturbo compress`` writes ``compact.pt`` this way. Read it with :func:`load_compact` or
    ``torch.load(path, weights_only=False)`` (a file you trust; ``pyro_dturbo`` must be
    importable for :class:`InputSelect`).

    :param torch.nn.Module model: the compact model; only :data:`COMPACT_MODULES` are allowed.
    :param path: the file to write (parent folders are created).
    :returns: the path written.
    :rtype: pathlib.Path
    :raises ValueError: if the model holds a module outside :data:`COMPACT_MODULES`.
    """
    for name, module in model.named_modules():
        if type(module) not in COMPACT_MODULES:
            raise ValueError(
                f"save_compact: module {name or '<root>'!r} of type {type(module).__name__} is "
                "not one a compact model holds (see COMPACT_MODULES)"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


def load_compact(path: str | Path, map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Read a compact model written by :func:`save_compact`, in eval mode.

    Uses ``torch.load(path, weights_only=True)`` with only :data:`COMPACT_MODULES` allowed
    (``torch.serialization.safe_globals``), so a file holding any other object is refused
    instead of run.

    Example::

        >>> model = load_compact("results/compress_run/compact.pt")
        >>> logits = model(x)

    :param path: the file. :param map_location: where the tensors go (``torch.load``'s).
    :returns: the model, in eval mode.
    :rtype: torch.nn.Module
    :raises pickle.UnpicklingError: if the file holds other classes.
    """
    with torch.serialization.safe_globals(list(COMPACT_MODULES)):
        model = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a compact model")
    return model.eval()
