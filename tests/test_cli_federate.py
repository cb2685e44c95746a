import json

import pytest
import torch

import pyro_dturbo.federation.simulation as simulation
from pyro_dturbo.cli import build_parser, main
from tests.common import FINAL_KEYS, ROUND_KEYS

TINY_YAML = """\
dataset: digits
model: mlp
hidden: [8]
clients: 2
rounds: 2
local_epochs: 1
warmup_rounds: 1
finetune_rounds: 0
methods: [dturbo, fedavg]
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the command gets as far as training."""

    def refuse(*args, **kwargs):
        raise AssertionError("run_federated was called")

    monkeypatch.setattr(simulation, "run_federated", refuse)


def test_federate_writes_report_and_plots(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["federate", "--config", str(tiny_config), "--out", str(out), "--no-progress"]
    threads = torch.get_num_threads()
    assert main([*argv, "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # restored
    report = json.loads((out / "report.json").read_text())
    assert report["machine"]["torch_threads"] == 1
    assert report["config"]["clients"] == 2 and report["config"]["hidden"] == [8]
    assert list(report["methods"]) == ["dturbo", "fedavg"]
    for method in report["methods"].values():
        assert set(method) == {"rounds", "final"}
        assert set(method["final"]) == FINAL_KEYS
        assert [r["round"] for r in method["rounds"]] == [1, 2]
        for record in method["rounds"]:
            assert set(record) == ROUND_KEYS
            assert isinstance(record["bytes_up"], int) and record["bytes_up"] > 0
            assert isinstance(record["bytes_down"], int) and record["bytes_down"] > 0
            assert 0.0 <= record["accuracy"] <= 1.0
    assert set(report["summary"]) == {"dturbo", "fedavg"}
    assert report["summary"]["fedavg"]["bytes_to_target_ratio"] == 1.0
    for name in ("accuracy_vs_bytes.png", "support.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "dturbo.pt").exists()
    printed = capsys.readouterr().out
    assert any(line.startswith("dturbo ") and "accuracy" in line for line in printed.splitlines())
    assert str(out / "report.json") in printed and str(out / "support.png") in printed

    # a rerun resumes from the checkpoints (nothing left to train) and writes the same records
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["methods"]["fedavg"]["final"] == report["methods"]["fedavg"]["final"]
    # other settings on the same checkpoints are refused, unless --fresh
    assert main([*argv, "--seed", "3"]) == 2
    assert "--fresh" in capsys.readouterr().err


def test_federate_bad_config_field(tiny_config, tmp_path, capsys, no_training):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_YAML.replace("clients: 2", "clients: 0"))
    assert main(["federate", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "clients" in capsys.readouterr().err
    bad.write_text(TINY_YAML + "learning_rate: 0.1\n")
    assert main(["federate", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "learning_rate" in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    assert main(["federate", "--config", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert "no config file" in capsys.readouterr().err
    # overrides are validated as the config is
    argv = ["federate", "--config", str(tiny_config), "--out", str(tmp_path / "o")]
    assert main([*argv, "--methods", "dturbo,lasso"]) == 2
    assert "methods" in capsys.readouterr().err
    assert main([*argv, "--seed", "-1"]) == 2
    assert "seed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing created before the config is valid


def test_federate_bad_out(tiny_config, tmp_path, capsys, no_training):
    afile = tmp_path / "a_file"
    afile.write_text("")
    for out in (afile, afile / "below"):
        assert main(["federate", "--config", str(tiny_config), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "not a writable folder" in err


@pytest.mark.parametrize("engine", ["flower", "flower-sim"])
def test_federate_flower_without_flower(engine, tiny_config, tmp_path, capsys, monkeypatch):
    """Without Flower installed the Flower engines exit 2 at once, naming the extra."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a)
    )
    argv = ["federate", "--config", str(tiny_config), "--out", str(tmp_path), "--engine", engine]
    assert main(argv) == 2
    assert "pip install 'pyro-dturbo[flower]'" in capsys.readouterr().err


def test_federate_flower_sim_without_ray(tiny_config, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    argv = ["federate", "--config", str(tiny_config), "--out", str(tmp_path)]
    assert main([*argv, "--engine", "flower-sim"]) == 2
    assert "pip install 'pyro-dturbo[flower-sim]'" in capsys.readouterr().err


def test_federate_help_shows_defaults():
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    text = " ".join(subparsers["federate"].format_help().split())
    flags = ("--config", "--out", "--engine", "--rounds", "--methods", "--seed", "--threads")
    for flag in (*flags, "--no-progress", "--fresh"):
        assert flag in text
    assert "(default: inprocess)" in text and "(default: 1)" in text
    assert "(default: the config's)" in text
    assert "(default: None)" not in text
    with pytest.raises(SystemExit):
        main(["federate", "--out", "x"])  # --config is required
    with pytest.raises(SystemExit):
        main(["federate", "--config", "x.yaml", "--out", "x", "--rounds", "0"])


def test_committed_configs_parse():
    from pathlib import Path

    from pyro_dturbo.federation.config import METHODS, FederatedConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    full = FederatedConfig.from_yaml(root / "federated_digits.yaml")
    assert (full.dataset, full.model, full.hidden, full.clients) == (
        "digits",
        "mlp",
        (256, 256),
        10,
    )
    assert (full.rounds, full.local_epochs, full.batch_size, full.lr) == (40, 2, 32, 0.003)
    assert full.prior["support"] == {"type": "chain", "p01": 0.05, "p10": 0.2}
    assert full.methods == METHODS and full.value_dtype == "float16"
    demo = FederatedConfig.from_yaml(root / "federated_digits_demo.yaml")
    assert demo.methods == METHODS and demo.hidden == (64, 64)
    assert demo.replace(hidden=full.hidden, rounds=full.rounds) == full
