"""The cyclic garbage collector, paced so that it never stops the event loop for long.

A full collection walks every object the collector tracks, and each
connection keeps dozens alive for its whole life (aiohttp's request and
protocol, the WebSocket's reader and writer, Engine.IO's socket, the pump):
over a million at 15,000 connections, a stall of half a second or more each
time Python decides to walk them, while almost none of them is ever cyclic
garbage (reference counting frees them when the connection closes).

So :class:`GcPacer` keeps the collector's work proportional to what changed,
not to what is alive. Before serving, everything the server built moves into
the permanent generation (``gc.freeze``); then every :data:`PACE_S` it
collects what is not frozen (objects that outlived the last pass: a quarter
of a second's worth) and freezes what survived. Automatic collections still
run, over the same small set.

The price: a cycle that becomes garbage after its objects were frozen is
never collected. Measured over a fleet that connected, sent and closed, the
full collections found a few dozen such objects in all (README, Performance);
``gc.get_freeze_count()`` shows what the permanent generation holds.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from aiohttp import web

#: How often what outlived the last pass is collected and frozen. The pass walks what was allocated since and is
#: still alive: a quarter of a second of connecting is a few tens of thousands of objects, about 15 ms.
PACE_S = 0.25


class GcPacer:
    """Collects and freezes on a timer of the running loop (a handle, not a task)."""

    __slots__ = ("_period", "_handle")

    def __init__(self, period_s: float = PACE_S) -> None:
        self._period = period_s
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self._period, self._tick)

    def stop(self) -> None:
        """Stop pacing; what is frozen stays frozen (``gc.unfreeze`` would make the next collection walk it all)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @staticmethod
    def step() -> None:
        """One pass: collect what is not frozen, freeze what survived."""
        gc.collect()
        gc.freeze()

    def _tick(self) -> None:
        self.step()
        self._handle = asyncio.get_running_loop().call_later(self._period, self._tick)


def pace_collector(app: web.Application) -> None:
    """This process serves ``app`` and nothing else: freeze what it built now, and pace the collector while it serves.

    A process-wide policy, so the entry point sets it (``iothub serve``), never the application itself: a process
    that embeds the application (the tests) keeps Python's own collector.
    """
    GcPacer.step()
    pacer = GcPacer()

    async def pacing(_app: web.Application) -> AsyncIterator[None]:
        pacer.start()
        yield
        pacer.stop()

    app.cleanup_ctx.append(pacing)
