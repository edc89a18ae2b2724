"""The cyclic garbage collector, paced so that it never stops the event loop for long.

A full collection walks every object the collector tracks, and each
connection keeps dozens alive for its whole life (aiohttp's request and
protocol, the WebSocket's reader and writer, Engine.IO's socket, the pump):
over a million at 15,000 connections, a stall of half a second or more each
time Python decides to walk them all, while almost none of them ever becomes
cyclic garbage (reference counting frees them when the connection closes).

So :class:`Pacing` makes a full collection walk only what is new. Before
serving, everything the server built is frozen (``gc.freeze``: moved to the
permanent generation, which no collection walks). Full collections then come
every :data:`FULL_EVERY` collections of the middle generation instead of
Python's ten, and right after each one what survived it is frozen too. A
full collection is then as long as what survived since the last one: no
timer, no wake-up, and no more work while nothing is allocated.

The price: a cycle whose objects were frozen, and that becomes garbage
afterwards, is never collected. Measured over a fleet that connected, sent
and closed, Python's own full collections found a few dozen such objects in
all (README, Performance). ``gc.get_freeze_count()`` tells what is frozen.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

#: Collections of the middle generation between two full ones (Python's default is 10): each full collection then
#: walks what survived about two thousand allocations' worth of young collections.
FULL_EVERY = 2


class Pacing:
    """The collector paced as the module says, from :meth:`start` to :meth:`stop`."""

    def __init__(self) -> None:
        self._thresholds: tuple[int, int, int] | None = None

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        self._thresholds = gc.get_threshold()
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, FULL_EVERY)
        gc.callbacks.append(_freeze_after_full)

    def stop(self) -> None:
        """Python's own pacing again; what is frozen stays frozen (``gc.unfreeze`` would make the next collection walk it all)."""
        if self._thresholds is not None:
            gc.callbacks.remove(_freeze_after_full)
            gc.set_threshold(*self._thresholds)
            self._thresholds = None


def _freeze_after_full(phase: str, info: dict[str, Any]) -> None:
    """A collector callback: what survived a full collection is frozen (lists merged: no walk)."""
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def pace_collector(app: web.Application) -> None:
    """This process serves ``app`` and nothing else: pace the collector from its startup to its cleanup.

    A process-wide policy, so the entry point sets it (``iothub serve``), never the application itself: a process
    that embeds the application (the tests) keeps Python's own collector.
    """
    pacing = Pacing()

    async def paced(_app: web.Application) -> AsyncIterator[None]:
        pacing.start()
        yield
        pacing.stop()

    app.cleanup_ctx.insert(0, paced)
