"""The stores the contract suite and the store benchmark run against, by kind.

MongoDB is spoken over the wire to the session's server (:mod:`.mongodb`):
``mongodb`` when ``IOTHUB_TEST_MONGODB_URI`` names a real one, else
``secantusdb`` — the test ids say which, so that no one reads more into a
green run than it shows. Each maker gets its own database, dropped afterwards.

``mongomock-motor``, an in-process imitation, is kept for what SecantusDB gets
wrong (see ``SECANTUSDB_GAPS`` in the contract suite) and nothing else.

:class:`FlakyStore` is a memory store that fails while told to: an outage on demand.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mongomock.collection
from mongomock_motor import AsyncMongoMockClient
from motor.motor_asyncio import AsyncIOMotorClient

from iothub.core.records import AlertRecord, DeviceRecord, TelemetryRecord
from iothub.persistence.memory import MemoryStore
from iothub.persistence.mongo import MongoStore
from iothub.persistence.sqlite import SQLiteStore
from iothub.persistence.store import Page, Store, Window

from .mongodb import MONGO

KINDS = ["memory", "sqlite", MONGO]
#: The kinds whose data outlives the store object.
PERSISTENT_KINDS = ["sqlite", MONGO]


def _tolerate_sort(add_update: Any) -> Any:
    """mongomock 4.3 predates pymongo 4.11, whose ``UpdateOne`` passes ``sort=None`` to the bulk builder."""

    @functools.wraps(add_update)
    def add_update_without_sort(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("mongomock has no sorted updates")
        return add_update(self, *args, **kwargs)

    return add_update_without_sort


if not hasattr(mongomock.collection.BulkOperationBuilder.add_update, "__wrapped__"):
    # a deliberate monkey-patch of mongomock's method (see _tolerate_sort)
    mongomock.collection.BulkOperationBuilder.add_update = _tolerate_sort(  # type: ignore[method-assign]
        mongomock.collection.BulkOperationBuilder.add_update
    )


class StoreMaker:
    """Makes stores of one kind over the same data: a new one sees what an earlier one wrote."""

    def __init__(self, kind: str, directory: Path, mongodb_uri: str | None = None) -> None:
        """``mongodb_uri``: the server of kind ``mongodb`` or ``secantusdb`` (the ``mongodb_uri`` fixture)."""
        self.kind = kind
        self.path = directory / "store" / "iothub.db"
        self.memory = MemoryStore()
        self.mock: AsyncMongoMockClient | None = AsyncMongoMockClient() if kind == "mongomock-motor" else None
        if kind == MONGO:
            assert mongodb_uri is not None, f"a {kind} store needs the mongodb_uri fixture's server"
            self.uri = _fresh_database(mongodb_uri)
        else:
            self.uri = "mongodb://mongomock/iothub"

    def __call__(self, **options: Any) -> Store:
        if self.kind == "memory":
            return self.memory
        if self.kind == "sqlite":
            return SQLiteStore(self.path, **options)
        return MongoStore(self.uri, client=self.mock, **options)

    async def drop(self) -> None:
        """Remove the server's test database."""
        if self.kind == MONGO:
            client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(self.uri)
            await client.drop_database(urlsplit(self.uri).path.lstrip("/"))
            client.close()


def _fresh_database(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/iothub_test_{uuid.uuid4().hex[:12]}"))


def database_of(maker: StoreMaker) -> Any:
    """The motor database a MongoDB maker's stores use, to look at it from the side."""
    client = maker.mock if maker.mock is not None else AsyncIOMotorClient(maker.uri)
    return client.get_database(urlsplit(maker.uri).path.lstrip("/"))


class FlakyStore(MemoryStore):
    """A memory store that records its batches and, while ``failing``, fails every call, as a store
    does during an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.batches: list[tuple[int, int, int]] = []
        self.attempts = 0

    def _check(self) -> None:
        if self.failing:
            raise ConnectionError("the store is down")

    async def write(
        self, telemetry: Sequence[TelemetryRecord], alerts: Sequence[AlertRecord], owners: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.attempts += 1
        self._check()
        self.batches.append((len(telemetry), len(alerts), len(owners)))
        await super().write(telemetry, alerts, owners)

    async def owner_of(self, imei: str) -> str | None:
        self._check()
        return await super().owner_of(imei)

    async def devices_of(self, email: str) -> list[DeviceRecord]:
        self._check()
        return await super().devices_of(email)

    async def telemetry_history(self, imei: str, window: Window) -> Page[TelemetryRecord]:
        self._check()
        return await super().telemetry_history(imei, window)

    async def alert_history(
        self, window: Window, *, imeis: Collection[str] | None = None, code: str | None = None, level: str | None = None
    ) -> Page[AlertRecord]:
        self._check()
        return await super().alert_history(window, imeis=imeis, code=code, level=level)
