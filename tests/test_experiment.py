import json

import pytest
import torch

from pyro_dturbo.cli import main
from pyro_dturbo.experiment import (
    CompressConfig,
    magnitude_baseline,
    network_prior,
    run_compression,
    svi_baseline,
)
from pyro_dturbo.models import SparsePrior

TINY = dict(hidden=(16,), epochs=4, finetune_epochs=1, warmup_epochs=1, dense_epochs=3)


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


def test_network_prior_names():
    assert network_prior("chain").support.kind == "chain"
    assert network_prior("independent").support.kind == "independent"
    with pytest.raises(ValueError, match="unknown prior"):
        network_prior("horseshoe")


def test_cli_compress_writes_report(tmp_path, capsys):
    code = main(
        [
            "compress",
            "--epochs",
            "3",
            "--finetune-epochs",
            "1",
            "--dense-epochs",
            "2",
            "--hidden",
            "8",
            "--out",
            str(tmp_path),
            "--no-progress-bar",
        ]
    )
    assert code == 0
    assert (tmp_path / "report.json").exists() and (tmp_path / "support.png").exists()
    assert "FLOPs" in capsys.readouterr().out


def test_cli_compress_bad_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--dataset", "imagenet"])
    assert main(["compress", "--dataset", "mnist", "--out", str(tmp_path)]) == 2
    assert "data root is required" in capsys.readouterr().err
    code = main(
        ["compress", "--dataset", "mnist", "--data-root", str(tmp_path), "--out", str(tmp_path)]
    )
    assert code == 2
    assert "MNIST" in capsys.readouterr().err
    prior = SparsePrior.chain(layer_priors={"fc7": SparsePrior.chain()})
    path = tmp_path / "prior.yaml"
    prior.to_yaml(path)
    code = main(
        [
            "compress",
            "--prior",
            str(path),
            "--hidden",
            "8",
            "--epochs",
            "2",
            "--finetune-epochs",
            "0",
            "--dense-epochs",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "fc7" in capsys.readouterr().err
    assert main(["compress", "--epochs", "2", "--finetune-epochs", "2"]) == 2
    assert main(["compress", "--device", "tpu9", "--out", str(tmp_path)]) == 2
    assert "not a torch device" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cli_compress_cuda_without_gpu(tmp_path, capsys):
    assert main(["compress", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
