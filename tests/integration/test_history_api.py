"""The history API against a real server: filters, pages, limits and who may read what; in process
(HTTP alone needed): bad parameters, missing tokens, and what it answers while the store does not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestClient, TestServer

from iothub.app import Hub
from iothub.config import Settings

from ..support.inprocess import InProcessServer
from ..support.server import RunningServer
from ..support.stores import FlakyStore

#: One process, and a cluster of two gateways (tests/conftest.py).
TOPOLOGIES = ("process", "cluster")

T0 = 1_700_000_000_000
TIMEOUT = 10.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as opened:
        yield opened


async def get(session: aiohttp.ClientSession, server: RunningServer | InProcessServer, path: str, token: str | None = "admin") -> tuple[int, Any]:
    headers = {}
    if token == "admin":
        headers = server.admin_headers
    elif token is not None:
        headers = {"Authorization": f"Bearer {token}"}
    async with session.get(server.url + path, headers=headers) as response:
        return response.status, await response.json()


async def feed(server: RunningServer, owner: str, readings: dict[str, list[dict[str, Any]]]) -> None:
    """Register each imei for ``owner`` and send its readings (timestamp T0 + index); wait until stored."""
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(server.url, transports=["websocket"], wait_timeout=TIMEOUT)
    try:
        for imei, data in readings.items():
            await client.call("register_device", {"imei": imei, "userEmail": owner}, timeout=TIMEOUT)
            for index, values in enumerate(data):
                reply = await client.call("telemetry_data", {"imei": imei, "timestamp": T0 + index, "data": values}, timeout=TIMEOUT)
                assert reply["success"]
    finally:
        await client.disconnect()
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + TIMEOUT
        for imei, data in readings.items():
            while len((await get(session, server, f"/api/telemetry/{imei}?limit=1000"))[1]["data"]["items"]) < len(data):
                assert time.monotonic() < deadline, "telemetry not stored in time"
                await asyncio.sleep(0.02)


@pytest.fixture
async def fleet(server: RunningServer, imei: Callable[[], str], email: Callable[[], str]) -> dict[str, str]:
    """Two devices of one owner and one of another, with telemetry and alerts."""
    names = {"owner": email(), "other": email(), "car": imei(), "van": imei(), "bus": imei()}
    await feed(
        server,
        names["owner"],
        {
            names["car"]: [{"speed": n, "engineRpm": 5000 if n % 3 == 0 else 1000} for n in range(12)],  # HIGH_RPM at 0,3,6,9
            names["van"]: [{"crashDetection": 1}, {"batteryVoltage": 11.0}],  # CRASH_DETECTED at 0, LOW_BATTERY at 1
        },
    )
    await feed(server, names["other"], {names["bus"]: [{"engineRpm": 9000}]})
    return names


def offsets(body: dict[str, Any]) -> list[int]:
    return [item["timestamp"] - T0 for item in body["data"]["items"]]


# --------------------------------------------------------------------------- telemetry


async def test_telemetry_comes_newest_first_with_its_data(server, session, fleet) -> None:
    status, body = await get(session, server, f"/api/telemetry/{fleet['car']}")
    assert status == 200 and body["success"] and body["message"] == "Telemetry history retrieved successfully"
    assert offsets(body) == list(range(11, -1, -1)) and body["data"]["nextCursor"] is None
    newest = body["data"]["items"][0]
    assert newest["imei"] == fleet["car"] and newest["data"] == {"speed": 11, "engineRpm": 1000}
    assert isinstance(newest["receivedAt"], int)


async def test_telemetry_pages_follow_the_cursor(server, session, fleet) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        _, body = await get(session, server, f"/api/telemetry/{fleet['car']}?limit=5" + (f"&cursor={cursor}" if cursor else ""))
        seen += offsets(body)
        pages += 1
        cursor = body["data"]["nextCursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == list(range(11, -1, -1))


async def test_telemetry_window_and_limit(server, session, fleet) -> None:
    _, body = await get(session, server, f"/api/telemetry/{fleet['car']}?from={T0 + 3}&to={T0 + 7}")
    assert offsets(body) == [7, 6, 5, 4, 3]
    _, body = await get(session, server, f"/api/telemetry/{fleet['car']}?from={T0 + 3}&to={T0 + 7}&limit=2")
    assert offsets(body) == [7, 6] and body["data"]["nextCursor"]
    _, body = await get(session, server, f"/api/telemetry/{fleet['car']}?from={T0 + 3}&to={T0 + 7}&limit=2&cursor={body['data']['nextCursor']}")
    assert offsets(body) == [5, 4]
    _, body = await get(session, server, f"/api/telemetry/{fleet['car']}?limit=1000")
    assert len(body["data"]["items"]) == 12


async def test_a_device_without_history_has_an_empty_page(server, session, imei) -> None:
    status, body = await get(session, server, f"/api/telemetry/{imei()}")
    assert status == 200 and body["data"] == {"items": [], "nextCursor": None}


# --------------------------------------------------------------------------- alerts


async def test_alerts_filter_by_device_code_level_and_time(server, session, fleet) -> None:
    car, van = fleet["car"], fleet["van"]
    _, body = await get(session, server, f"/api/alerts?imei={car}")
    assert body["message"] == "Alert history retrieved successfully"
    assert offsets(body) == [9, 6, 3, 0] and {a["code"] for a in body["data"]["items"]} == {"HIGH_RPM"}
    first = body["data"]["items"][0]
    assert first == {
        "imei": car, "timestamp": T0 + 9, "code": "HIGH_RPM", "level": "warning",
        "message": "High engine RPM detected", "data": {"speed": 9, "engineRpm": 5000},
    }
    _, body = await get(session, server, f"/api/alerts?imei={van}&level=critical")
    assert [(a["code"], a["level"]) for a in body["data"]["items"]] == [("CRASH_DETECTED", "critical")]
    _, body = await get(session, server, f"/api/alerts?imei={van}&code=LOW_BATTERY")
    assert offsets(body) == [1]
    _, body = await get(session, server, f"/api/alerts?imei={car}&from={T0 + 1}&to={T0 + 6}")
    assert offsets(body) == [6, 3]
    _, body = await get(session, server, f"/api/alerts?imei={car}&level=info")
    assert body["data"] == {"items": [], "nextCursor": None}


async def test_alert_pages_follow_the_cursor(server, session, fleet) -> None:
    _, first = await get(session, server, f"/api/alerts?imei={fleet['car']}&limit=3")
    _, second = await get(session, server, f"/api/alerts?imei={fleet['car']}&limit=3&cursor={first['data']['nextCursor']}")
    assert offsets(first) == [9, 6, 3] and offsets(second) == [0] and second["data"]["nextCursor"] is None


# --------------------------------------------------------------------------- who may read


async def test_a_user_reads_its_own_devices_only(server, session, fleet) -> None:
    owner = server.token(fleet["owner"], "user")
    assert (await get(session, server, f"/api/telemetry/{fleet['car']}", owner))[0] == 200
    status, body = await get(session, server, f"/api/telemetry/{fleet['bus']}", owner)
    assert status == 403 and body["code"] == "FORBIDDEN" and not body["success"]
    assert (await get(session, server, f"/api/alerts?imei={fleet['bus']}", owner))[0] == 403
    _, body = await get(session, server, "/api/alerts?limit=1000", owner)  # no imei: every device it owns, no other
    assert {a["imei"] for a in body["data"]["items"]} == {fleet["car"], fleet["van"]}
    _, body = await get(session, server, "/api/alerts", server.token(fleet["other"], "user"))
    assert [a["imei"] for a in body["data"]["items"]] == [fleet["bus"]]


async def test_an_admin_reads_everything(server, session, fleet) -> None:
    _, body = await get(session, server, "/api/alerts?limit=1000")
    assert {fleet["car"], fleet["van"], fleet["bus"]} <= {a["imei"] for a in body["data"]["items"]}
    assert (await get(session, server, f"/api/telemetry/{fleet['bus']}"))[0] == 200


@pytest.mark.parametrize("path", ["/api/telemetry/356938035643809", "/api/alerts"])
async def test_no_token_is_401_and_a_device_token_403(in_process, session, path: str) -> None:
    server = await in_process()
    status, body = await get(session, server, path, token=None)
    assert status == 401 and body["code"] == "UNAUTHORIZED"
    status, _ = await get(session, server, path, token="not.a.jwt")
    assert status == 401
    device = server.token("device@example.com", "device", "356938035643809")
    status, body = await get(session, server, path, token=device)
    assert status == 403 and body["code"] == "FORBIDDEN"


async def test_a_user_token_for_a_device_nobody_owns_is_403(in_process, session, imei) -> None:
    server = await in_process()
    assert (await get(session, server, f"/api/telemetry/{imei()}", server.token("nobody@example.com", "user")))[0] == 403


# --------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "INVALID_PAYLOAD"),
        ("limit=1001", "INVALID_PAYLOAD"),
        ("limit=ten", "INVALID_PAYLOAD"),
        ("from=-1", "INVALID_PAYLOAD"),
        ("to=yesterday", "INVALID_PAYLOAD"),
        (f"from={T0 + 1}&to={T0}", "INVALID_PAYLOAD"),
        ("cursor=not-a-cursor", "INVALID_PAYLOAD"),
        ("limit=5&limit=6", "INVALID_PAYLOAD"),
        ("page=2", "INVALID_PAYLOAD"),
        ("imei=356938035643809", "INVALID_PAYLOAD"),
    ],
)
async def test_bad_telemetry_parameters_are_400(in_process, session, query: str, code: str) -> None:
    server = await in_process()
    status, body = await get(session, server, f"/api/telemetry/356938035643809?{query}")
    assert status == 400 and body["code"] == code and body["success"] is False and body["message"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("level=severe", "INVALID_PAYLOAD"),
        ("imei=12345", "INVALID_IMEI"),
        ("code=", "INVALID_PAYLOAD"),
        ("limit=0", "INVALID_PAYLOAD"),
        ("cursor=WzEsMiwzXQ", "INVALID_PAYLOAD"),
    ],
)
async def test_bad_alert_parameters_are_400(in_process, session, query: str, code: str) -> None:
    server = await in_process()
    status, body = await get(session, server, f"/api/alerts?{query}")
    assert status == 400 and body["code"] == code


async def test_a_bad_imei_in_the_path_is_400(in_process, session) -> None:
    server = await in_process()
    status, body = await get(session, server, "/api/telemetry/not-an-imei")
    assert status == 400 and body["code"] == "INVALID_IMEI"


# --------------------------------------------------------------------------- the store down


async def test_a_store_that_does_not_answer_is_503_store_unavailable() -> None:
    """In process, over real HTTP, with a store that fails every read (an outage)."""
    store = FlakyStore()
    hub = Hub(Settings.load({}), store=store)
    admin, user = hub.authenticator.mint("admin@example.com", "admin"), hub.authenticator.mint("u@example.com", "user")
    reads = [
        ("/api/telemetry/356938035643809", admin),  # the history itself
        ("/api/alerts", admin),
        ("/api/alerts", user),  # which devices the user owns
        ("/api/alerts?imei=356938035643809", user),  # who owns this one
    ]
    async with TestClient(TestServer(hub.application())) as client:
        store.failing = True
        for path, token in reads:
            response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            body = await response.json()
            assert (response.status, body["success"], body["code"]) == (503, False, "STORE_UNAVAILABLE"), (path, body)
            assert "retry" in body["message"]
        store.failing = False
        assert (await client.get("/api/alerts", headers={"Authorization": f"Bearer {admin}"})).status == 200
