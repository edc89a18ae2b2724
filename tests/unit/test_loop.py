"""The event loop's lag monitor: a stall of the loop shows as a timer run that much late, and as busy when the
loop's thread was running through it."""

from __future__ import annotations

import asyncio
import time

from iothub.core.metrics import LOOP_LAG_BUCKETS, Counters
from iothub.loop import LagMonitor


def test_a_sample_lands_in_its_bucket_and_the_largest_is_kept() -> None:
    counters = Counters(())
    monitor = LagMonitor(counters)
    for lag_ns in (300_000, 30_000_000, 3_000_000):
        monitor.record(lag_ns, cpu_ns=lag_ns)
    lag = counters.snapshot("g", {}, 0).event_loop_lag
    assert lag.max == 0.03
    assert lag.histogram.bounds == LOOP_LAG_BUCKETS
    assert dict(zip((*LOOP_LAG_BUCKETS, "inf"), lag.histogram.counts)) == {
        **dict.fromkeys((*LOOP_LAG_BUCKETS, "inf"), 0), 1e-3: 1, 5e-3: 1, 50e-3: 1
    }


def test_lateness_the_thread_did_not_run_through_is_not_busy() -> None:
    counters = Counters(())
    LagMonitor(counters).record(500_000_000, cpu_ns=12_000_000)  # descheduled: half a second late, 12 ms of work
    snapshot = counters.snapshot("g", {}, 0)
    assert (snapshot.event_loop_lag.max, snapshot.event_loop_busy_lag.max) == (0.5, 0.012)


def test_a_timer_run_early_counts_as_on_time() -> None:
    counters = Counters(())
    LagMonitor(counters).record(-2_000_000, cpu_ns=0)
    assert counters.loop_lag.counts[0] == 1 and counters.loop_lag.max_ns == 0


async def test_a_blocked_loop_is_seen_as_late_and_busy_as_it_was_blocked() -> None:
    counters = Counters(())
    monitor = LagMonitor(counters, period_s=0.001)
    monitor.start()
    await asyncio.sleep(0.01)
    started = time.thread_time()
    while time.thread_time() - started < 0.08:  # the loop's thread works for 80 ms: nothing else runs
        pass
    await asyncio.sleep(0.01)
    monitor.stop()
    assert counters.loop_lag.max_ns >= 79_000_000
    assert counters.loop_busy_lag.max_ns >= 79_000_000
    samples = sum(counters.loop_lag.counts)
    await asyncio.sleep(0.01)
    assert sum(counters.loop_lag.counts) == samples  # stopped: no more samples
