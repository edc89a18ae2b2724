"""The REST API: health, status and the operators' real-time management endpoints.

Every answer is PROTOCOL.md's envelope ``{success, message, data?}``; every
failure, including aiohttp's own (unknown route, body too large), gets the
envelope with ``code`` and the matching status, never a stack trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, Struct, UnsetType

from ..core.alerts import EvaluatorKind
from ..core.auth import Principal
from ..core.clock import now_ms
from ..core.commands import Broadcast, SendToDevice, SendToUser, ok
from ..core.errors import ErrorCode, ProtocolError
from ..core.limits import client_address
from ..core.metrics import Rates
from ..core.protocol import Connections, DirectedMessage, Email, Envelope, ErrorEnvelope, Imei, encode, validation_error
from .services import SERVICES

log = logging.getLogger(__name__)

SOCKETIO_PATH = "/socket.io"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: ErrorCode.INVALID_PAYLOAD,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
}
_decode_message = msgspec.json.Decoder(DirectedMessage).decode
_check_imei = msgspec.json.Decoder(Imei).decode
_check_email = msgspec.json.Decoder(Email).decode


def respond(message: str, data: Any = msgspec.UNSET, status: int = 200) -> web.Response:
    return web.Response(
        body=encode(Envelope(success=status < 400, message=message, data=data)),
        status=status,
        content_type="application/json",
    )


def failure(code: ErrorCode, message: str, status: int) -> web.Response:
    return web.Response(body=encode(ErrorEnvelope(message, code)), status=status, content_type="application/json")


class Health(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``GET /health``: not the envelope (the seed's shape). ``store`` and ``backlog`` only while the store fails."""

    status: Literal["OK", "DEGRADED"]
    timestamp: Annotated[str, Meta(description="ISO 8601, UTC")]
    uptime: Annotated[float, Meta(description="seconds")]
    connectedDevices: int
    connectedUsers: int
    store: str | UnsetType = UNSET
    backlog: int | UnsetType = UNSET


class GatewaySummary(Struct, frozen=True):
    """One gateway of the server (one in a single process; each Ray actor in cluster mode)."""

    id: str
    pid: Annotated[int, Meta(description="the operating-system process id of the gateway")]
    connections: int
    devices: int
    alive: bool


class Status(Struct, frozen=True, kw_only=True):
    """``GET /api/realtime/status``'s data: counts and message rates over every gateway, nothing personal."""

    connections: int
    devices: int
    users: int
    messages: dict[str, Rates]
    evaluator: EvaluatorKind
    store: str
    backlog: int
    uptime: float
    timestamp: int
    gateways: list[GatewaySummary]


def summed(rates: list[dict[str, Rates]]) -> dict[str, Rates]:
    """The gateways' message rates added up, meter by meter."""
    total: dict[str, Rates] = {}
    for each in rates:
        for name, rate in each.items():
            known = total.get(name)
            total[name] = rate if known is None else Rates(known.total + rate.total, round(known.perSecond + rate.perSecond, 3))
    return total


