"""The in-process engine: every client and the server in one process, bytes counted.

:func:`run_federated` builds the data, the partition and, for every method of the config, a
server and its clients (:mod:`~pyro_dturbo.federation.server` /
:mod:`~pyro_dturbo.federation.client` for D-Turbo-VBI,
:mod:`~pyro_dturbo.federation.baselines` for FedAvg, top-k and STC), and runs the rounds:
draw the participating clients, broadcast, train each, inject faults (a reply lost, or
corrupted: NaN, a wrong shape, a negative variance), aggregate (the server rejects what is
corrupt), evaluate the global model on the held-out set. Bytes are the lengths of the payloads
produced; a message to ``K`` clients counts ``K`` times. With an ``out`` folder a checkpoint is
written after every round and a run resumes from it, reproducing the uninterrupted run.

Clients share nothing: there is no global state (no Pyro param store, no global RNG, no
default dtype), so all of them live in one process.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_dturbo.compression.cost import count_macs
from pyro_dturbo.compression.export import export_compact
from pyro_dturbo.data import ClassificationData, load_dataset, partition
from pyro_dturbo.federation.base import FederatedClient, FederatedServer, RoundRecord
from pyro_dturbo.federation.baselines import make_baseline
from pyro_dturbo.federation.client import DTurboClient
from pyro_dturbo.federation.codec import decode_message, encode_message
from pyro_dturbo.federation.config import CORRUPTIONS, FederatedConfig
from pyro_dturbo.federation.server import DTurboServer
from pyro_dturbo.inference.network import NetworkConfig, evaluate_accuracy
from pyro_dturbo.models.layers import sparse_layers, to_sparse_bayes
from pyro_dturbo.models.zoo import build_model

__all__ = [
    "MethodResult",
    "FederatedResult",
    "run_federated",
    "build_method",
    "load_federated_data",
    "corrupt_reply",
    "RoundDriver",
    "final_summary",
    "method_densities",
    "method_order",
]

FLAT_MODELS = ("mlp", "lenet300100")


@dataclass
class MethodResult:
    """One method's run: per-round records, the final summary and the final compact model.

    :ivar list rounds: :class:`~pyro_dturbo.federation.base.RoundRecord` per round.
    :ivar dict final: ``accuracy``, ``density``, ``flops_dense``, ``flops_compressed``,
        ``bytes_up``, ``bytes_down``.
    :ivar model: the final global model, compact (pruned units removed; plain PyTorch).
    :ivar support: ``q(s = 1) > 0.5`` per layer (D-Turbo-VBI), else ``None``.
    """

    name: str
    rounds: list[RoundRecord]
    final: dict[str, Any]
    model: nn.Module
    support: dict[str, Tensor] | None = None

    def __repr__(self) -> str:
        f = self.final
        return (
            f"MethodResult({self.name!r}, rounds={len(self.rounds)}, "
            f"accuracy={f['accuracy']:.4f}, density={f['density']:.4f}, "
            f"MB up={f['bytes_up'] / 1e6:.3f}, MB down={f['bytes_down'] / 1e6:.3f})"
        )


@dataclass
class FederatedResult:
    """All methods of one :func:`run_federated` call; :meth:`report` is ``report.json``."""

    config: FederatedConfig
    methods: dict[str, MethodResult] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "methods": {
                name: {"rounds": [r.to_dict() for r in m.rounds], "final": dict(m.final)}
                for name, m in self.methods.items()
            },
        }

    def __repr__(self) -> str:
        inner = ", ".join(repr(m) for m in self.methods.values())
        return f"FederatedResult({self.config.dataset}, {self.config.clients} clients: {inner})"


def load_federated_data(config: FederatedConfig) -> tuple[ClassificationData, list[Tensor]]:
    """The data set (train / held-out split by ``seed``) and the clients' index sets."""
    data = load_dataset(
        config.dataset,
        seed=config.seed,
        test_fraction=config.test_fraction,
        flatten=config.model in FLAT_MODELS,
    )
    if config.clients > len(data.y_train):
        raise ValueError(
            f"FederatedConfig.clients: {config.clients} clients for {len(data.y_train)} examples"
        )
    parts = partition(data.y_train, config.clients, seed=config.seed, **config.partition_kwargs())
    return data, parts


def _plain_model(config: FederatedConfig, data: ClassificationData) -> nn.Module:
    kwargs: dict[str, Any] = {"hidden": tuple(config.hidden)} if config.model == "mlp" else {}
    with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
        torch.manual_seed(config.seed)
        net = build_model(
            config.model, input_shape=data.input_shape, num_classes=data.num_classes, **kwargs
        )
    return net.to(dtype=data.x_train.dtype)


