"""The API as users meet it: `booking-ledger api` with two worker processes, keys from the CLI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from core.settings import DatabaseSettings, Settings
from devstack.harness import CLI, LedgerProcess, as_role, process_env, start_api
from tests import scratch
from tests.conftest import free_port

Server = LedgerProcess  # an API: its `url`, `log_path`, `stop()`


def cli(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`booking-ledger ARGS` on `database_url`'s server and database, as the command's own role."""
    env = as_role({**os.environ, "LEDGER_DATABASE_URL": database_url}, args[0])
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, check=check, timeout=60)


def start_server(database_url: str, workers: int = 2, ready_path: str = "/health/ready", **env: str) -> Server:
    """`booking-ledger api` on `database_url` (and nothing else), once ready."""
    log_path = scratch.folder("booking-ledger-api-") / "api.log"
    settings = Settings(database=DatabaseSettings(url=database_url))
    return start_api(process_env(settings, **env), log_path, workers, ready_path)


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
    created = cli(database_url, "keys", "create", "--department", department, "--scopes", scopes)
    return created.stdout.strip().splitlines()[-1]


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
    """An API whose DynamoDB endpoint and Kafka broker are ports nobody listens on: the console must say
    so, not fail."""
    server = start_server(database_url, workers=1, LEDGER_DYNAMODB_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                          LEDGER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
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
    answer = httpx.post(f"{url}/console/sign-in", data={"key": key}, headers={"Origin": url}, timeout=15)
    assert answer.status_code == 303, answer.text[:300]
    return {"Cookie": f"ledger_console={session_cookie(answer)}"}
