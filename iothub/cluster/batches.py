"""Items for one other process, sent as one call per loop turn.

A Ray actor call costs about a millisecond and a message some tens of
microseconds: one call per message would cap a gateway at about a thousand
messages a second. A :class:`Batcher` gathers what a loop turn produces and
sends it in one call, with one call in flight at a time — which also keeps
the items in order, as an async actor may run two calls from one caller in
either order. While a call is in flight the next batch grows; with an
``interval``, calls also start at least that far apart, so that a steady
stream goes in batches of many items rather than many calls of a few. Past
``limit`` items waiting, new ones are dropped and counted: a peer that does
not take them cannot make this process's memory grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Items waiting for one peer before new ones are dropped.
BATCH_LIMIT = 200_000


class Batcher(Generic[T]):
    def __init__(
        self, send: Callable[[list[T]], Awaitable[object]], *, name: str, kind: str, interval: float = 0.0, limit: int = BATCH_LIMIT
    ) -> None:
        self.send = send
        self.interval = interval
        #: Who receives the batches, and what they carry: for the log.
        self.name = name
        self.kind = kind
        self.limit = limit
        #: Items and calls sent, items dropped, calls failed: what crossed, for operators.
        self.items = self.calls = self.dropped = self.failures = 0
        self._waiting: list[T] = []
        self._scheduled = False
        self._flying: asyncio.Future[object] | None = None
        #: Resolved once the waiting items' call, and the flying call, have returned (made when asked for).
        self._waiting_done: asyncio.Future[None] | None = None
        self._flying_done: asyncio.Future[None] | None = None
        #: When the last call started (the loop's clock).
        self._last_call = float("-inf")

    def push(self, item: T) -> bool:
        """Take ``item`` for the next batch; False when past the limit (dropped, and counted)."""
        if len(self._waiting) >= self.limit:
            self.dropped += 1
            return False
        self._waiting.append(item)
        self._schedule()
        return True

    def _schedule(self) -> None:
        if self._scheduled or self._flying is not None:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        wait = self._last_call + self.interval - loop.time()
        if wait > 0:
            loop.call_later(wait, self._flush)
        else:
            loop.call_soon(self._flush)

    def flush_now(self) -> None:
        """Send what waits now, if no call is in flight: before a direct call that must come after it."""
        if self._flying is None:
            self._flush()

    def delivered(self) -> asyncio.Future[None]:
        """Resolved once everything pushed so far has been taken by the other side (or its call failed)."""
        loop = asyncio.get_running_loop()
        if self._waiting:
            if self._waiting_done is None:
                self._waiting_done = loop.create_future()
            return self._waiting_done
        if self._flying is not None:
            if self._flying_done is None:
                self._flying_done = loop.create_future()
            return self._flying_done
        done = loop.create_future()
        done.set_result(None)
        return done

    def _flush(self) -> None:
        self._scheduled = False
        if self._flying is not None or not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        self._flying_done, self._waiting_done = self._waiting_done, None
        self.items += len(batch)
        self.calls += 1
        self._last_call = asyncio.get_running_loop().time()
        try:
            self._flying = asyncio.ensure_future(self.send(batch))
        except Exception as exc:  # the call could not even be made: count it as a failed one
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            self._flying = failed
        self._flying.add_done_callback(self._sent)

    def _sent(self, call: asyncio.Future[object]) -> None:
        self._flying = None
        if not call.cancelled() and call.exception() is not None:
            self.failures += 1
            log.warning("a batch of %s to %s failed: %r", self.kind, self.name, call.exception())
        if self._flying_done is not None:
            self._flying_done.set_result(None)
            self._flying_done = None
        if self._waiting:
            if self._last_call + self.interval <= asyncio.get_running_loop().time():
                self._flush()
            else:
                self._schedule()
