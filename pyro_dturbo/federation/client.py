"""The D-Turbo-VBI client: local w-steps of the network Module A against a cavity.

A client holds its data and its own training state (network, Adam, data order, noise
generator: the state of :class:`~pyro_dturbo.inference.NetworkModuleA`). One round
(:meth:`DTurboClient.train`):

1. decode the server's message: on the active set, the global ``q(w)`` (where to start) and the
   cavity ``N(m, 1/p)`` (the Gaussian prior to train against); the biases; the weights outside
   the active set are masked (exactly zero) and frozen;
2. run ``local_epochs`` epochs of Module A's w-steps (:meth:`NetworkModuleA.w_steps`: the same
   code as centralised training, with a non-zero-mean prior), i.e. maximise
   ``E_q[log p(D_k | w)] - KL(q(w) || cavity)``;
3. reply with the local ``q_k(w)`` (mean and variance) on the active set and the biases; the
   server divides it by the cavity to get the client's new site.

References

[1] A. Xia, I. W. Tsang, V. K. N. Lau, arXiv:2404.07532 (D-Turbo-VBI), the client update.
[2] T. D. Bui et al., "Partitioned Variational Inference", arXiv:1811.11206 (a client's local
    free energy against its cavity).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pyro_dturbo.federation.codec import Block, Message, decode_message, encode_message
from pyro_dturbo.federation.server import DOWN, UP
from pyro_dturbo.inference.network import NetworkConfig, NetworkModuleA, freeze_pruned_moments
from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.ops.messages import BernoulliMessage, GaussianMessage

__all__ = ["DTurboClient", "SITES"]

#: how a client's reply carries its data: ``"marginal"`` sends its local ``q_k`` as trained
#: (the site is ``q_k / cavity``); ``"curvature"`` sends the trained mean with the variance
#: ``1 / (p_cavity + h_k)``, ``h_k`` the data's curvature read off the steps' gradients (the
#: site's precision is then ``h_k >= 0`` whether or not ``sigma`` has converged).
SITES: tuple[str, ...] = ("marginal", "curvature")


class DTurboClient:
    """One D-Turbo-VBI client (engine-free: :meth:`train` takes and returns bytes).

    :param int client_id: its id (the server's index ``k``; a partition id, not a node id).
    :param torch.nn.Module net: the network with sparse Bayesian layers (a template: copied).
    :param SparsePrior prior: the sparse prior (only its layer names and Gamma laws are used
        here; the server runs the closed-form steps).
    :param torch.Tensor x: local inputs. :param torch.Tensor y: local labels.
    :param int local_epochs: epochs of w-steps per round.
    :param NetworkConfig config: batch size, learning rates, KL weight and ``seed`` (the
        seed of this client's data order and noise).
    :param str codec: the reply's index codec. :param value_dtype: its value dtype.
    """

    def __init__(
        self,
        client_id: int,
        net: nn.Module,
        prior: SparsePrior,
        x: Tensor,
        y: Tensor,
        *,
        local_epochs: int = 1,
        config: NetworkConfig | None = None,
        codec: str = "auto",
        value_dtype: str | torch.dtype = "float16",
        site: str = "marginal",
    ):
        if site not in SITES:
            raise ValueError(f"site must be one of {list(SITES)}, got {site!r}")
        self.site = site
        if local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {local_epochs!r}")
        config = config if config is not None else NetworkConfig()
        steps = local_epochs * math.ceil(len(y) / min(config.batch_size, len(y)))
        self.config = config.replace(steps_per_iter=steps, epochs=1, prune="iteration")
        self.client_id = int(client_id)
        self.num_examples = len(y)
        self.module_a = NetworkModuleA(copy.deepcopy(net), prior, x, y, self.config)
        self.codec, self.value_dtype = codec, value_dtype
        uniform = {
            name: BernoulliMessage(torch.zeros(shape, dtype=self.module_a.x.dtype))
            for name, shape in self.module_a.support_shape.items()
        }
        self.params = self.module_a.init_params(uniform)
        self.metrics: dict[str, float] = {}
        #: the active set of every layer as last received (the server may then omit it)
        self.known: dict[str, Tensor] = {}

    def _apply(self, message: Message) -> None:
        """Load the server's message into the live network and optimiser."""
        module_a = self.module_a
        module_a._load(self.params)
        with torch.no_grad():
            for name, layer in module_a.layers.items():
                block = message.blocks.get(name)
                if block is None or (block.mask is None and not block.known_mask):
                    raise ValueError(f"the server's message has no sparse block {name!r}")
                shape = layer.matrix_shape
                if tuple(block.shape) != tuple(shape):
                    raise ValueError(f"{name}: block shape {block.shape}, layer {shape}")
                if block.mask is None:
                    if name not in self.known:
                        raise ValueError(f"{name}: the server assumed a support this client lacks")
                    mask = self.known[name]
                else:
                    mask = block.mask.to(torch.bool).reshape(shape)
                if any(t.numel() != int(mask.sum()) for t in block.values.values()):
                    raise ValueError(f"{name}: the values do not fit the support")
                self.known[name] = mask.clone()
                active = mask.to(layer.weight_loc.device)
                like = layer.weight_loc
                v = {f: t.to(like) for f, t in block.values.items()}

                def put(target: Tensor, values: Tensor) -> None:
                    target.view(shape)[active] = values  # noqa: B023 (used at once)

                put(layer.weight_loc.data, v["mean"])
                if "variance" in v:
                    put(layer.weight_log_scale.data, 0.5 * torch.log(v["variance"]))
                if "prior_precision" in v:  # else: unchanged since the last payload applied
                    put(layer.prior_precision, v["prior_precision"])
                    put(layer.prior_mean, v.get("prior_mean", torch.zeros_like(v["mean"])))
                layer.set_mask(None if bool(active.all()) else active)
                bias = message.blocks.get(f"{name}.bias")
                if layer.bias is not None:
                    if bias is None:
                        raise ValueError(f"the server's message has no block {name}.bias")
                    layer.bias.data.copy_(bias.values["value"].to(like))
            freeze_pruned_moments(module_a.optimizer, module_a.layers.values())
        state = {k: self.params[k] for k in ("data", "noise", "iteration", "evidence")}
        state["optimizer"] = copy.deepcopy(module_a.optimizer.state_dict())
        self.params = module_a._snapshot(**state)

    def train(self, payload: bytes) -> bytes:
        """One local round: the server's payload in, the encoded reply out.

        :raises ValueError: if the payload is not a well-formed server message.
        """
        message = decode_message(payload)
        if message.kind != DOWN or message.client != self.client_id:
            raise ValueError(
                f"client {self.client_id} got a {message.kind!r} message for client "
                f"{message.client}"
            )
        self._apply(message)
        map_round = bool(message.scalars.get("map", 0))
        self.params, self.metrics, sites = self.module_a.w_steps(
            self.params, curvature=self.site == "curvature" and not map_round, map=map_round
        )
        blocks: dict[str, Block] = {}
        with torch.no_grad():
            for name, layer in self.module_a.layers.items():
                shape = layer.matrix_shape
                active = self.known[name].to(layer.weight_loc.device)
                mean = layer.weight_loc.reshape(shape)
                if name in sites:
                    precision = layer.prior_precision.reshape(shape) + sites[name].precision
                    q = GaussianMessage(precision, precision * mean)
                else:
                    q = GaussianMessage.from_moments(mean, layer.weight_variance.reshape(shape))
                values = {"mean": q.mean[active]}
                if not map_round:  # fine-tuning rounds carry means only
                    values["variance"] = q.variance[active]
                logs = ("variance",) if "variance" in values else ()
                # the server sent this support: the reply needs no index
                blocks[name] = Block(tuple(shape), active, values, log_fields=logs, known_mask=True)
                if layer.bias is not None:
                    blocks[f"{name}.bias"] = Block(
                        tuple(layer.bias.shape), None, {"value": layer.bias.detach().clone()}
                    )
        reply = Message(
            UP,
            message.round,
            self.client_id,
            blocks,
            scalars={"num_examples": self.num_examples, "ack": message.round},
        )
        return encode_message(reply, self.codec, self.value_dtype)

    def state_dict(self) -> dict[str, Any]:
        """The client's training state (network, Adam, data order, generators)."""
        return {"params": self.params, "known": {k: v.clone() for k, v in self.known.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.params = state["params"]
        self.known = {k: v.clone() for k, v in state.get("known", {}).items()}
