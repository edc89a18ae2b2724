"""Token buckets: the event budget of one socket (``IOTHUB_RATE_LIMIT``), and a log that floods cannot fill."""

from __future__ import annotations

import logging
import time


class TokenBucket:
    """Allows ``rate`` events a second on average and bursts of ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the event is over budget."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RateLimitedLog:
    """A logger's warnings at most ``rate`` a second (bursts of ``burst``); the lines held back are
    counted and said on the next line that goes out, so a flood of bad input cannot flood the log."""

    __slots__ = ("logger", "_budget", "_held_back")

    def __init__(self, logger: logging.Logger, rate: float = 1.0, burst: float = 20.0) -> None:
        self.logger = logger
        self._budget = TokenBucket(rate, burst, time.monotonic())
        self._held_back = 0

    def warning(self, message: str, *args: object) -> None:
        if not self._budget.take(time.monotonic()):
            self._held_back += 1
            return
        if self._held_back:
            message += f" (and {self._held_back} more like it, not logged)"
            self._held_back = 0
        self.logger.warning(message, *args)
