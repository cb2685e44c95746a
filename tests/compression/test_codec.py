import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from pyro_dturbo.compression.codec import (
    FORMATS,
    VALUE_DTYPES,
    decode,
    decode_dense,
    decode_elementwise,
    decode_run_length,
    dense_nbytes,
    elementwise_nbytes,
    encode,
    encode_dense,
    encode_elementwise,
    encode_run_length,
    run_length_decode,
    run_length_encode,
    run_length_nbytes,
    weight_bytes,
)

_ENCODE = {
    "dense": encode_dense,
    "elementwise": encode_elementwise,
    "run_length": encode_run_length,
}
_DECODE = {
    "dense": decode_dense,
    "elementwise": decode_elementwise,
    "run_length": decode_run_length,
}
_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
_INT[torch.float64] = torch.int64


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (so NaN equals NaN and -0 differs from +0)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(_INT[a.dtype]), b.view(_INT[b.dtype]))
    )


def test_weight_bytes_hand_counted():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert weight_bytes(mask) == {"dense": 32, "coo": 24, "rle": 4 + 2 * 8 + 3 * 4, "best": 24}
    assert weight_bytes(mask, bits=16) == {"dense": 16, "coo": 18, "rle": 26, "best": 16}
    clustered = torch.zeros(4, 8, dtype=torch.bool)
    clustered[1:3] = True  # one run of 16
    assert weight_bytes(clustered) == {"dense": 128, "coo": 128, "rle": 76, "best": 76}
    with pytest.raises(ValueError):
        weight_bytes(mask, bits=12)


def test_payloads_hand_counted():
    values = torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    mask = values != 0
    # f32: 0.5 = 0x3f000000, -1 = 0xbf800000, 2 = 0x40000000, little-endian
    assert encode_elementwise(values, mask).hex() == (
        "00000000" "01000000" "07000000" "0000003f" "000080bf" "00000040"
    )  # fmt: skip
    assert encode_run_length(values, mask, torch.float16).hex() == (
        "02000000" "00000000" "02000000" "07000000" "01000000" "0038" "00bc" "0040"
    )  # fmt: skip
    assert encode_dense(values, mask, "bfloat16").hex() == "003f80bf" + "0000" * 5 + "0040"
    # a kept zero is stored; a masked nonzero is not
    kept = torch.tensor([True, False, True])
    assert encode_elementwise(torch.tensor([0.0, 3.0, 1.0]), kept, torch.float16).hex() == (
        "00000000" "02000000" "0000" "003c"
    )  # fmt: skip
    assert encode_run_length(torch.zeros(5)) == bytes(4)  # no runs: just the count
    assert encode_elementwise(torch.zeros(5)) == b""


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_payload_lengths_are_the_reported_byte_counts(dtype):
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(6, 3, 2, 2, generator=gen)
    mask = torch.rand(6, 3, 2, 2, generator=gen) < 0.3
    mask[2:4] = True
    counts = weight_bytes(mask, bits=8 * dtype.itemsize)
    assert len(encode_dense(values, mask, dtype)) == counts["dense"]
    assert len(encode_elementwise(values, mask, dtype)) == counts["coo"]
    assert len(encode_run_length(values, mask, dtype)) == counts["rle"]
    nnz, runs = int(mask.sum()), len(run_length_encode(mask.reshape(-1)))
    assert counts["dense"] == dense_nbytes(mask.numel(), dtype.itemsize)
    assert counts["coo"] == elementwise_nbytes(nnz, dtype.itemsize)
    assert counts["rle"] == run_length_nbytes(nnz, runs, dtype.itemsize)
    best, payload = encode(values, mask, dtype)
    assert len(payload) == counts["best"]
    assert _same_bits(
        decode(payload, values.shape, best, dtype), torch.where(mask, values, 0).to(dtype)
    )


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    shape=array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=7),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    fmt=st.sampled_from(FORMATS),
)
def test_codec_round_trip(data, shape, dtype, fmt):
    values = torch.from_numpy(data.draw(arrays(np.float32, shape, elements=st.floats(width=32))))
    mask = torch.from_numpy(data.draw(arrays(np.bool_, shape)))
    payload = _ENCODE[fmt](values, mask, dtype)
    assert isinstance(payload, bytes)
    decoded = _DECODE[fmt](payload, shape, dtype)
    masked = torch.where(mask, values, torch.zeros(()))
    # float32 gives back the masked tensor itself; float16 / bfloat16 its cast
    assert _same_bits(decoded, masked.to(dtype))
    if dtype == torch.float32:
        assert _same_bits(decoded, masked)
    assert _same_bits(decode(payload, shape, fmt, dtype), decoded)


def test_codec_takes_numpy_and_default_mask():
    values = np.array([[0.0, 1.25], [-3.0, 0.0]], dtype=np.float64)
    for fmt in FORMATS:
        _, payload = encode(values, None, torch.float64, fmt)
        assert decode(payload, (2, 2), fmt, torch.float64).tolist() == values.tolist()
    with pytest.raises(ValueError, match="value dtype"):
        encode_elementwise(values, None, torch.int32)
    with pytest.raises(ValueError, match="value dtype"):
        encode_dense(values, None, "float8")
    with pytest.raises(ValueError, match="format"):
        encode(values, None, torch.float32, "zip")
    with pytest.raises(ValueError, match="mask"):
        encode_run_length(values, np.ones(3, dtype=bool))


def test_decoders_reject_malformed_payloads():
    values = torch.tensor([1.0, 0.0, 2.0, 3.0])
    coo = encode_elementwise(values)
    rle = encode_run_length(values)
    with pytest.raises(ValueError, match="multiple"):
        decode_elementwise(coo[:-1], (4,))
    with pytest.raises(ValueError, match="ascend"):
        decode_elementwise(coo, (2,))  # index 3 outside a 2-vector
    swapped = coo[4:8] + coo[:4] + coo[8:]
    with pytest.raises(ValueError, match="ascend"):
        decode_elementwise(swapped, (4,))
    with pytest.raises(ValueError, match="take"):
        decode_run_length(rle + b"\0\0\0\0", (4,))
    with pytest.raises(ValueError, match="runs"):
        decode_run_length(rle, (3,))
    with pytest.raises(ValueError, match="cannot hold"):
        decode_run_length(b"\x05\0\0\0", (4,))
    with pytest.raises(ValueError, match="at least"):
        decode_run_length(b"", (4,))
    with pytest.raises(ValueError, match="dense payload"):
        decode_dense(encode_dense(values), (5,))


def test_run_length_examples():
    runs = run_length_encode(torch.tensor([1, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool))
    assert runs.tolist() == [[0, 2], [7, 1]]
    assert run_length_encode(torch.zeros(0, dtype=torch.bool)).shape == (0, 2)
    assert run_length_decode(torch.zeros(0, 2, dtype=torch.long), 3).tolist() == [False] * 3
    with pytest.raises(ValueError):
        run_length_encode(torch.ones(2, 2))
    with pytest.raises(ValueError):
        run_length_decode(torch.tensor([[2, 3]]), 4)


@settings(deadline=None)
@given(st.lists(st.booleans(), max_size=200))
def test_run_length_round_trip(bits):
    mask = torch.tensor(bits, dtype=torch.bool)
    runs = run_length_encode(mask)
    assert torch.equal(run_length_decode(runs, len(bits)), mask)
    assert int(runs[:, 1].sum()) == int(mask.sum())
    assert bool((runs[:, 1] > 0).all())
    assert bool((runs[1:, 0] > runs[:-1, 0] + runs[:-1, 1]).all())  # runs are maximal
