"""The Flower engine: records in and out, the strategy over a grid, and a real deployment.

The grid tests drive :class:`~pyro_dturbo.federation.flower.ByteStrategy` through Flower's own
``Strategy.start`` over an in-process grid that hands each message to the ClientApp (each node
with its own ``Context``), so they check the translation layer without processes. The tests
marked ``flower`` start a real SuperLink and SuperNodes on loopback and check that every process
they started is gone afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Context, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from pyro_dturbo.cli import main  # noqa: E402
from pyro_dturbo.federation import FederatedConfig, run_federated  # noqa: E402
from pyro_dturbo.federation.deployment import (  # noqa: E402
    FlowerError,
    LocalFlower,
    default_app,
    run_local,
)
from pyro_dturbo.federation.flower import (  # noqa: E402
    PAYLOAD,
    client_app,
    make_server_app,
    payload_record,
    record_payload,
    run_on_grid,
)
from pyro_dturbo.federation.simulation import (  # noqa: E402
    RoundDriver,
    build_method,
    load_federated_data,
)
from pyro_dturbo.inference.network import evaluate_accuracy  # noqa: E402
from tests.federation.common import one_thread  # noqa: E402

TINY = FederatedConfig(
    hidden=(8,),
    clients=2,
    rounds=2,
    local_epochs=1,
    warmup_rounds=1,
    finetune_rounds=0,
    methods=("dturbo", "stc"),
)


class InProcessGrid:
    """A Flower grid whose nodes are ClientApp calls in this process (node ids are not
    partition ids: node ``i`` holds partition ``partitions[i]``)."""

    def __init__(self, partitions, drop=None):
        self.ids = [1000 + 17 * i for i in range(len(partitions))]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": p, "num-partitions": len(partitions)},
                state=RecordDict(),
                run_config={},
            )
            for node, p in zip(self.ids, partitions, strict=True)
        }
        self.drop = drop or (lambda message: False)
        self.sent = 0

    def get_node_ids(self):
        return list(self.ids)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            self.sent += 1
            if self.drop(message):
                continue  # as a node that never answers: no reply within the timeout
            replies.append(client_app(message, self.contexts[message.metadata.dst_node_id]))
        return replies


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps every Message with the process's task identity (a SuperLink sets it)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_payload_record_round_trip():
    payload = bytes(range(256)) * 3
    record = payload_record(payload)
    assert record_payload(record) == payload
    assert record.count_bytes() == len(payload) + len(PAYLOAD)  # Flower's count: data + key


def test_record_payload_refuses_other_records():
    with pytest.raises(ValueError, match="one raw array"):
        record_payload(ArrayRecord({"weights": Array(torch.zeros(3))}))
    with pytest.raises(ValueError, match="one raw array"):
        record_payload(ArrayRecord({PAYLOAD: Array(torch.zeros(3))}))  # not raw bytes


def test_strategy_over_a_grid_equals_in_process(task_identity):
    """Same accuracy and bytes per round as the in-process engine (nodes keyed by partition
    id, not node id: here node 0 holds partition 1), and Flower's counts beside them."""
    with one_thread():
        reference = run_federated(TINY, progress_bar=False)
        grid = InProcessGrid([1, 0])
        result, flower_bytes = run_on_grid(grid, TINY, round_timeout=5, node_timeout=5)
    for name in TINY.methods:
        ours, theirs = result.methods[name], reference.methods[name]
        assert [r.accuracy for r in ours.rounds] == [r.accuracy for r in theirs.rounds]
        for key in ("bytes_up", "bytes_down", "density_up", "density_down", "rejected"):
            assert [getattr(r, key) for r in ours.rounds] == [
                getattr(r, key) for r in theirs.rounds
            ], (name, key)
        assert ours.final["accuracy"] == theirs.final["accuracy"]
        # Flower counts each payload once more with its key ("payload", 7 bytes)
        for counts, record in zip(flower_bytes[name], ours.rounds, strict=True):
            assert counts["flower_bytes_up"] == record.bytes_up + 7 * TINY.clients
            assert counts["flower_bytes_down"] == record.bytes_down + 7 * TINY.clients
    # the clients' states live in their nodes' contexts, one per method
    for context in grid.contexts.values():
        assert set(context.state.array_records) == {"state.dturbo", "state.stc"}


