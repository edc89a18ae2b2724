"""The WebSocket pump: Engine.IO over one aiohttp WebSocket, without a task per message or per socket.

python-engineio keeps the protocol's state (handshake, sessions, long-polling,
upgrades); this module replaces only its WebSocket loop, which costs a task and
a ``wait_for`` per received frame, another task per message, a writer task and
an ``asyncio.Queue`` per socket, and a ``write`` system call per frame.

Here the socket's one reader loop hands each message straight to Socket.IO.
Once the pump owns a socket it *is* that socket's queue: what Engine.IO or the
gateway puts on it is framed at once and the socket's frames go out in one
``write`` at the end of the loop iteration. The :class:`Pinger` sends every
socket's pings from a timer, not a task. A socket costs a few objects, not a
few tasks: that is what keeps thousands of idle devices cheap (README,
Performance).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import struct
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from aiohttp.web import WebSocketResponse
from engineio import packet as eio_packet
from engineio.async_server import AsyncServer
from engineio.async_socket import AsyncSocket

from ..core.errors import ErrorCode
from ..core.metrics import Counters
from ..core.protocol import ErrorEnvelope, encode
from ..core.ratelimit import RateLimitedLog
from .compat import WebSocketDriver, websocket_driver

log = logging.getLogger(__name__)
#: Protocol errors and cut-off sockets, one line each, at most a few a second whatever a client sends.
refusal_log = RateLimitedLog(log)

_TEXT = 0x81
_BINARY = 0x82


class FramedPacket(eio_packet.Packet):
    """An Engine.IO message that keeps its WebSocket frame, built once for every recipient."""

    _frame: bytes | None = None

    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = frame(self.encode())
        return self._frame


def frame(encoded: str | bytes) -> bytes:
    """A server-to-client WebSocket frame (final, unmasked, uncompressed)."""
    opcode, payload = (_TEXT, encoded.encode()) if isinstance(encoded, str) else (_BINARY, encoded)
    length = len(payload)
    if length < 126:
        return bytes((opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", opcode, 126, length) + payload
    return struct.pack("!BBQ", opcode, 127, length) + payload


def frame_size(encoded: str | bytes) -> int:
    """The bytes of :func:`frame`'s frame of ``encoded``, without building it."""
    size = len(encoded) if isinstance(encoded, bytes) or encoded.isascii() else len(encoded.encode())
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


def frame_of(packet: eio_packet.Packet) -> bytes:
    return packet.frame() if isinstance(packet, FramedPacket) else frame(packet.encode())



class ReadGate:
    """Whether the server reads from its sockets now.

    Closed while the write-behind is too far behind (``IOTHUB_MAX_BACKLOG_AGE_MS``):
    no socket is read — a WebSocket's pump waits, a polling POST waits — so the
    clients' TCP windows fill and they slow down, and what an acknowledgement
    promises stays within a bounded loss window. Ping timeouts wait too: a
    socket the server does not read cannot be judged silent.
    """

    __slots__ = ("paused", "resumed_at", "_opened")

    def __init__(self) -> None:
        self.paused = False
        #: When reading last resumed (``time.monotonic()``).
        self.resumed_at = float("-inf")
        self._opened: asyncio.Event | None = None

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

    def admit(self, request: web.Request) -> web.StreamResponse | None:
        """None when a new Engine.IO session may open; else the refusal to answer with."""
        ...

    def too_slow(self, socket: AsyncSocket) -> None:
        """The socket let more than ``max_queued_bytes`` pile up: count it, close it."""
        ...

    def forwarded(self, request: web.Request) -> Awaitable[web.StreamResponse] | None:
        """The answer, from the gateway that owns it, to a request naming a session another gateway owns
        (cluster mode); None for a session of this gateway, or a new one."""
        ...


def refusal(status: int, code: ErrorCode, message: str) -> web.Response:
    """PROTOCOL.md's envelope, for a request the transport refuses; the connection closes after it."""
    response = web.Response(body=encode(ErrorEnvelope(message, code)), status=status, content_type="application/json")
    response.force_close()
    return response


def websocket_class(compress: bool, guard: Guard) -> WebSocketDriver:
    """Engine.IO's WebSocket driver with this module's pump, compression on or off.

    The driver only opens the WebSocket and leaves the pump on the request: the
    pump runs in the route's handler (:func:`routes`) once Engine.IO's
    handshake frames have returned, so that they and their locals are not kept
    for the socket's life.
    """

    def open_pump(socket: AsyncSocket, ws: WebSocketResponse, request: web.Request) -> None:
        request[PUMP] = Pump(socket, ws, request, compress, guard)

    return websocket_driver(open_pump, compress)


