import json

import pyro
import pytest
import torch

from pyro_dturbo.experiments.compress import (
    COMPRESS_NETWORK,
    CompressConfig,
    magnitude_baseline,
    network_prior,
    run_compression,
    sparse_vd_baseline,
    svi_baseline,
)
from pyro_dturbo.inference.network import NetworkConfig

TINY_NETWORK = COMPRESS_NETWORK.replace(epochs=4, finetune_epochs=1, warmup_epochs=1)
TINY = dict(hidden=(16,), network=TINY_NETWORK, dense_epochs=3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_compression(CompressConfig(**TINY), out), out


def test_run_compression_report(tiny_run):
    report, out = tiny_run
    saved = json.loads((out / "report.json").read_text())
    for key in (
        "accuracy_dense",
        "accuracy_compressed",
        "density",
        "flops_dense",
        "flops_compressed",
        "neurons_kept",
        "bytes_dense",
        "bytes_compressed",
        "epoch_time_ratio",
    ):
        assert key in saved
    assert (out / "support.png").stat().st_size > 0
    # the digits MLP (64 -> 16 -> 10) has 64*16 + 16*10 weights and as many dense MACs
    assert saved["weights"] == 64 * 16 + 16 * 10
    assert saved["flops_dense"] == 2 * (64 * 16 + 16 * 10)
    assert saved["max_abs_logit_diff"] < 1e-4
    assert saved["accuracy_compressed"] == saved["accuracy_posterior_mean"]


def test_baselines_prune_to_the_requested_density(tiny_run):
    report, _ = tiny_run
    mag = magnitude_baseline(report["_dense"], report["_data"], 0.25, finetune_epochs=1)
    assert mag["density"] == pytest.approx(0.25, abs=1e-3)
    svi = svi_baseline(report["_dense"], report["_data"], 0.25, epochs=1, finetune_epochs=1)
    assert svi["density"] == pytest.approx(0.25, abs=2e-3)
    assert 0.0 <= svi["accuracy"] <= 1.0
    assert svi["flops_ratio"] >= 1.0 and set(svi["neurons_kept"]) == {"fc1", "fc2"}


def test_sparse_vd_baseline_reports_its_own_density_and_structure(tiny_run):
    report, _ = tiny_run
    dense = report["_dense"]
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    svd = sparse_vd_baseline(dense, report["_data"], epochs=6, warmup_epochs=2)
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())  # unchanged
    assert svd["method"] == "sparse-vd"
    assert 0.0 < svd["density"] < 1.0  # the KL prunes without being told a density
    assert 0.0 <= svd["accuracy"] <= 1.0 and 0.0 <= svd["accuracy_unpruned"] <= 1.0
    assert svd["flops_dense"] == 2 * (64 * 16 + 16 * 10)
    assert svd["flops_ratio"] == svd["flops_dense"] / svd["flops_compressed"] >= 1.0
    assert set(svd["neurons_kept"]) == {"fc1", "fc2"} and svd["kl"] > 0


def test_network_prior_names():
    assert network_prior("chain").support.kind == "chain"
    assert network_prior("independent").support.kind == "independent"
    with pytest.raises(ValueError, match="unknown prior"):
        network_prior("horseshoe")


def test_svi_baseline_leaves_the_global_param_store_alone(tiny_run):
    report, _ = tiny_run
    store = pyro.get_param_store()
    user = pyro.param("user_scale", torch.tensor([1.5, 2.5]))
    before = user.detach().clone()
    names = set(store.keys())
    svi_baseline(report["_dense"], report["_data"], 0.5, epochs=1)
    assert set(store.keys()) == names  # no guide parameter left behind
    after = pyro.param("user_scale")
    assert torch.equal(after.detach(), before)
    assert store.get_param("user_scale") is user  # the very same parameter


def test_config_holds_a_network_config():
    config = CompressConfig(**TINY, seed=3)
    assert isinstance(config.network, NetworkConfig)
    assert CompressConfig().network == COMPRESS_NETWORK
    assert (COMPRESS_NETWORK.epochs, COMPRESS_NETWORK.finetune_epochs) == (100, 50)
    assert (COMPRESS_NETWORK.batch_size, COMPRESS_NETWORK.lr) == (64, 2e-3)
    assert config.network_config() == TINY_NETWORK.replace(seed=3)
    flat = config.to_dict()
    json.dumps(flat)
    # the report's config keeps the flat keys it always had
    for key in ("epochs", "finetune_epochs", "warmup_epochs", "batch_size", "lr", "kl_weight"):
        assert flat[key] == getattr(TINY_NETWORK, key)
    for key in ("weight_prior", "finetune", "damping", "dense_epochs", "dense_lr", "hidden"):
        assert key in flat
    assert flat["seed"] == 3 and flat["prior"]["support"]["type"] == "chain"
    assert "network" not in flat


