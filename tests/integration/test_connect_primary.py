"""core.pg.connect_primary through a failover where the old primary is cut off (its host accepts TCP
and never answers): once its connect has timed out, the next connects try it last, and reach the new
primary at once instead of spending the per-host timeout on the old one every time."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import asyncpg
import pytest

from core.pg import PER_HOST_CONNECT_TIMEOUT, connect_primary


class Host:
    """A TCP proxy in front of the test's Postgres that forwards, stays silent, or closes at once."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "forward"
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.append(writer)
        if self.mode == "silent":
            return
        if self.mode == "closed":
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.held.append(up_writer)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

    def stop(self) -> None:
        for writer in self.held:
            writer.close()
        if self.server is not None:
            self.server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_an_old_primary_that_timed_out_is_tried_last_for_a_while(database_url: str) -> None:
    live = urlsplit(database_url)
    target = (str(live.hostname), int(live.port or 5432))
    old, new = Host(target), Host(target)
    try:
        ports = [await old.start(), await new.start()]
        user = live.netloc.rpartition("@")[0]
        url = database_url.replace(live.netloc, f"{user}@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", 1)
        conn = await connect_primary(url, timeout=10)  # the old primary answers: the last good host
        await conn.close()
        old.mode, new.mode = "silent", "closed"  # cut off; the other not yet promoted
        started = time.monotonic()
        with pytest.raises((OSError, asyncpg.InterfaceError)):
            await connect_primary(url, timeout=10)
        in_failover = time.monotonic() - started
        new.mode = "forward"  # promoted
        started = time.monotonic()
        conn = await connect_primary(url, timeout=10)
        promoted = time.monotonic() - started
        await conn.close()
    finally:
        old.stop()
        new.stop()
    print(f"\nconnect during the failover {in_failover:.2f}s, to the new primary {promoted:.2f}s")
    assert in_failover >= PER_HOST_CONNECT_TIMEOUT * 0.9  # the old primary was waited for once
    assert promoted < PER_HOST_CONNECT_TIMEOUT / 2  # then tried last: the new one answers at once
