"""The wire format of PROTOCOL.md: inbound decoding, its error codes, and outbound shapes.

Plain objects only: :func:`iothub.core.protocol.decode_event` on Socket.IO EVENT
arrays, :class:`iothub.core.alerts.AlertEngine` for the known fields of ``data``,
and the outbound structs through :func:`iothub.core.protocol.encode`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from iothub.core.alerts import AlertEngine
from iothub.core.errors import ErrorCode, ProtocolError
from iothub.core.protocol import (
    RESERVED_EVENTS,
    Alert,
    AlertEvent,
    Connections,
    Delivery,
    DeviceInfo,
    DeviceRegistered,
    DeviceStatus,
    DirectedMessage,
    Envelope,
    ErrorEnvelope,
    Failure,
    Heartbeat,
    HeartbeatAck,
    HeartbeatEvent,
    LastTelemetry,
    RegisterDevice,
    RegisterDeviceEvent,
    SubscribeUser,
    SubscribeUserEvent,
    TelemetryData,
    TelemetryDataEvent,
    TelemetryProcessed,
    TelemetryUpdate,
    UnsubscribeUser,
    UnsubscribeUserEvent,
    UserSubscribed,
    UserUnsubscribed,
    decode_event,
    encode,
    is_imei,
)

IMEI = "356938035643809"
EMAIL = "owner@example.com"
#: One valid payload per inbound event, the base every refusal test breaks.
VALID: dict[str, dict[str, Any]] = {
    "register_device": {"imei": IMEI, "userEmail": EMAIL},
    "telemetry_data": {"imei": IMEI, "timestamp": 1_700_000_000_000, "data": {"speed": 50}},
    "heartbeat": {"imei": IMEI},
    "subscribe_user": {"email": EMAIL},
    "unsubscribe_user": {"email": EMAIL},
}
IMEI_EVENTS = ("register_device", "telemetry_data", "heartbeat")
EMAIL_EVENTS = ("subscribe_user", "unsubscribe_user")


def event(name: str, payload: Any) -> bytes:
    return msgspec.json.encode([name, payload])


def with_field(name: str, field: str, value: Any) -> bytes:
    """The valid payload of ``name`` with ``field`` set to ``value``."""
    return event(name, {**VALID[name], field: value})


def without_field(name: str, field: str) -> bytes:
    return event(name, {k: v for k, v in VALID[name].items() if k != field})


def refusal(text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_event(text)
    return info.value


def assert_no_internals(error: ProtocolError) -> None:
    """A client sees no msgspec paths, tracebacks or file names."""
    for leak in ("$[", "`$", "Traceback", ".py", "msgspec"):
        assert leak not in error.message


# --------------------------------------------------------------------------- valid events


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (event("register_device", {"imei": IMEI}), RegisterDeviceEvent(RegisterDevice(IMEI))),
        (event("register_device", {"imei": IMEI, "userEmail": EMAIL}), RegisterDeviceEvent(RegisterDevice(IMEI, EMAIL))),
        (event("register_device", {"imei": IMEI, "userEmail": None}), RegisterDeviceEvent(RegisterDevice(IMEI))),
        (event("heartbeat", {"imei": IMEI}), HeartbeatEvent(Heartbeat(IMEI))),
        (event("subscribe_user", {"email": EMAIL}), SubscribeUserEvent(SubscribeUser(EMAIL))),
        (event("unsubscribe_user", {"email": EMAIL}), UnsubscribeUserEvent(UnsubscribeUser(EMAIL))),
    ],
)
def test_valid_event_decodes_into_its_struct(text: bytes, expected: object) -> None:
    assert decode_event(text) == expected
    assert decode_event(text.decode()) == expected


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("register_device", "device_registered"),
        ("telemetry_data", "telemetry_processed"),
        ("heartbeat", None),
        ("subscribe_user", "user_subscribed"),
        ("unsubscribe_user", "user_unsubscribed"),
    ],
)
def test_reply_event_follows_the_reply_table(name: str, reply: str | None) -> None:
    """Without an ack the reply goes out as PROTOCOL.md's reply event; heartbeat is ack-only."""
    assert decode_event(event(name, VALID[name])).reply_event == reply


