"""What a client already holds is not sent again: the support (index section) once
acknowledged, the prior while it does not change; a client that missed it is sent it again."""

import pytest
import torch

from pyro_dturbo.federation.codec import Block, Message, decode_message, encode_message
from tests.federation.common import make_federation, one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_a_known_mask_block_has_no_index_section():
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    values = {"mean": torch.arange(4.0)}
    explicit = encode_message(Message("k", 0, 0, {"w": Block((2, 4), mask, values)}), "coo")
    known = encode_message(
        Message("k", 0, 0, {"w": Block((2, 4), mask, values, known_mask=True)}), "coo"
    )
    header = int.from_bytes(explicit[4:8], "little")
    header_known = int.from_bytes(known[4:8], "little")
    # 4 int32 indices gone; the header differs only by the codec name ("coo" -> "known")
    assert len(explicit) - header - (len(known) - header_known) == 4 * 4
    assert header_known - header == len("known") - len("coo")
    block = decode_message(known).blocks["w"]
    assert block.mask is None and block.known_mask
    assert torch.equal(block.values["mean"], values["mean"])
    assert len(encode_message(decode_message(known), "coo")) == len(known)  # stable


def _masks(payload: bytes) -> dict[str, bool]:
    message = decode_message(payload)
    return {n: b.known_mask for n, b in message.blocks.items() if not n.endswith(".bias")}


def _fields(payload: bytes) -> dict[str, set[str]]:
    message = decode_message(payload)
    return {n: set(b.values) for n, b in message.blocks.items() if not n.endswith(".bias")}


def test_support_and_prior_are_sent_until_acknowledged():
    # during the warm-up neither the support nor the prior changes
    server, clients = make_federation(aggregation="moment_average", warmup_rounds=3)
    first = server.broadcast([0, 1, 2])
    assert not any(any(_masks(p).values()) for p in first.values())  # nobody holds it yet
    assert all("prior_precision" in f for p in first.values() for f in _fields(p).values())
    replies = {k: clients[k].train(p) for k, p in first.items() if k != 1}  # client 1 is lost
    server.aggregate(replies)
    second = server.broadcast([0, 1, 2])
    # unchanged support and prior: omitted for the clients that acknowledged them
    for k in (0, 2):
        assert all(_masks(second[k]).values())
        assert not any("prior_precision" in f for f in _fields(second[k]).values())
        assert len(second[k]) < len(first[k])
    assert not any(_masks(second[1]).values())  # client 1 never acknowledged: sent again
    assert all("prior_precision" in f for f in _fields(second[1]).values())
    for k in (0, 1, 2):
        clients[k].train(second[k])  # every client can apply what it was sent


def test_a_known_support_the_client_lacks_is_an_error():
    server, clients = make_federation(warmup_rounds=3)
    server.acked = [0] * len(server.acked)  # pretend everyone acknowledged round 0
    server.round = 1
    payload = server.broadcast([0])[0]
    assert all(_masks(payload).values())
    with pytest.raises(ValueError, match="support this client lacks"):
        clients[0].train(payload)


def test_payloads_shrink_once_the_support_is_acknowledged():
    server, clients = make_federation(aggregation="moment_average", warmup_rounds=3)
    sizes = []
    for _ in range(3):
        payloads = server.broadcast([0, 1, 2])
        sizes.append(len(payloads[0]))
        server.aggregate({k: clients[k].train(p) for k, p in payloads.items()})
    # round 0 carries index and prior; later rounds (support and prior unchanged during the
    # warm-up) carry neither
    assert sizes[1] < sizes[0] and sizes[2] == sizes[1]


@pytest.mark.parametrize("kind", ["shape", "nan", "variance"])
def test_corrupt_replies_on_a_pruned_support_are_rejected(kind):
    from pyro_dturbo.federation.simulation import corrupt_reply

    server, clients = make_federation()
    gen = torch.Generator().manual_seed(2)
    for st in server.state.values():
        st["active"] = torch.rand(st["active"].shape, generator=gen) < 0.3
    reply = clients[0].train(server.broadcast([0])[0])
    bad = corrupt_reply(reply, kind, "auto", "float64", torch.Generator().manual_seed(0))
    report = server.aggregate({0: bad})
    assert 0 in report.rejected and not report.accepted
