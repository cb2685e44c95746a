import json
import math

import pytest
import torch

from pyro_dturbo.experiments.regression import (
    SUCCESS_MARGIN_DB,
    compare_regression,
    format_regression_table,
    grid_layout,
    plot_phase_transition,
    regression_priors,
    save_comparison,
    smallest_successful_m,
    summarise_regression,
)
from pyro_dturbo.models import (
    GridMRFSupport,
    IndependentSupport,
    MarkovChainSupport,
    default_regression_prior,
)

FIELDS = {
    "method",
    "num_obs",
    "num_weights",
    "seed",
    "nmse_db",
    "oracle_nmse_db",
    "success",
    "support_f1",
    "time_s",
    "iterations",
}


@pytest.fixture(scope="module")
def tiny_records():
    # float64 problems whatever the default dtype: compare_regression passes its dtype down
    return compare_regression(
        [48],
        [1, 7],  # 37 and 13 active weights (seed 0 has none at N=64)
        num_weights=64,
        methods=["turbo-chain", "turbo-grid", "turbo-independent", "svi", "oracle"],
        svi_steps=20,
        max_iters=30,
        dtype=torch.float64,
        progress_bar=False,
    )


def record(method, num_obs, success, nmse=-20.0, f1=0.5, time_s=1.0, **kw):
    return {
        "method": method,
        "num_obs": num_obs,
        "num_weights": 64,
        "seed": 0,
        "nmse_db": nmse,
        "oracle_nmse_db": -30.0,
        "success": success,
        "support_f1": f1,
        "time_s": time_s,
        "iterations": 10,
        **kw,
    }


def test_grid_layout():
    assert grid_layout(512) == (16, 32)
    assert grid_layout(256) == (16, 16)
    assert grid_layout(64) == (8, 8)
    assert grid_layout(13) == (1, 13)
    with pytest.raises(ValueError):
        grid_layout(0)


def test_priors_come_from_the_default():
    base = default_regression_prior()
    priors = regression_priors(512, p01=0.02, p10=0.2)
    for prior in priors.values():
        assert prior.active == base.active and prior.inactive == base.inactive
    assert isinstance(priors["turbo-chain"].support, MarkovChainSupport)
    grid = priors["turbo-grid"].support
    assert isinstance(grid, GridMRFSupport) and grid.grid == (16, 32)
    independent = priors["turbo-independent"].support
    assert isinstance(independent, IndependentSupport)
    assert independent.p == pytest.approx(0.02 / 0.22)


def test_records_have_the_fields(tiny_records):
    assert len(tiny_records) == 5 * 2
    for r in tiny_records:
        assert FIELDS <= set(r)
        assert r["num_obs"] == 48 and r["num_weights"] == 64
        assert math.isfinite(r["nmse_db"]) and math.isfinite(r["oracle_nmse_db"])
        assert 0.0 <= r["support_f1"] <= 1.0
        assert r["time_s"] >= 0.0
        assert r["success"] == (r["nmse_db"] <= r["oracle_nmse_db"] + SUCCESS_MARGIN_DB)
        if r["method"].startswith("turbo-"):
            assert 0.0 <= r["time_b_fraction"] <= 1.0
            assert r["iterations"] >= 1 and r["iterations"] <= 30
        else:
            assert "time_b_fraction" not in r
    json.dumps(tiny_records)  # JSON-ready


def test_oracle_always_succeeds(tiny_records):
    oracle = [r for r in tiny_records if r["method"] == "oracle"]
    assert len(oracle) == 2
    for r in oracle:
        assert r["success"]
        assert r["nmse_db"] == r["oracle_nmse_db"]
        assert r["support_f1"] == 1.0
    # every method of one problem is scored against the same oracle
    for seed in (1, 7):
        values = {r["oracle_nmse_db"] for r in tiny_records if r["seed"] == seed}
        assert len(values) == 1


