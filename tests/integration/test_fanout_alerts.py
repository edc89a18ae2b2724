"""Fan-out to an owner's dashboards (and nobody else's) and the alert rules, end to end."""

from __future__ import annotations

import json

import pytest

from ..support.clients import now_ms
from ..support.server import start_server

#: One process, and a cluster of two gateways (tests/conftest.py).
TOPOLOGIES = ("process", "cluster")

DEFAULT_ALERTS = {
    "CRASH_DETECTED": ("crash_detected", "critical", "Crash detected!"),
    "LOW_BATTERY": ("vehicle_alert", "warning", "Low battery voltage detected"),
    "HIGH_RPM": ("vehicle_alert", "warning", "High engine RPM detected"),
    "DTC_DETECTED": ("vehicle_alert", "warning", "Diagnostic trouble code detected"),
}
ALERT_EVENTS = ("vehicle_alert", "crash_detected", "health_warning")


async def owner_setup(open_client, url, imei, email, dashboards=1):
    """An owner, ``dashboards`` subscribed sockets and a registered device socket."""
    owner = email()
    watching = []
    for _ in range(dashboards):
        dashboard = await open_client(url)
        await dashboard.subscribe(owner)
        watching.append(dashboard)
    device = await open_client(url)
    box = imei()
    await device.register(box, owner)
    return owner, watching, device, box


def alerts_of(client, since=0):
    return [item for item in client.events(since=since) if item.event in ALERT_EVENTS]


def expected_alert(code: str, box: str, timestamp: int, data: dict, rules=DEFAULT_ALERTS) -> tuple[str, dict]:
    event, level, message = rules[code]
    return event, {
        "type": event,
        "imei": box,
        "timestamp": timestamp,
        "data": data,
        "alert": {"level": level, "message": message, "code": code},
    }


# --------------------------------------------------------------------------- fan-out


async def test_fanout_reaches_every_dashboard_of_the_owner_and_nobody_else(server, open_client, imei, email):
    owner, dashboards, device, box = await owner_setup(open_client, server.url, imei, email, dashboards=2)
    shouting = await open_client(server.url)
    await shouting.subscribe(owner.upper())
    dashboards.append(shouting)
    stranger = await open_client(server.url)
    await stranger.subscribe(email())
    stranger_device = await open_client(server.url)
    await stranger_device.register(imei())  # a device that is nobody's: the owner's dashboards must not see it

    data = {"speed": 88, "batteryVoltage": 11.0, "custom": [1, "two"]}
    await device.telemetry(box, data, timestamp=123)
    update = {"type": "telemetry_update", "imei": box, "timestamp": 123, "data": data}
    alert = expected_alert("LOW_BATTERY", box, 123, data)
    for dashboard in dashboards:
        await dashboard.wait_event("vehicle_alert")
        await dashboard.sync()
        received = [(item.event, item.payload) for item in dashboard.events() if item.event != "device_status"]
        assert received == [("telemetry_update", update), alert]

    await stranger.sync()
    assert stranger.events() == [], "a dashboard of another e-mail got the owner's events"
    await device.sync()
    assert device.events() == [], "the device's own socket is not a dashboard"


async def test_a_device_of_another_owner_reaches_only_its_owner(server, open_client, imei, email):
    _owner_a, (dashboard_a,), _device_a, box_a = await owner_setup(open_client, server.url, imei, email)
    _owner_b, (dashboard_b,), device_b, box_b = await owner_setup(open_client, server.url, imei, email)
    await device_b.telemetry(box_b, {"crashDetection": 2}, timestamp=9)
    await dashboard_b.wait_event("crash_detected")
    await dashboard_a.sync()
    assert [e.event for e in dashboard_a.events()] == ["device_status"]  # only its own device's online status
    assert dashboard_a.payloads("device_status")[0]["imei"] == box_a


async def test_a_new_owner_takes_the_stream(server, open_client, imei, email):
    first, (old_dashboard,), device, box = await owner_setup(open_client, server.url, imei, email)
    new_owner = email()
    new_dashboard = await open_client(server.url)
    await new_dashboard.subscribe(new_owner)
    await device.register(box, new_owner)
    since = old_dashboard.mark()
    await device.telemetry(box, {"speed": 1}, timestamp=1)
    assert (await new_dashboard.wait_event("telemetry_update"))["imei"] == box
    await old_dashboard.sync()
    assert old_dashboard.events("telemetry_update", since) == []
    assert (await new_dashboard.subscribe(new_owner))["deviceCount"] == 1
    assert (await old_dashboard.subscribe(first))["deviceCount"] == 0


