"""How the feed's readers share their waits for the synchronous standby (core.pg.StandbyBarrier): each
reader is covered by a barrier that began after its call, concurrent readers share one, and a failed
or abandoned barrier sends its readers back to read again. The barrier itself is a stand-in here
(the sharing is pure scheduling); tests/integration/test_standby_barrier.py and tests/ha run the real one."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from core.pg import StandbyBarrier, StandbyUnconfirmed


class Barriers:
    """A stand-in barrier that records when each one began and ends when the test says so."""

    def __init__(self) -> None:
        self.clock = itertools.count()
        self.began: list[int] = []  # the tick each barrier began at
        self.conns: list[object] = []  # the connection each ran on
        self.release: list[asyncio.Future[None]] = []

    async def wait(self, conn: object) -> None:
        self.began.append(next(self.clock))
        self.conns.append(conn)
        release = asyncio.get_running_loop().create_future()
        self.release.append(release)
        await release

    async def until_began(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.began) < count:
                await asyncio.sleep(0)


async def one_running() -> tuple[Barriers, StandbyBarrier, asyncio.Task[None]]:
    """A shared barrier with one reader's barrier in flight (begun, not yet ended)."""
    barriers = Barriers()
    barrier = StandbyBarrier(barriers.wait)
    first = asyncio.create_task(barrier.holds("conn-1"))  # type: ignore[arg-type]
    await barriers.until_began(1)
    return barriers, barrier, first


async def reader(barrier: StandbyBarrier, barriers: Barriers, conn: object, called: list[int]) -> None:
    called.append(next(barriers.clock))
    await barrier.holds(conn)  # type: ignore[arg-type]


async def test_readers_that_call_during_a_barrier_share_the_next_one_which_begins_after_their_call() -> None:
    barriers = Barriers()
    barrier = StandbyBarrier(barriers.wait)
    called: list[int] = []
    first = asyncio.create_task(reader(barrier, barriers, "conn-1", called))
    await barriers.until_began(1)
    late = [asyncio.create_task(reader(barrier, barriers, f"conn-{n}", called)) for n in range(2, 9)]
    await asyncio.sleep(0)
    assert len(barriers.began) == 1  # the late readers wait: the running barrier began before them
    barriers.release[0].set_result(None)
    await first
    await barriers.until_began(2)
    assert not any(task.done() for task in late)
    barriers.release[1].set_result(None)
    await asyncio.gather(*late)
    assert len(barriers.began) == 2  # eight readers, two barriers
    assert barriers.began[1] > max(called[1:])  # the shared one began after every late reader's call
    assert barriers.conns == ["conn-1", "conn-2"]  # each ran on its leader's own connection


async def test_a_reader_alone_runs_its_own_barrier_at_once() -> None:
    barriers = Barriers()
    barrier = StandbyBarrier(barriers.wait)
    for round_ in range(3):
        task = asyncio.create_task(barrier.holds("conn"))  # type: ignore[arg-type]
        await barriers.until_began(round_ + 1)
        barriers.release[round_].set_result(None)
        await task
    assert len(barriers.began) == 3


async def test_a_failed_barrier_fails_its_leader_with_its_error_and_its_sharers_as_transient() -> None:
    barriers, barrier, first = await one_running()
    leader = asyncio.create_task(barrier.holds("conn-2"))  # type: ignore[arg-type]
    sharer = asyncio.create_task(barrier.holds("conn-3"))  # type: ignore[arg-type]
    barriers.release[0].set_result(None)
    await first
    await barriers.until_began(2)
    barriers.release[1].set_exception(ConnectionResetError("the leader's connection broke"))
    with pytest.raises(ConnectionResetError):
        await leader
    with pytest.raises(StandbyUnconfirmed):  # transient: the sharer reads its page again
        await sharer
    # The barrier is usable again.
    again = asyncio.create_task(barrier.holds("conn-4"))  # type: ignore[arg-type]
    await barriers.until_began(3)
    barriers.release[2].set_result(None)
    await again


async def test_a_leader_that_leaves_before_its_barrier_began_sends_its_sharers_back_and_none_hangs() -> None:
    barriers, barrier, first = await one_running()
    leader = asyncio.create_task(barrier.holds("conn-2"))  # type: ignore[arg-type]
    sharer = asyncio.create_task(barrier.holds("conn-3"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    leader.cancel()  # its client went away
    with pytest.raises(StandbyUnconfirmed):
        await asyncio.wait_for(sharer, 5)
    barriers.release[0].set_result(None)
    await first
    assert leader.cancelled()
    assert len(barriers.began) == 1  # nobody ran a barrier on the departed reader's connection


async def test_a_sharer_that_leaves_does_not_cancel_the_barrier_of_the_others() -> None:
    barriers, barrier, first = await one_running()
    leader = asyncio.create_task(barrier.holds("conn-2"))  # type: ignore[arg-type]
    sharer = asyncio.create_task(barrier.holds("conn-3"))  # type: ignore[arg-type]
    other = asyncio.create_task(barrier.holds("conn-4"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    sharer.cancel()
    barriers.release[0].set_result(None)
    await first
    await barriers.until_began(2)
    barriers.release[1].set_result(None)
    await asyncio.wait_for(asyncio.gather(leader, other), 5)
    assert sharer.cancelled()
