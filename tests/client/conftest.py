"""The client against the real stack: a private Postgres, broker and DynamoDB Local (devstack's
Stack) with API, relay and sink, and a TCP proxy that loses an answer or a request on purpose.

The stack is this folder's own rather than the integration folder's session fixtures: fixtures
imported into a second conftest are set up twice per session (and pipeline_template's CREATE
DATABASE would fail the second time)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from core.settings import Settings
from devstack.harness import LedgerProcess, Stack
from tests import scratch
from tests.e2e.conftest import make_key


@dataclass
class ClientStack:
    """A ledger with its API, relay and sink; keys of three departments."""

    own: Stack
    settings: Settings
    api: LedgerProcess
    hotel: str  # read,write
    car: str  # read,write
    reader: str  # read only

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def table(self) -> str:
        return self.settings.dynamo.table

    @property
    def dynamodb_endpoint(self) -> str:
        return self.settings.dynamo.endpoint

    def start_api(self, **extra: str) -> LedgerProcess:
        """Another API on this ledger (say with a low rate limit); stopped with the stack."""
        return self.own.start_api(self.settings, workers=1, **extra)

    def restart_sink(self, between: Callable[[], None]) -> None:
        """Stop the sink, run `between`, start a new sink (also when `between` fails)."""
        sink = next(p for p in self.own.processes if p.kind == "sink" and p.alive)
        sink.stop()
        try:
            between()
        finally:
            self.own.start("sink", self.settings)


@pytest.fixture(scope="module")
def stack() -> Iterator[ClientStack]:
    own = Stack(scratch.folder("booking-ledger-client-"))
    try:
        own.start_postgres()
        own.start_pipeline_servers()
        url = own.database("client")
        settings = own.settings(url)
        api = own.start_api(settings, workers=1)
        own.start("relay", settings)
        own.start("sink", settings)
        yield ClientStack(own, settings, api, make_key(url, "hotel", "read,write"), make_key(url, "car", "read,write"),
                          make_key(url, "audit", "read"))
    finally:
        own.stop()


class Proxy:
    """A TCP proxy to `upstream_port` that spoils its first connection on purpose.

    mode "drop_answer": the request is forwarded whole; the answer is swallowed and the
    connection closed (the client never learns that the ledger stored its append).
    mode "drop_request": the request is read, `before_drop` runs, and the connection is closed
    without forwarding anything. Later connections are forwarded faithfully.
    """

    def __init__(self, upstream_port: int, mode: str, before_drop: Callable[[], None] | None = None) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.before_drop = before_drop
        self.connections = 0
        self.dropped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            first = self.connections == 0
            self.connections += 1
            threading.Thread(target=self._serve, args=(client, first), daemon=True).start()

    def _serve(self, client: socket.socket, first: bool) -> None:
        if first and self.mode == "drop_request":
            client.recv(65536)
            if self.before_drop:
                self.before_drop()
            client.close()
            self.dropped.set()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, first and self.mode == "drop_answer")

    def _pump(self, source: socket.socket, target: socket.socket, drop: bool) -> None:
        try:
            while data := source.recv(65536):
                if drop:
                    self.dropped.set()
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., Proxy]]:
    proxies: list[Proxy] = []

    def make(upstream_url: str, mode: str, before_drop: Callable[[], None] | None = None) -> Proxy:
        proxy = Proxy(int(upstream_url.rsplit(":", 1)[1]), mode, before_drop)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