def build_method(
    name: str,
    config: FederatedConfig,
    data: ClassificationData,
    parts: Sequence[Tensor],
    density: float | Sequence[float] | None = None,
) -> tuple[FederatedServer, list[FederatedClient]]:
    """The server and the clients of one method (all start from the same initial network)."""
    plain = _plain_model(config, data)
    shards = [(data.x_train[idx], data.y_train[idx]) for idx in parts]
    if name in ("fedavg", "fedavg-topk", "stc"):
        return make_baseline(
            name,
            plain,
            shards,
            local_epochs=config.local_epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            density=None if name == "fedavg" else density,
            codec=config.codec,
            value_dtype=config.value_dtype,
        )
    prior = config.sparse_prior(independent=name == "dturbo-independent")
    aggregation = "moment_average" if name == "dturbo-moment" else config.aggregation
    net = to_sparse_bayes(plain, init_scale=config.init_scale)
    server = DTurboServer(
        net,
        prior,
        [len(idx) for idx in parts],
        aggregation=aggregation,
        site_step=config.site_step,
        init_precision=config.init_precision,
        warmup_rounds=config.warmup_rounds,
        freeze_round=config.freeze_round,
        codec=config.codec,
        value_dtype=config.value_dtype,
    )
    base = NetworkConfig(
        batch_size=config.batch_size, lr=config.lr, init_precision=config.init_precision
    )
    clients: list[FederatedClient] = [
        DTurboClient(
            k,
            net,
            prior,
            x,
            y,
            local_epochs=config.local_epochs,
            config=base.replace(seed=config.seed + k),
            codec=config.codec,
            value_dtype=config.value_dtype,
            site=config.site,
        )
        for k, (x, y) in enumerate(shards)
    ]
    return server, clients


