"""Clients that speak the protocol by hand, as an attacker or a broken client does: raw Engine.IO
frames over aiohttp's WebSocket, a WebSocket over a bare TCP socket that stops reading, raw HTTP,
and the server process's memory and file descriptors from /proc."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from pathlib import Path
from typing import Any

import aiohttp

from .clients import TIMEOUT


async def engine_socket(session: aiohttp.ClientSession, url: str, *, connect: bool = True, **options: Any) -> aiohttp.ClientWebSocketResponse:
    """A raw Engine.IO WebSocket session; with ``connect``, Socket.IO's CONNECT sent and answered."""
    ws = await session.ws_connect(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket", autoping=False, **options)
    opening = await asyncio.wait_for(ws.receive_str(), TIMEOUT)
    assert opening.startswith("0"), opening
    if connect:
        await ws.send_str("40")
        while True:
            text = await asyncio.wait_for(ws.receive_str(), TIMEOUT)
            if text.startswith("40"):
                break
            if text == "2":
                await ws.send_str("3")
    return ws


async def polling_session(session: aiohttp.ClientSession, url: str, *, connect: bool = True) -> str:
    """A raw long-polling Engine.IO session's URL; with ``connect``, Socket.IO's CONNECT sent and answered."""
    base = url + "/socket.io/?EIO=4&transport=polling"
    async with session.get(base) as response:
        sid = json.loads((await response.text())[1:])["sid"]
    polling = f"{base}&sid={sid}"
    if connect:
        async with session.post(polling, data="40") as response:
            assert response.status == 200
        async with session.get(polling) as response:
            assert (await response.text()).startswith("40")
    return polling


async def closed_by_server(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT) -> bool:
    """Read (answering pings) until the server closes the WebSocket; False if it is still open after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await ws.receive()
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return True
                if message.type == aiohttp.WSMsgType.TEXT and message.data == "1":  # Engine.IO CLOSE
                    return True
                if message.type == aiohttp.WSMsgType.TEXT and message.data == "2":
                    await ws.send_str("3")
    except TimeoutError:
        return False


async def next_event(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT) -> Any:
    """The next Socket.IO EVENT or ACK's arguments (pings answered on the way)."""
    async with asyncio.timeout(timeout):
        while True:
            text = await ws.receive_str()
            if text == "2":
                await ws.send_str("3")
            elif text.startswith(("42", "43")):
                return json.loads(text[text.index("["):])


def masked_frame(payload: bytes, opcode: int = 0x1, *, final: bool = True, rsv: int = 0) -> bytes:
    """A WebSocket frame as a client must send it: masked."""
    mask = os.urandom(4)
    first = (0x80 if final else 0) | rsv | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def websocket_head(host: str, port: int, query: str = "EIO=4&transport=websocket", **headers: str) -> str:
    """An Engine.IO WebSocket handshake's head; ``headers`` (underscores for dashes) replace or add to the usual ones."""
    fields = {
        "Host": f"{host}:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **{name.replace("_", "-"): value for name, value in headers.items()},
    }
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"GET /socket.io/?{query} HTTP/1.1\r\n{lines}\r\n"


class StalledWebSocket:
    """A WebSocket client over a bare TCP socket that connects, subscribes, and then never reads again."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> StalledWebSocket:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(websocket_head(host, port).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, text: str) -> None:
        """One text frame."""
        self.writer.write(masked_frame(text.encode()))

    async def read_some(self) -> bytes:
        """Read what has arrived so far (the server's opening frames)."""
        return await asyncio.wait_for(self.reader.read(65536), TIMEOUT)

    def close(self) -> None:
        self.writer.close()


async def raw_http(host: str, port: int, head: str, timeout: float = TIMEOUT) -> tuple[bytes, bool]:
    """Send a request's head (and no body); return what the server answered and whether it then closed the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = next((int(line.split(b":")[1]) for line in answer.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
        answer += await asyncio.wait_for(reader.readexactly(length), timeout)
        try:
            closed = await asyncio.wait_for(reader.read(1), timeout) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
        return answer, closed
    finally:
        writer.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
