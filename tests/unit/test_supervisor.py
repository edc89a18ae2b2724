"""The two planes of one process with plain objects: routing tables, fan-out, alerts, subscriptions, sweep.

The data plane takes telemetry and heartbeats; the supervisor registrations,
subscriptions, disconnects, directed messages and the sweep, as commands.
The front end is a recording :class:`Outbox`, the write-behind buffer a
recording :class:`Recorder`, the store a :class:`MemoryStore`, and time an
injected clock, so every test says exactly who received what, when.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from iothub.core.alerts import AlertEngine
from iothub.core.errors import HTTP_STATUS, ErrorCode, ProtocolError
from iothub.core.protocol import DeviceInfo, DeviceRegistered, Failure, HeartbeatAck, UserUnsubscribed
from iothub.core.records import AlertRecord, TelemetryRecord
from iothub.core.rules import merge_rules
from iothub.persistence.memory import MemoryStore

from ..support.planes import T0, OneProcess, RecordingRecorder, Sent

IMEI_A, IMEI_B, IMEI_C, IMEI_D = "356938035643809", "490154203237518", "012345678901234", "861234567890123"
ALICE, BOB = "alice@example.com", "bob@example.com"
TIMEOUT = 300_000


@dataclass
class Hub(OneProcess):
    store: MemoryStore = field(default_factory=MemoryStore)
    recorder: RecordingRecorder = field(default_factory=RecordingRecorder)

    async def flush(self) -> None:
        """What the write-behind buffer would do: hand the recorded rows to the store."""
        await self.store.write(self.recorder.telemetry_rows, self.recorder.alert_rows)
        self.recorder.telemetry_rows, self.recorder.alert_rows = [], []


@pytest.fixture
def make_hub() -> Callable[..., Hub]:
    def make(engine: AlertEngine | None = None, **options: Any) -> Hub:
        store, recorder = MemoryStore(), RecordingRecorder()
        built = OneProcess.build(store, recorder, engine, heartbeat_timeout_ms=TIMEOUT, **options)
        return Hub(built.plane, built.supervisor, built.outbox, built.clock, store, recorder)

    return make


@pytest.fixture
def hub(make_hub: Callable[..., Hub]) -> Hub:
    return make_hub()


async def alice_device_watched(hub: Hub, data_watchers: tuple[str, ...] = ("watcher",)) -> None:
    """Socket ``dev`` runs IMEI_A owned by ALICE; each watcher subscribes to ALICE; the outbox starts empty."""
    hub.connect("dev", *data_watchers)
    for watcher in data_watchers:
        await hub.subscribe(watcher, ALICE)
    await hub.register("dev", IMEI_A, ALICE)
    hub.outbox.sent.clear()


def status(imei: str, state: str, timestamp: int) -> tuple[str, dict[str, Any]]:
    return ("device_status", {"type": "device_status", "imei": imei, "status": state, "timestamp": timestamp})


# --------------------------------------------------------------------------- registration


async def test_register_replies_and_persists_the_owner(hub: Hub) -> None:
    hub.connect("dev")
    assert await hub.register("dev", IMEI_A, ALICE) == DeviceRegistered(imei=IMEI_A)
    assert await hub.store.owner_of(IMEI_A) == ALICE
    assert await hub.supervisor.devices() == [DeviceInfo(IMEI_A, "dev", T0, T0, ALICE)]
    assert await hub.device_count() == 1


@pytest.mark.parametrize("again_on", ["dev", "other"])
async def test_registering_again_without_email_keeps_the_owner(hub: Hub, again_on: str) -> None:
    hub.connect("dev", "other")
    await hub.register("dev", IMEI_A, ALICE)
    await hub.register(again_on, IMEI_A)
    assert [(d.socketId, d.userEmail) for d in await hub.supervisor.devices()] == [(again_on, ALICE)]
    assert hub.store.owners == {IMEI_A: ALICE}


async def test_owner_outlives_the_connection(hub: Hub) -> None:
    """The owner is persistent: a device that comes back without userEmail keeps it."""
    hub.connect("dev")
    await hub.register("dev", IMEI_A, ALICE)
    await hub.disconnect("dev")
    hub.connect("dev2")
    await hub.register("dev2", IMEI_A)
    assert (await hub.supervisor.devices())[0].userEmail == ALICE


@pytest.mark.parametrize("again_on", ["dev", "other"])
async def test_registering_with_another_email_changes_the_owner(hub: Hub, again_on: str) -> None:
    hub.connect("dev", "other")
    await hub.register("dev", IMEI_A, ALICE)
    await hub.register(again_on, IMEI_A, BOB)
    assert (await hub.supervisor.devices())[0].userEmail == BOB
    assert await hub.store.owner_of(IMEI_A) == BOB
    assert [record.imei for record in await hub.store.devices_of(ALICE)] == []


async def test_device_without_owner_is_live_and_recorded_but_sent_nowhere(hub: Hub) -> None:
    hub.connect("dev", "watcher")
    await hub.subscribe("watcher", ALICE)
    await hub.register("dev", IMEI_A)
    hub.telemetry("dev", IMEI_A, {"crashDetection": 1}, timestamp=5)
    assert (await hub.supervisor.devices())[0].userEmail is None
    assert hub.outbox.sent == []
    assert [row.imei for row in hub.recorder.telemetry_rows] == [IMEI_A]
    assert [row.code for row in hub.recorder.alert_rows] == ["CRASH_DETECTED"]


async def test_one_socket_registers_several_imeis(hub: Hub) -> None:
    """A gateway box: one socket, several devices, each taking telemetry."""
    hub.connect("gateway")
    for imei in (IMEI_A, IMEI_B, IMEI_C):
        await hub.register("gateway", imei, ALICE)
    assert sorted((d.imei, d.socketId) for d in await hub.supervisor.devices()) == sorted(
        (imei, "gateway") for imei in (IMEI_A, IMEI_B, IMEI_C)
    )
    for imei in (IMEI_A, IMEI_B, IMEI_C):
        hub.telemetry("gateway", imei, {"speed": 1})
    assert len(hub.recorder.telemetry_rows) == 3


async def test_newest_registration_on_another_socket_wins(hub: Hub) -> None:
    hub.connect("old", "new")
    await hub.register("old", IMEI_A, ALICE)
    hub.clock.advance(10)
    await hub.register("new", IMEI_A)
    assert await hub.supervisor.devices() == [DeviceInfo(IMEI_A, "new", T0 + 10, T0 + 10, ALICE)]
    for stale in (lambda: hub.telemetry("old", IMEI_A, {"speed": 1}), lambda: hub.plane.heartbeat("old", IMEI_A)):
        with pytest.raises(ProtocolError) as info:
            stale()
        assert info.value.code is ErrorCode.DEVICE_NOT_REGISTERED
    hub.telemetry("new", IMEI_A, {"speed": 1})
    assert [row.imei for row in hub.recorder.telemetry_rows] == [IMEI_A]


async def test_old_socket_leaving_does_not_take_the_device_offline(hub: Hub) -> None:
    hub.connect("old", "new", "watcher")
    await hub.subscribe("watcher", ALICE)
    await hub.register("old", IMEI_A, ALICE)
    await hub.register("new", IMEI_A)
    hub.outbox.sent.clear()
    await hub.disconnect("old")
    assert [d.socketId for d in await hub.supervisor.devices()] == ["new"]
    assert hub.outbox.sent == []


async def test_new_socket_inherits_the_last_telemetry(hub: Hub) -> None:
    hub.connect("old", "new", "watcher")
    await hub.register("old", IMEI_A, ALICE)
    hub.telemetry("old", IMEI_A, {"speed": 42}, timestamp=T0 - 5)
    await hub.register("new", IMEI_A)
    reply = await hub.subscribe("watcher", ALICE)
    assert [(t.imei, t.timestamp, bytes(t.data), t.connected) for t in reply.telemetries] == [
        (IMEI_A, T0 - 5, b'{"speed":42}', True)
    ]


async def test_registration_from_a_socket_that_has_left_binds_nothing(hub: Hub) -> None:
    """The socket disconnected while the store answered: no device may be left behind."""
    hub.connect("dev")
    await hub.disconnect("dev")
    assert await hub.register("dev", IMEI_A, ALICE) == DeviceRegistered(imei=IMEI_A)
    assert await hub.supervisor.devices() == []


# --------------------------------------------------------------------------- device_status


async def test_device_status_goes_to_the_owner_s_subscribers_only(hub: Hub) -> None:
    hub.connect("dev", "alice-1", "alice-2", "bob-1")
    await hub.subscribe("alice-1", ALICE)
    await hub.subscribe("alice-2", ALICE)
    await hub.subscribe("bob-1", BOB)
    await hub.register("dev", IMEI_A, ALICE)
    hub.clock.advance(1_000)
    await hub.disconnect("dev")
    for watcher in ("alice-1", "alice-2"):
        assert hub.outbox.received(watcher) == [status(IMEI_A, "online", T0), status(IMEI_A, "offline", T0 + 1_000)]
    assert hub.outbox.received("bob-1") == []
    assert hub.outbox.received("dev") == []


async def test_registering_again_on_the_same_socket_announces_online_again(hub: Hub) -> None:
    await alice_device_watched(hub)
    hub.clock.advance(3)
    await hub.register("dev", IMEI_A)
    assert hub.outbox.received("watcher") == [status(IMEI_A, "online", T0 + 3)]


async def test_disconnecting_socket_gets_nothing_about_its_own_devices(hub: Hub) -> None:
    """A socket that both runs a device and watches its owner is gone before the offline goes out."""
    hub.connect("both", "watcher")
    await hub.subscribe("both", ALICE)
    await hub.subscribe("watcher", ALICE)
    await hub.register("both", IMEI_A, ALICE)
    hub.outbox.sent.clear()
    await hub.disconnect("both")
    assert hub.outbox.received("both") == []
    assert hub.outbox.received("watcher") == [status(IMEI_A, "offline", T0)]


# --------------------------------------------------------------------------- telemetry


async def test_telemetry_fans_out_to_every_subscribed_socket_of_the_owner_and_nobody_else(hub: Hub) -> None:
    await alice_device_watched(hub, ("alice-1", "alice-2"))
    hub.connect("bob-1", "idle")
    await hub.subscribe("bob-1", BOB)
    hub.telemetry("dev", IMEI_A, {"speed": 80, "engineRpm": 2000}, timestamp=T0 - 1)
    update = {"type": "telemetry_update", "imei": IMEI_A, "timestamp": T0 - 1, "data": {"speed": 80, "engineRpm": 2000}}
    assert [(sent.sids, sent.event, sent.payload) for sent in hub.outbox.sent] == [
        (frozenset({"alice-1", "alice-2"}), "telemetry_update", update)
    ]
    for nobody in ("bob-1", "idle", "dev"):
        assert hub.outbox.received(nobody) == []


async def test_telemetry_without_timestamp_takes_the_server_clock(hub: Hub) -> None:
    await alice_device_watched(hub)
    now = hub.clock.advance(250)
    hub.telemetry("dev", IMEI_A, {"speed": 1})
    assert hub.outbox.received("watcher")[0][1]["timestamp"] == now
    assert hub.recorder.telemetry_rows == [TelemetryRecord(IMEI_A, now, b'{"speed":1}', now)]


async def test_telemetry_data_is_forwarded_and_recorded_byte_for_byte(hub: Hub) -> None:
    await alice_device_watched(hub)
    data = b'{"speed":  50.50, "coolantTemp": 9.1e1, "label": "caf\\u00e9", "tyres": [{"p": 2.20}]}'
    hub.telemetry("dev", IMEI_A, data, timestamp=7)
    (sent,) = hub.outbox.sent
    assert sent.raw is not None and b'"data":' + data in sent.raw
    assert hub.recorder.telemetry_rows == [TelemetryRecord(IMEI_A, 7, data, T0)]


async def test_telemetry_updates_the_heartbeat(hub: Hub) -> None:
    await alice_device_watched(hub)
    now = hub.clock.advance(9_000)
    hub.telemetry("dev", IMEI_A, {"speed": 1}, timestamp=1)
    assert (await hub.supervisor.devices())[0].lastHeartbeat == now


@pytest.mark.parametrize("imei", ["35693803564380a", "٣٥٦٩٣٨٠٣٥٦٤٣٨٠٩"])
async def test_telemetry_for_a_malformed_imei_is_invalid_imei(hub: Hub, imei: str) -> None:
    """Decoding only checks a telemetry imei's length; the supervisor names the error."""
    await alice_device_watched(hub)
    with pytest.raises(ProtocolError) as info:
        hub.telemetry("dev", imei, {"speed": 1})
    assert info.value.code is ErrorCode.INVALID_IMEI
    assert hub.outbox.sent == []