def corrupt_reply(
    payload: bytes, kind: str, codec: str, value_dtype: str, generator: torch.Generator
) -> bytes:
    """A reply spoilt as a faulty client would send it: ``"nan"`` (a NaN among the values),
    ``"shape"`` (a block one column wider) or ``"variance"`` (negative variances, sent
    without the log encoding; a message without variances gets a NaN instead)."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {list(CORRUPTIONS)}, got {kind!r}")
    message = decode_message(payload)
    # a value that can hold a NaN: not a sign field (those are +-1 by construction)
    candidates = [
        (n, f)
        for n, b in message.blocks.items()
        for f, v in b.values.items()
        if f not in b.sign_fields and v.numel()
    ]
    weights = [c for c in candidates if len(message.blocks[c[0]].shape) >= 2]
    pool = weights or candidates
    if kind == "nan" and not pool:
        kind = "shape"
    if pool:
        name, field_name = pool[int(torch.randint(len(pool), (1,), generator=generator))]
    else:
        name, field_name = next(iter(message.blocks)), ""
    block = message.blocks[name]
    if kind == "variance" and "variance" not in block.values:
        kind = "nan"
    if kind == "nan":
        values = block.values[field_name].clone()
        values[int(torch.randint(values.numel(), (1,), generator=generator))] = math.nan
        block.values[field_name] = values
    if kind == "variance":
        block.values["variance"] = -block.values["variance"].abs() - 1e-3
        block.log_fields = tuple(f for f in block.log_fields if f != "variance")
    if kind == "shape" and block.mask is None and block.known_mask:
        block.shape = (block.shape[0], math.prod(block.shape[1:]) + 1)  # the values stay
    elif kind == "shape":
        rows, cols = block.shape[0], math.prod(block.shape[1:])
        mask = block.mask if block.mask is not None else torch.ones(rows, cols, dtype=torch.bool)
        wider = torch.zeros(rows, cols + 1, dtype=torch.bool)
        wider[:, :cols] = mask.reshape(rows, cols)
        block.shape, block.mask = (rows, cols + 1), wider
    return encode_message(message, codec, value_dtype)


def final_summary(
    name: str, server: FederatedServer, data: ClassificationData, records: list[RoundRecord]
) -> tuple[dict[str, Any], nn.Module, dict[str, Tensor] | None]:
    net = server.global_model()
    layers = list(sparse_layers(net))
    support = None
    compact: nn.Module
    if layers:
        support = {
            n: (layer.mask if layer.mask is not None else torch.ones_like(layer.weight_loc)).bool()
            for n, layer in layers
        }
        kept = sum(int(m.sum()) for m in support.values())
        density = kept / sum(m.numel() for m in support.values())
        compact = export_compact(net, data.input_shape)
    else:
        weights = [p for p in net.parameters() if p.dim() >= 2]
        density = sum(int((p != 0).sum()) for p in weights) / sum(p.numel() for p in weights)
        compact = copy.deepcopy(net).eval()
    final = {
        "accuracy": evaluate_accuracy(net, data.x_test, data.y_test),
        "density": density,
        "flops_dense": 2 * count_macs(net, data.input_shape),
        "flops_compressed": 2 * count_macs(compact, data.input_shape),
        "bytes_up": int(sum(r.bytes_up for r in records)),
        "bytes_down": int(sum(r.bytes_down for r in records)),
    }
    return final, compact, support


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the last checkpoint whole


class RoundDriver:
    """The engine-free part of a method's rounds: who takes part, which replies the simulated
    faults spoil, and the round's record. Both engines (in process and Flower) drive a round
    through it, so the same seed draws the same clients and the same faults in both.

    :param str name: the method. :param FederatedConfig config: the experiment.
    :param FederatedServer server: the method's server. :param int num_clients: ``K``.
    """

    def __init__(
        self, name: str, config: FederatedConfig, server: FederatedServer, num_clients: int
    ):
        self.name, self.config, self.server = name, config, server
        self.num_clients = int(num_clients)
        self.select = torch.Generator().manual_seed(config.seed)
        self.faults = torch.Generator().manual_seed(config.seed + 1)
        self.records: list[RoundRecord] = []
        self.per_round = max(1, round(config.participation * self.num_clients))
        self.dropout = config.faults.get("dropout", 0.0)
        self.corrupt = config.faults.get("corrupt", 0.0)
        self._round: dict[str, Any] = {}

    def start_round(self) -> dict[int, bytes]:
        """Draw this round's clients and return the server's payload for each."""
        chosen = sorted(
            torch.randperm(self.num_clients, generator=self.select)[: self.per_round].tolist()
        )
        density_down = self.server.density_down()
        payloads = self.server.broadcast(chosen)
        self._round = {"t0": time.perf_counter(), "chosen": chosen, "density_down": density_down}
        self._round["payloads"] = payloads
        return payloads

    def finish_round(
        self, replies: Mapping[int, bytes], evaluate: Callable[[nn.Module], float]
    ) -> RoundRecord:
        """Apply the simulated faults to the replies that came back, aggregate, evaluate.

        A chosen client without a reply (lost on the way, a node down) counts as dropped.
        """
        if not self._round:
            raise RuntimeError("finish_round() without start_round()")
        chosen, payloads = self._round["chosen"], self._round["payloads"]
        kept: dict[int, bytes] = {}
        dropped = corrupted = 0
        for k in chosen:
            u = float(torch.rand((), generator=self.faults))
            if u < self.dropout or k not in replies:
                dropped += 1
                continue
            reply = replies[k]
            if u < self.dropout + self.corrupt:
                kinds = CORRUPTIONS
                kind = kinds[int(torch.randint(len(kinds), (1,), generator=self.faults))]
                cfg = self.config
                reply = corrupt_reply(reply, kind, cfg.codec, cfg.value_dtype, self.faults)
                corrupted += 1
            kept[k] = reply
        report = self.server.aggregate(kept)
        accuracy = evaluate(self.server.global_model())
        record = RoundRecord(
            round=len(self.records) + 1,
            accuracy=accuracy,
            bytes_up=int(sum(len(p) for p in kept.values())),
            bytes_down=int(sum(len(p) for p in payloads.values())),
            density_up=float(report.density_up),
            density_down=float(self._round["density_down"]),
            dropped=dropped,
            rejected=len(report.rejected),
            corrupted=corrupted,
            time_s=time.perf_counter() - self._round["t0"],
        )
        self.records.append(record)
        self._round = {}
        return record

    def state_dict(self) -> dict[str, Any]:
        """The server's state, the generators and the records (a checkpoint's server half)."""
        return {
            "server": self.server.state_dict(),
            "select": self.select.get_state(),
            "faults": self.faults.get_state(),
            "records": [x.to_dict() for x in self.records],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.server.load_state_dict(state["server"])
        self.select.set_state(state["select"])
        self.faults.set_state(state["faults"])
        self.records = [RoundRecord(**r) for r in state["records"]]


def method_densities(
    config: FederatedConfig, done: Mapping[str, MethodResult]
) -> float | list[float] | None:
    """The top-k / STC density for the next method: ``config.baselines.density`` if set, else
    D-Turbo-VBI's upload density per round in this run (``done``), else 0.05."""
    density: float | list[float] | None = config.baselines.get("density")
    if density is not None:
        return density
    source = done.get("dturbo") or next(iter(done.values()), None)
    if source is None:
        return 0.05
    return [r.density_up if r.density_up > 0 else 1.0 for r in source.rounds]


