"""MongoDB through motor, when ``MONGODB_URI`` is set.

The only module that imports motor, pymongo or bson: swapping the driver
happens here. Collections ``devices`` (``_id`` = imei, ``owner``, ``last``),
``telemetry`` and ``alerts``, indexed for their queries (imei, timestamp,
``_id``: the history's order and its cursor). A history row's ``at`` is its
timestamp as a BSON date, for the TTL index that applies the retention.

``data`` is kept as the JSON text the device sent, as in SQLite: byte for byte
what dashboards get, and no message can make a batch fail (a JSON integer too
big for BSON would, as a sub-document).

MongoDB has no transaction across collections without a replica set, so a
batch is written in steps that are safe to repeat: rows carry ``_id``s made
once per batch and reused when the write-behind retries the same batch, and a
duplicate key then means "already written".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from bson import ObjectId
from bson.errors import InvalidId
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from ..core.records import AlertRecord, DeviceRecord, TelemetryRecord
from .store import (
    DAY_MS,
    InvalidCursor,
    Page,
    R,
    Window,
    decode_cursor,
    newest_by_device,
    page_of,
)

DUPLICATE_KEY = 11000
NEWEST_FIRST = [("timestamp", DESCENDING), ("_id", DESCENDING)]
INDEXES = {
    "devices": [[("owner", ASCENDING)]],
    "telemetry": [[("imei", ASCENDING), *NEWEST_FIRST]],
    "alerts": [[("imei", ASCENDING), *NEWEST_FIRST], [("code", ASCENDING), *NEWEST_FIRST], NEWEST_FIRST],
}
RETENTION_INDEX = "retention"
#: How long an operation looks for a server before it fails (30 s by default): an
#: outage is reported, and the write-behind's back-off takes over, this soon.
SELECTION_TIMEOUT_MS = 5000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The last millisecond a Python datetime holds (BSON dates hold more).
MAX_DATE_MS = 253_402_300_799_999


class MongoStore:
    name = "mongodb"

    def __init__(self, uri: str, *, durable: bool = False, retention_days: int = 0, client: Any | None = None) -> None:
        """``client``: an already made motor client (tests pass mongomock-motor's); else one for ``uri``."""
        self.uri = uri
        self.durable = durable
        self.retention_s = retention_days * DAY_MS // 1000
        self._client = client
        self._owns_client = client is None
        #: The last batch that failed and the documents made for it, reused if it comes again.
        self._failed: tuple[Sequence[TelemetryRecord], Sequence[AlertRecord], list[dict], list[dict]] | None = None

    async def open(self) -> None:
        if self._client is None:
            concern: dict[str, Any] = {"w": "majority", "journal": True} if self.durable else {}
            self._client = AsyncIOMotorClient(self.uri, tz_aware=True, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS, **concern)
        database = self._client.get_database(urlsplit(self.uri).path.lstrip("/") or "iothub")
        self._devices, self._telemetry, self._alerts = database.devices, database.telemetry, database.alerts
        for name, indexes in INDEXES.items():
            for keys in indexes:
                await database[name].create_index(keys)
        for history in (self._telemetry, self._alerts):
            await self._retain(history)

    async def _retain(self, history: Any) -> None:
        """Make the TTL index on ``at`` say the retention: none when 0, replaced when it changed."""
        existing = (await history.index_information()).get(RETENTION_INDEX)
        if existing is not None and existing.get("expireAfterSeconds") != self.retention_s:
            await history.drop_index(RETENTION_INDEX)
            existing = None
        if existing is None and self.retention_s:
            await history.create_index("at", name=RETENTION_INDEX, expireAfterSeconds=self.retention_s)

    async def close(self) -> None:
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ writes

    async def set_owner(self, imei: str, email: str) -> None:
        await self.write((), (), ((imei, email),))

    async def write(
        self, telemetry: Sequence[TelemetryRecord], alerts: Sequence[AlertRecord], owners: Sequence[tuple[str, str]] = ()
    ) -> None:
        failed = self._failed
        if failed is not None and failed[0] is telemetry and failed[1] is alerts:
            telemetry_documents, alert_documents = failed[2], failed[3]
        else:
            telemetry_documents = [_telemetry_document(record) for record in telemetry]
            alert_documents = [_alert_document(alert) for alert in alerts]
        try:
            if telemetry_documents:
                await _written(self._telemetry.insert_many(telemetry_documents, ordered=False))
            if alert_documents:
                await _written(self._alerts.insert_many(alert_documents, ordered=False))
            updates = [UpdateOne({"_id": imei}, {"$set": {"owner": email}}, upsert=True) for imei, email in owners]
            updates += [_last_update(record) for record in newest_by_device(telemetry).values()]
            if updates:
                await _written(self._devices.bulk_write(updates, ordered=False))
        except BaseException:
            self._failed = (telemetry, alerts, telemetry_documents, alert_documents)
            raise
        self._failed = None

    # ------------------------------------------------------------------ reads

    async def owner_of(self, imei: str) -> str | None:
        document = await self._devices.find_one({"_id": imei}, {"owner": 1})
        return None if document is None else document.get("owner")

    async def devices_of(self, email: str) -> list[DeviceRecord]:
        documents = await self._devices.find({"owner": email}).sort("_id", ASCENDING).to_list(None)
        return [DeviceRecord(d["_id"], d.get("owner"), _last_record(d["_id"], d.get("last"))) for d in documents]

    async def telemetry_history(self, imei: str, window: Window) -> Page[TelemetryRecord]:
        return await self._history(self._telemetry, {"imei": imei}, window, _telemetry_record)

    async def alert_history(
        self,
        window: Window,
        *,
        imeis: Collection[str] | None = None,
        code: str | None = None,
        level: str | None = None,
    ) -> Page[AlertRecord]:
        query: dict[str, Any] = {} if imeis is None else {"imei": {"$in": list(imeis)}}
        query.update((field, value) for field, value in (("code", code), ("level", level)) if value is not None)
        return await self._history(self._alerts, query, window, _alert_record)

    async def _history(
        self, collection: Any, query: dict[str, Any], window: Window, record: Callable[[dict[str, Any]], R]
    ) -> Page[R]:
        span = {}
        if window.from_ms is not None:
            span["$gte"] = window.from_ms
        if window.to_ms is not None:
            span["$lte"] = window.to_ms
        if window.cursor is not None:
            timestamp, key = decode_cursor(window.cursor, str)
            try:
                after = ObjectId(str(key))
            except InvalidId:
                raise InvalidCursor(window.cursor) from None
            span["$lte"] = min(span.get("$lte", timestamp), timestamp)
            query["$or"] = [{"timestamp": {"$lt": timestamp}}, {"timestamp": timestamp, "_id": {"$lt": after}}]
        if span:
            query["timestamp"] = span
        documents = await collection.find(query).sort(NEWEST_FIRST).limit(window.limit + 1).to_list(None)
        return page_of([(str(document["_id"]), record(document)) for document in documents], window.limit)


async def _written(write: Awaitable[Any]) -> None:
    """Await a write in which a duplicate key means "already there": a retried row, or a newer last telemetry."""
    try:
        await write
    except BulkWriteError as exc:
        details = exc.details
        if details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in details.get("writeErrors", ())):
            raise


