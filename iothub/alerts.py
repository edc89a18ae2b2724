"""Where an alert is decided: the readings of one message against the rules.

:class:`AlertEngine` is the hot path's core: it decodes the known fields of a
message's raw ``data`` into the readings struct and runs the compiled
evaluator over them. It falls back to the plain-Python reference only when the
extension is not built, and says so (``kind``) in ``/api/realtime/status``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Literal

import msgspec

from .errors import ErrorCode, ProtocolError
from .protocol import Alert, readings_type, validation_error
from .rules import DEFAULT_RULES, OPERATORS, AlertRule, evaluate_reference

try:
    from ._alerts import CompiledEvaluator
except ImportError:  # the extension is not built: run, but say so
    CompiledEvaluator = None

log = logging.getLogger(__name__)

EvaluatorKind = Literal["compiled", "reference"]


class AlertEngine:
    """Checks a message's ``data`` and names the rules it fires."""

    def __init__(self, rules: Sequence[AlertRule] = DEFAULT_RULES, evaluator: EvaluatorKind = "compiled") -> None:
        self.rules: tuple[AlertRule, ...] = tuple(rules)
        self.alerts: tuple[Alert, ...] = tuple(Alert(r.level, r.message, r.code) for r in self.rules)
        readings = readings_type(tuple(rule.field for rule in self.rules))
        self._decode_readings = msgspec.json.Decoder(readings).decode
        fields = readings.__struct_fields__
        slots = [fields.index(rule.field) for rule in self.rules]
        if evaluator == "compiled" and CompiledEvaluator is None:
            log.warning("iothub._alerts is not built; alerts use the slower reference evaluator")
            evaluator = "reference"
        self.kind: EvaluatorKind = evaluator
        if evaluator == "compiled":
            self._evaluate = CompiledEvaluator(
                slots, [OPERATORS.index(r.op) for r in self.rules], [r.threshold for r in self.rules]
            )
        else:
            self._evaluate = functools.partial(evaluate_reference, self.rules, slots)

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
