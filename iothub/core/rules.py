"""Alert rules: what they are, the four defaults, how configuration changes them.

A rule compares one numeric field of a telemetry message's ``data`` with a
threshold. :func:`evaluate_reference` is the plain-Python statement of what a
rule means; the compiled evaluator in ``ext/_alerts.pyx`` must agree with it on
every input (``tests/test_evaluator_property.py`` checks that).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

Op = Literal[">", ">=", "<", "<=", "==", "!="]
Level = Literal["info", "warning", "critical"]

#: Order matters: the compiled evaluator receives an operator as its index here.
OPERATORS: tuple[Op, ...] = (">", ">=", "<", "<=", "==", "!=")
_PY_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class AlertRule(Struct, frozen=True, forbid_unknown_fields=True):
    code: Annotated[str, Meta(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
    field: Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    op: Op
    threshold: float
    level: Level
    message: Annotated[str, Meta(min_length=1, max_length=200)]
    #: The event the alert goes out as; derived from code and level when absent.
    event: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")] | None = None

    def __post_init__(self) -> None:
        if self.field == "position":
            raise ValueError("'position' is not a number; a rule watches a numeric field")

    @property
    def event_name(self) -> str:
        if self.event is not None:
            return self.event
        if self.code == "CRASH_DETECTED":
            return "crash_detected"
        return "health_warning" if self.level == "info" else "vehicle_alert"


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule("CRASH_DETECTED", "crashDetection", ">", 0, "critical", "Crash detected!"),
    AlertRule("LOW_BATTERY", "batteryVoltage", "<", 12.0, "warning", "Low battery voltage detected"),
    AlertRule("HIGH_RPM", "engineRpm", ">", 4000, "warning", "High engine RPM detected"),
    AlertRule("DTC_DETECTED", "dtc", ">", 0, "warning", "Diagnostic trouble code detected"),
)


def merge_rules(overrides: Sequence[dict[str, Any]], base: Sequence[AlertRule] = DEFAULT_RULES) -> tuple[AlertRule, ...]:
    """Apply configured rules over ``base``, matched by ``code``.

    An override of an existing code may name only what it changes
    (``{"code": "HIGH_RPM", "threshold": 5000}``); ``"disabled": true`` removes
    the rule; a new code must be a whole rule. Raises ``ValueError`` with the
    offending rule named.
    """
    rules = {rule.code: msgspec.structs.asdict(rule) for rule in base}
    for position, override in enumerate(overrides):
        if not isinstance(override, dict) or not isinstance(override.get("code"), str):
            raise ValueError(f"alert rule #{position + 1} needs a string 'code'")
        fields = dict(override)
        code = fields["code"]
        if fields.pop("disabled", False):
            rules.pop(code, None)
            continue
        rules[code] = {**rules.get(code, {}), **fields}
    merged = []
    for code, fields in rules.items():
        try:
            merged.append(msgspec.convert(fields, AlertRule))
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid alert rule {code!r}: {exc}") from None
    return tuple(merged)


def evaluate_reference(rules: Sequence[AlertRule], slots: Sequence[int], values: tuple[Any, ...]) -> tuple[int, ...]:
    """Indices of the rules that fire for ``values`` (a readings struct as a tuple).

    ``slots[i]`` is where rule ``i``'s field sits in ``values``. A missing
    field (None) fires nothing; a value is compared as a double, following
    IEEE 754, so NaN fires only ``!=``.
    """
    return tuple(
        index
        for index, (rule, slot) in enumerate(zip(rules, slots, strict=True))
        if values[slot] is not None and _PY_OPERATORS[rule.op](float(values[slot]), float(rule.threshold))
    )
