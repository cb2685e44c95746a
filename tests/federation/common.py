"""Shared helpers of the federation tests: a small sparse MLP on a slice of digits, its clients
and server built directly, and exact comparisons of server states."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pyro_dturbo.data import load_dataset, partition
from pyro_dturbo.federation.client import DTurboClient
from pyro_dturbo.federation.server import DTurboServer
from pyro_dturbo.inference.network import NetworkConfig
from pyro_dturbo.models.layers import to_sparse_bayes
from pyro_dturbo.models.prior import SparsePrior
from pyro_dturbo.models.zoo import build_model

#: the prior of the network tests (inactive variance small enough to prune within a few rounds)
PRIOR = SparsePrior.chain(p01=0.05, p10=0.2, active=(1, 1), inactive=(1, 1e-4))
#: the local training of the network tests
LOCAL = NetworkConfig(batch_size=64, lr=3e-3, seed=3)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (these nets are tiny: more threads only contend on a
    shared machine), restoring the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def _digits():
    return load_dataset("digits", seed=0)


def digits(n: int = 300, dtype: torch.dtype = torch.float64):
    """The first ``n`` training examples of digits (in ``dtype``) and the held-out set."""
    data = _digits()
    x, y = data.x_train[:n].to(dtype), data.y_train[:n].clone()
    return x, y, data.x_test.to(dtype), data.y_test.clone()


def sparse_mlp(
    hidden: Sequence[int] = (16,), seed: int = 0, dtype=torch.float64, init_scale: float = 0.03
) -> nn.Module:
    """A sparse Bayesian MLP on the 64 digits pixels (its own seed; the global RNG is kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        plain = build_model("mlp", input_shape=(64,), num_classes=10, hidden=tuple(hidden))
        net = to_sparse_bayes(plain, init_scale=init_scale)
    return net.to(dtype)


def shards(n: int = 300, clients: int = 3):
    """``[(x_k, y_k)]`` of an IID partition of the first ``n`` examples."""
    x, y, _, _ = digits(n)
    parts = partition(y, clients, seed=0)
    return [(x[idx], y[idx]) for idx in parts]


def make_federation(
    clients: int = 3,
    n: int = 300,
    hidden: Sequence[int] = (16,),
    value_dtype: str = "float64",
    **server_kwargs: Any,
) -> tuple[DTurboServer, list[DTurboClient]]:
    """A D-Turbo-VBI server and its clients on a small MLP (exact float64 payloads)."""
    net = sparse_mlp(hidden)
    data = shards(n, clients)
    server_kwargs.setdefault("value_dtype", value_dtype)
    server_kwargs.setdefault("site_step", 1.0)  # a site is replaced (tests set others)
    server = DTurboServer(net, PRIOR, [len(y) for _, y in data], **server_kwargs)
    members = [
        DTurboClient(
            k,
            net,
            PRIOR,
            x,
            y,
            local_epochs=1,
            config=LOCAL.replace(seed=3 + k),
            value_dtype=value_dtype,
        )
        for k, (x, y) in enumerate(data)
    ]
    return server, members


def train_round(server, clients, ids=None) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Broadcast to ``ids`` (all clients by default) and train them: ``(payloads, replies)``;
    the server is not advanced."""
    ids = list(range(len(clients))) if ids is None else list(ids)
    payloads = server.broadcast(ids)
    replies = {k: clients[k].train(payloads[k]) for k in ids}
    return payloads, replies


def full_round(server, clients, ids=None):
    """One whole round: broadcast, train, aggregate (returns the report)."""
    _, replies = train_round(server, clients, ids)
    return server.aggregate(replies)


def assert_identical(actual: Any, expected: Any, where: str = "state") -> None:
    """Exact equality of nested states: tensors by ``torch.equal`` (dtype and shape too)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{where}: not a tensor"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
        assert torch.equal(actual, expected), f"{where}: values differ"
    elif isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{where}: not a mapping"
        assert set(actual) == set(expected), f"{where}: keys {set(actual)} != {set(expected)}"
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_identical(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def twin(server: DTurboServer) -> DTurboServer:
    """An independent copy of a server (same state, nothing shared)."""
    return copy.deepcopy(server)
