"""Telemetry across gateways: one WebSocket from each gateway to each other, batches of packets over it.

The data plane hands a packet for another gateway's dashboards to
:class:`Crossings`, which keeps an outbox (:class:`~.batches.Batcher`) per
other gateway: what gathered since the last batch (batches start at least
2 ms apart) goes as one binary frame (msgpack: a list of ``(e-mail, event,
payload)``) on that gateway's relay WebSocket, at its private address; the receiver queues each packet to its sockets and
answers with an empty frame. One batch is in flight per peer, so packets keep
their order and a slow peer holds its own outbox back (bounded: past its limit,
packets are dropped and counted) and no one else's.

Not Ray calls: a Ray actor call costs about a millisecond of CPU over the
processes it crosses (measured: two gateways relaying 1,000 packets a second
in calls of one or two packets took a whole core), a frame on a socket that
stays open some tens of microseconds. The supervisor is never on this path.

The relay endpoint answers only a request carrying the cluster's secret,
which the driver makes at start and gives each gateway: the private address is
a front end like the public one, and no client may relay into it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection

import aiohttp
import msgspec
from aiohttp import web

from ..core.commands import Crossing
from ..core.dataplane import DataPlane
from ..core.metrics import Counters
from .batches import Batcher

#: The relay WebSocket's path on every gateway, and the header that carries the cluster's secret.
RELAY_PATH = "/cluster/relay"
SECRET_HEADER = "X-IoTHub-Cluster-Secret"
#: The answer to one batch: it has been queued to the receiving gateway's sockets.
TAKEN = b""
#: How far apart one gateway's batches to another start: a frame and its answer cost some tens of
#: microseconds, so a steady stream goes in batches of many packets for at most this much latency.
RELAY_INTERVAL_S = 0.002

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[tuple[str, str, bytes]]).decode


class PeerLink:
    """The relay WebSocket to one other gateway, opened on first use and again after a failure."""

    def __init__(self, address: str, secret: str, session: Callable[[], aiohttp.ClientSession]) -> None:
        self.address = address
        self.secret = secret
        self._session = session
        self._socket: aiohttp.ClientWebSocketResponse | None = None

    async def send(self, batch: list[Crossing]) -> None:
        """Send one batch and wait for the peer to have taken it (one batch in flight: the Batcher's)."""
        try:
            socket = self._socket
            if socket is None or socket.closed:
                socket = self._socket = await self._session().ws_connect(
                    self.address + RELAY_PATH, headers={SECRET_HEADER: self.secret}, max_msg_size=0
                )
            await socket.send_bytes(_encode(batch))
            answer = await socket.receive()
            if answer.type is not aiohttp.WSMsgType.BINARY:
                raise ConnectionError(f"the relay to {self.address} ended: {answer.type.name}")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()


class Crossings:
    """A gateway's :class:`~iothub.core.dataplane.Relay`: for each other gateway, the packets of its
    dashboards, batched per loop turn."""

    def __init__(self, counters: Counters, secret: str) -> None:
        self.counters = counters
        self.secret = secret
        #: The other gateways' private addresses, by name (pushed by the supervisor).
        self.addresses: dict[str, str] = {}
        self._links: dict[str, PeerLink] = {}
        self._out: dict[str, Batcher[Crossing]] = {}
        self._client: aiohttp.ClientSession | None = None

    def relay(self, gateways: Collection[str], packet: Crossing) -> None:
        relayed = self.counters.relayed
        for name in gateways:
            out = self._out.get(name)
            if out is None:
                out = self._out[name] = Batcher(self._sender(name), name=name, kind="relayed packets", interval=RELAY_INTERVAL_S)
            relayed["packets_out" if out.push(packet) else "packets_dropped"] += 1

    def _sender(self, name: str) -> Callable[[list[Crossing]], Awaitable[object]]:
        async def send(batch: list[Crossing]) -> None:
            address = self.addresses.get(name)
            if address is None:  # gone from the cluster since the routes named it: its dashboards went with it
                self.counters.relayed["packets_dropped"] += len(batch)
                return
            link = self._links.get(name)
            if link is None or link.address != address:  # a new incarnation listens elsewhere
                if link is not None:
                    await link.close()
                link = self._links[name] = PeerLink(address, self.secret, self._session)
            self.counters.relayed["batches_out"] += 1
            await link.send(batch)

        return send

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession()
        return self._client

    async def delivered(self) -> None:
        """Once everything relayed so far has been taken by the other gateways."""
        for out in tuple(self._out.values()):
            await out.delivered()

    async def close(self) -> None:
        await self.delivered()
        for link in self._links.values():
            await link.close()
        if self._client is not None:
            await self._client.close()


def from_peer(request: web.Request, secret: str) -> bool:
    """Whether ``request`` carries the cluster's secret: it comes from another of the cluster's actors."""
    return hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), secret.encode())


def relay_endpoint(plane: DataPlane, secret: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of :data:`RELAY_PATH`: batches from another gateway, queued to this one's sockets."""

    async def take(request: web.Request) -> web.StreamResponse:
        if not from_peer(request, secret):
            raise web.HTTPNotFound()
        socket = web.WebSocketResponse(max_msg_size=0)
        await socket.prepare(request)
        async for message in socket:
            if message.type is not aiohttp.WSMsgType.BINARY:
                break
            packets = _decode(message.data)
            plane.counters.relayed["packets_in"] += len(packets)
            plane.receive(packets)
            await socket.send_bytes(TAKEN)
        return socket

    return take