def test_known_noise_and_unknown_method():
    records = compare_regression(
        [24], [0], num_weights=16, methods=["turbo-chain"], known_noise=True, progress_bar=False
    )
    assert len(records) == 1
    with pytest.raises(ValueError, match="unknown methods"):
        compare_regression([24], [0], num_weights=16, methods=["lasso"], progress_bar=False)


def test_summarise_hand_checked():
    records = [
        record("turbo-chain", 96, True, nmse=-30.0, f1=1.0, time_s=0.1, time_b_fraction=0.2),
        record("turbo-chain", 96, False, nmse=-10.0, f1=0.5, time_s=0.3, time_b_fraction=0.4),
        record("turbo-chain", 64, False, nmse=-5.0, f1=0.2, time_s=0.2, time_b_fraction=0.1),
        record("oracle", 64, True, nmse=-30.0, f1=1.0, time_s=0.0),
    ]
    summary = summarise_regression(records)
    assert [(r["method"], r["num_obs"]) for r in summary] == [
        ("turbo-chain", 64),
        ("turbo-chain", 96),
        ("oracle", 64),
    ]
    chain96 = summary[1]
    assert chain96["runs"] == 2
    assert chain96["success_rate"] == 0.5
    assert chain96["median_nmse_db"] == pytest.approx(-20.0)
    assert chain96["median_support_f1"] == pytest.approx(0.75)
    assert chain96["median_time_s"] == pytest.approx(0.2)
    assert chain96["median_time_b_fraction"] == pytest.approx(0.3)
    assert summary[0]["success_rate"] == 0.0
    assert summary[2]["median_time_b_fraction"] is None
    table = format_regression_table(summary)
    assert table.count("\n") == 1 + len(summary)
    assert "| turbo-chain | 96 | 2 | 50% | -20.0 |" in table


def test_smallest_successful_m_hand_checked():
    rates = {64: [True] * 9 + [False], 80: [True] * 5 + [False] * 5, 96: [True] * 10}
    rates_b = {64: [False] * 10, 80: [True] * 9 + [False], 96: [True] * 9 + [False]}
    records = [record("a", m, s) for m, ss in rates.items() for s in ss]
    records += [record("b", m, s) for m, ss in rates_b.items() for s in ss]
    records += [record("c", m, False) for m in (64, 96)]
    records += [record("c", 80, True)]
    # a: 64 reaches 90% but 80 does not, so 96; b: 80 and above; c: the largest M fails
    assert smallest_successful_m(records) == {"a": 96, "b": 80, "c": None}
    assert smallest_successful_m(records, rate=0.5) == {"a": 64, "b": 80, "c": None}


def test_plot_and_save(tmp_path, tiny_records):
    path = plot_phase_transition(tiny_records, tmp_path / "sub" / "phase.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paths = save_comparison(tiny_records, tmp_path, "tiny", config={"num_weights": 64})
    report = json.loads(paths["json"].read_text())
    assert report["config"] == {"num_weights": 64}
    assert {"torch", "torch_threads", "cpu_count", "date"} <= set(report["machine"])
    assert report["smallest_successful_m"]["by_method"]["oracle"] == 48
    assert len(report["records"]) == len(tiny_records)
    assert paths["png"].stat().st_size > 0


def test_each_svi_method_fits_with_its_own_guide(monkeypatch):
    from pyro_dturbo.experiments import regression

    guides = []
    real = regression.run_svi

    def spy(*args, **kwargs):
        guides.append(kwargs["guide"])
        return real(*args, **kwargs)

    monkeypatch.setattr(regression, "run_svi", spy)
    records = compare_regression(
        [48],
        [1],
        num_weights=64,
        methods=["svi", "svi-lowrank", "svi-delta"],
        svi_steps=5,
        dtype=torch.float64,
        progress_bar=False,
    )
    assert guides == ["normal", "lowrank", "delta"]
    assert [r["method"] for r in records] == ["svi", "svi-lowrank", "svi-delta"]
    assert all(math.isfinite(r["nmse_db"]) and r["iterations"] == 5 for r in records)
    priors = regression_priors(64)
    assert priors["svi-lowrank"] == priors["svi-delta"] == priors["turbo-chain"]
