"""Hostile and broken input: each is refused with PROTOCOL.md's code, and nothing else breaks.

The module shares one server; the last test checks that after everything
before it the server still runs and serves other clients normally.
"""

from __future__ import annotations

import asyncio

import pytest

from ..support.clients import REPLY_STYLES, RawJson, assert_failure

REGISTERED = "111111111111111"  # registered on the test's socket before each case
DEEP = "[" * 5000 + "]" * 5000
NOTHING = object()  # the event is sent with no argument at all


def cases():
    """(id, event, payload, code): every client event with wrong types, missing fields and non-objects."""
    yield "unknown-event", "frobnicate", {"imei": REGISTERED}, "INVALID_PAYLOAD"
    yield "unknown-event-no-payload", "do_it", NOTHING, "INVALID_PAYLOAD"
    yield "unknown-event-huge-name", "x" * 100_000, {}, "INVALID_PAYLOAD"
    yield "event-name-number", RawJson("42"), {}, "INVALID_PAYLOAD"
    yield "event-name-null", RawJson("null"), {}, "INVALID_PAYLOAD"
    yield "not-json", "telemetry_data", RawJson('{"imei": "111111111111111", "data": {"speed": NaN}}'), "INVALID_PAYLOAD"
    for event in ("register_device", "telemetry_data", "heartbeat", "subscribe_user", "unsubscribe_user"):
        yield f"{event}-no-payload", event, NOTHING, "INVALID_PAYLOAD"
        yield f"{event}-null", event, RawJson("null"), "INVALID_PAYLOAD"
        yield f"{event}-string", event, "111111111111111", "INVALID_PAYLOAD"
        yield f"{event}-number", event, 111111111111111, "INVALID_PAYLOAD"
        yield f"{event}-list", event, [{"imei": REGISTERED, "email": "a@example.com"}], "INVALID_PAYLOAD"
        yield f"{event}-true", event, True, "INVALID_PAYLOAD"
        yield f"{event}-empty-object", event, {}, "INVALID_PAYLOAD"
        yield f"{event}-binary", event, b"\x00\x01binary", "INVALID_PAYLOAD"
        yield f"{event}-deep", event, RawJson(DEEP), "INVALID_PAYLOAD"
    for event in ("register_device", "heartbeat"):
        for name, imei in {
            "number": 111111111111111, "short": "12345", "long": "1234567890123456", "letters": "11111111111111a",
            "spaces": " 111111111111111", "null": None, "list": ["111111111111111"], "object": {"v": "1"},
            "unicode-digits": "١١١١١١١١١١١١١١١", "huge": "1" * 200_000,
        }.items():
            yield f"{event}-imei-{name}", event, {"imei": imei}, "INVALID_IMEI"
    yield "register-email-bad", "register_device", {"imei": REGISTERED, "userEmail": "nobody"}, "INVALID_EMAIL"
    yield "register-email-number", "register_device", {"imei": REGISTERED, "userEmail": 7}, "INVALID_EMAIL"
    yield "register-email-long", "register_device", {"imei": REGISTERED, "userEmail": "a" * 250 + "@b.co"}, "INVALID_EMAIL"
    for event in ("subscribe_user", "unsubscribe_user"):
        for name, email in {
            "plain": "nobody", "no-domain-dot": "a@b", "spaces": "a b@example.com", "two-ats": "a@b@example.com",
            "number": 5, "null": None, "list": ["a@example.com"], "huge": "a" * 200_000 + "@example.com",
        }.items():
            yield f"{event}-email-{name}", event, {"email": email}, "INVALID_EMAIL"
    telemetry = {
        "imei-bad": ({"imei": "1", "data": {}}, "INVALID_IMEI"),
        "no-data": ({"imei": REGISTERED}, "INVALID_PAYLOAD"),
        "data-string": ({"imei": REGISTERED, "data": "speed=5"}, "INVALID_PAYLOAD"),
        "data-number": ({"imei": REGISTERED, "data": 5}, "INVALID_PAYLOAD"),
        "data-list": ({"imei": REGISTERED, "data": [{"speed": 5}]}, "INVALID_PAYLOAD"),
        "data-null": ({"imei": REGISTERED, "data": None}, "INVALID_PAYLOAD"),
        "data-binary": ({"imei": REGISTERED, "data": b"\x01\x02"}, "INVALID_PAYLOAD"),
        "data-field-binary": ({"imei": REGISTERED, "data": {"blob": b"\x01\x02"}}, "INVALID_PAYLOAD"),
        "data-deep": (RawJson('{"imei": "%s", "data": {"deep": %s}}' % (REGISTERED, DEEP)), "INVALID_PAYLOAD"),
        "timestamp-string": ({"imei": REGISTERED, "data": {}, "timestamp": "now"}, "INVALID_PAYLOAD"),
        "timestamp-negative": ({"imei": REGISTERED, "data": {}, "timestamp": -1}, "INVALID_PAYLOAD"),
        "timestamp-fraction": ({"imei": REGISTERED, "data": {}, "timestamp": 1.5}, "INVALID_PAYLOAD"),
        "timestamp-object": ({"imei": REGISTERED, "data": {}, "timestamp": {}}, "INVALID_PAYLOAD"),
        "unregistered": ({"imei": "222222222222222", "data": {}}, "DEVICE_NOT_REGISTERED"),
    }
    for field in ("engineRpm", "speed", "fuelLevel", "batteryVoltage", "crashDetection", "dtc"):
        telemetry[f"{field}-string"] = ({"imei": REGISTERED, "data": {field: "5"}}, "INVALID_PAYLOAD")
        telemetry[f"{field}-bool"] = ({"imei": REGISTERED, "data": {field: True}}, "INVALID_PAYLOAD")
        telemetry[f"{field}-object"] = ({"imei": REGISTERED, "data": {field: {"value": 5}}}, "INVALID_PAYLOAD")
    for name, position in {
        "latitude-over": {"latitude": 90.0001, "longitude": 0},
        "latitude-under": {"latitude": -91, "longitude": 0},
        "longitude-over": {"latitude": 0, "longitude": 180.5},
        "longitude-under": {"latitude": 0, "longitude": -181},
        "latitude-string": {"latitude": "40.7", "longitude": 0},
        "no-longitude": {"latitude": 0},
        "string": "40.7,-74.0",
        "list": [40.7, -74.0],
    }.items():
        telemetry[f"position-{name}"] = ({"imei": REGISTERED, "data": {"position": position}}, "INVALID_PAYLOAD")
    for name, (payload, code) in telemetry.items():
        yield f"telemetry-{name}", "telemetry_data", payload, code
    yield "heartbeat-unregistered", "heartbeat", {"imei": "222222222222222"}, "DEVICE_NOT_REGISTERED"


