"""A local Flower deployment for ``dturbo federate --engine flower``: processes only.

:class:`LocalFlower` starts a SuperLink and one SuperNode per client on 127.0.0.1 (each
SuperNode with ``--node-config "partition-id=k num-partitions=K"``), submits the Flower app
(``examples/flower/``, or any folder laid out like it) with ``flwr run``, follows the run until
Flower reports it finished, and stops every process it started, by PID, also on an exception
or Ctrl-C (a context manager). Its ``FLWR_HOME`` is a private folder (the connection is
written there), so the user's own Flower configuration is untouched.

Nothing here imports Flower: the commands are the ``flower-superlink``, ``flower-supernode``
and ``flwr`` executables of the environment (``pip install "pyro-dturbo[flower]"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LocalFlower",
    "FlowerError",
    "free_ports",
    "flower_executables",
    "default_app",
    "run_local",
]

CONNECTION = "dturbo-local"
#: Flower's settings for a quiet, offline local deployment
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


class FlowerError(RuntimeError):
    """A Flower process failed or a run did not complete; the message names which."""


def flower_executables() -> dict[str, str]:
    """Paths of ``flower-superlink``, ``flower-supernode`` and ``flwr`` beside this Python.

    :raises FlowerError: if Flower is not installed (the ``flower`` extra).
    """
    bindir = Path(sys.executable).parent
    found = {}
    for name in ("flower-superlink", "flower-supernode", "flwr"):
        path = bindir / name
        where = str(path) if path.exists() else shutil.which(name)
        if where is None:
            raise FlowerError(
                f"{name} not found: install the Flower extra (pip install 'pyro-dturbo[flower]')"
            )
        found[name] = where
    return found


def default_app() -> Path:
    """The app folder shipped with the repository (``examples/flower``)."""
    return Path(__file__).resolve().parents[2] / "examples" / "flower"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


class LocalFlower:
    """A SuperLink and ``num_nodes`` SuperNodes on loopback, for one or more runs.

    Example::

        >>> with LocalFlower(2, workdir="results/flower") as flower:
        ...     run_id = flower.submit(default_app(), {"config-file": "/abs/cfg.yaml",
        ...                                            "out": "/abs/out"})
        ...     flower.wait(run_id, timeout=600)

    :param int num_nodes: SuperNodes to start, holding partitions ``0..num_nodes-1``.
    :param workdir: where the logs (``superlink.log``, ``supernode-k.log``) and ``FLWR_HOME``
        go (a temporary folder when ``None``).
    :param dict env: extra environment variables for every process (e.g. thread counts).
    """

    def __init__(
        self,
        num_nodes: int,
        *,
        workdir: str | Path | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
    ):
        if int(num_nodes) < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes!r}")
        self.num_nodes = int(num_nodes)
        self.exe = flower_executables()
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory()
        root = Path(workdir) if workdir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.workdir = root.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        bindir = str(Path(self.exe["flwr"]).parent)
        self.env = {
            **os.environ,
            **QUIET_ENV,
            **(env or {}),
            "FLWR_HOME": str(self.home),
            # SuperExec starts flwr-serverapp / flwr-clientapp by bare name
            "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        }
        self.startup_timeout = float(startup_timeout)
        self.port = 0
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        return subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
            start_new_session=True,  # its own group: a Ctrl-C here reaches us, not it
        )

    @property
    def pids(self) -> list[int]:
        """Every process this deployment started (SuperLink first)."""
        procs = ([self.superlink] if self.superlink else []) + list(self.supernodes.values())
        return [p.pid for p in procs]

    def start(self) -> LocalFlower:
        """Start the SuperLink, wait for its health endpoint, start the SuperNodes."""
        if self.superlink is not None:
            raise RuntimeError("already started")
        ports = free_ports(1 + self.num_nodes)
        self.port = ports[0]
        self.superlink = self._spawn(
            "superlink",
            [
                self.exe["flower-superlink"],
                "--insecure",
                "--isolation",
                "subprocess",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                ":flwr-in-memory:",
            ],
        )
        self._wait_healthy()
        for k in range(self.num_nodes):
            self.start_supernode(k, ports[1 + k])
        self._write_connection()
        return self

    def _write_pids(self) -> None:
        """``pids.json`` in the work folder: what to stop by hand if this process dies hard."""
        pids = {
            "superlink": self.superlink.pid if self.superlink else None,
            "supernodes": {str(k): p.pid for k, p in self.supernodes.items()},
        }
        (self.workdir / "pids.json").write_text(json.dumps(pids, indent=1) + "\n")

    def start_supernode(self, k: int, port: int | None = None) -> subprocess.Popen[bytes]:
        """Start the SuperNode holding partition ``k``."""
        port = port if port is not None else free_ports(1)[0]
        proc = self._spawn(
            f"supernode-{k}",
            [
                self.exe["flower-supernode"],
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(port),
                "--node-config",
                f"partition-id={k} num-partitions={self.num_nodes}",
                "--max-retries",
                "3",
            ],
        )
        self.supernodes[k] = proc
        self._write_pids()
        return proc

    def kill_supernode(self, k: int) -> None:
        """Kill SuperNode ``k`` at once (SIGKILL: no goodbye to the SuperLink)."""
        proc = self.supernodes[k]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def _wait_healthy(self) -> None:
        url = f"http://127.0.0.1:{self.port}/health"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.superlink is not None
            if self.superlink.poll() is not None:
                raise FlowerError(f"the SuperLink exited: see {self.workdir / 'superlink.log'}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                    if response.status == 200:
                        return
            time.sleep(0.3)
        raise FlowerError(f"the SuperLink was not healthy in {self.startup_timeout:g} s ({url})")

    def _write_connection(self) -> None:
        (self.home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            "insecure = true\n"
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process started (SuperNodes first), SIGKILL what is left after
        ``grace`` seconds; the apps they started are in their process groups."""
        procs = list(self.supernodes.values()) + ([self.superlink] if self.superlink else [])
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in procs:
            # the whole group: also a flwr-serverapp / flwr-clientapp still running
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # what the SuperLink or a SuperNode started in a session of its own (a flwr-serverapp or
        # flwr-clientapp) is not in their groups: find it by the FLWR_HOME it inherited
        deadline = time.monotonic() + grace
        while (strays := self.strays()) and time.monotonic() < deadline:
            for pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def strays(self) -> list[int]:
        """Live processes (other than this one) whose environment holds this deployment's
        ``FLWR_HOME``: everything it started, however detached. Linux only (``/proc``); an
        empty list elsewhere."""
        marker = f"FLWR_HOME={self.home}\0".encode()
        found: list[int] = []
        proc = Path("/proc")
        if not proc.is_dir():
            return found
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker not in (entry / "environ").read_bytes() + b"\0":
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                found.append(int(entry.name))
        return found

    def __enter__(self) -> LocalFlower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # ------------------------------------------------------------------ runs
    def _flwr(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run(
            [self.exe["flwr"], *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise FlowerError(
                f"flwr {args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}"
            )
        return done.stdout

    def submit(self, app: str | Path, run_config: dict[str, Any]) -> int:
        """``flwr run APP`` on this SuperLink with ``run_config``; returns the run id."""
        overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
        out = self._flwr("run", str(app), CONNECTION, "--run-config", overrides, "--format", "json")
        try:
            reply = json.loads(out[out.index("{") :])
        except (ValueError, json.JSONDecodeError):
            raise FlowerError(f"flwr run printed no run id: {out}") from None
        if not reply.get("success", True) or "run-id" not in reply:
            raise FlowerError(f"flwr run failed: {reply}")
        return int(reply["run-id"])

    def status(self, run_id: int) -> str:
        """Flower's status of a run, e.g. ``"running"`` or ``"finished:completed"``."""
        out = self._flwr("ls", CONNECTION, "--format", "json")
        reply = json.loads(out[out.index("{") :])
        for run in reply.get("runs", []):
            if int(run.get("run-id", -1)) == run_id:
                return str(run.get("status", "unknown"))
        return "unknown"

    def log(self, run_id: int) -> str:
        """The ServerApp's log of a run so far."""
        return self._flwr("log", str(run_id), CONNECTION, "--show", timeout=60.0)

    def wait(
        self,
        run_id: int,
        *,
        timeout: float,
        poll: float = 2.0,
        on_poll: Callable[[], None] | None = None,
    ) -> str:
        """Wait for the run to finish; return its final status.

        :raises FlowerError: if it fails, is stopped, the SuperLink dies, or ``timeout``
            passes (the ServerApp's log is in the message).
        """
        deadline = time.monotonic() + timeout
        while True:
            if on_poll is not None:
                on_poll()
            assert self.superlink is not None
            if self.superlink.poll() is not None:
                raise FlowerError(f"the SuperLink exited: see {self.workdir / 'superlink.log'}")
            status = self.status(run_id)
            if status.startswith("finished"):
                if status != "finished:completed":
                    raise FlowerError(f"run {run_id} {status}:\n{self._safe_log(run_id)}")
                return status
            if time.monotonic() > deadline:
                raise FlowerError(
                    f"run {run_id} still {status} after {timeout:g} s:\n{self._safe_log(run_id)}"
                )
            time.sleep(poll)

    def _safe_log(self, run_id: int) -> str:
        try:
            return self.log(run_id)[-4000:]
        except (FlowerError, subprocess.TimeoutExpired) as error:
            return f"(no log: {error})"


def _read_rounds(path: Path, seen: int) -> list[dict[str, Any]]:
    """The complete lines of ``rounds.jsonl`` after the first ``seen``."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    done = [line for line in lines if line.endswith("\n")]
    return [json.loads(line) for line in done[seen:]]


def run_local(
    config_file: str | Path,
    out: str | Path,
    num_clients: int,
    *,
    total_rounds: int | None = None,
    threads: int = 1,
    round_timeout: float = 120.0,
    app: str | Path | None = None,
    progress_bar: bool = True,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
    on_start: Callable[[LocalFlower], None] | None = None,
) -> dict[str, Any]:
    """Run an experiment on a fresh local deployment and return its ``report.json``.

    Starts a SuperLink and ``num_clients`` SuperNodes (logs in ``out/flower``), submits the
    app (default :func:`default_app`) with the run config ``config-file`` / ``out`` /
    ``threads`` / ``round-timeout``, follows ``out/rounds.jsonl`` (a tqdm bar over
    ``total_rounds``, and ``on_round(row)`` per round) until Flower reports the run finished,
    and stops every process it started, whatever happens.

    :param timeout: seconds for the whole run (default: ``round_timeout`` per round + 10 min).
    :param on_start: called with the started deployment (tests kill a SuperNode through it).
    :raises FlowerError: if a process fails or the run does not complete.
    """
    from tqdm.auto import tqdm

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    progress = out / "rounds.jsonl"
    progress.unlink(missing_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # only this run's report is returned
    limit = timeout if timeout is not None else (total_rounds or 1) * round_timeout + 600.0
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    bar = tqdm(total=total_rounds, desc="flower", disable=not progress_bar, leave=False)
    seen = 0

    def follow() -> None:
        nonlocal seen
        for row in _read_rounds(progress, seen):
            seen += 1
            bar.update(1)
            bar.set_postfix(method=row["method"], acc=f"{row['accuracy']:.3f}")
            if on_round is not None:
                on_round(row)

    try:
        with LocalFlower(num_clients, workdir=out / "flower", env=env) as flower:
            if on_start is not None:
                on_start(flower)
            run_config = {
                "config-file": str(Path(config_file).resolve()),
                "out": str(out),
                "threads": int(threads),
                "round-timeout": float(round_timeout),
            }
            run_id = flower.submit(app if app is not None else default_app(), run_config)
            flower.wait(run_id, timeout=limit, poll=1.0, on_poll=follow)
            follow()
    finally:
        bar.close()
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report
