"""The polling queue's bound, the read gate and the eager handler runner, as plain objects: what keeps one slow
client from growing the server, and a socket's events in order without a task each."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from engineio import packet as eio_packet

from iothub.frontend.transport import BoundedQueue, Endings, FramedPacket, ReadGate, run_eagerly


class Socket:
    sid = "s1"


class Guard:
    def __init__(self, limit: int) -> None:
        self.gate = ReadGate()
        self.max_queued_bytes = limit
        self.cut: list[Any] = []

    def too_slow(self, socket: Any) -> None:
        self.cut.append(socket)


async def test_a_polling_queue_holds_at_most_its_limit_and_one_packet() -> None:
    guard = Guard(limit=1000)
    socket = Socket()  # the queue refers to its socket weakly: the socket holds the queue
    queue = BoundedQueue(socket, guard)  # type: ignore[arg-type]
    for _ in range(100):
        queue.put_nowait(FramedPacket(eio_packet.MESSAGE, "x" * 300))
    assert queue.size <= 1000 + 300 and queue.qsize() == 4
    assert guard.cut == [socket]  # cut off once, however much more comes


async def test_one_packet_larger_than_the_limit_still_goes() -> None:
    guard = Guard(limit=100)
    queue = BoundedQueue(Socket(), guard)  # type: ignore[arg-type]
    queue.put_nowait(FramedPacket(eio_packet.MESSAGE, "x" * 5000))
    assert guard.cut == [] and queue.qsize() == 1
    assert queue.get_nowait() is not None and queue.size == 0


async def test_what_drains_makes_room_again() -> None:
    guard = Guard(limit=1000)
    queue = BoundedQueue(Socket(), guard)  # type: ignore[arg-type]
    for _ in range(50):
        queue.put_nowait(FramedPacket(eio_packet.MESSAGE, "x" * 300))
        queue.get_nowait()
    assert guard.cut == [] and queue.size == 0


async def test_the_read_gate_holds_readers_until_it_opens() -> None:
    gate = ReadGate()
    gate.pause()
    reader = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0.01)
    assert not reader.done()
    gate.resume()
    await asyncio.wait_for(reader, 1)
    await asyncio.wait_for(gate.wait(), 1)  # open: no wait at all


def test_reading_counts_as_held_until_a_ping_timeout_after_it_resumed() -> None:
    """What the gate held back (a pong among it) is read only after it opens: a ping timeout falling just after
    must not close a socket whose answer is still unread."""
    gate = ReadGate()
    assert not gate.held_within(0.3)
    gate.pause()
    assert gate.held_within(0.3)
    gate.resume()
    assert gate.held_within(0.3) and not gate.paused
    gate.resumed_at -= 0.31
    assert not gate.held_within(0.3)


def test_the_read_gate_calls_back_what_stopped_reading_once_it_opens() -> None:
    gate, resumed = ReadGate(), []
    gate.pause()
    gate.on_resume(lambda: resumed.append("a"))
    gate.on_resume(lambda: resumed.append("b"))
    assert resumed == []
    gate.resume()
    assert resumed == ["a", "b"]
    gate.pause()
    gate.resume()
    assert resumed == ["a", "b"]  # called once, not at every opening


async def test_a_handler_that_does_not_wait_runs_at_once_and_needs_no_task() -> None:
    ran = []

    async def handler() -> None:
        ran.append(1)

    assert run_eagerly(handler()) is None
    assert ran == [1]


async def test_a_handler_that_waits_is_finished_by_a_task_with_what_it_awaited() -> None:
    answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    steps: list[object] = []

    async def handler() -> int:
        steps.append("before")
        value = await answer
        steps.append(value)
        await asyncio.sleep(0)
        return value * 2

    rest = run_eagerly(handler())
    assert rest is not None and steps == ["before"]
    answer.set_result(21)
    assert await asyncio.wait_for(rest, 1) == 42
    assert steps == ["before", 21]


async def test_a_waiting_handler_gets_the_error_it_awaited_and_its_tasks_cancellation() -> None:
    failing: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    caught = []

    async def handler() -> None:
        try:
            await failing
        except ValueError as error:
            caught.append(str(error))
        await asyncio.Event().wait()

    rest = run_eagerly(handler())
    assert rest is not None
    failing.set_exception(ValueError("no"))
    await asyncio.sleep(0.01)
    assert caught == ["no"] and not rest.done()
    rest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rest


async def test_the_first_steps_error_is_raised_where_it_was_run() -> None:
    async def handler() -> None:
        raise KeyError("bad")

    with pytest.raises(KeyError):
        run_eagerly(handler())


async def test_sessions_that_end_together_end_a_few_to_a_turn_in_the_order_they_came() -> None:
    turn, ended = 0, []

    class Gone:
        def __init__(self, number: int) -> None:
            self.number = number

        def end(self) -> None:
            ended.append((turn, self.number))

    endings = Endings()
    for number in range(200):
        endings.add(Gone(number))  # type: ignore[arg-type]
    while len(ended) < 200 and turn < 10:
        turn += 1
        await asyncio.sleep(0)
    assert [number for _, number in ended] == list(range(200))
    per_turn = collections.Counter(turn for turn, _ in ended)
    assert max(per_turn.values()) == Endings.PER_TURN and len(per_turn) == 4
    endings.add(Gone(200))  # type: ignore[arg-type]  # and again once the queue ran dry
    await asyncio.sleep(0)
    assert ended[-1][1] == 200
