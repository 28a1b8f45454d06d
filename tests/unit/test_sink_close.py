"""The sink closes a consumer it replaces within a bound (cdc.sink.close_within): a close that blocks
(its group coordinator unreachable, as a partition campaign once left one) must not block the sink.
The consumer is a stand-in: only the waiting is under test."""

from __future__ import annotations

import threading
import time

import pytest

from cdc.sink import close_within


class StandInConsumer:
    def __init__(self, blocks: threading.Event | None = None, fails: bool = False) -> None:
        self.blocks, self.fails, self.closed = blocks, fails, False

    def close(self) -> None:
        if self.blocks is not None:
            self.blocks.wait(30)
        if self.fails:
            raise RuntimeError("the consumer was already closed")
        self.closed = True


def test_a_close_that_returns_is_waited_for() -> None:
    consumer = StandInConsumer()
    assert close_within(consumer, 5) is True  # type: ignore[arg-type]
    assert consumer.closed


def test_a_close_that_blocks_is_left_behind_after_the_bound() -> None:
    release = threading.Event()
    consumer = StandInConsumer(blocks=release)
    started = time.monotonic()
    assert close_within(consumer, 0.2) is False  # type: ignore[arg-type]
    assert time.monotonic() - started < 5
    assert not consumer.closed
    release.set()  # it finishes in the background
    deadline = time.monotonic() + 5
    while not consumer.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert consumer.closed


def test_a_close_that_fails_raises_its_error() -> None:
    with pytest.raises(RuntimeError, match="already closed"):
        close_within(StandInConsumer(fails=True), 5)  # type: ignore[arg-type]
