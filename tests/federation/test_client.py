"""The D-Turbo-VBI client, and the equivalence of one client with centralised Turbo-VBI."""

from __future__ import annotations

import copy

import pytest
import torch

from pyro_dturbo.federation.client import DTurboClient
from pyro_dturbo.federation.codec import decode_message
from pyro_dturbo.federation.server import DTurboServer
from pyro_dturbo.inference.network import NetworkConfig, evaluate_accuracy, fit_network
from pyro_dturbo.models.layers import sparse_layers
from tests.common import assert_close
from tests.federation.common import (
    LOCAL,
    PRIOR,
    digits,
    full_round,
    make_federation,
    one_thread,
    sparse_mlp,
    train_round,
)

ROUNDS, WARMUP = 6, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


# -- one client is centralised Turbo-VBI -----------------------------------------------------
@pytest.fixture(scope="module")
def centralised():
    """Centralised Turbo-VBI, pruning after every closed-form step, on 300 digits."""
    x, y, x_test, y_test = digits(300)
    net = sparse_mlp(hidden=(32,), init_scale=1e-3)  # to_sparse_bayes' default sigma
    net_a = copy.deepcopy(net)
    config = NetworkConfig(batch_size=64, lr=3e-3, seed=3)
    fit_network(net_a, x, y, PRIOR, config, epochs=ROUNDS, warmup_epochs=WARMUP, prune="iteration")
    return net, net_a, (x, y, x_test, y_test)


@pytest.mark.float64(reason="centralised and federated runs compared at 1e-10")
@pytest.mark.parametrize("aggregation", ["product", "moment_average"])
def test_one_client_reproduces_centralised_turbo_vbi(centralised, aggregation):
    net, net_a, (x, y, x_test, y_test) = centralised
    net_b = copy.deepcopy(net)
    server = DTurboServer(
        net_b,
        PRIOR,
        [len(y)],
        warmup_rounds=WARMUP,
        value_dtype="float64",
        aggregation=aggregation,
    )
    client = DTurboClient(
        0,
        net_b,
        PRIOR,
        x,
        y,
        local_epochs=1,
        config=NetworkConfig(batch_size=64, lr=3e-3, seed=3),
        value_dtype="float64",
    )
    densities = []
    for _ in range(ROUNDS):
        payload = server.broadcast([0])[0]
        report = server.aggregate({0: client.train(payload)})
        assert report.accepted == [0]
        densities.append(server.density_down())
    # pruning happened within the run, so the equivalence covers it
    assert densities[WARMUP - 1] == 1.0
    assert min(densities) < 0.9
    model = server.global_model()
    layers_a = dict(sparse_layers(net_a))
    layers_b = dict(sparse_layers(model))
    assert list(layers_a) == list(layers_b)
    for name, a in layers_a.items():
        b = layers_b[name]
        support_a, support_b = a.support_probs > 0.5, b.support_probs > 0.5
        assert torch.equal(support_a, support_b), name
        assert 0 < float(support_a.double().mean()) < 1, name
        # the pruned weights are exactly zero on both sides
        assert a.mask is not None and b.mask is not None
        assert torch.equal(a.mask.bool(), support_a) and torch.equal(b.mask.bool(), support_b)
        assert_close(b.weight_loc, a.weight_loc, atol=1e-10, rtol=0, msg=f"{name} mean")
        assert_close(b.weight_variance, a.weight_variance, atol=1e-10, rtol=1e-8, msg=name)
        assert_close(b.support_probs, a.support_probs, atol=1e-8, rtol=0, msg=f"{name} q(s)")
        assert_close(b.prior_precision, a.prior_precision, atol=0, rtol=1e-8, msg=f"{name} E[rho]")
        assert_close(b.bias, a.bias, atol=1e-10, rtol=0, msg=f"{name} bias")
    assert evaluate_accuracy(model, x_test, y_test) == evaluate_accuracy(net_a, x_test, y_test)


# -- clients share nothing -------------------------------------------------------------------
def test_client_never_touches_the_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    server, clients = make_federation()
    full_round(server, clients)
    train_round(server, clients)
    assert torch.equal(torch.get_rng_state(), state)


def test_clients_trained_interleaved_equal_clients_trained_alone():
    server, clients = make_federation()
    alone = [copy.deepcopy(c) for c in clients[:2]]
    payloads, interleaved = [], []
    for _ in range(2):
        p = server.broadcast([0, 1])
        r = {k: clients[k].train(p[k]) for k in (0, 1)}  # 0, 1, 0, 1
        payloads.append(p)
        interleaved.append(r)
        server.aggregate(r)
    torch.manual_seed(999)  # the global generator moved in between: no effect on the clients
    for k in (0, 1):
        for p, r in zip(payloads, interleaved, strict=True):
            assert alone[k].train(p[k]) == r[k]


def test_client_state_dict_resumes_training(tmp_path):
    server, clients = make_federation()
    payload = server.broadcast([0])[0]
    a, b = copy.deepcopy(clients[0]), copy.deepcopy(clients[0])
    first = a.train(payload)
    assert b.train(payload) == first
    # training goes on from the state reached: a second epoch on the same payload differs
    torch.save(a.state_dict(), tmp_path / "client.pt")
    second = a.train(payload)
    assert second != first
    fresh = copy.deepcopy(clients[0])  # never trained
    fresh.load_state_dict(torch.load(tmp_path / "client.pt", weights_only=True))
    assert fresh.train(payload) == second


def test_client_rejects_messages_not_for_it():
    server, clients = make_federation()
    payloads = server.broadcast([0, 1])
    with pytest.raises(ValueError, match="client 1"):
        clients[0].train(payloads[1])
    reply = clients[1].train(payloads[1])
    with pytest.raises(ValueError, match="dturbo/up"):
        clients[1].train(reply)


def test_client_trains_and_replies_on_the_active_set_only():
    server, clients = make_federation()
    gen = torch.Generator().manual_seed(5)
    for st in server.state.values():
        st["active"] = torch.rand(st["active"].shape, generator=gen) < 0.5
    payload = server.broadcast([0])[0]
    reply = decode_message(clients[0].train(payload))
    layers = clients[0].module_a.layers
    for name, st in server.state.items():
        block = reply.blocks[name]
        # the server sent this support: the reply carries no index, only its values
        assert block.mask is None and block.known_mask
        assert torch.equal(clients[0].known[name], st["active"])
        assert block.values["mean"].numel() == int(st["active"].sum())
        assert bool((block.values["variance"] > 0).all())
        # the weights outside the active set are masked out of the client's network
        layer = layers[name]
        assert layer.mask is not None
        assert torch.equal(layer.mask.reshape(st["active"].shape).bool(), st["active"])


def test_client_arguments_are_checked():
    x, y, _, _ = digits(40)
    net = sparse_mlp()
    with pytest.raises(ValueError, match="local_epochs"):
        DTurboClient(0, net, PRIOR, x, y, local_epochs=0, config=LOCAL)
    with pytest.raises(ValueError, match="site"):
        DTurboClient(0, net, PRIOR, x, y, config=LOCAL, site="nope")
