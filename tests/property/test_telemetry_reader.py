"""The one-pass telemetry reader reads what msgspec reads, and declines the rest.

``AlertEngine.read`` (``TelemetryReader`` in ``ext/_alerts.pyx``) is the hot
path: one compiled pass over a whole ``telemetry_data`` event. For any text it
must either decline (``None``) or give exactly what the full road gives —
:func:`decode_event` and :meth:`AlertEngine.check` — the same imei, timestamp,
``data`` byte for byte, and the same rules fired. And it must actually take
the plain messages devices send, or it would be no hot path at all.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from iothub.core.alerts import AlertEngine
from iothub.core.errors import ProtocolError
from iothub.core.protocol import KNOWN_NUMERIC_FIELDS, TelemetryDataEvent, decode_event
from iothub.core.rules import merge_rules

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CUSTOM = merge_rules([{"code": "COOLANT_HOT", "field": "coolantTemp", "op": ">=", "threshold": 110, "level": "info", "message": "m"}])
ENGINES = {"default rules": AlertEngine(), "a custom field": AlertEngine(CUSTOM)}
SEED: dict[str, Any] = {
    "imei": "123456789012345",
    "timestamp": 1703123456789,
    "data": {
        "engineRpm": 2500, "speed": 65, "fuelLevel": 75, "batteryVoltage": 12.5, "crashDetection": 0, "dtc": 0,
        "position": {"latitude": 40.7128, "longitude": -74.0060},
    },
}


def full_road(engine: AlertEngine, text: str) -> tuple[str, int | None, bytes, tuple[int, ...]] | ProtocolError:
    """What decode_event and check make of the text: the message's parts, or the error."""
    try:
        event = decode_event(text)
        if not isinstance(event, TelemetryDataEvent):
            return ProtocolError("INVALID_PAYLOAD", "another event")  # type: ignore[arg-type]
        message = event.payload
        return message.imei, message.timestamp, bytes(message.data), engine.check(message.data)
    except ProtocolError as error:
        return error


def read(engine: AlertEngine, text: str) -> tuple[str, int | None, bytes, tuple[int, ...]] | None:
    reading = engine.read(text)
    if reading is None:
        return None
    message, fired = reading
    return message.imei, message.timestamp, bytes(message.data), fired


def assert_agrees(engine: AlertEngine, text: str) -> bool:
    """The reader declines or agrees with the full road; returns whether it read the text."""
    fast = read(engine, text)
    if fast is not None:
        assert fast == full_road(engine, text), text
    return fast is not None


# --------------------------------------------------------------------------- generated events

number = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -0.0, 12.0, 11.999, 4000, 4000.0001, 1e308, 5e-324, 1e-400, 2**53 + 1, 10**30])
)
json_scalar = st.none() | st.booleans() | number | st.text(max_size=12)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
field_value = number | st.none() | st.sampled_from(["12", True, [], {}])
position = st.fixed_dictionaries(
    {"latitude": number, "longitude": number}, optional={"altitude": json_value}
) | st.none() | json_value
data = st.fixed_dictionaries(
    {},
    optional={
        **{name: field_value for name in (*KNOWN_NUMERIC_FIELDS, "coolantTemp")},
        "position": position,
        "odometer": json_value,
        "note": st.text(max_size=20),
    },
)
payload = st.fixed_dictionaries(
    {
        "imei": st.text("0123456789", min_size=15, max_size=15) | st.text(min_size=14, max_size=16),
        "data": data | json_value,
    },
    optional={
        "timestamp": st.none() | st.integers(min_value=-5, max_value=2**64) | st.floats(allow_nan=False),
        "extra": json_value,
    },
)


@st.composite
def event_texts(draw: st.DrawFn) -> str:
    """A telemetry_data event as JSON writers spell it: spacing, key order, escapes all vary."""
    body = draw(payload)
    keys = draw(st.permutations(list(body)))
    ordered = {key: body[key] for key in keys}
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    if draw(st.booleans()):
        return json.dumps(["telemetry_data", ordered], separators=separators, ensure_ascii=draw(st.booleans()))
    return msgspec.json.encode(["telemetry_data", ordered]).decode()


@pytest.mark.parametrize("rules", ENGINES)
@PROPERTY
@given(text=event_texts())
def test_the_reader_declines_or_agrees_with_the_full_road(rules: str, text: str) -> None:
    assert_agrees(ENGINES[rules], text)


@pytest.mark.parametrize("rules", ENGINES)
@PROPERTY
@given(text=event_texts(), data=st.data())
def test_a_damaged_text_is_declined_or_read_as_msgspec_reads_it(rules: str, text: str, data: st.DataObject) -> None:
    """Cut, dropped, doubled or replaced characters: never read into something msgspec would not make."""
    at = data.draw(st.integers(min_value=0, max_value=len(text)))
    damage = data.draw(st.sampled_from(["cut", "drop", "double", "replace"]))
    if damage == "cut":
        text = text[:at]
    elif damage == "drop":
        text = text[:at] + text[at + 1 :]
    elif damage == "double":
        text = text[:at] + text[at : at + 1] * 2 + text[at + 1 :]
    else:
        text = text[:at] + data.draw(st.sampled_from(list('"\\{}[],:-.eE0 \x01nul\u00e9'))) + text[at + 1 :]
    assert_agrees(ENGINES[rules], text)