# --------------------------------------------------------------------------- the default rules


@pytest.mark.parametrize(
    ("code", "data"),
    [
        ("LOW_BATTERY", {"batteryVoltage": 11.99, "speed": 10}),
        ("CRASH_DETECTED", {"crashDetection": 1, "position": {"latitude": 1.5, "longitude": 2.5}}),
        ("HIGH_RPM", {"engineRpm": 4000.5}),
        ("DTC_DETECTED", {"dtc": 133, "note": "P0133"}),
    ],
)
async def test_each_default_rule(server, open_client, imei, email, code, data):
    _, (dashboard,), device, box = await owner_setup(open_client, server.url, imei, email)
    await device.telemetry(box, data, timestamp=1703123456789)
    event, payload = expected_alert(code, box, 1703123456789, data)
    assert await dashboard.wait_event(event) == payload
    await dashboard.sync()
    assert [(item.event, item.payload) for item in alerts_of(dashboard)] == [(event, payload)]
    # the telemetry itself went out first
    names = [item.event for item in dashboard.events() if item.event != "device_status"]
    assert names == ["telemetry_update", event]


async def test_alert_without_timestamp_carries_the_servers_clock(server, open_client, imei, email):
    _, (dashboard,), device, box = await owner_setup(open_client, server.url, imei, email)
    before = now_ms()
    await device.telemetry(box, {"crashDetection": 1})
    after = now_ms()
    alert = await dashboard.wait_event("crash_detected")
    update = await dashboard.wait_event("telemetry_update")
    assert before <= alert["timestamp"] <= after and alert["timestamp"] == update["timestamp"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"batteryVoltage": 12.0, "engineRpm": 4000, "crashDetection": 0, "dtc": 0}, id="at-thresholds"),
        pytest.param({"batteryVoltage": 14.2, "engineRpm": 800, "crashDetection": -1, "dtc": -3}, id="healthy"),
        pytest.param({}, id="empty"),
        pytest.param({"speed": 50, "position": {"latitude": 0, "longitude": 0}}, id="no-alert-fields"),
        pytest.param({"batteryVoltage": None, "engineRpm": None, "crashDetection": None, "dtc": None}, id="nulls"),
        pytest.param({"battery": 1, "rpm": 9000, "crash": 1, "DTC": 1}, id="similar-names"),
    ],
)
async def test_no_alert(server, open_client, imei, email, data):
    _, (dashboard,), device, box = await owner_setup(open_client, server.url, imei, email)
    await device.telemetry(box, data, timestamp=5)
    assert (await dashboard.wait_event("telemetry_update"))["data"] == data
    await dashboard.sync()
    assert alerts_of(dashboard) == []


async def test_several_alerts_from_one_message(server, open_client, imei, email):
    _, (dashboard,), device, box = await owner_setup(open_client, server.url, imei, email)
    data = {"crashDetection": 1, "batteryVoltage": 9.5, "engineRpm": 7000, "dtc": 4, "speed": 0}
    await device.telemetry(box, data, timestamp=77)
    await dashboard.wait_count("vehicle_alert", 3)
    await dashboard.sync()
    received = sorted((item.event, json.dumps(item.payload, sort_keys=True)) for item in alerts_of(dashboard))
    expected = sorted(
        (event, json.dumps(payload, sort_keys=True))
        for event, payload in (expected_alert(code, box, 77, data) for code in DEFAULT_ALERTS)
    )
    assert received == expected
    assert dashboard.events()[1].event == "telemetry_update", "the update goes out before its alerts"


async def test_alerts_reach_every_dashboard_of_the_owner(server, open_client, imei, email):
    _, dashboards, device, box = await owner_setup(open_client, server.url, imei, email, dashboards=3)
    stranger = await open_client(server.url)
    await stranger.subscribe(email())
    await device.telemetry(box, {"crashDetection": 3}, timestamp=3)
    for dashboard in dashboards:
        assert await dashboard.wait_event("crash_detected") == expected_alert(
            "CRASH_DETECTED", box, 3, {"crashDetection": 3}
        )[1]
    await stranger.sync()
    assert stranger.events() == []


# --------------------------------------------------------------------------- configured rules

