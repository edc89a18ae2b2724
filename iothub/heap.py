"""The cyclic garbage collector, paced by the clock so that it never stops the event loop for long.

Python starts a collection when allocations outnumber deallocations by 700,
and a full one when the long-lived objects have grown by a quarter. Neither
works for a server holding thousands of connections:

- a full collection walks every object the collector tracks, and each
  connection keeps dozens alive for its whole life (aiohttp's request and
  protocol, the WebSocket's reader and writer, Engine.IO's socket, the pump):
  over a million at 15,000 connections, half a second or more each time;
- while old objects die as fast as new ones are made (every socket's pending
  read, replaced by each message; thousands of connections closing at
  once), the count never reaches 700, and the young generation swells to a
  hundred thousand objects before anything walks it.

So :class:`Pacing` turns Python's own trigger off and collects on a timer:
every :data:`PACE_S`, everything that is not frozen is collected, and what
survived is frozen (``gc.freeze``: moved to the permanent generation, which
no collection walks). Before serving, everything the server built is frozen
too. Each collection walks what was made in the last :data:`PACE_S` and is
still alive, once: a few milliseconds, whatever the number of connections.

That is safe because a connection that ends leaves no reference cycle
(``tests/integration/test_garbage.py``): reference counting frees it, frozen
or not. A cycle made of frozen objects would never be collected;
``gc.get_freeze_count()`` tells what is frozen.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from aiohttp import web

#: How often what is not frozen is collected, and what survives frozen: at 2,000 connections opening a second,
#: 50 ms make some 10,000 new objects, about 15 ms of walking.
PACE_S = 0.05


class Pacing:
    """The collector paced as the module says, on the running loop, from :meth:`start` to :meth:`stop`."""

    __slots__ = ("_handle", "_was_enabled")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._was_enabled = True

    def start(self) -> None:
        _collect_and_freeze()
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._handle = asyncio.get_running_loop().call_later(PACE_S, self._tick)

    def stop(self) -> None:
        """Python's own trigger again; what is frozen stays frozen (``gc.unfreeze`` would make the next collection walk it all)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            if self._was_enabled:
                gc.enable()

    def _tick(self) -> None:
        _collect_and_freeze()
        self._handle = asyncio.get_running_loop().call_later(PACE_S, self._tick)


def _collect_and_freeze() -> None:
    gc.collect()
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
