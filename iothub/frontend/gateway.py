"""The Socket.IO front end: one socket's events in, replies and fan-out packets out.

Handlers stay thin. For each EVENT the gateway checks the socket's budget and
the payload's size, then hands a plain ``telemetry_data`` to the data plane
(:meth:`~iothub.core.dataplane.DataPlane.telemetry_event`, one compiled pass)
or else decodes the event into its struct (:mod:`iothub.core.protocol`),
checks the socket's token allows it (:mod:`iothub.core.auth`) and passes it
on: telemetry and heartbeats to the data plane, registrations and
subscriptions to the supervisor, as commands. The reply goes back as the
acknowledgement when the client asked for one, else as the reply event.

Packets to sockets are queued on Engine.IO's per-socket queue directly: one
encoded text for every recipient, no task and no await per socket.

With durable acknowledgements, the reply to ``telemetry_data`` waits for the
commit of the batch that holds its rows — the commit handle the data plane
hands back — through a callback on that batch's future, so the event's
handler still returns at once. A ``register_device`` that sets an owner waits
likewise for the registry's commit of everything taken so far, its owner
change included.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from time import perf_counter_ns
from typing import Any, NamedTuple

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

from ..config import Settings
from ..core.auth import Authenticator, Principal
from ..core.commands import Register, Subscribe, Unsubscribe, ok
from ..core.dataplane import DataPlane
from ..core.errors import ErrorCode, ProtocolError
from ..core.limits import AddressLimits, Refusal, client_address
from ..core.metrics import ACK_SLOT, TELEMETRY_DATA, Counters, received_index
from ..core.protocol import (
    Failure,
    HeartbeatEvent,
    RegisterDeviceEvent,
    SubscribeUserEvent,
    TelemetryDataEvent,
    TelemetryProcessed,
    UnsubscribeUserEvent,
    decode_event,
    encode,
)
from ..core.ratelimit import TokenBucket
from ..core.records import Commit
from ..core.supervisor import ControlPlane
from .compat import BINARY, SocketIOServer
from .door import Entrance, refusal
from .packets import EventPacket, ack_text, event_name_of, event_text
from .transport import BoundedQueue, Endings, FramedPacket, Pinger, ReadGate, opening, refusal_log, routes, websocket_class

log = logging.getLogger(__name__)

NAMESPACE = "/"
#: Engine.IO's path: python-socketio's default, where its routes are attached.
ENGINE_PATH = "/socket.io/"
#: Room over MAX_PAYLOAD_BYTES that the transport still takes, so that a
#: payload somewhat too large gets PAYLOAD_TOO_LARGE instead of a dropped socket.
TRANSPORT_SLACK_BYTES = 1024 * 1024
TELEMETRY_PROCESSED = encode(TelemetryProcessed())
INTERNAL_FAILURE = Failure(code=ErrorCode.INTERNAL, message="internal error")
NOT_STORED = Failure(code=ErrorCode.STORE_UNAVAILABLE, message="the server stopped before it could store this; send it again")


class Deferred(NamedTuple):
    """A reply held back until the rows of its event are committed."""

    payload: bytes
    committed: asyncio.Future[None]


class Manager(socketio.AsyncManager):
    """python-socketio's client manager, without a room per socket.

    The gateway writes to Engine.IO sockets itself and puts no socket in a
    room, so a socket needs only its namespace's room, which maps its two ids
    both ways. The stock manager also gives every socket a room of its own (a
    bidict: a few hundred bytes a connection), and at every disconnect copies
    and scans all of the namespace's rooms to find the socket's: with a room
    per connection that is O(connections) per disconnect, seconds of a blocked
    loop when thousands of devices drop at once. With one room it is O(1).
    python-socketio's ``emit(to=sid)`` therefore reaches no one; nothing here uses it.
    """

    def basic_enter_room(self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None) -> None:
        if room == sid:
            return
        if room is not None:
            raise ValueError("this server puts sockets in no rooms")
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)


class EngineSession:
    """What the gateway keeps of an Engine.IO session: its client's address, its deadline for Socket.IO's
    CONNECT, and its pings — all let go of when the session ends."""

    __slots__ = ("address", "deadline", "pinger")

    def __init__(self, address: str, deadline: asyncio.TimerHandle, pinger: Pinger) -> None:
        self.address = address
        self.deadline = deadline
        self.pinger = pinger


def library_logger(name: str, verbose: bool) -> logging.Logger:
    """python-socketio's or python-engineio's logger: informative when ``DEBUG`` asks, else errors only.

    Given as a logger rather than a flag, so that the library adds no handler
    of its own: its lines go through the server's handler and format
    (:mod:`iothub.logs`), tokens blanked, and each once.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if verbose else logging.ERROR)
    return logger


