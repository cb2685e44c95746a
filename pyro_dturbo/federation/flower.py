"""The Flower engine: the engine-free clients and servers of this package in Flower apps.

Nothing here computes: a :class:`ByteStrategy` (a subclass of Flower's
:class:`~flwr.serverapp.strategy.FedAvg`) asks a method's server
(:class:`~pyro_dturbo.federation.server.DTurboServer`, or a baseline's) for the round's
payloads in :meth:`~ByteStrategy.configure_train` and hands the replies back to it in
:meth:`~ByteStrategy.aggregate_train`; the :data:`client_app` hands the payload it receives to
the method's client (:class:`~pyro_dturbo.federation.client.DTurboClient`, or a baseline's) and
sends back the bytes it returns. Flower's ``Strategy.start`` runs the rounds.

Payloads travel as the codec produced them: one :class:`flwr.app.Array` of raw bytes
(``stype="raw"``), so the bytes counted are the bytes sent. Flower's own count,
:meth:`flwr.app.ArrayRecord.count_bytes` (the payload plus the key's length), is recorded beside
them. Replies are validated by the method's server (a sparse reply's blocks vary from client to
client, so FedAvg's own reply-consistency check does not apply).

Clients are keyed by partition id (``--node-config "partition-id=k num-partitions=K"`` on each
SuperNode), never by Flower's node id: before the first round the ServerApp asks every node for
its partition id with a ``query`` message. A client's state between rounds (its network, Adam,
generators, the supports it holds) lives in the node's ``context.state``.

Run it with ``dturbo federate --engine flower`` (a local SuperLink and one SuperNode per
client), or from an app folder with ``flwr run`` (``examples/flower/``). The run config keys
are :data:`RUN_CONFIG`.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from pyro_dturbo.federation.base import FederatedServer, RoundRecord
from pyro_dturbo.federation.config import FederatedConfig
from pyro_dturbo.federation.simulation import (
    FederatedResult,
    MethodResult,
    RoundDriver,
    build_method,
    final_summary,
    load_federated_data,
    method_densities,
    method_order,
)
from pyro_dturbo.inference.network import evaluate_accuracy

__all__ = [
    "ByteStrategy",
    "RUN_CONFIG",
    "client_app",
    "make_server_app",
    "server_app",
    "payload_record",
    "record_payload",
    "run_on_grid",
    "run_simulation_engine",
]

logger = logging.getLogger("pyro_dturbo.federation.flower")

#: the keys of the run config (``[tool.flwr.app.config]``, or ``flwr run --run-config``):
#: ``config-file`` the experiment's YAML (read by the ServerApp, whose text it sends to the
#: clients), ``out`` a folder for ``report.json`` and the per-round progress
#: (``rounds.jsonl``), ``round-timeout`` seconds to wait for a round's replies, ``node-timeout``
#: seconds to wait for all SuperNodes to connect, ``threads`` torch threads per process.
RUN_CONFIG: dict[str, Any] = {
    "config-file": "",
    "out": "dturbo-flower",
    "round-timeout": 120.0,
    "node-timeout": 120.0,
    "threads": 1,
}

PAYLOAD = "payload"
STATE = "state"


def _raw(data: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(data),), stype="raw", data=data)


def payload_record(payload: bytes) -> ArrayRecord:
    """The codec's bytes as one raw Flower ``Array`` (sent as they are)."""
    return ArrayRecord({PAYLOAD: _raw(payload)})


def record_payload(record: ArrayRecord) -> bytes:
    """The codec's bytes back out of :func:`payload_record`'s record.

    :raises ValueError: if the record holds anything else.
    """
    if list(record.keys()) != [PAYLOAD] or record[PAYLOAD].stype != "raw":
        raise ValueError(f"expected one raw array {PAYLOAD!r}, got {list(record.keys())}")
    return bytes(record[PAYLOAD].data)


def _settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(run_config) - set(RUN_CONFIG))
    if unknown:
        raise ValueError(f"unknown run config key(s) {unknown}; valid keys are {list(RUN_CONFIG)}")
    settings = {**RUN_CONFIG, **dict(run_config)}
    for key in ("round-timeout", "node-timeout"):
        if not float(settings[key]) > 0:
            raise ValueError(f"run config {key!r} must be positive, got {settings[key]!r}")
    if int(settings["threads"]) < 1:
        raise ValueError(f"run config 'threads' must be >= 1, got {settings['threads']!r}")
    return settings


# ----------------------------------------------------------------------------------------------
# ClientApp
# ----------------------------------------------------------------------------------------------

client_app = ClientApp()


