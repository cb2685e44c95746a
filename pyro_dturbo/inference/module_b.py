"""Module B of Turbo-VBI: sum-product over the support structures of all layers at once.

:class:`ModuleB` is the one implementation of Module B in the package: the centralised Turbo
loop (:class:`~pyro_dturbo.inference.turbo.TurboVBI`) calls it, and so does the federated
server. It takes Module A's evidence about every support (one
:class:`~pyro_dturbo.ops.BernoulliMessage` per layer), runs sum-product over each layer's
support structure, and returns the **extrinsic** messages ``logit(pi_n) = posterior log-odds -
L_n``, clipped and damped, with the statistics the loop watches.

Layers are batched through public methods of the support classes: Markov chains with equal
``p01, p10`` go through one padded forward-backward scan (all rows of all those layers), grid
and graph MRFs with equal BP settings through one loopy-BP run on the disjoint union of their
graphs; independent supports cost nothing.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep Neural Networks
    Based on the Turbo-VBI Approach", IEEE TSP 2023 (arXiv:2302.10483), Sec. IV-B (Module B).
[2] C. Berrou, A. Glavieux, P. Thitimajshima, "Near Shannon limit error-correcting coding and
    decoding: Turbo-codes", ICC 1993 (extrinsic information exchange).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pyro_dturbo.models.support import (
    GraphMRFSupport,
    GridMRFSupport,
    MarkovChainSupport,
    SupportStructure,
)
from pyro_dturbo.ops.chain import forward_backward
from pyro_dturbo.ops.loopy import loopy_bp
from pyro_dturbo.ops.messages import PROB_EPS, BernoulliMessage

__all__ = ["ModuleB", "ModuleBOutput", "batched_extrinsic"]

_PairwiseMRF = (GridMRFSupport, GraphMRFSupport)


@dataclass(frozen=True)
class ModuleBOutput:
    """What one Module-B call returns.

    :ivar messages: the extrinsic B -> A messages ``pi`` per layer (clipped, damped).
    :ivar float delta_pi: ``max |pi_new - pi_old|`` over all weights (0 without a previous).
    :ivar float time: seconds spent.
    """

    messages: dict[str, BernoulliMessage]
    delta_pi: float
    time: float


class ModuleB:
    """Sum-product over the support structures of every layer, extrinsic messages out.

    :param supports: ``{layer: shape-bound SupportStructure}``.
    :param float damping: weight of the previous message in the log-odds domain, ``[0, 1)``.
    :param float eps: messages are clipped to probabilities in ``[eps, 1 - eps]``.

    Example::

        >>> module_b = ModuleB({"fc1": MarkovChainSupport(0.05, 0.2).with_shape((4, 8))})
        >>> pi = module_b.initial()                     # the prior's own marginals
        >>> out = module_b({"fc1": BernoulliMessage(torch.randn(4, 8))}, pi)
        >>> out.messages["fc1"].probs.shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        supports: Mapping[str, SupportStructure],
        *,
        damping: float = 0.0,
        eps: float = PROB_EPS,
    ):
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"ModuleB.damping must be in [0, 1), got {damping}")
        if not 0.0 < eps < 0.5:
            raise ValueError(f"ModuleB.eps must be in (0, 0.5), got {eps}")
        for name, support in supports.items():
            if not isinstance(support, SupportStructure) or not support.shape_bound:
                raise ValueError(f"ModuleB.supports[{name!r}] must be a shape-bound support")
        self.supports = dict(supports)
        self.damping = float(damping)
        self.eps = float(eps)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(s.event_shape) for name, s in self.supports.items()}

    def initial(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> dict[str, BernoulliMessage]:
        """The messages with no evidence: each support's prior marginals (clipped)."""
        flat = {
            name: BernoulliMessage(torch.zeros(shape, dtype=dtype, device=device))
            for name, shape in self.shapes.items()
        }
        return self(flat).messages

    def __call__(
        self,
        evidence: Mapping[str, BernoulliMessage],
        previous: Mapping[str, BernoulliMessage] | None = None,
    ) -> ModuleBOutput:
        """Extrinsic messages given Module A's evidence ``L`` (and the last output, to damp).

        :param evidence: ``{layer: BernoulliMessage}`` for every layer of the supports.
        :param previous: the last output of this Module B, or ``None`` (no damping).
        :returns: a :class:`ModuleBOutput`.
        :raises ValueError: on a missing or unknown layer, or a shape mismatch.
        """
        t0 = time.perf_counter()
        names = list(self.supports)
        if set(evidence) != set(names):
            raise ValueError(
                f"ModuleB: evidence for layers {sorted(evidence)}, supports {sorted(names)}"
            )
        extrinsic = batched_extrinsic(
            [self.supports[n] for n in names], [evidence[n].logits for n in names]
        )
        messages: dict[str, BernoulliMessage] = {}
        delta_pi = 0.0
        for name, ext in zip(names, extrinsic, strict=True):
            message = BernoulliMessage(ext).clip(self.eps)
            if previous is not None:
                old = previous[name].to(ext)
                message = message.damp(old, self.damping)
                delta_pi = max(delta_pi, message.max_prob_change(old))
            messages[name] = message
        return ModuleBOutput(messages, delta_pi, time.perf_counter() - t0)


def batched_extrinsic(
    supports: Sequence[SupportStructure], evidence_logits: Sequence[Tensor]
) -> list[Tensor]:
    """Extrinsic log-odds for many layers at once: ``[s.extrinsic(L) for s, L in zip(...)]``.

    Chain supports with the same ``p01, p10`` are stacked into one batch of chains, padded at
    their ends with zero evidence, and run through a single forward-backward scan. The padding
    is exact: a tail with no evidence sends a flat backward message, and forward messages never
    see it. Grid and graph MRFs with the same BP settings run as one loopy-BP call on the
    disjoint union of their graphs (with a tolerance, the union iterates until every part has
    converged).

    :param supports: shape-bound support structures. :param evidence_logits: one per support.
    :returns: the extrinsic log-odds, one tensor per support, in order.
    """
    if len(supports) != len(evidence_logits):
        raise ValueError(f"{len(supports)} supports but {len(evidence_logits)} evidence tensors")
    out: list[Tensor | None] = [None] * len(supports)
    chains: dict[tuple[float, float], list[int]] = {}
    graphs: dict[tuple[int, float, float], list[int]] = {}
    for i, support in enumerate(supports):
        if isinstance(support, MarkovChainSupport):
            chains.setdefault((support.p01, support.p10), []).append(i)
        elif isinstance(support, _PairwiseMRF):
            graphs.setdefault(support.bp_settings, []).append(i)
        else:
            out[i] = support.extrinsic(evidence_logits[i])
    for members in graphs.values():
        _union_loopy_bp(supports, evidence_logits, members, out)
    for members in chains.values():
        if len(members) == 1:
            i = members[0]
            out[i] = supports[i].extrinsic(evidence_logits[i])
        else:
            _stacked_forward_backward(supports, evidence_logits, members, out)
    return [t for t in out if t is not None]


def _union_loopy_bp(
    supports: Sequence[SupportStructure],
    evidence_logits: Sequence[Tensor],
    members: list[int],
    out: list[Tensor | None],
) -> None:
    flats, edges, pots, biases, offset = [], [], [], [], 0
    for i in members:
        support = supports[i]
        assert isinstance(support, _PairwiseMRF)
        flat = support.check_logits(evidence_logits[i]).reshape(-1)
        edge_index, log_pot, bias, _ = support.factor_graph(flat)
        flats.append(flat)
        edges.append(edge_index + offset)
        pots.append(log_pot)
        biases.append(bias)
        offset += flat.numel()
    first = supports[members[0]]
    assert isinstance(first, _PairwiseMRF)
    bp_iters, bp_damping, bp_tol = first.bp_settings
    union = torch.cat(flats)
    beliefs = loopy_bp(
        union,
        torch.cat(edges, dim=1),
        torch.cat(pots),
        node_bias=torch.cat(biases),
        max_iters=bp_iters,
        damping=bp_damping,
        tol=bp_tol,
    )
    assert isinstance(beliefs, Tensor)
    extrinsic = beliefs - union
    start = 0
    for i, flat in zip(members, flats, strict=True):
        out[i] = extrinsic[start : start + flat.numel()].reshape(evidence_logits[i].shape)
        start += flat.numel()


def _stacked_forward_backward(
    supports: Sequence[SupportStructure],
    evidence_logits: Sequence[Tensor],
    members: list[int],
    out: list[Tensor | None],
) -> None:
    pieces = []
    for i in members:
        support = supports[i]
        assert isinstance(support, MarkovChainSupport)
        pieces.append(support.chains(support.check_logits(evidence_logits[i])))
    width = max(c.shape[-1] for c in pieces)
    stacked = torch.cat([F.pad(c, (0, width - c.shape[-1])) for c in pieces], dim=-2)
    first = supports[members[0]]
    assert isinstance(first, MarkovChainSupport)
    log_init, log_trans = first.log_params(stacked)
    posterior = forward_backward(stacked, log_init, log_trans)
    start = 0
    for i, c in zip(members, pieces, strict=True):
        support = supports[i]
        assert isinstance(support, MarkovChainSupport)
        rows, length = c.shape[-2], c.shape[-1]
        piece = posterior[..., start : start + rows, :length]
        out[i] = support.unchain(piece) - evidence_logits[i]
        start += rows