CASES = list(cases())


async def send(client, style, event, payload):
    if payload is NOTHING:
        return await client.reply(style, event)
    return await client.reply(style, event, payload)


async def assert_still_works(client) -> None:
    """The socket is connected, answers, and its registration still holds."""
    assert client.connected
    reply = await client.call("heartbeat", {"imei": REGISTERED})
    assert reply["success"] is True and reply["imei"] == REGISTERED, reply


@pytest.mark.parametrize("style", REPLY_STYLES)
@pytest.mark.parametrize(("event", "payload", "code"), [pytest.param(*case[1:], id=case[0]) for case in CASES])
async def test_refused(server, open_client, style, event, payload, code):
    client = await open_client(server.url)
    await client.register(REGISTERED)
    reply = await send(client, style, event, payload)
    assert_failure(reply, code)
    assert len(reply["message"]) < 300, "the reply does not echo the input"
    await assert_still_works(client)


async def test_several_megabytes_under_the_limit_pass_through(watched_device):
    _owner, dashboard, device, box = await watched_device()
    data = {"speed": 1, "blob": "z" * (4 * 1024 * 1024), "samples": list(range(50_000))}
    await device.telemetry(box, data, timestamp=1)
    update = await dashboard.wait_event("telemetry_update", timeout=15)
    assert update == {"type": "telemetry_update", "imei": box, "timestamp": 1, "data": data}


async def test_extra_fields_and_arguments_are_ignored(server, open_client, imei):
    client = await open_client(server.url)
    box = imei()
    reply = await client.call("register_device", {"imei": box, "firmware": "1.2", "userEmail": None})
    assert reply == {"success": True, "imei": box, "message": "Device registered successfully"}
    reply = await client.sio.call("heartbeat", ({"imei": box}, "extra", 3), timeout=5)
    assert reply["success"] is True and reply["imei"] == box


