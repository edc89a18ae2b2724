"""Every client event of PROTOCOL.md over real sockets, in both reply styles.

One development server serves the module; each test uses its own imeis and
e-mails, so tests do not see each other's devices or dashboards.
"""

from __future__ import annotations

import pytest

from ..support.clients import (
    REPLY_STYLES,
    assert_failure,
    connections,
    live_devices,
    now_ms,
    until,
)

#: One process, and a cluster of two gateways (tests/conftest.py).
TOPOLOGIES = ("process", "cluster")

READINGS = {
    "engineRpm": 2500,
    "speed": 65,
    "fuelLevel": 75,
    "batteryVoltage": 12.5,
    "crashDetection": 0,
    "dtc": 0,
    "position": {"latitude": 40.7128, "longitude": -74.006},
}


def status_event(imei: str, status: str):
    return lambda payload: payload.get("imei") == imei and payload.get("status") == status


def assert_device_status(payload: dict, imei: str, status: str, after: int, before: int) -> None:
    assert set(payload) == {"type", "imei", "status", "timestamp"}, payload
    assert payload["type"] == "device_status"
    assert payload["imei"] == imei
    assert payload["status"] == status
    assert isinstance(payload["timestamp"], int) and after <= payload["timestamp"] <= before, (after, payload, before)


# --------------------------------------------------------------------------- the replies, both ways


@pytest.mark.parametrize("style", REPLY_STYLES)
async def test_register_device_reply(server, open_client, imei, email, style):
    client = await open_client(server.url)
    device = imei()
    reply = await client.reply(style, "register_device", {"imei": device, "userEmail": email()})
    assert reply == {"success": True, "imei": device, "message": "Device registered successfully"}
    # without userEmail too, and registering again on the same socket is fine
    reply = await client.reply(style, "register_device", {"imei": device})
    assert reply == {"success": True, "imei": device, "message": "Device registered successfully"}


@pytest.mark.parametrize("style", REPLY_STYLES)
async def test_telemetry_data_reply(server, open_client, imei, style):
    client = await open_client(server.url)
    device = imei()
    await client.register(device)
    reply = await client.reply(style, "telemetry_data", {"imei": device, "timestamp": 1703123456789, "data": READINGS})
    assert reply == {"success": True, "message": "Telemetry processed successfully"}


@pytest.mark.parametrize("style", REPLY_STYLES)
async def test_subscribe_user_reply(server, open_client, email, style):
    client = await open_client(server.url)
    owner = email()
    reply = await client.reply(style, "subscribe_user", {"email": owner})
    assert reply == {"success": True, "email": owner, "deviceCount": 0, "telemetries": []}


@pytest.mark.parametrize("style", REPLY_STYLES)
async def test_unsubscribe_user_reply(server, open_client, email, style):
    client = await open_client(server.url)
    owner = email()
    await client.subscribe(owner)
    assert await client.reply(style, "unsubscribe_user", {"email": owner}) == {"success": True, "email": owner}
    # leaving a stream one never joined is not an error
    assert await client.reply(style, "unsubscribe_user", {"email": owner}) == {"success": True, "email": owner}


async def test_heartbeat_is_acknowledged_only(server, open_client, http, imei):
    client = await open_client(server.url)
    device = imei()
    await client.register(device)
    before = now_ms()
    reply = await client.call("heartbeat", {"imei": device})
    after = now_ms()
    assert set(reply) == {"success", "imei", "timestamp"}, reply
    assert reply["success"] is True and reply["imei"] == device
    assert isinstance(reply["timestamp"], int) and before <= reply["timestamp"] <= after
    assert (await live_devices(http, server))[device]["lastHeartbeat"] == reply["timestamp"]

    since = client.mark()
    await client.emit("heartbeat", {"imei": device})
    await client.sync()
    assert client.events(since=since) == [], "a heartbeat without acknowledgement must get no reply"


# --------------------------------------------------------------------------- failures, both ways

