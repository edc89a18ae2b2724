"""The write-behind buffer: telemetry, alerts and owner changes leave the hot path here.

The data plane hands rows over without waiting; a background task commits
them to the store in batches, as soon as a batch is full or the flush interval
has passed, one batch at a time and in order.

Nothing accepted is lost. The buffer is bounded: once it holds ``capacity``
rows, telemetry is refused with ``STORE_UNAVAILABLE`` before anything changes,
so the device can retry. A batch the store fails to take stays at the head of
the queue and is retried with exponential back-off; meanwhile the buffer says
it is ``degraded`` and how large its ``backlog`` is. A clean shutdown writes
everything left.

Durable acknowledgements ride on the batches: taking a row hands back its
:class:`Batch`, whose :meth:`Batch.committed` is one future per batch,
resolved when the batch is committed, so a reply can wait for its batch
(group commit) without a task or an await per message.

The buffer also stands in front of the store as the supervisor's
:class:`~iothub.core.records.Registry`: owner changes are written behind like
the rest, and read back with those not yet written laid over the store's
answer. Batches commit in order, so :meth:`WriteBehind.committed` — the
newest batch's future — covers an owner change taken before it: that is what
a durable registration waits for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from time import perf_counter_ns
from typing import TypeVar

from ..core.errors import ErrorCode, ProtocolError
from ..core.metrics import COMMIT_BUCKETS, Histogram, StoreMetrics
from ..core.records import AlertRecord, DeviceRecord, TelemetryRecord
from .store import Store, guarded

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The first pause after a failed write, doubled after each failure up to the cap.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0


class Batch:
    """Rows committed together, and the future of their commit."""

    __slots__ = ("telemetry", "alerts", "owners", "started", "_committed")

    def __init__(self) -> None:
        self.telemetry: list[TelemetryRecord] = []
        self.alerts: list[AlertRecord] = []
        #: imei → owner e-mail; a later change in the same batch replaces an earlier one.
        self.owners: dict[str, str] = {}
        #: When its first row was taken (time.monotonic), for the age of the backlog.
        self.started: float | None = None
        self._committed: asyncio.Future[None] | None = None

    @property
    def rows(self) -> int:
        return len(self.telemetry) + len(self.alerts) + len(self.owners)

    def committed(self) -> asyncio.Future[None]:
        """Made on first demand: without durable acknowledgements no batch has one."""
        if self._committed is None:
            self._committed = asyncio.get_running_loop().create_future()
        return self._committed

    def settle(self, error: BaseException | None = None) -> None:
        future = self._committed
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


class WriteBehind:
    def __init__(
        self,
        store: Store,
        *,
        capacity: int = 500_000,
        batch_rows: int = 1000,
        flush_interval: float = 0.05,
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        #: Rows taken and not yet committed.
        self.backlog = 0
        #: Whether the last write failed (and is being retried).
        self.degraded = False
        #: How long each batch took to commit, and how many writes and reads failed (``/metrics``).
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.errors = {"write": 0, "read": 0}
        self._open = Batch()
        self._queue: deque[Batch] = deque()
        #: imei → the newest batch that changes its owner, until that batch is committed.
        self._owners: dict[str, Batch] = {}
        self._accepting = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ Recorder

    def telemetry(self, record: TelemetryRecord) -> Batch:
        """Take one message's row and return its batch, or refuse it (``STORE_UNAVAILABLE``) taking nothing."""
        if self.backlog >= self.capacity or not self._accepting:
            self._check_accepting()
            raise ProtocolError(ErrorCode.STORE_UNAVAILABLE, "the store is behind; retry later")
        batch = self._open
        if len(batch.telemetry) >= self.batch_rows:
            batch = self._cut()
        if batch.started is None:
            batch.started = time.monotonic()
        batch.telemetry.append(record)
        self.backlog += 1
        if len(batch.telemetry) >= self.batch_rows:
            self._wake.set()
        return batch

    def alert(self, record: AlertRecord) -> None:
        """Take an alert of the message just taken: never refused, it lands in that message's batch."""
        self._open.alerts.append(record)
        self.backlog += 1

    def committed(self) -> asyncio.Future[None]:
        """A future resolved once every row taken so far is committed; it fails if the server stops first."""
        batch = self._open if self._open.rows else (self._queue[-1] if self._queue else None)
        if batch is not None:
            return batch.committed()
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def backlog_age(self, now: float) -> float:
        """Seconds since the oldest row not yet committed was taken (0: none waits); ``now`` is time.monotonic()."""
        oldest = self._queue[0] if self._queue else self._open
        return now - oldest.started if oldest.started is not None else 0.0

    # ------------------------------------------------------------------ Registry

    async def set_owner(self, imei: str, email: str) -> None:
        """Write the owner behind; refused only at shutdown (a row per registration, one per device at most)."""
        self._check_accepting()
        batch = self._open
        if batch.started is None:
            batch.started = time.monotonic()
        if imei not in batch.owners:
            self.backlog += 1
        batch.owners[imei] = email
        self._owners[imei] = batch

    async def owner_of(self, imei: str) -> str | None:
        pending = self._pending_owner(imei)
        if pending is not None:
            return pending
        stored = await self.read(self.store.owner_of(imei))
        return self._pending_owner(imei) or stored  # a change taken while the store answered is newer

    async def devices_of(self, email: str) -> list[DeviceRecord]:
        before = self._pending_owners()  # what commits while the store answers may be missing from its answer
        records = await self.read(self.store.devices_of(email))
        pending = {**before, **self._pending_owners()}
        if not pending:
            return records
        kept = [record for record in records if pending.get(record.imei, email) == email]
        known = {record.imei for record in kept}
        kept += [DeviceRecord(imei, email) for imei, owner in pending.items() if owner == email and imei not in known]
        return sorted(kept, key=lambda record: record.imei)

    async def read(self, read: Awaitable[T]) -> T:
        """A read of the store, :func:`guarded`, its failure counted: every read of the store comes through here."""
        try:
            return await guarded(read)
        except ProtocolError as error:
            if error.code is ErrorCode.STORE_UNAVAILABLE:
                self.errors["read"] += 1
            raise

    def metrics(self) -> StoreMetrics:
        return StoreMetrics(store=self.store.name, backlog=self.backlog, commit=self.commit_seconds.snapshot(), errors=dict(self.errors))

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise ProtocolError(ErrorCode.STORE_UNAVAILABLE, "the server is shutting down; retry later")

    def _pending_owner(self, imei: str) -> str | None:
        batch = self._owners.get(imei)
        return None if batch is None else batch.owners[imei]

    def _pending_owners(self) -> dict[str, str]:
        return {imei: batch.owners[imei] for imei, batch in self._owners.items()}

    # ------------------------------------------------------------------ the writer

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="iothub-write-behind")

    async def close(self, timeout: float) -> int:
        """Stop taking telemetry and write everything taken, giving a failing store at most
        ``timeout`` seconds; return how many rows were not written (and are lost)."""
        if self._accepting:
            self._accepting = False
            self._wake.set()
            if self._task is None:
                self.start()
            task = self._task
            assert task is not None
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if self.backlog:
                log.error("the %s store did not take the last %d rows within %g s: they are lost", self.store.name, self.backlog, timeout)
                lost = ProtocolError(ErrorCode.STORE_UNAVAILABLE, "the server stopped before it could store this")
                for batch in (*self._queue, self._open):
                    batch.settle(lost)
        return self.backlog

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        while self._accepting or self.backlog:
            if not self._queue:
                if self._accepting and len(self._open.telemetry) < self.batch_rows:
                    await self._due()
                if not self._queue:  # else woken by full batches: the open one may fill up meanwhile
                    self._cut()
                continue
            batch = self._queue[0]
            started = perf_counter_ns()
            try:
                await self.store.write(batch.telemetry, batch.alerts, tuple(batch.owners.items()))
            except Exception as exc:
                self.errors["write"] += 1
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            self.commit_seconds.observe(perf_counter_ns() - started)
            self._written(batch)

    async def _due(self) -> None:
        """Wait until the open batch is full or the flush interval has passed.

        Called when it is not full, so an earlier wake-up (for a batch since written) is stale."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), self.flush_interval)
        except TimeoutError:
            pass

    def _cut(self) -> Batch:
        """Queue the open batch for writing, if it holds anything, and open a new one."""
        if self._open.rows:
            self._queue.append(self._open)
            self._open = Batch()
        return self._open

    def _failed(self, exc: Exception) -> None:
        if not self.degraded:
            log.warning("writing to the %s store failed; keeping %d rows and retrying", self.store.name, self.backlog, exc_info=exc)
        self.degraded = True

    def _written(self, batch: Batch) -> None:
        if self.degraded:
            log.warning("the %s store is back; writing the %d rows kept meanwhile", self.store.name, self.backlog)
            self.degraded = False
        self._queue.popleft()
        self.backlog -= batch.rows
        for imei in batch.owners:
            if self._owners.get(imei) is batch:
                del self._owners[imei]
        batch.settle()