CUSTOM_RULES = [
    {"code": "HIGH_RPM", "threshold": 6000},
    {"code": "LOW_FUEL", "field": "fuelLevel", "op": "<", "threshold": 10, "level": "info", "message": "Fuel is low"},
    {"code": "HOT_ENGINE", "field": "coolantTemp", "op": ">=", "threshold": 110, "level": "critical",
     "message": "Engine overheating"},
    {"code": "DTC_DETECTED", "disabled": True},
]
CUSTOM_ALERTS = {
    **DEFAULT_ALERTS,
    "LOW_FUEL": ("health_warning", "info", "Fuel is low"),
    "HOT_ENGINE": ("vehicle_alert", "critical", "Engine overheating"),
}


@pytest.fixture(scope="module")
def custom_server(tmp_path_factory):
    """A server whose rules come from IOTHUB_ALERT_RULES."""
    directory = tmp_path_factory.mktemp("rules")
    rules = directory / "rules.json"
    rules.write_text(json.dumps(CUSTOM_RULES))
    running = start_server(directory, IOTHUB_ALERT_RULES=str(rules))
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("data", "codes"),
    [
        pytest.param({"engineRpm": 5000}, [], id="rpm-under-new-threshold"),
        pytest.param({"engineRpm": 6000.1}, ["HIGH_RPM"], id="rpm-over-new-threshold"),
        pytest.param({"fuelLevel": 9}, ["LOW_FUEL"], id="info-rule-is-health-warning"),
        pytest.param({"fuelLevel": 10}, [], id="info-rule-at-threshold"),
        pytest.param({"coolantTemp": 110}, ["HOT_ENGINE"], id="rule-on-a-sensor-of-its-own"),
        pytest.param({"dtc": 5}, [], id="disabled-rule"),
        pytest.param({"batteryVoltage": 11, "crashDetection": 1}, ["CRASH_DETECTED", "LOW_BATTERY"], id="defaults-kept"),
    ],
)
async def test_configured_rules(custom_server, open_client, imei, email, data, codes):
    _, (dashboard,), device, box = await owner_setup(open_client, custom_server.url, imei, email)
    await device.telemetry(box, data, timestamp=11)
    await dashboard.wait_event("telemetry_update")
    await dashboard.sync()
    received = sorted((item.event, json.dumps(item.payload, sort_keys=True)) for item in alerts_of(dashboard))
    expected = sorted(
        (event, json.dumps(payload, sort_keys=True))
        for event, payload in (expected_alert(code, box, 11, data, CUSTOM_ALERTS) for code in codes)
    )
    assert received == expected


# --------------------------------------------------------------------------- cooldown


async def test_cooldown_holds_back_repeats_of_a_warning_but_never_a_crash(server_factory, open_client, imei, email):
    hub = server_factory(IOTHUB_ALERT_COOLDOWN_MS="600000")
    owner, (dashboard,), device, box = await owner_setup(open_client, hub.url, imei, email)
    for timestamp in (1, 2, 3):
        await device.telemetry(box, {"batteryVoltage": 11.0, "crashDetection": 1}, timestamp=timestamp)
    # another code of the same device, and the same code of another device, are not held back
    await device.telemetry(box, {"engineRpm": 5000, "batteryVoltage": 11.5}, timestamp=4)
    other = imei()
    await device.register(other, owner)
    await device.telemetry(other, {"batteryVoltage": 11.0}, timestamp=5)
    await dashboard.wait_event("vehicle_alert", lambda alert: alert["imei"] == other)
    await dashboard.sync()
    crashes = dashboard.payloads("crash_detected")
    assert [alert["timestamp"] for alert in crashes] == [1, 2, 3]
    warnings = [(a["imei"], a["alert"]["code"], a["timestamp"]) for a in dashboard.payloads("vehicle_alert")]
    assert warnings == [(box, "LOW_BATTERY", 1), (box, "HIGH_RPM", 4), (other, "LOW_BATTERY", 5)]
    updates = [(u["imei"], u["timestamp"]) for u in dashboard.payloads("telemetry_update")]
    assert updates == [(box, 1), (box, 2), (box, 3), (box, 4), (other, 5)], "only alerts are held back"


async def test_without_cooldown_every_warning_goes_out(server, open_client, imei, email):
    _, (dashboard,), device, box = await owner_setup(open_client, server.url, imei, email)
    for timestamp in (1, 2, 3):
        await device.telemetry(box, {"batteryVoltage": 11.0}, timestamp=timestamp)
    alerts = await dashboard.wait_count("vehicle_alert", 3)
    assert [alert["timestamp"] for alert in alerts] == [1, 2, 3]
