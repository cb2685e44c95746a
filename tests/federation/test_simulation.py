"""The in-process runner: its records, bytes, checkpoints and faults; and FederatedConfig."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap

import pytest
import torch
import yaml

import pyro_dturbo.federation.config as config_module
from pyro_dturbo.federation.config import METHODS, FederatedConfig
from pyro_dturbo.federation.simulation import (
    build_method,
    corrupt_reply,
    load_federated_data,
    run_federated,
)
from pyro_dturbo.inference.network import evaluate_accuracy
from tests.common import FINAL_KEYS, ROUND_KEYS
from tests.federation.common import one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


_FIELDS = {f.name for f in dataclasses.fields(FederatedConfig)}


def tiny(**changes) -> FederatedConfig:
    spec = {
        "dataset": "digits",
        "model": "mlp",
        "hidden": [16],
        "clients": 3,
        "rounds": 3,
        "local_epochs": 1,
        "batch_size": 64,
        "warmup_rounds": 1,
        "methods": ["dturbo", "fedavg"],
    }
    if "finetune_rounds" in _FIELDS:  # no fine-tuning phase in these short runs
        spec["finetune_rounds"] = 0
    spec.update(changes)
    return FederatedConfig(**spec)


@pytest.fixture(scope="module")
def tiny_run():
    config = tiny()
    return config, run_federated(config, progress_bar=False)


# -- records ---------------------------------------------------------------------------------
def test_records_have_the_report_keys(tiny_run):
    config, result = tiny_run
    assert list(result.methods) == ["dturbo", "fedavg"]
    for name, method in result.methods.items():
        assert [r.round for r in method.rounds] == [1, 2, 3], name
        for record in method.rounds:
            row = record.to_dict()
            assert set(row) == ROUND_KEYS
            for key in ("bytes_up", "bytes_down", "dropped", "rejected", "corrupted", "round"):
                assert type(row[key]) is int, (name, key)
            assert row["bytes_up"] > 0 and row["bytes_down"] > 0
            assert 0 <= row["accuracy"] <= 1 and 0 < row["density_down"] <= 1
            assert row["dropped"] == row["rejected"] == row["corrupted"] == 0
            assert row["time_s"] >= 0
        final = method.final
        assert set(final) == FINAL_KEYS
        assert final["bytes_up"] == sum(r.bytes_up for r in method.rounds)
        assert final["bytes_down"] == sum(r.bytes_down for r in method.rounds)
        assert final["accuracy"] == method.rounds[-1].accuracy
        assert 0 < final["density"] <= 1
        assert 0 < final["flops_compressed"] <= final["flops_dense"]
    report = result.report()
    assert set(report) == {"config", "methods"}
    assert FederatedConfig.from_dict(report["config"]) == config
    assert set(report["methods"]) == {"dturbo", "fedavg"}
    for entry in report["methods"].values():
        assert set(entry) == {"rounds", "final"}
        assert set(entry["final"]) == FINAL_KEYS
        assert all(set(r) == ROUND_KEYS for r in entry["rounds"])
    json.dumps(report)  # report.json is plain JSON


@pytest.mark.parametrize("name", ["dturbo", "fedavg"])
def test_bytes_are_the_payload_lengths(tiny_run, name):
    """The same rounds run by hand on the method's own server and clients."""
    config, result = tiny_run
    data, parts = load_federated_data(config)
    server, clients = build_method(name, config, data, parts)
    for record in result.methods[name].rounds:
        assert record.density_down == server.density_down()
        payloads = server.broadcast(range(len(clients)))
        assert sorted(payloads) == list(range(config.clients))  # one payload per client
        replies = {k: clients[k].train(p) for k, p in payloads.items()}
        report = server.aggregate(replies)
        assert record.bytes_down == sum(len(p) for p in payloads.values())
        assert record.bytes_up == sum(len(p) for p in replies.values())
        assert record.density_up == report.density_up
        accuracy = evaluate_accuracy(server.global_model(), data.x_test, data.y_test)
        assert record.accuracy == accuracy


# -- checkpoints -----------------------------------------------------------------------------
class Killed(Exception):
    pass


