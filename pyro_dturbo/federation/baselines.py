"""Federated baselines that speak bytes: FedAvg, FedAvg with top-k sparsification, and STC.

Each method is a server and a client class implementing
:class:`~pyro_dturbo.federation.base.FederatedServer` and
:class:`~pyro_dturbo.federation.base.FederatedClient`; :func:`make_baseline` builds one server
and its clients from a plain torch network. They are engine-free: every message is a
:class:`~pyro_dturbo.federation.codec.Message` encoded to bytes by
:func:`~pyro_dturbo.federation.codec.encode_message`, so the bytes an engine counts are the
payloads the methods really produce.

- ``"fedavg"`` [1]: the dense model down, the dense locally trained model up (float32 each
  way, whatever the configured value dtype), data-size-weighted average on the server.
- ``"fedavg-topk"`` [3, 4]: the dense float32 model down; up, per weight matrix / conv kernel
  the ``k = ceil(density * numel)`` entries of largest magnitude of the update plus the
  client's error-feedback residual (what was not sent is kept and added to the next update);
  1-D parameters (biases) dense. Sent in the configured index codec and value dtype.
- ``"stc"``, Sparse Ternary Compression [2]: the client's update plus residual is top-k
  sparsified and ternarised (``mu * sign`` with ``mu`` the mean kept magnitude), sent as the
  mask, one sign bit per kept entry and ``mu``; the server averages the ternary updates, adds
  its own residual, sparsifies and ternarises again at the same density and broadcasts that
  update (the downlink is compressed too). A client that does not hold the previous global
  model (it did not take part, or its reply was refused) is *stale* and is sent the full dense
  float32 model instead (counted in :attr:`STCServer.dense_resyncs`).

Conventions shared by all three:

- one :class:`~pyro_dturbo.federation.codec.Block` per parameter tensor, named as in
  :meth:`torch.nn.Module.named_parameters`; "weight entries" are the entries of the tensors of
  dimension >= 2 (matrices, conv kernels): ``density_up`` / ``density_down`` count those.
- 1-D parameters (biases) are never sparsified; in ``"fedavg-topk"`` and ``"stc"`` their update
  is sent dense in the configured value dtype, and the rounding error goes into the residual.
- the global model lives on the float32 grid of the dense downlink: after every merge the
  server (and, in STC, every client applying the broadcast update) rounds it to float32, so
  the server, the up-to-date clients and a freshly re-synced client hold bitwise the same
  model whatever the default dtype.
- residuals are taken against the values as they arrive (after the value dtype's rounding), so
  ``sent + new residual == update + old residual``.
- local training: Adam (kept per client across rounds), cross-entropy, ``local_epochs`` passes
  per round in minibatches of ``batch_size`` whose order is drawn from the client's own
  :class:`torch.Generator`, seeded by :func:`client_seed`; no global RNG is used.

References

[1] H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS 2017 (FedAvg).
[2] F. Sattler, S. Wiedemann, K.-R. Müller, W. Samek, "Robust and Communication-Efficient
    Federated Learning From Non-i.i.d. Data", IEEE TNNLS 31(9), 2020 (arXiv:1903.02891, 2019)
    (STC, Algorithms 1-2).
[3] A. F. Aji, K. Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017
    (top-k sparsification with the residual accumulated locally).
[4] S. U. Stich, J.-B. Cordonnier, M. Jaggi, "Sparsified SGD with Memory", NeurIPS 2018
    (error feedback for top-k).
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_dturbo.federation.base import (
    AggregateReport,
    FederatedClient,
    FederatedServer,
    logger,
)
from pyro_dturbo.federation.codec import (
    CODECS,
    MESSAGE_DTYPES,
    Block,
    Message,
    decode_message,
    encode_message,
)

__all__ = [
    "BASELINES",
    "FedAvgServer",
    "FedAvgClient",
    "TopKServer",
    "TopKClient",
    "STCServer",
    "STCClient",
    "client_seed",
    "make_baseline",
]

#: the methods :func:`make_baseline` builds
BASELINES: tuple[str, ...] = ("fedavg", "fedavg-topk", "stc")

#: the dense model always travels as float32 ("dense FedAvg counts 4 bytes per float each way")
_DENSE_DTYPE = torch.float32


# -- helpers -------------------------------------------------------------------------------
def client_seed(seed: int, client_id: int) -> int:
    """The seed of client ``client_id``'s data-order generator for the run seed ``seed``.

    Mixed by NumPy's :class:`~numpy.random.SeedSequence` (so nearby seeds and ids give
    unrelated streams), as a non-negative 63-bit integer for
    :meth:`torch.Generator.manual_seed`.
    """
    state = np.random.SeedSequence([int(seed), int(client_id)]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def _resolve_dtype(value_dtype: str | torch.dtype) -> torch.dtype:
    dtype = getattr(torch, value_dtype, None) if isinstance(value_dtype, str) else value_dtype
    if dtype not in MESSAGE_DTYPES:
        names = [str(d).removeprefix("torch.") for d in MESSAGE_DTYPES]
        raise ValueError(f"value_dtype must be one of {names}, got {value_dtype!r}")
    assert isinstance(dtype, torch.dtype)
    return dtype


def _densities(method: str, density: float | Sequence[float] | None) -> tuple[float, ...]:
    """The per-round density schedule (the last value repeats); ``(1.0,)`` for FedAvg."""
    if method == "fedavg":
        return (1.0,)
    if density is None:
        raise ValueError(f"method {method!r} needs a density in (0, 1], got density=None")
    values = [density] if isinstance(density, int | float) else list(density)
    if not values:
        raise ValueError(f"density must be a value or a non-empty sequence, got {density!r}")
    for d in values:
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0.0 < d <= 1.0:
            raise ValueError(f"density values must lie in (0, 1], got density={density!r}")
    return tuple(float(d) for d in values)


def _topk_count(density: float, numel: int) -> int:
    """``k = ceil(density * numel)`` (products within 1e-9 of an integer are not bumped up)."""
    return min(numel, max(1, math.ceil(density * numel - 1e-9)))


def _round_to(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` rounded to the grid of ``dtype``, kept in its own dtype."""
    return t.to(dtype).to(t.dtype)