def test_a_silent_node_keeps_its_site(task_identity):
    """A node that stops answering after round 2: the rounds complete without it, it counts
    as dropped, the records equal an in-process twin whose client 1 sends nothing after round
    2, and the server keeps client 1's site of round 2 on every weight still active."""
    config = TINY.replace(rounds=4, methods=("dturbo",))
    last = 2  # client 1's last answered round

    def drop(message):
        spec = message.content.config_records.get("config")
        return spec is not None and spec.get("client") == 1 and spec["server-round"] > last

    with one_thread():
        grid = InProcessGrid([0, 1], drop=drop)
        result, _ = run_on_grid(grid, config, round_timeout=5, node_timeout=5)
        data, parts = load_federated_data(config)
        server, clients = build_method("dturbo", config, data, parts)
        driver = RoundDriver("dturbo", config, server, len(clients))
        layers = []
        for r in range(1, config.rounds + 1):
            payloads = driver.start_round()
            replies = {k: clients[k].train(p) for k, p in payloads.items() if r <= last or k != 1}
            driver.finish_round(replies, lambda n: evaluate_accuracy(n, data.x_test, data.y_test))
            layers.append(
                {n: {k: v.clone() for k, v in st.items()} for n, st in server.state.items()}
            )
    rounds = result.methods["dturbo"].rounds
    assert [r.dropped for r in rounds] == [0, 0, 1, 1]
    assert [r.rejected for r in rounds] == [0, 0, 0, 0]
    for key in ("accuracy", "bytes_up", "bytes_down", "density_down"):
        assert [getattr(r, key) for r in rounds] == [getattr(r, key) for r in driver.records]
    before, after = layers[last - 1], layers[-1]
    moved = False
    for name, st in after.items():
        active = st["active"]
        assert active.any(), name
        for key in ("site_precision", "site_eta"):
            assert torch.equal(st[key][1][active], before[name][key][1][active]), (name, key)
            moved |= not torch.equal(st[key][0][active], before[name][key][0][active])
    assert moved, "client 0's site should have moved on"


def test_partitions_must_match_the_config(task_identity):
    with pytest.raises(ValueError, match="two SuperNodes hold partition 0"):
        run_on_grid(InProcessGrid([0, 0]), TINY, round_timeout=5, node_timeout=5)
    with pytest.raises(ValueError, match=r"need exactly \[0, 1\]"):
        run_on_grid(InProcessGrid([0, 2]), TINY, round_timeout=5, node_timeout=5)


def test_too_few_nodes_time_out(task_identity):
    with pytest.raises(TimeoutError, match="1 of 2 SuperNodes"):
        run_on_grid(InProcessGrid([0]), TINY, round_timeout=5, node_timeout=0.5)


def test_server_app_run_config_is_checked():
    with pytest.raises(ValueError, match="unknown run config key"):
        make_server_app(defaults={"round_timeout": 5})
    with pytest.raises(ValueError, match="'round-timeout' must be positive"):
        make_server_app(defaults={"round-timeout": 0})


