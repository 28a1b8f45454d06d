"""The API as users meet it: `booking-ledger api` with two worker processes, keys from the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

CLI = str(Path(sys.executable).with_name("booking-ledger"))


def cli(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url}
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, check=check, timeout=60)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(database_url: str, workers: int = 2, ready_path: str = "/health/ready", **env: str) -> Server:
    port = free_port()
    environment = {
        **os.environ,
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_HTTP_PORT": str(port),
        "LEDGER_HTTP_WORKERS": str(workers),
        **env,
    }
    log_path = Path(tempfile.mkdtemp(prefix="booking-ledger-api-")) / "api.log"
    log = open(log_path, "ab")
    process = subprocess.Popen([CLI, "api"], env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"API did not become ready on {server.url}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def api(database_url: str) -> Iterator[str]:
    server = start_server(database_url)
    try:
        yield server.url
    finally:
        server.stop()


@dataclass(frozen=True)
class Keys:
    hotel: str
    car: str
    pricing: str  # write:any
    reader: str  # read only
    writer: str  # write only


def make_key(database_url: str, department: str, scopes: str) -> str:
    return cli(database_url, "keys", "create", "--department", department, "--scopes", scopes).stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def keys(database_url: str) -> Keys:
    return Keys(
        hotel=make_key(database_url, "hotel", "read,write"),
        car=make_key(database_url, "car", "read,write"),
        pricing=make_key(database_url, "pricing", "read,write:any"),
        reader=make_key(database_url, "audit", "read"),
        writer=make_key(database_url, "flight", "write"),
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def console_server(database_url: str) -> Iterator[Server]:
    """An API whose DynamoDB endpoint is a port nobody listens on: the console must say so, not fail."""
    server = start_server(database_url, workers=1, LEDGER_DYNAMODB_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    try:
        yield server
    finally:
        server.stop()


def session_cookie(answer: httpx.Response) -> str:
    """The session id a console sign-in answer sets."""
    return answer.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]


def signed_in(url: str, key: str) -> dict[str, str]:
    """Signs in to the console at `url` with `key`; the session's cookie, to send by hand (httpx keeps
    Secure cookies off plain-HTTP requests)."""
    answer = httpx.post(f"{url}/console/sign-in", data={"key": key}, timeout=15)
    assert answer.status_code == 303, answer.text[:300]
    return {"Cookie": f"ledger_console={session_cookie(answer)}"}