def _kill_after(method: str, round_: int):
    def hook(name, record):
        if name == method and record.round == round_:
            raise Killed(f"{name} killed after round {round_}")

    return hook


def _strip(result):
    return {
        name: [{k: v for k, v in r.to_dict().items() if k != "time_s"} for r in m.rounds]
        for name, m in result.methods.items()
    }


@pytest.mark.parametrize("killed", ["dturbo", "stc"])
def test_killed_run_resumed_from_its_checkpoint_reproduces_the_run(tmp_path, killed):
    config = tiny(rounds=4, methods=["dturbo", "stc"])
    with pytest.raises(Killed):
        run_federated(config, tmp_path / "a", progress_bar=False, hook_fn=_kill_after(killed, 2))
    assert (tmp_path / "a" / "checkpoints" / f"{killed}.pt").exists()
    seen = []
    resumed = run_federated(
        config,
        tmp_path / "a",
        progress_bar=False,
        resume=True,
        hook_fn=lambda name, record: seen.append((name, record.round)),
    )
    # only the missing rounds ran again
    if killed == "dturbo":
        assert seen == [("dturbo", 3), ("dturbo", 4)] + [("stc", r) for r in (1, 2, 3, 4)]
    else:
        assert seen == [("stc", 3), ("stc", 4)]
    whole = run_federated(config, tmp_path / "b", progress_bar=False)
    assert _strip(resumed) == _strip(whole)
    for name in config.methods:
        assert resumed.methods[name].final == whole.methods[name].final
        a = resumed.methods[name].model.state_dict()
        b = whole.methods[name].model.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_false_starts_again(tmp_path):
    config = tiny(rounds=2, methods=["fedavg"])
    with pytest.raises(Killed):
        run_federated(config, tmp_path, progress_bar=False, hook_fn=_kill_after("fedavg", 1))
    seen = []
    run_federated(
        config,
        tmp_path,
        progress_bar=False,
        resume=False,
        hook_fn=lambda name, record: seen.append(record.round),
    )
    assert seen == [1, 2]


# -- faults ----------------------------------------------------------------------------------
FAULTS = {"dropout": 0.2, "corrupt": 0.3}


def _faulty(method):
    config = tiny(clients=5, rounds=4, faults=FAULTS, methods=[method])
    return run_federated(config, progress_bar=False).methods[method]


@pytest.mark.parametrize(
    "method",
    [
        "dturbo",
        "fedavg",
        "fedavg-topk",
        "stc",
    ],
)
def test_faults_every_corrupted_reply_is_rejected_and_counted(method, caplog):
    result = _faulty(method)
    rounds = result.rounds
    assert len(rounds) == 4
    corrupted = sum(r.corrupted for r in rounds)
    dropped = sum(r.dropped for r in rounds)
    assert corrupted > 0 and dropped > 0  # the seed draws both kinds of fault
    assert sum(r.rejected for r in rounds) == corrupted
    for r in rounds:
        assert r.rejected == r.corrupted
        assert r.dropped + r.corrupted <= 5
        assert 0 <= r.accuracy <= 1
    assert 0 <= result.final["accuracy"] <= 1


def test_corrupt_reply_nan_on_an_stc_reply_gives_a_rejected_reply():
    config = tiny(methods=["stc"], baselines={"density": 0.2})
    data, parts = load_federated_data(config)
    server, clients = build_method("stc", config, data, parts, density=0.2)
    payloads = server.broadcast([0, 1, 2])
    reply = clients[0].train(payloads[0])
    bad = corrupt_reply(reply, "nan", config.codec, config.value_dtype, torch.Generator())
    assert 0 in server.aggregate({0: bad}).rejected


def test_corrupt_reply_unknown_kind():
    with pytest.raises(ValueError, match="corruption"):
        corrupt_reply(b"", "flip", "auto", "float16", torch.Generator())


# -- FederatedConfig -------------------------------------------------------------------------
def _documented_example() -> str:
    doc = config_module.__doc__
    start = doc.index("::\n") + 3
    end = doc.index("Every bad value")
    return textwrap.dedent(doc[start:end]).strip() + "\n"


