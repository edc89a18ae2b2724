"""The compiled alert evaluator agrees with the reference on every input.

``iothub.core._alerts.CompiledEvaluator`` is the hot path; ``rules.evaluate_reference``
states what a rule means (compare as doubles, IEEE 754, a missing field fires
nothing). Both are checked against each other and against an oracle written
here from PROTOCOL.md, on JSON through :meth:`AlertEngine.check` and directly on
readings tuples with what JSON cannot carry (NaN, ±inf, huge ints).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iothub.core._alerts import CompiledEvaluator
from iothub.core.alerts import AlertEngine, EvaluatorKind
from iothub.core.protocol import KNOWN_NUMERIC_FIELDS
from iothub.core.rules import OPERATORS, AlertRule, Level, evaluate_reference

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS: tuple[EvaluatorKind, ...] = ("compiled", "reference")
CUSTOM_FIELDS = ("coolantTemp", "oilPressure", "tyre_fl", "_x")
FIELDS = KNOWN_NUMERIC_FIELDS + CUSTOM_FIELDS
#: Independent of iothub.core.rules: what each operator means.
MEANING: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
LEVELS: tuple[Level, ...] = ("info", "warning", "critical")
EDGES = [0.0, -0.0, 12.0, 4000.0, 1e308, -1e308, 5e-324, -5e-324, 2.0**53, math.inf, -math.inf, math.nan]

any_float = st.floats() | st.sampled_from(EDGES)
threshold = any_float | st.integers(min_value=-(2**80), max_value=2**80)
rule_parts = st.tuples(
    st.sampled_from(FIELDS),
    st.sampled_from(OPERATORS),
    threshold,
    st.sampled_from(LEVELS),
)
rule_sets = st.lists(rule_parts, max_size=8).map(
    lambda parts: tuple(AlertRule(f"R{i}", field, op, value, level, "m") for i, (field, op, value, level) in enumerate(parts))
)
#: What JSON can carry for a number: finite floats, ints of any size a double holds, and null.
json_number = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -0.0, 10**30, -(10**30), 2**53 + 1, 1e308, -1e308, 5e-324])
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.none()
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
readings = st.dictionaries(st.sampled_from(FIELDS), json_number)
unknown_fields = st.dictionaries(st.text(max_size=8).map(lambda key: f"x-{key}"), json_value, max_size=4)


def oracle(rules: tuple[AlertRule, ...], data: dict[str, Any]) -> tuple[int, ...]:
    """The rules that fire for ``data``: value and threshold compared as doubles; absent or null fires nothing."""
    return tuple(
        index
        for index, rule in enumerate(rules)
        if data.get(rule.field) is not None and MEANING[rule.op](float(data[rule.field]), float(rule.threshold))
    )


def engines(rules: tuple[AlertRule, ...]) -> list[AlertEngine]:
    built = [AlertEngine(rules, kind) for kind in KINDS]
    assert [engine.kind for engine in built] == list(KINDS)
    return built


@PROPERTY
@given(rules=rule_sets, data=readings, extra=unknown_fields)
def test_engines_agree_on_json_data(rules: tuple[AlertRule, ...], data: dict[str, Any], extra: dict[str, Any]) -> None:
    payload = msgspec.json.encode({**extra, **data})
    compiled, reference = (engine.check(payload) for engine in engines(rules))
    assert compiled == reference == oracle(rules, data)


@PROPERTY
@given(rules=rule_sets, data=st.dictionaries(st.sampled_from(FIELDS), any_float))
def test_engines_agree_on_json_with_non_finite_floats(rules: tuple[AlertRule, ...], data: dict[str, Any]) -> None:
    """msgspec writes NaN and ±inf as null, which is a missing reading: nothing fires for it."""
    payload = msgspec.json.encode(data)
    present = {field: value for field, value in data.items() if math.isfinite(value)}
    compiled, reference = (engine.check(payload) for engine in engines(rules))
    assert compiled == reference == oracle(rules, present)


tuple_value = (
    any_float
    | st.none()
    | st.sampled_from([10**30, -(10**30), 0, -1, 2**53 + 1, -(2**63)])
    | st.integers(min_value=-(2**70), max_value=2**70)
)


@st.composite
def flat_rules(draw: st.DrawFn) -> tuple[int, tuple[AlertRule, ...], list[int]]:
    """A readings width, rules, and the slot each rule reads."""
    width = draw(st.integers(min_value=1, max_value=8))
    parts = draw(st.lists(st.tuples(st.integers(0, width - 1), st.sampled_from(OPERATORS), threshold), max_size=10))
    rules = tuple(AlertRule(f"R{i}", "speed", op, value, "warning", "m") for i, (_, op, value) in enumerate(parts))
    return width, rules, [slot for slot, _, _ in parts]


@PROPERTY
@given(flat=flat_rules(), data=st.data())
def test_evaluators_agree_on_tuples(flat: tuple[int, tuple[AlertRule, ...], list[int]], data: st.DataObject) -> None:
    """Directly on readings tuples: NaN, ±inf, -0.0, huge ints (Python ints above 2**53 included)."""
    width, rules, slots = flat
    values = tuple(data.draw(st.lists(tuple_value, min_size=width, max_size=width)))
    compiled = CompiledEvaluator(slots, [OPERATORS.index(rule.op) for rule in rules], [rule.threshold for rule in rules])
    expected = tuple(
        index
        for index, (rule, slot) in enumerate(zip(rules, slots))
        if (value := values[slot]) is not None and MEANING[rule.op](float(value), float(rule.threshold))
    )
    assert compiled(values) == evaluate_reference(rules, slots, values) == expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("value", "op", "threshold", "fires"),
    [
        (math.nan, "!=", 0.0, True),
        (math.nan, "==", math.nan, False),
        (math.nan, ">=", -math.inf, False),
        (0.0, "!=", math.nan, True),
        (math.inf, ">", 1e308, True),
        (math.inf, "==", math.inf, True),
        (-math.inf, "<", -1e308, True),
        (-0.0, "==", 0.0, True),
        (-0.0, "<", 0.0, False),
        (10**30, ">", 1e29, True),
        (-(10**30), "<", -1e29, True),
        (10**30, "==", 1e30, True),
        (2**53 + 1, ">", 2.0**53, False),  # the value rounds to 2**53 as a double
        (2.0**53, "<", 2**53 + 1, False),  # and so does an int threshold
    ],
)
def test_engine_evaluators_on_edge_values(kind: EvaluatorKind, value: Any, op: str, threshold: Any, fires: bool) -> None:
    """Both evaluators, as built by AlertEngine, compare as doubles following IEEE 754."""
    engine = AlertEngine((AlertRule("EDGE", "engineRpm", op, threshold, "warning", "m"),), kind)  # type: ignore[arg-type]
    assert KNOWN_NUMERIC_FIELDS[0] == "engineRpm"
    values = (value,) + (None,) * len(KNOWN_NUMERIC_FIELDS)  # engineRpm first; the rest and position absent
    assert engine._evaluate(values) == ((0,) if fires else ())


# --------------------------------------------------------------------------- the default rules' boundaries


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("data", "codes"),
    [
        ({"batteryVoltage": 12.0}, []),
        ({"batteryVoltage": 12}, []),
        ({"batteryVoltage": 11.999}, ["LOW_BATTERY"]),
        ({"batteryVoltage": 12.000001}, []),
        ({"engineRpm": 4000}, []),
        ({"engineRpm": 4000.0}, []),
        ({"engineRpm": 4000.0001}, ["HIGH_RPM"]),
        ({"engineRpm": 3999.9999}, []),
        ({"crashDetection": 0}, []),
        ({"crashDetection": -0.0}, []),
        ({"crashDetection": -1}, []),
        ({"crashDetection": 1}, ["CRASH_DETECTED"]),
        ({"crashDetection": 0.001}, ["CRASH_DETECTED"]),
        ({"dtc": 0}, []),
        ({"dtc": -1}, []),
        ({"dtc": 1}, ["DTC_DETECTED"]),
        ({"dtc": 5e-324}, ["DTC_DETECTED"]),
        ({}, []),
        ({"speed": 300, "fuelLevel": 0, "coolantTemp": 150}, []),
        ({"crashDetection": None, "batteryVoltage": None, "engineRpm": None, "dtc": None}, []),
    ],
)
def test_default_rule_fires_exactly_past_its_boundary(kind: EvaluatorKind, data: dict[str, Any], codes: list[str]) -> None:
    engine = AlertEngine(evaluator=kind)
    assert [engine.rules[index].code for index in engine.check(msgspec.json.encode(data))] == codes
