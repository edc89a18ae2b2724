"""The history API: a device's telemetry and the alerts, newest first, a page at a time.

- ``GET /api/telemetry/{imei}?from&to&limit&cursor``
- ``GET /api/alerts?imei&code&level&from&to&limit&cursor``

An admin token reads every device; a user token reads the devices it owns
(the registry's owner, as ``subscribe_user`` counts them) and gets 403 for
any other; a device token gets 403. ``from`` and ``to`` are milliseconds since
the epoch, both included; ``limit`` is 1..1000 (default 100); ``cursor`` is the
previous page's ``nextCursor``, null on the last page. The answer is the REST
envelope with ``data: {items, nextCursor}``; an item's ``data`` is the object
the device sent. Rows show up once the write-behind has committed them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Generic, Literal, TypeVar

import msgspec
from aiohttp import web
from msgspec import Meta, Raw, Struct, field

from ..core.auth import Principal
from ..core.errors import ErrorCode, ProtocolError
from ..core.protocol import Imei, Millis, validation_error
from ..persistence.store import InvalidCursor, Window
from .rest import respond
from .services import SERVICES, Services

Limit = Annotated[int, Meta(ge=1, le=1000)]
AlertCode = Annotated[str, Meta(min_length=1, max_length=64)]
Q = TypeVar("Q", bound="HistoryQuery")
T = TypeVar("T")


class HistoryQuery(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    from_: Millis | None = field(name="from", default=None)
    to: Millis | None = None
    limit: Limit = 100
    cursor: str | None = None

    def window(self) -> Window:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ProtocolError(ErrorCode.INVALID_PAYLOAD, "from must not be after to")
        return Window(from_ms=self.from_, to_ms=self.to, limit=self.limit, cursor=self.cursor)


class TelemetryQuery(HistoryQuery, frozen=True, kw_only=True, forbid_unknown_fields=True):
    imei: Imei


class AlertQuery(HistoryQuery, frozen=True, kw_only=True, forbid_unknown_fields=True):
    imei: Imei | None = None
    code: AlertCode | None = None
    level: Literal["info", "warning", "critical"] | None = None


class TelemetryItem(Struct, frozen=True):
    imei: str
    timestamp: int
    data: Raw
    receivedAt: int


class AlertItem(Struct, frozen=True):
    imei: str
    timestamp: int
    code: str
    level: str
    message: str
    data: Raw


class HistoryPage(Struct, Generic[T], frozen=True):
    """One page of history, newest first; ``nextCursor`` is null on the last page."""

    items: list[T]
    nextCursor: str | None


async def telemetry(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    principal = _reader(services, request)
    query = _query(request, TelemetryQuery, imei=request.match_info["imei"])
    await _check_owner(services, principal, query.imei)
    page = await _read(services, services.store.telemetry_history(query.imei, query.window()))
    items = [TelemetryItem(r.imei, r.timestamp, Raw(r.data), r.receivedAt) for r in page.items]
    return respond("Telemetry history retrieved successfully", HistoryPage(items, page.next_cursor))


async def alerts(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    principal = _reader(services, request)
    query = _query(request, AlertQuery)
    imeis: list[str] | None = None
    if query.imei is not None:
        await _check_owner(services, principal, query.imei)
        imeis = [query.imei]
    elif principal.role != "admin":
        owner = principal.email or ""  # a verified user token always names one
        imeis = [device.imei for device in await services.registry.devices_of(owner)]
    page = await _read(services, services.store.alert_history(query.window(), imeis=imeis, code=query.code, level=query.level))
    items = [AlertItem(a.imei, a.timestamp, a.code, a.level, a.message, Raw(a.data)) for a in page.items]
    return respond("Alert history retrieved successfully", HistoryPage(items, page.next_cursor))


def _reader(services: Services, request: web.Request) -> Principal:
    principal = services.authenticator.for_request(request.headers.get("Authorization"))
    if principal.role not in ("admin", "user"):
        raise ProtocolError(ErrorCode.FORBIDDEN, "history needs an admin or a user token")
    return principal


async def _check_owner(services: Services, principal: Principal, imei: str) -> None:
    if principal.role != "admin" and not principal.may_read_device(await services.registry.owner_of(imei)):
        raise ProtocolError(ErrorCode.FORBIDDEN, f"device {imei} is not one of yours")


def _query(request: web.Request, kind: type[Q], **path: str) -> Q:
    """The query string (and path values) as ``kind``: each parameter once, known, of the right type."""
    parameters = request.query
    if len(set(parameters)) != len(parameters):
        raise ProtocolError(ErrorCode.INVALID_PAYLOAD, "give each parameter at most once")
    in_path = sorted(set(parameters) & path.keys())
    if in_path:
        raise ProtocolError(ErrorCode.INVALID_PAYLOAD, f"{', '.join(in_path)} belongs in the path")
    try:
        return msgspec.convert({**parameters, **path}, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None


async def _read(services: Services, read: Awaitable[T]) -> T:
    try:
        return await services.write_behind.read(read)
    except InvalidCursor:
        raise ProtocolError(ErrorCode.INVALID_PAYLOAD, "cursor is not one this server handed out") from None


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/telemetry/{imei}", telemetry)
    app.router.add_get("/api/alerts", alerts)
