"""The WebSocket pump: Engine.IO over a WebSocket connection of the server's own, without a task per message or per socket.

python-engineio keeps the protocol's state (handshake, sessions, long-polling,
upgrades); this module replaces its WebSocket loop, which costs a task and a
``wait_for`` per received frame, another task per message, a writer task and
an ``asyncio.Queue`` per socket, and a ``write`` system call per frame — and
aiohttp's WebSocket under it, which keeps a request handler's task and its
chain of coroutines for the socket's life.

The :class:`~iothub.frontend.door.Door` gives a WebSocket handshake's
connection to a :class:`Pump`, the connection's protocol from then on: the
client's frames are parsed as they arrive and each message handed straight
to Socket.IO. The pump *is* the socket's queue: what Engine.IO or the gateway
puts on it is framed at once and the socket's frames go out in one ``write``
at the end of the loop iteration. The :class:`Pinger` sends every socket's
pings from a timer, not a task. A socket costs a few objects, not a few
tasks: that is what keeps thousands of idle devices cheap (README,
Performance).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import enum
import logging
import time
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol

from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_server import AsyncServer
from engineio.async_socket import AsyncSocket

from ..core.errors import ErrorCode
from ..core.metrics import Counters
from ..core.ratelimit import RateLimitedLog
from .compat import WebSocketDriver, detach, websocket_driver
from .door import DOOR, Door, hand_to, refusal
from .websocket import Close, DeflateParameters, Deflater, FrameReader, Handshake, Message, Opcode, WebSocketError, close_frame, frame, handshake

log = logging.getLogger(__name__)
#: Protocol errors and cut-off sockets, one line each, at most a few a second whatever a client sends.
refusal_log = RateLimitedLog(log)

#: How long a WebSocket this server closes waits for the client's CLOSE before the connection is cut.
CLOSE_TIMEOUT_S = 5.0


class FramedPacket(eio_packet.Packet):
    """An Engine.IO message that keeps its WebSocket frame, built once for every recipient."""

    _frame: bytes | None = None

    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = frame_encoded(self.encode())
        return self._frame


def frame_encoded(encoded: str | bytes, deflater: Deflater | None = None) -> bytes:
    """The frame of an encoded Engine.IO packet, a text frame or a binary one for bytes; compressed by ``deflater``."""
    payload, opcode = (encoded.encode(), Opcode.TEXT) if isinstance(encoded, str) else (encoded, Opcode.BINARY)
    return frame(payload, opcode) if deflater is None else deflater.frame(payload, opcode)


def frame_size(encoded: str | bytes) -> int:
    """The bytes of :func:`frame_encoded`'s frame of ``encoded``, without building it."""
    size = len(encoded) if isinstance(encoded, bytes) or encoded.isascii() else len(encoded.encode())
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


def frame_of(packet: eio_packet.Packet) -> bytes:
    return packet.frame() if isinstance(packet, FramedPacket) else frame_encoded(packet.encode())


