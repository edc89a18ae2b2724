"""The stores' sustained write rate: batches as the write-behind sends them, rows per second.

One round is one batch: 1000 telemetry rows from 1000 devices (the last
telemetry of each updated too) and 50 alerts, into a store that keeps growing
over the rounds. ``rows/s`` in the extra info is (1000 + 50) / the round's
mean time. ``sqlite-durable`` is SQLite with ``synchronous=FULL``
(IOTHUB_DURABLE_ACK=true): an fsync per batch.

MongoDB is measured against SecantusDB's Python server on this machine — a
MongoDB-wire server over WiredTiger, so the figure says nothing about a
MongoDB server — unless IOTHUB_TEST_MONGODB_URI names a real one; the
benchmark's name says which.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import msgspec
import pytest

from iothub.core.records import AlertRecord, TelemetryRecord
from iothub.persistence.store import Store
from tests.support.mongodb import MONGO
from tests.support.stores import StoreMaker

BATCH_ROWS = 1000
ALERTS_PER_BATCH = 50
DEVICES = 1000
ROUNDS = 40
#: SecantusDB's Python server takes most of a second a batch: fewer rounds say as much.
SECANTUSDB_ROUNDS = 5
T0 = 1_700_000_000_000
READING = {
    "engineRpm": 2500, "speed": 65, "fuelLevel": 75, "batteryVoltage": 12.5, "crashDetection": 0, "dtc": 0,
    "position": {"latitude": 40.7128, "longitude": -74.006},
}

_clock = itertools.count(T0)


def batch() -> tuple[list[TelemetryRecord], list[AlertRecord]]:
    """The next batch: fresh timestamps, so every round adds rows and moves each device's last telemetry."""
    data = msgspec.json.encode(READING)
    telemetry = [TelemetryRecord(f"{100000000000000 + n % DEVICES}", (t := next(_clock)), data, t) for n in range(BATCH_ROWS)]
    alerts = [AlertRecord(r.imei, r.timestamp, "HIGH_RPM", "warning", "High engine RPM detected", data) for r in telemetry[:ALERTS_PER_BATCH]]
    return telemetry, alerts


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    yield running
    running.close()


@pytest.fixture(params=["memory", "sqlite", "sqlite-durable", MONGO])
def store(request: pytest.FixtureRequest, tmp_path, loop: asyncio.AbstractEventLoop) -> Iterator[Store]:
    kind, durable = request.param.removesuffix("-durable"), request.param.endswith("-durable")
    maker = StoreMaker(kind, tmp_path, request.getfixturevalue("mongodb_uri") if kind == MONGO else None)
    opened = maker(durable=True) if durable else maker()
    loop.run_until_complete(opened.open())
    yield opened
    loop.run_until_complete(opened.close())
    loop.run_until_complete(maker.drop())


def test_store_write_rate(benchmark, store: Store, loop: asyncio.AbstractEventLoop) -> None:
    benchmark.group = f"store write: one batch of {BATCH_ROWS} telemetry + {ALERTS_PER_BATCH} alerts (rows/s = 1050 x OPS)"
    benchmark.pedantic(
        lambda telemetry, alerts: loop.run_until_complete(store.write(telemetry, alerts)),
        setup=lambda: (batch(), {}),
        rounds=SECANTUSDB_ROUNDS if MONGO == "secantusdb" and store.name == "mongodb" else ROUNDS,
        warmup_rounds=2,
    )
    benchmark.extra_info["rows/s"] = round((BATCH_ROWS + ALERTS_PER_BATCH) / benchmark.stats.stats.mean)
