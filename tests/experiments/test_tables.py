import json
import math

import numpy as np
import pytest
import torch

from pyro_dturbo.experiments.tables import (
    format_table,
    machine_info,
    median,
    summarise,
    write_json,
)

RECORDS = [
    {"method": "b", "m": 2, "acc": 0.5, "time": 1.0},
    {"method": "a", "m": 1, "acc": 0.7, "time": None},
    {"method": "b", "m": 2, "acc": 0.9, "time": 3.0},
    {"method": "b", "m": 1, "acc": 0.1},
]


def test_median_skips_none():
    assert median([3, None, 1, 2]) == 2.0
    assert median([1, 2]) == 1.5
    assert median([None]) is None and median([]) is None


def test_summarise_groups_in_first_seen_or_given_order():
    rows = summarise(
        RECORDS,
        ("method", "m"),
        {"acc": "acc", "time": "time", "best": lambda rs: max(r["acc"] for r in rs)},
    )
    assert [(r["method"], r["m"], r["runs"]) for r in rows] == [
        ("b", 2, 2),
        ("a", 1, 1),
        ("b", 1, 1),
    ]
    assert rows[0]["acc"] == pytest.approx(0.7) and rows[0]["time"] == 2.0
    assert rows[0]["best"] == 0.9
    assert rows[1]["time"] is None and rows[2]["time"] is None  # absent or None
    ordered = summarise(RECORDS, ("method", "m"), {}, order=lambda key: key)
    assert [(r["method"], r["m"]) for r in ordered] == [("a", 1), ("b", 1), ("b", 2)]
    assert list(ordered[0]) == ["method", "m", "runs"]


def test_format_table_markdown_and_text():
    rows = [{"method": "turbo", "acc": 0.98765, "share": 0.25}, {"method": "svi", "acc": None}]
    columns = [("method", "method", ""), ("acc", "acc", ".3f"), ("B", "share", ".0%")]
    assert format_table(rows, columns) == (
        "| method | acc | B |\n|---|---|---|\n| turbo | 0.988 | 25% |\n| svi | - | - |"
    )
    assert format_table(rows, columns, style="text").split("\n") == [
        "method   acc   B",
        "----------------",
        "turbo  0.988 25%",
        "svi        -   -",
    ]
    with pytest.raises(ValueError, match="style"):
        format_table(rows, columns, style="html")


def test_machine_info_fields():
    info = machine_info()
    assert {"date", "python", "platform", "cpu_count", "torch", "torch_threads", "pyro"} <= set(
        info
    )
    assert "device" not in info
    assert machine_info("cpu")["device"] == "cpu"
    json.dumps(info)


def test_write_json_creates_folders_and_writes_numbers(tmp_path):
    path = write_json(tmp_path / "a" / "b.json", {"x": np.float32(0.5), "t": torch.tensor(2.0)})
    text = path.read_text()
    assert text.endswith("\n")
    loaded = json.loads(text)
    assert loaded == {"x": 0.5, "t": 2.0}
    assert math.isfinite(loaded["t"])
