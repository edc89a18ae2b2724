"""The embedded store: SQLite in a local file, created on first start; no server to install.

The standard library's ``sqlite3`` runs on two dedicated threads, each owning
one connection (SQLite connections must stay on their thread): a writer that
commits each batch in one transaction, and a reader, so that a subscription
or a history page never waits behind a batch (WAL lets them run side by side).
``synchronous=NORMAL`` keeps a committed batch through a crash of the process;
with durable acknowledgements it is ``FULL``, which keeps it through a power
cut too, at the cost of an fsync per batch.

The writer thread runs at a lower CPU priority than the event loop (Linux
keeps a nice value per thread). Where the two share a core, serving goes
first and batches are written in the time the loop leaves idle; the bounded
write-behind buffer absorbs the difference, and refuses telemetry
(``STORE_UNAVAILABLE``) if it ever fills. Durable acknowledgements wait for
the writer, so on a saturated core it is their latency that grows.

An imei, 15 digits by the protocol, is kept as an integer: the indexes every
row goes into are smaller and a batch costs a quarter less.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..core.records import AlertRecord, DeviceRecord, TelemetryRecord
from .store import (
    DAY_MS,
    Page,
    R,
    Window,
    decode_cursor,
    newest_by_device,
    page_of,
)

log = logging.getLogger(__name__)
_encode_json = msgspec.json.Encoder().encode

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    imei INTEGER PRIMARY KEY,
    owner TEXT,
    last_timestamp INTEGER,
    last_data TEXT,
    last_received_at INTEGER
);
CREATE INDEX IF NOT EXISTS devices_owner ON devices (owner);
CREATE TABLE IF NOT EXISTS telemetry (
    id INTEGER PRIMARY KEY,
    imei INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    data TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_imei_timestamp ON telemetry (imei, timestamp);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    imei INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    code TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_imei_timestamp ON alerts (imei, timestamp);
CREATE INDEX IF NOT EXISTS alerts_code_timestamp ON alerts (code, timestamp);
CREATE INDEX IF NOT EXISTS alerts_timestamp ON alerts (timestamp);
"""


#: The batch's statements, as (INSERT …, what follows its VALUES).
SET_OWNER = ("INSERT INTO devices (imei, owner)", "ON CONFLICT (imei) DO UPDATE SET owner = excluded.owner")
INSERT_TELEMETRY = ("INSERT INTO telemetry (imei, timestamp, data, received_at)", "")
INSERT_ALERTS = ("INSERT INTO alerts (imei, timestamp, code, level, message, data)", "")
SET_LAST = (
    "INSERT INTO devices (imei, last_timestamp, last_data, last_received_at)",
    """ON CONFLICT (imei) DO UPDATE SET
    last_timestamp = excluded.last_timestamp, last_data = excluded.last_data, last_received_at = excluded.last_received_at
WHERE devices.last_timestamp IS NULL OR excluded.last_timestamp >= devices.last_timestamp""",
)
DEVICES_OF = "SELECT imei, owner, last_timestamp, last_data, last_received_at FROM devices WHERE owner = ? ORDER BY imei"

#: How long a write waits for a lock another process holds before the batch fails (and is retried).
BUSY_TIMEOUT_MS = 1000
#: How often old history is deleted when a retention is set.
PURGE_INTERVAL_S = 3600
#: Rows an INSERT carries at most (fewer if SQLite allows fewer parameters).
ROWS_PER_STATEMENT = 500
#: WAL pages between checkpoints (1000 by default): the index pages every batch
#: touches are copied to the database once per checkpoint, so fewer checkpoints copy less.
WAL_CHECKPOINT_PAGES = 10_000
#: How much less favoured the writer thread is than the event loop (a nice increment).
#: 10 still leaves it about a tenth of a core the loop keeps busy.
WRITER_NICENESS = 10

T = TypeVar("T")