def test_documented_example_reads_and_round_trips(tmp_path):
    text = _documented_example()
    config = FederatedConfig.from_yaml(text)
    assert config.dataset == "digits" and config.model == "mlp"
    assert config.hidden == (256, 256) and config.clients == 10
    assert config.partition == {"type": "iid"} and config.participation == 1.0
    assert (config.rounds, config.local_epochs, config.batch_size) == (40, 2, 32)
    assert config.lr == 0.003 and config.seed == 0
    assert config.prior["support"] == {"type": "chain", "p01": 0.05, "p10": 0.2}
    assert config.aggregation == "product" and config.codec == "auto"
    assert config.value_dtype == "float16"
    assert config.methods == METHODS
    assert config.faults == {"dropout": 0.0, "corrupt": 0.0}
    assert FederatedConfig.from_yaml(config.to_yaml()) == config
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert FederatedConfig.from_yaml(path) == config
    assert FederatedConfig.from_yaml(str(path)) == config
    # every field is in the YAML, and the YAML is plain data
    assert set(yaml.safe_load(config.to_yaml())) == set(config.to_dict())


BAD_FIELDS = [
    ({"clients": 0}, "clients"),
    ({"participation": 0}, "participation"),
    ({"participation": 1.5}, "participation"),
    ({"partition": {"type": "bad"}}, "partition.type"),
    ({"partition": {"type": "dirichlet", "alpha": -1}}, "partition.alpha"),
    ({"partition": {"type": "shards", "per_client": 0}}, "partition.per_client"),
    ({"methods": ["dturbo", "nope"]}, "methods"),
    ({"methods": ["fedavg", "fedavg"]}, "methods"),
    ({"codec": "bad"}, "codec"),
    ({"value_dtype": "float8"}, "value_dtype"),
    ({"faults": {"dropout": 2}}, "faults.dropout"),
    ({"rounds": 3, "warmup_rounds": 3}, "warmup_rounds"),
    ({"rounds": 3, "warmup_rounds": 4}, "warmup_rounds"),
    ({"finetune_rounds": -1}, "finetune_rounds"),
    ({"finetune_rounds": 1.5}, "finetune_rounds"),
    ({"rounds": 2, "finetune_rounds": 1}, "finetune_rounds"),  # no round for the support
]


@pytest.mark.parametrize(("changes", "field"), BAD_FIELDS, ids=[f for _, f in BAD_FIELDS])
def test_bad_field_is_a_value_error_naming_it(changes, field):
    good = {"rounds": 3, "warmup_rounds": 1}
    with pytest.raises(ValueError, match=re.escape(f"FederatedConfig.{field}:")):
        FederatedConfig(**{**good, **changes})
    with pytest.raises(ValueError, match=re.escape(f"FederatedConfig.{field}:")):
        FederatedConfig.from_yaml(yaml.safe_dump({**good, **changes}))


@pytest.mark.skipif("finetune_rounds" not in _FIELDS, reason="no finetune_rounds field")
def test_config_accepted_means_its_methods_build():
    """Either the config is refused naming finetune_rounds, or every method builds."""
    try:
        config = FederatedConfig(rounds=10, warmup_rounds=5, methods=["dturbo"])
    except ValueError as error:
        assert "FederatedConfig.finetune_rounds" in str(error)
        return
    data, parts = load_federated_data(config)
    build_method("dturbo", config, data, parts)


def test_unknown_key_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="bogus"):
        FederatedConfig.from_yaml("clients: 3\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        FederatedConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        FederatedConfig().replace(bogus=1)


def test_missing_yaml_file_names_it(tmp_path):
    path = tmp_path / "no_such_config.yaml"
    with pytest.raises(FileNotFoundError, match="no_such_config.yaml"):
        FederatedConfig.from_yaml(path)
    with pytest.raises(FileNotFoundError, match="no_such_config.yml"):
        FederatedConfig.from_yaml(str(tmp_path / "no_such_config.yml"))


def test_yaml_syntax_error_gives_the_line(tmp_path):
    text = "clients: 3\nrounds: 4\nhidden: [16, 32\nlr: 0.1\n"
    with pytest.raises(ValueError, match="line"):
        FederatedConfig.from_yaml(text)
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"broken\.yaml.*line"):
        FederatedConfig.from_yaml(path)
