import json
import subprocess
import sys

import pytest
import torch

from pyro_dturbo.cli import build_parser, main

# seeds 6 and 7 give 3 and 13 active weights at N=64
TINY = [
    "--num-weights",
    "64",
    "--num-obs",
    "40",
    "48",
    "--seeds",
    "2",
    "--methods",
    "turbo-chain",
    "turbo-independent",
    "oracle",
    "--no-progress-bar",
]


def test_demo_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seed", "6", *TINY]) == 0
    report = json.loads((out / "demo.json").read_text())
    assert report["config"]["seeds"] == [6, 7]
    assert report["config"]["num_obs"] == [40, 48]
    assert len(report["records"]) == 2 * 2 * 3
    assert {r["method"] for r in report["summary"]} == {
        "turbo-chain",
        "turbo-independent",
        "oracle",
    }
    assert report["smallest_successful_m"]["by_method"]["oracle"] == 40
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| turbo-chain | 40 |" in printed
    assert str(out / "demo.json") in printed
    assert torch.get_default_dtype() == torch.float64  # restored, not leaked


def test_demo_with_svi(tmp_path):
    out = tmp_path / "svi"
    argv = ["demo", "--out", str(out), "--num-weights", "16", "--num-obs", "12", "--seed", "4"]
    argv += ["--seeds", "1"]
    argv += ["--methods", "svi", "oracle", "--svi-steps", "5", "--no-progress-bar"]
    assert main(argv) == 0
    report = json.loads((out / "demo.json").read_text())
    assert [r["method"] for r in report["records"]] == ["svi", "oracle"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["demo", "--num-obs", "0"],
        ["demo", "--seeds", "many"],
        ["demo", "--methods", "lasso"],
        ["demo", "--unknown-flag"],
    ],
)
def test_bad_arguments_exit_nonzero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    assert "usage" in capsys.readouterr().err


def test_hidden_flags_stay_out_of_help():
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    text = subparsers["demo"].format_help()
    assert "--out" in text and "--seed" in text
    assert "--num-weights" not in text


def test_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_dturbo.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "demo" in proc.stdout