def test_telemetry_decodes_with_and_without_timestamp() -> None:
    decoded = decode_event(event("telemetry_data", VALID["telemetry_data"]))
    assert isinstance(decoded, TelemetryDataEvent)
    assert decoded.payload.imei == IMEI
    assert decoded.payload.timestamp == 1_700_000_000_000
    assert msgspec.json.decode(decoded.payload.data) == {"speed": 50}

    untimed = decode_event(without_field("telemetry_data", "timestamp"))
    assert isinstance(untimed.payload, TelemetryData)
    assert untimed.payload.timestamp is None


@pytest.mark.parametrize("timestamp", [0, 2**53, 2**63 - 1])
def test_timestamp_accepts_any_non_negative_millisecond_count(timestamp: int) -> None:
    decoded = decode_event(with_field("telemetry_data", "timestamp", timestamp))
    assert isinstance(decoded, TelemetryDataEvent)
    assert decoded.payload.timestamp == timestamp


@pytest.mark.parametrize(
    ("name", "field", "value", "stored"),
    [
        ("register_device", "userEmail", "Fleet.Owner@Example.COM", "fleet.owner@example.com"),
        ("subscribe_user", "email", "Fleet.Owner@Example.COM", "fleet.owner@example.com"),
        ("unsubscribe_user", "email", "FLEET@EXAMPLE.COM", "fleet@example.com"),
    ],
)
def test_emails_are_lower_cased(name: str, field: str, value: str, stored: str) -> None:
    payload = decode_event(with_field(name, field, value)).payload
    assert getattr(payload, field) == stored


def test_unknown_payload_fields_and_trailing_arguments_are_ignored() -> None:
    """Clients may send more than the contract names; the known part still decodes."""
    text = b'["heartbeat", {"imei": "%s", "firmware": "1.2"}, "extra"]' % IMEI.encode()
    assert decode_event(text) == HeartbeatEvent(Heartbeat(IMEI))


@pytest.mark.parametrize(
    "data",
    [
        '{"speed":  50.50, "coolantTemp": 1e2, "label": "caf\\u00e9 \u2603", "nested": {"a": [1, 2.0, null, true]}}',
        '{"engineRpm":4000,"tyres":[{"p":2.10},{"p":2.2e0}],"empty":{}}',
        '{ }',
    ],
)
def test_telemetry_data_is_kept_byte_for_byte(data: str) -> None:
    """Unknown fields reach dashboards unchanged: spacing, number spelling and escapes included."""
    text = '["telemetry_data", {"imei": "%s", "data": %s, "timestamp": 1}]' % (IMEI, data)
    from_text = decode_event(text)
    assert isinstance(from_text, TelemetryDataEvent)
    assert bytes(from_text.payload.data) == data.encode()
    from_bytes = decode_event(text.encode())
    assert isinstance(from_bytes, TelemetryDataEvent)
    assert bytes(from_bytes.payload.data) == data.encode()


# --------------------------------------------------------------------------- refusals


BAD_IMEIS = [
    "35693803564380",  # 14 digits
    "3569380356438090",  # 16 digits
    "35693803564380a",
    " 356938035643809",
    "356938035643809\n",
    "3569380356438-9",
    "٣٥٦٩٣٨٠٣٥٦٤٣٨٠٩",  # digits, but not ASCII ones
    "",
    356938035643809,
    35693803564380.9,
    None,
    ["356938035643809"],
]
#: 15 characters but not 15 ASCII digits: telemetry_data and heartbeat only check
#: the length while decoding; the supervisor refuses them when the look-up misses.
FIFTEEN_CHARACTERS = {"35693803564380a", "3569380356438-9", "٣٥٦٩٣٨٠٣٥٦٤٣٨٠٩"}


@pytest.mark.parametrize("name", IMEI_EVENTS)
@pytest.mark.parametrize("imei", BAD_IMEIS)
def test_bad_imei_is_invalid_imei(name: str, imei: Any) -> None:
    if name in ("telemetry_data", "heartbeat") and isinstance(imei, str) and imei in FIFTEEN_CHARACTERS:
        payload = decode_event(with_field(name, "imei", imei)).payload
        assert isinstance(payload, (TelemetryData, Heartbeat))
        assert not is_imei(payload.imei)
        return
    error = refusal(with_field(name, "imei", imei))
    assert error.code is ErrorCode.INVALID_IMEI
    assert_no_internals(error)


