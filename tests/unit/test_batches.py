"""The batcher that carries what crosses between processes: one call per loop turn, one in flight, in order, bounded."""

from __future__ import annotations

import asyncio

import pytest

from iothub.cluster.batches import Batcher


class Peer:
    """The other side: records each batch; each call takes until :meth:`answer` lets it return."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.open: list[asyncio.Future[None]] = []
        self.fail_next = False

    async def take(self, batch: list[int]) -> None:
        self.batches.append(batch)
        answer = asyncio.get_running_loop().create_future()
        self.open.append(answer)
        await answer
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the peer is gone")

    def answer(self) -> None:
        self.open.pop(0).set_result(None)


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_what_one_loop_turn_pushes_goes_in_one_call() -> None:
    peer = Peer()
    batcher: Batcher[int] = Batcher(peer.take, name="peer", kind="numbers")
    for item in range(5):
        batcher.push(item)
    await turn()
    assert peer.batches == [[0, 1, 2, 3, 4]]
    assert (batcher.items, batcher.calls) == (5, 1)


async def test_one_call_in_flight_while_the_next_batch_grows_in_order() -> None:
    peer = Peer()
    batcher: Batcher[int] = Batcher(peer.take, name="peer", kind="numbers")
    batcher.push(0)
    await turn()
    for item in range(1, 4):
        batcher.push(item)
        await turn()
    assert peer.batches == [[0]], "no second call while the first is in flight"
    peer.answer()
    await turn()
    assert peer.batches == [[0], [1, 2, 3]]


async def test_delivered_waits_for_the_call_that_carries_what_was_pushed() -> None:
    peer = Peer()
    batcher: Batcher[int] = Batcher(peer.take, name="peer", kind="numbers")
    batcher.push(0)
    await turn()
    batcher.push(1)
    delivered = batcher.delivered()
    peer.answer()  # the call with 0 returns; 1 is sent now
    await turn()
    assert not delivered.done()
    peer.answer()
    await turn()
    assert delivered.done()
    assert batcher.delivered().done(), "nothing waits: delivered at once"


async def test_a_failed_call_is_counted_and_the_next_batch_still_goes() -> None:
    peer = Peer()
    batcher: Batcher[int] = Batcher(peer.take, name="peer", kind="numbers")
    peer.fail_next = True
    batcher.push(0)
    await turn()
    batcher.push(1)
    peer.answer()
    await turn()
    assert batcher.failures == 1
    assert peer.batches == [[0], [1]]


async def test_a_call_that_cannot_be_made_is_a_failure_not_a_stuck_batcher() -> None:
    calls = 0

    def refuse(batch: list[int]) -> asyncio.Future[None]:
        nonlocal calls
        calls += 1
        raise KeyError("no such peer")

    batcher: Batcher[int] = Batcher(refuse, name="peer", kind="numbers")
    batcher.push(0)
    await turn()
    batcher.push(1)
    await turn()
    assert (calls, batcher.failures) == (2, 2)
    await asyncio.wait_for(batcher.delivered(), 1)


@pytest.mark.parametrize("limit", [1, 3])
async def test_past_its_limit_a_batcher_drops_and_counts(limit: int) -> None:
    peer = Peer()
    batcher: Batcher[int] = Batcher(peer.take, name="peer", kind="numbers", limit=limit)
    batcher.push(0)
    await turn()  # in flight: the rest waits
    for item in range(1, 10):
        batcher.push(item)
    assert batcher.dropped == 9 - limit
    peer.answer()
    await turn()
    assert peer.batches[1] == list(range(1, limit + 1))


async def test_with_an_interval_calls_start_that_far_apart_and_carry_what_gathered() -> None:
    peer = Peer()
    batcher: Batcher[int] = Batcher(peer.take, name="peer", kind="numbers", interval=0.05)
    batcher.push(0)
    await turn()
    peer.answer()
    for item in range(1, 4):
        batcher.push(item)
        await turn()
    assert peer.batches == [[0]], "the next call waits for the interval"
    await asyncio.sleep(0.06)
    await turn()
    assert peer.batches == [[0], [1, 2, 3]]