def _date(timestamp: int) -> datetime:
    return EPOCH + timedelta(milliseconds=min(timestamp, MAX_DATE_MS))


def _telemetry_document(record: TelemetryRecord) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "imei": record.imei,
        "timestamp": record.timestamp,
        "data": record.data.decode(),
        "receivedAt": record.receivedAt,
        "at": _date(record.timestamp),
    }


def _alert_document(alert: AlertRecord) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "imei": alert.imei,
        "timestamp": alert.timestamp,
        "code": alert.code,
        "level": alert.level,
        "message": alert.message,
        "data": alert.data.decode(),
        "at": _date(alert.timestamp),
    }


def _last_update(record: TelemetryRecord) -> UpdateOne:
    """Set a device's last telemetry unless it has a newer one (then the upsert's duplicate key is ignored)."""
    last = {"timestamp": record.timestamp, "data": record.data.decode(), "receivedAt": record.receivedAt}
    return UpdateOne({"_id": record.imei, "last.timestamp": {"$not": {"$gt": record.timestamp}}}, {"$set": {"last": last}}, upsert=True)


# A millisecond timestamp is past 2**31, so BSON stores it as an int64, and pymongo hands
# that back as ``bson.Int64``: an int subclass that msgspec refuses to encode (the history
# API's JSON, the cursor). Every integer read back goes through ``int()``.


def _last_record(imei: str, last: dict[str, Any] | None) -> TelemetryRecord | None:
    return None if last is None else TelemetryRecord(imei, int(last["timestamp"]), last["data"].encode(), int(last["receivedAt"]))


def _telemetry_record(document: dict[str, Any]) -> TelemetryRecord:
    return TelemetryRecord(document["imei"], int(document["timestamp"]), document["data"].encode(), int(document["receivedAt"]))


def _alert_record(document: dict[str, Any]) -> AlertRecord:
    d = document
    return AlertRecord(d["imei"], int(d["timestamp"]), d["code"], d["level"], d["message"], d["data"].encode())