@pytest.fixture
def small(server_factory):
    return server_factory(MAX_PAYLOAD_BYTES="2048")


@pytest.mark.parametrize("style", REPLY_STYLES)
async def test_payload_over_max_payload_bytes(small, open_client, imei, email, style):
    owner = email()
    dashboard = await open_client(small.url)
    await dashboard.subscribe(owner)
    client = await open_client(small.url)
    box = imei()
    await client.register(box, owner)
    for event, payload in (
        ("telemetry_data", {"imei": box, "data": {"blob": "x" * 4096}}),
        ("telemetry_data", {"imei": box, "data": {"blob": "é" * 1500}}),  # 3000 bytes in fewer characters
        ("register_device", {"imei": "1" * 100_000}),
        ("nonsense", {"blob": "x" * 50_000}),
    ):
        assert_failure(await send(client, style, event, payload), "PAYLOAD_TOO_LARGE")
    await client.telemetry(box, {"blob": "x" * 1500}, timestamp=2)
    assert (await dashboard.wait_event("telemetry_update"))["data"] == {"blob": "x" * 1500}
    await dashboard.sync()
    assert [u["timestamp"] for u in dashboard.payloads("telemetry_update")] == [2], "an oversized message went out"
    assert client.connected


async def test_rate_limit(server_factory, open_client, imei):
    limited = server_factory(IOTHUB_RATE_LIMIT="1", IOTHUB_RATE_BURST="3")
    client = await open_client(limited.url)
    box = imei()
    await client.register(box)  # one of the three
    replies = await asyncio.gather(*(client.call("heartbeat", {"imei": box}) for _ in range(30)))
    assert [r["success"] for r in replies[:2]] == [True, True], replies[:2]
    refused = [r for r in replies if r["success"] is False]
    assert len(refused) >= 20, replies
    for reply in refused:
        assert_failure(reply, "RATE_LIMITED")
    # without acknowledgement the refusal is the event error
    since = client.mark()
    await client.emit("heartbeat", {"imei": box})
    assert_failure(await client.wait_event("error", since=since), "RATE_LIMITED")
    # the socket stays connected; another socket has a budget of its own
    other = await open_client(limited.url)
    await other.register(imei())
    assert client.connected

    # the budget comes back: within a few seconds an event is accepted again
    async def accepted():
        reply = await client.call("heartbeat", {"imei": box})
        return reply["success"] is True

    deadline = asyncio.get_running_loop().time() + 5
    while not await accepted():
        assert asyncio.get_running_loop().time() < deadline, "the budget never came back"
        await asyncio.sleep(0.2)
    assert client.connected


async def test_nothing_broke(server, open_client, http, imei, email):
    """After all of the above on this server, on one socket: it and the server still work."""
    client = await open_client(server.url)
    await client.register(REGISTERED)
    for _, event, payload, code in CASES:
        for style in REPLY_STYLES:
            reply = await send(client, style, event, payload)
            assert reply["code"] == code, (event, reply)
    await assert_still_works(client)
    assert server.process.poll() is None, "the server process died"

    owner = email()
    dashboard = await open_client(server.url)
    reply = await dashboard.subscribe(owner)
    assert reply == {"success": True, "email": owner, "deviceCount": 0, "telemetries": []}
    device = await open_client(server.url)
    box = imei()
    await device.register(box, owner)
    await device.telemetry(box, {"speed": 3, "batteryVoltage": 11}, timestamp=9)
    assert await dashboard.wait_event("telemetry_update") == {
        "type": "telemetry_update", "imei": box, "timestamp": 9, "data": {"speed": 3, "batteryVoltage": 11}
    }
    assert (await dashboard.wait_event("vehicle_alert"))["alert"]["code"] == "LOW_BATTERY"
    # the bad socket can do the real thing too
    await client.register(box, owner)
    await client.telemetry(box, {"speed": 4}, timestamp=10)
    await dashboard.wait_event("telemetry_update", lambda update: update["timestamp"] == 10)
    async with http.get(server.url + "/health") as response:
        assert response.status == 200
    # nothing ended in an unexpected exception on the server
    log = server.log()
    assert "Traceback" not in log and "failed" not in log, log[-3000:]
