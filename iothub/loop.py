"""The event loop: uvloop when it is installed, asyncio's otherwise; and how late it runs.

A stall of the loop (a full garbage collection, a long callback) delays every
socket at once, and no per-message figure shows it. :class:`LagMonitor` sees
it from inside: a timer due every :data:`LAG_PERIOD_S` records how late it
ran. A stall of length *d* makes the timer due inside it at least *d* minus
one period late, so the largest lateness is the largest stall to within
:data:`LAG_PERIOD_S`.
"""

from __future__ import annotations

import asyncio
import time

from .core.metrics import Counters

#: How often the lag is sampled. Each sample wakes an idle loop: about 80 µs of CPU on a small VM, so 8 ms a second.
#: A largest lag of at most 10 ms then means no stall longer than 20 ms.
LAG_PERIOD_S = 0.01


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LagMonitor:
    """Counts the running loop's lateness into ``counters.loop_lag``, and into ``counters.loop_busy_lag`` the part of
    it the loop's own thread spent running.

    Lateness is what every socket waits; but on a shared machine part of it may be
    time the thread was not scheduled at all. The thread's CPU time over the
    interval bounds what the server's own work (a collection, a long callback)
    caused: the busy lag is the lateness, at most that CPU time.

    A timer handle, rescheduled by itself: no task, nothing for the garbage collector to walk.
    """

    __slots__ = ("_counters", "_period_ns", "_due_ns", "_cpu_ns", "_handle")

    def __init__(self, counters: Counters, period_s: float = LAG_PERIOD_S) -> None:
        self._counters = counters
        self._period_ns = round(period_s * 1e9)
        self._due_ns = 0
        self._cpu_ns = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(time.monotonic_ns(), time.thread_time_ns())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now_ns: int, cpu_ns: int) -> None:
        self._due_ns = now_ns + self._period_ns
        self._cpu_ns = cpu_ns
        self._handle = asyncio.get_running_loop().call_later(self._period_ns / 1e9, self._tick)

    def _tick(self) -> None:
        now, cpu = time.monotonic_ns(), time.thread_time_ns()
        self.record(now - self._due_ns, cpu - self._cpu_ns)
        self._schedule(now, cpu)

    def record(self, lag_ns: int, cpu_ns: int) -> None:
        """One sample: the lateness, and the thread's CPU time since the timer was set; early (a timer rounded down to
        the loop's clock) counts as on time."""
        lag_ns = max(0, lag_ns)
        self._counters.loop_lag.observe(lag_ns)
        self._counters.loop_busy_lag.observe(min(lag_ns, cpu_ns))
