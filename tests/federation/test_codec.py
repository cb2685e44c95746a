import json
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_dturbo.federation.codec import CODECS, Block, Message, decode_message, encode_message

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _bits(values, dtype) -> bytes:
    """The little-endian bit patterns of ``values`` cast (from float64) to ``dtype``."""
    cast = torch.as_tensor(values, dtype=torch.float64).to(dtype)
    ints, little = (torch.int32, "<i4") if dtype == torch.float32 else (torch.int16, "<i2")
    return cast.view(ints).numpy().astype(little).tobytes()


def _header_size(payload: bytes) -> int:
    return struct.unpack_from("<I", payload, 4)[0]


def _header(payload: bytes) -> dict:
    return json.loads(payload[8 : 8 + _header_size(payload)])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    assert a.dtype == b.dtype == torch.float32
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _payload(header: dict, body: bytes = b"", magic: bytes = b"DTM", version: int = 1) -> bytes:
    """A payload built by hand from the documented layout."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return magic + bytes([version]) + struct.pack("<I", len(text)) + text + body


def _decoded_or_none(payload: bytes) -> Message | None:
    """Decode, letting only ValueError through as None: any other exception fails the test."""
    try:
        return decode_message(payload)
    except ValueError:
        return None


# The hand-counted message: a 2x4 layer with 3 kept entries in 2 runs (COO is shorter), a
# dense bias, and a 3x3 block of 6 signs in one run (RLE is shorter).
W_MASK = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
U_MASK = torch.tensor([[1, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
SIGNS = [1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def _small_message() -> Message:
    w = Block(
        (2, 4),
        W_MASK,
        {"mean": torch.tensor([0.5, -1.0, 2.0]), "var": torch.tensor([0.25, 1.0, 4.0])},
        log_fields=("var",),
    )
    b = Block((2,), None, {"mean": torch.tensor([0.1, 0.2])})
    u = Block((3, 3), U_MASK, {"sign": torch.tensor(SIGNS)}, sign_fields=("sign",))
    return Message("dturbo/up", 2, 3, {"w": w, "b": b, "u": u}, {"n": 10, "lr": 0.5})


def _small_header(w_codec: str, u_codec: str) -> bytes:
    return (
        (
            '{"blocks":[["w",[2,4],"W",3,["mean","var"],["var"],[]],'
            '["b",[2],"dense",2,["mean"],[],[]],'
            '["u",[3,3],"U",6,["sign"],[],["sign"]]],'
            '"client":3,"dtype":"float16","kind":"dturbo/up","round":2,"scalars":{"lr":0.5,"n":10}}'
        )
        .replace('"W"', f'"{w_codec}"')
        .replace('"U"', f'"{u_codec}"')
        .encode()
    )


@pytest.mark.parametrize(
    "codec, w_codec, u_codec, body_bytes",
    [
        # w: 3 int32 indices + 2 fields * 3 float16; b: 2 float16; u: 6 int32 indices + 1 byte
        ("coo", "coo", "coo", (12 + 6 + 6) + 4 + (24 + 1)),
        # w: run count + 2 (start, length) pairs + 2 * 3 float16; u: run count + 1 pair + 1 byte
        ("rle", "rle", "rle", (4 + 16 + 6 + 6) + 4 + (4 + 8 + 1)),
        ("auto", "coo", "rle", (12 + 6 + 6) + 4 + (4 + 8 + 1)),
    ],
)
def test_small_message_hand_counted(codec, w_codec, u_codec, body_bytes):
    payload = encode_message(_small_message(), codec, torch.float16)
    header = _small_header(w_codec, u_codec)
    assert payload[:4] == b"DTM\x01"
    assert _header_size(payload) == len(header)
    assert payload[8 : 8 + len(header)] == header
    assert len(payload) == 8 + len(header) + body_bytes
    index = {
        "coo": {"w": struct.pack("<3i", 0, 1, 7), "u": struct.pack("<6i", *range(6))},
        "rle": {"w": struct.pack("<5i", 2, 0, 2, 7, 1), "u": struct.pack("<3i", 1, 0, 6)},
    }
    body = (
        index[w_codec]["w"]
        + _bits([0.5, -1.0, 2.0], torch.float16)
        + _bits(np.log([0.25, 1.0, 4.0]), torch.float16)
        + _bits([0.1, 0.2], torch.float16)
        + index[u_codec]["u"]
        + bytes([0b00111001])  # the signs + - - + + +, LSB first, set bit = +1
    )
    assert payload[8 + len(header) :] == body


def test_small_message_round_trip():
    message = _small_message()
    out = decode_message(encode_message(message, "auto", "float16"))
    assert (out.kind, out.round, out.client) == ("dturbo/up", 2, 3)
    assert out.scalars == {"lr": 0.5, "n": 10}
    assert list(out.blocks) == ["w", "b", "u"]
    w, b, u = out.blocks["w"], out.blocks["b"], out.blocks["u"]
    assert w.shape == (2, 4) and torch.equal(w.mask, W_MASK)
    assert w.log_fields == ("var",) and w.sign_fields == ()
    assert torch.equal(w.values["mean"], torch.tensor([0.5, -1.0, 2.0], dtype=torch.float32))
    # 0.25, 1 and 4 have logs -1.386.., 0, 1.386..: float16 keeps them to 2**-11 relative
    torch.testing.assert_close(
        w.values["var"], torch.tensor([0.25, 1.0, 4.0], dtype=torch.float32), rtol=1e-3, atol=0
    )
    assert b.mask is None and b.shape == (2,)
    assert _same_bits(b.values["mean"], torch.tensor([0.1, 0.2]).to(torch.float16).float())
    assert u.sign_fields == ("sign",) and torch.equal(u.mask, U_MASK)
    assert torch.equal(u.values["sign"], torch.tensor(SIGNS, dtype=torch.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_is_the_cast_values(dtype, codec):
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(5, 7, generator=gen, dtype=torch.float64) < 0.4
    nnz = int(mask.sum())
    mean = torch.randn(nnz, generator=gen, dtype=torch.float64) * 10
    var = torch.exp(4 * torch.randn(nnz, generator=gen, dtype=torch.float64))
    signs = torch.where(torch.rand(nnz, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
    dense = torch.randn(7, generator=gen, dtype=torch.float64)
    blocks = {
        "layer": Block(
            (5, 7), mask, {"mean": mean, "var": var, "s": signs}, ("var",), sign_fields=("s",)
        ),
        "bias": Block((7,), None, {"mean": dense}),
    }
    out = decode_message(encode_message(Message("x", 0, 0, blocks), codec, dtype))
    layer = out.blocks["layer"]
    assert torch.equal(layer.mask, mask)
    assert _same_bits(layer.values["mean"], mean.to(dtype).float())
    assert _same_bits(out.blocks["bias"].values["mean"], dense.to(dtype).float())
    assert torch.equal(layer.values["s"], signs.float())
    # the log is stored to the dtype's unit roundoff u: x comes back within |log x| * u
    u = torch.finfo(dtype).eps / 2
    assert _same_bits(layer.values["var"], var.log().to(dtype).double().exp().float())
    rel = (layer.values["var"].double() - var).abs() / var
    assert (rel <= torch.expm1(var.log().abs() * u * 1.01) + 2**-23).all()


def test_scalars_keep_their_type_and_value():
    scalars = {"n": 3, "x": 3.0, "big": 2**70, "tiny": 5e-324, "neg": -0.0, "third": 1 / 3}
    out = decode_message(encode_message(Message("k", -1, 2**40, scalars=scalars)))
    assert out.scalars == scalars and (out.round, out.client) == (-1, 2**40)
    for name, value in scalars.items():
        assert type(out.scalars[name]) is type(value)
    assert math.copysign(1.0, out.scalars["neg"]) == -1.0


def test_non_finite_values_are_sent():
    mask = torch.tensor([True, False, True, True])
    block = Block(
        (4,),
        mask,
        {
            "v": torch.tensor([math.nan, math.inf, -math.inf]),
            "p": torch.tensor([-1.0, 0.0, math.inf]),
        },
        log_fields=("p",),
    )
    out = decode_message(encode_message(Message("k", 0, 0, {"b": block}), "rle"))
    v, p = out.blocks["b"].values["v"], out.blocks["b"].values["p"]
    assert math.isnan(v[0]) and v[1] == math.inf and v[2] == -math.inf
    # a negative value's log is NaN; zero's is -inf, which comes back as 0
    assert math.isnan(p[0]) and p[1] == 0.0 and p[2] == math.inf


def test_decode_takes_bytes_like():
    payload = encode_message(_small_message())
    for view in (bytearray(payload), memoryview(payload)):
        assert decode_message(view).blocks["w"].shape == (2, 4)
    with pytest.raises(TypeError, match="bytes"):
        decode_message(payload.hex())


# ---------------------------------------------------------------------------------------------
# Random messages
# ---------------------------------------------------------------------------------------------


@st.composite
def blocks(draw) -> Block:
    ndim = draw(st.integers(1, 3))
    shape: list[int] = []
    for _ in range(ndim):
        shape.append(draw(st.integers(0, max(1, 300 // max(1, math.prod(shape))))))
    numel = math.prod(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["dense", "none", "all", "random", "runs"]))
    if kind == "dense":
        mask = None
    elif kind in ("none", "all"):
        mask = torch.full(tuple(shape), kind == "all")
    elif kind == "random":
        mask = torch.from_numpy(rng.random(numel) < rng.random()).reshape(shape)
    else:  # a few long runs (RLE's case)
        flips = rng.random(numel) < 0.05
        mask = torch.from_numpy(np.cumsum(flips) % 2 == 1).reshape(shape)
    n = numel if mask is None else int(mask.sum())
    kinds = draw(st.lists(st.sampled_from(["plain", "log", "sign"]), max_size=3))
    values, logs, signs = {}, [], []
    for i, field_kind in enumerate(kinds):
        name = f"f{i}"
        if field_kind == "plain":
            values[name] = torch.from_numpy(rng.normal(size=n) * 10 ** rng.uniform(-3, 3))
        elif field_kind == "log":
            values[name] = torch.from_numpy(np.exp(rng.normal(size=n) * 3))
            logs.append(name)
        else:
            values[name] = torch.from_numpy(rng.choice([-1.0, 1.0], size=n))
            signs.append(name)
    return Block(tuple(shape), mask, values, tuple(logs), tuple(signs))


messages = st.builds(
    Message,
    kind=st.text(max_size=10),
    round=st.integers(-(2**40), 2**40),
    client=st.integers(0, 1000),
    blocks=st.dictionaries(st.text(max_size=5), blocks(), max_size=3),
    scalars=st.dictionaries(
        st.text(max_size=5), st.one_of(st.integers(), st.floats(allow_nan=False)), max_size=3
    ),
)


@settings(max_examples=60, deadline=None)
@given(message=messages, codec=st.sampled_from(CODECS), dtype=st.sampled_from(DTYPES))
def test_random_round_trip(message, codec, dtype):
    payload = encode_message(message, codec, dtype)
    out = decode_message(payload)
    assert (out.kind, out.round, out.client) == (message.kind, message.round, message.client)
    assert out.scalars == message.scalars
    assert [type(v) for v in out.scalars.values()] == [
        type(message.scalars[k]) for k in out.scalars
    ]
    assert list(out.blocks) == list(message.blocks)
    u = torch.finfo(dtype).eps / 2
    for name, block in message.blocks.items():
        got = out.blocks[name]
        assert got.shape == block.shape
        assert got.log_fields == block.log_fields and got.sign_fields == block.sign_fields
        if block.mask is None:
            assert got.mask is None
        else:
            assert got.mask.dtype == torch.bool and torch.equal(got.mask, block.mask)
        assert list(got.values) == list(block.values)
        for f, sent in block.values.items():
            if f in block.sign_fields:
                assert torch.equal(got.values[f], sent.float())
            elif f in block.log_fields:
                assert _same_bits(got.values[f], sent.log().to(dtype).double().exp().float())
                rel = (got.values[f].double() - sent).abs() / sent
                assert (rel <= torch.expm1(sent.log().abs() * u * 1.01) + 2**-23).all()
            else:
                assert _same_bits(got.values[f], sent.to(dtype).float())
    # the bytes are exactly the documented ones
    n = {
        name: (math.prod(b.shape) if b.mask is None else int(b.mask.sum()))
        for name, b in message.blocks.items()
    }
    values = sum(
        (n[name] + 7) // 8 if f in b.sign_fields else n[name] * dtype.itemsize
        for name, b in message.blocks.items()
        for f in b.values
    )
    index = 0
    for name, _shape, codec_used, *_ in _header(payload)["blocks"]:
        if codec_used == "coo":
            index += 4 * n[name]
        elif codec_used == "rle":
            flat = message.blocks[name].mask.reshape(-1).to(torch.int8)
            runs = int((torch.diff(flat, prepend=torch.zeros(1, dtype=torch.int8)) == 1).sum())
            index += 4 + 8 * runs
        else:
            assert message.blocks[name].mask is None
    assert len(payload) == 8 + _header_size(payload) + index + values


@settings(max_examples=60, deadline=None)
@given(first=blocks(), second=blocks(), dtype=st.sampled_from(DTYPES))
def test_auto_picks_the_shorter_index_per_block(first, second, dtype):
    def size(codec, blocks):
        return len(encode_message(Message("k", 0, 0, blocks), codec, dtype))

    for block in (first, second):
        one = {"b": block}
        coo, rle, auto = (size(c, one) for c in ("coo", "rle", "auto"))
        assert auto == min(coo, rle)
        if coo <= rle:
            assert encode_message(Message("k", 0, 0, one), "auto", dtype) == encode_message(
                Message("k", 0, 0, one), "coo", dtype
            )
    # per block: the header's length does not depend on the codecs, the index sections add up
    both = {"a": first, "b": second}
    for codec in ("coo", "rle"):
        saved = [size(codec, {"b": b}) - size("auto", {"b": b}) for b in (first, second)]
        assert size(codec, both) - size("auto", both) == sum(saved)


# ---------------------------------------------------------------------------------------------
# Malformed payloads
# ---------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_rejected(payload):
    assert _decoded_or_none(payload) is None
    assert _decoded_or_none(b"DTM\x01" + payload) is None


@settings(max_examples=200, deadline=None)
@given(message=messages, codec=st.sampled_from(CODECS), data=st.data())
def test_bit_flips_give_a_message_or_value_error(message, codec, data):
    payload = bytearray(encode_message(message, codec))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] ^= 1 << data.draw(st.integers(0, 7))
    _decoded_or_none(bytes(payload))


@settings(max_examples=100, deadline=None)
@given(message=messages, data=st.data())
def test_overwritten_header_values_give_a_message_or_value_error(message, data):
    """Replace one value of a valid header by arbitrary JSON: the type checks must hold."""
    payload = encode_message(message, "auto", "float16")
    header, body = _header(payload), payload[8 + _header_size(payload) :]
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=5,
    )
    node, key = header, data.draw(st.sampled_from(sorted(header)))
    while isinstance(node[key], dict | list) and node[key] and data.draw(st.booleans()):
        node = node[key]
        key = data.draw(
            st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node)))
        )
    node[key] = data.draw(json_values)
    _decoded_or_none(_payload(header, body))


def test_every_truncation_and_any_extension_is_rejected():
    payload = encode_message(_small_message(), "auto")
    for end in range(len(payload)):
        with pytest.raises(ValueError, match="truncated|JSON|cannot hold"):
            decode_message(payload[:end])
    with pytest.raises(ValueError, match="trailing"):
        decode_message(payload + b"\x00")


def _block_header(entry: list, dtype: str = "float16") -> dict:
    return {"blocks": [entry], "client": 0, "dtype": dtype, "kind": "k", "round": 0, "scalars": {}}


DENSE_2 = ["b", [2], "dense", 2, [], [], []]


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"DTX\x01" + bytes(4), "magic"),
        (_payload(_block_header(DENSE_2), version=2), "version"),
        (b"DTM\x01\x00\x00", "truncated"),
        (b"DTM\x01\x05\x00\x00\x00{", "truncated"),
        (b"DTM\x01\x03\x00\x00\x00{x}", "JSON"),
        (b"DTM\x01\x02\x00\x00\x00\xff\xfe", "JSON"),
        (b"DTM\x01\x02\x00\x00\x00[]", "keys"),
        (_payload({**_block_header(DENSE_2), "extra": 1}), "keys"),
        (_payload(_block_header(DENSE_2, "int16")), "dtype"),
        (_payload(_block_header(DENSE_2) | {"round": 1.0}), "round"),
        (_payload(_block_header(DENSE_2) | {"client": None}), "client"),
        (_payload(_block_header(DENSE_2) | {"kind": 3}), "kind"),
        (_payload(_block_header(DENSE_2) | {"scalars": {"a": None}}), "scalars"),
        (_payload(_block_header(DENSE_2) | {"scalars": {"a": True}}), "scalars"),
        (_payload(_block_header(DENSE_2) | {"blocks": {}}), "blocks"),
    ],
)
def test_malformed_prefix_or_header_raises_value_error(payload, match):
    with pytest.raises(ValueError, match=match):
        decode_message(payload)


@pytest.mark.parametrize(
    "entry, body, match",
    [
        (["b", [2], "csr", 0, [], [], []], b"", "index codec"),
        (["b", [2], "dense", 1, [], [], []], b"", "nnz"),
        (["b", [2], "coo", 3, [], [], []], b"", "nnz"),
        (["b", [-2], "coo", 0, [], [], []], b"", "shape"),
        (["b", [True], "coo", 0, [], [], []], b"", "shape"),
        (["b", [2**31], "coo", 0, [], [], []], b"", "shape"),
        (["b", [2], "coo", 0, ["v", "v"], [], []], b"", "repeat"),
        (["b", [2], "coo", 0, ["v"], ["v"], ["v"]], b"", "disjoint"),
        (["b", [2], "coo", 0, ["v"], ["w"], []], b"", "disjoint"),
        (["b", [2], "coo", 0, []], b"", "block entry"),
        # COO indices: out of range, descending, repeated
        (["b", [4], "coo", 2, [], [], []], struct.pack("<2i", 0, 4), "ascend"),
        (["b", [4], "coo", 2, [], [], []], struct.pack("<2i", 2, 1), "ascend"),
        (["b", [4], "coo", 2, [], [], []], struct.pack("<2i", 1, 1), "ascend"),
        (["b", [4], "coo", 2, [], [], []], struct.pack("<i", 0), "truncated"),
        # run tables: overlapping runs, a run past the end, lengths not summing to nnz, short
        (["b", [4], "rle", 3, [], [], []], struct.pack("<5i", 2, 0, 2, 1, 1), "disjoint"),
        (["b", [4], "rle", 3, [], [], []], struct.pack("<3i", 1, 2, 3), "within"),
        (["b", [4], "rle", 3, [], [], []], struct.pack("<3i", 1, 0, 2), "nnz"),
        (["b", [4], "rle", 3, [], [], []], struct.pack("<2i", 2, 0), "cannot hold"),
        (["b", [4], "rle", 0, [], [], []], struct.pack("<i", -1), "cannot hold"),
        (["b", [4], "rle", 0, [], [], []], b"", "truncated"),
        # value sections: too few or too many values, sign padding bits set
        (["b", [2], "dense", 2, ["v"], [], []], bytes(3), "truncated"),
        (["b", [2], "dense", 2, ["v"], [], []], bytes(5), "trailing"),
        (["b", [2], "dense", 2, ["s"], [], ["s"]], b"\x07", "padding"),
        (["b", [2], "dense", 2, ["s"], [], ["s"]], b"", "truncated"),
    ],
)
def test_malformed_blocks_raise_value_error(entry, body, match):
    with pytest.raises(ValueError, match=match):
        decode_message(_payload(_block_header(entry), body))


def test_the_hand_built_payloads_are_otherwise_valid():
    """The builder of the malformed cases above makes valid payloads when nothing is wrong."""
    out = decode_message(
        _payload(
            _block_header(["b", [4], "rle", 3, ["v"], [], []]),
            struct.pack("<3i", 1, 1, 3) + _bits([1, 2, 3], torch.float16),
        )
    )
    assert torch.equal(out.blocks["b"].mask, torch.tensor([False, True, True, True]))
    assert torch.equal(out.blocks["b"].values["v"], torch.tensor([1.0, 2.0, 3.0]).float())


def test_repeated_header_keys_and_blocks_are_rejected():
    entry = ["b", [2], "dense", 2, [], [], []]
    with pytest.raises(ValueError, match="appears twice"):
        decode_message(_payload({**_block_header(entry), "blocks": [entry, entry]}))
    text = b'{"blocks":[],"client":0,"client":1,"dtype":"float16","kind":"","round":0,"scalars":{}}'
    with pytest.raises(ValueError, match="repeats"):
        decode_message(b"DTM\x01" + struct.pack("<I", len(text)) + text)


def test_deeply_nested_header_is_a_value_error():
    text = b"[" * 100_000
    with pytest.raises(ValueError, match="JSON"):
        decode_message(b"DTM\x01" + struct.pack("<I", len(text)) + text)


# ---------------------------------------------------------------------------------------------
# Bad input to the encoder
# ---------------------------------------------------------------------------------------------


def _one_block(**kwargs) -> Message:
    fields = {"shape": (2, 2), "mask": torch.tensor([[True, False], [True, True]])}
    fields["values"] = {"v": torch.tensor([1.0, 2.0, 3.0])}
    fields.update(kwargs)
    return Message("k", 0, 0, {"b": Block(**fields)})


@pytest.mark.parametrize(
    "message, kwargs, match",
    [
        (_one_block(), {"codec": "csr"}, r"codec must be one of \('coo', 'rle', 'auto'\)"),
        (_one_block(), {"value_dtype": torch.int16}, "value dtype must be one of float32"),
        (_one_block(), {"value_dtype": "float8"}, "value dtype"),
        (_one_block(), {"value_dtype": "int8"}, "value dtype"),
        (_one_block(values={"v": torch.ones(2)}), {}, r"'v' has 2 values, mask.sum\(\) is 3"),
        (_one_block(mask=None), {}, "'v' has 3 values, numel is 4"),
        (_one_block(mask=torch.ones(4, dtype=torch.bool)), {}, r"mask shape \(4,\) != block"),
        (_one_block(shape=(2, -2)), {}, "shape"),
        (_one_block(sign_fields=("v",)), {}, "sign field 'v' holds values other than"),
        (_one_block(log_fields=("w",)), {}, "not among the fields"),
        (_one_block(log_fields=("v", "v")), {}, "twice"),
        (_one_block(log_fields=("v",), sign_fields=("v",)), {}, "both log and sign"),
        (_one_block(values={"v": torch.ones(3, dtype=torch.complex64)}), {}, "real numbers"),
        (Message("k", 0, 0, scalars={"flag": True}), {}, "scalar 'flag'"),
        (Message("k", 0, 0, scalars={"x": "1"}), {}, "scalar 'x'"),
        (Message("k", 0.5, 0), {}, "round must be an int"),
        (Message("k", 0, True), {}, "client must be an int"),
        (Message(1, 0, 0), {}, "kind"),
        (Message("k", 0, 0, {"b": "not a block"}), {}, "must be a Block"),
    ],
)
def test_encode_rejects_bad_input(message, kwargs, match):
    with pytest.raises(ValueError, match=match):
        encode_message(message, **kwargs)


def test_encode_takes_dtype_names_and_integer_signs():
    signs = Block((3,), None, {"s": torch.tensor([-1, 1, 1])}, sign_fields=("s",))
    for dtype in ("float32", "float16", "bfloat16", torch.bfloat16):
        out = decode_message(encode_message(Message("k", 0, 0, {"s": signs}), "coo", dtype))
        assert torch.equal(out.blocks["s"].values["s"], torch.tensor([-1.0, 1.0, 1.0]).float())
        assert _header(encode_message(Message("k", 0, 0), "coo", dtype))["dtype"] == str(
            dtype
        ).removeprefix("torch.")