def test_example_app_is_a_valid_flower_app():
    import tomllib

    from flwr.common.config import validate_config

    app = default_app()
    config = tomllib.loads((app / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(config, check_module=True, project_dir=app)
    assert ok, errors
    # the example's experiment is a valid config
    FederatedConfig.from_yaml(app / config["tool"]["flwr"]["app"]["config"]["config-file"])


# ----------------------------------------------------------------------------------------------
# a real deployment: SuperLink + SuperNodes as subprocesses on 127.0.0.1
# ----------------------------------------------------------------------------------------------

DEPLOY = TINY.replace(methods=("dturbo",))


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _in_groups(groups: set[int]) -> list[int]:
    """Running processes whose process group is one of ``groups`` (the apps Flower started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, IndexError, ProcessLookupError):
                continue
            if fields[0] != "Z" and int(fields[2]) in groups:
                found.append(int(entry.name))
    return found


def _with_env(marker: str) -> list[int]:
    """Running processes whose environment holds ``marker`` (a deployment's FLWR_HOME): every
    process it started, their children and grandchildren included, whatever their session."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes() and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
    return found


@pytest.fixture
def deployment_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(DEPLOY.to_yaml())
    return path


@pytest.mark.flower
def test_deployment_equals_in_process(
    deployment_config, tmp_path, torch_default_dtype, monkeypatch, capsys
):
    """``dturbo federate --engine flower`` with 2 SuperNodes, 2 rounds: the report equals the
    in-process engine's, and every process started (SuperLink, SuperNodes and the apps they
    ran) is gone afterwards. (The Flower processes run in torch's default float32, so the
    reference does too.)"""
    import pyro_dturbo.federation.deployment as deployment

    started: list[LocalFlower] = []
    real = deployment.run_local
    monkeypatch.setattr(
        deployment,
        "run_local",
        lambda *a, **k: real(*a, on_start=started.append, timeout=240, **k),
    )
    out = tmp_path / "out"
    argv = ["federate", "--config", str(deployment_config), "--engine", "flower"]
    assert main([*argv, "--out", str(out), "--no-progress", "--round-timeout", "60"]) == 0
    printed = capsys.readouterr().out
    assert "dturbo: 2 rounds done" in printed and "dturbo  accuracy" in printed
    report = json.loads((out / "report.json").read_text())
    pids = started[0].pids
    assert len(pids) == 1 + DEPLOY.clients
    assert not [p for p in pids if _alive(p)]
    assert not _in_groups(set(pids))
    assert not _with_env(str(started[0].home))
    with one_thread():
        reference = run_federated(DEPLOY, progress_bar=False).report()
    ours, theirs = report["methods"]["dturbo"], reference["methods"]["dturbo"]
    for key in ("accuracy", "bytes_up", "bytes_down", "density_up", "density_down"):
        assert [r[key] for r in ours["rounds"]] == pytest.approx(
            [r[key] for r in theirs["rounds"]], abs=1e-6 if key == "accuracy" else 0
        ), key
    assert report["engine"]["name"] == "flower"
    flower_rounds = report["engine"]["flower_bytes"]["dturbo"]
    assert [c["flower_bytes_up"] for c in flower_rounds] == [
        r["bytes_up"] + 7 * DEPLOY.clients for r in ours["rounds"]
    ]
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [row["round"] for row in rows] == [1, 2]


@pytest.mark.flower
def test_deployment_killed_supernode(deployment_config, tmp_path):
    """SuperNode 1 is killed (SIGKILL) once round 1 is recorded: round 2 completes on the
    round timeout without it, it counts as dropped, and nothing is left running. (The grid
    test above checks that such a client keeps its site.)"""
    config = DEPLOY
    started: list[LocalFlower] = []
    killed_at: list[float] = []

    def kill_after_round_one(row):
        if row["round"] == 1 and not killed_at:
            started[0].kill_supernode(1)
            killed_at.append(time.monotonic())

    report = run_local(
        deployment_config,
        tmp_path / "out",
        config.clients,
        total_rounds=config.rounds,
        round_timeout=30,  # above a round's time here (cold ClientApp processes included)
        progress_bar=False,
        on_start=started.append,
        on_round=kill_after_round_one,
        timeout=300,
    )
    assert killed_at, "round 1 was never recorded"
    rounds = report["methods"]["dturbo"]["rounds"]
    assert [r["dropped"] for r in rounds] == [0, 1]
    assert all(r["bytes_up"] > 0 and r["rejected"] == 0 for r in rounds)
    pids = started[0].pids
    assert not [p for p in pids if _alive(p)]
    assert not _in_groups(set(pids))
    assert not _with_env(str(started[0].home))


@pytest.mark.flower
def test_failed_run_is_an_error_and_stops_everything(tmp_path):
    """A run the ServerApp fails (here: its config file is not there) raises FlowerError with
    the ServerApp's reason, and nothing started is left."""
    started: list[LocalFlower] = []
    missing = tmp_path / "gone.yaml"
    with pytest.raises(FlowerError, match="no config file at"):
        run_local(
            missing, tmp_path / "out", 1, progress_bar=False, on_start=started.append, timeout=120
        )
    assert not [p for p in started[0].pids if _alive(p)]
    assert not _with_env(str(started[0].home))


@pytest.mark.flower
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_cli_stops_every_process(sig, deployment_config, tmp_path):
    """Ctrl-C (SIGINT) or SIGTERM to ``dturbo federate --engine flower`` once its SuperLink
    and SuperNodes run: it exits 130 and leaves none of the processes it started."""
    out = tmp_path / "out"
    argv = ["-m", "pyro_dturbo.cli", "federate", "--config", str(deployment_config)]
    proc = subprocess.Popen(
        [sys.executable, *argv, "--engine", "flower", "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids_file = out / "flower" / "pids.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if pids_file.exists():
                pids = json.loads(pids_file.read_text())
                if len(pids["supernodes"]) == DEPLOY.clients:
                    break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the deployment did not start")
        time.sleep(1.0)  # the run being submitted
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted; every Flower process started was stopped" in err
    started = [pids["superlink"], *pids["supernodes"].values()]
    assert not [p for p in started if _alive(p)]
    assert not _with_env(str(out.resolve() / "flower" / "flwr-home"))


@pytest.mark.flower
def test_simulation_engine_equals_in_process(tmp_path, torch_default_dtype):
    """``--engine flower-sim`` (Flower's simulation engine, where Ray is installed) gives the
    in-process engine's records."""
    pytest.importorskip("ray", reason="--engine flower-sim needs the flower-sim extra (Ray)")
    config = DEPLOY.replace(rounds=3)
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    out = tmp_path / "out"
    # in a process of its own, as a user runs it (Ray's warnings are not this suite's)
    argv = ["-m", "pyro_dturbo.cli", "federate", "--config", str(path), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, *argv, "--engine", "flower-sim", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["engine"]["name"] == "flower-sim"
    with one_thread():
        reference = run_federated(config, progress_bar=False).report()
    for ours, theirs in zip(
        report["methods"]["dturbo"]["rounds"], reference["methods"]["dturbo"]["rounds"], strict=True
    ):
        assert abs(ours["accuracy"] - theirs["accuracy"]) <= 1e-6
        assert (ours["bytes_up"], ours["bytes_down"]) == (theirs["bytes_up"], theirs["bytes_down"])


def test_local_flower_refuses_no_nodes():
    with pytest.raises(ValueError, match="num_nodes"):
        LocalFlower(0)


def test_environment_has_no_stray_flower_home(tmp_path):
    """The deployment writes its connection into its own FLWR_HOME, not the user's."""
    flower = LocalFlower(1, workdir=tmp_path)
    assert flower.env["FLWR_HOME"] == str(tmp_path.resolve() / "flwr-home")
    assert flower.env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert os.environ.get("FLWR_HOME") != flower.env["FLWR_HOME"]


def test_client_process_imports_stay_light():
    """A Flower ClientApp process (one per round) imports the federation without ArviZ,
    pandas, xarray, SciPy, matplotlib or scikit-learn: they cost seconds each round."""
    code = (
        "import sys, pyro_dturbo.federation.flower; "
        "print(sorted(m for m in ('arviz', 'pandas', 'xarray', 'scipy', 'matplotlib', 'sklearn')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
