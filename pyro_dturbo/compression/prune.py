"""Pruning: masks from the support posterior, and global magnitude pruning as the baseline.

- :func:`prune` sets every sparse layer's mask (``q(s = 1) > 0.5``, or ``|mu| > 0.01`` as in the
  reference demo); the network's eval-mode forward is then the *pruned posterior mean*.
- :func:`magnitude_masks` / :func:`apply_masks` give the unstructured baseline: global magnitude
  pruning of a plain network to the same density.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. V (pruning).
[2] S. Han, J. Pool, J. Tran, W. J. Dally, "Learning both Weights and Connections for Efficient
    Neural Networks", NeurIPS 2015 (magnitude pruning).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyro_dturbo.compression._modules import WEIGHT_LAYERS, effective_weight, plain_copy
from pyro_dturbo.models.layers import sparse_layers

__all__ = ["DEFAULT_THRESHOLDS", "prune", "magnitude_masks", "apply_masks"]

#: Default thresholds of :func:`prune`, per rule.
DEFAULT_THRESHOLDS: dict[str, float] = {"support": 0.5, "magnitude": 0.01}


@torch.no_grad()
def prune(
    net: nn.Module, *, rule: str = "support", threshold: float | None = None
) -> dict[str, Tensor]:
    """Set the mask of every sparse Bayesian layer of ``net`` in place.

    ``rule="support"`` keeps weight ``n`` where ``q(s_n = 1) > threshold`` (default 0.5, the
    posterior-majority support); ``rule="magnitude"`` keeps it where ``|mu_n| > threshold``
    (default 0.01, the rule of the authors' TensorFlow demo, github.com/cxiaab/D-turbo-vbi-FL,
    commit 8a89cc7).
    The network's eval-mode forward then uses the
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
    """Global magnitude pruning to a target density (the unstructured baseline [2]).

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
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    if not layers:
        raise ValueError("magnitude_masks found no Linear / Conv2d layer")
    weights = [effective_weight(m) for _, m in layers]
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
    plain = plain_copy(net)
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