def masked_frame_size(payload: int) -> int:
    """The bytes of a client's WebSocket frame (masked, unfragmented) that carries ``payload`` bytes."""
    return payload + (6 if payload < 126 else 8 if payload < 65536 else 14)


def routes(guard: Guard) -> Callable[[web.Application, AsyncServer, str], None]:
    """Engine.IO's routes, as python-engineio's ``create_route`` adds them, with the front end's guard.

    A request that would open a session is admitted first (per-address
    limits). A POST longer than the largest payload is answered 413 at once,
    before its body is read, and its connection closed. A GET that opened a
    WebSocket then runs its pump here.
    """

    def create_route(app: web.Application, server: AsyncServer, endpoint: str) -> None:
        async def get(request: web.Request) -> web.StreamResponse:
            if "sid" not in request.query:
                refused = guard.admit(request)
                if refused is not None:
                    return refused
            elif (elsewhere := guard.forwarded(request)) is not None:
                return await elsewhere
            response = await server.handle_request(request)
            pump = request.pop(PUMP, None)  # the request keeps no pump: the WebSocket refers to the request
            if pump is not None:
                await pump.run()
            elif isinstance(response, web.Response) and isinstance(response.body, bytes):
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


class BoundedQueue(asyncio.Queue[eio_packet.Packet | None]):
    """A polling socket's queue that counts the bytes it holds and calls for a cut-off past its limit.

    A long-polling client that stops polling would otherwise make the server
    keep every packet for it.
    """

    def __init__(self, socket: AsyncSocket, guard: Guard) -> None:
        super().__init__()
        #: Weak: the socket holds its queue, and a cycle would outlive the session (see :meth:`Pump._let_go`).
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