def method_order(config: FederatedConfig) -> list[str]:
    """D-Turbo-VBI methods first, so the baselines can match their upload density."""
    return sorted(config.methods, key=lambda m: not m.startswith("dturbo"))


def run_method(
    name: str,
    config: FederatedConfig,
    data: ClassificationData,
    parts: Sequence[Tensor],
    *,
    density: float | Sequence[float] | None = None,
    checkpoint: Path | None = None,
    progress_bar: bool = True,
    hook_fn: Callable[[str, RoundRecord], None] | None = None,
) -> MethodResult:
    """Run one method for ``config.rounds`` rounds (resuming from ``checkpoint`` if it exists)."""
    server, clients = build_method(name, config, data, parts, density)
    driver = RoundDriver(name, config, server, len(clients))
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        driver.load_state_dict(state)
        for client, client_state in zip(clients, state["clients"], strict=True):
            client.load_state_dict(client_state)
    bar = tqdm(
        range(len(driver.records), config.rounds),
        desc=name,
        disable=not progress_bar,
        leave=False,
        initial=len(driver.records),
        total=config.rounds,
    )
    for _ in bar:
        payloads = driver.start_round()
        replies = {k: clients[k].train(p) for k, p in payloads.items()}
        record = driver.finish_round(
            replies, lambda net: evaluate_accuracy(net, data.x_test, data.y_test)
        )
        if checkpoint is not None:
            _save(checkpoint, {**driver.state_dict(), "clients": [c.state_dict() for c in clients]})
        bar.set_postfix(**progress_fields(driver.records, server.density_down()))
        if hook_fn is not None:
            hook_fn(name, record)
    bar.close()
    final, compact, support = final_summary(name, server, data, driver.records)
    return MethodResult(name, driver.records, final, compact, support)


def progress_fields(records: Sequence[RoundRecord], density: float) -> dict[str, str]:
    """What a progress bar shows after a round."""
    return {
        "acc": f"{records[-1].accuracy:.3f}",
        "up": f"{sum(x.bytes_up for x in records) / 1e6:.2f}MB",
        "down": f"{sum(x.bytes_down for x in records) / 1e6:.2f}MB",
        "density": f"{density:.3f}",
    }


def run_federated(
    config: FederatedConfig,
    out: str | Path | None = None,
    *,
    progress_bar: bool = True,
    resume: bool = True,
    hook_fn: Callable[[str, RoundRecord], None] | None = None,
) -> FederatedResult:
    """Run every method of ``config`` in process and return their records.

    D-Turbo-VBI methods run first, so top-k and STC can use D-Turbo-VBI's upload density of
    the same run (per round) when ``config.baselines.density`` is not set.

    :param FederatedConfig config: the experiment.
    :param out: a folder for per-round checkpoints (``out/checkpoints/<method>.pt``); with
        ``resume=True`` a run continues from them.
    :param bool progress_bar: one tqdm bar per method over rounds.
    :param hook_fn: called as ``hook_fn(method, record)`` after every round.
    :returns: a :class:`FederatedResult`.

    Example::

        >>> config = FederatedConfig(rounds=10, methods=["dturbo", "fedavg"])
        >>> result = run_federated(config)
        >>> result.methods["dturbo"].final["accuracy"], result.methods["dturbo"].model
    """
    if not isinstance(config, FederatedConfig):
        raise ValueError(f"config must be a FederatedConfig, got {type(config).__name__}")
    folder = None
    if out is not None:
        folder = Path(out) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
    data, parts = load_federated_data(config)
    result = FederatedResult(config)
    for name in method_order(config):
        checkpoint = folder / f"{name}.pt" if folder is not None else None
        if checkpoint is not None and not resume and checkpoint.exists():
            checkpoint.unlink()
        result.methods[name] = run_method(
            name,
            config,
            data,
            parts,
            density=method_densities(config, result.methods),
            checkpoint=checkpoint,
            progress_bar=progress_bar,
            hook_fn=hook_fn,
        )
    result.methods = {name: result.methods[name] for name in config.methods}
    return result