@pytest.mark.parametrize(
    ("name", "field"),
    [("register_device", "userEmail"), ("subscribe_user", "email"), ("unsubscribe_user", "email")],
)
@pytest.mark.parametrize(
    "email",
    [
        "owner",
        "owner@example",
        "@example.com",
        "owner@.com",
        "own er@example.com",
        "owner@exa@mple.com",
        "owner@example.com\n",
        "",
        "a" * 250 + "@example.com",
        5,
        ["owner@example.com"],
    ],
)
def test_bad_email_is_invalid_email(name: str, field: str, email: Any) -> None:
    error = refusal(with_field(name, field, email))
    assert error.code is ErrorCode.INVALID_EMAIL
    assert field in error.message
    assert_no_internals(error)


@pytest.mark.parametrize("name", EMAIL_EVENTS)
def test_null_email_is_invalid_email(name: str) -> None:
    """userEmail may be null (no owner given); email may not."""
    assert refusal(with_field(name, "email", None)).code is ErrorCode.INVALID_EMAIL


@pytest.mark.parametrize("name", sorted(VALID))
@pytest.mark.parametrize("payload", ["356938035643809", 7, None, True, [], [VALID["heartbeat"]]])
def test_non_object_payload_is_invalid_payload(name: str, payload: Any) -> None:
    error = refusal(event(name, payload))
    assert error.code is ErrorCode.INVALID_PAYLOAD
    assert error.message == "payload must be an object"


@pytest.mark.parametrize("name", sorted(VALID))
def test_missing_payload_is_invalid_payload(name: str) -> None:
    error = refusal(msgspec.json.encode([name]))
    assert error.code is ErrorCode.INVALID_PAYLOAD
    assert "payload" in error.message


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("register_device", "imei"),
        ("telemetry_data", "imei"),
        ("telemetry_data", "data"),
        ("heartbeat", "imei"),
        ("subscribe_user", "email"),
        ("unsubscribe_user", "email"),
    ],
)
def test_missing_required_field_is_invalid_payload(name: str, field: str) -> None:
    """A missing field is INVALID_PAYLOAD even when it is the imei or the e-mail."""
    error = refusal(without_field(name, field))
    assert error.code is ErrorCode.INVALID_PAYLOAD
    assert f"`{field}`" in error.message
    assert_no_internals(error)


@pytest.mark.parametrize("timestamp", [-1, -1_700_000_000_000, 1.5, 1e12, "1700000000000", True, {}, 2**63])
def test_bad_timestamp_is_invalid_payload(timestamp: Any) -> None:
    """timestamp is a non-negative integer of milliseconds; the message names the field."""
    error = refusal(with_field("telemetry_data", "timestamp", timestamp))
    assert error.code is ErrorCode.INVALID_PAYLOAD
    assert error.message.startswith("timestamp: ")
    assert_no_internals(error)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (event("telemetry", VALID["heartbeat"]), "unknown event 'telemetry'"),
        (event("connect", {}), "unknown event 'connect'"),
        (event("x" * 500, {}), f"unknown event {'x' * 64!r}"),
        (b'{"event": "heartbeat", "imei": "356938035643809"}', "an event must be a JSON array starting with its name"),
        (b'"heartbeat"', "an event must be a JSON array starting with its name"),
        (b"[]", "an event must be a JSON array starting with its name"),
        (b'[5, {"imei": "356938035643809"}]', "an event must be a JSON array starting with its name"),
        (b'["heartbeat", {"imei": "356938035643809"}', "the event is not valid JSON (Input data was truncated)"),
        (b"", "the event is not valid JSON (Input data was truncated)"),
        (b"\xff\xfe", "the event is not valid JSON (invalid character)"),
        (b'["telemetry_data", NaN]', "the event is not valid JSON (invalid character)"),
    ],
)
def test_not_an_event_is_invalid_payload(text: bytes, message: str) -> None:
    """Unknown names are quoted (and cut to 64 characters); non-arrays and broken JSON say what an event is."""
    error = refusal(text)
    assert error.code is ErrorCode.INVALID_PAYLOAD
    assert error.message == message


