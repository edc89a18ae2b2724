"""A connection that ends leaves no reference cycle behind: reference counting frees all of it at once.

This is what makes ``iothub serve``'s paced collector safe (``iothub/heap.py``): it freezes what outlives a
full collection, and a cycle among frozen objects would never be freed. Each test ends connections one way,
with the collector off, then asks it what only it could have freed, and looks there for the server's
objects (the test's own clients may leave cycles of theirs: they are not the server's).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from iothub.loadgen.client import WireClient

from ..support.clients import connect

#: Where the server's side of a connection lives: iothub, Engine.IO's server socket, aiohttp's server.
SERVER_MODULES = (
    "iothub.app", "iothub.core", "iothub.frontend", "iothub.http", "engineio.async_socket", "engineio.async_server", "socketio.async_server",
    "aiohttp.web",
)  # fmt: skip


@asynccontextmanager
async def collector_off(served: Any) -> AsyncIterator[list[str]]:
    """The collector off while the block runs; then, once the server has let go of every socket, the server-side
    types among the cyclic garbage the block left."""
    found: list[str] = []
    gc.collect()
    gc.disable()
    try:
        yield found
        await _sockets_gone(served)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {f"{type(item).__module__}.{type(item).__qualname__}" for item in gc.garbage}
        found.extend(sorted(kind for kind in kinds if kind.startswith(SERVER_MODULES)))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def _sockets_gone(served: Any) -> None:
    for _ in range(200):
        if not served.hub.gateway.eio.sockets and not served.hub.gateway._engine_sessions:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # aiohttp's handler of each closed connection returns


async def ended_by_the_client(url: str, imei: str, email: str) -> None:
    async with connect(url) as device:
        await device.register(imei, email)
        await device.telemetry(imei, {"speed": 1, "batteryVoltage": 11.0})


async def ended_by_a_closing_frame_and_a_dropped_connection(url: str, imei: str, email: str) -> None:
    """The load generator's way: its reader stops, it sends a closing frame and drops the connection."""
    async with aiohttp.ClientSession() as session:
        client = WireClient(session, url)
        await client.connect()
        await client.call("register_device", {"imei": imei, "userEmail": email})
        await client.close()


async def ended_by_a_vanished_client(url: str, imei: str, email: str) -> None:
    """No closing frame at all: the client's connections are just closed."""
    session = aiohttp.ClientSession()
    client = WireClient(session, url)
    await client.connect()
    await client.call("register_device", {"imei": imei, "userEmail": email})
    await session.close()


async def ended_on_long_polling(url: str, imei: str, email: str) -> None:
    async with connect(url, transports=["polling"]) as device:
        await device.register(imei, email)


async def upgraded_then_ended(url: str, imei: str, email: str) -> None:
    async with connect(url, transports=["polling", "websocket"]) as device:
        await device.register(imei, email)


ENDINGS: list[Callable[[str, str, str], Awaitable[None]]] = [
    ended_by_the_client,
    ended_by_a_closing_frame_and_a_dropped_connection,
    ended_by_a_vanished_client,
    ended_on_long_polling,
    upgraded_then_ended,
]


@pytest.mark.parametrize("end", ENDINGS, ids=[end.__name__ for end in ENDINGS])
async def test_an_ended_connection_leaves_no_cycle_on_the_server(in_process, imei, email, end) -> None:
    served = await in_process()
    async with collector_off(served) as cycles:
        for _ in range(3):
            await end(served.url, imei(), email())
    assert cycles == [], cycles


async def test_a_client_dropped_for_not_answering_pings_leaves_no_cycle_on_the_server(in_process) -> None:
    served = await in_process(IOTHUB_PING_INTERVAL_MS="100", IOTHUB_PING_TIMEOUT_MS="100")
    async with collector_off(served) as cycles, aiohttp.ClientSession() as session:
        for _ in range(3):
            ws = await session.ws_connect(served.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
            assert (await ws.receive_str(timeout=5)).startswith("0{")
            await ws.send_str("40")
            while not ws.closed and (await ws.receive(timeout=5)).type is not aiohttp.WSMsgType.CLOSE:
                pass  # pings, never answered, until the server closes
            await ws.close()
    assert served.hub.gateway.counters.disconnects["ping_timeout"] == 3
    assert cycles == [], cycles


async def test_rest_requests_answered_or_refused_leave_no_cycle_on_the_server(in_process) -> None:
    served = await in_process()
    async with collector_off(served) as cycles, aiohttp.ClientSession() as session:
        for path, headers in [("/health", {}), ("/metrics", {}), ("/api/realtime/devices", {}), ("/api/realtime/devices", served.admin_headers)]:
            async with session.get(served.url + path, headers=headers) as response:
                await response.read()
                assert response.status in (200, 401)
        async with session.post(served.url + "/api/realtime/broadcast", json={"nope": 1}, headers=served.admin_headers) as response:
            assert response.status == 400
    assert cycles == [], cycles
