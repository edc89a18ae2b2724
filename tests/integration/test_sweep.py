"""The heartbeat timeout and its sweep, with a short timeout and a fast sweep.

HEARTBEAT_TIMEOUT_MS is 600 ms and the sweep runs every 100 ms; a device kept
alive refreshes itself every 100 ms. Every wait has a deadline; nothing sleeps
longer than one keep-alive period.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from ..support.clients import assert_failure, live_devices, now_ms, until

TIMEOUT_MS = 600
KEEPALIVE_S = 0.1


@pytest.fixture
def hub(server_factory):
    return server_factory(HEARTBEAT_TIMEOUT_MS=str(TIMEOUT_MS), CLEANUP_INTERVAL_MS="100")


@contextlib.asynccontextmanager
async def kept_alive(client, box, event):
    """Send ``event`` for ``box`` every KEEPALIVE_S until the block ends; fail if one is refused."""
    replies = []

    async def beat():
        while True:
            if event == "heartbeat":
                replies.append(await client.call("heartbeat", {"imei": box}))
            else:
                replies.append(await client.call("telemetry_data", {"imei": box, "data": {"speed": len(replies)}}))
            await asyncio.sleep(KEEPALIVE_S)

    task = asyncio.create_task(beat())
    try:
        yield replies
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert replies and all(reply["success"] is True for reply in replies), replies


@pytest.mark.parametrize("keepalive", ["heartbeat", "telemetry_data"])
async def test_silent_device_is_dropped_and_a_live_one_stays(hub, open_client, http, imei, email, keepalive):
    owner = email()
    dashboard = await open_client(hub.url)
    await dashboard.subscribe(owner)
    device = await open_client(hub.url)
    silent, alive = imei(), imei()
    await device.register(silent, owner)
    await device.register(alive, owner)
    registered = now_ms()

    async with kept_alive(device, alive, keepalive):
        status = await dashboard.wait_event(
            "device_status", lambda p: p["imei"] == silent and p["status"] == "offline", timeout=TIMEOUT_MS / 1000 + 5
        )
        assert set(status) == {"type", "imei", "status", "timestamp"} and status["type"] == "device_status"
        assert status["timestamp"] - registered > TIMEOUT_MS, "dropped before its timeout"
        # gone from the live set as the status goes out, while the other one stays
        listed = await live_devices(http, hub)
        assert silent not in listed and alive in listed
        assert_failure(await device.call("telemetry_data", {"imei": silent, "data": {}}), "DEVICE_NOT_REGISTERED")
        assert_failure(await device.call("heartbeat", {"imei": silent}), "DEVICE_NOT_REGISTERED")
        # several more timeouts' worth of sweeps: the kept-alive device is still there
        deadline = now_ms() + 2 * TIMEOUT_MS
        while now_ms() < deadline:
            assert alive in await live_devices(http, hub)
            await asyncio.sleep(KEEPALIVE_S)
    await dashboard.sync()
    offline = [p["imei"] for p in dashboard.payloads("device_status") if p["status"] == "offline"]
    assert offline == [silent]
    assert device.connected, "the sweep drops devices, not sockets"


async def test_dropped_device_can_register_again(hub, open_client, http, imei, email):
    owner = email()
    dashboard = await open_client(hub.url)
    await dashboard.subscribe(owner)
    device = await open_client(hub.url)
    box = imei()
    await device.register(box, owner)
    await device.telemetry(box, {"speed": 5}, timestamp=50)
    await dashboard.wait_event("device_status", lambda p: p["status"] == "offline", timeout=TIMEOUT_MS / 1000 + 5)
    assert box not in await live_devices(http, hub)

    since = dashboard.mark()
    before = now_ms()
    await device.register(box)
    status = await dashboard.wait_event("device_status", since=since)
    assert status == {"type": "device_status", "imei": box, "status": "online", "timestamp": status["timestamp"]}
    assert before <= status["timestamp"] <= now_ms()
    await device.telemetry(box, {"speed": 6}, timestamp=60)
    assert (await dashboard.wait_event("telemetry_update", since=since))["timestamp"] == 60
    reply = await dashboard.subscribe(owner)
    assert reply["deviceCount"] == 1
    assert reply["telemetries"] == [{"imei": box, "timestamp": 60, "data": {"speed": 6}, "connected": True}]


async def test_heartbeat_moves_last_heartbeat(hub, open_client, http, imei):
    device = await open_client(hub.url)
    box = imei()
    await device.register(box)
    first = (await live_devices(http, hub))[box]
    assert first["lastHeartbeat"] == first["connectedAt"]
    later = await until(lambda: now_ms() > first["lastHeartbeat"] and now_ms())
    reply = await device.call("heartbeat", {"imei": box})
    assert reply["timestamp"] >= later
    listed = (await live_devices(http, hub))[box]
    assert listed["lastHeartbeat"] == reply["timestamp"] and listed["connectedAt"] == first["connectedAt"]
