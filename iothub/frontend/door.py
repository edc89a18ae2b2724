"""The listening socket's first look at each connection: an Engine.IO WebSocket is kept, the rest goes to aiohttp.

A device's WebSocket is most of what this server holds, and it needs none of
aiohttp's per-connection machinery: a request handler, its task and its chain
of coroutines, a request object, a stream reader and a WebSocket response,
kept for the socket's whole life (11.8 of 17.5 KiB traced per connection, and
most of the garbage collector's work). So every accepted connection first
meets a :class:`Door`. It reads the first request's head; when that is a
WebSocket handshake for the Engine.IO path — a new session, or the upgrade of
one this server holds — it runs Engine.IO's handshake itself and hands the
connection to the transport's :class:`~iothub.frontend.transport.Pump`.
Anything else (REST, the pages, long-polling, a session another gateway owns)
is handed, with the bytes read so far, to aiohttp's request handler, as if it
had been there from the start.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from ..core.errors import ErrorCode
from ..core.protocol import ErrorEnvelope, encode
from .websocket import DeflateParameters, Handshake, handshake

log = logging.getLogger(__name__)

#: How long a connection may take to send its first request's head before it is closed unanswered.
HEAD_TIMEOUT_S = 10.0
#: The longest request head the door reads; a longer one is aiohttp's to refuse.
MAX_HEAD_BYTES = 128 * 1024
#: Where the door leaves itself in the handshake's environ, for the transport's WebSocket driver.
DOOR = "iothub.door"


def refusal(status: int, code: ErrorCode, message: str) -> web.Response:
    """PROTOCOL.md's envelope, for a request the front end refuses; the connection closes after it."""
    response = web.Response(body=encode(ErrorEnvelope(message, code)), status=status, content_type="application/json")
    response.force_close()
    return response


#: Makes the protocol a WebSocket connection is handed to, given its transport and the deflate agreed.
ProtocolFactory = Callable[[asyncio.Transport, DeflateParameters | None], asyncio.Protocol]


def hand_to(transport: asyncio.Transport, accepted: Handshake, make: ProtocolFactory) -> asyncio.Protocol:
    """Answer an accepted WebSocket handshake on ``transport`` and make the protocol ``make`` returns the connection's."""
    transport.write(accepted.response)
    protocol = make(transport, accepted.deflate)
    transport.set_protocol(protocol)
    return protocol


class Entrance:
    """What every door of one server shares: where to hand a connection, and how to open a WebSocket session."""

    def __init__(
        self,
        handlers: Callable[[], asyncio.Protocol],
        path: str,
        open_session: Callable[[dict[str, Any]], Awaitable[web.StreamResponse | None]],
        holds_session: Callable[[str], bool],
        compress: bool,
    ) -> None:
        #: aiohttp's protocol factory (the runner's ``web.Server``): a connection the door does not keep.
        self.handlers = handlers
        #: Engine.IO's path, ``/socket.io/``.
        self.path = path
        #: How the request line of a handshake for it starts.
        self.request_prefix = b"GET " + path.encode()
        self.open_session = open_session
        self.holds_session = holds_session
        self.compress = compress
        #: Sessions being opened (kept: a task nobody references may be collected).
        self.opening: set[asyncio.Task[None]] = set()

    def __call__(self) -> Door:
        return Door(self)

    async def listen(
        self, host: str | None = None, port: int = 0, *, sock: Any = None, ssl_context: ssl.SSLContext | None = None, reuse_port: bool = False
    ) -> asyncio.Server:
        """Accept connections on ``host:port`` (or the bound socket ``sock``) through this entrance."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            return await loop.create_server(self, sock=sock, ssl=ssl_context, backlog=1024)
        return await loop.create_server(self, host, port, ssl=ssl_context, backlog=1024, reuse_port=reuse_port or None)


class Door(asyncio.Protocol):
    """One new connection, until its first request's head says whose it is."""

    __slots__ = ("entrance", "transport", "peer", "_head", "_timer", "_handshake", "_lost")

    def __init__(self, entrance: Entrance) -> None:
        self.entrance = entrance
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._head = b""
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: Handshake | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, transport.close)

    def data_received(self, data: bytes) -> None:
        self._head += data
        if self._handshake is not None:  # a session is being opened: what the client sends meanwhile waits, within bounds
            if len(self._head) > MAX_HEAD_BYTES:
                self._close()
            return
        prefix = self.entrance.request_prefix
        if not self._head.startswith(prefix[: len(self._head)]):
            self._hand_over()
            return
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self._hand_over()
            return
        request = self._request(self._head[:end])
        if request is None:
            self._hand_over()
            return
        environ, headers = request
        self._head = self._head[end + 4 :]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self._handshake = handshake(headers, compress=self.entrance.compress)
        except ValueError as exc:
            self._answer(refusal(400, ErrorCode.INVALID_PAYLOAD, str(exc)))
            return
        task = asyncio.ensure_future(self._open(environ))
        self.entrance.opening.add(task)
        task.add_done_callback(self.entrance.opening.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _request(self, head: bytes) -> tuple[dict[str, Any], dict[str, str]] | None:
        """Engine.IO's WSGI-style environ and the headers (names in lower case), when the head asks for a
        WebSocket this server keeps; else None."""
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, _, rest = request_line.partition(" ")
        target, _, version = rest.partition(" ")
        path, _, query = target.partition("?")
        if version != "HTTP/1.1" or path != self.entrance.path:
            return None
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                return None  # aiohttp's parser answers what is malformed
            name = name.lower()
            headers[name] = f"{headers[name]},{value.strip()}" if name in headers else value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            return None
        sid = urllib.parse.parse_qs(query).get("sid")
        if sid is not None and not self.entrance.holds_session(sid[0]):
            return None  # another gateway's session, or nobody's: aiohttp's routes answer it
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "RAW_URI": target,
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": self.peer,
            DOOR: self,
        }
        for name, value in headers.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ, headers

    async def _open(self, environ: dict[str, Any]) -> None:
        try:
            response = await self.entrance.open_session(environ)
        except Exception:
            log.exception("opening a WebSocket session failed")
            response = refusal(500, ErrorCode.INTERNAL, "internal error")
        if response is not None:
            self._answer(response)

    def take(self, make: ProtocolFactory) -> None:
        """Answer the handshake and give the connection to the protocol ``make`` returns, with what it sent since."""
        assert self.transport is not None and self._handshake is not None
        transport, self.transport = self.transport, None
        if self._lost:
            make(transport, self._handshake.deflate).connection_lost(None)
            return
        protocol = hand_to(transport, self._handshake, make)
        if self._head:
            leftover, self._head = self._head, b""
            protocol.data_received(leftover)

    def _hand_over(self) -> None:
        """aiohttp's from here on, with everything read so far."""
        transport = self.transport
        if transport is None or self._lost:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        handler = self.entrance.handlers()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        head, self._head = self._head, b""
        self.transport = None
        handler.data_received(head)

    def _answer(self, response: web.StreamResponse) -> None:
        """A refusal, written as plain HTTP/1.1; the connection closes after it."""
        if self.transport is None or self._lost:
            return
        body = response.body if isinstance(response, web.Response) and isinstance(response.body, bytes) else b""
        lines = [f"HTTP/1.1 {response.status} {response.reason}"]
        lines += [f"{name}: {value}" for name, value in response.headers.items() if name.lower() not in ("content-length", "connection")]
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