def _topk_mask(acc: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` entries of largest ``|acc|`` (ties broken by position)."""
    order = torch.argsort(acc.detach().abs().flatten(), descending=True, stable=True)
    mask = torch.zeros(acc.numel(), dtype=torch.bool, device=acc.device)
    mask[order[:k]] = True
    return mask.reshape(acc.shape)


def _scatter(block: Block, field: str, like: Tensor) -> Tensor:
    """The dense tensor a block's ``field`` describes (entries not sent are 0)."""
    values = block.values[field].to(device=like.device, dtype=like.dtype)
    if block.mask is None:
        return values.reshape(like.shape).clone()
    out = torch.zeros_like(like)
    out[block.mask.to(like.device)] = values
    return out


def _ternarise(acc: Tensor, k: int) -> tuple[Tensor, Tensor, float, Tensor]:
    """STC's compression of one tensor: top-k, then ``mu * sign`` with ``mu = mean |kept|``.

    :returns: ``(mask, signs, mu, dense ternary tensor)``; ``signs`` (+-1, a kept zero counts
        as +1) in row-major order of the mask.
    """
    mask = _topk_mask(acc, k)
    kept = acc[mask]
    mu = float(kept.abs().mean())
    signs = torch.where(kept < 0, -1.0, 1.0).to(acc.dtype)
    dense = torch.zeros_like(acc)
    dense[mask] = mu * signs
    return mask, signs, mu, dense


def _check_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class _Layout:
    """The parameter tensors a method federates: names, shapes, which are weight tensors."""

    def __init__(self, net: nn.Module, densities: Sequence[float]):
        self.shapes: dict[str, tuple[int, ...]] = {
            name: tuple(p.shape) for name, p in net.named_parameters()
        }
        if not self.shapes:
            raise ValueError("the network has no parameters to federate")
        self.weights = [name for name, shape in self.shapes.items() if len(shape) >= 2]
        self.weight_entries = sum(math.prod(self.shapes[n]) for n in self.weights)
        self.densities = tuple(densities)

    def density(self, round_: int) -> float:
        return self.densities[min(round_, len(self.densities) - 1)]

    def k(self, name: str, round_: int) -> int:
        return _topk_count(self.density(round_), math.prod(self.shapes[name]))

    def carried(self, blocks: Mapping[str, Block]) -> float:
        """Fraction of the weight entries a message's blocks carry."""
        if self.weight_entries == 0:
            return 1.0
        sent = 0
        for name in self.weights:
            mask = blocks[name].mask
            sent += math.prod(self.shapes[name]) if mask is None else int(mask.sum())
        return sent / self.weight_entries


def _check_block(
    block: Block,
    shape: tuple[int, ...],
    fields: tuple[str, ...],
    *,
    nnz: int | None,
    sign_fields: tuple[str, ...] = (),
) -> str | None:
    """Why ``block`` is not a block of ``shape`` carrying ``fields`` (``nnz=None``: dense)."""
    if tuple(block.shape) != shape:
        return f"shape {tuple(block.shape)} != {shape}"
    numel = math.prod(shape)
    if nnz is None:
        if block.mask is not None:
            return "a mask where a dense block was expected"
        count = numel
    else:
        if block.mask is None:
            return "dense where a sparse block was expected"
        if block.mask.dtype != torch.bool or tuple(block.mask.shape) != shape:
            return f"mask of shape {tuple(block.mask.shape)} / dtype {block.mask.dtype}"
        count = int(block.mask.sum())
        if count != nnz:
            return f"{count} entries sent, expected {nnz}"
    if set(block.values) != set(fields):
        return f"fields {sorted(block.values)} != {sorted(fields)}"
    if tuple(block.log_fields) != ():
        return f"unexpected log fields {block.log_fields}"
    if tuple(getattr(block, "sign_fields", ())) != tuple(sign_fields):
        return f"sign fields {getattr(block, 'sign_fields', ())} != {sign_fields}"
    for field in fields:
        values = block.values[field]
        if values.dim() != 1 or values.numel() != count:
            return f"field {field!r} has shape {tuple(values.shape)}, expected ({count},)"
        if not torch.isfinite(values).all():
            return f"field {field!r} holds NaN or Inf"
        if field in sign_fields and not (values.abs() == 1).all():
            return f"sign field {field!r} holds values other than +-1"
    return None


def _num_examples(msg: Message) -> str | None:
    n = msg.scalars.get("num_examples")
    if n is None:
        return "no num_examples"
    if not isinstance(n, int | float) or not math.isfinite(n) or n <= 0:
        return f"num_examples={n!r} is not a positive number"
    return None


# -- clients -------------------------------------------------------------------------------
class _Client(abc.ABC):
    """Local training shared by the baselines' clients (see the module docstring)."""

    method: ClassVar[str] = ""

    def __init__(
        self,
        client_id: int,
        net: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        local_epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        densities: Sequence[float] = (1.0,),
        codec: str = "auto",
        value_dtype: torch.dtype = torch.float16,
    ):
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"client {client_id}: {len(x)} inputs and {len(y)} labels")
        self.client_id = int(client_id)
        self.num_examples = len(y)
        self._net = net
        self._params: dict[str, nn.Parameter] = dict(net.named_parameters())
        self._layout = _Layout(net, densities)
        first = next(iter(self._params.values()))
        self._x = x.to(device=first.device, dtype=first.dtype)
        self._y = y.to(first.device).long()
        self._local_epochs = local_epochs
        self._batch_size = batch_size
        self._codec = codec
        self._value_dtype = value_dtype
        self._optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        self._generator = torch.Generator().manual_seed(client_seed(seed, self.client_id))
        #: the global model as this client holds it (after applying the server's message)
        self._global: dict[str, Tensor] = {n: p.detach().clone() for n, p in self._params.items()}
        #: the round of the global model held (-1: none received yet)
        self._held_round = -1

    # -- receiving -------------------------------------------------------------------------
    def _decode(self, payload: bytes) -> Message:
        msg = decode_message(payload)
        if msg.client != self.client_id:
            raise ValueError(f"client {self.client_id} got a message for client {msg.client}")
        return msg

    def _load_dense_model(self, msg: Message) -> None:
        if set(msg.blocks) != set(self._layout.shapes):
            raise ValueError(f"client {self.client_id}: model blocks {sorted(msg.blocks)}")
        for name, shape in self._layout.shapes.items():
            reason = _check_block(msg.blocks[name], shape, ("w",), nnz=None)
            if reason is not None:
                raise ValueError(f"client {self.client_id}: model block {name!r}: {reason}")
            self._global[name] = _scatter(msg.blocks[name], "w", self._global[name])
        self._held_round = msg.round

    def _receive(self, msg: Message) -> None:
        if msg.kind != f"{self.method}/model":
            raise ValueError(f"client {self.client_id}: unexpected message kind {msg.kind!r}")
        self._load_dense_model(msg)

    # -- training --------------------------------------------------------------------------
    def _local_train(self) -> None:
        with torch.no_grad():
            for name, param in self._params.items():
                param.copy_(self._global[name])
        self._net.train()
        n = self.num_examples
        for _ in range(self._local_epochs):
            order = torch.randperm(n, generator=self._generator).to(self._x.device)
            for start in range(0, n, self._batch_size):
                idx = order[start : start + self._batch_size]
                loss = F.cross_entropy(self._net(self._x[idx]), self._y[idx])
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()

    @abc.abstractmethod
    def _reply_blocks(self, round_: int) -> tuple[dict[str, Block], dict[str, float | int]]:
        """The reply's blocks and scalars after local training (each method its own)."""

    def _reply_value_dtype(self) -> torch.dtype:
        return self._value_dtype

    def train(self, payload: bytes) -> bytes:
        """Decode the server's message, train locally from the global model, encode the reply.

        :raises ValueError: on a message of the wrong kind, client or shape.
        """
        msg = self._decode(payload)
        self._receive(msg)
        self._local_train()
        with torch.no_grad():
            blocks, scalars = self._reply_blocks(msg.round)
        scalars = {"num_examples": self.num_examples, **scalars}
        reply = Message(f"{self.method}/up", msg.round, self.client_id, blocks, scalars)
        return encode_message(reply, codec=self._codec, value_dtype=self._reply_value_dtype())

    # -- state -----------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (a hook)
        """Restore what :meth:`_extra_state` saved (nothing by default)."""

    def state_dict(self) -> dict[str, Any]:
        """Weights, held global model, Adam state, data-order generator (and residual)."""
        return {
            "client_id": self.client_id,
            "weights": {n: p.detach().clone() for n, p in self._params.items()},
            "global": {n: t.clone() for n, t in self._global.items()},
            "held_round": self._held_round,
            "optimizer": copy.deepcopy(self._optimizer.state_dict()),
            "generator": self._generator.get_state(),
            **self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["client_id"]) != self.client_id:
            raise ValueError(f"state of client {state['client_id']} loaded into {self.client_id}")
        with torch.no_grad():
            for name, param in self._params.items():
                param.copy_(state["weights"][name])
        self._global = {n: t.detach().clone() for n, t in state["global"].items()}
        self._held_round = int(state["held_round"])
        self._optimizer.load_state_dict(copy.deepcopy(dict(state["optimizer"])))
        self._generator.set_state(state["generator"].clone())
        self._load_extra_state(state)


class FedAvgClient(_Client):
    """A FedAvg client [1]: receives the dense model, replies with its locally trained weights.

    Both messages are dense float32, one block (field ``"w"``) per parameter tensor.

    References

    [1] H. B. McMahan et al., "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS 2017.
    """

    method: ClassVar[str] = "fedavg"

    def _reply_value_dtype(self) -> torch.dtype:
        return _DENSE_DTYPE

    def _reply_blocks(self, round_: int) -> tuple[dict[str, Block], dict[str, float | int]]:
        blocks = {
            name: Block(tuple(p.shape), None, {"w": p.detach().flatten().clone()})
            for name, p in self._params.items()
        }
        return blocks, {}


class _ResidualClient(_Client):
    """A client that sends a compressed update and keeps what it did not send (error feedback)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._residual = {n: torch.zeros_like(p.detach()) for n, p in self._params.items()}

    def _accumulated(self) -> dict[str, Tensor]:
        """``delta + residual``, ``delta = local - global``."""
        return {
            name: (p.detach() - self._global[name]) + self._residual[name]
            for name, p in self._params.items()
        }

    def _dense_update(self, name: str, acc: Tensor) -> Block:
        """A 1-D parameter's update, dense in the value dtype; the rounding goes to the residual."""
        sent = _round_to(acc, self._value_dtype)
        self._residual[name] = acc - sent
        return Block(tuple(acc.shape), None, {"delta": sent.flatten()})

    def _extra_state(self) -> dict[str, Any]:
        return {"residual": {n: t.clone() for n, t in self._residual.items()}}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._residual = {n: t.detach().clone() for n, t in state["residual"].items()}


class TopKClient(_ResidualClient):
    """A FedAvg client with top-k sparsified uplink and error feedback [1, 2].

    Per weight tensor the ``k = ceil(density * numel)`` entries of largest ``|delta +
    residual|`` (``delta = local - global``) are sent (field ``"delta"``, in the configured
    value dtype); the rest, and the value dtype's rounding, is the new residual. 1-D
    parameters are sent dense.

    References

    [1] A. F. Aji, K. Heafield, "Sparse Communication for Distributed Gradient Descent",
        EMNLP 2017.
    [2] S. U. Stich, J.-B. Cordonnier, M. Jaggi, "Sparsified SGD with Memory", NeurIPS 2018.
    """

    method: ClassVar[str] = "fedavg-topk"

    def _reply_blocks(self, round_: int) -> tuple[dict[str, Block], dict[str, float | int]]:
        blocks = {}
        for name, acc in self._accumulated().items():
            if name not in self._layout.weights:
                blocks[name] = self._dense_update(name, acc)
                continue
            mask = _topk_mask(acc, self._layout.k(name, round_))
            values = _round_to(acc[mask], self._value_dtype)
            sent = torch.zeros_like(acc)
            sent[mask] = values
            self._residual[name] = acc - sent
            blocks[name] = Block(tuple(acc.shape), mask, {"delta": values})
        return blocks, {}


class STCClient(_ResidualClient):
    """A client of Sparse Ternary Compression [1].

    Downlink: the dense float32 model (``"stc/model"``, when stale) or the server's sparse
    ternary update (``"stc/update"``), applied to the global model it holds. Uplink: per weight
    tensor, ``delta + residual`` is cut to its top ``k`` entries and ternarised to ``mu *
    sign`` (``mu`` the mean kept magnitude), sent as the mask, the signs (sign field
    ``"sign"``, one bit each) and the scalar ``"mu/<name>"``; the residual keeps the rest.
    1-D parameters are sent dense (field ``"delta"``, configured value dtype).

    References

    [1] F. Sattler, S. Wiedemann, K.-R. Müller, W. Samek, "Robust and Communication-Efficient
        Federated Learning From Non-i.i.d. Data", IEEE TNNLS, 2019, Algorithm 1.
    """

    method: ClassVar[str] = "stc"

    def _receive(self, msg: Message) -> None:
        if msg.kind == "stc/model":
            self._load_dense_model(msg)
            return
        if msg.kind != "stc/update":
            raise ValueError(f"client {self.client_id}: unexpected message kind {msg.kind!r}")
        base = msg.scalars.get("base_round")
        if base != self._held_round or msg.round != self._held_round + 1:
            raise ValueError(
                f"client {self.client_id} holds the model of round {self._held_round}, got an "
                f"update from round {base} for round {msg.round}"
            )
        update = _read_ternary(msg, self._layout, self._global, round_=msg.round - 1)
        if isinstance(update, str):
            raise ValueError(f"client {self.client_id}: {update}")
        self._global = {
            n: _round_to(self._global[n] + update[n], _DENSE_DTYPE) for n in self._global
        }
        self._held_round = msg.round

    def _reply_blocks(self, round_: int) -> tuple[dict[str, Block], dict[str, float | int]]:
        blocks: dict[str, Block] = {}
        scalars: dict[str, float | int] = {}
        for name, acc in self._accumulated().items():
            if name not in self._layout.weights:
                blocks[name] = self._dense_update(name, acc)
                continue
            mask, signs, mu, ternary = _ternarise(acc, self._layout.k(name, round_))
            self._residual[name] = acc - ternary
            blocks[name] = Block(tuple(acc.shape), mask, {"sign": signs}, sign_fields=("sign",))
            scalars[f"mu/{name}"] = mu
        return blocks, scalars


def _read_ternary(
    msg: Message, layout: _Layout, like: Mapping[str, Tensor], *, round_: int
) -> dict[str, Tensor] | str:
    """The dense update a ternary STC message describes, or why it is malformed.

    Weight tensors: mask + signs + ``mu/<name>`` at the density of ``round_``; 1-D: dense
    ``"delta"``.
    """
    if set(msg.blocks) != set(layout.shapes):
        return f"blocks {sorted(msg.blocks)} != {sorted(layout.shapes)}"
    update = {}
    for name, shape in layout.shapes.items():
        block = msg.blocks[name]
        if name in layout.weights:
            reason = _check_block(
                block, shape, ("sign",), nnz=layout.k(name, round_), sign_fields=("sign",)
            )
            mu = msg.scalars.get(f"mu/{name}")
            if reason is None and (
                not isinstance(mu, int | float) or not math.isfinite(mu) or mu < 0
            ):
                reason = f"mu={mu!r} is not a finite non-negative number"
            if reason is None:
                update[name] = float(mu) * _scatter(block, "sign", like[name])  # type: ignore[arg-type]
        else:
            reason = _check_block(block, shape, ("delta",), nnz=None)
            if reason is None:
                update[name] = _scatter(block, "delta", like[name])
        if reason is not None:
            return f"block {name!r}: {reason}"
    return update


# -- servers -------------------------------------------------------------------------------
class _Server(abc.ABC):
    """What the baselines' servers share: round bookkeeping, validation, state."""

    method: ClassVar[str] = ""

    def __init__(
        self,
        net: nn.Module,
        num_clients: int,
        *,
        densities: Sequence[float] = (1.0,),
        codec: str = "auto",
        value_dtype: torch.dtype = torch.float16,
    ):
        self.round = 0
        self.num_clients = _check_int("num_clients", num_clients)
        self._net = net
        self._params: dict[str, nn.Parameter] = dict(net.named_parameters())
        self._layout = _Layout(net, densities)
        self._codec = codec
        self._value_dtype = value_dtype
        self._sent: set[int] = set()
        with torch.no_grad():
            for param in self._params.values():
                param.copy_(_round_to(param, _DENSE_DTYPE))

    # -- downlink --------------------------------------------------------------------------
    def _dense_model(self, client: int) -> bytes:
        blocks = {
            name: Block(tuple(p.shape), None, {"w": p.detach().flatten().clone()})
            for name, p in self._params.items()
        }
        msg = Message(f"{self.method}/model", self.round, client, blocks)
        return encode_message(msg, codec=self._codec, value_dtype=_DENSE_DTYPE)

    def _downlink(self, client: int) -> bytes:
        return self._dense_model(client)

    def broadcast(self, clients: Sequence[int]) -> dict[int, bytes]:
        """One payload per client id for round :attr:`round`.

        :raises ValueError: on an unknown client id.
        """
        payloads = {}
        for client in clients:
            if isinstance(client, bool) or not 0 <= int(client) < self.num_clients:
                raise ValueError(f"unknown client id {client!r} (0..{self.num_clients - 1})")
            payloads[int(client)] = self._downlink(int(client))
        self._sent.update(payloads)
        return payloads

    # -- uplink ----------------------------------------------------------------------------
    def _check_reply(self, client: int, payload: bytes) -> Message | str:
        """The decoded reply, or why it is refused."""
        if isinstance(client, bool) or not isinstance(client, int | np.integer):
            return f"unknown client id {client!r}"
        if not 0 <= client < self.num_clients:
            return f"unknown client id {client}"
        if client not in self._sent:
            return f"client {client} was sent no payload in round {self.round}"
        try:
            msg = decode_message(payload)
        except Exception as error:  # any malformed payload is refused, never raised
            return f"decode error: {type(error).__name__}: {error}"
        if msg.kind != f"{self.method}/up":
            return f"message kind {msg.kind!r}, expected {self.method + '/up'!r}"
        if msg.round != self.round:
            return f"stale round {msg.round} (server is at round {self.round})"
        if msg.client != client:
            return f"reply of client {msg.client} under client id {client}"
        reason = _num_examples(msg)
        if reason is not None:
            return reason
        if set(msg.blocks) != set(self._layout.shapes):
            return f"blocks {sorted(msg.blocks)} != {sorted(self._layout.shapes)}"
        return self._check_blocks(msg) or msg

    @abc.abstractmethod
    def _check_blocks(self, msg: Message) -> str | None:
        """Why a decoded reply's blocks are unacceptable, or ``None``."""

    @abc.abstractmethod
    def _merge(self, replies: Sequence[Message], weights: Sequence[float]) -> None:
        """Merge the accepted replies (weights: data shares summing to 1)."""

    def aggregate(self, replies: Mapping[int, bytes]) -> AggregateReport:
        """Validate the replies of round :attr:`round`, merge the valid ones, advance the round.

        A refused reply (decode error, wrong kind, stale round, unknown client or one sent no
        payload this round, wrong blocks / shapes / counts / masks, NaN or Inf, no
        ``num_examples``) is logged with its reason and not merged; the round advances even if
        nothing is accepted (then the global model is unchanged).
        """
        report = AggregateReport()
        accepted: list[Message] = []
        for client, payload in replies.items():
            checked = self._check_reply(client, payload)
            if isinstance(checked, str):
                logger.warning(
                    "%s server, round %d: refused the reply of client %r: %s",
                    self.method,
                    self.round,
                    client,
                    checked,
                )
                report.rejected[client] = checked
                continue
            accepted.append(checked)
            report.accepted.append(int(client))
        if accepted:
            sizes = [float(msg.scalars["num_examples"]) for msg in accepted]
            total = sum(sizes)
            with torch.no_grad():
                self._merge(accepted, [n / total for n in sizes])
            carried = [self._layout.carried(msg.blocks) for msg in accepted]
            report.density_up = sum(carried) / len(carried)
        self._after_round(report)
        self.round += 1
        self._sent = set()
        return report

    def _after_round(self, report: AggregateReport) -> None:  # noqa: B027 (a hook)
        """Bookkeeping after a round's merge (nothing by default)."""

    def _set_global(self, values: Mapping[str, Tensor]) -> None:
        for name, param in self._params.items():
            param.copy_(_round_to(values[name], _DENSE_DTYPE))

    # -- the rest of the protocol ----------------------------------------------------------
    def density_down(self) -> float:
        """Fraction of the weight entries the next broadcast carries (1: dense)."""
        return 1.0

    def global_model(self) -> nn.Module:
        """A copy of the global model, in eval mode."""
        return copy.deepcopy(self._net).eval()

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (a hook)
        """Restore what :meth:`_extra_state` saved (nothing by default)."""

    def state_dict(self) -> dict[str, Any]:
        """Round, global weights, clients sent a payload this round (and the method's state)."""
        return {
            "method": self.method,
            "round": self.round,
            "weights": {n: p.detach().clone() for n, p in self._params.items()},
            "sent": sorted(self._sent),
            **self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["method"] != self.method:
            raise ValueError(f"a {state['method']!r} state loaded into a {self.method!r} server")
        self.round = int(state["round"])
        with torch.no_grad():
            for name, param in self._params.items():
                param.copy_(state["weights"][name])
        self._sent = {int(c) for c in state["sent"]}
        self._load_extra_state(state)


class FedAvgServer(_Server):
    """The FedAvg server [1]: broadcasts the dense float32 model, averages the clients' models.

    The new global model is ``sum_i (n_i / sum_j n_j) w_i`` over the accepted replies, ``n_i``
    their ``num_examples``.

    References

    [1] H. B. McMahan et al., "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS 2017, Algorithm 1.
    """

    method: ClassVar[str] = "fedavg"

    def _check_blocks(self, msg: Message) -> str | None:
        for name, shape in self._layout.shapes.items():
            reason = _check_block(msg.blocks[name], shape, ("w",), nnz=None)
            if reason is not None:
                return f"block {name!r}: {reason}"
        return None

    def _merge(self, replies: Sequence[Message], weights: Sequence[float]) -> None:
        new = {}
        for name, param in self._params.items():
            acc = torch.zeros_like(param)
            for msg, p in zip(replies, weights, strict=True):
                acc += p * _scatter(msg.blocks[name], "w", param)
            new[name] = acc
        self._set_global(new)


class TopKServer(_Server):
    """The server of FedAvg with top-k sparsified uplink [1, 2].

    Broadcasts the dense float32 model; the global model moves by the data-size-weighted
    average of the clients' sparse updates (an entry a client did not send counts as 0).

    References

    [1] A. F. Aji, K. Heafield, "Sparse Communication for Distributed Gradient Descent",
        EMNLP 2017.
    [2] S. U. Stich, J.-B. Cordonnier, M. Jaggi, "Sparsified SGD with Memory", NeurIPS 2018.
    """

    method: ClassVar[str] = "fedavg-topk"

    def _check_blocks(self, msg: Message) -> str | None:
        for name, shape in self._layout.shapes.items():
            nnz = self._layout.k(name, self.round) if name in self._layout.weights else None
            reason = _check_block(msg.blocks[name], shape, ("delta",), nnz=nnz)
            if reason is not None:
                return f"block {name!r}: {reason}"
        return None

    def _merge(self, replies: Sequence[Message], weights: Sequence[float]) -> None:
        new = {}
        for name, param in self._params.items():
            step = torch.zeros_like(param)
            for msg, p in zip(replies, weights, strict=True):
                step += p * _scatter(msg.blocks[name], "delta", param)
            new[name] = param.detach() + step
        self._set_global(new)


class STCServer(_Server):
    """The server of Sparse Ternary Compression [1], downlink compressed too.

    The accepted ternary updates are averaged (data-size weights) and added to the server's
    residual; each weight tensor of that is cut to its top ``k`` and ternarised again, 1-D
    parameters are rounded to the value dtype, the remainder is the new residual. The global
    model moves by that update, and the next broadcast sends it (``"stc/update"``: mask, sign
    bits, ``"mu/<name>"``, dense 1-D ``"delta"``, scalar ``"base_round"``) to every client
    whose reply in the previous round was accepted: they hold the previous global model.
    Every other client (never served, skipped a round, its reply lost or refused) is stale and
    gets the dense float32 model (``"stc/model"``); :attr:`dense_resyncs` counts those. The
    round of each client's last accepted reply is kept in :attr:`last_synced`.

    References

    [1] F. Sattler, S. Wiedemann, K.-R. Müller, W. Samek, "Robust and Communication-Efficient
        Federated Learning From Non-i.i.d. Data", IEEE TNNLS, 2019, Algorithm 2.
    """

    method: ClassVar[str] = "stc"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._residual = {n: torch.zeros_like(p.detach()) for n, p in self._params.items()}
        #: the update of the last aggregate, in wire form (``None``: no update to send)
        self._update: dict[str, Any] | None = None
        #: ``{client id: round of its last accepted reply}``
        self.last_synced: dict[int, int] = {}
        #: how many dense models were sent to stale clients after round 0 (in round 0 every
        #: client gets the dense model: there is no update yet)
        self.dense_resyncs = 0

    def _is_synced(self, client: int) -> bool:
        return self._update is not None and self.last_synced.get(client) == self.round - 1

    def _downlink(self, client: int) -> bytes:
        if not self._is_synced(client):
            if self.round > 0:
                self.dense_resyncs += 1
            return self._dense_model(client)
        assert self._update is not None
        blocks: dict[str, Block] = {}
        for name, shape in self._layout.shapes.items():
            if name in self._layout.weights:
                blocks[name] = Block(
                    shape,
                    self._update["mask"][name],
                    {"sign": self._update["sign"][name]},
                    sign_fields=("sign",),
                )
            else:
                blocks[name] = Block(shape, None, {"delta": self._update["dense"][name]})
        scalars: dict[str, float | int] = {"base_round": self.round - 1}
        scalars.update({f"mu/{n}": float(mu) for n, mu in self._update["mu"].items()})
        msg = Message("stc/update", self.round, client, blocks, scalars)
        return encode_message(msg, codec=self._codec, value_dtype=self._value_dtype)

    def _check_blocks(self, msg: Message) -> str | None:
        update = _read_ternary(msg, self._layout, self._params, round_=self.round)
        return update if isinstance(update, str) else None

    def _merge(self, replies: Sequence[Message], weights: Sequence[float]) -> None:
        updates = [
            _read_ternary(msg, self._layout, self._params, round_=self.round) for msg in replies
        ]
        wire: dict[str, Any] = {"mask": {}, "sign": {}, "mu": {}, "dense": {}}
        new = {}
        for name, param in self._params.items():
            acc = torch.zeros_like(param)
            for update, p in zip(updates, weights, strict=True):
                assert not isinstance(update, str)
                acc += p * update[name]
            acc = acc + self._residual[name]
            if name in self._layout.weights:
                mask, signs, mu, step = _ternarise(acc, self._layout.k(name, self.round))
                wire["mask"][name], wire["sign"][name], wire["mu"][name] = mask, signs, mu
            else:
                step = _round_to(acc, self._value_dtype)
                wire["dense"][name] = step.flatten()
            self._residual[name] = acc - step
            new[name] = param.detach() + step
        self._set_global(new)
        self._update = wire

    def _after_round(self, report: AggregateReport) -> None:
        if not report.accepted:
            self._update = None  # nobody holds the previous model now: all get it dense
        for client in report.accepted:
            self.last_synced[client] = self.round

    def density_down(self) -> float:
        """Fraction of the weight entries of the next sparse update (1 while none exists).

        Stale clients get the dense model (1.0) whatever this says.
        """
        if self._update is None or self._layout.weight_entries == 0:
            return 1.0
        sent = sum(int(m.sum()) for m in self._update["mask"].values())
        return sent / self._layout.weight_entries

    def _extra_state(self) -> dict[str, Any]:
        return {
            "residual": {n: t.clone() for n, t in self._residual.items()},
            "update": copy.deepcopy(self._update),
            "last_synced": dict(self.last_synced),
            "dense_resyncs": self.dense_resyncs,
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._residual = {n: t.detach().clone() for n, t in state["residual"].items()}
        self._update = copy.deepcopy(state["update"])
        self.last_synced = {int(c): int(r) for c, r in state["last_synced"].items()}
        self.dense_resyncs = int(state["dense_resyncs"])


_CLASSES: dict[str, tuple[type[_Server], type[_Client]]] = {
    "fedavg": (FedAvgServer, FedAvgClient),
    "fedavg-topk": (TopKServer, TopKClient),
    "stc": (STCServer, STCClient),
}


def make_baseline(
    method: str,
    net: nn.Module,
    client_data: Sequence[tuple[Tensor, Tensor]],
    *,
    local_epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    density: float | Sequence[float] | None = None,
    codec: str = "auto",
    value_dtype: str | torch.dtype = "float16",
) -> tuple[FederatedServer, list[FederatedClient]]:
    """Build a baseline's server and its clients (ids ``0..K-1``, in ``client_data`` order).

    ``net`` is deep-copied for the server and for every client; the server's copy is rounded
    to float32 (the dense downlink's grid) and is the global model of round 0.

    Example::

        >>> net = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(64,))
        >>> server, clients = make_baseline("stc", net, [(x0, y0), (x1, y1)], local_epochs=1,
        ...                                 batch_size=32, lr=3e-3, seed=0, density=0.1)
        >>> payloads = server.broadcast([0, 1])
        >>> report = server.aggregate({c: clients[c].train(p) for c, p in payloads.items()})

    :param str method: one of :data:`BASELINES`.
    :param torch.nn.Module net: a plain torch network (parameters only, no buffers).
    :param client_data: ``(inputs, labels)`` per client.
    :param int local_epochs: passes over a client's data per round.
    :param int batch_size: minibatch size of the local training.
    :param float lr: Adam's learning rate.
    :param int seed: seeds every client's data order (see :func:`client_seed`).
    :param density: the fraction of each weight tensor's entries a sparse update keeps, in
        (0, 1], or one value per round (the last repeats); needed by ``"fedavg-topk"`` and
        ``"stc"``, ignored by ``"fedavg"``.
    :param str codec: the index codec of sparse blocks (one of
        :data:`~pyro_dturbo.federation.codec.CODECS`).
    :param value_dtype: the dtype sparse and compressed values travel in (dense models are
        always float32).
    :type value_dtype: str or torch.dtype
    :returns: ``(server, clients)``.
    :raises ValueError: naming the argument, on an unknown ``method``, a missing or
        out-of-range ``density``, an unknown ``codec``, a bad ``value_dtype``, non-positive
        ``local_epochs`` / ``batch_size`` / ``lr``, no clients, or a network with buffers.
    """
    if method not in _CLASSES:
        raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(BASELINES)}")
    densities = _densities(method, density)
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {list(CODECS)}, got {codec!r}")
    dtype = _resolve_dtype(value_dtype)
    _check_int("local_epochs", local_epochs)
    _check_int("batch_size", batch_size)
    if not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if len(client_data) == 0:
        raise ValueError("client_data must hold at least one client")
    if any(True for _ in net.buffers()):
        raise ValueError("the baselines federate parameters only; the network has buffers")
    server_cls, client_cls = _CLASSES[method]
    options: dict[str, Any] = {"densities": densities, "codec": codec, "value_dtype": dtype}
    server = server_cls(copy.deepcopy(net), len(client_data), **options)
    clients: list[FederatedClient] = [
        client_cls(
            cid,
            copy.deepcopy(net),
            x,
            y,
            local_epochs=local_epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            **options,
        )
        for cid, (x, y) in enumerate(client_data)
    ]
    return server, clients