FAILURES = [
    pytest.param("register_device", {"imei": "12345"}, "INVALID_IMEI", id="register-bad-imei"),
    pytest.param("register_device", {"imei": "123456789012345", "userEmail": "nobody"}, "INVALID_EMAIL",
                 id="register-bad-email"),
    pytest.param("register_device", {}, "INVALID_PAYLOAD", id="register-no-imei"),
    pytest.param("telemetry_data", {"imei": "999999999999999", "data": {}}, "DEVICE_NOT_REGISTERED",
                 id="telemetry-unregistered"),
    pytest.param("telemetry_data", {"imei": "999999999999999"}, "INVALID_PAYLOAD", id="telemetry-no-data"),
    pytest.param("heartbeat", {"imei": "999999999999999"}, "DEVICE_NOT_REGISTERED", id="heartbeat-unregistered"),
    pytest.param("heartbeat", {"imei": "abc"}, "INVALID_IMEI", id="heartbeat-bad-imei"),
    pytest.param("subscribe_user", {"email": "not-an-email"}, "INVALID_EMAIL", id="subscribe-bad-email"),
    pytest.param("unsubscribe_user", {"email": "a@b"}, "INVALID_EMAIL", id="unsubscribe-bad-email"),
    pytest.param("subscribe_user", "someone@example.com", "INVALID_PAYLOAD", id="subscribe-not-object"),
]


@pytest.mark.parametrize("style", REPLY_STYLES)
@pytest.mark.parametrize(("event", "payload", "code"), FAILURES)
async def test_failure_reply(server, open_client, imei, style, event, payload, code):
    client = await open_client(server.url)
    assert_failure(await client.reply(style, event, payload), code)
    # the socket stays connected and keeps working
    device = imei()
    await client.register(device)
    assert (await client.call("heartbeat", {"imei": device}))["success"] is True
    assert client.connected


# --------------------------------------------------------------------------- devices


async def test_device_status_online_on_register(server, open_client, imei, email):
    owner = email()
    dashboard = await open_client(server.url)
    await dashboard.subscribe(owner)
    device = await open_client(server.url)
    box = imei()
    before = now_ms()
    await device.register(box, owner)
    after = now_ms()
    status = await dashboard.wait_event("device_status", status_event(box, "online"))
    assert_device_status(status, box, "online", before, after)


async def test_several_devices_on_one_socket(server, open_client, http, imei, email):
    owner = email()
    dashboard = await open_client(server.url)
    await dashboard.subscribe(owner)
    gateway = await open_client(server.url)
    boxes = [imei(), imei(), imei()]
    for number, box in enumerate(boxes):
        await gateway.register(box, owner)
        await gateway.telemetry(box, {"speed": number}, timestamp=1_000 + number)
    updates = await dashboard.wait_count("telemetry_update", 3)
    assert updates == [
        {"type": "telemetry_update", "imei": box, "timestamp": 1_000 + number, "data": {"speed": number}}
        for number, box in enumerate(boxes)
    ]
    for box in boxes:
        assert (await gateway.call("heartbeat", {"imei": box}))["success"] is True
    listed = await live_devices(http, server)
    assert {box: listed[box]["socketId"] for box in boxes} == dict.fromkeys(boxes, gateway.sid)
    assert {listed[box]["userEmail"] for box in boxes} == {owner}


async def test_newest_registration_wins(server, open_client, http, imei, email):
    owner = email()
    dashboard = await open_client(server.url)
    await dashboard.subscribe(owner)
    first = await open_client(server.url)
    second = await open_client(server.url)
    box = imei()
    await first.register(box, owner)
    await second.register(box)

    # the imei now lives on the second socket, with the owner it had
    assert (await live_devices(http, server))[box]["socketId"] == second.sid
    assert (await live_devices(http, server))[box]["userEmail"] == owner
    for event, payload in (("telemetry_data", {"imei": box, "data": {"speed": 1}}), ("heartbeat", {"imei": box})):
        assert_failure(await first.call(event, payload), "DEVICE_NOT_REGISTERED")
    await second.telemetry(box, {"speed": 2}, timestamp=5)
    update = await dashboard.wait_event("telemetry_update")
    assert update == {"type": "telemetry_update", "imei": box, "timestamp": 5, "data": {"speed": 2}}

    # the first socket leaving does not take the device offline
    since = dashboard.mark()
    await first.disconnect()
    await second.telemetry(box, {"speed": 3}, timestamp=6)
    await dashboard.wait_event("telemetry_update", lambda p: p["timestamp"] == 6, since=since)
    assert dashboard.payloads("device_status", since) == []
    assert (await live_devices(http, server))[box]["socketId"] == second.sid


