"""How the supervisor knows a gateway is gone: a WebSocket to the gateway's private address, open while it lives.

A gateway's process that dies — SIGKILL, a crash, the OOM killer — has its
sockets closed by the kernel at once, so the supervisor learns of it within
moments and with no traffic at all while nothing happens. A gateway that hangs,
or a machine cut off from the network, closes nothing: for those the socket
carries a heartbeat, a ping every :data:`HEARTBEAT_S` answered within half of
it.

Not Ray calls: asking each gateway through Ray four times a second cost a
call each time (about a millisecond of CPU over the processes), Ray itself
reports a killed actor only after about 1.6 s, and the one-second timeout that
made the watch faster than Ray also dropped gateways that were only slow — on
a busy machine, every device of a live gateway announced offline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from .relay import SECRET_HEADER, from_peer

#: The watch WebSocket's path on every gateway.
WATCH_PATH = "/cluster/watch"
#: A gateway is dropped when a ping goes unanswered for half of this: a loop stalled that long, or a lost machine.
HEARTBEAT_S = 5.0


def watch_endpoint(secret: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of :data:`WATCH_PATH`: holds the supervisor's socket open, answering its pings, until either ends."""

    async def hold(request: web.Request) -> web.StreamResponse:
        if not from_peer(request, secret):
            raise web.HTTPNotFound()
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for _ in socket:
            pass  # nothing is sent but pings, which aiohttp answers
        return socket

    return hold


async def watch(session: aiohttp.ClientSession, address: str, secret: str, answered: Callable[[], None]) -> None:
    """Return once the gateway at ``address`` is gone: its socket closed, its heartbeat unanswered, or no answer at all.

    ``answered`` is called when the socket opens: the gateway is there.
    """
    try:
        async with session.ws_connect(address + WATCH_PATH, headers={SECRET_HEADER: secret}, heartbeat=HEARTBEAT_S) as socket:
            answered()
            async for _ in socket:
                pass
    except (aiohttp.ClientError, OSError, TimeoutError):
        pass
