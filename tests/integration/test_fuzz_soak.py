"""Generated input and long use against a live server, bounded in count and time, loopback only.

The fuzz test sends hypothesis-generated Engine.IO / Socket.IO frames and REST requests; after each
batch a well-behaved client must still be served and the server's memory stay within a bound. The
soak test runs thousands of connect, register, telemetry, disconnect cycles and checks that memory
and open file descriptors come back near where they started.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iothub.loadgen.client import WireClient

from ..support.clients import TIMEOUT, connect, rest
from ..support.raw import closed_by_server, engine_socket, open_fds, rss_bytes
from ..support.server import RunningServer

MIB = 1024 * 1024
PROTOCOL_CHARACTERS = "0123456789[]{}\",:-/ abcdefghijklmnopqrstuvwxyz_\\\x1eé☃\x00"
EVENTS = ["telemetry_data", "register_device", "subscribe_user", "unsubscribe_user", "heartbeat", "nonsense"]

PREFIXES = ["0", "1", "2", "3", "4", "40", "41", "42", "43", "44", "45", "46", "4/x,"]
KEYS = ["imei", "data", "email", "userEmail", "timestamp", "x"]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)
text_frames = st.one_of(
    st.text(alphabet=PROTOCOL_CHARACTERS, max_size=60),
    st.builds(
        lambda kind, ack, body: f"{kind}{ack}{body}",
        st.sampled_from(PREFIXES),
        st.one_of(st.just(""), st.integers(0, 10**12).map(str)),
        st.text(alphabet=PROTOCOL_CHARACTERS, max_size=40),
    ),
    st.builds(lambda event, payload: "42" + json.dumps([event, payload]), st.sampled_from(EVENTS), json_values),
)
frames = st.lists(st.one_of(text_frames, st.binary(max_size=40)), min_size=1, max_size=6)
requests = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
    st.sampled_from(["/health", "/api/realtime/status", "/api/realtime/devices", "/api/realtime/broadcast",
                     "/api/realtime/device/123456789012345", "/api/realtime/user/a@b.co", "/api/telemetry/123456789012345",
                     "/api/alerts", "/nope", "/socket.io/"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz=&%0123456789", max_size=30),
    st.one_of(st.none(), st.binary(max_size=200)),
    st.sampled_from([None, "Bearer x", "Bearer", "Basic abc", "Bearer " + "a.b.c"]),
)


async def still_served(session: aiohttp.ClientSession, server: RunningServer) -> None:
    """A well-behaved client is still served: REST, and a socket's round trip."""
    assert (await rest(session, "GET", server.url + "/health")).status == 200
    async with connect(server.url) as client:
        assert (await client.call("subscribe_user", {"email": "fuzz@example.com"}))["success"] is True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=frames, calls=st.lists(requests, max_size=3))
def test_generated_frames_and_requests_leave_the_server_serving(server: RunningServer, batch: list[str | bytes], calls: list) -> None:
    baseline = rss_bytes(server.pid)

    async def run() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            ws = await engine_socket(session, server.url)
            for frame in batch:
                if ws.closed:
                    break
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            await closed_by_server(ws, timeout=0.05)
            await ws.close()
            for method, path, query, body, authorization in calls:
                headers = {"Authorization": authorization} if authorization else {}
                async with session.request(method, f"{server.url}{path}?{query}", data=body, headers=headers) as response:
                    await response.read()
                    assert response.status < 500, (method, path, response.status)
            await still_served(session, server)

    asyncio.run(run())
    assert rss_bytes(server.pid) < baseline + 64 * MIB
    assert "Traceback" not in server.log()


async def test_thousands_of_cycles_return_memory_and_descriptors_near_their_baseline(server_factory):
    server = server_factory(IOTHUB_STORE="memory")

    async def cycles(count: int, start: int) -> None:
        async with aiohttp.ClientSession() as session:
            for batch in range(start, start + count, 50):
                clients = [WireClient(session, server.url) for _ in range(50)]
                await asyncio.gather(*(client.connect() for client in clients))
                for offset, client in enumerate(clients):
                    imei = f"{900000000000000 + batch + offset:015d}"
                    await client.call("register_device", {"imei": imei, "userEmail": f"soak{offset % 5}@example.com"})
                    await client.call("telemetry_data", {"imei": imei, "data": {"speed": offset}})
                await asyncio.gather(*(client.close() for client in clients))

    await cycles(500, 0)  # warm-up: allocators, tables, caches
    await asyncio.sleep(0.5)
    rss, fds = rss_bytes(server.pid), open_fds(server.pid)
    await cycles(3000, 500)
    async with aiohttp.ClientSession() as session:
        await still_served(session, server)
    await asyncio.sleep(0.5)
    assert rss_bytes(server.pid) - rss < 16 * MIB
    assert open_fds(server.pid) <= fds + 3
