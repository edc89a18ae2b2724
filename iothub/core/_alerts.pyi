"""Types of the compiled hot path (``_alerts.pyx``), for mypy and readers."""

from collections.abc import Sequence
from typing import Any

from msgspec import Raw

from .protocol import TelemetryData

class CompiledEvaluator:
    """Evaluates flattened rules: ``slots[i]``, ``ops[i]`` and ``thresholds[i]`` describe rule ``i``."""

    def __init__(self, slots: Sequence[int], ops: Sequence[int], thresholds: Sequence[float]) -> None: ...
    def __call__(self, values: tuple[Any, ...]) -> tuple[int, ...]:
        """The indices of the rules that fire for a readings tuple."""

class TelemetryReader:
    """Reads a plain ``telemetry_data`` event and fires the rules in one pass."""

    def __init__(
        self,
        fields: Sequence[str],
        evaluator: CompiledEvaluator,
        message_type: type[TelemetryData],
        data_type: type[Raw],
    ) -> None: ...
    def read(self, text: str) -> tuple[TelemetryData, tuple[int, ...]] | None:
        """``(message, fired)`` for a plain ``telemetry_data`` event, else ``None``."""