async def test_disconnect_cleans_up_at_once(server, open_client, http, imei, email):
    owner = email()
    dashboard = await open_client(server.url)
    await dashboard.subscribe(owner)
    device = await open_client(server.url)
    boxes = [imei(), imei()]
    for box in boxes:
        await device.register(box, owner)
    listed = await connections(http, server)
    assert {d["imei"] for d in listed["devices"]} >= set(boxes)
    assert owner in listed["users"]

    before = now_ms()
    await device.disconnect()
    for box in boxes:
        status = await dashboard.wait_event("device_status", status_event(box, "offline"))
        assert_device_status(status, box, "offline", before, now_ms())
    # the offline status goes out as the device leaves the tables: no wait for the sweep
    assert not set(boxes) & set(await live_devices(http, server))
    assert not set(boxes) & {d["imei"] for d in (await connections(http, server))["devices"]}
    # and the dashboard's subscription ends with its socket
    await dashboard.disconnect()
    await until(lambda: owner_gone(http, server, owner))


async def owner_gone(http, server, owner: str) -> bool:
    return owner not in (await connections(http, server))["users"]


async def test_owner_persists_without_user_email(server, open_client, imei, email):
    owner = email()
    dashboard = await open_client(server.url)
    await dashboard.subscribe(owner)
    box = imei()
    first = await open_client(server.url)
    await first.register(box, owner)
    await first.disconnect()
    await dashboard.wait_event("device_status", status_event(box, "offline"))

    again = await open_client(server.url)
    since = dashboard.mark()
    await again.register(box)  # no userEmail: the owner stays
    await dashboard.wait_event("device_status", status_event(box, "online"), since=since)
    await again.telemetry(box, {"speed": 7}, timestamp=70)
    assert await dashboard.wait_event("telemetry_update") == {
        "type": "telemetry_update", "imei": box, "timestamp": 70, "data": {"speed": 7}
    }
    assert (await dashboard.subscribe(owner))["deviceCount"] == 1


# --------------------------------------------------------------------------- telemetry


async def test_telemetry_without_timestamp_gets_server_clock(watched_device):
    owner, dashboard, device, box = await watched_device()
    before = now_ms()
    await device.telemetry(box, READINGS)
    after = now_ms()
    update = await dashboard.wait_event("telemetry_update")
    assert set(update) == {"type", "imei", "timestamp", "data"}
    assert update["type"] == "telemetry_update" and update["imei"] == box and update["data"] == READINGS
    assert isinstance(update["timestamp"], int) and before <= update["timestamp"] <= after
    # the same timestamp is the device's last known telemetry
    last = (await dashboard.subscribe(owner))["telemetries"]
    assert last == [{"imei": box, "timestamp": update["timestamp"], "data": READINGS, "connected": True}]


async def test_telemetry_keeps_the_device_timestamp(watched_device):
    _owner, dashboard, device, box = await watched_device()
    await device.telemetry(box, READINGS, timestamp=1703123456789)
    assert await dashboard.wait_event("telemetry_update") == {
        "type": "telemetry_update", "imei": box, "timestamp": 1703123456789, "data": READINGS
    }


async def test_unknown_data_fields_reach_the_dashboard_unchanged(watched_device):
    _owner, dashboard, device, box = await watched_device()
    data = {
        "speed": 12.75,
        "oilPressure": 3.4,
        "cabin": {"temperature": -4.5, "doors": [True, False, None], "label": "Zürich ✓ \"quoted\""},
        "odometerMeters": 12345678901234,
        "tags": [],
        "firmware": "v2.1.0-rc1",
        "position": {"latitude": -90, "longitude": 180, "altitude": 1234.5},
    }
    await device.telemetry(box, data, timestamp=42)
    update = await dashboard.wait_event("telemetry_update")
    assert update == {"type": "telemetry_update", "imei": box, "timestamp": 42, "data": data}
    assert list(update["data"]) == list(data), "fields keep their order"


async def test_telemetry_reaches_nobody_when_the_device_has_no_owner(server, open_client, imei, email):
    dashboard = await open_client(server.url)
    await dashboard.subscribe(email())
    device = await open_client(server.url)
    box = imei()
    await device.register(box)
    await device.telemetry(box, READINGS)
    await dashboard.sync()
    assert dashboard.events("telemetry_update") == [] and dashboard.events("device_status") == []


# --------------------------------------------------------------------------- subscriptions


