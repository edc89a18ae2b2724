"""The server's clock: milliseconds since the epoch, as PROTOCOL.md counts time."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
