"""The write-behind buffer: telemetry and alerts leave the hot path here.

The supervisor appends rows without waiting; a background task writes them to
the store in batches, as soon as a batch is full or the flush interval has
passed, and a clean shutdown writes what is left.
"""

from __future__ import annotations

import asyncio
import logging

from .store import AlertRecord, Store, TelemetryRecord

log = logging.getLogger(__name__)


class WriteBehind:
    def __init__(self, store: Store, *, batch_size: int = 1000, flush_interval: float = 0.05) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._telemetry: list[TelemetryRecord] = []
        self._alerts: list[AlertRecord] = []
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        return len(self._telemetry) + len(self._alerts)

    def telemetry(self, record: TelemetryRecord) -> None:
        self._telemetry.append(record)
        if len(self._telemetry) >= self.batch_size:
            self._full.set()

    def alert(self, record: AlertRecord) -> None:
        self._alerts.append(record)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="iothub-write-behind")

    async def close(self) -> None:
        """Stop the background task and write everything still buffered."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Write the buffer in batches; a batch leaves the buffer only once written."""
        while self._telemetry or self._alerts:
            telemetry = self._telemetry[: self.batch_size]
            alerts = self._alerts[: self.batch_size]
            await self.store.write(telemetry, alerts)
            del self._telemetry[: len(telemetry)]
            del self._alerts[: len(alerts)]

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._full.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._full.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("writing a batch to %s failed", self.store.name)