class _Thread:
    """One thread and the one connection it owns."""

    def __init__(self, name: str, niceness: int = 0) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_be_nicer, initargs=(niceness,))
        self._connection: sqlite3.Connection | None = None

    @property
    def connection(self) -> sqlite3.Connection:
        """The thread's connection; only the thread itself may use it."""
        if self._connection is None:
            raise RuntimeError("the SQLite store is not open")
        return self._connection

    async def connect(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connection = await self.run(connect)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    async def close(self) -> None:
        if self._connection is not None:
            await self.run(self._connection.close)
            self._connection = None
        self._executor.shutdown(wait=False)


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: str | Path, *, durable: bool = False, retention_days: int = 0) -> None:
        self.path = Path(path)
        self.durable = durable
        self.retention_ms = retention_days * DAY_MS
        self._writer = _Thread("iothub-sqlite-writer", WRITER_NICENESS)
        self._reader = _Thread("iothub-sqlite-reader")
        self._purged_at = 0.0

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._writer.connect(functools.partial(self._connect, True))
        await self._reader.connect(functools.partial(self._connect, False))
        await self.purge(time.time_ns() // 1_000_000)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    def _connect(self, writer: bool) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if writer:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
            connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            # A multi-row INSERT keeps a statement journal (to undo itself alone if a row fails), by
            # default in a temporary file opened for each batch; in memory a batch costs 20-30 % less
            # CPU. It plays no part in durability.
            connection.execute("PRAGMA temp_store = MEMORY")
            connection.executescript(SCHEMA)
        else:
            connection.execute("PRAGMA query_only = ON")
        return connection

    # ------------------------------------------------------------------ writes

    async def set_owner(self, imei: str, email: str) -> None:
        await self.write((), (), ((imei, email),))

    async def write(
        self, telemetry: Sequence[TelemetryRecord], alerts: Sequence[AlertRecord], owners: Sequence[tuple[str, str]] = ()
    ) -> None:
        await self._writer.run(self._write, telemetry, alerts, owners)

    def _write(self, telemetry: Sequence[TelemetryRecord], alerts: Sequence[AlertRecord], owners: Sequence[tuple[str, str]]) -> None:
        with _transaction(self._writer.connection) as connection:
            _insert(connection, SET_OWNER, [(int(imei), email) for imei, email in owners])
            _insert(connection, INSERT_TELEMETRY, [(int(r.imei), r.timestamp, r.data.decode(), r.receivedAt) for r in telemetry])
            _insert(
                connection, INSERT_ALERTS, [(int(a.imei), a.timestamp, a.code, a.level, a.message, a.data.decode()) for a in alerts]
            )
            newest = newest_by_device(telemetry).values()
            _insert(connection, SET_LAST, [(int(r.imei), r.timestamp, r.data.decode(), r.receivedAt) for r in newest])
        if self.retention_ms and time.monotonic() - self._purged_at > PURGE_INTERVAL_S:
            try:
                self._purge(time.time_ns() // 1_000_000)
            except sqlite3.Error as exc:  # the batch is committed: it must not be retried for this
                log.warning("deleting old history failed: %r", exc)

    async def purge(self, now_ms: int) -> None:
        """Delete history older than the retention (by the rows' timestamps); the last telemetry stays.

        Done at open and then hourly, after a batch, on the writer's thread."""
        await self._writer.run(self._purge, now_ms)

    def _purge(self, now_ms: int) -> None:
        self._purged_at = time.monotonic()
        if not self.retention_ms:
            return
        before = now_ms - self.retention_ms
        with _transaction(self._writer.connection) as connection:  # each device's range of (imei, timestamp)
            connection.execute("DELETE FROM telemetry WHERE imei IN (SELECT imei FROM devices) AND timestamp < ?", (before,))
            connection.execute("DELETE FROM alerts WHERE timestamp < ?", (before,))

    # ------------------------------------------------------------------ reads

    async def owner_of(self, imei: str) -> str | None:
        return await self._reader.run(self._owner_of, imei)

    def _owner_of(self, imei: str) -> str | None:
        row = self._reader.connection.execute("SELECT owner FROM devices WHERE imei = ?", (int(imei),)).fetchone()
        return None if row is None else row[0]

    async def devices_of(self, email: str) -> list[DeviceRecord]:
        return await self._reader.run(self._devices_of, email)

    def _devices_of(self, email: str) -> list[DeviceRecord]:
        devices = []
        for key, owner, timestamp, data, received_at in self._reader.connection.execute(DEVICES_OF, (email,)):
            imei = _imei(key)
            last = None if timestamp is None else TelemetryRecord(imei, timestamp, data.encode(), received_at)
            devices.append(DeviceRecord(imei, owner, last))
        return devices

    async def telemetry_history(self, imei: str, window: Window) -> Page[TelemetryRecord]:
        return await self._reader.run(self._history, "telemetry", {"imei": int(imei)}, window, _telemetry_row)

    async def alert_history(
        self,
        window: Window,
        *,
        imeis: Collection[str] | None = None,
        code: str | None = None,
        level: str | None = None,
    ) -> Page[AlertRecord]:
        filters = {"code": code, "level": level}
        if imeis is not None:
            filters["imeis"] = _encode_json([int(imei) for imei in imeis]).decode()
        return await self._reader.run(self._history, "alerts", filters, window, _alert_row)

    def _history(
        self, table: str, filters: dict[str, int | str | None], window: Window, row: Callable[[tuple[Any, ...]], R]
    ) -> Page[R]:
        """One page of ``table``, newest first, through the (…, timestamp) indexes."""
        where: list[str] = []
        params: list[int | str] = []
        for column, value in filters.items():
            if value is not None:
                where.append("imei IN (SELECT value FROM json_each(?))" if column == "imeis" else f"{column} = ?")
                params.append(value)
        if window.from_ms is not None:
            where.append("timestamp >= ?")
            params.append(window.from_ms)
        if window.to_ms is not None:
            where.append("timestamp <= ?")
            params.append(window.to_ms)
        if window.cursor is not None:
            timestamp, key = decode_cursor(window.cursor, int)
            where.append("timestamp <= ? AND (timestamp, id) < (?, ?)")
            params += [timestamp, timestamp, key]
        sql = f"SELECT * FROM {table} WHERE {' AND '.join(where) or 'true'} ORDER BY timestamp DESC, id DESC LIMIT ?"
        rows = self._reader.connection.execute(sql, [*params, window.limit + 1]).fetchall()
        return page_of([(values[0], row(values)) for values in rows], window.limit)


def _be_nicer(niceness: int) -> None:
    """Lower the calling thread's CPU priority: on Linux ``nice`` applies to the calling thread only
    (elsewhere it would slow the whole server, so it is left alone)."""
    if niceness and sys.platform == "linux":
        os.nice(niceness)


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taking the write lock up front; rolled back if anything fails."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _insert(connection: sqlite3.Connection, statement: tuple[str, str], rows: Sequence[tuple[Any, ...]]) -> None:
    """INSERT ``rows`` with multi-row VALUES, hundreds to a statement.

    sqlite3 lets go of the GIL for each step of a statement: executemany, a step
    per row, would take the GIL back from the busy event loop after every row
    (and wait for it); this takes it back once per statement.
    """
    if not rows:
        return
    head, tail = statement
    width = len(rows[0])
    per_statement = max(1, min(ROWS_PER_STATEMENT, connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    row = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        connection.execute(f"{head} VALUES {', '.join([row] * len(chunk))} {tail}", list(itertools.chain.from_iterable(chunk)))


def _imei(key: int) -> str:
    return f"{key:015d}"


def _telemetry_row(values: tuple[Any, ...]) -> TelemetryRecord:
    _, imei, timestamp, data, received_at = values
    return TelemetryRecord(_imei(imei), timestamp, data.encode(), received_at)


def _alert_row(values: tuple[Any, ...]) -> AlertRecord:
    _, imei, timestamp, code, level, message, data = values
    return AlertRecord(_imei(imei), timestamp, code, level, message, data.encode())
