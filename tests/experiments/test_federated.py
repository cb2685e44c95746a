import json

import pytest
import torch
from torch import nn

from pyro_dturbo.experiments.federated import (
    METHOD_COLORS,
    bytes_to_target,
    method_color,
    plot_accuracy_vs_bytes,
    plot_global_support,
    summary_lines,
    write_federated_report,
)
from pyro_dturbo.federation.base import RoundRecord
from pyro_dturbo.federation.config import METHODS, FederatedConfig
from pyro_dturbo.federation.simulation import FederatedResult, MethodResult
from tests.common import FINAL_KEYS, ROUND_KEYS


def _records(accuracies, up, down, density_up=1.0, density_down=1.0):
    return [
        RoundRecord(
            round=r + 1,
            accuracy=acc,
            bytes_up=up,
            bytes_down=down,
            density_up=density_up,
            density_down=density_down,
            dropped=0,
            rejected=0,
            corrupted=0,
            time_s=0.01,
        )
        for r, acc in enumerate(accuracies)
    ]


def _method(name, accuracies, up, down, support=None, **densities):
    rounds = _records(accuracies, up, down, **densities)
    final = {
        "accuracy": accuracies[-1],
        "density": 1.0,
        "flops_dense": 1000,
        "flops_compressed": 250 if name.startswith("dturbo") else 1000,
        "bytes_up": up * len(rounds),
        "bytes_down": down * len(rounds),
    }
    return MethodResult(name, rounds, final, nn.Identity(), support)


def _result(methods):
    config = FederatedConfig(
        hidden=(4, 3), rounds=4, warmup_rounds=1, methods=[m.name for m in methods]
    )
    return FederatedResult(config, {m.name: m for m in methods})


@pytest.fixture
def result():
    support = {
        "fc1": torch.rand(4, 64) > 0.5,
        "fc2": torch.rand(3, 4) > 0.2,
        "fc3": torch.ones(10, 3, dtype=torch.bool),
    }
    return _result(
        [
            # reaches fedavg's final - 1 point (0.89) in round 2: 2 * (10 + 20) bytes
            _method("dturbo", [0.5, 0.895, 0.90, 0.91], 10, 20, support, density_up=0.2),
            # fedavg: final 0.90, target 0.89, first reached in round 3: 3 * (100 + 100)
            _method("fedavg", [0.6, 0.8, 0.89, 0.90], 100, 100),
            # never gets there
            _method("stc", [0.3, 0.4, 0.5, 0.6], 5, 50),
        ]
    )


def test_colours_cover_every_method():
    assert set(METHOD_COLORS) == set(METHODS)
    assert len(set(METHOD_COLORS.values())) == len(METHODS)
    assert method_color("dturbo") == METHOD_COLORS["dturbo"]
    assert method_color("something-else").startswith("#")


def test_bytes_to_target(result):
    targets = bytes_to_target(result)
    assert targets["fedavg"] == {"bytes_to_target": 600, "bytes_to_target_ratio": 1.0}
    assert targets["dturbo"]["bytes_to_target"] == 60
    assert targets["dturbo"]["bytes_to_target_ratio"] == pytest.approx(0.1)
    assert targets["stc"] == {"bytes_to_target": None, "bytes_to_target_ratio": None}
    # within 5 points: stc still short (0.60 < 0.85), fedavg at round 3, dturbo at round 2
    wide = bytes_to_target(result, points=5.0)
    assert wide["fedavg"]["bytes_to_target"] == 600 and wide["dturbo"]["bytes_to_target"] == 60
    # the report dict gives the same answer as the result
    assert bytes_to_target(result.report()) == targets


def test_bytes_to_target_without_fedavg(result):
    del result.methods["fedavg"]
    targets = bytes_to_target(result)
    assert all(
        v == {"bytes_to_target": None, "bytes_to_target_ratio": None} for v in targets.values()
    )
    assert bytes_to_target(result, target_method="dturbo")["dturbo"]["bytes_to_target_ratio"] == 1.0
    with pytest.raises(ValueError, match="FederatedResult"):
        bytes_to_target({"no": "methods"})


def test_summary_lines(result):
    lines = summary_lines(result)
    assert len(lines) == 3
    dturbo, fedavg, stc = lines
    assert dturbo.startswith("dturbo ") and "accuracy 0.9100" in dturbo
    assert "up   0.000 MB" in dturbo  # 40 bytes
    assert "density up 0.200 mean / down 1.000 last" in dturbo
    assert "FLOPs  25.0% of dense" in dturbo
    assert dturbo.endswith("0.10x") and fedavg.endswith("1.00x") and stc.endswith("n/a")
    del result.methods["fedavg"]
    assert all(line.endswith("n/a") for line in summary_lines(result))


def test_write_federated_report(result, tmp_path):
    paths = write_federated_report(result, tmp_path / "out")
    assert set(paths) == {"report", "accuracy_vs_bytes", "support"}
    report = json.loads(paths["report"].read_text())
    assert set(report) == {"config", "methods", "summary", "machine", "engine"}
    assert report["engine"] == {"name": "inprocess"}
    assert report["config"]["hidden"] == [4, 3]
    assert list(report["methods"]) == ["dturbo", "fedavg", "stc"]
    for method in report["methods"].values():
        assert set(method) == {"rounds", "final"}
        assert set(method["final"]) == FINAL_KEYS
        for record in method["rounds"]:
            assert set(record) == ROUND_KEYS
            assert isinstance(record["bytes_up"], int) and isinstance(record["bytes_down"], int)
            assert 0.0 <= record["accuracy"] <= 1.0
        assert isinstance(method["final"]["bytes_up"], int)
        assert isinstance(method["final"]["bytes_down"], int)
    assert report["summary"]["dturbo"] == {"bytes_to_target": 60, "bytes_to_target_ratio": 0.1}
    assert report["summary"]["stc"]["bytes_to_target"] is None
    assert "torch" in report["machine"]
    for key in ("accuracy_vs_bytes", "support"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"
    # summarising the saved report again gives the same lines
    assert summary_lines(report) == summary_lines(result)


def test_plots_write_png(result, tmp_path):
    path = plot_accuracy_vs_bytes(result, tmp_path / "a" / "accuracy_vs_bytes.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    path = plot_global_support(result, tmp_path / "support.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    # another D-Turbo-VBI method is drawn when the asked one has no support
    result.methods["dturbo-moment"] = result.methods.pop("dturbo")
    assert plot_global_support(result, tmp_path / "moment.png") is not None
    # no D-Turbo-VBI support: nothing drawn, nothing written
    del result.methods["dturbo-moment"]
    assert plot_global_support(result, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    paths = write_federated_report(result, tmp_path / "baselines")
    assert set(paths) == {"report", "accuracy_vs_bytes"}