@pytest.mark.parametrize(
    "text",
    [
        '["telemetry_data", {"imei": "%s", "data": %s}]' % (IMEI, "[" * 100_000 + "]" * 100_000),
        '["telemetry_data", {"imei": "%s", "data": {"a": %s}}]' % (IMEI, '{"a":' * 50_000 + "1" + "}" * 50_000),
        '["register_device", {"imei": "%s", "extra": %s}]' % (IMEI, "[" * 100_000 + "]" * 100_000),
    ],
)
def test_deep_nesting_is_invalid_payload_not_a_crash(text: str) -> None:
    """The decoder's RecursionError becomes a client error."""
    error = refusal(text)
    assert error.code is ErrorCode.INVALID_PAYLOAD
    assert error.message == "payload is nested too deeply"


def test_deeply_nested_payload_in_place_of_the_object_is_invalid_payload() -> None:
    assert refusal('["heartbeat", %s]' % ("[" * 100_000 + "]" * 100_000)).code is ErrorCode.INVALID_PAYLOAD


# --------------------------------------------------------------------------- the known fields of data

# ``decode_event`` keeps ``data`` raw; its known fields are checked when the
# alert engine reads them, with the field path in the message.


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"engineRpm": 3000, "speed": 88.5, "fuelLevel": 0, "batteryVoltage": 12.6, "crashDetection": 0, "dtc": 0},
        {"engineRpm": None, "speed": None},
        {"position": {"latitude": 90, "longitude": 180}},
        {"position": {"latitude": -90.0, "longitude": -180.0}},
        {"position": None},
        {"speed": -3, "odometer": "12 km", "tags": ["a"], "position2": {"latitude": 500}},
    ],
)
def test_valid_data_is_accepted(data: dict[str, Any]) -> None:
    """Known fields may be absent or null, ranges are inclusive, unknown fields are free-form."""
    assert AlertEngine().check(msgspec.json.encode(data)) == ()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"5", "data"),
        (b"null", "data"),
        (b'"engineRpm"', "data"),
        (b"[1, 2]", "data"),
        (b'{"engineRpm": "4500"}', "data.engineRpm"),
        (b'{"speed": true}', "data.speed"),
        (b'{"fuelLevel": [50]}', "data.fuelLevel"),
        (b'{"batteryVoltage": {"v": 12}}', "data.batteryVoltage"),
        (b'{"crashDetection": false}', "data.crashDetection"),
        (b'{"dtc": "P0300"}', "data.dtc"),
        (b'{"engineRpm": 1e400}', "data.engineRpm"),
        (b'{"position": "52.1,4.3"}', "data.position"),
        (b'{"position": {"latitude": 52.1}}', "data.position"),
        (b'{"position": {"latitude": "52.1", "longitude": 4.3}}', "data.position.latitude"),
        (b'{"position": {"latitude": 90.0001, "longitude": 0}}', "data.position.latitude"),
        (b'{"position": {"latitude": -91, "longitude": 0}}', "data.position.latitude"),
        (b'{"position": {"latitude": 0, "longitude": 180.5}}', "data.position.longitude"),
        (b'{"position": {"latitude": 0, "longitude": -181}}', "data.position.longitude"),
    ],
)
def test_invalid_data_is_invalid_payload_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        AlertEngine().check(msgspec.Raw(data))
    assert info.value.code is ErrorCode.INVALID_PAYLOAD
    assert info.value.message.startswith(f"{field}: ")
    assert_no_internals(info.value)


