"""A request for a session another gateway owns, answered by that gateway.

The gateways share the public port (``SO_REUSEPORT``): the kernel gives each
new TCP connection to any of them, and a client's later requests — the
official client's polls, then its WebSocket upgrade — may land on another
gateway than the one holding its session. Each Engine.IO session id starts
with its gateway's index (``3.`` for ``gateway-3``); a request naming another
gateway's session is passed to that gateway's private address — the polls as
plain HTTP, the upgrade as a WebSocket relayed frame by frame, each side
waiting for the other to take its frames — and its answer returned as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

#: Headers about one hop of a connection, never passed on.
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host")
)
#: The WebSocket handshake's own headers: the relay makes its own handshake with the owner.
WEBSOCKET_HANDSHAKE = frozenset(("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept"))
#: Engine.IO's answer to a session nobody holds (the client then starts a new one).
UNKNOWN_SESSION = b'{"code":1,"message":"Session ID unknown"}'


def session_prefix(name: str) -> str:
    """The start of every session id of gateway ``name`` (``gateway-3`` → ``3.``)."""
    return name.rpartition("-")[2] + "."


class Forwarder:
    """The front end's hook for other gateways' sessions (:attr:`~iothub.frontend.gateway.Gateway.elsewhere`)."""

    def __init__(self, name: str, *, max_message_bytes: int, poll_timeout: float) -> None:
        self.prefix = session_prefix(name)
        self.max_message_bytes = max_message_bytes
        self.poll_timeout = poll_timeout
        #: Session prefix → the owner's private address (``http://host:port``).
        self._owners: dict[str, str] = {}
        self._client: aiohttp.ClientSession | None = None
        #: Requests forwarded, for tests and operators.
        self.forwarded = 0

    def update(self, addresses: Mapping[str, str]) -> None:
        """The live gateways' private addresses, by name (pushed by the supervisor)."""
        self._owners = {session_prefix(name): address for name, address in addresses.items()}

    def __call__(self, request: web.Request) -> Awaitable[web.StreamResponse] | None:
        sid = request.query.get("sid", "")
        prefix = sid[: sid.find(".") + 1]
        if not prefix or prefix == self.prefix:
            return None
        address = self._owners.get(prefix)
        if address is None:
            return None  # its gateway is gone: Engine.IO here answers "Session ID unknown"
        self.forwarded += 1
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return self._relay(request, address)
        return self._proxy(request, address)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            # Bodies as they come: Engine.IO may have gzipped a poll's answer, and the client gets it so.
            self._client = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_read=self.poll_timeout))
        return self._client

    async def _proxy(self, request: web.Request, address: str) -> web.StreamResponse:
        headers = _passed_on(request.headers)
        body = request.content if request.body_exists else None
        try:
            async with self._session().request(request.method, address + request.rel_url.path_qs, headers=headers, data=body) as upstream:
                payload = await upstream.read()
                return web.Response(status=upstream.status, body=payload, headers=_passed_on(upstream.headers, drop=("content-length",)))
        except (TimeoutError, aiohttp.ClientError):
            return web.Response(status=400, body=UNKNOWN_SESSION, content_type="application/json")

    async def _relay(self, request: web.Request, address: str) -> web.StreamResponse:
        headers = {name: value for name, value in _passed_on(request.headers).items() if name.lower() not in WEBSOCKET_HANDSHAKE}
        try:
            upstream = await self._session().ws_connect(
                address + request.rel_url.path_qs, headers=headers, max_msg_size=self.max_message_bytes, autoping=True
            )
        except (TimeoutError, aiohttp.ClientError):
            return web.Response(status=400, body=UNKNOWN_SESSION, content_type="application/json")
        client = web.WebSocketResponse(max_msg_size=self.max_message_bytes)
        await client.prepare(request)
        async with upstream:
            pipes = [asyncio.ensure_future(_pipe(client, upstream)), asyncio.ensure_future(_pipe(upstream, client))]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        await client.close()
        return client


async def _pipe(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse
) -> None:
    """Frames from one side to the other until either closes; each send waits until the sink takes it."""
    async for message in source:
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:
            break


def _passed_on(headers: Mapping[str, str], drop: tuple[str, ...] = ()) -> CIMultiDict[str]:
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP and name.lower() not in drop)
