"""Alert rules: the four defaults, how configuration changes them, and the engine that runs them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import iothub.core._alerts
from iothub.core.alerts import AlertEngine, EvaluatorKind
from iothub.core.errors import ErrorCode, ProtocolError
from iothub.core.protocol import Alert
from iothub.core.rules import DEFAULT_RULES, AlertRule, merge_rules

KINDS: tuple[EvaluatorKind, ...] = ("compiled", "reference")
COOLANT = {
    "code": "HOT_ENGINE",
    "field": "coolantTemp",
    "op": ">=",
    "threshold": 110,
    "level": "warning",
    "message": "Engine is overheating",
}


def by_code(rules: tuple[AlertRule, ...]) -> dict[str, AlertRule]:
    return {rule.code: rule for rule in rules}


def fired_codes(engine: AlertEngine, data: dict[str, Any]) -> list[str]:
    return [engine.rules[index].code for index in engine.check(msgspec.json.encode(data))]


# --------------------------------------------------------------------------- the defaults


@pytest.mark.parametrize(
    ("code", "field", "op", "threshold", "level", "event", "message"),
    [
        ("CRASH_DETECTED", "crashDetection", ">", 0, "critical", "crash_detected", "Crash detected!"),
        ("LOW_BATTERY", "batteryVoltage", "<", 12.0, "warning", "vehicle_alert", "Low battery voltage detected"),
        ("HIGH_RPM", "engineRpm", ">", 4000, "warning", "vehicle_alert", "High engine RPM detected"),
        ("DTC_DETECTED", "dtc", ">", 0, "warning", "vehicle_alert", "Diagnostic trouble code detected"),
    ],
)
def test_default_rule_is_the_protocol_table_row(
    code: str, field: str, op: str, threshold: float, level: str, event: str, message: str
) -> None:
    rule = by_code(DEFAULT_RULES)[code]
    assert (rule.field, rule.op, rule.threshold, rule.level, rule.message) == (field, op, threshold, level, message)
    assert rule.event_name == event


def test_there_are_exactly_the_four_default_rules() -> None:
    assert [rule.code for rule in DEFAULT_RULES] == ["CRASH_DETECTED", "LOW_BATTERY", "HIGH_RPM", "DTC_DETECTED"]


@pytest.mark.parametrize(
    ("code", "level", "event", "expected"),
    [
        ("CRASH_DETECTED", "critical", None, "crash_detected"),
        ("CRASH_DETECTED", "warning", None, "crash_detected"),
        ("OVERHEAT", "critical", None, "vehicle_alert"),
        ("OVERHEAT", "warning", None, "vehicle_alert"),
        ("TYRE_PRESSURE", "info", None, "health_warning"),
        ("TYRE_PRESSURE", "info", "tyre_check", "tyre_check"),
        ("CRASH_DETECTED", "critical", "airbag_fired", "airbag_fired"),
        ("OVERHEAT", "warning", "engine_alert", "engine_alert"),
    ],
)
def test_event_name(code: str, level: str, event: str | None, expected: str) -> None:
    """CRASH_DETECTED → crash_detected, info → health_warning, other levels → vehicle_alert; `event` wins."""
    assert AlertRule(code, "speed", ">", 0.0, level, "m", event).event_name == expected  # type: ignore[arg-type]


# --------------------------------------------------------------------------- merge_rules


def test_no_overrides_keep_the_defaults() -> None:
    assert merge_rules([]) == DEFAULT_RULES


def test_partial_override_changes_only_what_it_names() -> None:
    merged = merge_rules([{"code": "HIGH_RPM", "threshold": 5000}, {"code": "LOW_BATTERY", "level": "critical"}])
    defaults = by_code(DEFAULT_RULES)
    assert [rule.code for rule in merged] == [rule.code for rule in DEFAULT_RULES]
    assert by_code(merged)["HIGH_RPM"] == msgspec.structs.replace(defaults["HIGH_RPM"], threshold=5000.0)
    assert by_code(merged)["LOW_BATTERY"] == msgspec.structs.replace(defaults["LOW_BATTERY"], level="critical")
    assert by_code(merged)["DTC_DETECTED"] == defaults["DTC_DETECTED"]


def test_later_override_of_the_same_code_wins() -> None:
    merged = merge_rules([{"code": "HIGH_RPM", "threshold": 5000}, {"code": "HIGH_RPM", "threshold": 6000}])
    assert by_code(merged)["HIGH_RPM"].threshold == 6000


@pytest.mark.parametrize("code", ["DTC_DETECTED", "CRASH_DETECTED"])
def test_disabled_rule_is_removed(code: str) -> None:
    merged = merge_rules([{"code": code, "disabled": True}])
    assert code not in by_code(merged)
    assert len(merged) == 3


def test_disabling_an_unknown_code_changes_nothing() -> None:
    assert merge_rules([{"code": "NO_SUCH_RULE", "disabled": True}]) == DEFAULT_RULES


def test_disabled_false_keeps_the_rule_and_applies_the_rest() -> None:
    merged = merge_rules([{"code": "HIGH_RPM", "disabled": False, "threshold": 4500}])
    assert by_code(merged)["HIGH_RPM"].threshold == 4500


def test_whole_new_rule_is_appended() -> None:
    merged = merge_rules([COOLANT])
    assert merged[:4] == DEFAULT_RULES
    assert merged[4] == AlertRule("HOT_ENGINE", "coolantTemp", ">=", 110.0, "warning", "Engine is overheating")


def test_merge_over_another_base() -> None:
    base = (AlertRule("SLOW", "speed", "<", 5.0, "info", "Slow"),)
    assert merge_rules([{"code": "SLOW", "threshold": 10}], base) == (
        AlertRule("SLOW", "speed", "<", 10.0, "info", "Slow"),
    )


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ([{"code": "NEW_RULE", "field": "speed", "op": ">", "threshold": 1}], "NEW_RULE"),
        ([{"code": "NEW_RULE", "field": "speed", "op": ">", "threshold": 1}], "missing required field `level`"),
        ([{"code": "HIGH_RPM", "op": "=>"}], "'=>'"),
        ([{"code": "HIGH_RPM", "op": "=>"}], "HIGH_RPM"),
        ([{"code": "HIGH_RPM", "level": "fatal"}], "'fatal'"),
        ([{"code": "HIGH_RPM", "threshold": "high"}], "threshold"),
        ([{"code": "HIGH_RPM", "thresold": 5000}], "thresold"),
        ([{"code": "HIGH_RPM", "message": ""}], "message"),
        ([{"code": "HIGH_RPM", "field": "engine rpm"}], "field"),
        ([{"code": "HIGH_RPM", "event": "Vehicle-Alert"}], "event"),
        ([{**COOLANT, "code": "hot_engine"}], "hot_engine"),
        ([{**COOLANT, "code": "hot_engine"}], "code"),
        ([{"threshold": 1}], "alert rule #1 needs a string 'code'"),
        ([COOLANT, {"code": 7}], "alert rule #2 needs a string 'code'"),
        (["HIGH_RPM"], "alert rule #1 needs a string 'code'"),
    ],
)
def test_invalid_rule_raises_value_error_naming_the_problem(overrides: list[Any], problem: str) -> None:
    with pytest.raises(ValueError) as info:
        merge_rules(overrides)
    assert problem in str(info.value)


# --------------------------------------------------------------------------- AlertEngine


def test_engine_runs_the_compiled_extension_by_default() -> None:
    """The Cython evaluator is built and is what the default engine runs."""
    engine = AlertEngine()
    assert engine.kind == "compiled"
    assert isinstance(engine._evaluate, iothub.core._alerts.CompiledEvaluator)
    assert isinstance(getattr(engine.read, "__self__", None), iothub.core._alerts.TelemetryReader)


def test_engine_runs_the_reference_when_asked() -> None:
    engine = AlertEngine(evaluator="reference")
    assert engine.kind == "reference"
    assert not isinstance(engine._evaluate, iothub.core._alerts.CompiledEvaluator)


def test_engine_alerts_follow_its_rules() -> None:
    engine = AlertEngine(merge_rules([COOLANT]))
    assert engine.alerts == tuple(Alert(rule.level, rule.message, rule.code) for rule in engine.rules)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("data", "codes"),
    [
        ({}, []),
        ({"speed": 200, "fuelLevel": 0, "note": "unknown fields are ignored"}, []),
        ({"crashDetection": 1}, ["CRASH_DETECTED"]),
        ({"batteryVoltage": 11.5}, ["LOW_BATTERY"]),
        ({"engineRpm": 4500}, ["HIGH_RPM"]),
        ({"dtc": 3}, ["DTC_DETECTED"]),
        (
            {"crashDetection": 1, "batteryVoltage": 10, "engineRpm": 7000, "dtc": 1},
            ["CRASH_DETECTED", "LOW_BATTERY", "HIGH_RPM", "DTC_DETECTED"],
        ),
        ({"engineRpm": 4500, "dtc": 2, "batteryVoltage": 12.5}, ["HIGH_RPM", "DTC_DETECTED"]),
        ({"crashDetection": None, "batteryVoltage": None}, []),
    ],
)
def test_engine_fires_the_default_rules_in_rule_order(kind: EvaluatorKind, data: dict[str, Any], codes: list[str]) -> None:
    assert fired_codes(AlertEngine(evaluator=kind), data) == codes


@pytest.mark.parametrize("data", [b'{"engineRpm": 4500}', "{\"engineRpm\": 4500}", msgspec.Raw(b'{"engineRpm": 4500}')])
def test_engine_checks_raw_bytes_or_text(data: Any) -> None:
    assert AlertEngine().check(data) == (2,)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"engineRpm": "4500"}, "data.engineRpm"),
        ({"batteryVoltage": True}, "data.batteryVoltage"),
        ({"coolantTemp": "hot"}, "data.coolantTemp"),
        ({"position": {"latitude": 0, "longitude": 200}}, "data.position.longitude"),
        ([], "data"),
    ],
)
def test_wrong_type_is_invalid_payload_with_the_field_path(kind: EvaluatorKind, data: Any, field: str) -> None:
    engine = AlertEngine(merge_rules([COOLANT]), kind)
    with pytest.raises(ProtocolError) as info:
        engine.check(msgspec.json.encode(data))
    assert info.value.code is ErrorCode.INVALID_PAYLOAD
    assert info.value.message.startswith(f"{field}: ")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("data", "codes"),
    [
        ({"coolantTemp": 109.9}, []),
        ({"coolantTemp": 110}, ["HOT_ENGINE"]),
        ({"coolantTemp": 130, "engineRpm": 5000}, ["HIGH_RPM", "HOT_ENGINE"]),
        ({"engineRpm": 5000}, ["HIGH_RPM"]),
    ],
)
def test_extra_rule_watches_a_custom_field(kind: EvaluatorKind, data: dict[str, Any], codes: list[str]) -> None:
    assert fired_codes(AlertEngine(merge_rules([COOLANT]), kind), data) == codes


def test_custom_field_is_free_form_without_a_rule_on_it() -> None:
    """Only a field a rule watches becomes numeric; others stay unknown and unchecked."""
    assert AlertEngine().check(b'{"coolantTemp": "hot"}') == ()


@pytest.mark.parametrize("kind", KINDS)
def test_several_rules_on_one_field(kind: EvaluatorKind) -> None:
    rules = merge_rules(
        [
            {"code": "RPM_VERY_HIGH", "field": "engineRpm", "op": ">=", "threshold": 6000, "level": "critical", "message": "m"},
            {"code": "RPM_IDLE", "field": "engineRpm", "op": "==", "threshold": 0, "level": "info", "message": "m"},
        ]
    )
    engine = AlertEngine(rules, kind)
    assert fired_codes(engine, {"engineRpm": 6000}) == ["HIGH_RPM", "RPM_VERY_HIGH"]
    assert fired_codes(engine, {"engineRpm": 0}) == ["RPM_IDLE"]


def test_rule_on_position_is_refused_when_rules_are_read() -> None:
    """Refused with the rule named, before any engine is built from it."""
    with pytest.raises(ValueError, match=r"NOWHERE.*not a number"):
        merge_rules([{**COOLANT, "code": "NOWHERE", "field": "position"}])


@pytest.mark.parametrize("kind", KINDS)
def test_engine_without_rules_fires_nothing_but_still_validates(kind: EvaluatorKind) -> None:
    engine = AlertEngine((), kind)
    assert engine.check(b'{"crashDetection": 1}') == ()
    with pytest.raises(ProtocolError):
        engine.check(b'{"crashDetection": "yes"}')
