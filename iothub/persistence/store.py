"""Where state outlives a process: the ``Store`` interface and its rows.

The live state (who is connected, who subscribes) belongs to the
:class:`~iothub.supervisor.Supervisor`; a store keeps what must survive a
restart: the registry (imei → owner), the last telemetry of each device, and
the telemetry and alert histories. Rows reach it in batches from the
write-behind buffer, never from the per-message path.

Histories are read newest first, a page at a time. A page's cursor is opaque
to clients: it encodes the position (timestamp, then the store's own row key)
of the page's last row, so the next page starts right after it however many
rows arrive meanwhile (keyset paging, not OFFSET).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Collection, Iterable, Sequence
from typing import Annotated, Generic, Protocol, TypeVar

import msgspec
from msgspec import Meta, Struct

from ..core.errors import ErrorCode, ProtocolError
from ..core.records import AlertRecord, Registry, TelemetryRecord

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


class Window(Struct, frozen=True, kw_only=True):
    """Which page of a history: timestamps ``from_ms..to_ms`` (both included), after ``cursor``."""

    from_ms: int | None = None
    to_ms: int | None = None
    limit: int = 100
    cursor: str | None = None

    def covers(self, timestamp: int) -> bool:
        return (self.from_ms is None or timestamp >= self.from_ms) and (self.to_ms is None or timestamp <= self.to_ms)


R = TypeVar("R", TelemetryRecord, AlertRecord)


class Page(Struct, Generic[R], frozen=True):
    """Rows newest first; ``next_cursor`` is None on the last page."""

    items: list[R]
    next_cursor: str | None


class Store(Registry, Protocol):
    #: Shown at startup and in ``/api/realtime/status``.
    name: str

    async def open(self) -> None:
        """Connect, and create the schema (and the file) on first use."""
        ...

    async def close(self) -> None: ...

    async def write(
        self, telemetry: Sequence[TelemetryRecord], alerts: Sequence[AlertRecord], owners: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Commit one batch: owners (imei, e-mail), telemetry and alerts, in one transaction where
        the store has them. The last telemetry of each device follows the newest timestamp."""
        ...

    async def telemetry_history(self, imei: str, window: Window) -> Page[TelemetryRecord]: ...

    async def alert_history(
        self,
        window: Window,
        *,
        imeis: Collection[str] | None = None,
        code: str | None = None,
        level: str | None = None,
    ) -> Page[AlertRecord]:
        """Alerts of ``imeis`` (None: of every device) matching ``code`` and ``level`` when given."""
        ...


class InvalidCursor(ValueError):
    """A cursor this store did not hand out."""


#: What a store's 64-bit columns hold: a cursor outside it was never handed out.
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]


class _Position(Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    timestamp: Int64
    key: Int64 | Annotated[str, Meta(max_length=64)]


_encode_position = msgspec.json.Encoder().encode
_decode_position = msgspec.json.Decoder(_Position).decode


def encode_cursor(timestamp: int, key: int | str) -> str:
    return base64.urlsafe_b64encode(_encode_position(_Position(timestamp, key))).rstrip(b"=").decode()


def decode_cursor(cursor: str, key_type: type[int] | type[str]) -> tuple[int, int | str]:
    """The (timestamp, key) a cursor encodes; :class:`InvalidCursor` if it is not one of ``key_type``."""
    try:
        position = _decode_position(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, msgspec.DecodeError):  # msgspec.ValidationError is a ValueError
        raise InvalidCursor(cursor) from None
    if type(position.key) is not key_type:
        raise InvalidCursor(cursor)
    return position.timestamp, position.key


def page_of(rows: Sequence[tuple[int | str, R]], limit: int) -> Page[R]:
    """The page of the first ``limit`` of ``rows`` ((key, record), newest first, up to ``limit + 1``)."""
    items = [record for _, record in rows[:limit]]
    if len(rows) <= limit:
        return Page(items, None)
    key, last = rows[limit - 1]
    return Page(items, encode_cursor(last.timestamp, key))


def newest_by_device(telemetry: Iterable[TelemetryRecord]) -> dict[str, TelemetryRecord]:
    """Each device's newest record of a batch; of equal timestamps, the later one."""
    newest: dict[str, TelemetryRecord] = {}
    for record in telemetry:
        known = newest.get(record.imei)
        if known is None or record.timestamp >= known.timestamp:
            newest[record.imei] = record
    return newest


T = TypeVar("T")


async def guarded(read: Awaitable[T]) -> T:
    """Await a store read; a store that fails answers ``STORE_UNAVAILABLE``, which a client may retry."""
    try:
        return await read
    except (ProtocolError, InvalidCursor):
        raise
    except Exception as exc:
        log.warning("reading from the store failed: %r", exc)
        raise ProtocolError(ErrorCode.STORE_UNAVAILABLE, "the store is not answering; retry later") from None