def rest_only(middleware: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]) -> Any:
    """``middleware`` for REST requests; Socket.IO's go straight to their handler.

    Engine.IO answers its own requests, errors and CORS included; and a long-poll
    would hold the middleware's frame for as long as it waits.
    """

    @web.middleware
    def middleware_or_socketio(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.path.startswith(SOCKETIO_PATH):
            return handler(request)
        return middleware(request, handler)

    return middleware_or_socketio


async def address_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse an address banned for failed authentications; count this request's failure if it is one."""
    services = request.app[SERVICES]
    address = client_address(request.remote, request.headers.get("X-Forwarded-For"), services.proxies)
    banned_for = services.limits.banned_for(address, time.monotonic())
    if banned_for:
        refused = failure(ErrorCode.RATE_LIMITED, "this address failed to authenticate too often; retry later", 429)
        refused.headers["Retry-After"] = str(max(1, round(banned_for)))
        return refused
    response = await handler(request)
    if response.status == 401:
        services.limits.auth_failed(address, time.monotonic())
    return response


async def envelope_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every refusal and failure into the envelope."""
    try:
        return await handler(request)
    except ProtocolError as error:
        if error.code is ErrorCode.UNAUTHORIZED:
            request.app[SERVICES].plane.counters.auth_failures["rest"] += 1
        return failure(error.code, error.message, error.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return failure(_HTTP_CODES.get(exc.status, ErrorCode.INTERNAL), exc.reason, exc.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path, extra={"request": f"{request.method} {request.path}"})
        return failure(ErrorCode.INTERNAL, "internal error", 500)


def admin(request: web.Request) -> Principal:
    principal = request.app[SERVICES].authenticator.for_request(request.headers.get("Authorization"))
    if principal.role != "admin":
        raise ProtocolError(ErrorCode.FORBIDDEN, "this endpoint needs an admin token")
    return principal


async def health(request: web.Request) -> web.Response:
    """``OK``, or ``DEGRADED`` with the store's name and backlog while the store fails.

    Still 200 when degraded: the server serves, and its backlog is in memory —
    a balancer must not take it out of service for that.
    """
    services = request.app[SERVICES]
    degraded = services.write_behind.degraded
    counts = await services.supervisor.counts()
    body = Health(
        status="DEGRADED" if degraded else "OK",
        timestamp=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        uptime=round(services.uptime, 3),
        connectedDevices=counts.devices,
        connectedUsers=len(await services.supervisor.users()),
        store=services.store.name if degraded else UNSET,
        backlog=services.write_behind.backlog if degraded else UNSET,
    )
    return web.Response(body=encode(body), content_type="application/json")


async def status(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    supervisor = services.supervisor
    reports = await supervisor.reports()
    return respond(
        "Real-time status retrieved successfully",
        Status(
            connections=sum(report.counts.connections for report in reports),
            devices=sum(report.counts.devices for report in reports),
            users=len(await supervisor.users()),
            messages=summed([report.rates for report in reports if report.alive]),
            evaluator=services.evaluator,
            store=services.store.name,
            backlog=sum(report.store.backlog for report in reports if report.alive),
            uptime=round(services.uptime, 3),
            timestamp=now_ms(),
            gateways=[GatewaySummary(report.name, report.pid, report.counts.connections, report.counts.devices, report.alive) for report in reports],
        ),
    )


async def connections(request: web.Request) -> web.Response:
    admin(request)
    supervisor = request.app[SERVICES].supervisor
    data = Connections(
        devices=await supervisor.devices(),
        users=await supervisor.users(),
        totalConnections=(await supervisor.counts()).connections,
        timestamp=now_ms(),
    )
    return respond("Connection status retrieved successfully", data)


async def devices(request: web.Request) -> web.Response:
    admin(request)
    return respond("Connected devices retrieved successfully", await request.app[SERVICES].supervisor.devices())


async def users(request: web.Request) -> web.Response:
    admin(request)
    return respond("Connected users retrieved successfully", await request.app[SERVICES].supervisor.users())


async def broadcast(request: web.Request) -> web.Response:
    admin(request)
    message = await _directed_message(request)
    delivery = await request.app[SERVICES].supervisor.broadcast(Broadcast(message.event, _payload(message)))
    return respond("Message broadcast successfully", delivery)


async def to_device(request: web.Request) -> web.Response:
    admin(request)
    imei = _path_value(request, "imei", _check_imei)
    message = await _directed_message(request)
    delivery = await request.app[SERVICES].supervisor.send_to_device(SendToDevice(imei, message.event, _payload(message)))
    return respond("Message sent to device successfully", ok(delivery))


async def to_user(request: web.Request) -> web.Response:
    admin(request)
    email = _path_value(request, "email", _check_email).lower()
    message = await _directed_message(request)
    delivery = await request.app[SERVICES].supervisor.send_to_user(SendToUser(email, message.event, _payload(message)))
    return respond("Message sent to user successfully", ok(delivery))


def _path_value(request: web.Request, name: str, check: Callable[[bytes], str]) -> str:
    value = request.match_info[name]
    try:
        return check(encode(value))
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc), within=name) from None


async def _directed_message(request: web.Request) -> DirectedMessage:
    body = await request.read()
    try:
        return _decode_message(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except (msgspec.DecodeError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_PAYLOAD, "the body must be a JSON object {event, data}") from None


def _payload(message: DirectedMessage) -> bytes | None:
    return None if message.data is msgspec.UNSET else bytes(message.data)


def cors(origins: list[str] | str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """CORS for the REST API (Socket.IO's own path answers CORS itself); None: the server's own origin only."""

    def allowed(origin: str | None) -> str | None:
        if origin is None or origins is None:
            return None
        return "*" if origins == "*" else (origin if origin in origins else None)

    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = allowed(request.headers.get("Origin"))
        if request.method == "OPTIONS" and origin is not None:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return middleware


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/api/realtime/status", status)
    app.router.add_get("/api/realtime/connections", connections)
    app.router.add_get("/api/realtime/devices", devices)
    app.router.add_get("/api/realtime/users", users)
    app.router.add_post("/api/realtime/broadcast", broadcast)
    app.router.add_post("/api/realtime/device/{imei}", to_device)
    app.router.add_post("/api/realtime/user/{email}", to_user)
