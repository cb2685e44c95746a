"""The D-Turbo-VBI server: reply validation (a bad reply changes nothing), dropped clients,
the active set on the wire, byte counts, and checkpoints."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch

from pyro_dturbo.federation.codec import decode_message, encode_message
from pyro_dturbo.federation.server import DOWN, UP, DTurboServer
from pyro_dturbo.federation.simulation import corrupt_reply
from tests.federation.common import (
    PRIOR,
    assert_identical,
    full_round,
    make_federation,
    one_thread,
    sparse_mlp,
    train_round,
    twin,
)

LOGGER = "pyro_dturbo.federation"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _reencode(payload: bytes, change) -> bytes:
    message = decode_message(payload)
    change(message)
    return encode_message(message, "auto", "float64")


def _nan_mean(payload: bytes) -> bytes:
    def change(message):
        block = next(b for b in message.blocks.values() if "variance" in b.values)
        block.values["mean"][3] = math.nan

    return _reencode(payload, change)


def _wrong_examples(payload: bytes) -> bytes:
    def change(message):
        message.scalars["num_examples"] = int(message.scalars["num_examples"]) + 1

    return _reencode(payload, change)


def _wrong_kind(payload: bytes) -> bytes:
    def change(message):
        message.kind = DOWN

    return _reencode(payload, change)


def _corrupt(kind):
    def spoil(payload: bytes) -> bytes:
        return corrupt_reply(payload, kind, "auto", "float64", torch.Generator().manual_seed(1))

    return spoil


#: how a reply is spoilt, and a word its rejection reason must contain
SPOILERS = {
    "nan": (_nan_mean, "NaN"),
    "shape": (_corrupt("shape"), "shape"),
    "variance": (_corrupt("variance"), "variance"),
    "corrupt-nan": (_corrupt("nan"), "NaN"),
    "garbage": (lambda p: b"\x00garbage\xff" * 7, "undecodable"),
    "truncated": (lambda p: p[: len(p) // 2], "undecodable"),
    "num_examples": (_wrong_examples, "num_examples"),
    "kind": (_wrong_kind, "kind"),
}


@pytest.fixture(scope="module")
def federation():
    """A server past its warm-up round (product merge), its clients, and the replies of
    round 1 (trained once for every test of this module)."""
    server, clients = make_federation(warmup_rounds=1)
    full_round(server, clients)
    assert server.round == 1 and not server._moment_round()
    payloads, replies = train_round(server, clients)
    return server, clients, payloads, replies


def _check_rejected(caplog, report, k, word):
    assert k in report.rejected, report
    assert word.lower() in report.rejected[k].lower(), report.rejected[k]
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert any(f"client {k}" in r.getMessage() and "rejected" in r.getMessage() for r in warnings)


def _sites_unchanged(server, reference, k):
    """Client ``k``'s site as in ``reference`` where its weights are still in the network (the
    closed-form step may prune weights, whose sites restart flat)."""
    for name, st in server.state.items():
        active = st["active"]
        for key in ("site_precision", "site_eta"):
            old = reference["layers"][name][key][k]
            assert torch.equal(st[key][k][active], old[active])
            assert not st[key][k][~active].any()


# -- a bad reply changes nothing -------------------------------------------------------------
@pytest.mark.parametrize("spoiler", sorted(SPOILERS))
def test_bad_reply_is_rejected_and_changes_nothing(federation, caplog, spoiler):
    server, _, _, replies = federation
    spoil, word = SPOILERS[spoiler]
    a, b, c = twin(server), twin(server), twin(server)
    bad = spoil(replies[2])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = a.aggregate({0: replies[0], 1: replies[1], 2: bad})
    reference = b.aggregate({0: replies[0], 1: replies[1]})
    _check_rejected(caplog, report, 2, word)
    assert report.accepted == reference.accepted == [0, 1]
    assert report.density_up == reference.density_up
    assert_identical(a.state_dict(), b.state_dict())
    # the bad reply alone: as a round without replies
    caplog.clear()
    d = twin(server)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = d.aggregate({2: bad})
    _check_rejected(caplog, report, 2, word)
    assert report.accepted == [] and report.density_up == 0.0
    c.aggregate({})
    assert_identical(d.state_dict(), c.state_dict())
    _sites_unchanged(d, server.state_dict(), 2)


def test_unknown_client_id_is_rejected(federation, caplog):
    server, _, _, replies = federation
    a, b = twin(server), twin(server)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = a.aggregate({0: replies[0], 1: replies[1], 2: replies[2], 7: replies[2]})
    b.aggregate(dict(replies))
    _check_rejected(caplog, report, 7, "client 7")
    assert report.accepted == [0, 1, 2]
    assert_identical(a.state_dict(), b.state_dict())
    c, d = twin(server), twin(server)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = c.aggregate({7: replies[2]})
    d.aggregate({})
    _check_rejected(caplog, report, 7, "client 7")
    assert_identical(c.state_dict(), d.state_dict())
    with pytest.raises(ValueError, match="unknown client"):
        twin(server).broadcast([0, 3])


def test_client_not_sent_a_payload_is_rejected(federation, caplog):
    server, _, _, replies = federation
    # round 1 broadcast to clients 0 and 1 only; client 2's (well-formed) reply arrives anyway
    a, b, c, d = twin(server), twin(server), twin(server), twin(server)
    for s in (a, b, c, d):
        s.broadcast([0, 1])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = a.aggregate(dict(replies))
    b.aggregate({0: replies[0], 1: replies[1]})
    _check_rejected(caplog, report, 2, "not sent")
    assert_identical(a.state_dict(), b.state_dict())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = c.aggregate({2: replies[2]})
    d.aggregate({})
    _check_rejected(caplog, report, 2, "not sent")
    assert_identical(c.state_dict(), d.state_dict())


def test_reply_delivered_as_another_client_is_rejected(federation, caplog):
    server, _, _, replies = federation
    a, b = twin(server), twin(server)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = a.aggregate({0: replies[0], 1: replies[1], 2: replies[0]})
    b.aggregate({0: replies[0], 1: replies[1]})
    _check_rejected(caplog, report, 2, "delivered as")
    assert_identical(a.state_dict(), b.state_dict())


def test_stale_reply_is_rejected(caplog):
    server, clients = make_federation(warmup_rounds=1)
    full_round(server, clients)
    _, old = train_round(server, clients)  # round 1 replies
    full_round(server, clients)  # round 1 happens with fresh replies
    assert server.round == 2
    payloads, replies = train_round(server, clients)
    a, b, c, d = twin(server), twin(server), twin(server), twin(server)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = a.aggregate({0: replies[0], 1: replies[1], 2: old[2]})
    b.aggregate({0: replies[0], 1: replies[1]})
    _check_rejected(caplog, report, 2, "stale")
    assert_identical(a.state_dict(), b.state_dict())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = c.aggregate({2: old[2]})
    d.aggregate({})
    _check_rejected(caplog, report, 2, "stale")
    assert_identical(c.state_dict(), d.state_dict())


def test_reply_after_the_round_closed_is_rejected(federation, caplog):
    """A reply delivered twice: the second time the server is a round further."""
    server, _, _, replies = federation
    a = twin(server)
    a.aggregate(dict(replies))
    a.broadcast([0, 1, 2])
    b = twin(a)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = a.aggregate({1: replies[1]})
    b.aggregate({})
    _check_rejected(caplog, report, 1, "stale")
    assert_identical(a.state_dict(), b.state_dict())


def test_valid_replies_are_accepted_without_warnings(federation, caplog):
    server, _, _, replies = federation
    a = twin(server)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = a.aggregate(dict(replies))
    assert report.accepted == [0, 1, 2] and not report.rejected
    assert not [r for r in caplog.records if r.name == LOGGER]
    assert 0 < report.density_up <= 1
    assert a.round == server.round + 1


# -- dropped clients -------------------------------------------------------------------------
def test_dropped_client_keeps_its_last_site(federation):
    server, _, _, replies = federation
    a = twin(server)
    before = server.state_dict()["layers"]
    a.aggregate({0: replies[0], 2: replies[2]})  # client 1 dropped
    changed = {0: False, 2: False}
    for name, st in a.state.items():
        active = st["active"]
        for key in ("site_precision", "site_eta"):
            # the dropped client: its site as it was wherever the weight is still in the network
            assert torch.equal(st[key][1][active], before[name][key][1][active])
            assert not st[key][1][~active].any()
        for k in changed:
            changed[k] |= not torch.equal(
                st["site_precision"][k][active], before[name]["site_precision"][k][active]
            )
    assert all(changed.values()), changed


def test_no_reply_at_all_keeps_every_site(federation):
    server, _, _, _ = federation
    a = twin(server)
    before = server.state_dict()["layers"]
    report = a.aggregate({})
    assert report.accepted == [] and not report.rejected
    for name, st in a.state.items():
        active = st["active"]
        for key in ("site_precision", "site_eta"):
            assert torch.equal(st[key][:, active], before[name][key][:, active])


# -- the active set on the wire ---------------------------------------------------------------
def test_density_down_is_the_active_fraction_and_payloads_shrink():
    server, clients = make_federation()
    assert server.density_down() == 1.0
    full = server.broadcast([0, 1, 2])
    gen = torch.Generator().manual_seed(11)
    names = list(server.state)
    masks = {}
    for name in names:
        shape = server.state[name]["active"].shape
        masks[name] = torch.rand(shape, generator=gen) < 0.4
        server.state[name]["active"] = masks[name].clone()
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert server.density_down() == kept / total
    assert 0.2 < server.density_down() < 0.6
    sparse = server.broadcast([0, 1, 2])
    for k in range(3):
        assert len(sparse[k]) < len(full[k])
        message = decode_message(sparse[k])
        for name in names:
            block = message.blocks[name]
            assert torch.equal(block.mask, masks[name])
            assert all(v.numel() == int(masks[name].sum()) for v in block.values.values())
    # fewer still: shorter again; a client replies on the active set only
    for name in names:
        half = torch.rand(masks[name].shape, generator=gen) < 0.5
        server.state[name]["active"] = masks[name] & half
    sparser = server.broadcast([0, 1, 2])
    assert server.density_down() < 0.6 * kept / total
    assert all(len(sparser[k]) < len(sparse[k]) for k in range(3))
    reply = decode_message(clients[0].train(sparser[0]))
    for name in names:
        assert reply.blocks[name].known_mask  # the reply is on the support sent: no index
        assert torch.equal(clients[0].known[name], server.state[name]["active"])
    assert not full_round(server, clients).rejected


# -- bytes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value_dtype", ["float64", "float16"])
def test_payload_bytes_are_the_encoded_message_per_client(value_dtype):
    server, clients = make_federation(value_dtype=value_dtype)
    payloads = server.broadcast([2, 0, 1])
    assert sorted(payloads) == [0, 1, 2]
    assert len({bytes(p) for p in payloads.values()}) == 3  # one each: their cavities differ
    for k, payload in payloads.items():
        message = decode_message(payload)
        assert (message.kind, message.client, message.round) == (DOWN, k, 0)
        assert len(payload) == len(encode_message(message, "auto", value_dtype))
        reply = clients[k].train(payload)
        back = decode_message(reply)
        assert (back.kind, back.client, back.round) == (UP, k, 0)
        assert back.scalars["num_examples"] == clients[k].num_examples
        assert len(reply) == len(encode_message(back, "auto", value_dtype))
    # a broadcast to one client is one payload
    assert list(twin(server).broadcast([1])) == [1]


# -- checkpoints ------------------------------------------------------------------------------
def test_state_dict_round_trip_through_torch_save(tmp_path):
    server, clients = make_federation(warmup_rounds=1)
    full_round(server, clients)
    full_round(server, clients)
    state = server.state_dict()
    path = tmp_path / "server.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    fresh = DTurboServer(
        sparse_mlp(),
        PRIOR,
        server.client_sizes,
        warmup_rounds=1,
        site_step=server.site_step,
        value_dtype="float64",
    )
    assert fresh.round == 0
    fresh.load_state_dict(loaded)
    assert_identical(fresh.state_dict(), state)
    # and it goes on exactly as the original
    a = server.broadcast([0, 1, 2])
    b = fresh.broadcast([0, 1, 2])
    assert a == b
    replies = {k: clients[k].train(a[k]) for k in a}
    server.aggregate(replies)
    fresh.aggregate(replies)
    assert_identical(fresh.state_dict(), server.state_dict())
    # a bytes buffer works too; the state holds no reference to the live server
    buffer = io.BytesIO()
    torch.save(server.state_dict(), buffer)
    buffer.seek(0)
    snapshot = torch.load(buffer, weights_only=True)
    full_round(server, clients)
    assert snapshot["round"] == server.round - 1


def test_load_state_dict_checks_the_layers():
    server, _ = make_federation()
    other = DTurboServer(sparse_mlp(hidden=(8,)), PRIOR, server.client_sizes)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(server.state_dict())
    state = server.state_dict()
    state["layers"]["extra"] = state["layers"][next(iter(state["layers"]))]
    with pytest.raises(ValueError, match="layers"):
        DTurboServer(sparse_mlp(), PRIOR, server.client_sizes).load_state_dict(state)
