"""Federated payloads as real bytes: what a client or the server sends in one message.

A :class:`Message` (its kind, round, client, named scalars and named :class:`Block` s) becomes
one ``bytes`` object (:func:`encode_message`) and back (:func:`decode_message`). A block is a
group of value arrays that share one support (a layer's means and variances): the support's
index is sent once, then every field's values. The index sections are those of the sparse codec
(:mod:`pyro_dturbo.compression.codec`). ``len(encode_message(...))`` is the byte count the
library reports: every byte below is counted, header included.

**Wire format, version 1.** Little-endian throughout, no padding or alignment:

=========  ======  =============================================================================
offset     bytes   content
=========  ======  =============================================================================
0          3       magic ``b"DTM"``
3          1       version, uint8: ``1``
4          4       ``H``, the header's length, uint32
8          ``H``   the header: JSON (ASCII, non-ASCII characters escaped), keys sorted, no spaces
8 + ``H``  ...     the body: each block's sections, in the header's block order; nothing after
=========  ======  =============================================================================

The header is the object ``{"blocks": [...], "client": int, "dtype": str, "kind": str, "round":
int, "scalars": {name: number}}``, ``dtype`` being the value dtype's name (``"float32"``,
``"float16"``, ``"bfloat16"``, or ``"float64"`` for exact runs), and ``blocks`` listing each block,
in the message's insertion order, as the array ``[name, shape, codec, nnz, fields, log_fields,
sign_fields]``: ``shape`` a list of ints, ``codec`` the block's index codec (``"dense"`` when its
mask is ``None``, ``"known"`` when the receiver holds the mask, else ``"coo"`` or ``"rle"``),
``nnz`` the number of entries sent (``numel`` if dense), ``fields`` the field names in order and
``log_fields`` / ``sign_fields`` the names of those sent as logarithms / as signs. Scalars keep
their type: an int is a JSON integer, a float is written by Python's ``repr`` (always with a ``.``
or exponent, or ``NaN`` / ``Infinity``), which reads back to the same float, bit for bit; they come
back in sorted name order. A block's shape has at most :data:`MAX_DIMS` sizes, and a message at
most :data:`MAX_ENTRIES` entries in all (int32 flat indices).

With ``v`` bytes per value (4, 2, 2), a block of ``n`` entries sent (``nnz``, or ``numel`` if
dense) and ``R`` runs of consecutive kept entries (row-major order, runs may cross row ends) has
the body sections:

- **index**, one per block, shared by all its fields: ``dense``: none, 0 bytes; ``coo``: the
  ``nnz`` int32 flat indices, ascending: ``4 * nnz`` bytes; ``rle``: the int32 run count ``R``,
  then ``R`` int32 ``(start, length)`` pairs: ``4 + 8 * R`` bytes;
- then **each field**, in order: its ``n`` values in the traversal order of the mask, as the
  bit patterns of the value dtype (``n * v`` bytes); a *log field* holds ``log(x)`` (taken in
  float64, then cast; decoding applies ``exp``), so a narrow dtype keeps relative precision over
  a wide range (about ``|log x| * eps / 2`` relative error, ``eps`` the dtype's epsilon); a
  *sign field* (all values +1 or -1, e.g. the ternary entries of STC [2]) holds one bit per
  entry, packed LSB first (``numpy.packbits(..., bitorder="little")``: entry ``i`` is bit
  ``i % 8`` of byte ``i // 8``; a set bit is +1, a clear bit -1, padding bits zero):
  ``ceil(n / 8)`` bytes.

So a block takes ``index + sum over its fields of (n * v, or ceil(n / 8) for a sign field)``
bytes and a message ``8 + H`` plus its blocks. ``codec="auto"`` picks per block whichever of
``coo`` and ``rle`` has the shorter index section (ties: ``coo``); the header's length does not
depend on that choice, so ``auto`` gives the shortest message of the two.

Decoding checks everything and raises :class:`ValueError` on any malformed payload (wrong magic
or version, truncated or trailing bytes, an unparseable or ill-typed header, unknown dtype or
codec names, indices out of range or not ascending, overlapping runs, runs whose lengths do not
sum to ``nnz``, nonzero padding bits); non-finite values (NaN, Inf) do decode, the receiver
judges them. Note that a negative value in a log field encodes as NaN (and zero as ``-inf``,
which decodes to 0).

Example::

    >>> w = Block((2, 4), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool),
    ...           {"mean": torch.tensor([0.5, -1.0, 2.0]), "var": torch.tensor([1e-2, 1e-3, 1.0])},
    ...           log_fields=("var",))
    >>> payload = encode_message(Message("dturbo/up", 3, 7, {"w": w}, {"num_examples": 60}))
    >>> header = int.from_bytes(payload[4:8], "little")
    >>> len(payload) - 8 - header  # 3 int32 indices + 2 fields * 3 float16 values
    24
    >>> decode_message(payload).blocks["w"].values["mean"]
    tensor([ 0.5000, -1.0000,  2.0000])

References

[1] The sparse codec of :mod:`pyro_dturbo.compression.codec` (index sections, value bits).

[2] F. Sattler, S. Wiedemann, K.-R. Müller, W. Samek, "Robust and Communication-Efficient
    Federated Learning from Non-IID Data", arXiv:1903.02891 (2019), IEEE TNNLS 31(9), 2020
    (sparse ternary compression: one magnitude per tensor and a sign per kept entry).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_dturbo.compression.codec import (
    _index_bytes,
    _read_index,
    _read_run_table,
    _read_values,
    _run_table_bytes,
    _value_bytes,
    run_length_decode,
)

__all__ = ["Block", "Message", "CODECS", "MESSAGE_DTYPES", "encode_message", "decode_message"]

#: the index codecs a message may use for its sparse blocks (``"auto"``: the smaller per block)
CODECS: tuple[str, ...] = ("coo", "rle", "auto")
#: the value dtypes a message may hold
MESSAGE_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
)

MAGIC = b"DTM"
VERSION = 1
#: bytes before the header: magic, version, header length
PREFIX_BYTES = 8
#: the most entries one message's blocks may have in all (int32 flat indices)
MAX_ENTRIES = 2**31 - 1
#: the most dimensions a block's shape may have
MAX_DIMS = 64

_DTYPE_NAMES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in MESSAGE_DTYPES}
_INDEX_CODECS = ("dense", "coo", "rle", "known")
_HEADER_KEYS = frozenset({"blocks", "client", "dtype", "kind", "round", "scalars"})


@dataclass
class Block:
    """Named value arrays that share one support (e.g. a layer's mean and variance).

    :ivar tuple shape: the full tensor's shape (e.g. a layer's ``(out, in)`` matrix).
    :ivar mask: bool tensor of ``shape``: the entries sent (``None``: dense, all sent).
    :ivar values: ``{field: 1-D tensor}``, each of length ``mask.sum()`` (``numel`` if dense),
        in row-major traversal order of the mask.
    :ivar log_fields: fields sent as their logarithm (positive quantities: variances,
        precisions), so a narrow value dtype keeps relative precision.
    :ivar sign_fields: fields whose values are all +1 or -1, sent as one bit per entry (the
        signs of STC's ternary updates).
    :ivar bool known_mask: the receiver already holds ``mask`` (e.g. the support it was sent
        and acknowledged), so no index section is written (index codec ``"known"``, 0
        bytes); decoding gives ``mask=None`` with ``known_mask=True`` and the receiver
        supplies the mask (only ``nnz`` is checked here).
    """

    shape: tuple[int, ...]
    mask: Tensor | None
    values: dict[str, Tensor]
    log_fields: tuple[str, ...] = ()
    sign_fields: tuple[str, ...] = ()
    known_mask: bool = False


@dataclass
class Message:
    """One message of a federated round.

    :ivar str kind: what it is (``"dturbo/down"``, ``"dturbo/up"``, ``"fedavg/up"``, ...).
    :ivar int round: the round it belongs to (the server rejects stale replies by it).
    :ivar int client: the client it is from or for.
    :ivar scalars: small named numbers (``num_examples``, ...).
    :ivar blocks: ``{name: Block}``.
    """

    kind: str
    round: int
    client: int
    blocks: dict[str, Block] = field(default_factory=dict)
    scalars: dict[str, float | int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _message_dtype(dtype: object) -> torch.dtype:
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if resolved not in MESSAGE_DTYPES:
        names = ", ".join(_DTYPE_NAMES)
        raise ValueError(f"value dtype must be one of {names}, got {dtype!r}")
    assert isinstance(resolved, torch.dtype)
    return resolved


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an int, got {value!r}")
    return int(value)


def _scalar(name: object, value: object) -> int | float:
    if not isinstance(name, str):
        raise ValueError(f"scalar names must be strings, got {name!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"scalar {name!r} must be an int or a float, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _shape(shape: object, what: str) -> tuple[int, ...]:
    if not isinstance(shape, tuple | list):
        raise ValueError(f"{what}: shape must be a tuple of ints, got {shape!r}")
    dims = tuple(_integer(d, f"{what}: a shape entry") for d in shape)
    if len(dims) > MAX_DIMS or any(not 0 <= d <= MAX_ENTRIES for d in dims):
        raise ValueError(f"{what}: shape {dims} must have at most {MAX_DIMS} sizes >= 0")
    if math.prod(dims) > MAX_ENTRIES:
        raise ValueError(f"{what}: shape {dims} has more than {MAX_ENTRIES} entries")
    return dims


def _field_names(names: object, fields: list[str], what: str, kind: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, tuple | list):
        raise ValueError(f"{what}: {kind} must be a tuple of field names, got {names!r}")
    out = list(names)
    unknown = [n for n in out if n not in fields]
    if unknown:
        raise ValueError(f"{what}: {kind} {unknown} are not among the fields {fields}")
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: {kind} {out} name a field twice")
    return out


def _encode_block(name: str, block: Block, codec: str, dtype: torch.dtype) -> tuple[list, bytes]:
    """The block's header entry and body sections."""
    what = f"block {name!r}"
    if not isinstance(block, Block):
        raise ValueError(f"{what} must be a Block, got {type(block).__name__}")
    shape = _shape(block.shape, what)
    numel = math.prod(shape)
    if block.mask is None and block.known_mask:
        # a decoded known-mask block: the entries are counted by its fields
        index_codec, index = "known", b""
        lengths = {int(torch.as_tensor(v).numel()) for v in block.values.values()}
        nnz = lengths.pop() if len(lengths) == 1 else -1
        if not 0 <= nnz <= numel:
            raise ValueError(f"{what}: a known-mask block needs fields of one length <= {numel}")
    elif block.mask is None:
        index_codec, index = "dense", b""
        nnz = numel
    else:
        mask = torch.as_tensor(block.mask).detach().cpu()
        if tuple(mask.shape) != shape:
            raise ValueError(f"{what}: mask shape {tuple(mask.shape)} != block shape {shape}")
        flat_mask = mask.reshape(-1) != 0
        nnz = int(flat_mask.sum())
    if block.mask is None:
        pass
    elif block.known_mask:
        index_codec, index = "known", b""
    else:
        coo = _index_bytes(flat_mask) if codec != "rle" else None
        rle = _run_table_bytes(flat_mask) if codec != "coo" else None
        if coo is not None and (rle is None or len(coo) <= len(rle)):
            index_codec, index = "coo", coo
        else:
            assert rle is not None
            index_codec, index = "rle", rle
    if not isinstance(block.values, dict):
        raise ValueError(f"{what}: values must be a dict of field name -> tensor")
    fields = list(block.values)
    if any(not isinstance(f, str) for f in fields):
        raise ValueError(f"{what}: field names must be strings, got {fields}")
    log_fields = _field_names(block.log_fields, fields, what, "log_fields")
    sign_fields = _field_names(block.sign_fields, fields, what, "sign_fields")
    both = sorted(set(log_fields) & set(sign_fields))
    if both:
        raise ValueError(f"{what}: fields {both} cannot be both log and sign fields")
    body = [index]
    for f, raw in block.values.items():
        values = torch.as_tensor(raw).detach().cpu().reshape(-1)
        if values.numel() != nnz:
            sent = "numel" if block.mask is None else "mask.sum()"
            raise ValueError(f"{what}: field {f!r} has {values.numel()} values, {sent} is {nnz}")
        if values.is_complex() or values.dtype == torch.bool:
            raise ValueError(f"{what}: field {f!r} must hold real numbers, got {values.dtype}")
        if f in sign_fields:
            if not ((values == 1) | (values == -1)).all():
                raise ValueError(f"{what}: sign field {f!r} holds values other than +1 and -1")
            bits = (values > 0).numpy().astype(np.uint8)
            body.append(np.packbits(bits, bitorder="little").tobytes())
        elif f in log_fields:
            body.append(_value_bytes(torch.log(values.to(torch.float64)), dtype))
        else:
            body.append(_value_bytes(values, dtype))
    entry = [name, list(shape), index_codec, nnz, fields, log_fields, sign_fields]
    return entry, b"".join(body)


def encode_message(
    message: Message, codec: str = "auto", value_dtype: torch.dtype | str = torch.float16
) -> bytes:
    """The bytes of one message (the wire format of this module's docstring).

    Values are cast to ``value_dtype`` (log fields: the log is taken in float64, then cast);
    non-finite values are sent as they are.

    Example::

        >>> bias = Block((3,), None, {"mean": torch.tensor([0.1, 0.2, 0.3])})
        >>> payload = encode_message(Message("fedavg/up", 0, 1, {"b": bias}), "auto", "float32")
        >>> len(payload) - 8 - int.from_bytes(payload[4:8], "little")  # 3 float32 values
        12

    :param Message message: the message.
    :param str codec: the sparse blocks' index codec, one of :data:`CODECS` (``"auto"``: per
        block the shorter of ``"coo"`` and ``"rle"``, ties to ``"coo"``).
    :param value_dtype: the value dtype, one of :data:`MESSAGE_DTYPES` (or its name).
    :returns: the payload; its length is the message's byte count.
    :rtype: bytes
    :raises ValueError: on an unknown codec or value dtype, a mask whose shape is not the
        block's, a field whose length is not the mask's ``nnz`` (``numel`` if dense), a sign
        field holding other values than +1 / -1, log or sign fields naming unknown fields, or a
        kind / round / client / scalar of the wrong type.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    dtype = _message_dtype(value_dtype)
    if not isinstance(message, Message):
        raise ValueError(f"message must be a Message, got {type(message).__name__}")
    if not isinstance(message.kind, str):
        raise ValueError(f"kind must be a string, got {message.kind!r}")
    if not isinstance(message.blocks, dict) or not isinstance(message.scalars, dict):
        raise ValueError("blocks and scalars must be dicts")
    entries, bodies, total = [], [], 0
    for name, block in message.blocks.items():
        if not isinstance(name, str):
            raise ValueError(f"block names must be strings, got {name!r}")
        entry, body = _encode_block(name, block, codec, dtype)
        total += math.prod(entry[1])
        entries.append(entry)
        bodies.append(body)
    if total > MAX_ENTRIES:
        raise ValueError(f"a message holds at most {MAX_ENTRIES} entries, got {total}")
    header = {
        "blocks": entries,
        "client": _integer(message.client, "client"),
        "dtype": str(dtype).removeprefix("torch."),
        "kind": message.kind,
        "round": _integer(message.round, "round"),
        "scalars": {k: _scalar(k, v) for k, v in message.scalars.items()},
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    prefix = MAGIC + bytes([VERSION]) + len(text).to_bytes(4, "little")
    return prefix + text + b"".join(bodies)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("the header repeats a key")
    return out


def _is_int(value: object) -> bool:
    return type(value) is int


def _string_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"malformed header: {what} must be a list of strings")
    if len(set(value)) != len(value):
        raise ValueError(f"malformed header: {what} {value} repeat a name")
    return value


def _parse_header(text: bytes) -> dict[str, Any]:
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"the header is not valid JSON: {error}") from None
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        keys = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"malformed header: expected the keys {sorted(_HEADER_KEYS)}, got {keys}")
    if not isinstance(header["kind"], str):
        raise ValueError("malformed header: kind must be a string")
    if not (_is_int(header["round"]) and _is_int(header["client"])):
        raise ValueError("malformed header: round and client must be ints")
    if not isinstance(header["dtype"], str) or header["dtype"] not in _DTYPE_NAMES:
        raise ValueError(f"unknown value dtype {header['dtype']!r} (known: {list(_DTYPE_NAMES)})")
    scalars = header["scalars"]
    if not isinstance(scalars, dict) or not all(
        _is_int(v) or type(v) is float for v in scalars.values()
    ):
        raise ValueError("malformed header: scalars must map names to ints or floats")
    if not isinstance(header["blocks"], list):
        raise ValueError("malformed header: blocks must be a list")
    names, total = set(), 0
    for entry in header["blocks"]:
        if not isinstance(entry, list) or len(entry) != 7 or not isinstance(entry[0], str):
            raise ValueError(f"malformed header: a block entry is not [name, shape, ...]: {entry}")
        name, shape, codec, nnz, fields, log_fields, sign_fields = entry
        if name in names:
            raise ValueError(f"malformed header: block {name!r} appears twice")
        names.add(name)
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise ValueError(f"malformed header: block {name!r} has shape {shape}")
        numel = math.prod(_shape(shape, f"block {name!r}"))
        total += numel
        if codec not in _INDEX_CODECS:
            raise ValueError(f"block {name!r}: unknown index codec {codec!r} ({_INDEX_CODECS})")
        if not _is_int(nnz) or not 0 <= nnz <= numel or (codec == "dense" and nnz != numel):
            raise ValueError(f"block {name!r}: nnz {nnz} does not fit {numel} entries ({codec})")
        fields = _string_list(fields, f"block {name!r} fields")
        log_fields = _string_list(log_fields, f"block {name!r} log fields")
        sign_fields = _string_list(sign_fields, f"block {name!r} sign fields")
        special = set(log_fields) | set(sign_fields)
        if not special <= set(fields) or len(special) != len(log_fields) + len(sign_fields):
            raise ValueError(f"block {name!r}: log and sign fields must be disjoint field names")
    if total > MAX_ENTRIES:
        raise ValueError(f"a message holds at most {MAX_ENTRIES} entries, got {total}")
    return header


def _need(payload: bytes, offset: int, size: int, what: str) -> None:
    if len(payload) - offset < size:
        raise ValueError(f"truncated payload: {what} needs {size} bytes at {offset}")


def _decode_block(
    payload: bytes, offset: int, entry: list, dtype: torch.dtype
) -> tuple[Block, int]:
    """The block of a header entry whose sections start at ``offset``, and where they end."""
    name, shape, codec, nnz, fields, log_fields, sign_fields = entry
    numel = math.prod(shape)
    mask: Tensor | None = None
    if codec == "coo":
        _need(payload, offset, 4 * nnz, f"block {name!r}'s {nnz} indices")
        try:
            index = _read_index(payload, offset, nnz, numel)
        except ValueError as error:
            raise ValueError(f"block {name!r}: {error}") from None
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[index] = True
        offset += 4 * nnz
    elif codec == "rle":
        _need(payload, offset, 4, f"block {name!r}'s run count")
        try:
            runs = _read_run_table(payload, offset, numel)
        except ValueError as error:
            raise ValueError(f"block {name!r}: {error}") from None
        if int(runs[:, 1].sum()) != nnz:
            raise ValueError(f"block {name!r}: runs of {int(runs[:, 1].sum())} entries, nnz {nnz}")
        mask = run_length_decode(runs, numel)
        offset += 4 + 8 * runs.shape[0]
    values: dict[str, Tensor] = {}
    for f in fields:
        what = f"block {name!r} field {f!r}"
        if f in sign_fields:
            size = (nnz + 7) // 8
            _need(payload, offset, size, what)
            packed = np.frombuffer(payload, dtype=np.uint8, count=size, offset=offset)
            bits = np.unpackbits(packed, bitorder="little")
            if bits[nnz:].any():
                raise ValueError(f"{what}: nonzero padding bits")
            values[f] = torch.from_numpy(bits[:nnz].astype(np.float32) * 2 - 1)
        else:
            size = nnz * dtype.itemsize
            _need(payload, offset, size, what)
            stored = _read_values(payload, offset, nnz, dtype)
            # float64 payloads (exact runs and tests) decode to float64, the rest to float32
            out = torch.float64 if dtype == torch.float64 else torch.float32
            if f in log_fields:
                values[f] = stored.to(torch.float64).exp().to(out)
            else:
                values[f] = stored.to(out)
        offset += size
    if mask is not None:
        mask = mask.reshape(tuple(shape))
    block = Block(
        tuple(shape), mask, values, tuple(log_fields), tuple(sign_fields), codec == "known"
    )
    return block, offset


def decode_message(payload: bytes) -> Message:
    """The message of a :func:`encode_message` payload, checked throughout.

    Values come back as float32 tensors (float64 for a float64 payload; log fields
    exponentiated, sign fields as +1.0 / -1.0), masks as bool tensors of the block's shape
    (``None`` for dense blocks).

    Example::

        >>> msg = Message("fedavg/down", 2, 0, scalars={"lr": 0.1, "num_examples": 60})
        >>> decode_message(encode_message(msg)).scalars
        {'lr': 0.1, 'num_examples': 60}

    :param bytes payload: the bytes received.
    :returns: the message.
    :rtype: Message
    :raises ValueError: on anything malformed (see this module's docstring), never another
        exception for a bytes-like ``payload``.
    :raises TypeError: if ``payload`` is not bytes-like.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) < PREFIX_BYTES:
        raise ValueError(f"truncated payload: {len(payload)} bytes, a message has at least 8")
    if payload[:3] != MAGIC:
        raise ValueError(f"bad magic {payload[:3]!r}: not a message (expected {MAGIC!r})")
    if payload[3] != VERSION:
        raise ValueError(f"unsupported message version {payload[3]} (this codec reads {VERSION})")
    size = int.from_bytes(payload[4:8], "little")
    _need(payload, PREFIX_BYTES, size, "the header")
    header = _parse_header(payload[PREFIX_BYTES : PREFIX_BYTES + size])
    dtype = _DTYPE_NAMES[header["dtype"]]
    offset = PREFIX_BYTES + size
    blocks = {}
    for entry in header["blocks"]:
        blocks[entry[0]], offset = _decode_block(payload, offset, entry, dtype)
    if offset != len(payload):
        raise ValueError(f"{len(payload) - offset} trailing bytes after the last block")
    return Message(header["kind"], header["round"], header["client"], blocks, header["scalars"])
