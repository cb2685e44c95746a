import json
import os
import subprocess
import sys

import pytest
import torch

from pyro_dturbo.cli import build_parser, main
from pyro_dturbo.models import SparsePrior

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
    dtype = torch.get_default_dtype()
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
    assert report["config"]["dtype"] == "float64"
    assert torch.get_default_dtype() == dtype  # never set


def test_cli_leaves_the_default_dtype_alone(tmp_path, torch_default_dtype):
    """Every method runs on float64 problems passed explicitly, under torch's float32 default,
    and the entry function neither needs nor changes the global default dtype."""
    argv = ["demo", "--out", str(tmp_path / "demo"), "--num-weights", "16", "--num-obs", "12"]
    argv += ["--seed", "4", "--seeds", "1", "--svi-steps", "5", "--no-progress-bar"]
    argv += ["--methods", "turbo-chain", "turbo-independent", "svi", "oracle"]
    assert main(argv) == 0
    assert torch.get_default_dtype() == torch_default_dtype
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert len(report["records"]) == 4
    argv = [
        "compress",
        "--epochs",
        "2",
        "--warmup-epochs",
        "0",
        "--finetune-epochs",
        "1",
        "--dense-epochs",
        "1",
    ]
    argv += ["--hidden", "4", "--out", str(tmp_path / "compress"), "--no-progress-bar"]
    assert main(argv) == 0
    assert torch.get_default_dtype() == torch_default_dtype


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


def test_cli_compress_writes_report(tmp_path, capsys):
    code = main(
        [
            "compress",
            "--epochs",
            "3",
            "--warmup-epochs",
            "0",
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
    printed = capsys.readouterr().out
    assert "FLOPs" in printed and str(tmp_path / "compact.pt") in printed
    from pyro_dturbo.compression import load_compact

    compact = load_compact(tmp_path / "compact.pt")
    assert isinstance(compact, torch.nn.Sequential) and not compact.training
    assert compact(torch.zeros(3, 64, dtype=compact.fc2.weight.dtype)).shape == (3, 10)
    config = json.loads((tmp_path / "report.json").read_text())["config"]
    assert (config["epochs"], config["finetune_epochs"], config["dense_epochs"]) == (3, 1, 2)
    assert config["hidden"] == [8] and config["batch_size"] == 64


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
            "--warmup-epochs",
            "0",
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
    assert (
        main(["compress", "--epochs", "2", "--warmup-epochs", "0", "--finetune-epochs", "2"]) == 2
    )
    assert main(["compress", "--kl-weight", "-1", "--out", str(tmp_path)]) == 2
    assert "kl_weight" in capsys.readouterr().err
    assert main(["compress", "--device", "tpu9", "--out", str(tmp_path)]) == 2
    assert "not a torch device" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cli_compress_cuda_without_gpu(tmp_path, capsys):
    assert main(["compress", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_version(capsys):
    import pyro_dturbo

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dturbo {pyro_dturbo.__version__}"


def test_compress_checks_the_schedule_and_flags_before_training(capsys):
    # the default warm-up (3) and fine-tuning (1) leave no epoch of 4 to decide the support
    assert main(["compress", "--epochs", "4", "--finetune-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--warmup-epochs (3) + --finetune-epochs (1) must be below --epochs (4)" in err
    assert main(["compress", "--model", "lenet5", "--hidden", "8"]) == 2
    assert "--hidden applies to --model mlp only" in capsys.readouterr().err


def test_compress_help_shows_every_default(capsys):
    import re

    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # each flag's own help (up to the next option) ends with its default
    for flag, default in [
        ("--epochs", "100"),
        ("--warmup-epochs", "3"),
        ("--finetune-epochs", "50"),
        ("--dense-epochs", "30"),
        ("--kl-weight", "1.0"),
        ("--seed", "0"),
    ]:
        own = r"(?:(?!\s--[a-z]).)*?"
        pattern = rf"\s{re.escape(flag)} [A-Z_]+ {own}\(default: {re.escape(default)}\)"
        assert re.search(pattern, text), flag
    assert text.count("(default:") >= 12


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if ``dturbo compress`` loads data or trains: the checks come first."""
    import pyro_dturbo.experiments.compress as compress

    def forbidden(*args, **kwargs):
        raise AssertionError("data loaded or training started before the checks")

    monkeypatch.setattr(compress, "load_dataset", forbidden)
    monkeypatch.setattr(compress, "train_dense", forbidden)
    monkeypatch.setattr(compress, "fit_network", forbidden)


SHORT = ["--epochs", "2", "--warmup-epochs", "0", "--finetune-epochs", "0", "--dense-epochs", "1"]


@pytest.mark.parametrize(
    ("model", "layer"), [("mlp", "fc7"), ("lenet5", "fc4"), ("alexnet", "conv5")]
)
def test_compress_refuses_prior_layers_the_model_lacks(tmp_path, capsys, no_loading, model, layer):
    path = tmp_path / "prior.yaml"
    SparsePrior.chain(
        layer_priors={"fc1": SparsePrior.chain(), layer: SparsePrior.chain()}
    ).to_yaml(path)
    code = main(
        ["compress", "--model", model, "--prior", str(path), *SHORT, "--out", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dturbo compress: --prior: ")
    assert repr(layer) in err and f"model {model!r}" in err
    assert "'fc1'" not in err.split(";")[0]  # fc1 exists in every model: not named unknown


def test_compress_accepts_prior_layers_the_model_has(tmp_path, monkeypatch, capsys):
    """The same check passes a prior whose overrides all exist (here the conv layers of
    LeNet-5), and the run goes on to load the data."""
    import pyro_dturbo.experiments.compress as compress

    loaded = []

    def stop(*args, **kwargs):
        loaded.append(args)
        raise ValueError("stopped after the checks")

    monkeypatch.setattr(compress, "load_dataset", stop)
    path = tmp_path / "prior.yaml"
    SparsePrior.chain(layer_priors={"conv1": SparsePrior.chain()}).to_yaml(path)
    code = main(
        ["compress", "--model", "lenet5", "--prior", str(path), *SHORT, "--out", str(tmp_path)]
    )
    assert code == 2 and loaded == [("digits",)]
    assert "stopped after the checks" in capsys.readouterr().err


def test_compress_refuses_a_missing_data_root(tmp_path, capsys, no_loading):
    missing = tmp_path / "no-such-folder"
    argv = ["compress", "--dataset", "mnist", "--model", "lenet5", *SHORT]
    assert main([*argv, "--data-root", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dturbo compress: --data-root: ")
    assert str(missing) in err and "does not exist" in err
    assert not missing.exists() and not (tmp_path / "out").exists()
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    assert main([*argv, "--data-root", str(a_file), "--out", str(tmp_path / "out")]) == 2
    assert "--data-root: " in capsys.readouterr().err


def test_compress_refuses_an_out_folder_it_cannot_create(tmp_path, capsys, no_loading):
    a_file = tmp_path / "report.txt"
    a_file.write_text("a regular file")
    assert main(["compress", *SHORT, "--out", str(a_file / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dturbo compress: --out: ")
    assert str(a_file / "run") in err and "not a writable folder" in err
    assert main(["compress", *SHORT, "--out", str(a_file)]) == 2
    assert "--out: " in capsys.readouterr().err
    assert a_file.read_text() == "a regular file"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_compress_refuses_a_read_only_out_folder(tmp_path, capsys, no_loading):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["compress", *SHORT, "--out", str(locked)]) == 2
        assert main(["compress", *SHORT, "--out", str(locked / "run")]) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert err.count("dturbo compress: --out: ") == 2
