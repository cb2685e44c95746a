"""The sparse codec: a layer's kept weights as real bytes, and back, exactly.

A weight tensor and its mask (``True`` / nonzero: kept) are read in row-major order, i.e. as
``mask.reshape(-1)`` (PyTorch's order; the ``(out, in * kh * kw)`` matrix view of a convolution).
With ``v`` bytes per value (:data:`VALUE_DTYPES`: float32, float16, bfloat16 and float64),
``nnz`` kept entries and ``R`` runs of consecutive kept entries (runs may cross row ends), every
payload is little-endian and has no header beyond what is listed:

- **dense** (:func:`encode_dense`): all ``numel`` values, the masked ones as zero:
  ``numel * v`` bytes;
- **element-wise**, COO (:func:`encode_elementwise`): the ``nnz`` int32 flat indices,
  ascending, then the ``nnz`` kept values in the same order: ``nnz * (4 + v)`` bytes;
- **run-length** (:func:`encode_run_length`): the int32 run count ``R``, then ``R`` int32
  ``(start, length)`` pairs in traversal order, then the ``nnz`` kept values in traversal order:
  ``4 + 8 * R + nnz * v`` bytes.

The decoders (:func:`decode_dense`, :func:`decode_elementwise`, :func:`decode_run_length`) take
the payload, the tensor's shape and the value dtype, and give back ``where(mask, values, 0)``
cast to that dtype, bit for bit; they reject a payload whose length or indices do not fit the
shape. :func:`encode` / :func:`decode` pick a format by name (``"best"``: the shortest payload).
:func:`weight_bytes` counts the three formats' bytes for a mask without encoding anything (the
numbers :func:`~pyro_dturbo.compression.report.compression_report` reports), and
:func:`run_length_encode` / :func:`run_length_decode` convert a 1-D mask to its run table and
back.

Example::

    >>> w = torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    >>> payload = encode_run_length(w, w != 0, torch.float16)
    >>> len(payload)  # 4 + 8 * 2 runs + 3 values * 2
    26
    >>> decode_run_length(payload, w.shape, torch.float16)
    tensor([[ 0.5000, -1.0000,  0.0000,  0.0000],
            [ 0.0000,  0.0000,  0.0000,  2.0000]], dtype=torch.float16)

References

[1] S. Han, H. Mao, W. J. Dally, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016, Sec. 2 (sparse storage).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "VALUE_DTYPES",
    "FORMATS",
    "INDEX_BYTES",
    "HEADER_BYTES",
    "run_length_encode",
    "run_length_decode",
    "dense_nbytes",
    "elementwise_nbytes",
    "run_length_nbytes",
    "weight_bytes",
    "encode_dense",
    "decode_dense",
    "encode_elementwise",
    "decode_elementwise",
    "encode_run_length",
    "decode_run_length",
    "encode",
    "decode",
]

#: Bytes of an int32 flat index (element-wise) or of a run start / run length (run-length).
INDEX_BYTES = 4
#: Bytes of the int32 run count that heads a run-length payload.
HEADER_BYTES = 4
#: The formats :func:`encode` and :func:`decode` know, by name.
FORMATS: tuple[str, ...] = ("dense", "elementwise", "run_length")

# value dtype -> the integer dtype of the same width (its bits are what is stored)
_BITS: dict[torch.dtype, tuple[torch.dtype, str]] = {
    torch.float32: (torch.int32, "<i4"),
    torch.float16: (torch.int16, "<i2"),
    torch.bfloat16: (torch.int16, "<i2"),
    torch.float64: (torch.int64, "<i8"),
}
#: The value dtypes a payload may hold.
VALUE_DTYPES: tuple[torch.dtype, ...] = tuple(_BITS)
_INT32_MAX = 2**31 - 1

ArrayLike = Tensor | np.ndarray


def run_length_encode(mask_1d: Tensor) -> Tensor:
    """The runs of active (nonzero) entries of a vector, as ``(start, length)`` rows.

    Example::

        >>> run_length_encode(torch.tensor([1, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool))
        tensor([[0, 2],
                [7, 1]])

    :param torch.Tensor mask_1d: a 1-D mask (bool, or numbers where nonzero is active).
    :returns: a ``(runs, 2)`` long tensor of run starts and lengths, in order.
    :rtype: torch.Tensor
    :raises ValueError: if the mask is not 1-D.
    """
    if mask_1d.dim() != 1:
        raise ValueError(f"run_length_encode needs a 1-D mask, got shape {tuple(mask_1d.shape)}")
    active = (mask_1d != 0).to(torch.int8)
    padded = F.pad(active, (1, 1))
    edges = padded[1:] - padded[:-1]
    starts = (edges == 1).nonzero().squeeze(1)
    ends = (edges == -1).nonzero().squeeze(1)
    return torch.stack([starts, ends - starts], dim=1)


def run_length_decode(runs: Tensor, length: int) -> Tensor:
    """The bool mask of ``length`` entries whose active runs are ``runs`` (inverse of
    :func:`run_length_encode`).

    :param torch.Tensor runs: a ``(runs, 2)`` integer tensor of ``(start, length)`` rows.
    :param int length: the length of the mask.
    :returns: the 1-D bool mask.
    :rtype: torch.Tensor
    :raises ValueError: on a badly shaped run table or a run outside ``[0, length)``.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    runs = torch.as_tensor(runs, dtype=torch.long)
    if runs.dim() != 2 or runs.shape[1] != 2:
        raise ValueError(f"runs must have shape (runs, 2), got {tuple(runs.shape)}")
    starts, lengths = runs[:, 0], runs[:, 1]
    if runs.numel() and (
        (starts < 0).any() or (lengths < 0).any() or (starts + lengths > length).any()
    ):
        raise ValueError(f"runs fall outside a mask of length {length}")
    # +1 where a run starts, -1 where it ends; the running sum is positive inside runs
    delta = torch.zeros(length + 1, dtype=torch.long, device=runs.device)
    delta.index_add_(0, starts, torch.ones_like(starts))
    delta.index_add_(0, starts + lengths, -torch.ones_like(starts))
    return delta.cumsum(0)[:length] > 0


# ---------------------------------------------------------------------------------------------
# Byte counts
# ---------------------------------------------------------------------------------------------


def dense_nbytes(numel: int, value_bytes: int) -> int:
    """Length of a dense payload: ``numel * value_bytes``."""
    return numel * value_bytes


def elementwise_nbytes(nnz: int, value_bytes: int) -> int:
    """Length of an element-wise (COO) payload: ``nnz * (4 + value_bytes)``."""
    return nnz * (INDEX_BYTES + value_bytes)


def run_length_nbytes(nnz: int, runs: int, value_bytes: int) -> int:
    """Length of a run-length payload: ``4 + 8 * runs + nnz * value_bytes``."""
    return HEADER_BYTES + 2 * INDEX_BYTES * runs + nnz * value_bytes


def weight_bytes(mask: Tensor, bits: int = 32) -> dict[str, int]:
    """Storage of one layer's kept weights in three formats, in bytes.

    The mask is read in row-major order of its ``(out, in * kh * kw)`` matrix view, i.e.
    ``mask.reshape(-1)`` (PyTorch's order). With ``v = bits / 8`` bytes per value,
    ``nnz`` kept entries and ``R`` runs of consecutive kept entries (runs may cross row ends):

    - ``"dense"``: every value, ``numel * v``;
    - ``"coo"``: each kept value with its int32 flat index, ``nnz * (v + 4)``;
    - ``"rle"``: run-length cluster coding, an int32 run count, then each run as int32
      ``(start, length)``, then the kept values: ``4 + 8 * R + nnz * v``;
    - ``"best"``: ``min(dense, coo, rle)``: a sender ships whichever is smallest.

    Clustered supports (the Turbo-VBI prior's aim) have few runs, so ``rle`` wins there. The
    counts are the lengths of the payloads :func:`encode_dense`, :func:`encode_elementwise` and
    :func:`encode_run_length` write for a value dtype of ``bits`` bits.

    Example::

        >>> weight_bytes(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool))
        {'dense': 32, 'coo': 24, 'rle': 32, 'best': 24}

    :param torch.Tensor mask: the layer's mask (bool, or numbers where nonzero is kept).
    :param int bits: bits per stored value (a positive multiple of 8).
    :returns: ``{"dense", "coo", "rle", "best"}`` byte counts.
    :rtype: dict[str, int]
    :raises ValueError: if ``bits`` is not a positive multiple of 8.

    References

    [1] Han, Mao, Dally (ICLR 2016), Sec. 2 (sparse storage with indices).
    """
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    value = bits // 8
    flat = mask.reshape(-1)
    nnz = int(torch.count_nonzero(flat))
    runs = int(run_length_encode(flat).shape[0])
    dense = dense_nbytes(flat.numel(), value)
    coo = elementwise_nbytes(nnz, value)
    rle = run_length_nbytes(nnz, runs, value)
    return {"dense": dense, "coo": coo, "rle": rle, "best": min(dense, coo, rle)}


# ---------------------------------------------------------------------------------------------
# Encoders and decoders
# ---------------------------------------------------------------------------------------------


def _value_dtype(dtype: torch.dtype | str) -> torch.dtype:
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if resolved not in _BITS:
        names = ", ".join(str(d).removeprefix("torch.") for d in VALUE_DTYPES)
        raise ValueError(f"value dtype must be one of {names}, got {dtype!r}")
    assert isinstance(resolved, torch.dtype)
    return resolved


def _flat(values: ArrayLike, mask: ArrayLike | None) -> tuple[Tensor, Tensor]:
    """``values`` and the bool mask (default: ``values != 0``), flattened, on the CPU."""
    flat_values = torch.as_tensor(values).detach().cpu().reshape(-1)
    if flat_values.numel() > _INT32_MAX:
        raise ValueError(f"a payload holds at most 2**31 - 1 entries, got {flat_values.numel()}")
    if mask is None:
        return flat_values, flat_values != 0
    flat_mask = torch.as_tensor(mask).detach().cpu().reshape(-1) != 0
    if flat_mask.numel() != flat_values.numel():
        raise ValueError(f"mask has {flat_mask.numel()} entries but values {flat_values.numel()}")
    return flat_values, flat_mask


def _value_bytes(values: Tensor, dtype: torch.dtype) -> bytes:
    int_dtype, little = _BITS[dtype]
    bits = values.to(dtype).contiguous().view(int_dtype).numpy()
    return bits.astype(little, copy=False).tobytes()


def _read_values(payload: bytes, offset: int, count: int, dtype: torch.dtype) -> Tensor:
    int_dtype, little = _BITS[dtype]
    bits = np.frombuffer(payload, dtype=little, count=count, offset=offset)
    native = bits.astype(bits.dtype.newbyteorder("="))  # a writable copy
    return torch.from_numpy(native).view(dtype)


def _read_int32(payload: bytes, offset: int, count: int) -> Tensor:
    ints = np.frombuffer(payload, dtype="<i4", count=count, offset=offset)
    return torch.from_numpy(ints.astype(np.int64))


# The index sections on their own (shared with :mod:`pyro_dturbo.federation.codec`, whose blocks
# put one index section in front of several value arrays).


def _index_bytes(flat_mask: Tensor) -> bytes:
    """The element-wise index section: the kept entries' int32 flat indices, ascending."""
    index = flat_mask.nonzero().squeeze(1)
    return index.to(torch.int32).numpy().astype("<i4").tobytes()


def _run_table_bytes(flat_mask: Tensor) -> bytes:
    """The run-length index section: the int32 run count, then int32 ``(start, length)`` pairs."""
    runs = run_length_encode(flat_mask)
    header = np.array([runs.shape[0]], dtype="<i4").tobytes()
    return header + runs.to(torch.int32).numpy().astype("<i4").tobytes()


def _read_index(payload: bytes, offset: int, nnz: int, numel: int) -> Tensor:
    """The ``nnz`` int32 flat indices at ``offset``, checked to ascend within ``[0, numel)``."""
    index = _read_int32(payload, offset, nnz)
    if nnz and (index[0] < 0 or index[-1] >= numel or (index[1:] <= index[:-1]).any()):
        raise ValueError(f"element-wise indices must ascend within [0, {numel})")
    return index


def _read_run_table(payload: bytes, offset: int, numel: int) -> Tensor:
    """The ``(runs, 2)`` run table at ``offset``, checked to hold non-empty, ordered, disjoint
    runs within ``[0, numel)``; it takes ``4 + 8 * runs`` bytes."""
    size = len(payload) - offset
    if size < HEADER_BYTES:
        raise ValueError(f"a run-length payload has at least {HEADER_BYTES} bytes")
    count = int(_read_int32(payload, offset, 1)[0])
    if count < 0 or size < HEADER_BYTES + 2 * INDEX_BYTES * count:
        raise ValueError(f"a run-length payload of {size} bytes cannot hold {count} runs")
    runs = _read_int32(payload, offset + HEADER_BYTES, 2 * count).reshape(count, 2)
    starts, lengths = runs[:, 0], runs[:, 1]
    if count and (
        (lengths < 1).any()
        or starts[0] < 0
        or (starts[1:] < starts[:-1] + lengths[:-1]).any()
        or starts[-1] + lengths[-1] > numel
    ):
        raise ValueError(f"runs must be non-empty, ordered, disjoint and within [0, {numel})")
    return runs


def _numel(shape: Sequence[int]) -> int:
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must have non-negative sizes, got {tuple(shape)}")
    return math.prod(dims)


def _scatter(shape: Sequence[int], index: Tensor, values: Tensor, dtype: torch.dtype) -> Tensor:
    out = torch.zeros(_numel(shape), dtype=dtype)
    out[index] = values
    return out.reshape(tuple(int(d) for d in shape))


def encode_dense(
    values: ArrayLike, mask: ArrayLike | None = None, dtype: torch.dtype | str = torch.float32
) -> bytes:
    """Every value in traversal order, the masked-out ones as zero.

    :param values: the tensor (or NumPy array) to store.
    :param mask: kept entries (bool, or nonzero), ``values``' size; ``None`` keeps every entry.
    :param dtype: the stored value dtype, one of :data:`VALUE_DTYPES` (or its name).
    :returns: the ``numel * v`` bytes.
    :rtype: bytes
    """
    dtype = _value_dtype(dtype)
    flat_values, flat_mask = _flat(values, mask)
    zero = torch.zeros((), dtype=flat_values.dtype)
    return _value_bytes(torch.where(flat_mask, flat_values, zero), dtype)


def decode_dense(
    payload: bytes, shape: Sequence[int], dtype: torch.dtype | str = torch.float32
) -> Tensor:
    """The tensor of a :func:`encode_dense` payload.

    :param bytes payload: the payload.
    :param shape: the tensor's shape.
    :param dtype: the value dtype the payload was written with.
    :returns: a CPU tensor of ``shape`` and ``dtype``.
    :raises ValueError: if the payload's length does not fit ``shape``.
    """
    dtype = _value_dtype(dtype)
    numel = _numel(shape)
    expected = dense_nbytes(numel, dtype.itemsize)
    if len(payload) != expected:
        raise ValueError(
            f"a dense payload of {numel} values has {expected} bytes, got {len(payload)}"
        )
    return _read_values(payload, 0, numel, dtype).reshape(tuple(int(d) for d in shape))


def encode_elementwise(
    values: ArrayLike, mask: ArrayLike | None = None, dtype: torch.dtype | str = torch.float32
) -> bytes:
    """The kept entries as ``nnz`` int32 flat indices (ascending), then their ``nnz`` values.

    Example::

        >>> encode_elementwise(torch.tensor([0.0, 1.5, 0.0]), None, torch.float32).hex()
        '010000000000c03f'

    :param values: the tensor (or NumPy array) to store.
    :param mask: kept entries (bool, or nonzero), ``values``' size; ``None``: ``values != 0``.
    :param dtype: the stored value dtype, one of :data:`VALUE_DTYPES` (or its name).
    :returns: the ``nnz * (4 + v)`` bytes.
    :rtype: bytes
    :raises ValueError: on a mask of another size, an unknown dtype, or more than
        ``2**31 - 1`` entries.
    """
    dtype = _value_dtype(dtype)
    flat_values, flat_mask = _flat(values, mask)
    return _index_bytes(flat_mask) + _value_bytes(flat_values[flat_mask], dtype)


def decode_elementwise(
    payload: bytes, shape: Sequence[int], dtype: torch.dtype | str = torch.float32
) -> Tensor:
    """The tensor of a :func:`encode_elementwise` payload: zero where no index is listed.

    :param bytes payload: the payload.
    :param shape: the tensor's shape.
    :param dtype: the value dtype the payload was written with.
    :returns: a CPU tensor of ``shape`` and ``dtype``.
    :raises ValueError: on a payload whose length is not a multiple of ``4 + v``, or whose
        indices are not ascending within ``[0, numel)``.
    """
    dtype = _value_dtype(dtype)
    numel = _numel(shape)
    entry = INDEX_BYTES + dtype.itemsize
    if len(payload) % entry:
        raise ValueError(
            f"an element-wise payload has a multiple of {entry} bytes, got {len(payload)}"
        )
    nnz = len(payload) // entry
    index = _read_index(payload, 0, nnz, numel)
    values = _read_values(payload, INDEX_BYTES * nnz, nnz, dtype)
    return _scatter(shape, index, values, dtype)


def encode_run_length(
    values: ArrayLike, mask: ArrayLike | None = None, dtype: torch.dtype | str = torch.float32
) -> bytes:
    """The int32 run count, the int32 ``(start, length)`` of every run of kept entries in
    traversal order, then the kept values in that order.

    Example::

        >>> encode_run_length(torch.tensor([0.0, 1.5, 2.0]), None, torch.float16).hex()
        '010000000100000002000000003e0040'

    :param values: the tensor (or NumPy array) to store.
    :param mask: kept entries (bool, or nonzero), ``values``' size; ``None``: ``values != 0``.
    :param dtype: the stored value dtype, one of :data:`VALUE_DTYPES` (or its name).
    :returns: the ``4 + 8 * R + nnz * v`` bytes.
    :rtype: bytes
    :raises ValueError: as :func:`encode_elementwise`.
    """
    dtype = _value_dtype(dtype)
    flat_values, flat_mask = _flat(values, mask)
    return _run_table_bytes(flat_mask) + _value_bytes(flat_values[flat_mask], dtype)


def decode_run_length(
    payload: bytes, shape: Sequence[int], dtype: torch.dtype | str = torch.float32
) -> Tensor:
    """The tensor of a :func:`encode_run_length` payload: zero outside the runs.

    :param bytes payload: the payload.
    :param shape: the tensor's shape.
    :param dtype: the value dtype the payload was written with.
    :returns: a CPU tensor of ``shape`` and ``dtype``.
    :raises ValueError: on a payload whose length does not match its run table, or runs that
        are empty, overlap, are out of order or leave ``[0, numel)``.
    """
    dtype = _value_dtype(dtype)
    numel = _numel(shape)
    runs = _read_run_table(payload, 0, numel)
    count, nnz = runs.shape[0], int(runs[:, 1].sum())
    expected = run_length_nbytes(nnz, count, dtype.itemsize)
    if len(payload) != expected:
        raise ValueError(f"{count} runs of {nnz} values take {expected} bytes, got {len(payload)}")
    values = _read_values(payload, run_length_nbytes(0, count, 0), nnz, dtype)
    index = run_length_decode(runs, numel).nonzero().squeeze(1)
    return _scatter(shape, index, values, dtype)


_ENCODERS = {
    "dense": encode_dense,
    "elementwise": encode_elementwise,
    "run_length": encode_run_length,
}
_DECODERS = {
    "dense": decode_dense,
    "elementwise": decode_elementwise,
    "run_length": decode_run_length,
}


def encode(
    values: ArrayLike,
    mask: ArrayLike | None = None,
    dtype: torch.dtype | str = torch.float32,
    format: str = "best",
) -> tuple[str, bytes]:
    """Encode in the named format, or with ``format="best"`` in the one whose payload is
    shortest (ties go to the earlier of :data:`FORMATS`).

    :param values: the tensor (or NumPy array) to store.
    :param mask: kept entries (bool, or nonzero); ``None``: ``values != 0``.
    :param dtype: the stored value dtype, one of :data:`VALUE_DTYPES` (or its name).
    :param str format: one of :data:`FORMATS`, or ``"best"``.
    :returns: ``(format, payload)``: what :func:`decode` needs besides the shape and dtype.
    :rtype: tuple[str, bytes]
    :raises ValueError: on an unknown format, or as the encoders.
    """
    if format == "best":
        value_bytes = _value_dtype(dtype).itemsize
        flat_values, flat_mask = _flat(values, mask)
        nnz = int(flat_mask.sum())
        sizes = {
            "dense": dense_nbytes(flat_mask.numel(), value_bytes),
            "elementwise": elementwise_nbytes(nnz, value_bytes),
            "run_length": run_length_nbytes(
                nnz, int(run_length_encode(flat_mask).shape[0]), value_bytes
            ),
        }
        format = min(FORMATS, key=sizes.__getitem__)
        return format, _ENCODERS[format](flat_values, flat_mask, dtype)
    if format not in _ENCODERS:
        raise ValueError(f"format must be one of {FORMATS} or 'best', got {format!r}")
    return format, _ENCODERS[format](values, mask, dtype)


def decode(
    payload: bytes,
    shape: Sequence[int],
    format: str,
    dtype: torch.dtype | str = torch.float32,
) -> Tensor:
    """Decode a payload written in ``format`` (one of :data:`FORMATS`, as :func:`encode`
    returned it).

    :returns: a CPU tensor of ``shape`` and ``dtype``.
    :raises ValueError: on an unknown format, or as the decoders.
    """
    if format not in _DECODERS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return _DECODERS[format](payload, shape, dtype)