class Pump:
    """Moves one Engine.IO socket's packets over its WebSocket, both ways.

    While it runs it stands in for the socket's queue: ``put``, ``put_nowait``
    and ``join`` are all that Engine.IO and the gateway use of a WebSocket
    socket's queue.
    """

    __slots__ = (
        "socket", "server", "ws", "transport", "compress", "guard", "counters", "_loop", "_pending", "_closing", "_closer", "_sent", "_unsent",
    )  # fmt: skip

    def __init__(self, socket: AsyncSocket, ws: WebSocketResponse, request: Any, compress: bool, guard: Guard) -> None:
        self.socket = socket
        self.server = socket.server
        self.ws = ws
        self.transport = request.transport
        self.compress = compress
        self.guard = guard
        #: Bytes in and out: frames as they cross the wire (headers included, before compression).
        self.counters = guard.counters
        self._loop = asyncio.get_running_loop()
        #: Frames (or, compressed, texts) waiting for the end of this loop iteration.
        self._pending: list[Any] = []
        #: Whether a CLOSE packet was put: nothing goes out after it, and the WebSocket closes.
        self._closing = False
        #: The WebSocket's closing handshake, once started (kept: a task nobody references may be collected).
        self._closer: asyncio.Future[None] | None = None
        self._sent: asyncio.Future[None] | None = None
        #: Compressed: the bytes of texts handed to aiohttp's sends and not yet sent.
        self._unsent = 0

    async def run(self) -> None:
        socket = self.socket
        if socket.connected:
            if not await self._upgrade():
                return
        else:
            socket.connected = True
            socket.upgraded = True
        self._take_over_queue()
        try:
            await self._read()
        finally:
            try:
                self._flush()
                await socket.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
                self.server.sockets.pop(socket.sid, None)
                if self._sent is not None:
                    await self._sent
                await self.ws.close()
            finally:  # even cancelled (aiohttp cancels the handler of a connection that is lost)
                self._let_go()

    def _let_go(self) -> None:
        """Leave no reference cycle behind, so that reference counting frees the connection the moment it ends.

        A cycle would wait for a full collection, and one frozen (:mod:`iothub.heap`) would never be freed:
        the socket and its queue (this pump) refer to each other, and a close that found the peer gone keeps
        its error on the WebSocket, whose traceback's frames (and those of the cancellation it was raised
        during, as they unwind) refer to the WebSocket.
        """
        self.socket.queue = GONE
        error = self.ws.exception()
        if error is not None:  # kept bare: no traceback (its frames), no error it was raised while handling (theirs)
            error.__traceback__ = error.__context__ = error.__cause__ = None

    def _take_over_queue(self) -> None:
        """Become the socket's queue; what Engine.IO queued before goes out first."""
        queued, self.socket.queue = self.socket.queue, self
        while not queued.empty():
            packet = queued.get_nowait()
            if packet is not None:
                self.put_nowait(packet)
        queued.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # a poll still held gets its answer

    async def _upgrade(self) -> bool:
        """Engine.IO's probe exchange that moves a long-polling socket onto this WebSocket."""
        socket = self.socket
        socket.upgrading = True
        try:
            probe = await self.ws.receive()
            if probe.type != WSMsgType.TEXT or probe.data != "2probe":
                return False
            await self.ws.send_str("3probe")
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            upgrade = await self.ws.receive()
            if upgrade.type != WSMsgType.TEXT or upgrade.data != "5":
                return False
            socket.upgraded = True
            return True
        finally:
            socket.upgrading = False

    async def _read(self) -> None:
        """Hand each message to Socket.IO, in order; a frame that does not parse ends the socket."""
        socket = self.socket
        sid = socket.sid
        on_message = self.server.handlers["message"]
        limit = self.server.max_http_buffer_size
        receive = self.ws.receive
        gate = self.guard.gate
        counters = self.counters
        while True:
            if gate.paused:
                await gate.wait()
            message = await receive()
            if message.type is WSMsgType.TEXT:
                data = message.data
                size = len(data) if data.isascii() else len(data.encode())  # isascii is a flag: O(1)
            elif message.type is WSMsgType.BINARY:
                data = message.data
                size = len(data)
            else:
                return
            counters.bytes_in += masked_frame_size(size)
            if len(data) > limit:
                return
            try:
                if data[:1] == "4":
                    await on_message(sid, data[1:])
                elif isinstance(data, bytes):  # a binary message: an attachment, in order, not in a task of its own
                    await on_message(sid, data)
                else:
                    await socket.receive(eio_packet.Packet(encoded_packet=data))
            except Exception as exc:  # the libraries' parsers raise all sorts on malformed input
                counters.refusals["protocol_error"] += 1
                refusal_log.warning("socket %s: protocol error, closed: %s", sid, _one_line(exc))
                return
            if socket.closed:
                return

    # ------------------------------------------------------------------ the socket's queue

    def put_nowait(self, packet: eio_packet.Packet | None) -> None:
        """Frame the packet now; the socket's frames are written together at the end of the iteration."""
        if packet is None or self._closing:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(packet.encode() if self.compress else frame_of(packet))
        if packet.packet_type == eio_packet.CLOSE:
            self._closing = True

    async def put(self, packet: eio_packet.Packet | None) -> None:
        self.put_nowait(packet)

    async def join(self) -> None:
        """Everything put is on its way already."""

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        transport = self.transport
        if pending and transport is not None and not transport.is_closing():
            # What was still queued before this turn's frames: one turn's frames always go, however large.
            if self.compress:
                queued = self._unsent
                self._unsent += sum(map(len, pending))
                self.counters.bytes_out += sum(frame_size(text) for text in pending)
                self._sent = asyncio.ensure_future(self._send_compressed(self._sent, pending))
            else:
                queued = transport.get_write_buffer_size()
                frames = b"".join(pending)
                self.counters.bytes_out += len(frames)
                transport.write(frames)
            if queued > self.guard.max_queued_bytes:
                self.guard.too_slow(self.socket)
                transport.abort()
        if self._closing and self._closer is None:
            self._closer = asyncio.ensure_future(self._close_ws())

    async def _close_ws(self) -> None:
        await self.ws.close()

    async def _send_compressed(self, previous: asyncio.Future[None] | None, texts: list[Any]) -> None:
        """aiohttp compresses as it sends: one send after another, in order."""
        if previous is not None:
            await previous
        try:
            for text in texts:
                await (self.ws.send_str(text) if isinstance(text, str) else self.ws.send_bytes(text))
                self._unsent -= len(text)
        except (ConnectionError, RuntimeError):
            pass


#: Where the WebSocket driver leaves a socket's pump for the route's handler to run.
PUMP = web.RequestKey("iothub.pump", Pump)


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


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}".replace("\n", " ")
