"""Persistence with real server processes on a real SQLite file, and on a MongoDB server.

Restart (SIGTERM, start again: the registry and the last telemetry are
there) and crash (durable acknowledgements, SIGKILL mid-stream: every
acknowledged message is there) run on both stores: SQLite, and MongoDB
through MONGODB_URI as an operator sets it, on the session's server
(SecantusDB, or IOTHUB_TEST_MONGODB_URI's; the test ids say which). Clean shutdown (SIGTERM or SIGINT: exit 0,
the buffer written) and an outage (the file locked by another process: the
server keeps serving, says DEGRADED, refuses telemetry once its buffer is full
and writes its backlog when the lock goes).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from ..support.clients import connect
from ..support.mongodb import MONGO
from ..support.server import RunningServer
from ..support.sqlite import locked
from ..support.stores import StoreMaker

T0 = 1_700_000_000_000
TIMEOUT = 10.0
#: Well under the 45 s a held long-poll would keep a shutdown waiting.
SHUTDOWN_BOUND_S = 15.0


@pytest.fixture(params=["sqlite", MONGO])
async def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The settings of servers that share one store: a SQLite file, or a fresh database named by MONGODB_URI alone."""
    if request.param == "sqlite":
        yield {"IOTHUB_DB_PATH": str(tmp_path / "iothub.db")}
        return
    maker = StoreMaker(MONGO, tmp_path, request.getfixturevalue("mongodb_uri"))
    yield {"MONGODB_URI": maker.uri}
    await maker.drop()


def started_with_its_store(server: RunningServer, store_env: Mapping[str, str]) -> bool:
    """The startup line names the store the settings ask for (MONGODB_URI alone means MongoDB)."""
    return f"store {'mongodb' if 'MONGODB_URI' in store_env else 'sqlite'}," in server.log()


@asynccontextmanager
async def device_socket(server: RunningServer) -> AsyncIterator[socketio.AsyncClient]:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(server.url, transports=["websocket"], wait_timeout=TIMEOUT)
    try:
        yield client
    finally:
        await client.disconnect()


