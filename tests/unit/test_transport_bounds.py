"""The polling queue's bound and the read gate, as plain objects: what keeps one slow client from growing the server."""

from __future__ import annotations

import asyncio
from typing import Any

from engineio import packet as eio_packet

from iothub.frontend.transport import BoundedQueue, FramedPacket, ReadGate


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
