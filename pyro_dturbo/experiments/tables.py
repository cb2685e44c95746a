"""What the experiment drivers and the benchmarks share to report numbers.

- :func:`median`: the median of the values that are not ``None``.
- :func:`summarise`: one row per group of records, with the median (or any aggregate) of each
  field.
- :func:`format_table`: rows as a Markdown table, or as aligned plain text.
- :func:`machine_info`: where and when numbers were measured.
- :func:`write_json`: a JSON report on disk, parent folders created.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["median", "summarise", "format_table", "machine_info", "write_json"]

Record = Mapping[str, Any]
#: A field of :func:`summarise`: a record key (its median over the group) or an aggregate of the
#: group's records.
Field = str | Callable[[Sequence[Record]], Any]


def median(values: Iterable[Any]) -> float | None:
    """The median of the values that are not ``None`` (as floats); ``None`` if there are none.

    Example::

        >>> median([3, None, 1, 2])
        2.0
    """
    clean = [float(v) for v in values if v is not None]
    return statistics.median(clean) if clean else None


def summarise(
    records: Sequence[Record],
    by: Sequence[str],
    fields: Mapping[str, Field],
    *,
    order: Callable[[tuple[Any, ...]], Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per group of records that share the values of the keys ``by``.

    Each row holds those values, ``"runs"`` (the group's size) and one entry per field: for a
    string, the :func:`median` of ``record.get(key)`` over the group (``None`` when no record
    has it); for a callable, its value on the group's records. Groups come in the order they are
    first seen, or sorted by ``order`` applied to the tuple of their ``by`` values.

    Example::

        >>> summarise(records, ("method",), {"accuracy": "accuracy",
        ...           "loss": lambda rs: median(1 - r["accuracy"] for r in rs)})

    :param records: the records (mappings).
    :param by: the keys that define a group (each record must have them).
    :param fields: ``{output name: record key or aggregate}``.
    :param order: a sort key over a group's ``by`` values.
    :returns: the rows.
    :rtype: list[dict]
    """
    groups: dict[tuple[Any, ...], list[Record]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in by), []).append(record)
    keys = list(groups)
    if order is not None:
        keys.sort(key=order)
    rows = []
    for key in keys:
        group = groups[key]
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["runs"] = len(group)
        for name, spec in fields.items():
            row[name] = median(r.get(spec) for r in group) if isinstance(spec, str) else spec(group)
        rows.append(row)
    return rows


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(
    rows: Sequence[Record],
    columns: Sequence[tuple[str, str, str]],
    *,
    style: str = "markdown",
) -> str:
    """Rows as a table: ``style="markdown"`` (readable as plain text too) or ``"text"`` (aligned
    columns under a rule, the first left-aligned, the others right-aligned).

    Example::

        >>> print(format_table([{"method": "a", "acc": 0.5}], [("method", "method", ""),
        ...                                                    ("acc", "acc", ".2f")]))
        | method | acc |
        |---|---|
        | a | 0.50 |

    :param rows: the rows (mappings).
    :param columns: ``(header, key, format spec)`` per column; a missing or ``None`` value
        shows as ``-``.
    :param str style: ``"markdown"`` or ``"text"``.
    :returns: the table, one line per row after the header.
    :rtype: str
    :raises ValueError: on an unknown style.
    """
    headers = [header for header, _, _ in columns]
    cells = [[_cell(row.get(key), spec) for _, key, spec in columns] for row in rows]
    if style == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(line) + " |" for line in cells]
        return "\n".join(lines)
    if style != "text":
        raise ValueError(f"style must be 'markdown' or 'text', got {style!r}")
    widths = [max(len(c) for c in column) for column in zip(headers, *cells, strict=True)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return " ".join([first, *rest])

    header = line(headers)
    return "\n".join([header, "-" * len(header), *(line(c) for c in cells)])


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where and when numbers were measured: date (UTC), versions, platform, CPUs, torch's
    intra-op threads and, given a device, the device (and the GPU's name on CUDA).

    :param device: the device the measurements ran on, if it matters.
    :returns: a JSON-ready dict.
    :rtype: dict
    """
    import pyro

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pyro": pyro.__version__,
    }
    if device is not None:
        device = torch.device(device)
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | Path, report: Any) -> Path:
    """Write ``report`` as indented JSON with a final newline; parent folders are created.

    Values JSON does not know (NumPy or torch scalars) are written as floats.

    :param path: the file. :param report: the JSON-ready object.
    :returns: the path written.
    :rtype: pathlib.Path
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return path
