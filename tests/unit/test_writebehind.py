"""The write-behind buffer: batches by size or time, a bound, outages, durable commits, the registry overlay.

The store is a :class:`MemoryStore` behind :class:`FlakyStore`, a wrapper
that fails every call while told to, as a store does during an outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from iothub.core.errors import ErrorCode, ProtocolError
from iothub.core.records import AlertRecord, DeviceRecord, TelemetryRecord
from iothub.persistence.writebehind import WriteBehind

from ..support.planes import OneProcess
from ..support.stores import FlakyStore

IMEI_A, IMEI_B = "356938035643809", "490154203237518"
ALICE, BOB = "alice@example.com", "bob@example.com"
T0 = 1_700_000_000_000
HOUR = 3600.0


def row(n: int, imei: str = IMEI_A) -> TelemetryRecord:
    return TelemetryRecord(imei, T0 + n, msgspec.json.encode({"n": n}), T0 + n)


def alert_of(record: TelemetryRecord) -> AlertRecord:
    return AlertRecord(record.imei, record.timestamp, "HIGH_RPM", "warning", "High engine RPM detected", record.data)


async def eventually(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
async def make_writer(store: FlakyStore) -> AsyncIterator[Callable[..., WriteBehind]]:
    made: list[WriteBehind] = []

    def make(**options: Any) -> WriteBehind:
        settings: dict[str, Any] = {"flush_interval": HOUR, **options}
        writer = WriteBehind(store, **settings)
        writer.start()
        made.append(writer)
        return writer

    yield make
    store.failing = False
    for writer in made:
        await writer.close(timeout=5)


# --------------------------------------------------------------------------- batches


async def test_a_full_batch_is_written_at_once_and_the_rest_at_close(store: FlakyStore, make_writer) -> None:
    writer = make_writer(batch_rows=10)
    for n in range(25):
        writer.telemetry(row(n))
    await eventually(lambda: len(store.batches) == 2)
    assert store.batches == [(10, 0, 0), (10, 0, 0)] and writer.backlog == 5
    assert await writer.close(timeout=5) == 0
    assert store.batches[-1] == (5, 0, 0)
    assert store.telemetry == [row(n) for n in range(25)]


async def test_a_partial_batch_is_written_after_the_flush_interval(store: FlakyStore, make_writer) -> None:
    writer = make_writer(batch_rows=1000, flush_interval=0.02)
    for n in range(3):
        writer.telemetry(row(n))
    await eventually(lambda: writer.backlog == 0)
    assert store.batches == [(3, 0, 0)]


async def test_alerts_travel_in_the_batch_of_their_message(store: FlakyStore, make_writer) -> None:
    writer = make_writer(batch_rows=2)
    for n in range(3):
        writer.telemetry(row(n))
        writer.alert(alert_of(row(n)))
    await writer.close(timeout=5)
    assert store.batches == [(2, 2, 0), (1, 1, 0)]
    assert store.alerts == [alert_of(row(n)) for n in range(3)]


# --------------------------------------------------------------------------- the bound


async def test_a_full_buffer_refuses_telemetry_and_keeps_what_it_took(store: FlakyStore, make_writer) -> None:
    store.failing = True
    writer = make_writer(capacity=5, batch_rows=2, flush_interval=0.01)
    for n in range(5):
        writer.telemetry(row(n))
    with pytest.raises(ProtocolError) as refused:
        writer.telemetry(row(5))
    assert refused.value.code == ErrorCode.STORE_UNAVAILABLE
    assert writer.backlog == 5
    store.failing = False
    await eventually(lambda: writer.backlog == 0)
    writer.telemetry(row(5))
    await writer.close(timeout=5)
    assert store.telemetry == [row(n) for n in range(6)]


async def test_a_refused_message_changes_nothing_in_the_data_plane(store: FlakyStore) -> None:
    writer = WriteBehind(store, capacity=1, flush_interval=HOUR)
    planes = OneProcess.build(writer, writer)
    planes.connect("dev", "watcher")
    await planes.register("dev", IMEI_A, ALICE)
    await planes.subscribe("watcher", ALICE)
    planes.outbox.sent.clear()
    writer.backlog = writer.capacity  # as if the store had been down for a while
    with pytest.raises(ProtocolError) as refused:
        planes.telemetry("dev", IMEI_A, {"engineRpm": 9000}, timestamp=T0)
    assert refused.value.code == ErrorCode.STORE_UNAVAILABLE
    meters = planes.plane.meters
    assert planes.outbox.sent == [] and meters.telemetry.total == 0 and meters.alerts.total == 0
    assert (await planes.subscribe("watcher", ALICE)).telemetries == []


# --------------------------------------------------------------------------- outages


async def test_an_outage_is_retried_reported_and_caught_up(store: FlakyStore, make_writer) -> None:
    writer = make_writer(batch_rows=3, flush_interval=0.01)
    store.failing = True
    for n in range(10):
        writer.telemetry(row(n))
        writer.alert(alert_of(row(n)))
    await eventually(lambda: store.attempts >= 3)  # retried, with back-off
    assert writer.degraded and writer.backlog == 20 and store.telemetry == []
    store.failing = False
    await eventually(lambda: writer.backlog == 0)
    assert not writer.degraded
    assert store.telemetry == [row(n) for n in range(10)]
    assert store.alerts == [alert_of(row(n)) for n in range(10)]


async def test_close_gives_a_failing_store_a_bounded_wait_and_counts_the_loss(store: FlakyStore, make_writer) -> None:
    writer = make_writer(flush_interval=0.01)
    committed = writer.telemetry(row(0)).committed()
    store.failing = True
    started = time.monotonic()
    assert await writer.close(timeout=0.3) == 1
    assert time.monotonic() - started < 5
    with pytest.raises(ProtocolError):
        committed.result()
    with pytest.raises(ProtocolError) as refused:
        writer.telemetry(row(1))
    assert refused.value.code == ErrorCode.STORE_UNAVAILABLE
    with pytest.raises(ProtocolError) as refused:
        await writer.set_owner(IMEI_A, ALICE)
    assert refused.value.code == ErrorCode.STORE_UNAVAILABLE


# --------------------------------------------------------------------------- durable commits


async def test_committed_resolves_only_once_the_batch_is_written(store: FlakyStore, make_writer) -> None:
    writer = make_writer(batch_rows=2, flush_interval=0.01)
    store.failing = True
    first = writer.telemetry(row(0)).committed()
    assert writer.telemetry(row(1)).committed() is first  # one future per batch: group commit
    second = writer.telemetry(row(2)).committed()
    assert second is not first
    await eventually(lambda: store.attempts >= 2)
    assert not first.done() and not second.done()
    store.failing = False
    await asyncio.wait_for(second, 5)
    assert first.done() and store.telemetry == [row(0), row(1), row(2)]


async def test_committed_with_nothing_pending_is_already_done(make_writer) -> None:
    writer = make_writer()
    assert writer.committed().done()


async def test_committed_covers_every_row_taken_so_far(store: FlakyStore, make_writer) -> None:
    """What a durable registration waits for: its owner change, and whatever was taken before it."""
    writer = make_writer(batch_rows=2, flush_interval=0.01)
    store.failing = True
    writer.telemetry(row(0))
    await writer.set_owner(IMEI_A, ALICE)
    committed = writer.committed()
    await eventually(lambda: store.attempts >= 2)
    assert not committed.done()
    store.failing = False
    await asyncio.wait_for(committed, 5)
    assert store.owners == {IMEI_A: ALICE} and store.telemetry == [row(0)]


# --------------------------------------------------------------------------- the registry in front of the store


async def test_owner_changes_are_read_back_before_they_are_written(store: FlakyStore, make_writer) -> None:
    await store.write([row(0, IMEI_B)], [], [(IMEI_A, ALICE), (IMEI_B, BOB)])
    writer = make_writer()
    await writer.set_owner(IMEI_A, BOB)
    await writer.set_owner(IMEI_B, ALICE)
    assert store.owners == {IMEI_A: ALICE, IMEI_B: BOB}  # not yet written
    assert await writer.owner_of(IMEI_A) == BOB
    assert await writer.devices_of(ALICE) == [DeviceRecord(IMEI_B, ALICE)]
    assert [d.imei for d in await writer.devices_of(BOB)] == [IMEI_A]
    assert await writer.close(timeout=5) == 0
    assert store.owners == {IMEI_A: BOB, IMEI_B: ALICE}
    assert await writer.devices_of(ALICE) == [DeviceRecord(IMEI_B, ALICE, row(0, IMEI_B))]


async def test_owner_changes_wait_out_an_outage(store: FlakyStore, make_writer) -> None:
    writer = make_writer(flush_interval=0.01)
    store.failing = True
    await writer.set_owner(IMEI_A, ALICE)  # a registration still succeeds
    assert await writer.owner_of(IMEI_A) == ALICE
    with pytest.raises(ProtocolError) as refused:
        await writer.devices_of(ALICE)  # the rest of the registry is in the store
    assert refused.value.code == ErrorCode.STORE_UNAVAILABLE
    store.failing = False
    await eventually(lambda: writer.backlog == 0)
    assert store.owners == {IMEI_A: ALICE}