async def test_subscribe_reports_devices_and_last_telemetry(server, open_client, imei, email):
    owner = email()
    watcher = await open_client(server.url)
    await watcher.subscribe(owner)
    gone, live, silent = imei(), imei(), imei()

    leaving = await open_client(server.url)
    await leaving.register(gone, owner)
    await leaving.telemetry(gone, {"speed": 1}, timestamp=1_000)
    await leaving.telemetry(gone, {"speed": 0}, timestamp=900)  # older: not the last state
    await leaving.disconnect()
    await watcher.wait_event("device_status", status_event(gone, "offline"))

    staying = await open_client(server.url)
    await staying.register(live, owner)
    await staying.telemetry(live, {"speed": 2, "extra": {"x": 1}}, timestamp=2_000)
    await staying.register(silent, owner)

    dashboard = await open_client(server.url)
    reply = await dashboard.subscribe(owner.upper())
    assert set(reply) == {"success", "email", "deviceCount", "telemetries"}
    assert reply["email"] == owner and reply["deviceCount"] == 3
    assert sorted(reply["telemetries"], key=lambda t: t["imei"]) == sorted(
        [
            {"imei": gone, "timestamp": 1_000, "data": {"speed": 1}, "connected": False},
            {"imei": live, "timestamp": 2_000, "data": {"speed": 2, "extra": {"x": 1}}, "connected": True},
        ],
        key=lambda t: t["imei"],
    )


async def test_several_subscriptions_on_one_socket(server, open_client, imei, email):
    owners = [email(), email()]
    dashboard = await open_client(server.url)
    for owner in owners:
        await dashboard.subscribe(owner)
    device = await open_client(server.url)
    boxes = [imei(), imei()]
    for box, owner in zip(boxes, owners, strict=True):
        await device.register(box, owner)
        await device.telemetry(box, {"speed": 1}, timestamp=10)
    updates = await dashboard.wait_count("telemetry_update", 2)
    assert sorted(update["imei"] for update in updates) == sorted(boxes)

    # unsubscribe_user leaves one stream and keeps the other
    await dashboard.call("unsubscribe_user", {"email": owners[0]})
    since = dashboard.mark()
    for box in boxes:
        await device.telemetry(box, {"speed": 2}, timestamp=20)
    await dashboard.wait_event("telemetry_update", lambda p: p["imei"] == boxes[1], since=since)
    await dashboard.sync()
    assert [p["imei"] for p in dashboard.payloads("telemetry_update", since)] == [boxes[1]]


async def test_unsubscribe_stops_updates_and_status(watched_device, server, open_client):
    owner, dashboard, device, box = await watched_device()
    await dashboard.wait_event("device_status", status_event(box, "online"))
    assert (await dashboard.call("unsubscribe_user", {"email": owner.upper()})) == {"success": True, "email": owner}
    watcher = await open_client(server.url)
    await watcher.subscribe(owner)
    since = dashboard.mark()
    await device.telemetry(box, {"crashDetection": 1, "batteryVoltage": 10})
    await device.disconnect()
    await watcher.wait_event("device_status", status_event(box, "offline"))  # everything went out by now
    assert [e.event for e in watcher.events()] == ["telemetry_update", "crash_detected", "vehicle_alert", "device_status"]
    await dashboard.sync()
    assert dashboard.events(since=since) == []


async def test_email_compares_case_insensitively(server, open_client, imei, email):
    owner = email()
    dashboard = await open_client(server.url)
    assert (await dashboard.call("subscribe_user", {"email": owner.upper()}))["email"] == owner
    device = await open_client(server.url)
    box = imei()
    await device.register(box, owner.title())
    await device.telemetry(box, {"speed": 3}, timestamp=3)
    assert (await dashboard.wait_event("telemetry_update"))["imei"] == box


# --------------------------------------------------------------------------- long-polling


@pytest.mark.parametrize("style", REPLY_STYLES)
async def test_polling_transport(server, open_client, http, imei, email, style):
    owner = email()
    dashboard = await open_client(server.url, transports=["polling"])
    reply = await dashboard.reply(style, "subscribe_user", {"email": owner})
    assert reply == {"success": True, "email": owner, "deviceCount": 0, "telemetries": []}
    device = await open_client(server.url, transports=["polling"])
    box = imei()
    reply = await device.reply(style, "register_device", {"imei": box, "userEmail": owner})
    assert reply == {"success": True, "imei": box, "message": "Device registered successfully"}
    await dashboard.wait_event("device_status", status_event(box, "online"))
    reply = await device.reply(style, "telemetry_data", {"imei": box, "timestamp": 77, "data": READINGS})
    assert reply == {"success": True, "message": "Telemetry processed successfully"}
    assert await dashboard.wait_event("telemetry_update") == {
        "type": "telemetry_update", "imei": box, "timestamp": 77, "data": READINGS
    }
    assert_failure(await device.reply(style, "heartbeat", {"imei": imei()}), "DEVICE_NOT_REGISTERED")
    assert (await live_devices(http, server))[box]["socketId"] == device.sid
    await device.disconnect()
    await dashboard.wait_event("device_status", status_event(box, "offline"))