async def call(client: socketio.AsyncClient, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await client.call(event, payload, timeout=TIMEOUT)


def get_json(server: RunningServer, path: str) -> dict[str, Any]:
    request = urllib.request.Request(server.url + path, headers=server.admin_headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def stored_timestamps(db_path: Path, imei: str) -> list[int]:
    """What the file holds, read by another process as a user would (WAL recovered on open)."""
    with sqlite3.connect(db_path) as connection:
        return [t for (t,) in connection.execute("SELECT timestamp FROM telemetry WHERE imei = ? ORDER BY timestamp", (imei,))]


async def eventually(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def held_poll(server: RunningServer) -> AsyncIterator[asyncio.Future[tuple[int, str]]]:
    """A raw Engine.IO polling session left as a client leaves it when it disconnects: a GET
    pending, then a CLOSE packet POSTed. The server holds that GET; yields the future of its (status, body)."""
    sent = asyncio.Event()

    async def headers_sent(*_: Any) -> None:
        sent.set()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(headers_sent)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), trace_configs=[tracing]) as session:

        async def request(method: str, url: str, body: str | None = None) -> tuple[int, str]:
            async with session.request(method, url, data=body) as response:
                return response.status, await response.text()

        base = server.url + "/socket.io/?EIO=4&transport=polling"
        url = f"{base}&sid={json.loads((await request('GET', base))[1][1:])['sid']}"
        assert await request("POST", url, "40") == (200, "OK")
        assert (await request("GET", url))[1].startswith("40")  # connected
        sent.clear()
        held = asyncio.ensure_future(request("GET", url))
        await asyncio.wait_for(sent.wait(), TIMEOUT)  # the poll reaches the server before the close
        assert await request("POST", url, "1") == (200, "OK")
        try:
            yield held
        finally:
            held.cancel()


# --------------------------------------------------------------------------- restart


async def test_a_restart_keeps_the_registry_and_the_last_telemetry(
    server_factory: Callable[..., RunningServer], store_env: dict[str, str], imei: Callable[[], str], email: Callable[[], str]
) -> None:
    owner, other = email(), email()
    reporting, silent, foreign = imei(), imei(), imei()
    first = server_factory(**store_env)
    assert started_with_its_store(first, store_env)
    async with device_socket(first) as device:
        await call(device, "register_device", {"imei": reporting, "userEmail": owner})
        await call(device, "register_device", {"imei": silent, "userEmail": owner})
        await call(device, "register_device", {"imei": foreign, "userEmail": other})
        for n in range(3):
            await call(device, "telemetry_data", {"imei": reporting, "timestamp": T0 + n, "data": {"speed": n, "note": "é"}})
        before = await call(device, "subscribe_user", {"email": owner})
    assert first.stop(signal.SIGTERM) == 0

    second = server_factory(**store_env)
    async with device_socket(second) as dashboard:
        after = await call(dashboard, "subscribe_user", {"email": owner})
        await call(dashboard, "register_device", {"imei": silent})  # no userEmail: the owner stays
        assert [d["userEmail"] for d in get_json(second, "/api/realtime/devices")["data"]] == [owner]

    assert before["deviceCount"] == after["deviceCount"] == 2
    assert before["telemetries"] == [{"imei": reporting, "timestamp": T0 + 2, "data": {"speed": 2, "note": "é"}, "connected": True}]
    assert after["telemetries"] == [{**before["telemetries"][0], "connected": False}]


# --------------------------------------------------------------------------- crash


async def test_sigkill_loses_no_durably_acknowledged_message(
    server_factory: Callable[..., RunningServer], store_env: dict[str, str], imei: Callable[[], str]
) -> None:
    device_imei = imei()
    server = server_factory(**store_env, IOTHUB_DURABLE_ACK="true", IOTHUB_FLUSH_INTERVAL_MS="20")
    assert started_with_its_store(server, store_env)
    acknowledged: set[int] = set()
    sent: list[int] = []
    in_flight = asyncio.Semaphore(64)

    def on_reply(timestamp: int) -> Callable[[dict[str, Any]], None]:
        def reply(payload: dict[str, Any]) -> None:
            if payload.get("success"):
                acknowledged.add(timestamp)
            in_flight.release()

        return reply

    async def stream(client: socketio.AsyncClient) -> None:
        for n in range(1_000_000):
            await in_flight.acquire()
            sent.append(T0 + n)
            await client.emit("telemetry_data", {"imei": device_imei, "timestamp": T0 + n, "data": {"n": n}}, callback=on_reply(T0 + n))

    async with device_socket(server) as device:
        await call(device, "register_device", {"imei": device_imei})
        streaming = asyncio.create_task(stream(device))
        await eventually(lambda: len(acknowledged) >= 500)
        server.process.kill()  # SIGKILL, mid-stream
        server.process.wait(TIMEOUT)
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
    assert len(sent) > len(acknowledged)  # it was killed with messages in flight

    restarted = server_factory(**store_env)
    listed: list[int] = []
    cursor = ""
    while cursor is not None:
        page = get_json(restarted, f"/api/telemetry/{device_imei}?limit=1000" + (f"&cursor={cursor}" if cursor else ""))["data"]
        listed += [item["timestamp"] for item in page["items"]]
        cursor = page["nextCursor"]
    assert acknowledged <= set(listed)
    assert len(listed) == len(set(listed))


# --------------------------------------------------------------------------- clean shutdown


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_clean_shutdown_writes_the_buffer_and_exits_0(
    server_factory: Callable[..., RunningServer], tmp_path: Path, imei: Callable[[], str], stop_signal: int
) -> None:
    device_imei, db = imei(), tmp_path / "iothub.db"
    server = server_factory(IOTHUB_DB_PATH=str(db), IOTHUB_FLUSH_INTERVAL_MS="3600000", IOTHUB_BATCH_ROWS="100000")
    async with device_socket(server) as device:
        await call(device, "register_device", {"imei": device_imei})
        for n in range(50):
            assert (await call(device, "telemetry_data", {"imei": device_imei, "timestamp": T0 + n, "data": {}}))["success"]
        assert get_json(server, "/api/realtime/status")["data"]["backlog"] == 50  # all of it still in the buffer
        assert server.stop(stop_signal) == 0
    assert stored_timestamps(db, device_imei) == [T0 + n for n in range(50)]


async def test_a_clean_shutdown_releases_long_polls(
    server_factory: Callable[..., RunningServer], tmp_path: Path, imei: Callable[[], str]
) -> None:
    """engine.io holds a polling client's pending GET until it has a packet to send, up to ping
    interval + ping timeout (45 s), even after that client has closed its session — and aiohttp's
    shutdown waits for open requests. Shutdown answers every held poll instead."""
    gone_imei, polling_imei, db = imei(), imei(), tmp_path / "iothub.db"
    server = server_factory(IOTHUB_DB_PATH=str(db), IOTHUB_FLUSH_INTERVAL_MS="3600000", IOTHUB_BATCH_ROWS="100000")
    async with connect(server.url, transports=["polling"]) as gone:
        await gone.register(gone_imei)
        await gone.telemetry(gone_imei, {}, T0)
    async with connect(server.url, transports=["polling"]) as polling:
        await polling.register(polling_imei)
        for n in range(20):
            await polling.telemetry(polling_imei, {"n": n}, T0 + n)
        async with held_poll(server) as held:
            assert get_json(server, "/api/realtime/status")["data"]["backlog"] == 21
            assert server.stop(signal.SIGTERM, timeout=SHUTDOWN_BOUND_S) == 0
            assert (await held)[0] == 200  # answered, not cut off
    assert stored_timestamps(db, gone_imei) == [T0]
    assert stored_timestamps(db, polling_imei) == [T0 + n for n in range(20)]


# --------------------------------------------------------------------------- outage


async def test_an_outage_is_served_through_reported_and_caught_up(
    server_factory: Callable[..., RunningServer], tmp_path: Path, imei: Callable[[], str], email: Callable[[], str]
) -> None:
    device_imei, late_imei, owner, db = imei(), imei(), email(), tmp_path / "iothub.db"
    # the buffer's bound, not the backlog's age, is what this outage meets (reads held at an old backlog:
    # tests/integration/test_hardening.py)
    server = server_factory(
        IOTHUB_DB_PATH=str(db), IOTHUB_BUFFER_ROWS="20", IOTHUB_BATCH_ROWS="5", IOTHUB_FLUSH_INTERVAL_MS="10",
        IOTHUB_MAX_BACKLOG_AGE_MS="600000",
    )
    async with device_socket(server) as device:
        await call(device, "register_device", {"imei": device_imei, "userEmail": owner})
        await eventually(lambda: get_json(server, "/api/realtime/status")["data"]["backlog"] == 0)
        with locked(db):
            replies = [await call(device, "telemetry_data", {"imei": device_imei, "timestamp": T0 + n, "data": {}}) for n in range(21)]
            assert [r["success"] for r in replies] == [True] * 20 + [False]
            assert replies[-1]["code"] == "STORE_UNAVAILABLE"
            await eventually(lambda: get_json(server, "/health")["status"] == "DEGRADED")
            health = get_json(server, "/health")
            assert health["backlog"] == 20 and health["store"] == "sqlite" and health["connectedDevices"] == 1
            # still serving: heartbeats, registrations (the owner waits in the buffer), subscriptions (reads work)
            assert (await call(device, "heartbeat", {"imei": device_imei}))["success"]
            assert (await call(device, "register_device", {"imei": late_imei, "userEmail": owner}))["success"]
            subscribed = await call(device, "subscribe_user", {"email": owner})
            assert subscribed["deviceCount"] == 2 and subscribed["telemetries"][0]["timestamp"] == T0 + 19
        await eventually(lambda: get_json(server, "/api/realtime/status")["data"]["backlog"] == 0)
        assert get_json(server, "/health")["status"] == "OK" and "backlog" not in get_json(server, "/health")
        assert stored_timestamps(db, device_imei) == [T0 + n for n in range(20)]
        assert (await call(device, "telemetry_data", {"imei": device_imei, "timestamp": T0 + 20, "data": {}}))["success"]
    assert server.stop() == 0
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT owner FROM devices WHERE imei = ?", (late_imei,)).fetchone() == (owner,)


async def test_a_durable_acknowledgement_waits_out_an_outage(
    server_factory: Callable[..., RunningServer], tmp_path: Path, imei: Callable[[], str]
) -> None:
    device_imei, db = imei(), tmp_path / "iothub.db"
    server = server_factory(IOTHUB_DB_PATH=str(db), IOTHUB_DURABLE_ACK="true", IOTHUB_FLUSH_INTERVAL_MS="10")
    async with device_socket(server) as device:
        await call(device, "register_device", {"imei": device_imei})
        with locked(db):
            reply = asyncio.ensure_future(call(device, "telemetry_data", {"imei": device_imei, "timestamp": T0, "data": {}}))
            await eventually(lambda: get_json(server, "/health")["status"] == "DEGRADED")
            assert not reply.done()
        assert (await asyncio.wait_for(reply, TIMEOUT))["success"]
        assert stored_timestamps(db, device_imei) == [T0]


async def test_a_shutdown_with_the_store_down_waits_a_bounded_time_and_says_what_was_lost(
    server_factory: Callable[..., RunningServer], tmp_path: Path, imei: Callable[[], str]
) -> None:
    device_imei, db = imei(), tmp_path / "iothub.db"
    server = server_factory(IOTHUB_DB_PATH=str(db), IOTHUB_FLUSH_INTERVAL_MS="10", IOTHUB_SHUTDOWN_TIMEOUT_MS="500")
    async with device_socket(server) as device:
        await call(device, "register_device", {"imei": device_imei})
        with locked(db):
            for n in range(3):
                assert (await call(device, "telemetry_data", {"imei": device_imei, "timestamp": T0 + n, "data": {}}))["success"]
            started = time.monotonic()
            assert server.stop(signal.SIGTERM) == 1  # not 0: whatever restarts it should know
            assert time.monotonic() - started < TIMEOUT
    assert "did not take the last 3 rows" in server.log()
    assert stored_timestamps(db, device_imei) == []
