"""One contract, every store: the registry, the last telemetry, the histories and their pages.

Each test runs against the memory store, the SQLite store and the MongoDB
store, over the wire to SecantusDB unless IOTHUB_TEST_MONGODB_URI names a real
MongoDB server, as the test ids say. Store-specific promises (files, indexes,
retention) follow.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from iothub.core.records import AlertRecord, TelemetryRecord
from iothub.persistence.memory import MemoryStore
from iothub.persistence.sqlite import WRITER_NICENESS, SQLiteStore
from iothub.persistence.store import InvalidCursor, Page, Store, Window, encode_cursor

from ..support.mongodb import MONGO
from ..support.stores import KINDS, PERSISTENT_KINDS, StoreMaker, database_of

#: What SecantusDB (0.7.0b3) gets wrong that this suite meets: a range on a field of a compound
#: index with more fields after it leaves out the documents equal to the bound that the index
#: scan ends on. With the history's index (imei, timestamp descending, _id), ``timestamp:
#: {$gte: from}`` misses the rows at exactly ``from``; with no index, or ``$gt``, it does not.
#: Such a test is a strict xfail on SecantusDB (it fails loudly once SecantusDB is fixed), runs
#: as is on a real MongoDB, and runs on mongomock-motor too, which gets this right.
SECANTUSDB_GAPS = pytest.mark.xfail(
    MONGO == "secantusdb", reason="SecantusDB: an inclusive bound on a descending compound-index field", raises=AssertionError, strict=True
)
#: The kinds of a test that SecantusDB fails: every kind, and mongomock-motor while MongoDB is SecantusDB.
KINDS_WITH_SECANTUSDB_GAPS = [
    pytest.param(kind, marks=SECANTUSDB_GAPS) if kind == MONGO else kind for kind in KINDS
] + (["mongomock-motor"] if MONGO == "secantusdb" else [])

IMEI_A, IMEI_B, IMEI_C = "356938035643809", "490154203237518", "012345678901234"
ALICE, BOB = "alice@example.com", "bob@example.com"
T0 = 1_700_000_000_000


def telemetry(imei: str, timestamp: int, data: bytes | None = None) -> TelemetryRecord:
    return TelemetryRecord(imei, timestamp, data or msgspec.json.encode({"t": timestamp}), timestamp + 5)


def alert(imei: str, timestamp: int, code: str = "HIGH_RPM", level: str = "warning") -> AlertRecord:
    return AlertRecord(imei, timestamp, code, level, f"{code} message", msgspec.json.encode({"t": timestamp}))


def make(request: pytest.FixtureRequest, kind: str, tmp_path) -> StoreMaker:
    """A maker of ``kind``; a MongoDB kind starts the session's server if it is not running yet."""
    return StoreMaker(kind, tmp_path, request.getfixturevalue("mongodb_uri") if kind == MONGO else None)


