"""Cluster mode when processes die: a gateway killed under load, the supervisor killed, and a clean stop.

Each test starts its own cluster of two gateways (it kills parts of it). The
devices are python-socketio clients on the shared port that reconnect on
their own and register again on every connect, as a real device does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from ..support.clients import TIMEOUT, until
from ..support.server import RunningServer, start_server

DEVICES = 20
LOAD_SECONDS = 6.0
T0 = 1_700_000_000_000


class Device:
    """A device that registers again whenever it (re)connects, and records what was acknowledged."""

    def __init__(self, url: str, imei: str, owner: str) -> None:
        self.url, self.imei, self.owner = url, imei, owner
        self.sio = socketio.AsyncClient(reconnection_delay=0.2, reconnection_delay_max=0.5)
        self.sio.on("connect", self._registered)
        self.acknowledged: list[int] = []
        self.registrations = 0

    async def _registered(self) -> None:
        reply = await self.sio.call("register_device", {"imei": self.imei, "userEmail": self.owner}, timeout=TIMEOUT)
        if reply.get("success"):
            self.registrations += 1

    async def send_until(self, stop_at: float) -> None:
        sequence = 0
        while time.monotonic() < stop_at:
            sequence += 1
            try:
                reply = await self.sio.call("telemetry_data", {"imei": self.imei, "timestamp": T0 + sequence, "data": {"n": sequence}}, timeout=3)
            except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
                await asyncio.sleep(0.1)
                continue
            if reply.get("success"):
                self.acknowledged.append(T0 + sequence)
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def fleet(url: str, owner: str, first_imei: int) -> AsyncIterator[list[Device]]:
    devices = [Device(url, str(first_imei + index), owner) for index in range(DEVICES)]
    try:
        for device in devices:
            await device.sio.connect(url, transports=["websocket"], wait_timeout=TIMEOUT)
        await until(lambda: all(device.registrations for device in devices))
        yield devices
    finally:
        for device in devices:
            await device.sio.disconnect()


def gateway(server: RunningServer, name: str, at: str | None = None) -> dict[str, Any]:
    """The gateway's entry in the status (from the shared port, or ``at`` a gateway's own address); asked again when
    the request met the gateway being killed."""
    for _ in range(20):
        try:
            return next(entry for entry in server.status(at)["gateways"] if entry["id"] == name)
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the status did not answer")


def answered(server: RunningServer) -> dict[str, Any] | None:
    """The status, or None while the restarting supervisor cannot give it (500)."""
    try:
        return server.status()
    except OSError:
        return None


async def history(http: aiohttp.ClientSession, server: RunningServer, imei: str) -> set[int]:
    """Every timestamp of the device's telemetry, through the history API, page by page."""
    found: set[int] = set()
    cursor: str | None = None
    while True:
        query = f"?limit=1000&from={T0}" + (f"&cursor={cursor}" if cursor else "")
        async with http.get(f"{server.url}/api/telemetry/{imei}{query}", headers=server.admin_headers) as response:
            body = await response.json()
        assert body["success"] is True, body
        found.update(item["timestamp"] for item in body["data"]["items"])
        cursor = body["data"]["nextCursor"]
        if cursor is None:
            return found


@pytest.fixture
def durable_cluster(tmp_path: Path) -> Any:
    running = start_server(tmp_path, workers=2, IOTHUB_DURABLE_ACK="true")
    yield running
    running.stop()


async def test_a_gateway_killed_under_load_loses_no_acknowledged_message(durable_cluster, http, email, imei) -> None:
    server, owner = durable_cluster, email()
    survivor = server.gateway_addresses()["gateway-1"]
    dashboard = socketio.AsyncClient(reconnection=False)
    statuses: list[dict[str, Any]] = []
    dashboard.on("device_status", statuses.append)
    await dashboard.connect(survivor, transports=["websocket"])
    await dashboard.call("subscribe_user", {"email": owner})
    async with fleet(server.url, owner, int(imei())) as devices:
        victim = gateway(server, "gateway-0")
        assert victim["devices"] > 0, "the kernel put some devices on gateway-0"
        stop_at = time.monotonic() + LOAD_SECONDS
        load = asyncio.gather(*(device.send_until(stop_at) for device in devices))
        await asyncio.sleep(1.5)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        dropped = await until(lambda: (entry := gateway(server, "gateway-0"))["pid"] != victim["pid"] or not entry["alive"], interval=0.05)
        assert dropped and time.monotonic() - killed_at < 2.0 + 0.5, "dropped within 2 s (and one status poll)"
        offline = await until(lambda: len([s for s in statuses if s["status"] == "offline"]) >= victim["devices"])
        assert offline
        await load
        await until(lambda: sum(gateway(server, name)["devices"] for name in ("gateway-0", "gateway-1")) == DEVICES, timeout=15)
        replacement = await until(lambda: (entry := gateway(server, "gateway-0"))["alive"] and entry["pid"] != victim["pid"] and entry, timeout=30)
        os.kill(replacement["pid"], 0)
        for device in devices:
            assert device.acknowledged, f"{device.imei} got no acknowledgement"
            assert set(device.acknowledged) <= await history(http, server, device.imei), f"{device.imei}: an acknowledged message is missing"
    await dashboard.disconnect()