def test_deeply_nested_data_is_invalid_payload() -> None:
    with pytest.raises(ProtocolError) as info:
        AlertEngine().check(b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert info.value.code is ErrorCode.INVALID_PAYLOAD


# --------------------------------------------------------------------------- server → client

RAW = msgspec.Raw(b'{"speed":50,"coolantTemp":91.50}')
DATA = {"speed": 50, "coolantTemp": 91.5}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            TelemetryUpdate(imei=IMEI, timestamp=5, data=RAW),
            {"type": "telemetry_update", "imei": IMEI, "timestamp": 5, "data": DATA},
        ),
        (
            AlertEvent("vehicle_alert", IMEI, 5, RAW, Alert("warning", "High engine RPM detected", "HIGH_RPM")),
            {
                "type": "vehicle_alert",
                "imei": IMEI,
                "timestamp": 5,
                "data": DATA,
                "alert": {"level": "warning", "message": "High engine RPM detected", "code": "HIGH_RPM"},
            },
        ),
        (
            DeviceStatus(imei=IMEI, status="offline", timestamp=7),
            {"type": "device_status", "imei": IMEI, "status": "offline", "timestamp": 7},
        ),
        (
            DeviceRegistered(imei=IMEI),
            {"success": True, "imei": IMEI, "message": "Device registered successfully"},
        ),
        (TelemetryProcessed(), {"success": True, "message": "Telemetry processed successfully"}),
        (
            UserSubscribed(email=EMAIL, deviceCount=2, telemetries=[LastTelemetry(IMEI, 5, RAW, False)]),
            {
                "success": True,
                "email": EMAIL,
                "deviceCount": 2,
                "telemetries": [{"imei": IMEI, "timestamp": 5, "data": DATA, "connected": False}],
            },
        ),
        (UserUnsubscribed(email=EMAIL), {"success": True, "email": EMAIL}),
        (HeartbeatAck(imei=IMEI, timestamp=9), {"success": True, "imei": IMEI, "timestamp": 9}),
        (
            Failure.of(ProtocolError(ErrorCode.DEVICE_NOT_REGISTERED, "register first")),
            {"success": False, "code": "DEVICE_NOT_REGISTERED", "message": "register first"},
        ),
        (
            Connections([DeviceInfo(IMEI, "sid1", 1, 2, None)], [EMAIL], 3, 4),
            {
                "devices": [
                    {"imei": IMEI, "socketId": "sid1", "connectedAt": 1, "lastHeartbeat": 2, "userEmail": None}
                ],
                "users": [EMAIL],
                "totalConnections": 3,
                "timestamp": 4,
            },
        ),
        (Delivery("maintenance", 12), {"event": "maintenance", "recipients": 12}),
        (Envelope(True, "ok"), {"success": True, "message": "ok"}),
        (
            ErrorEnvelope("no", ErrorCode.NOT_FOUND),
            {"success": False, "message": "no", "code": "NOT_FOUND"},
        ),
        (Envelope(True, "ok", data=[1]), {"success": True, "message": "ok", "data": [1]}),
    ],
)
def test_outbound_message_has_the_protocol_shape(message: msgspec.Struct, expected: dict[str, Any]) -> None:
    assert msgspec.json.decode(encode(message)) == expected


def test_outbound_data_is_forwarded_byte_for_byte() -> None:
    raw = msgspec.Raw(b'{"speed":  50.50, "x": "\\u00e9"}')
    assert b'"data":{"speed":  50.50, "x": "\\u00e9"}' in encode(TelemetryUpdate(imei=IMEI, timestamp=1, data=raw))


# --------------------------------------------------------------------------- DirectedMessage

decode_directed = msgspec.json.Decoder(DirectedMessage).decode


@pytest.mark.parametrize("name", ["a", "maintenance_window", "x" * 64, "with space", "café"])
def test_directed_message_accepts_ordinary_names(name: str) -> None:
    message = decode_directed(msgspec.json.encode({"event": name, "data": {"k": 1}}))
    assert message.event == name
    assert isinstance(message.data, msgspec.Raw)
    assert bytes(message.data) == b'{"k":1}'


def test_directed_message_data_is_optional() -> None:
    assert decode_directed(b'{"event": "ping"}').data is msgspec.UNSET


@pytest.mark.parametrize(
    "body",
    [
        *({"event": name} for name in sorted(RESERVED_EVENTS)),
        {"event": ""},
        {"event": "x" * 65},
        {"event": 5},
        {"event": None},
        {"data": {}},
    ],
)
def test_directed_message_refuses_reserved_empty_long_or_missing_names(body: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_directed(msgspec.json.encode(body))


def test_reserved_event_names_are_the_protocol_list() -> None:
    assert {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
    } == RESERVED_EVENTS
