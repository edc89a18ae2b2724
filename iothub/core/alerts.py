"""Where an alert is decided: the readings of one message against the rules.

:class:`AlertEngine` is the hot path's core. :meth:`AlertEngine.read` takes a
whole ``telemetry_data`` event in one compiled pass: the message and the rules
it fires. What that pass declines (anything but the plain case, errors
included) takes the full road: :func:`~iothub.protocol.decode_event`, then
:meth:`AlertEngine.check`, which decodes ``data``'s known fields into the
readings struct and runs the evaluator over them. Without the extension both
fall back to the plain-Python reference, and ``kind`` says so in
``/api/realtime/status``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from .errors import ErrorCode, ProtocolError
from .protocol import Alert, TelemetryData, readings_type, validation_error
from .rules import DEFAULT_RULES, OPERATORS, AlertRule, evaluate_reference

try:
    from . import _alerts as compiled
except ImportError:  # the extension is not built: run, but say so
    compiled = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

EvaluatorKind = Literal["compiled", "reference"]
#: A telemetry message and the indices of the rules it fires.
Reading = tuple[TelemetryData, tuple[int, ...]]


def _decline(text: str) -> None:
    return None


class AlertEngine:
    """Checks a message's ``data`` and names the rules it fires."""

    #: A plain ``telemetry_data`` event's text, read and checked in one pass: the
    #: message and the rules it fires. ``None`` for any other text (another
    #: event, an error, an unusual spelling): :func:`~iothub.protocol.decode_event`
    #: and :meth:`check` then give the message or the exact error.
    read: Callable[[str], Reading | None]

    def __init__(self, rules: Sequence[AlertRule] = DEFAULT_RULES, evaluator: EvaluatorKind = "compiled") -> None:
        self.rules: tuple[AlertRule, ...] = tuple(rules)
        self.alerts: tuple[Alert, ...] = tuple(Alert(r.level, r.message, r.code) for r in self.rules)
        readings = readings_type(tuple(rule.field for rule in self.rules))
        self._decode_readings = msgspec.json.Decoder(readings).decode
        fields = readings.__struct_fields__
        slots = [fields.index(rule.field) for rule in self.rules]
        if evaluator == "compiled" and compiled is None:
            log.warning("iothub._alerts is not built; alerts use the slower reference evaluator")
            evaluator = "reference"
        self.kind: EvaluatorKind = evaluator
        self._evaluate: Callable[[tuple[Any, ...]], tuple[int, ...]]
        if evaluator == "compiled":
            evaluate = compiled.CompiledEvaluator(
                slots, [OPERATORS.index(r.op) for r in self.rules], [r.threshold for r in self.rules]
            )
            numeric = [name for name in fields if name != "position"]
            self._evaluate = evaluate
            self.read = compiled.TelemetryReader(numeric, evaluate, TelemetryData, msgspec.Raw).read
        else:
            self._evaluate = functools.partial(evaluate_reference, self.rules, slots)
            self.read = _decline

    def check(self, data: msgspec.Raw | bytes | str) -> tuple[int, ...]:
        """Validate ``data``'s known fields; return the indices of the rules fired.

        Raises :class:`ProtocolError` (``INVALID_PAYLOAD``) naming the field
        that is of the wrong type or out of range.
        """
        try:
            readings = self._decode_readings(data)
        except msgspec.ValidationError as exc:
            raise validation_error(str(exc), within="data") from None
        except RecursionError:
            raise ProtocolError(ErrorCode.INVALID_PAYLOAD, "data is nested too deeply") from None
        return self._evaluate(msgspec.structs.astuple(readings))