@PROPERTY
@given(readings=st.fixed_dictionaries({}, optional={name: number for name in KNOWN_NUMERIC_FIELDS}))
def test_plain_telemetry_is_read_in_one_pass(readings: dict[str, Any]) -> None:
    """What devices send — finite numbers, a position in range — takes the fast road, with the right alerts."""
    engine = ENGINES["default rules"]
    assume(all(abs(float(value)) < 1e308 for value in readings.values()))
    text = json.dumps(["telemetry_data", {**SEED, "data": {**readings, "position": SEED["data"]["position"]}}])
    assert assert_agrees(engine, text)


#: Any number JSON's grammar allows: long mantissas, zeros before and after, exponents of any size.
json_number_text = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,4})?", fullmatch=True)


@PROPERTY
@given(spelling=json_number_text, field=st.sampled_from(["batteryVoltage", "engineRpm", "dtc", "crashDetection"]))
def test_every_spelling_of_a_number_reads_as_msgspec_reads_it(spelling: str, field: str) -> None:
    """The reader's own number parser makes msgspec's double, or declines (a number past the largest double)."""
    engine = ENGINES["default rules"]
    text = f'["telemetry_data",{{"imei":"123456789012345","data":{{"{field}":{spelling},"speed":{spelling}}}}}]'
    read_it = assert_agrees(engine, text)
    assert read_it or not isinstance(full_road(engine, text), tuple)


# --------------------------------------------------------------------------- named cases


@pytest.mark.parametrize(
    ("data", "codes"),
    [
        (SEED["data"], []),
        ({**SEED["data"], "batteryVoltage": 11.4}, ["LOW_BATTERY"]),
        ({"crashDetection": 1, "engineRpm": 4800, "dtc": 3, "batteryVoltage": 11}, ["CRASH_DETECTED", "LOW_BATTERY", "HIGH_RPM", "DTC_DETECTED"]),
        ({"engineRpm": 4000}, []),
        ({"engineRpm": 4.0001e3}, ["HIGH_RPM"]),
        ({"dtc": 5e-324}, ["DTC_DETECTED"]),
        ({"batteryVoltage": 1.1999999999999999e1}, ["LOW_BATTERY"]),
        ({"sensors": {"engineRpm": 9000, "list": [1, {"dtc": 4}]}, "label": "\u00e9 \" \\ \n"}, []),
    ],
)
def test_the_seed_and_the_alerting_messages_are_read(data: dict[str, Any], codes: list[str]) -> None:
    engine = ENGINES["default rules"]
    text = json.dumps(["telemetry_data", {**SEED, "data": data}])
    assert assert_agrees(engine, text)
    reading = engine.read(text)
    assert reading is not None
    assert [engine.rules[index].code for index in reading[1]] == codes


def test_a_custom_field_is_read_and_fires() -> None:
    engine = ENGINES["a custom field"]
    text = json.dumps(["telemetry_data", {"imei": "123456789012345", "data": {"coolantTemp": 110}}])
    reading = engine.read(text)
    assert reading is not None and reading[0].timestamp is None
    assert [engine.rules[index].code for index in reading[1]] == ["COOLANT_HOT"]


@pytest.mark.parametrize(
    "text",
    [
        '["telemetry_data",{"imei":"123456789012345","data":{"speed":"fast"}}]',
        '["telemetry_data",{"imei":"123456789012345","data":{"speed":1e400}}]',
        '["telemetry_data",{"imei":"123456789012345","data":{"position":{"latitude":91,"longitude":0}}}]',
        '["telemetry_data",{"imei":"123456789012345","data":{"speed":1,"speed":2}}]',
        '["telemetry_data",{"imei":"123456789012345","data":[]}]',
        '["telemetry_data",{"imei":"123456789012345","data":{},"timestamp":-1}]',
        '["telemetry_data",{"imei":"123456789012345","data":{},"timestamp":1.5}]',
        '["telemetry_data",{"imei":"12345","data":{}}]',
        '["telemetry_data",{"data":{},"imei":\\000000000000000"}]',
        '["telemetry_data",{"imei":"123456789012345","data":{}},"more"]',
        '["telemetry_data",{"imei":"123456789012345","data":{"x":"\\ud800"}}]',
        '["telemetry_data",{"imei":"123456789012345","data":{"x":[' * 1 + "[" * 100 + "]" * 100 + "]}}]",
        '["heartbeat",{"imei":"123456789012345"}]',
        "not json",
    ],
)
def test_anything_but_the_plain_case_is_left_to_the_full_road(text: str) -> None:
    """Errors come from msgspec with their exact messages, so the reader declines them."""
    assert ENGINES["default rules"].read(text) is None


def test_the_reference_evaluator_reads_nothing_itself() -> None:
    """IOTHUB_EVALUATOR=reference runs the plain-Python road from end to end."""
    assert AlertEngine(evaluator="reference").read(json.dumps(["telemetry_data", SEED])) is None


def test_a_rule_set_that_watches_nothing_still_reads() -> None:
    engine = AlertEngine(())
    reading = engine.read(json.dumps(["telemetry_data", SEED]))
    assert reading is not None and reading[1] == ()