class ReadGate:
    """Whether the server reads from its sockets now.

    Closed while the write-behind is too far behind (``IOTHUB_MAX_BACKLOG_AGE_MS``):
    no socket is read — a WebSocket's pump stops reading, a polling POST waits — so the
    clients' TCP windows fill and they slow down, and what an acknowledgement
    promises stays within a bounded loss window. Ping timeouts wait too: a
    socket the server does not read cannot be judged silent.
    """

    __slots__ = ("paused", "resumed_at", "_opened", "_waiting")

    def __init__(self) -> None:
        self.paused = False
        #: When reading last resumed (``time.monotonic()``).
        self.resumed_at = float("-inf")
        self._opened: asyncio.Event | None = None
        #: What to call when reading resumes: the pumps that stopped reading.
        self._waiting: list[Callable[[], None]] = []

    def pause(self) -> None:
        self.paused = True

    def held_within(self, seconds: float) -> bool:
        """Whether reading is held, or was within the last ``seconds``: what it held back may still be unread."""
        return self.paused or time.monotonic() - self.resumed_at < seconds

    def resume(self) -> None:
        self.paused = False
        self.resumed_at = time.monotonic()
        if self._opened is not None:
            self._opened.set()
            self._opened = None
        waiting, self._waiting = self._waiting, []
        for resume in waiting:
            resume()

    def on_resume(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` once reading resumes."""
        self._waiting.append(resume)

    async def wait(self) -> None:
        while self.paused:
            if self._opened is None:
                self._opened = asyncio.Event()
            await self._opened.wait()


class Guard(Protocol):
    """What the transport asks of the front end about admission and limits."""

    gate: ReadGate
    #: Bytes a socket may have queued towards it before it is cut off as too slow.
    max_queued_bytes: int
    #: The gateway's counters: bytes in and out, refusals.
    counters: Counters
    #: Whether WebSockets are offered permessage-deflate.
    compress: bool
    #: The sessions whose connection is gone, ended a few at a time.
    endings: Endings

    def address_of(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address, given the peer's and the request's ``X-Forwarded-For``."""
        ...

    def admit(self, address: str) -> web.StreamResponse | None:
        """None when a new Engine.IO session may open for ``address``; else the refusal to answer with."""
        ...

    def too_slow(self, socket: AsyncSocket) -> None:
        """The socket let more than ``max_queued_bytes`` pile up: count it, close it."""
        ...

    def forwarded(self, request: web.Request) -> Awaitable[web.StreamResponse] | None:
        """The answer, from the gateway that owns it, to a request naming a session another gateway owns
        (cluster mode); None for a session of this gateway, or a new one."""
        ...


def websocket_class(guard: Guard) -> WebSocketDriver:
    """Engine.IO's WebSocket driver: the handshake's connection becomes a :class:`Pump`.

    Most handshakes come through the :class:`~iothub.frontend.door.Door`. One
    that aiohttp read (a later request on a kept-alive connection, as the
    Python client sends its upgrade) was checked by the route (:func:`routes`):
    aiohttp is told the connection is gone — it forgets it, and writes nothing
    more — and the pump takes it over all the same.
    """

    def open_pump(socket: AsyncSocket, environ: dict[str, Any]) -> web.StreamResponse | None:
        def make(transport: asyncio.Transport, deflate: DeflateParameters | None) -> Pump:
            return Pump(socket, transport, deflate, guard)

        door = environ.get(DOOR)
        if isinstance(door, Door):
            door.take(make)
            return None
        request: web.Request = environ["aiohttp.request"]
        accepted = request.get(HANDSHAKE)
        if accepted is None:
            return refusal(400, ErrorCode.INVALID_PAYLOAD, "not a WebSocket handshake")
        transport = detach(request)
        if transport is not None:
            hand_to(transport, accepted, make)
        return None

    return websocket_driver(open_pump)


def opening(guard: Guard, server: AsyncServer) -> Callable[[dict[str, Any]], Awaitable[web.StreamResponse | None]]:
    """How the door opens a WebSocket session: a new one admitted first (per-address limits), then Engine.IO's handshake."""

    async def open_session(environ: dict[str, Any]) -> web.StreamResponse | None:
        if "sid" not in urllib.parse.parse_qs(environ["QUERY_STRING"]):
            refused = guard.admit(guard.address_of(environ["REMOTE_ADDR"], environ.get("HTTP_X_FORWARDED_FOR")))
            if refused is not None:
                return refused
        response: web.StreamResponse | None = await server.handle_request(environ)
        return response

    return open_session


def masked_frame_size(payload: int) -> int:
    """The bytes of a client's WebSocket frame (masked, unfragmented) that carries ``payload`` bytes."""
    return payload + (6 if payload < 126 else 8 if payload < 65536 else 14)


def routes(guard: Guard) -> Callable[[web.Application, AsyncServer, str], None]:
    """Engine.IO's routes, as python-engineio's ``create_route`` adds them, with the front end's guard.

    These serve long-polling and another gateway's sessions; WebSockets are
    the door's. A request that would open a session is admitted first
    (per-address limits). A POST longer than the largest payload is answered
    413 at once, before its body is read, and its connection closed.
    """

    def create_route(app: web.Application, server: AsyncServer, endpoint: str) -> None:
        async def get(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                try:
                    request[HANDSHAKE] = handshake({name.lower(): value for name, value in request.headers.items()}, compress=guard.compress)
                except ValueError as exc:
                    return refusal(400, ErrorCode.INVALID_PAYLOAD, str(exc))
            if "sid" not in request.query:
                refused = guard.admit(guard.address_of(request.remote, request.headers.get("X-Forwarded-For")))
                if refused is not None:
                    return refused
            elif (elsewhere := guard.forwarded(request)) is not None:
                return await elsewhere
            response = await server.handle_request(request)
            if response is None:  # the connection is a pump's now: aiohttp writes nothing to it
                return web.Response(status=101)
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                guard.counters.bytes_out += len(response.body)
            return response

        async def post(request: web.Request) -> web.StreamResponse:
            if (elsewhere := guard.forwarded(request)) is not None:
                return await elsewhere
            length = request.content_length
            if length is None:
                return refusal(411, ErrorCode.INVALID_PAYLOAD, "a polling POST needs a Content-Length")
            if length > server.max_http_buffer_size:
                return refusal(413, ErrorCode.PAYLOAD_TOO_LARGE, f"a polling POST may carry at most {server.max_http_buffer_size} bytes")
            guard.counters.bytes_in += length
            if guard.gate.paused:
                await guard.gate.wait()
            response = await server.handle_request(request)
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                guard.counters.bytes_out += len(response.body)
            return response

        app.router.add_get(endpoint, get)
        app.router.add_post(endpoint, post)
        app.router.add_route("OPTIONS", endpoint, server.handle_request)

    return create_route


#: The route's check of a WebSocket handshake aiohttp read, for the driver.
HANDSHAKE = web.RequestKey("iothub.handshake", Handshake)


class BoundedQueue(asyncio.Queue[eio_packet.Packet | None]):
    """A polling socket's queue that counts the bytes it holds and calls for a cut-off past its limit.

    A long-polling client that stops polling would otherwise make the server
    keep every packet for it.
    """

    def __init__(self, socket: AsyncSocket, guard: Guard) -> None:
        super().__init__()
        #: Weak: the socket holds its queue, and a cycle would outlive the session (see :meth:`Pump._finish`).
        self.socket = weakref.ref(socket)
        self.guard = guard
        self.size = 0
        #: Past the limit: the socket is being cut off, and nothing more is kept for it.
        self.overflowed = False

    @classmethod
    def replacing(cls, socket: AsyncSocket, guard: Guard) -> BoundedQueue:
        """The socket's new queue, holding what the old one held (Engine.IO's OPEN packet among it)."""
        bounded, old = cls(socket, guard), socket.queue
        while not old.empty():
            bounded.put_nowait(old.get_nowait())
        return bounded

    def _put(self, item: eio_packet.Packet | None) -> None:
        if item is not None:
            if self.overflowed:
                return
            if self.size > self.guard.max_queued_bytes:  # one packet always fits, however large
                self.overflowed = True
                socket = self.socket()
                if socket is not None:
                    self.guard.too_slow(socket)
                return
            self.size += len(item.data) if isinstance(item.data, str | bytes) else 1
        super()._put(item)

    def _get(self) -> eio_packet.Packet | None:
        item = super()._get()
        if item is not None:
            self.size -= len(item.data) if isinstance(item.data, str | bytes) else 1
        return item


class Endings:
    """Sessions whose WebSocket connection is gone, ended at most :data:`PER_TURN` to a turn of the loop.

    When thousands of clients leave at once the kernel reports them together
    and uvloop runs every connection's loss in one turn; each session's end
    (Socket.IO's and Engine.IO's disconnect, the device's departure) costs tens
    of microseconds, so ending them all there would stall every other socket
    for tens of milliseconds. Queued, they end over the next turns instead.
    """

    __slots__ = ("_waiting", "_scheduled")

    PER_TURN = 64

    def __init__(self) -> None:
        self._waiting: collections.deque[Pump] = collections.deque()
        self._scheduled = False

    def add(self, pump: Pump) -> None:
        self._waiting.append(pump)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        waiting = self._waiting
        for _ in range(min(self.PER_TURN, len(waiting))):
            waiting.popleft().end()
        if waiting:
            asyncio.get_running_loop().call_soon(self._run)
        else:
            self._scheduled = False


class _State(enum.Enum):
    #: A long-polling session's upgrade: waiting for the client's ``2probe``.
    PROBE = enum.auto()
    #: Waiting for the client's ``5`` (upgrade).
    UPGRADE = enum.auto()
    OPEN = enum.auto()
    #: A CLOSE packet is queued: it goes out at the end of the iteration, then this side's WebSocket CLOSE.
    CLOSING_SOON = enum.auto()
    #: This side's WebSocket CLOSE is sent.
    CLOSING = enum.auto()


class Pump(asyncio.Protocol):
    """One Engine.IO socket's WebSocket connection, both ways, as the connection's protocol: no task, no coroutine.

    The client's frames are read as they arrive (:class:`~iothub.frontend.websocket.FrameReader`)
    and each message handed to Socket.IO in order. A handler almost always
    finishes without waiting; one that waits (a registration asks the
    supervisor) finishes in a task, and the connection is not read until it has
    — so a socket's events are handled one after another, as they came.

    While it runs it stands in for the socket's queue: ``put``, ``put_nowait``
    and ``join`` are all that Engine.IO and the gateway use of a WebSocket
    socket's queue.
    """

    __slots__ = (
        "socket", "server", "transport", "guard", "counters", "reader", "deflater", "_loop", "_state", "_pending", "_held",
        "_busy", "_finishing", "_closer", "_on_message",
    )  # fmt: skip

    def __init__(self, socket: AsyncSocket, transport: asyncio.Transport, deflate: DeflateParameters | None, guard: Guard) -> None:
        self.socket = socket
        self.server = socket.server
        self.transport: asyncio.Transport | None = transport
        self.guard = guard
        #: Bytes in and out: frames as they cross the wire (headers included, before compression).
        self.counters = guard.counters
        self.reader = FrameReader(self.server.max_http_buffer_size, deflate)
        self.deflater = Deflater(deflate) if deflate is not None else None
        self._loop = asyncio.get_running_loop()
        self._on_message = self.server.handlers["message"]
        #: Messages read while a handler waited, or while the read gate was closed: at most one read's worth.
        self._held: list[Message] = []
        #: The handler that is waiting, if one is.
        self._busy: asyncio.Future[None] | None = None
        #: Frames waiting for the end of this loop iteration.
        self._pending: list[bytes] = []
        #: The end of the session once the connection is gone, when it waits (kept: a task nobody references
        #: may be collected).
        self._finishing: asyncio.Future[None] | None = None
        #: The close handshake's deadline, once this side sent its CLOSE.
        self._closer: asyncio.TimerHandle | None = None
        if socket.connected:  # a long-polling session upgrading: Engine.IO's probe exchange first
            socket.upgrading = True
            self._state = _State.PROBE
        else:
            socket.connected = socket.upgraded = True
            self._state = _State.OPEN
            self._take_over_queue()

    # ------------------------------------------------------------------ the client's side

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except WebSocketError as error:
            refusal_log.warning("socket %s: %s, closed", self.socket.sid, error.reason)
            self.counters.refusals["protocol_error"] += 1
            self._close(error.code)
            return
        if self._busy is not None or self._held or self.guard.gate.paused:
            self._held.extend(messages)
            self._hold()
            return
        for position, message in enumerate(messages):
            if self._busy is not None:  # the last one's handler waits: the rest waits for it
                self._held.extend(messages[position:])
                self._hold()
                return
            self._take(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        self._held.clear()
        self.guard.endings.add(self)

    def end(self) -> None:
        """End the session of a connection that is gone (:class:`Endings` calls it)."""
        try:
            self._finishing = run_eagerly(self._finish())
        except Exception:
            log.exception("socket %s: closing its session failed", self.socket.sid)

    def _hold(self) -> None:
        """Read no more until the handler that waits has finished and the read gate is open."""
        if self.transport is not None:
            self.transport.pause_reading()
        if self.guard.gate.paused:
            self.guard.gate.on_resume(self._release)

    def _release(self) -> None:
        """Handle what was held, in order, then read again."""
        held = self._held
        while held and self._busy is None and not self.guard.gate.paused and self.transport is not None:
            self._take(held.pop(0))
        if self._busy is None and self.transport is not None:
            if self.guard.gate.paused:
                self.guard.gate.on_resume(self._release)
            else:
                self.transport.resume_reading()

    def _take(self, message: Message) -> None:
        opcode = message.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self.counters.bytes_in += masked_frame_size(message.size)
            self._message(message.data)
        elif opcode is Opcode.PING and isinstance(message.data, bytes):
            self._write(frame(message.data, Opcode.PONG))
        elif opcode is Opcode.CLOSE:
            self._close(Close.NORMAL, answering=True)

    def _message(self, data: str | bytes) -> None:
        state, socket = self._state, self.socket
        if state is _State.OPEN:
            if data == "3":  # a pong: all Engine.IO's receive does with it (but log it) is to schedule the next ping
                socket.schedule_ping()
                return
            try:
                if data[:1] == "4":
                    handled = self._on_message(socket.sid, data[1:])
                elif isinstance(data, bytes):  # a binary message: an attachment, in order
                    handled = self._on_message(socket.sid, data)
                else:
                    handled = socket.receive(eio_packet.Packet(encoded_packet=data))
                self._busy = run_eagerly(handled)
            except Exception as exc:  # the libraries' parsers raise all sorts on malformed input
                self._protocol_error(exc)
                return
            if self._busy is not None:
                self._busy.add_done_callback(self._handled)
            elif socket.closed:
                self._close(Close.NORMAL)
        elif state is _State.PROBE and data == "2probe":
            self._write(frame(b"3probe"))
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            self._state = _State.UPGRADE
        elif state is _State.UPGRADE and data == "5":
            socket.upgraded, socket.upgrading = True, False
            self._state = _State.OPEN
            self._take_over_queue()
        elif state is _State.PROBE or state is _State.UPGRADE:
            socket.upgrading = False
            self._close(Close.PROTOCOL_ERROR)

    def _handled(self, handled: asyncio.Future[None]) -> None:
        self._busy = None
        error = None if handled.cancelled() else handled.exception()
        if error is not None:
            self._protocol_error(error)
        elif self.socket.closed:
            self._close(Close.NORMAL)
        else:
            self._release()

    def _protocol_error(self, exc: BaseException) -> None:
        self.counters.refusals["protocol_error"] += 1
        refusal_log.warning("socket %s: protocol error, closed: %s", self.socket.sid, _one_line(exc))
        self._close(Close.PROTOCOL_ERROR)

    async def _finish(self) -> None:
        """The connection is gone: the session ends with it."""
        try:
            await self.socket.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            self.server.sockets.pop(self.socket.sid, None)
        finally:
            self.socket.queue = GONE  # the socket and this pump referred to each other

    # ------------------------------------------------------------------ the socket's queue

    def put_nowait(self, packet: eio_packet.Packet | None) -> None:
        """Frame the packet now; the socket's frames are written together at the end of the iteration."""
        if packet is None or self._state is _State.CLOSING or self.transport is None:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        if self.deflater is None:
            self._pending.append(frame_of(packet))
        else:
            encoded = packet.encode()
            self.counters.bytes_out += frame_size(encoded)
            self._pending.append(frame_encoded(encoded, self.deflater))
        if packet.packet_type == eio_packet.CLOSE:
            self._state = _State.CLOSING_SOON

    async def put(self, packet: eio_packet.Packet | None) -> None:
        self.put_nowait(packet)

    async def join(self) -> None:
        """Everything put is on its way already."""

    def _take_over_queue(self) -> None:
        """Become the socket's queue; what Engine.IO queued before goes out first."""
        queued, self.socket.queue = self.socket.queue, self
        while not queued.empty():
            packet = queued.get_nowait()
            if packet is not None:
                self.put_nowait(packet)
        queued.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # a poll still held gets its answer

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        transport = self.transport
        if pending and transport is not None and not transport.is_closing():
            # What was still queued before this turn's frames: one turn's frames always go, however large.
            queued = transport.get_write_buffer_size()
            frames = b"".join(pending)
            if self.deflater is None:
                self.counters.bytes_out += len(frames)
            transport.write(frames)
            if queued > self.guard.max_queued_bytes:
                self.guard.too_slow(self.socket)
                transport.abort()
                return
        if self._state is _State.CLOSING_SOON:
            self._close(Close.NORMAL)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self, code: Close, *, answering: bool = False) -> None:
        """Send this side's CLOSE; the connection ends when the client answers it, or after CLOSE_TIMEOUT_S.

        ``answering``: the client sent its CLOSE first, and this is the answer: the connection ends now.
        """
        if self._state is _State.CLOSING and not answering:
            return
        if self._state is not _State.CLOSING:
            self._write(close_frame(code))
        self._state = _State.CLOSING
        self._held.clear()
        transport = self.transport
        if transport is None:
            return
        if answering:
            transport.close()
        elif self._closer is None:
            self._closer = self._loop.call_later(CLOSE_TIMEOUT_S, transport.close)


class _Gone:
    """The queue of a socket whose pump has finished: what is put there goes nowhere."""

    __slots__ = ()

    def put_nowait(self, packet: eio_packet.Packet | None) -> None:
        pass

    async def put(self, packet: eio_packet.Packet | None) -> None:
        pass

    async def join(self) -> None:
        pass


GONE = _Gone()


class Pinger:
    """An Engine.IO socket's pings and ping timeout on timer handles, instead of a task per ping.

    It replaces the socket's ``schedule_ping``, with the same meaning: the next
    ping goes out one ping interval after the client answered the last one. A
    ping not answered within the ping timeout closes the socket, and the
    transport with it: a CLOSE packet goes out (the pump then closes its
    WebSocket; a held poll returns it) before Engine.IO closes the session.
    """

    __slots__ = ("socket", "gate", "_loop", "_next", "_expiry", "_closer")

    #: Timers run their callbacks in a context; pings need none, so all share one.
    _context = contextvars.Context()

    def __init__(self, socket: AsyncSocket, gate: ReadGate) -> None:
        self.socket = socket
        self.gate = gate
        self._loop = asyncio.get_running_loop()
        self._next: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        #: The session's close after a ping timeout (kept: a task nobody references may be collected).
        self._closer: asyncio.Future[None] | None = None
        socket.schedule_ping = self.schedule

    def schedule(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.socket.last_ping:
            self.socket.last_ping = None
            self._next = self._loop.call_later(self.socket.server.ping_interval, self._ping, context=self._context)

    def stop(self) -> None:
        """The session is over: its timers go now, and with them what they kept alive; the socket lets go of
        this pinger (the two referred to each other)."""
        for timer in (self._next, self._expiry):
            if timer is not None:
                timer.cancel()
        self._next = self._expiry = None
        vars(self.socket).pop("schedule_ping", None)

    def _ping(self) -> None:
        socket = self.socket
        if not socket.closing and not socket.closed:
            socket.last_ping = time.time()
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
            self._expiry = self._loop.call_later(socket.server.ping_timeout, self._expire, context=self._context)

    def _expire(self) -> None:
        socket = self.socket
        self._expiry = None
        if self.gate.held_within(socket.server.ping_timeout):  # the server is not reading, or only just again: the
            self._ping()  # answer may be waiting unread. Ping again, so that the client, which times out a server
            return  # that stops pinging, stays too.
        if not socket.closing and not socket.closed:
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
            self._closer = asyncio.ensure_future(socket.close(wait=False, abort=True, reason=socket.server.reason.PING_TIMEOUT))


def run_eagerly(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | None:
    """Run ``coroutine`` now, up to its first wait: None when it finished, else the task that finishes it.

    Almost every event's handler finishes without waiting; a task for each
    would cost more than the handler (Python 3.12's eager tasks do the same).
    Its first step runs outside any task: it must not ask for the current task.
    An error of the first step is raised here.
    """
    try:
        waiting = coroutine.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_Resumed(coroutine, waiting))


class _Resumed:
    """A coroutine already started, awaitable from where it waits: its task's steps go on where the first left off."""

    __slots__ = ("coroutine", "waiting")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.coroutine = coroutine
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, waiting = self.coroutine, self.waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:  # the task's cancellation, or a future's error: the coroutine's to handle
                try:
                    waiting = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting = coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}".replace("\n", " ")
