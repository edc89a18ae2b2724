"""A lean Socket.IO v5 client over one WebSocket, for load generation.

It speaks the real protocol (Engine.IO v4 open, ping/pong; Socket.IO CONNECT
with ``auth``, EVENT, ACK) with msgspec and no per-event task, so that one
process can play thousands of devices and dashboards and the load generator is
not what a benchmark measures. Applications use ``python-socketio`` or
``socket.io-client``; this is for ``iothub bench`` and ``iothub simulate``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

EventHandler = Callable[[str, Any], None]
AckHandler = Callable[[Any], None]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class WireError(ConnectionError):
    """The server refused or broke the connection."""


class WireClient:
    """One Socket.IO connection on the default namespace, WebSocket transport only."""

    def __init__(self, session: aiohttp.ClientSession, url: str, on_event: EventHandler | None = None) -> None:
        self._session = session
        self._url = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        self._on_event = on_event
        self._acks: dict[int, AckHandler] = {}
        self._next_id = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        #: Sends under way, referenced until done (a task nobody references may be collected).
        self._sending: set[asyncio.Task[None]] = set()
        self._closer: asyncio.Task[None] | None = None
        self.sid: str | None = None
        self.closed = asyncio.Event()

    async def connect(self, auth: dict[str, Any] | None = None, timeout: float = 30) -> None:
        ws = await self._session.ws_connect(
            self._url + "/socket.io/?EIO=4&transport=websocket",
            autoping=False,
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
        )
        self._ws = ws
        opening = await asyncio.wait_for(ws.receive_str(), timeout)
        if not opening.startswith("0"):
            raise WireError(f"expected an Engine.IO open packet, got {opening[:40]!r}")
        await ws.send_str("40" + (_encode(auth).decode() if auth else ""))
        while True:
            text = await asyncio.wait_for(ws.receive_str(), timeout)
            if text == "2":
                await ws.send_str("3")
            elif text.startswith("40"):
                self.sid = _decode(text[2:])["sid"]
                break
            elif text.startswith("44"):
                raise WireError(f"connection refused: {text[2:]}")
        self._reader = asyncio.create_task(self._read())

    def emit(self, event: str, payload: Any, ack: AckHandler | None = None) -> None:
        """Send an event; ``ack`` (if given) is called with the acknowledgement's first argument."""
        body = _encode([event, payload]).decode()
        if ack is None:
            self._send("42" + body)
        else:
            ack_id = self._next_id
            self._next_id += 1
            self._acks[ack_id] = ack
            self._send(f"42{ack_id}{body}")

    async def call(self, event: str, payload: Any, timeout: float = 30) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answered(reply: Any) -> None:
            if not future.done():
                future.set_result(reply)

        self.emit(event, payload, answered)
        return await asyncio.wait_for(future, timeout)

    def _send(self, text: str) -> None:
        if self._ws is None or self._ws.closed:
            raise WireError("not connected")
        # send_str only buffers the frame; the coroutine completes without waiting on the peer.
        task = asyncio.ensure_future(self._ws.send_str(text))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        self.closed.set()

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                self._dispatch(message.data)
        finally:
            self.closed.set()

    def _dispatch(self, text: str) -> None:
        kind = text[:2]
        if kind == "42":
            if self._on_event is not None:
                event, *args = _decode(text[2:])
                self._on_event(event, args[0] if args else None)
        elif kind == "43":
            body = text.index("[")
            handler = self._acks.pop(int(text[2:body]), None)
            if handler is not None:
                args = _decode(text[body:])
                handler(args[0] if args else None)
        elif text == "2":
            self._send("3")
        elif (kind == "41" or text == "1") and self._closer is None:
            self._closer = asyncio.ensure_future(self.close())
