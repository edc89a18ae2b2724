"""Message counters and rates for ``/api/realtime/status``: cheap enough for every message."""

from __future__ import annotations

from collections import deque

from msgspec import Struct

WINDOW_SECONDS = 10


class RateMeter:
    """Counts events, and their rate over the last :data:`WINDOW_SECONDS` whole seconds."""

    __slots__ = ("total", "_second", "_count", "_past")

    def __init__(self) -> None:
        self.total = 0
        self._second = 0
        self._count = 0
        self._past: deque[tuple[int, int]] = deque(maxlen=WINDOW_SECONDS)

    def mark(self, now_ms: int, count: int = 1) -> None:
        second = now_ms // 1000
        if second != self._second:
            if self._count:
                self._past.append((self._second, self._count))
            self._second = second
            self._count = 0
        self._count += count
        self.total += count

    def per_second(self, now_ms: int) -> float:
        current = now_ms // 1000
        if self._second < current and self._count:
            self._past.append((self._second, self._count))
            self._count = 0
            self._second = current
        recent = sum(count for second, count in self._past if current - WINDOW_SECONDS <= second < current)
        return recent / WINDOW_SECONDS


class Rates(Struct, frozen=True):
    total: int
    perSecond: float


class Meters:
    """The counters the supervisor keeps."""

    __slots__ = ("telemetry", "alerts", "deliveries", "errors")

    def __init__(self) -> None:
        self.telemetry = RateMeter()
        self.alerts = RateMeter()
        self.deliveries = RateMeter()
        self.errors = RateMeter()

    def snapshot(self, now_ms: int) -> dict[str, Rates]:
        return {name: Rates(meter.total, meter.per_second(now_ms)) for name in self.__slots__ if (meter := getattr(self, name))}
