"""The event loop's lag monitor: a stall of the loop shows as a timer run that much late."""

from __future__ import annotations

import asyncio
import time

from iothub.core.metrics import LOOP_LAG_BUCKETS, Counters
from iothub.loop import LagMonitor


def test_a_sample_lands_in_its_bucket_and_the_largest_is_kept() -> None:
    counters = Counters(())
    monitor = LagMonitor(counters)
    for lag_ns in (300_000, 30_000_000, 3_000_000):
        monitor.record(lag_ns)
    snapshot = counters.snapshot("g", {}, 0)
    assert snapshot.event_loop_lag_max == 0.03
    assert snapshot.event_loop_lag.bounds == LOOP_LAG_BUCKETS
    assert dict(zip((*LOOP_LAG_BUCKETS, "inf"), snapshot.event_loop_lag.counts)) == {
        **dict.fromkeys((*LOOP_LAG_BUCKETS, "inf"), 0), 1e-3: 1, 5e-3: 1, 50e-3: 1
    }


def test_a_timer_run_early_counts_as_on_time() -> None:
    counters = Counters(())
    LagMonitor(counters).record(-2_000_000)
    assert counters.loop_lag.counts[0] == 1 and counters.loop_lag_max_ns == 0


async def test_a_blocked_loop_is_seen_as_late_as_it_was_blocked() -> None:
    counters = Counters(())
    monitor = LagMonitor(counters, period_s=0.001)
    monitor.start()
    await asyncio.sleep(0.01)
    time.sleep(0.08)  # noqa: ASYNC251 - the point: the loop stalls, nothing runs for 80 ms
    await asyncio.sleep(0.01)
    monitor.stop()
    assert counters.loop_lag_max_ns >= 79_000_000
    samples = sum(counters.loop_lag.counts)
    await asyncio.sleep(0.01)
    assert sum(counters.loop_lag.counts) == samples  # stopped: no more samples