async def test_a_stalled_gateway_is_kept_and_a_hung_one_dropped_until_it_answers_again(tmp_path: Path, email, imei) -> None:
    """A gateway whose process stops for a second (a busy machine, a long collection) keeps its devices; one stopped
    past its watch's heartbeat is dropped, its devices offline, and joins again with them once it runs."""
    server, owner = start_server(tmp_path, workers=2), email()
    try:
        addresses = server.gateway_addresses()
        survivor = addresses["gateway-1"]
        statuses: list[dict[str, Any]] = []
        dashboard = socketio.AsyncClient(reconnection=False)
        dashboard.on("device_status", statuses.append)
        await dashboard.connect(survivor, transports=["websocket"])
        await dashboard.call("subscribe_user", {"email": owner})
        device = socketio.AsyncClient(reconnection=False)
        await device.connect(addresses["gateway-0"], transports=["websocket"])
        assert (await device.call("register_device", {"imei": imei(), "userEmail": owner}))["success"]
        victim = gateway(server, "gateway-0", at=survivor)
        await until(lambda: [s["status"] for s in statuses] == ["online"])

        os.kill(victim["pid"], signal.SIGSTOP)
        await asyncio.sleep(1.5)
        os.kill(victim["pid"], signal.SIGCONT)
        await asyncio.sleep(1.0)
        assert gateway(server, "gateway-0", at=survivor)["alive"] and [s["status"] for s in statuses] == ["online"]

        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            assert await until(lambda: not gateway(server, "gateway-0", at=survivor)["alive"], timeout=15)
            assert await until(lambda: [s["status"] for s in statuses] == ["online", "offline"])
        finally:
            os.kill(victim["pid"], signal.SIGCONT)
        back = await until(lambda: (entry := gateway(server, "gateway-0", at=survivor))["alive"] and entry, timeout=15)
        assert back["pid"] == victim["pid"] and back["devices"] == 1, "the same process, with its device"
        assert await until(lambda: [s["status"] for s in statuses] == ["online", "offline", "online"])
        await device.disconnect()
        await dashboard.disconnect()
    finally:
        server.stop()


async def test_a_restarted_supervisor_takes_the_gateways_state_back_and_repeats_nothing(tmp_path: Path, http, email, imei) -> None:
    server = start_server(tmp_path, workers=2)
    try:
        addresses = server.gateway_addresses()
        owner, box = email(), imei()
        dashboard = socketio.AsyncClient(reconnection=False)
        received: list[tuple[str, Any]] = []
        dashboard.on("*", lambda event, data: received.append((event, data)))
        await dashboard.connect(addresses["gateway-0"], transports=["websocket"])
        await dashboard.call("subscribe_user", {"email": owner})
        device = socketio.AsyncClient(reconnection=False)
        await device.connect(addresses["gateway-1"], transports=["websocket"])
        await device.call("register_device", {"imei": box, "userEmail": owner})
        await until(lambda: len(received) == 1)
        supervisor = int(re.findall(r"\(SupervisorActor pid=(\d+)\)", server.log())[0])
        os.kill(supervisor, signal.SIGKILL)
        restarted = await until(lambda: set(re.findall(r"\(SupervisorActor pid=(\d+)\).*joined with", server.log())) - {str(supervisor)}, timeout=30)
        assert restarted
        # Both gateways back, with what they held. (The gateways, their devices and the users are asked for one after
        # another: a status taken while the second gateway rejoins may count its user and not yet list it.)
        assert await until(
            lambda: (status := answered(server))
            and [entry["alive"] for entry in status["gateways"]] == [True, True]
            and (status["devices"], status["users"]) == (1, 1)
        )
        reply = await device.call("telemetry_data", {"imei": box, "data": {"speed": 5}})
        assert reply["success"] is True
        await until(lambda: len(received) == 2)
        assert [event for event, _ in received] == ["device_status", "telemetry_update"], "no device_status repeated by the restart"
        await device.disconnect()
        await until(lambda: len(received) == 3)
        assert received[-1][0] == "device_status" and received[-1][1]["status"] == "offline"
        await dashboard.disconnect()
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_the_whole_cluster_stops_cleanly_writing_what_it_took(tmp_path: Path, email, imei, sig: int) -> None:
    server = start_server(tmp_path, workers=2, IOTHUB_FLUSH_INTERVAL_MS="60000", IOTHUB_BATCH_ROWS="100000")
    owner, sent = email(), 0
    try:
        async with fleet(server.url, owner, int(imei())) as devices:
            for device in devices:
                for sequence in range(1, 6):
                    reply = await device.sio.call("telemetry_data", {"imei": device.imei, "timestamp": T0 + sequence, "data": {}})
                    sent += bool(reply["success"])
            assert {entry["connections"] > 0 for entry in server.status()["gateways"]} == {True}, "both gateways hold rows"
    finally:
        code = server.stop(sig, timeout=60)
    assert code == 0, server.log()[-3000:]
    with contextlib.closing(sqlite3.connect(tmp_path / "iothub.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0] == sent == DEVICES * 5