def test_run_compression_report_keeps_its_config_fields(tiny_run):
    report, out = tiny_run
    saved = json.loads((out / "report.json").read_text())
    assert saved["config"] == json.loads(json.dumps(CompressConfig(**TINY).to_dict()))
    assert len(saved["history"]) == TINY_NETWORK.epochs


def test_run_compression_writes_the_compact_model(tiny_run):
    """``compact.pt`` loads (both recipes of the README) into the in-memory compact model's
    predictions, and that model is smaller than the network it came from."""
    from pyro_dturbo.compression import load_compact

    report, out = tiny_run
    path = out / "compact.pt"
    assert str(path) in report["files"]
    compact = report["_compact"]
    x = report["_data"].x_test
    loaded = load_compact(path)
    plain = torch.load(path, weights_only=False)
    with torch.no_grad():
        expected = compact(x)
        assert torch.equal(loaded(x), expected)
        assert torch.equal(plain(x), expected)
        # and the compact model is the pruned network's prediction
        diff = (expected - report["_net"].eval()(x).to(expected)).abs().max()
    assert float(diff) < 1e-4
    assert isinstance(compact, torch.nn.Sequential)
    saved = json.loads((out / "report.json").read_text())
    kept = sum(m.weight.numel() for m in loaded.modules() if hasattr(m, "weight"))
    assert kept == sum(layer["units_kept"] * layer["inputs_kept"] for layer in saved["layers"])


def _documented_keys() -> dict[str, set[str]]:
    """The keys ``docs/report.md`` lists, per section (``""`` for the top level): the
    backticked names of each table row's first cell."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "report.md").read_text()
    sections = {"Top level": "", "Layers": "layers", "History": "history", "Config": "config"}
    keys: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.get(line[3:].strip())
            if current is not None:
                keys[current] = set()
        elif current is not None and line.startswith("| `"):
            keys[current] |= set(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return keys


def test_report_schema_is_documented_and_counts_are_integers(tiny_run):
    """Every key of ``report.json`` (top level, layers, history rows, config) is in
    ``docs/report.md`` and nothing more; counts are JSON integers, densities and accuracies
    fractions, and the warm-up rows (the dense network) have density 1.0."""
    report, out = tiny_run
    saved = json.loads((out / "report.json").read_text())
    documented = _documented_keys()
    assert set(saved) == documented[""]
    assert set(saved["layers"][0]) == documented["layers"]
    assert set().union(*saved["history"]) == documented["history"]
    assert set(saved["config"]) == documented["config"]

    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    top_counts = ["weights", "weights_kept", "parameters_dense", "parameters_compact"]
    top_counts += [k for k in saved if k.startswith(("flops_", "bytes_")) and k != "flops_ratio"]
    assert len(top_counts) == 11
    for key in top_counts:
        assert is_int(saved[key]), key
    assert all(is_int(v) for v in saved["neurons_kept"].values())
    layer_counts = ("weights", "weights_kept", "units", "units_kept", "inputs_kept")
    layer_counts += ("macs_dense", "macs_compact", "bytes_dense", "bytes_coo", "bytes_rle")
    for layer in saved["layers"]:
        assert all(is_int(layer[k]) for k in layer_counts)
        assert all(is_int(d) for d in layer["shape"])
    for key in ("epochs", "warmup_epochs", "finetune_epochs", "dense_epochs", "batch_size"):
        assert is_int(saved["config"][key]), key
    for row in saved["history"]:
        assert is_int(row["iteration"]) and is_int(row["support_size"])
    # the counts agree with each other
    assert saved["weights"] == sum(layer["weights"] for layer in saved["layers"])
    assert saved["flops_compressed"] == 2 * sum(layer["macs_compact"] for layer in saved["layers"])
    compact_params = sum(p.numel() for p in report["_compact"].parameters())
    assert saved["parameters_compact"] == compact_params
    assert saved["parameters_dense"] == sum(p.numel() for p in report["_dense"].parameters())
    for key in ("density", "accuracy_dense", "accuracy_compressed", "fraction_pruned"):
        assert 0.0 <= saved[key] <= 1.0
    # warm-up: the network is dense; afterwards the support sets the density
    warmup = TINY_NETWORK.warmup_epochs
    assert [r["iteration"] for r in saved["history"]] == list(range(1, TINY_NETWORK.epochs + 1))
    assert [r["density"] for r in saved["history"][:warmup]] == [1.0] * warmup
    assert saved["history"][-1]["density"] == pytest.approx(saved["density"], abs=0.01)