class Session:
    """What the gateway knows of one connected socket."""

    __slots__ = ("principal", "budget", "expiry")

    def __init__(self, principal: Principal, budget: TokenBucket | None, expiry: asyncio.TimerHandle | None) -> None:
        self.principal = principal
        self.budget = budget
        #: The end of the socket when its token expires.
        self.expiry = expiry


class Gateway(SocketIOServer):
    def __init__(self, settings: Settings, authenticator: Authenticator, counters: Counters) -> None:
        debug = settings.debug or ""
        super().__init__(
            async_mode="aiohttp",
            client_manager=Manager(),
            serializer=EventPacket,
            async_handlers=False,
            cors_allowed_origins=settings.cors_origins,
            max_http_buffer_size=settings.max_payload_bytes + TRANSPORT_SLACK_BYTES,
            ping_interval=settings.ping_interval_ms / 1000,
            ping_timeout=settings.ping_timeout_ms / 1000,
            # Each socket's Pinger times it out; python-engineio's monitor would also wake
            # len(sockets) times per ping timeout to look at every socket, idle or not.
            monitor_clients=False,
            logger=library_logger("socketio.server", "socket.io" in debug or debug == "*"),
            engineio_logger=library_logger("engineio.server", "engine" in debug or debug == "*"),
        )
        self.use_transport(websocket_class(self), routes(self))
        self.settings = settings
        self.authenticator = authenticator
        #: This gateway's counters for ``/metrics`` (shared with its data plane).
        self.counters = counters
        self.limits = AddressLimits(
            max_connections=settings.max_connections,
            max_per_address=settings.max_connections_per_address,
            rate_per_address=settings.connect_rate_per_address,
            auth_failures=settings.auth_failures_per_address,
            ban_seconds=settings.auth_ban_ms / 1000,
        )
        self.gate = ReadGate()
        self.endings = Endings()
        #: Cluster mode: answers a request for another gateway's session from that gateway (None: not its session).
        self.elsewhere: Callable[[web.Request], Awaitable[web.StreamResponse] | None] | None = None
        self.max_queued_bytes = settings.max_queued_bytes
        self.compress = settings.ws_compression
        self._sessions: dict[str, Session] = {}
        self._engine_sessions: dict[str, EngineSession] = {}
        #: Closes under way (kept: a task nobody references may be collected).
        self._closing: set[asyncio.Task[Any]] = set()
        self.on("connect", self._on_connect)
        self.on("disconnect", self._on_disconnect)

    def bind(self, plane: DataPlane, supervisor: ControlPlane, registry_committed: Callable[[], asyncio.Future[None]] | None = None) -> None:
        """The data plane this gateway's sockets feed, and the supervisor it asks for the rest.

        ``registry_committed`` (durable acknowledgements): a future resolved once
        every change the registry has taken so far is committed.
        """
        self.plane = plane
        self.supervisor = supervisor
        self.registry_committed = registry_committed

    async def close_connections(self) -> None:
        """Close every socket and answer the long-polls they hold; clients reconnect, to the next server, on their own.

        Engine.IO answers a pending polling GET only once the socket has a packet for it, or after ping
        interval + ping timeout (45 s) — even when the client has already closed the session — and
        aiohttp's shutdown waits for open requests. ``None`` on a polling socket's queue ends its poll now;
        a WebSocket's pump takes the CLOSE packet, writes it and closes.
        """
        for socket in list(self.eio.sockets.values()):
            await socket.close(wait=False)
            socket.queue.put_nowait(None)
        self.eio.sockets.clear()

    # ------------------------------------------------------------------ Outbox

    def send(self, sids: Collection[str], event: str, payload: bytes | None) -> int:
        """Queue one ``event`` packet on each socket; return how many took it."""
        if not sids:
            return 0
        message = FramedPacket(eio_packet.MESSAGE, event_text(event, payload))
        eio_sid_of = self.manager.eio_sid_from_sid
        sockets = self.eio.sockets
        sent = 0
        for sid in sids:
            socket = sockets.get(eio_sid_of(sid, NAMESPACE))
            if socket is not None and not socket.closing and not socket.closed:
                socket.queue.put_nowait(message)
                sent += 1
        self.counters.sent_to(event, sent)
        return sent

    def _send_text(self, eio_sid: str, text: str) -> None:
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and not socket.closing and not socket.closed:
            socket.queue.put_nowait(FramedPacket(eio_packet.MESSAGE, text))

    # ------------------------------------------------------------------ connections

    # ------------------------------------------------------------------ the transport's guard

    def entrance(self, handlers: Callable[[], asyncio.Protocol] | None) -> Entrance:
        """The door of every connection this gateway accepts: its WebSockets kept, the rest for ``handlers``
        (aiohttp's: a runner's ``server``, once it is set up)."""
        assert handlers is not None, "the runner is not set up"
        return Entrance(handlers, ENGINE_PATH, opening(self, self.eio), self.eio.sockets.__contains__, self.compress)

    def address_of(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer's, or X-Forwarded-For's when the peer is a trusted proxy."""
        return client_address(peer, forwarded_for, self.settings.proxies)

    def admit(self, address: str) -> web.StreamResponse | None:
        """Whether a new Engine.IO session may open for ``address`` (PROTOCOL.md, "Operations")."""
        now = time.monotonic()
        refused = self.limits.admit(address, now)
        if refused is None:
            return None
        self.counters.refusals["banned" if refused is Refusal.BANNED else "connection_limit"] += 1
        response = refusal(refused.status, ErrorCode.RATE_LIMITED, refused.message)
        if refused.status == 429:
            response.headers["Retry-After"] = str(max(1, round(self.limits.banned_for(address, now))))
        return response

    def forwarded(self, request: web.Request) -> Awaitable[web.StreamResponse] | None:
        return None if self.elsewhere is None else self.elsewhere(request)

    def too_slow(self, socket: AsyncSocket) -> None:
        if socket.closing or socket.closed:
            return
        self.counters.refusals["too_slow"] += 1
        refusal_log.warning("socket %s: more than %d bytes queued towards it: cut off as too slow", socket.sid, self.max_queued_bytes)
        self._close_engine_socket(socket, socket.server.reason.TRANSPORT_ERROR)

    def engine_socket_opened(self, socket: AsyncSocket, environ: dict[str, Any]) -> None:
        """Count the session against its address; pings on timers; a deadline for Socket.IO's CONNECT."""
        address = self.address_of(environ["REMOTE_ADDR"], environ.get("HTTP_X_FORWARDED_FOR"))
        self.limits.opened(address)
        if "transport=polling" in environ.get("QUERY_STRING", ""):
            socket.queue = BoundedQueue.replacing(socket, self)
        deadline = asyncio.get_running_loop().call_later(self.settings.connect_timeout_ms / 1000, self._connect_overdue, socket)
        self._engine_sessions[socket.sid] = EngineSession(address, deadline, Pinger(socket, self.gate))

    def engine_socket_closed(self, eio_sid: str) -> None:
        session = self._engine_sessions.pop(eio_sid, None)
        if session is not None:
            session.deadline.cancel()
            session.pinger.stop()
            self.limits.closed(session.address)
        # Forgotten now (with no monitor task, nothing else would for a polling client that never
        # comes back); a long-poll still held gets its answer now, not at its timeout.
        socket = self.eio.sockets.pop(eio_sid, None)
        if socket is not None:
            socket.queue.put_nowait(None)

    def _connect_overdue(self, socket: AsyncSocket) -> None:
        """An Engine.IO session that has not sent Socket.IO's CONNECT in time is closed."""
        if not socket.closing and not socket.closed and self.manager.sid_from_eio_sid(socket.sid, NAMESPACE) is None:
            self.counters.refusals["connect_timeout"] += 1
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
            self._close_engine_socket(socket, socket.server.reason.TRANSPORT_CLOSE)

    def _close_engine_socket(self, socket: AsyncSocket, reason: Any) -> None:
        task = asyncio.ensure_future(socket.close(wait=False, abort=True, reason=reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # ------------------------------------------------------------------ Socket.IO sessions

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        engine_session = self._engine_sessions.get(self.manager.eio_sid_from_sid(sid, NAMESPACE) or "")
        try:
            principal = self.authenticator.for_socket(auth)
        except ProtocolError as error:
            if engine_session is not None:
                self.limits.auth_failed(engine_session.address, time.monotonic())
            self.counters.auth_failures["socket"] += 1
            log.info("socket %s refused: %s", sid, error.message, extra={"socket": sid})
            raise socketio.exceptions.ConnectionRefusedError(error.message, {"code": error.code}) from None
        if engine_session is not None:
            engine_session.deadline.cancel()
        rate = self.settings.rate_limit
        budget = TokenBucket(rate, self.settings.burst, time.monotonic()) if rate else None
        expiry = None
        if principal.expires is not None:
            delay = principal.expires - time.time()
            expiry = asyncio.get_running_loop().call_later(delay, self._token_expired, sid)
        self._sessions[sid] = Session(principal, budget, expiry)
        self.plane.connect(sid)
        self.counters.connects += 1

    def _token_expired(self, sid: str) -> None:
        """A socket's token has expired: the socket ends (the client connects again with a fresh one)."""
        task = asyncio.ensure_future(self.disconnect(sid))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _on_disconnect(self, sid: str, reason: object = None) -> None:
        self.counters.disconnected(reason)
        session = self._sessions.pop(sid, None)
        if session is not None and session.expiry is not None:
            session.expiry.cancel()
        await self.supervisor.socket_closed(self.plane.disconnect(sid))

    # ------------------------------------------------------------------ events

    async def handle_event(self, eio_sid: str, namespace: str | None, ack_id: int | None, data: Any) -> None:
        """One EVENT from a connected socket (no session: not connected on the default namespace, dropped)."""
        received = perf_counter_ns()
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or NAMESPACE)
        session = self._sessions.get(sid) if sid is not None else None
        if session is None:
            return
        counters = self.counters
        try:
            reply_event, reply = await self._dispatch(sid, session, data, received)
        except ProtocolError as error:
            reply_event, reply = "error", encode(Failure.of(error))
            self.plane.refused()
            counters.received[received_index(event_name_of(data))] += 1
            counters.refused(error.code)
        except Exception:
            log.exception("event from socket %s failed", sid, extra={"socket": sid})
            reply_event, reply = "error", encode(INTERNAL_FAILURE)
            counters.received[received_index(event_name_of(data))] += 1
            counters.refused(ErrorCode.INTERNAL)
        if isinstance(reply, Deferred):
            reply.committed.add_done_callback(functools.partial(self._reply_committed, eio_sid, ack_id, reply_event, reply.payload))
        else:
            self._reply(eio_sid, ack_id, reply_event, reply)

    def _reply(self, eio_sid: str, ack_id: int | None, reply_event: str | None, payload: bytes) -> None:
        if ack_id is not None:
            self._send_text(eio_sid, ack_text(ack_id, payload))
            self.counters.sent[ACK_SLOT] += 1
        elif reply_event is not None:
            self._send_text(eio_sid, event_text(reply_event, payload))
            self.counters.sent_to(reply_event, 1)

    def _reply_committed(self, eio_sid: str, ack_id: int | None, reply_event: str | None, payload: bytes, committed: asyncio.Future[None]) -> None:
        if committed.cancelled() or committed.exception() is not None:
            reply_event, payload = "error", encode(NOT_STORED)
        self._reply(eio_sid, ack_id, reply_event, payload)

    def _processed(self, commit: Commit) -> bytes | Deferred:
        """``telemetry_processed``, held back until ``commit`` when acknowledgements are durable."""
        return Deferred(TELEMETRY_PROCESSED, commit.committed()) if self.settings.durable_ack else TELEMETRY_PROCESSED

    async def _dispatch(self, sid: str, session: Session, data: Any, received: int) -> tuple[str | None, bytes | Deferred]:
        """Run one event; return the reply event's name and its encoded payload (or the promise of it).

        ``received``: when the gateway took the event (``perf_counter_ns``), for
        the telemetry fan-out histogram: taken to the last dashboard packet queued.
        An event is counted by name here when it succeeds; :meth:`handle_event`
        counts those that fail, by the name their text starts with.
        """
        if session.budget is not None and not session.budget.take(time.monotonic()):
            raise ProtocolError(ErrorCode.RATE_LIMITED, "too many events: slow down")
        if not isinstance(data, str):
            if data is BINARY:
                raise ProtocolError(ErrorCode.INVALID_PAYLOAD, "binary payloads are not accepted")
            raise ProtocolError(ErrorCode.INVALID_PAYLOAD, "an event must be a JSON array starting with its name")
        limit = self.settings.max_payload_bytes
        if len(data) > limit // 4 and len(data.encode()) > limit:
            raise ProtocolError(ErrorCode.PAYLOAD_TOO_LARGE, f"an event may carry at most {limit} bytes")
        plane = self.plane
        counters = self.counters
        commit = plane.telemetry_event(sid, data)
        if commit is not None:
            counters.fanout.observe(perf_counter_ns() - received)
            counters.received[TELEMETRY_DATA] += 1
            return TelemetryDataEvent.reply_event, self._processed(commit)
        event = decode_event(data)
        principal = session.principal
        reply: bytes | Deferred
        match event:
            case TelemetryDataEvent(payload=message):
                commit = plane.telemetry(sid, message)
                counters.fanout.observe(perf_counter_ns() - received)
                reply = self._processed(commit)
            case HeartbeatEvent(payload=message):
                reply = encode(plane.heartbeat(sid, message.imei))
            case RegisterDeviceEvent(payload=message):
                if not principal.may_register(message.imei):
                    raise ProtocolError(ErrorCode.FORBIDDEN, f"this token may not register {message.imei}")
                if message.userEmail is not None and not principal.may_set_owner(message.userEmail):
                    raise ProtocolError(ErrorCode.FORBIDDEN, f"this token may not make {message.userEmail} a device's owner")
                reply = encode(ok(await self.supervisor.register(Register(plane.name, sid, message.imei, message.userEmail))))
                if message.userEmail is not None and self.registry_committed is not None:
                    reply = Deferred(reply, self.registry_committed())
            case SubscribeUserEvent(payload=message):
                if not principal.may_subscribe(message.email):
                    raise ProtocolError(ErrorCode.FORBIDDEN, f"this token may not subscribe to {message.email}")
                reply = encode(ok(await self.supervisor.subscribe(Subscribe(plane.name, sid, message.email))))
            case UnsubscribeUserEvent(payload=message):
                reply = encode(await self.supervisor.unsubscribe(Unsubscribe(plane.name, sid, message.email)))
            case _:
                raise AssertionError(f"unhandled event {event!r}")
        counters.received[received_index(str(event.__struct_config__.tag))] += 1
        return event.reply_event, reply