def _partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError(
            'the SuperNode has no partition id: start it with --node-config "partition-id=k '
            'num-partitions=K"'
        )
    return int(context.node_config["partition-id"])


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    """Tell the server which partition (client id) this node holds."""
    reply = ConfigRecord({"partition-id": _partition_id(context)})
    return Message(RecordDict({"config": reply}), reply_to=msg)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """One local round of the method named in the message, on this node's partition."""
    spec: dict[str, Any] = dict(msg.content.config_records["config"])
    torch.set_num_threads(int(spec["threads"]))
    config = FederatedConfig.from_yaml(str(spec["config"]))
    method, client_id = str(spec["method"]), _partition_id(context)
    if int(spec["client"]) != client_id:
        raise ValueError(f"a message for client {spec['client']} reached partition {client_id}")
    density = json.loads(str(spec["density"]))
    data, parts = load_federated_data(config)
    _, clients = build_method(method, config, data, parts, density)
    client = clients[client_id]
    key = f"{STATE}.{method}"
    if key in context.state.array_records:
        blob = bytes(context.state.array_records[key][STATE].data)
        client.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
    reply = client.train(record_payload(msg.content.array_records[PAYLOAD]))
    buffer = io.BytesIO()
    torch.save(client.state_dict(), buffer)
    context.state[key] = ArrayRecord({STATE: _raw(buffer.getvalue())})
    content = RecordDict(
        {
            PAYLOAD: payload_record(reply),
            "metrics": MetricRecord({"num-examples": client.num_examples}),
        }
    )
    return Message(content, reply_to=msg)


# ----------------------------------------------------------------------------------------------
# Strategy and ServerApp
# ----------------------------------------------------------------------------------------------


class ByteStrategy(FedAvg):
    """Flower's FedAvg with its two training hooks handed to a method's server.

    :meth:`configure_train` draws the round's clients and asks the server for one payload
    each (through :class:`~pyro_dturbo.federation.simulation.RoundDriver`, as the in-process
    engine does); :meth:`aggregate_train` maps the replies back to client ids and lets the
    server validate and merge them. Client-side evaluation is off: the global model is
    evaluated on the held-out set after every round, as in process.

    :param str method: the method's name (sent to the clients).
    :param FederatedConfig config: the experiment.
    :param FederatedServer server: the method's server.
    :param dict nodes: ``{client id: Flower node id}``.
    :param evaluate: the held-out accuracy of a global model.
    :param density: the top-k / STC density the clients use (JSON-able).
    :param int threads: torch threads in each client process.
    :param hook_fn: called as ``hook_fn(method, record)`` after every round.
    """

    def __init__(
        self,
        method: str,
        config: FederatedConfig,
        server: FederatedServer,
        nodes: Mapping[int, int],
        evaluate: Callable[[torch.nn.Module], float],
        *,
        density: float | list[float] | None = None,
        threads: int = 1,
        hook_fn: Callable[[str, RoundRecord, dict[str, int]], None] | None = None,
    ):
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=len(nodes),
            min_available_nodes=len(nodes),
        )
        self.method, self.config, self.server = method, config, server
        self.nodes = dict(nodes)
        self.clients = {node: k for k, node in self.nodes.items()}
        self.driver = RoundDriver(method, config, server, len(self.nodes))
        self.evaluate = evaluate
        self.hook_fn = hook_fn
        self._spec: dict[str, Any] = {
            "method": method,
            "config": config.to_yaml(),
            "density": json.dumps(density),
            "threads": int(threads),
        }
        #: Flower's ``ArrayRecord.count_bytes()`` per round, beside the records' own counts
        self.flower_bytes: list[dict[str, int]] = []
        self._down = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        payloads = self.driver.start_round()
        messages = []
        self._down = 0
        for k, payload in payloads.items():
            record = payload_record(payload)
            self._down += record.count_bytes()
            spec = ConfigRecord({**self._spec, "client": k, "server-round": server_round})
            messages.append(
                Message(
                    RecordDict({PAYLOAD: record, "config": spec}),
                    dst_node_id=self.nodes[k],
                    message_type=MessageType.TRAIN,
                )
            )
        logger.info("%s round %d: %d payloads sent", self.method, server_round, len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        received: dict[int, bytes] = {}
        up = 0
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                logger.warning("%s: node %d failed: %s", self.method, node, msg.error.reason)
                continue
            if node not in self.clients or PAYLOAD not in msg.content.array_records:
                logger.warning("%s: a reply from node %d without a payload", self.method, node)
                continue
            record = msg.content.array_records[PAYLOAD]
            try:
                received[self.clients[node]] = record_payload(record)
            except ValueError as error:
                logger.warning("%s: node %d: %s", self.method, node, error)
                continue
            up += record.count_bytes()
        record_ = self.driver.finish_round(received, self.evaluate)
        counts = {"flower_bytes_up": up, "flower_bytes_down": self._down}
        self.flower_bytes.append(counts)
        if self.hook_fn is not None:
            self.hook_fn(self.method, record_, counts)
        metrics = MetricRecord(
            {
                "accuracy": record_.accuracy,
                "bytes-up": record_.bytes_up,
                "bytes-down": record_.bytes_down,
                "rejected": record_.rejected,
            }
        )
        return None, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> None:
        return None


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(nodes)} of {count} SuperNodes connected in {timeout:g} s")
        time.sleep(1.0)


