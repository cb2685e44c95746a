"""The D-Turbo-VBI server: one Gaussian site per client, the product merge, the same Module B.

The server holds, for every sparse layer of the network (in its ``(out, in * kh * kw)`` matrix
view): the prior precision the clients' w-steps use (``E[rho]``), Module B's message ``pi``,
the evidence ``L``, ``q(s)``, the active set, the global ``q(w)`` the clients start from, the
global biases, and one site ``t_k(w)`` per client (natural parameters, stacked over clients).
A round (:meth:`DTurboServer.broadcast`, then :meth:`DTurboServer.aggregate`):

1. each selected client ``k`` is sent, on the active set only, the global ``q(w)`` (mean and
   variance: where it starts) and its cavity ``prior * prod_{j != k} t_j`` (the Gaussian prior
   it trains against), plus the biases;
2. its reply (its local ``q_k`` on the active set) is validated; the site moves towards
   ``q_k / cavity_k`` by ``site_step`` in natural parameters;
3. the global posterior ``q(w) = prior * prod_k t_k`` and the data's site ``prod_k t_k`` give
   the closed-form ``q(s)``, ``q(rho)`` (:func:`~pyro_dturbo.inference.network.hyper_step`, the
   code of centralised Module A) and Module B (:class:`~pyro_dturbo.inference.ModuleB`, the
   object centralised Turbo-VBI uses) gives the next ``pi``; weights with ``q(s) < 0.5`` are
   pruned: they are exactly zero, never sent, and their sites are reset (no client holds data
   information about a zero weight). Module B may switch them back on.

With ``aggregation="moment_average"`` (the authors' demo) every client trains against the
full prior, and the global ``q(w)`` is the data-size weighted average of the replies' means
and variances.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, "Bayesian Federated Model Compression for Communication
    and Computation Efficiency", arXiv:2404.07532.
[2] T. D. Bui et al., "Partitioned Variational Inference", arXiv:1811.11206 (server-side
    sites, damped updates).
[3] ``docs/algorithm.md``, "Federated rounds".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pyro_dturbo.federation.base import AggregateReport, logger
from pyro_dturbo.federation.codec import Block, Message, decode_message, encode_message
from pyro_dturbo.federation.merge import moment_average, proper, weighted_average
from pyro_dturbo.inference.module_b import ModuleB
from pyro_dturbo.inference.network import hyper_step
from pyro_dturbo.models.layers import SparseBayesLayer, sparse_layers
from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.ops.messages import BernoulliMessage, GaussianMessage

__all__ = ["AGGREGATIONS", "DTurboServer", "DOWN", "UP"]

#: the merge rules a server knows
AGGREGATIONS: tuple[str, ...] = ("product", "moment_average")
#: message kinds: server -> client, client -> server
DOWN, UP = "dturbo/down", "dturbo/up"


class DTurboServer:
    """The server of D-Turbo-VBI (engine-free: bytes in, bytes out).

    :param torch.nn.Module net: the network with sparse Bayesian layers (a template: copied;
        its initial ``q(w)`` is where round 0 starts, its layer names key the prior).
    :param SparsePrior prior: the sparse prior (per-layer overrides by name).
    :param client_sizes: ``N_k`` of every client (ids ``0 .. K-1``): the weights of the
        biases' (and, with moment averaging, the moments') average.
    :param str aggregation: one of :data:`AGGREGATIONS`.
    :param float site_step: how far a stored site moves to a client's new one, ``(0, 1]``
        (``None``: ``1 / K``, as federated EP; see ``docs/algorithm.md`` for the measurement
        behind it).
    :param float init_precision: the prior precision before the first closed-form step.
    :param int warmup_rounds: rounds before the first closed-form step (no pruning).
    :param int freeze_round: from this round on the support is frozen: no more closed-form
        steps or Module B, the active set stays, only ``q(w)`` is merged (the federated
        counterpart of centralised fine-tuning; ``None``: never).
    :param float damping: Module B's damping, as centralised Turbo-VBI.
    :param str weight_prior: as :class:`~pyro_dturbo.inference.NetworkConfig`.
    :param str codec: the payloads' index codec (``"coo"``, ``"rle"``, ``"auto"``).
    :param value_dtype: the payloads' value dtype (float32, float16, bfloat16).

    Example::

        >>> server = DTurboServer(net, prior, client_sizes=[150] * 10)
        >>> payloads = server.broadcast(range(10))           # {client id: bytes}
        >>> replies = {k: clients[k].train(p) for k, p in payloads.items()}
        >>> report = server.aggregate(replies)               # validated, merged, round += 1
    """

    def __init__(
        self,
        net: nn.Module,
        prior: SparsePrior,
        client_sizes: Sequence[int],
        *,
        aggregation: str = "product",
        site_step: float | None = None,
        init_precision: float = 1.0,
        warmup_rounds: int = 0,
        freeze_round: int | None = None,
        damping: float = 0.0,
        weight_prior: str = "mean_field",
        demo_constants: bool = False,
        codec: str = "auto",
        value_dtype: str | torch.dtype = "float16",
    ):
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}"
            )
        sizes = [int(n) for n in client_sizes]
        if not sizes or any(n < 1 for n in sizes):
            raise ValueError(f"client_sizes must be >= 1 each (and not empty), got {sizes}")
        # FedEP's 1/K: K parallel site updates from one cavity move the product K times as
        # far as one would; undamped, the first product rounds diverged (docs/algorithm.md)
        step = 1.0 / len(sizes) if site_step is None else float(site_step)
        if not 0.0 < step <= 1.0:
            raise ValueError(f"site_step must be in (0, 1], got {site_step!r}")
        if not init_precision > 0:
            raise ValueError(f"init_precision must be positive, got {init_precision!r}")
        if warmup_rounds < 0:
            raise ValueError(f"warmup_rounds must be >= 0, got {warmup_rounds!r}")
        self.net = copy.deepcopy(net)
        self.layers: dict[str, SparseBayesLayer] = dict(sparse_layers(self.net))
        if not self.layers:
            raise ValueError("the network has no sparse Bayesian layer: use to_sparse_bayes()")
        prior.check_layer_names(list(self.layers))
        self.prior = prior
        self.client_sizes = sizes
        self.aggregation = aggregation
        self.site_step = step
        self.warmup_rounds = int(warmup_rounds)
        if freeze_round is not None and freeze_round <= warmup_rounds:
            raise ValueError(
                f"freeze_round must be after the warm-up ({warmup_rounds}), got {freeze_round!r}"
            )
        self.freeze_round = freeze_round
        self.weight_prior = weight_prior
        self.demo_constants = bool(demo_constants)
        self.codec, self.value_dtype = codec, value_dtype
        self.shapes = {name: layer.matrix_shape for name, layer in self.layers.items()}
        self.module_b = ModuleB(
            {n: prior.for_layer(n).support.with_shape(s) for n, s in self.shapes.items()},
            damping=damping,
        )
        first = next(self.net.parameters())
        like: dict[str, Any] = {"dtype": first.dtype, "device": first.device}
        K = len(sizes)
        self.round = 0
        self.expected: list[int] = []
        # what each client holds: the round of the last payload it applied (acknowledged in
        # its accepted reply); the first rounds whose payloads carry the current support and
        # the current prior. A client that holds them is sent neither again.
        self.acked: list[int] = [-1] * K
        self.support_round = 0
        self.prior_round = 0
        with torch.no_grad():
            self.pi = self.module_b.initial(**like)
            self.state: dict[str, dict[str, Tensor]] = {}
            for name, layer in self.layers.items():
                shape = self.shapes[name]
                zeros = torch.zeros(shape, **like)
                self.state[name] = {
                    "precision": torch.full(shape, float(init_precision), **like),
                    "evidence": zeros.clone(),
                    "support_probs": self.pi[name].probs.clone(),
                    "active": torch.ones(shape, dtype=torch.bool, device=first.device),
                    "mean": layer.weight_loc.detach().reshape(shape).clone(),
                    "variance": layer.weight_variance.detach().reshape(shape).clone(),
                    "site_precision": torch.zeros((K, *shape), **like),
                    "site_eta": torch.zeros((K, *shape), **like),
                }
                if layer.bias is not None:
                    self.state[name]["bias"] = layer.bias.detach().clone()

    # -- what is sent ----------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return len(self.client_sizes)

    def _prior(self, name: str) -> GaussianMessage:
        return self._prior_of(self.state[name])

    @staticmethod
    def _prior_of(st: Mapping[str, Tensor]) -> GaussianMessage:
        return GaussianMessage.prior(st["precision"])

    @classmethod
    def _total_of(cls, st: Mapping[str, Tensor]) -> GaussianMessage:
        prior = cls._prior_of(st)
        return GaussianMessage(
            prior.precision + st["site_precision"].sum(0), prior.eta + st["site_eta"].sum(0)
        )

    def _cavity(self, name: str, k: int, total: GaussianMessage) -> GaussianMessage:
        """Client ``k``'s cavity ``prior * prod_{j != k} t_j`` (floored to proper)."""
        if self._moment_round():
            return self._prior(name)
        st = self.state[name]
        raw = GaussianMessage(
            total.precision - st["site_precision"][k], total.eta - st["site_eta"][k]
        )
        return proper(raw, self._prior(name))

    def _moment_round(self) -> bool:
        """Whether this round merges by moment averaging: always with
        ``aggregation="moment_average"``; with ``"product"`` during the warm-up rounds, where
        the clients' variances are still far from any fixed point (a site ``q_k / cavity``
        would count the initial precision, which no data gave, once per client)."""
        return (
            self.aggregation == "moment_average"
            or self.round < self.warmup_rounds
            or self._map_round()
        )

    def _map_round(self) -> bool:
        """Whether this is a fine-tuning round (support frozen): the clients take MAP steps on
        the pruned mean, so only means travel and are averaged (a sparse FedAvg on the active
        set, as centralised ``finetune="map"``)."""
        return self.freeze_round is not None and self.round >= self.freeze_round

    def _total(self, name: str) -> GaussianMessage:
        """``prior * prod_k t_k`` (unfloored natural parameters)."""
        return self._total_of(self.state[name])

    def broadcast(self, clients: Sequence[int]) -> dict[int, bytes]:
        """The payload of round :attr:`round` for each client id (unicast: one each).

        :raises ValueError: on an unknown client id.
        """
        ids = [int(k) for k in clients]
        unknown = [k for k in ids if not 0 <= k < self.num_clients]
        if unknown:
            raise ValueError(f"unknown client ids {unknown} (the server has {self.num_clients})")
        self.expected = sorted(set(ids))
        totals = {name: self._total(name) for name in self.layers}
        payloads = {}
        for k in ids:
            blocks: dict[str, Block] = {}
            for name in self.layers:
                st = self.state[name]
                active = st["active"]
                cav = self._cavity(name, k, totals[name])
                values = {"mean": st["mean"][active]}
                if not self._map_round():
                    values["variance"] = st["variance"][active]
                if not self._moment_round() or self.acked[k] < self.prior_round:
                    values["prior_precision"] = cav.precision[active]
                    if not self._moment_round():
                        values["prior_mean"] = cav.mean[active]
                blocks[name] = Block(
                    tuple(self.shapes[name]),
                    active,
                    values,
                    log_fields=tuple(f for f in ("variance", "prior_precision") if f in values),
                    known_mask=self.acked[k] >= self.support_round,
                )
                if "bias" in st:
                    blocks[f"{name}.bias"] = Block(
                        tuple(st["bias"].shape), None, {"value": st["bias"]}
                    )
            scalars: dict[str, float | int] = {"map": 1} if self._map_round() else {}
            message = Message(DOWN, self.round, k, blocks, scalars)
            payloads[k] = encode_message(message, self.codec, self.value_dtype)
        return payloads

    def density_down(self) -> float:
        """Fraction of the weights the next broadcast carries (the active set)."""
        kept = sum(int(st["active"].sum()) for st in self.state.values())
        return kept / sum(math.prod(s) for s in self.shapes.values())

    # -- what comes back -------------------------------------------------------------------
    def _check(self, k: int, payload: bytes) -> tuple[Message | None, str]:
        """Decode and validate one reply: ``(message, "")`` or ``(None, reason)``."""
        if k not in self.expected:
            return None, f"client {k} was not sent a payload in round {self.round}"
        try:
            message = decode_message(payload)
        except ValueError as error:
            return None, f"undecodable reply: {error}"
        if message.kind != UP:
            return None, f"kind {message.kind!r}, expected {UP!r}"
        if message.round != self.round:
            return None, f"stale reply: round {message.round}, the server is at {self.round}"
        if message.client != k:
            return None, f"reply of client {message.client} delivered as client {k}"
        if message.scalars.get("ack") != self.round:
            return None, f"ack {message.scalars.get('ack')!r}, expected {self.round}"
        n = message.scalars.get("num_examples")
        if not isinstance(n, int) or n != self.client_sizes[k]:
            return None, f"num_examples {n!r}, expected {self.client_sizes[k]}"
        expected = set(self.layers) | {f"{n}.bias" for n, st in self.state.items() if "bias" in st}
        if set(message.blocks) != expected:
            return None, f"blocks {sorted(message.blocks)}, expected {sorted(expected)}"
        for name, st in self.state.items():
            block = message.blocks[name]
            if tuple(block.shape) != tuple(self.shapes[name]) or (
                block.mask is None and not block.known_mask
            ):
                return None, f"{name}: shape {tuple(block.shape)}, expected {self.shapes[name]}"
            if block.mask is not None and not torch.equal(
                block.mask.to(st["active"].device), st["active"]
            ):
                return None, f"{name}: the reply's support differs from the one sent"
            kept = int(st["active"].sum())
            if any(v.numel() != kept for v in block.values.values()):
                return None, f"{name}: values for {kept} active weights expected"
            fields = {"mean"} if self._map_round() else {"mean", "variance"}
            if set(block.values) != fields:
                return None, f"{name}: fields {sorted(block.values)}, expected {sorted(fields)}"
            for field, value in block.values.items():
                if not bool(torch.isfinite(value).all()):
                    return None, f"{name}.{field}: NaN or Inf"
            if "variance" in block.values and not bool((block.values["variance"] > 0).all()):
                return None, f"{name}.variance: not positive"
            if "bias" in st:
                bias = message.blocks[f"{name}.bias"]
                bias_value = bias.values.get("value")
                if (
                    bias.mask is not None
                    or bias_value is None
                    or bias_value.shape != st["bias"].shape
                ):
                    return None, f"{name}.bias: wrong shape"
                if not bool(torch.isfinite(bias_value).all()):
                    return None, f"{name}.bias: NaN or Inf"
        return message, ""

    def aggregate(self, replies: Mapping[int, bytes]) -> AggregateReport:
        """Validate the replies of this round, merge the valid ones, run the closed-form steps
        and Module B, prune, and advance :attr:`round`.

        A rejected reply changes nothing (its reason is logged and reported); a client
        without a valid reply keeps its last site. With no valid reply the posterior stays as
        it was (Module B still runs, as it would in a round without news).
        """
        report = AggregateReport()
        accepted: dict[int, Message] = {}
        for k, payload in sorted(replies.items()):
            message, reason = self._check(int(k), payload)
            if message is None:
                logger.warning(
                    "round %d: rejected the reply of client %s: %s", self.round, k, reason
                )
                report.rejected[int(k)] = reason
            else:
                accepted[int(k)] = message
        report.accepted = sorted(accepted)
        for k in accepted:
            self.acked[k] = self.round
        total_weights = sum(math.prod(s) for s in self.shapes.values())
        if accepted:
            carried = [
                sum(int(m.blocks[n].values["mean"].numel()) for n in self.layers)
                for m in accepted.values()
            ]
            report.density_up = sum(carried) / (total_weights * len(carried))
            with torch.no_grad():
                self._merge(accepted)
        with torch.no_grad():
            self._closed_form(bool(accepted))
        self.round += 1
        self.expected = []
        return report

    def _merge(self, accepted: Mapping[int, Message]) -> None:
        ids = sorted(accepted)
        weights = [float(self.client_sizes[k]) for k in ids]
        for name, st in self.state.items():
            active = st["active"]
            like = st["mean"]
            means = [accepted[k].blocks[name].values["mean"].to(like) for k in ids]
            if self._map_round():
                # fine-tuning: only means travel (the variances stay as they were)
                st["mean"][active] = weighted_average(means, weights)
            elif not self._moment_round():
                variances = [accepted[k].blocks[name].values["variance"].to(like) for k in ids]
                total = self._total(name)
                for k, mean, variance in zip(ids, means, variances, strict=True):
                    cav = self._cavity(name, k, total)
                    reply = GaussianMessage.from_moments(mean, variance)
                    new_p = reply.precision - cav.precision[active]
                    new_e = reply.eta - cav.eta[active]
                    old_p, old_e = st["site_precision"][k][active], st["site_eta"][k][active]
                    a = self.site_step
                    st["site_precision"][k][active] = (
                        old_p + a * (new_p - old_p) if a < 1 else new_p
                    )
                    st["site_eta"][k][active] = old_e + a * (new_e - old_e) if a < 1 else new_e
            else:
                variances = [accepted[k].blocks[name].values["variance"].to(like) for k in ids]
                mean, variance = moment_average(means, variances, weights)
                st["mean"][active], st["variance"][active] = mean, variance
            if "bias" in st:
                biases = [accepted[k].blocks[f"{name}.bias"].values["value"].to(like) for k in ids]
                w = torch.tensor(weights, dtype=like.dtype, device=like.device)
                st["bias"] = (w[:, None] * torch.stack(biases)).sum(0) / w.sum()

    def _closed_form(self, news: bool) -> None:
        """``q(w)``, the evidence, ``q(s)``, ``q(rho)``, Module B, the active set."""
        warm = self.round + 1 <= self.warmup_rounds
        if self._map_round():
            return  # the support is frozen: the merge averaged the means, nothing else moves
        evidence: dict[str, Tensor] = {}
        moment = self._moment_round()
        split = self.aggregation == "product" and self.round + 1 == self.warmup_rounds
        sizes = torch.tensor(self.client_sizes, dtype=torch.float64)
        shares = (sizes / sizes.sum()).tolist()
        for name, st in self.state.items():
            prior = self._prior(name)
            if split:
                # the product starts from the averaged posterior: each client's site is its
                # data share of the data's site (q / prior)^(N_k / N)
                data = GaussianMessage.from_moments(st["mean"], st["variance"]) / prior
                for k, share in enumerate(shares):
                    st["site_precision"][k] = (
                        data.precision if share == 1.0 else share * data.precision
                    )
                    st["site_eta"][k] = data.eta if share == 1.0 else share * data.eta
            if not moment:
                total = self._total(name)
                data_site = GaussianMessage(
                    total.precision - prior.precision, total.eta - prior.eta
                )
                posterior = proper(total, prior)
                if news:
                    st["mean"], st["variance"] = posterior.mean, posterior.variance
            else:
                posterior = GaussianMessage.from_moments(st["mean"], st["variance"])
                data_site = posterior / prior
            step = hyper_step(
                data_site.with_precision_floor(),
                st["mean"],
                st["variance"],
                self.pi[name],
                self.prior.for_layer(name),
                weight_prior=self.weight_prior,
                demo_constants=self.demo_constants,
                pruned=~st["active"],
                previous=st["evidence"],
            )
            if warm:
                evidence[name] = torch.zeros_like(step.evidence)
                continue
            evidence[name] = step.evidence
            st["precision"] = step.precision
            st["support_probs"] = step.support_probs
            active = step.support_probs > 0.5
            if not torch.equal(active, st["active"]):
                self.support_round = self.round + 1
            self.prior_round = self.round + 1
            pruned = ~active
            # a zero weight: no client has data information about it; it restarts at the prior
            st["site_precision"][:, pruned] = 0.0
            st["site_eta"][:, pruned] = 0.0
            st["mean"] = st["mean"].masked_fill(pruned, 0.0)
            st["variance"] = torch.where(pruned, 1.0 / st["precision"], st["variance"])
            st["active"] = active
        out = self.module_b({k: BernoulliMessage(v) for k, v in evidence.items()}, self.pi)
        self.pi = out.messages
        for name, value in evidence.items():
            self.state[name]["evidence"] = value

    # -- the model and the state -----------------------------------------------------------
    def global_model(self) -> nn.Module:
        """The global network in eval mode: ``q(w)``'s mean on the active set, zero elsewhere
        (masked), the global biases, ``q(s)`` as its support probabilities."""
        net = copy.deepcopy(self.net)
        with torch.no_grad():
            for name, layer in sparse_layers(net):
                st = self.state[name]
                layer.set_posterior(GaussianMessage.from_moments(st["mean"], st["variance"]))
                layer.set_prior(st["precision"], st["support_probs"])
                layer.set_mask(None if bool(st["active"].all()) else st["active"])
                if layer.bias is not None:
                    layer.bias.copy_(st["bias"])
        return net.eval()

    def state_dict(self) -> dict[str, Any]:
        """Everything the server knows, as tensors and numbers (``torch.save`` with
        ``weights_only`` reads it back)."""
        return {
            "round": self.round,
            "expected": list(self.expected),
            "acked": list(self.acked),
            "support_round": self.support_round,
            "prior_round": self.prior_round,
            "pi": {k: m.logits.clone() for k, m in self.pi.items()},
            "layers": {n: {k: v.clone() for k, v in st.items()} for n, st in self.state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the server must be built with the same arguments).

        :raises ValueError: if the layers or their shapes differ.
        """
        layers = state["layers"]
        if set(layers) != set(self.state):
            raise ValueError(f"checkpoint layers {sorted(layers)} != {sorted(self.state)}")
        for name, st in layers.items():
            for key, value in st.items():
                ref = self.state[name].get(key)
                if ref is not None and tuple(ref.shape) != tuple(value.shape):
                    raise ValueError(f"checkpoint {name}.{key}: shape {tuple(value.shape)}")
        self.round = int(state["round"])
        self.expected = [int(k) for k in state["expected"]]
        self.acked = [int(k) for k in state["acked"]]
        self.support_round = int(state["support_round"])
        self.prior_round = int(state["prior_round"])
        self.pi = {k: BernoulliMessage(v.clone()) for k, v in state["pi"].items()}
        self.state = {n: {k: v.clone() for k, v in st.items()} for n, st in layers.items()}