@pytest.fixture(params=KINDS)
async def maker(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[StoreMaker]:
    made = make(request, request.param, tmp_path)
    yield made
    await made.drop()


@pytest.fixture
async def store(maker: StoreMaker) -> AsyncIterator[Store]:
    opened = maker()
    await opened.open()
    yield opened
    await opened.close()


async def every_page(read: Callable[[Window], Awaitable[Page[Any]]], limit: int, **window: int) -> list[list]:
    """All pages of a history, following the cursors."""
    pages, cursor = [], None
    while True:
        page: Page = await read(Window(limit=limit, cursor=cursor, **window))
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


# --------------------------------------------------------------------------- registry


async def test_owners_are_set_read_and_changed(store: Store) -> None:
    await store.set_owner(IMEI_B, ALICE)
    await store.set_owner(IMEI_A, ALICE)
    await store.set_owner(IMEI_C, BOB)
    assert await store.owner_of(IMEI_A) == ALICE
    assert await store.owner_of("999999999999999") is None
    assert [d.imei for d in await store.devices_of(ALICE)] == [IMEI_A, IMEI_B]
    await store.set_owner(IMEI_A, BOB)
    assert [d.imei for d in await store.devices_of(ALICE)] == [IMEI_B]
    assert [(d.imei, d.owner) for d in await store.devices_of(BOB)] == [(IMEI_C, BOB), (IMEI_A, BOB)]  # by imei


async def test_a_batch_carries_owners_telemetry_and_alerts(store: Store) -> None:
    await store.write([telemetry(IMEI_A, T0)], [alert(IMEI_A, T0)], [(IMEI_A, ALICE), (IMEI_B, ALICE)])
    devices = await store.devices_of(ALICE)
    assert [(d.imei, d.last) for d in devices] == [(IMEI_A, telemetry(IMEI_A, T0)), (IMEI_B, None)]
    assert (await store.alert_history(Window())).items == [alert(IMEI_A, T0)]


async def test_the_last_telemetry_follows_the_newest_timestamp(store: Store) -> None:
    await store.set_owner(IMEI_A, ALICE)
    await store.write([telemetry(IMEI_A, T0 + 2), telemetry(IMEI_A, T0 + 1)], [])
    await store.write([telemetry(IMEI_A, T0)], [])  # late, older: history only
    assert (await store.devices_of(ALICE))[0].last == telemetry(IMEI_A, T0 + 2)
    newer = telemetry(IMEI_A, T0 + 2, b'{"same":"timestamp, later"}')
    await store.write([newer], [])
    assert (await store.devices_of(ALICE))[0].last == newer


async def test_telemetry_before_an_owner_is_kept_for_the_owner(store: Store) -> None:
    await store.write([telemetry(IMEI_A, T0)], [])
    assert await store.owner_of(IMEI_A) is None
    await store.set_owner(IMEI_A, ALICE)
    assert (await store.devices_of(ALICE))[0].last == telemetry(IMEI_A, T0)


async def test_data_is_kept_byte_for_byte(store: Store) -> None:
    data = '{"speed":1.50,"big":123456789012345678901234567890,"name":"Zürich ✓","nested":{"a":[1,{"b":null}]}}'.encode()
    await store.set_owner(IMEI_A, ALICE)
    await store.write([telemetry(IMEI_A, T0, data)], [AlertRecord(IMEI_A, T0, "X", "info", "m", data)])
    last = (await store.devices_of(ALICE))[0].last
    assert last is not None
    assert last.data == data
    assert (await store.telemetry_history(IMEI_A, Window())).items[0].data == data
    assert (await store.alert_history(Window())).items[0].data == data


async def test_records_read_back_encode_to_json(store: Store) -> None:
    """Subscriptions and the history API send records as JSON: a driver's int subclass (bson.Int64) would not encode."""
    await store.set_owner(IMEI_A, ALICE)
    await store.write([telemetry(IMEI_A, T0)], [alert(IMEI_A, T0)])
    records = [
        *(await store.telemetry_history(IMEI_A, Window())).items,
        *(await store.alert_history(Window())).items,
        (await store.devices_of(ALICE))[0].last,
    ]
    assert msgspec.json.decode(msgspec.json.encode(records))[0]["timestamp"] == T0


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
async def test_everything_survives_a_reopen(request: pytest.FixtureRequest, kind: str, tmp_path) -> None:
    maker = make(request, kind, tmp_path)
    first = maker()
    await first.open()
    await first.write([telemetry(IMEI_A, T0)], [alert(IMEI_A, T0)], [(IMEI_A, ALICE)])
    await first.close()
    second = maker()
    await second.open()
    try:
        assert [(d.imei, d.owner, d.last) for d in await second.devices_of(ALICE)] == [(IMEI_A, ALICE, telemetry(IMEI_A, T0))]
        assert (await second.telemetry_history(IMEI_A, Window())).items == [telemetry(IMEI_A, T0)]
        assert (await second.alert_history(Window())).items == [alert(IMEI_A, T0)]
    finally:
        await second.close()
        await maker.drop()


# --------------------------------------------------------------------------- histories


async def test_telemetry_history_pages_newest_first_without_gaps_or_repeats(store: Store) -> None:
    rows = [telemetry(IMEI_A, T0 + i // 3, msgspec.json.encode({"n": i})) for i in range(25)]  # ties of three
    await store.write(rows[:10], [])
    await store.write([*rows[10:], telemetry(IMEI_B, T0)], [])
    pages = await every_page(lambda w: store.telemetry_history(IMEI_A, w), limit=10)
    assert [len(page) for page in pages] == [10, 10, 5]
    newest_first = sorted(range(25), key=lambda i: (rows[i].timestamp, i), reverse=True)
    assert [item for page in pages for item in page] == [rows[i] for i in newest_first]


async def test_a_page_that_ends_exactly_has_no_cursor(store: Store) -> None:
    await store.write([telemetry(IMEI_A, T0 + i) for i in range(4)], [])
    assert [len(p) for p in await every_page(lambda w: store.telemetry_history(IMEI_A, w), limit=2)] == [2, 2]
    assert (await store.telemetry_history(IMEI_B, Window())) == Page([], None)


@pytest.mark.parametrize("maker", KINDS_WITH_SECANTUSDB_GAPS, indirect=True)
async def test_history_window_includes_both_ends(store: Store) -> None:
    await store.write([telemetry(IMEI_A, T0 + i) for i in range(10)], [alert(IMEI_A, T0 + i) for i in range(10)])
    timestamps = [r.timestamp - T0 for r in (await store.telemetry_history(IMEI_A, Window(from_ms=T0 + 3, to_ms=T0 + 6))).items]
    assert timestamps == [6, 5, 4, 3]
    assert [r.timestamp - T0 for r in (await store.telemetry_history(IMEI_A, Window(from_ms=T0 + 8))).items] == [9, 8]
    assert [r.timestamp - T0 for r in (await store.alert_history(Window(to_ms=T0 + 1))).items] == [1, 0]
    pages = await every_page(store.alert_history, limit=2, from_ms=T0 + 2, to_ms=T0 + 6)
    assert [[a.timestamp - T0 for a in page] for page in pages] == [[6, 5], [4, 3], [2]]


async def test_a_cursor_continues_after_newer_rows_arrive(store: Store) -> None:
    await store.write([telemetry(IMEI_A, T0 + i) for i in range(6)], [])
    first = await store.telemetry_history(IMEI_A, Window(limit=3))
    await store.write([telemetry(IMEI_A, T0 + 100), telemetry(IMEI_A, T0 + 3)], [])  # newer, and one tying the cursor
    second = await store.telemetry_history(IMEI_A, Window(limit=3, cursor=first.next_cursor))
    assert [r.timestamp - T0 for r in first.items] == [5, 4, 3]
    assert [r.timestamp - T0 for r in second.items] == [2, 1, 0]


async def test_alert_history_filters_by_device_code_and_level(store: Store) -> None:
    await store.write(
        [],
        [
            alert(IMEI_A, T0, "HIGH_RPM"),
            alert(IMEI_A, T0 + 1, "CRASH_DETECTED", "critical"),
            alert(IMEI_B, T0 + 2, "HIGH_RPM"),
            alert(IMEI_C, T0 + 3, "LOW_BATTERY"),
            alert(IMEI_B, T0 + 4, "ENGINE_TEMP", "info"),
        ],
    )

    async def offsets(**filters: Any) -> list[int]:
        return [a.timestamp - T0 for a in (await store.alert_history(Window(), **filters)).items]

    assert await offsets() == [4, 3, 2, 1, 0]
    assert await offsets(imeis=[IMEI_A]) == [1, 0]
    assert await offsets(imeis=[IMEI_A, IMEI_B]) == [4, 2, 1, 0]
    assert await offsets(imeis=[]) == []
    assert await offsets(code="HIGH_RPM") == [2, 0]
    assert await offsets(level="critical") == [1]
    assert await offsets(imeis=[IMEI_B], code="HIGH_RPM", level="warning") == [2]
    assert await offsets(imeis=[IMEI_C], level="info") == []


async def test_alert_pages_follow_their_filters(store: Store) -> None:
    await store.write([], [alert(IMEI_A if i % 2 else IMEI_B, T0 + i) for i in range(9)])
    pages = await every_page(lambda w: store.alert_history(w, imeis=[IMEI_A]), limit=3)
    assert [[a.timestamp - T0 for a in page] for page in pages] == [[7, 5, 3], [1]]


@pytest.mark.parametrize("cursor", ["", "garbage!", "bm90IGpzb24", encode_cursor(T0, "not-a-key"), "WzEsMiwzXQ"])
async def test_a_cursor_the_store_did_not_hand_out_is_refused(store: Store, cursor: str) -> None:
    await store.write([telemetry(IMEI_A, T0)], [alert(IMEI_A, T0)])
    with pytest.raises(InvalidCursor):
        await store.telemetry_history(IMEI_A, Window(cursor=cursor))
    with pytest.raises(InvalidCursor):
        await store.alert_history(Window(cursor=cursor))


async def test_another_kind_of_stores_cursor_is_refused(store: Store) -> None:
    foreign = encode_cursor(T0, 7) if store.name == "mongodb" else encode_cursor(T0, "65f000000000000000000000")
    with pytest.raises(InvalidCursor):
        await store.telemetry_history(IMEI_A, Window(cursor=foreign))


# --------------------------------------------------------------------------- SQLite


async def test_sqlite_creates_its_file_and_directory_in_wal_mode(tmp_path) -> None:
    path = tmp_path / "not" / "yet" / "iothub.db"
    store = SQLiteStore(path)
    await store.open()
    await store.write([telemetry(IMEI_A, T0)], [])
    await store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT imei, timestamp FROM telemetry").fetchall() == [(int(IMEI_A), T0)]


async def test_sqlite_writes_a_batch_larger_than_one_statement_in_one_transaction(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("iothub.persistence.sqlite.ROWS_PER_STATEMENT", 3)
    store = SQLiteStore(tmp_path / "iothub.db")
    await store.open()
    rows = [telemetry(IMEI_A if n % 2 else IMEI_B, T0 + n) for n in range(25)]
    await store.write(rows, [alert(IMEI_A, T0 + n) for n in range(7)], [(IMEI_A, ALICE), (IMEI_B, ALICE)])
    try:
        assert len((await store.telemetry_history(IMEI_A, Window())).items) == 12
        assert len((await store.alert_history(Window())).items) == 7
        assert [d.last for d in await store.devices_of(ALICE)] == [rows[23], rows[24]]
    finally:
        await store.close()


async def test_sqlite_writer_yields_the_cpu_to_the_event_loop_and_the_reader_does_not(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "iothub.db")
    await store.open()
    try:
        writer, reader = await store._writer.run(threading.get_native_id), await store._reader.run(threading.get_native_id)
        ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, writer) == min(19, ours + WRITER_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, reader) == ours
        # its statement journals stay in memory: no temporary file per batch
        connection = store._writer.connection
        assert connection is not None  # open
        assert await store._writer.run(lambda: connection.execute("PRAGMA temp_store").fetchone()) == (2,)
    finally:
        await store.close()


async def test_sqlite_retention_deletes_old_history_and_keeps_the_last_telemetry(tmp_path) -> None:
    now = T0 + 10 * 86_400_000
    old, recent = telemetry(IMEI_A, now - 3 * 86_400_000), telemetry(IMEI_A, now - 86_400_000 // 2)
    store = SQLiteStore(tmp_path / "iothub.db", retention_days=2)
    await store.open()
    await store.set_owner(IMEI_B, ALICE)
    await store.write([old], [alert(IMEI_A, old.timestamp), alert(IMEI_A, recent.timestamp)], [(IMEI_B, ALICE)])
    await store.write([telemetry(IMEI_B, old.timestamp)], [])
    await store.write([recent], [])
    await store.purge(now)
    try:
        assert (await store.telemetry_history(IMEI_A, Window())).items == [recent]
        assert (await store.telemetry_history(IMEI_B, Window())).items == []
        assert [a.timestamp for a in (await store.alert_history(Window())).items] == [recent.timestamp]
        assert (await store.devices_of(ALICE))[0].last == telemetry(IMEI_B, old.timestamp)
    finally:
        await store.close()


# --------------------------------------------------------------------------- MongoDB


@pytest.fixture(params=[MONGO])
async def mongo_maker(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[StoreMaker]:
    made = make(request, request.param, tmp_path)
    yield made
    await made.drop()


async def indexes(maker: StoreMaker, collection: str) -> dict[str, dict]:
    return await database_of(maker)[collection].index_information()


async def test_mongodb_indexes_serve_the_queries(mongo_maker: StoreMaker) -> None:
    store = mongo_maker()
    await store.open()
    await store.close()
    newest_first = [("timestamp", -1), ("_id", -1)]
    assert [("imei", 1), *newest_first] in [spec["key"] for spec in (await indexes(mongo_maker, "telemetry")).values()]
    alert_keys = [spec["key"] for spec in (await indexes(mongo_maker, "alerts")).values()]
    assert [("imei", 1), *newest_first] in alert_keys and newest_first in alert_keys
    assert [("owner", 1)] in [spec["key"] for spec in (await indexes(mongo_maker, "devices")).values()]
    assert "retention" not in await indexes(mongo_maker, "telemetry")


async def test_mongodb_retention_is_a_ttl_index_that_follows_the_setting(mongo_maker: StoreMaker) -> None:
    for days, expected in ((30, 30 * 86_400), (7, 7 * 86_400), (0, None)):
        store = mongo_maker(retention_days=days)
        await store.open()
        await store.close()
        for collection in ("telemetry", "alerts"):
            ttl = (await indexes(mongo_maker, collection)).get("retention")
            assert (ttl and (ttl["key"], ttl["expireAfterSeconds"])) == (expected and ([("at", 1)], expected))


async def test_mongodb_a_retried_batch_is_written_once(mongo_maker: StoreMaker, monkeypatch) -> None:
    store = mongo_maker()
    await store.open()
    rows, alerts = [telemetry(IMEI_A, T0 + i) for i in range(5)], [alert(IMEI_A, T0)]
    alerts_collection = database_of(mongo_maker).alerts
    insert_alerts = type(alerts_collection).insert_many

    async def fail_once(self, *args, **kwargs):
        monkeypatch.setattr(type(alerts_collection), "insert_many", insert_alerts)
        raise ConnectionError("the network went away after the telemetry was written")

    monkeypatch.setattr(type(alerts_collection), "insert_many", fail_once)
    with pytest.raises(ConnectionError):
        await store.write(rows, alerts, [(IMEI_A, ALICE)])
    await store.write(rows, alerts, [(IMEI_A, ALICE)])  # the write-behind retries the very same batch
    try:
        assert len((await store.telemetry_history(IMEI_A, Window())).items) == 5
        assert (await store.alert_history(Window())).items == alerts
        assert (await store.devices_of(ALICE))[0].last == rows[-1]
    finally:
        await store.close()


# --------------------------------------------------------------------------- memory


async def test_memory_history_limit_keeps_the_newest_rows_and_valid_cursors() -> None:
    store = MemoryStore(history_limit=5)
    await store.write([telemetry(IMEI_A, T0 + i) for i in range(4)], [])
    first = await store.telemetry_history(IMEI_A, Window(limit=1))
    await store.write([telemetry(IMEI_A, T0 + i) for i in range(4, 7)], [])
    assert [r.timestamp - T0 for r in (await store.telemetry_history(IMEI_A, Window())).items] == [6, 5, 4, 3, 2]
    after = await store.telemetry_history(IMEI_A, Window(cursor=first.next_cursor))
    assert [r.timestamp - T0 for r in after.items] == [2]