def _partitions(grid: Grid, nodes: list[int], count: int, timeout: float) -> dict[int, int]:
    """Ask every node for its partition id: ``{client id: node id}``."""
    queries = [
        Message(RecordDict({"config": ConfigRecord()}), dst_node_id=n, message_type="query")
        for n in nodes
    ]
    found: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
        k = int(cast(int, reply.content.config_records["config"]["partition-id"]))
        if k in found:
            raise ValueError(f"two SuperNodes hold partition {k}")
        found[k] = reply.metadata.src_node_id
    expected = set(range(count))
    if set(found) != expected:
        raise ValueError(
            f"the SuperNodes hold partitions {sorted(found)}; the config's {count} clients "
            f"need exactly {sorted(expected)}"
        )
    return found


def run_on_grid(
    grid: Grid,
    config: FederatedConfig,
    *,
    round_timeout: float = 120.0,
    node_timeout: float = 120.0,
    threads: int = 1,
    hook_fn: Callable[[str, RoundRecord, dict[str, int]], None] | None = None,
) -> tuple[FederatedResult, dict[str, list[dict[str, int]]]]:
    """Every method of ``config`` over a Flower grid; the same records as in process.

    :returns: the :class:`~pyro_dturbo.federation.simulation.FederatedResult` and, per
        method, Flower's own byte counts per round.
    """
    data, parts = load_federated_data(config)
    nodes = _wait_for_nodes(grid, config.clients, node_timeout)
    by_client = _partitions(grid, nodes, config.clients, round_timeout)
    result = FederatedResult(config)
    flower_bytes: dict[str, list[dict[str, int]]] = {}

    def evaluate(net: torch.nn.Module) -> float:
        return evaluate_accuracy(net, data.x_test, data.y_test)

    for name in method_order(config):
        density = method_densities(config, result.methods)
        server, _ = build_method(name, config, data, parts, density)
        strategy = ByteStrategy(
            name,
            config,
            server,
            by_client,
            evaluate,
            density=density,
            threads=threads,
            hook_fn=hook_fn,
        )
        strategy.start(grid, ArrayRecord(), num_rounds=config.rounds, timeout=round_timeout)
        records = strategy.driver.records
        final, compact, support = final_summary(name, server, data, records)
        result.methods[name] = MethodResult(name, records, final, compact, support)
        flower_bytes[name] = strategy.flower_bytes
    result.methods = {name: result.methods[name] for name in config.methods}
    return result, flower_bytes


def make_server_app(
    root: str | Path | None = None,
    defaults: Mapping[str, Any] | None = None,
    *,
    engine: str = "flower",
) -> ServerApp:
    """A ServerApp running :func:`run_on_grid` from the run config (:data:`RUN_CONFIG`).

    :param root: where a relative ``config-file`` is looked up (an app folder passes its own
        directory, which Flower ships with the app); ``None``: the working directory. A
        relative ``out`` is taken in the ServerApp's working directory.
    :param defaults: run config values used where the run's own config has none (Flower's
        simulation engine passes no run config).
    :param str engine: the name ``report.json`` gives the engine.
    """
    app = ServerApp()
    base = Path(root) if root is not None else None
    fixed = dict(defaults or {})
    _settings(fixed)  # a bad key fails here, not in the first round

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        from pyro_dturbo.experiments.federated import write_federated_report

        settings = _settings({**fixed, **context.run_config})
        if not settings["config-file"]:
            raise ValueError("the run config needs 'config-file' (the experiment's YAML)")
        torch.set_num_threads(int(settings["threads"]))
        path = Path(str(settings["config-file"])).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        config = FederatedConfig.from_yaml(path)
        out = Path(str(settings["out"]) or "dturbo-flower").expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        logger.info("config %s, results in %s", path, out)
        progress = out / "rounds.jsonl"
        progress.write_text("")

        def hook(method: str, record: RoundRecord, counts: dict[str, int]) -> None:
            with progress.open("a") as f:
                f.write(json.dumps({"method": method, **record.to_dict(), **counts}) + "\n")

        result, flower_bytes = run_on_grid(
            grid,
            config,
            round_timeout=float(settings["round-timeout"]),
            node_timeout=float(settings["node-timeout"]),
            threads=int(settings["threads"]),
            hook_fn=hook,
        )
        write_federated_report(result, out, engine={"name": engine, "flower_bytes": flower_bytes})

    return app


#: the ServerApp (relative config paths from the working directory)
server_app = make_server_app()


def run_simulation_engine(
    config_file: str | Path,
    out: str | Path,
    *,
    threads: int = 1,
    round_timeout: float = 120.0,
) -> dict[str, Any]:
    """Run an experiment on Flower's simulation engine (Ray; the ``flower-sim`` extra), one
    virtual SuperNode per client, and return its ``report.json``."""
    from flwr.simulation import run_simulation

    config = FederatedConfig.from_yaml(Path(config_file))
    out = Path(out).resolve()
    app = make_server_app(
        defaults={
            "config-file": str(Path(config_file).resolve()),
            "out": str(out),
            "threads": int(threads),
            "round-timeout": float(round_timeout),
        },
        engine="flower-sim",
    )
    run_simulation(
        app,
        client_app,
        num_supernodes=config.clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report
