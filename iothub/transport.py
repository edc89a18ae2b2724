"""The WebSocket pump: Engine.IO over one aiohttp WebSocket, without a task per message.

python-engineio keeps the protocol's state (handshake, sessions, ping/pong,
long-polling, upgrades); this module replaces only its WebSocket loop, which
costs a task and a ``wait_for`` per received frame, another task per message,
a ``wait_for`` per writer wake-up and one ``write`` system call per frame.
Here a socket has one reader loop that hands each message straight to
Socket.IO and one writer that drains the socket's queue and writes every
queued frame in a single call.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from aiohttp import WSMsgType
from aiohttp.web import WebSocketResponse
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket

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


def websocket_class(compress: bool) -> type[eio_aiohttp.WebSocket]:
    """Engine.IO's WebSocket driver with this module's pump, compression on or off."""

    class WebSocket(eio_aiohttp.WebSocket):
        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            request = environ["aiohttp.request"]
            ws = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=compress)
            await ws.prepare(request)
            self._sock = ws
            self.environ = environ
            await Pump(self.handler.__self__, ws, request, compress).run()
            return ws

    return WebSocket


class Pump:
    """Moves one Engine.IO socket's packets over its WebSocket, both ways."""

    def __init__(self, socket: AsyncSocket, ws: WebSocketResponse, request: Any, compress: bool) -> None:
        self.socket = socket
        self.server = socket.server
        self.ws = ws
        self.request = request
        self.compress = compress

    async def run(self) -> None:
        socket = self.socket
        if socket.connected:
            if not await self._upgrade():
                return
        else:
            socket.connected = True
            socket.upgraded = True
        writer = asyncio.ensure_future(self._write())
        try:
            await self._read()
        finally:
            socket.queue.put_nowait(None)
            await writer
            await socket.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

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
        while True:
            message = await receive()
            if message.type is WSMsgType.TEXT:
                data = message.data
            elif message.type is WSMsgType.BINARY:
                data = message.data
            else:
                return
            if len(data) > limit:
                return
            try:
                if data[:1] == "4":
                    await on_message(sid, data[1:])
                else:
                    await socket.receive(eio_packet.Packet(encoded_packet=data))
            except Exception:
                log.exception("socket %s: a message failed", sid)
            if socket.closed:
                return

    async def _write(self) -> None:
        queue = self.socket.queue
        transport = self.request.transport
        writer = self.request.writer
        while True:
            packets = [await queue.get()]
            while not queue.empty():
                packets.append(queue.get_nowait())
            for _ in packets:
                queue.task_done()
            closing = None in packets or self.socket.closed
            packets = [p for p in packets if p is not None]
            try:
                if self.compress:
                    for packet in packets:
                        encoded = packet.encode()
                        await (self.ws.send_str(encoded) if isinstance(encoded, str) else self.ws.send_bytes(encoded))
                elif packets and transport is not None and not transport.is_closing():
                    transport.write(b"".join(p.frame() if isinstance(p, FramedPacket) else frame(p.encode()) for p in packets))
                    await writer.drain()
            except (ConnectionError, RuntimeError):
                closing = True
            if closing or any(p.packet_type == eio_packet.CLOSE for p in packets):
                break
        await self.ws.close()
