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
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.web import WebSocketResponse
from engineio import packet as eio_packet
from engineio.async_server import AsyncServer
from engineio.async_socket import AsyncSocket

from ..core.metrics import Counters
from .compat import WebSocketDriver, websocket_driver

log = logging.getLogger(__name__)

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


#: Where the WebSocket driver leaves a socket's pump for the route's handler to run.
PUMP = "iothub.pump"


def websocket_class(compress: bool, counters: Counters) -> WebSocketDriver:
    """Engine.IO's WebSocket driver with this module's pump, compression on or off, counting bytes in ``counters``.

    The driver only opens the WebSocket and leaves the pump on the request: the
    pump runs in the route's handler (:func:`create_route`) once Engine.IO's
    handshake frames have returned, so that they and their locals are not kept
    for the socket's life.
    """

    def open_pump(socket: AsyncSocket, ws: WebSocketResponse, request: web.Request) -> None:
        request[PUMP] = Pump(socket, ws, request, compress, counters)

    return websocket_driver(open_pump, compress)


def masked_frame_size(payload: int) -> int:
    """The bytes of a client's WebSocket frame (masked, unfragmented) that carries ``payload`` bytes."""
    return payload + (6 if payload < 126 else 8 if payload < 65536 else 14)


def route_creator(counters: Counters) -> Callable[[web.Application, AsyncServer, str], None]:
    """Engine.IO's routes, counting long-polling bodies in ``counters``; a GET that opened a WebSocket then runs its pump."""

    def create_route(app: web.Application, engineio_server: AsyncServer, engineio_endpoint: str) -> None:
        async def get(request: web.Request) -> web.StreamResponse:
            response = await engineio_server.handle_request(request)
            pump = request.get(PUMP)
            if pump is not None:
                await pump.run()
            elif isinstance(response, web.Response) and isinstance(response.body, bytes):
                counters.bytes_out += len(response.body)
            return response

        async def post(request: web.Request) -> web.StreamResponse:
            counters.bytes_in += request.content_length or 0
            response = await engineio_server.handle_request(request)
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                counters.bytes_out += len(response.body)
            return response

        app.router.add_get(engineio_endpoint, get)
        app.router.add_post(engineio_endpoint, post)
        app.router.add_route("OPTIONS", engineio_endpoint, engineio_server.handle_request)

    return create_route


class Pump:
    """Moves one Engine.IO socket's packets over its WebSocket, both ways.

    While it runs it stands in for the socket's queue: ``put``, ``put_nowait``
    and ``join`` are all that Engine.IO and the gateway use of a WebSocket
    socket's queue.
    """

    __slots__ = ("socket", "server", "ws", "transport", "compress", "counters", "_loop", "_pending", "_closing", "_closer", "_sent")

    def __init__(self, socket: AsyncSocket, ws: WebSocketResponse, request: Any, compress: bool, counters: Counters) -> None:
        self.socket = socket
        self.server = socket.server
        self.ws = ws
        self.transport = request.transport
        self.compress = compress
        #: Bytes in and out: frames as they cross the wire (headers included, before compression).
        self.counters = counters
        self._loop = asyncio.get_running_loop()
        #: Frames (or, compressed, texts) waiting for the end of this loop iteration.
        self._pending: list[Any] = []
        #: Whether a CLOSE packet was put: nothing goes out after it, and the WebSocket closes.
        self._closing = False
        #: The WebSocket's closing handshake, once started (kept: a task nobody references may be collected).
        self._closer: asyncio.Future[None] | None = None
        self._sent: asyncio.Future[None] | None = None

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
            self._flush()
            await socket.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            self.server.sockets.pop(socket.sid, None)
            if self._sent is not None:
                await self._sent
            await self.ws.close()

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
        socket = self.socket
        sid = socket.sid
        on_message = self.server.handlers["message"]
        limit = self.server.max_http_buffer_size
        receive = self.ws.receive
        counters = self.counters
        while True:
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
                else:
                    await socket.receive(eio_packet.Packet(encoded_packet=data))
            except Exception:
                log.exception("socket %s: a message failed", sid, extra={"socket": sid})
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
            if self.compress:
                self.counters.bytes_out += sum(frame_size(text) for text in pending)
                self._sent = asyncio.ensure_future(self._send_compressed(self._sent, pending))
            else:
                frames = b"".join(pending)
                self.counters.bytes_out += len(frames)
                transport.write(frames)
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
        except (ConnectionError, RuntimeError):
            pass


class Pinger:
    """An Engine.IO socket's pings and ping timeout on timer handles, instead of a task per ping.

    It replaces the socket's ``schedule_ping``, with the same meaning: the next
    ping goes out one ping interval after the client answered the last one. A
    ping not answered within the ping timeout closes the socket, and the
    transport with it: a CLOSE packet goes out (the pump then closes its
    WebSocket; a held poll returns it) before Engine.IO closes the session.
    """

    __slots__ = ("socket", "_loop", "_expiry", "_closer")

    #: Timers run their callbacks in a context; pings need none, so all share one.
    _context = contextvars.Context()

    def __init__(self, socket: AsyncSocket) -> None:
        self.socket = socket
        self._loop = asyncio.get_running_loop()
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
            self._loop.call_later(self.socket.server.ping_interval, self._ping, context=self._context)

    def _ping(self) -> None:
        socket = self.socket
        if not socket.closing and not socket.closed:
            socket.last_ping = time.time()
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
            self._expiry = self._loop.call_later(socket.server.ping_timeout, self._expire, context=self._context)

    def _expire(self) -> None:
        socket = self.socket
        self._expiry = None
        if not socket.closing and not socket.closed:
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
            self._closer = asyncio.ensure_future(socket.close(wait=False, abort=True, reason=socket.server.reason.PING_TIMEOUT))