@pytest.mark.parametrize(
    ("sid", "imei"),
    [("dev", IMEI_B), ("other", IMEI_A), ("stranger", IMEI_A)],
    ids=["imei never registered", "imei registered on another socket", "socket never connected"],
)
async def test_telemetry_for_an_imei_not_registered_on_the_socket_changes_nothing(hub: Hub, sid: str, imei: str) -> None:
    await alice_device_watched(hub)
    hub.connect("other")
    before = await hub.supervisor.devices()
    hub.clock.advance(1)
    with pytest.raises(ProtocolError) as info:
        hub.telemetry(sid, imei, {"crashDetection": 1})
    assert info.value.code is ErrorCode.DEVICE_NOT_REGISTERED
    assert hub.outbox.sent == []
    assert hub.recorder.telemetry_rows == hub.recorder.alert_rows == []
    assert await hub.supervisor.devices() == before


@pytest.mark.parametrize(
    "data",
    [
        b"5",
        b"null",
        b'[{"crashDetection": 1}]',
        b'{"crashDetection": 1, "engineRpm": "9000"}',
        b'{"crashDetection": 1, "position": {"latitude": 95, "longitude": 0}}',
        b'{"crashDetection": 1, "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["number", "null", "array", "wrong type", "out of range", "too deep"],
)
async def test_invalid_data_changes_nothing(hub: Hub, data: bytes) -> None:
    """No fan-out, no record, no alert, no new last state, not even a heartbeat."""
    await alice_device_watched(hub)
    before = await hub.supervisor.devices()
    hub.clock.advance(1)
    with pytest.raises(ProtocolError) as info:
        hub.telemetry("dev", IMEI_A, data, timestamp=T0)
    assert info.value.code is ErrorCode.INVALID_PAYLOAD
    assert hub.outbox.sent == []
    assert hub.recorder.telemetry_rows == hub.recorder.alert_rows == []
    assert await hub.supervisor.devices() == before
    assert (await hub.subscribe("watcher", ALICE)).telemetries == []


async def test_heartbeat_replies_with_the_server_time_and_refreshes_the_device(hub: Hub) -> None:
    await alice_device_watched(hub)
    now = hub.clock.advance(1_234)
    assert hub.plane.heartbeat("dev", IMEI_A) == HeartbeatAck(imei=IMEI_A, timestamp=now)
    assert (await hub.supervisor.devices())[0].lastHeartbeat == now
    assert hub.outbox.sent == []


async def test_heartbeat_for_an_unregistered_imei_is_refused(hub: Hub) -> None:
    hub.connect("dev")
    with pytest.raises(ProtocolError) as info:
        hub.plane.heartbeat("dev", IMEI_A)
    assert info.value.code is ErrorCode.DEVICE_NOT_REGISTERED


# --------------------------------------------------------------------------- alerts


@pytest.mark.parametrize(
    ("data", "event", "level", "code", "message"),
    [
        ({"crashDetection": 1}, "crash_detected", "critical", "CRASH_DETECTED", "Crash detected!"),
        ({"batteryVoltage": 11.2}, "vehicle_alert", "warning", "LOW_BATTERY", "Low battery voltage detected"),
        ({"engineRpm": 5200}, "vehicle_alert", "warning", "HIGH_RPM", "High engine RPM detected"),
        ({"dtc": 2}, "vehicle_alert", "warning", "DTC_DETECTED", "Diagnostic trouble code detected"),
    ],
)
async def test_each_default_rule_sends_and_records_its_alert(
    hub: Hub, data: dict[str, Any], event: str, level: str, code: str, message: str
) -> None:
    await alice_device_watched(hub)
    hub.telemetry("dev", IMEI_A, data, timestamp=T0 - 3)
    assert hub.outbox.received("watcher")[1:] == [
        (
            event,
            {
                "type": event,
                "imei": IMEI_A,
                "timestamp": T0 - 3,
                "data": data,
                "alert": {"level": level, "message": message, "code": code},
            },
        )
    ]
    raw = msgspec.json.encode(data)
    assert hub.recorder.alert_rows == [AlertRecord(IMEI_A, T0 - 3, code, level, message, raw)]


async def test_several_alerts_from_one_message_follow_the_update_in_rule_order(hub: Hub) -> None:
    await alice_device_watched(hub)
    hub.telemetry("dev", IMEI_A, {"crashDetection": 1, "batteryVoltage": 9, "engineRpm": 6000, "dtc": 4})
    assert hub.outbox.events("watcher") == [
        "telemetry_update",
        "crash_detected",
        "vehicle_alert",
        "vehicle_alert",
        "vehicle_alert",
    ]
    assert [payload["alert"]["code"] for _, payload in hub.outbox.received("watcher")[1:]] == [
        "CRASH_DETECTED",
        "LOW_BATTERY",
        "HIGH_RPM",
        "DTC_DETECTED",
    ]
    assert [row.code for row in hub.recorder.alert_rows] == ["CRASH_DETECTED", "LOW_BATTERY", "HIGH_RPM", "DTC_DETECTED"]


@pytest.mark.parametrize("data", [{}, {"speed": 120, "fuelLevel": 3}, {"crashDetection": None, "dtc": None}])
async def test_missing_fields_fire_no_alert(hub: Hub, data: dict[str, Any]) -> None:
    await alice_device_watched(hub)
    hub.telemetry("dev", IMEI_A, data)
    assert hub.outbox.events("watcher") == ["telemetry_update"]
    assert hub.recorder.alert_rows == []


async def test_alerts_are_recorded_when_nobody_listens(hub: Hub) -> None:
    hub.connect("dev")
    await hub.register("dev", IMEI_A, ALICE)
    hub.telemetry("dev", IMEI_A, {"engineRpm": 9000})
    assert hub.outbox.sent == []
    assert [row.code for row in hub.recorder.alert_rows] == ["HIGH_RPM"]


async def test_info_rule_goes_out_as_health_warning(make_hub: Callable[..., Hub]) -> None:
    rules = merge_rules(
        [{"code": "LOW_FUEL", "field": "fuelLevel", "op": "<", "threshold": 10, "level": "info", "message": "Fuel low"}]
    )
    hub = make_hub(AlertEngine(rules))
    await alice_device_watched(hub)
    hub.telemetry("dev", IMEI_A, {"fuelLevel": 4}, timestamp=1)
    assert hub.outbox.received("watcher")[1] == (
        "health_warning",
        {
            "type": "health_warning",
            "imei": IMEI_A,
            "timestamp": 1,
            "data": {"fuelLevel": 4},
            "alert": {"level": "info", "message": "Fuel low", "code": "LOW_FUEL"},
        },
    )


async def test_cooldown_holds_back_repeated_warnings(make_hub: Callable[..., Hub]) -> None:
    """Within the cooldown a repeat is neither sent nor stored; after it, it goes out again."""
    hub = make_hub(alert_cooldown_ms=60_000)
    await alice_device_watched(hub)
    for advance in (0, 1_000, 58_999, 1, 1):
        hub.clock.advance(advance)
        hub.telemetry("dev", IMEI_A, {"batteryVoltage": 11})
    alerts = [(e, p["timestamp"]) for e, p in hub.outbox.received("watcher") if e != "telemetry_update"]
    assert alerts == [("vehicle_alert", T0), ("vehicle_alert", T0 + 60_000)]
    assert [row.timestamp for row in hub.recorder.alert_rows] == [T0, T0 + 60_000]
    assert hub.outbox.events("watcher").count("telemetry_update") == 5


async def test_cooldown_is_per_code_and_per_device(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(alert_cooldown_ms=60_000)
    await alice_device_watched(hub)
    await hub.register("dev", IMEI_B, ALICE)
    hub.telemetry("dev", IMEI_A, {"batteryVoltage": 11})
    hub.telemetry("dev", IMEI_A, {"engineRpm": 9000})
    hub.telemetry("dev", IMEI_B, {"batteryVoltage": 11})
    hub.telemetry("dev", IMEI_A, {"batteryVoltage": 11, "engineRpm": 9000})
    assert [(row.imei, row.code) for row in hub.recorder.alert_rows] == [
        (IMEI_A, "LOW_BATTERY"),
        (IMEI_A, "HIGH_RPM"),
        (IMEI_B, "LOW_BATTERY"),
    ]


@pytest.mark.parametrize(
    "overrides",
    [[], [{"code": "CRASH_DETECTED", "level": "warning"}]],
    ids=["default rule", "CRASH_DETECTED configured as a warning"],
)
async def test_cooldown_never_holds_back_a_crash(make_hub: Callable[..., Hub], overrides: list[dict[str, Any]]) -> None:
    hub = make_hub(AlertEngine(merge_rules(overrides)), alert_cooldown_ms=60_000)
    await alice_device_watched(hub)
    for _ in range(3):
        hub.clock.advance(1)
        hub.telemetry("dev", IMEI_A, {"crashDetection": 1})
    assert hub.outbox.events("watcher").count("crash_detected") == 3
    assert [row.code for row in hub.recorder.alert_rows] == ["CRASH_DETECTED"] * 3


async def test_meters_count_telemetry_alerts_and_deliveries(hub: Hub) -> None:
    await alice_device_watched(hub, ("alice-1", "alice-2"))
    hub.telemetry("dev", IMEI_A, {"engineRpm": 9000})
    hub.telemetry("dev", IMEI_A, {"speed": 1})
    meters = hub.plane.meters
    assert (meters.telemetry.total, meters.alerts.total, meters.deliveries.total) == (2, 1, 6)


# --------------------------------------------------------------------------- subscriptions


async def test_subscribe_counts_registry_devices_and_returns_last_telemetries(hub: Hub) -> None:
    """deviceCount counts every device the e-mail owns; telemetries only those that sent one."""
    hub.connect("dev-a", "dev-b", "dev-c", "dev-d", "watcher")
    for sid, imei, owner in (("dev-a", IMEI_A, ALICE), ("dev-b", IMEI_B, ALICE), ("dev-c", IMEI_C, ALICE), ("dev-d", IMEI_D, BOB)):
        await hub.register(sid, imei, owner)
    hub.telemetry("dev-a", IMEI_A, {"speed": 1}, timestamp=100)
    hub.telemetry("dev-b", IMEI_B, {"speed": 2}, timestamp=200)
    hub.telemetry("dev-d", IMEI_D, {"speed": 4}, timestamp=400)
    await hub.flush()
    await hub.disconnect("dev-b")
    await hub.disconnect("dev-c")
    await hub.store.set_owner("999999999999999", ALICE)  # registered long ago, never seen since

    reply = await hub.subscribe("watcher", ALICE)
    assert (reply.success, reply.email, reply.deviceCount) == (True, ALICE, 4)
    assert sorted((t.imei, t.timestamp, bytes(t.data), t.connected) for t in reply.telemetries) == [
        (IMEI_A, 100, b'{"speed":1}', True),
        (IMEI_B, 200, b'{"speed":2}', False),
    ]


async def test_subscribe_to_an_unknown_email_is_empty(hub: Hub) -> None:
    hub.connect("watcher")
    reply = await hub.subscribe("watcher", "nobody@example.com")
    assert (reply.deviceCount, reply.telemetries) == (0, [])
    assert await hub.supervisor.users() == ["nobody@example.com"]


@pytest.mark.parametrize(
    ("live", "stored", "expected"),
    [
        (None, 100, 100),
        (200, 100, 200),
        (100, 200, 200),
        (150, 150, 150),
    ],
    ids=["live device, stored telemetry only", "live is newer", "stored is newer", "same time"],
)
async def test_subscribe_gives_the_newest_of_live_and_stored_telemetry(
    hub: Hub, live: int | None, stored: int, expected: int
) -> None:
    """A connected device is `connected` whichever state is newer."""
    hub.connect("dev", "watcher")
    await hub.register("dev", IMEI_A, ALICE)
    await hub.store.write([TelemetryRecord(IMEI_A, stored, b'{"from":"store"}', stored)], [])
    if live is not None:
        hub.telemetry("dev", IMEI_A, {"from": "live"}, timestamp=live)
    (telemetry,) = (await hub.subscribe("watcher", ALICE)).telemetries
    assert (telemetry.timestamp, telemetry.connected) == (expected, True)
    assert msgspec.json.decode(telemetry.data)["from"] == ("live" if live is not None and live >= stored else "store")


async def test_a_socket_may_subscribe_to_several_emails(hub: Hub) -> None:
    hub.connect("dev", "watcher")
    await hub.subscribe("watcher", ALICE)
    await hub.subscribe("watcher", BOB)
    await hub.register("dev", IMEI_A, ALICE)
    await hub.register("dev", IMEI_B, BOB)
    hub.outbox.sent.clear()
    hub.telemetry("dev", IMEI_A, {"speed": 1})
    hub.telemetry("dev", IMEI_B, {"speed": 2})
    assert [payload["imei"] for _, payload in hub.outbox.received("watcher")] == [IMEI_A, IMEI_B]
    assert await hub.supervisor.users() == [ALICE, BOB]


async def test_subscribing_twice_delivers_once(hub: Hub) -> None:
    await alice_device_watched(hub)
    await hub.subscribe("watcher", ALICE)
    hub.telemetry("dev", IMEI_A, {"speed": 1})
    assert hub.outbox.events("watcher") == ["telemetry_update"]


async def test_unsubscribe_leaves_one_stream(hub: Hub) -> None:
    hub.connect("dev", "watcher")
    await hub.subscribe("watcher", ALICE)
    await hub.subscribe("watcher", BOB)
    await hub.register("dev", IMEI_A, ALICE)
    await hub.register("dev", IMEI_B, BOB)
    hub.outbox.sent.clear()
    assert await hub.unsubscribe("watcher", ALICE) == UserUnsubscribed(email=ALICE)
    hub.telemetry("dev", IMEI_A, {"speed": 1})
    hub.telemetry("dev", IMEI_B, {"speed": 2})
    assert [payload["imei"] for _, payload in hub.outbox.received("watcher")] == [IMEI_B]
    assert await hub.supervisor.users() == [BOB]


async def test_users_lists_an_email_while_any_socket_subscribes(hub: Hub) -> None:
    hub.connect("w1", "w2")
    await hub.subscribe("w1", ALICE)
    await hub.subscribe("w2", ALICE)
    await hub.unsubscribe("w1", ALICE)
    assert await hub.supervisor.users() == [ALICE]
    await hub.unsubscribe("w2", ALICE)
    assert await hub.supervisor.users() == []


async def test_unsubscribing_from_a_stream_not_joined_is_harmless(hub: Hub) -> None:
    hub.connect("w1", "w2")
    await hub.subscribe("w1", ALICE)
    assert await hub.unsubscribe("w2", ALICE) == UserUnsubscribed(email=ALICE)
    assert await hub.unsubscribe("w2", BOB) == UserUnsubscribed(email=BOB)
    assert await hub.supervisor.users() == [ALICE]
    assert await hub.send_to_user(ALICE, "ping", None) == 1


async def test_subscription_from_a_socket_that_has_left_joins_nothing(hub: Hub) -> None:
    hub.connect("dev")
    await hub.register("dev", IMEI_A, ALICE)
    reply = await hub.subscribe("gone", ALICE)
    assert reply.deviceCount == 1
    assert await hub.supervisor.users() == []


# --------------------------------------------------------------------------- disconnect and sweep


async def test_disconnect_cleans_every_table(hub: Hub) -> None:
    hub.connect("gateway", "watcher")
    await hub.subscribe("watcher", ALICE)
    await hub.subscribe("watcher", BOB)
    await hub.register("gateway", IMEI_A, ALICE)
    await hub.register("gateway", IMEI_B, ALICE)
    hub.outbox.sent.clear()
    now = hub.clock.advance(5)

    await hub.disconnect("gateway")
    offline = sorted(hub.outbox.received("watcher"), key=lambda sent: sent[1]["imei"])
    assert offline == [status(imei, "offline", now) for imei in sorted((IMEI_A, IMEI_B))]
    assert await hub.supervisor.devices() == []
    assert await hub.device_count() == 0
    assert await hub.connection_count() == 1

    await hub.disconnect("watcher")
    assert await hub.supervisor.users() == []
    assert await hub.connection_count() == 0
    for imei in (IMEI_A, IMEI_B):
        assert isinstance(await hub.send_to_device(imei, "ping", None), Failure)
    for email in (ALICE, BOB):
        assert isinstance(await hub.send_to_user(email, "ping", None), Failure)
    assert await hub.broadcast("ping", None) == 0


async def test_disconnecting_an_unknown_socket_is_harmless(hub: Hub) -> None:
    await alice_device_watched(hub)
    await hub.disconnect("never-seen")
    assert await hub.device_count() == 1
    assert await hub.supervisor.users() == [ALICE]
    assert hub.outbox.sent == []


async def test_sweep_drops_silent_devices_and_announces_them_offline(hub: Hub) -> None:
    await alice_device_watched(hub)
    await hub.register("dev", IMEI_B, ALICE)
    hub.clock.advance(200_000)
    hub.plane.heartbeat("dev", IMEI_B)
    hub.outbox.sent.clear()

    hub.clock.advance(TIMEOUT - 200_000)
    assert await hub.supervisor.sweep() == []  # exactly the timeout: not yet
    now = hub.clock.advance(1)
    assert await hub.supervisor.sweep() == [IMEI_A]
    assert hub.outbox.received("watcher") == [status(IMEI_A, "offline", now)]
    assert [d.imei for d in await hub.supervisor.devices()] == [IMEI_B]
    assert await hub.connection_count() == 2  # the socket itself stays
    with pytest.raises(ProtocolError) as info:
        hub.telemetry("dev", IMEI_A, {"speed": 1})
    assert info.value.code is ErrorCode.DEVICE_NOT_REGISTERED


async def test_telemetry_keeps_a_device_from_the_sweep(hub: Hub) -> None:
    await alice_device_watched(hub)
    hub.clock.advance(TIMEOUT)
    hub.telemetry("dev", IMEI_A, {"speed": 1}, timestamp=1)
    hub.clock.advance(TIMEOUT)
    assert await hub.supervisor.sweep() == []


async def test_swept_device_may_register_again(hub: Hub) -> None:
    await alice_device_watched(hub)
    now = hub.clock.advance(TIMEOUT + 1)
    await hub.supervisor.sweep()
    await hub.register("dev", IMEI_A)
    assert await hub.supervisor.devices() == [DeviceInfo(IMEI_A, "dev", now, now, ALICE)]
    assert hub.outbox.received("watcher")[-1] == status(IMEI_A, "online", now)
    await hub.disconnect("dev")
    assert await hub.supervisor.devices() == []


# --------------------------------------------------------------------------- operators


async def test_send_to_device_reaches_its_socket(hub: Hub) -> None:
    await alice_device_watched(hub)
    assert await hub.send_to_device(IMEI_A, "reboot", b'{"delay":5}') == 1
    assert hub.outbox.sent[-1] == Sent(frozenset({"dev"}), "reboot", b'{"delay":5}')


async def test_send_to_user_reaches_every_subscribed_socket(hub: Hub) -> None:
    await alice_device_watched(hub, ("alice-1", "alice-2"))
    assert await hub.send_to_user(ALICE, "notice", None) == 2
    assert hub.outbox.sent[-1] == Sent(frozenset({"alice-1", "alice-2"}), "notice", None)


@pytest.mark.parametrize(
    "send",
    [
        lambda hub: hub.send_to_device(IMEI_B, "ping", None),
        lambda hub: hub.send_to_user(BOB, "ping", None),
    ],
    ids=["device not connected", "nobody subscribed"],
)
async def test_directed_message_without_a_target_is_not_found(
    hub: Hub, send: Callable[[Hub], Awaitable[int | Failure]]
) -> None:
    """A failure as a value: the supervisor's replies cross processes in cluster mode."""
    await alice_device_watched(hub)
    reply = await send(hub)
    assert isinstance(reply, Failure)
    assert reply.code is ErrorCode.NOT_FOUND
    assert HTTP_STATUS[reply.code] == 404
    assert hub.outbox.sent == []


async def test_broadcast_reaches_every_connected_socket_and_counts_them(hub: Hub) -> None:
    await alice_device_watched(hub)
    hub.connect("idle")
    assert await hub.broadcast("maintenance", b'{"at":"02:00"}') == 3
    assert hub.outbox.sent[-1] == Sent(frozenset({"dev", "watcher", "idle"}), "maintenance", b'{"at":"02:00"}')
