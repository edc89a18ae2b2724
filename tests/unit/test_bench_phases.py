"""The fleet benchmark's arithmetic: phases from readings, stalls from lag histograms, source addresses, open files."""

from __future__ import annotations

import math
import resource

import pytest

from bench.addresses import raise_open_files, source_addresses
from bench.fleet import Costs
from bench.phases import Lag, Reading, largest_stall_ms, parse_lag

METRICS = """# HELP iothub_event_loop_lag_seconds lag
# TYPE iothub_event_loop_lag_seconds histogram
iothub_event_loop_lag_seconds_bucket{le="0.001"} 5.0
iothub_event_loop_lag_seconds_bucket{le="0.02"} 6.0
iothub_event_loop_lag_seconds_bucket{le="+Inf"} 6.0
iothub_event_loop_lag_seconds_count 6.0
iothub_event_loop_lag_seconds_sum 0.1
# HELP iothub_event_loop_lag_max_seconds max
# TYPE iothub_event_loop_lag_max_seconds gauge
iothub_event_loop_lag_max_seconds 0.015
"""


def lag(*cumulative: float, max_s: float = 0.0) -> Lag:
    return Lag(tuple(zip((0.001, 0.02, math.inf), cumulative)), max_s)


def test_the_lag_is_read_from_the_metrics_text() -> None:
    assert parse_lag(METRICS) == lag(5, 6, 6, max_s=0.015)
    assert parse_lag(METRICS, "iothub_event_loop_busy_lag") is None
    assert parse_lag("# TYPE other gauge\nother 1\n") is None


def test_a_phases_largest_stall_is_the_highest_bucket_that_gained_samples() -> None:
    before = lag(5, 6, 6)
    assert largest_stall_ms(before, lag(9, 10, 10)) == 1.0  # four more under 1 ms: the old 20 ms sample is not this phase's
    assert largest_stall_ms(before, lag(5, 7, 7)) == 20.0
    assert largest_stall_ms(before, lag(6, 7, 8)) == math.inf
    assert largest_stall_ms(before, before) == 0.0
    assert largest_stall_ms(None, before) is None


def test_costs_divide_each_phase_by_what_it_did() -> None:
    cpu = (1.0, 3.0, 3.5, 4.0, 6.0, 6.5, 7.0)  # before connecting, then at the end of each phase
    at = (0.0, 10.0, 20.0, 25.0, 35.0, 36.0, 37.0)
    costs = Costs([Reading(c, t, lag(0, 0, 0, max_s=0.5), lag(0, 0, 0, max_s=0.02)) for c, t in zip(cpu, at)], connections=1000)
    assert [phase.name for phase in costs.phases] == ["connect", "idle", "warm-up", "steady", "drain", "close"]
    assert costs.per_connection("connect") == 2000.0  # 2 s over 1000 connections
    assert costs.idle_per_socket_second() == 50.0  # 0.5 s over 1000 sockets and 10 s
    assert costs.per_connection("close") == 500.0
    assert costs.cpu_s("connect", "warm-up", "steady", "drain") == pytest.approx(5.0)
    assert (costs.largest_ms(lambda last: last.lag), costs.largest_ms(lambda last: last.busy_lag)) == (500.0, 20.0)


def test_a_server_not_read_has_no_costs() -> None:
    costs = Costs([None] * 7, connections=10)
    assert costs.phases == [] and costs.per_connection("connect") is None and costs.largest_ms(lambda last: last.lag) is None


def test_sources_spread_over_loopback_addresses_only_when_one_is_not_enough() -> None:
    assert source_addresses("127.0.0.1", 20_000, 27_000) == [None]
    assert source_addresses("127.0.0.1", 50_000, 27_000) == ["127.0.0.2", "127.0.0.3"]
    assert source_addresses("127.0.0.1", 54_001, 27_000) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        source_addresses("10.0.0.5", 50_000, 27_000)


def test_open_files_are_raised_to_the_hard_limit_or_refused() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert raise_open_files(10) == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        if hard != resource.RLIM_INFINITY:
            with pytest.raises(ValueError, match="ulimit -Hn"):
                raise_open_files(hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
