"""A fleet's life in phases, each costed apart: connecting, sitting idle, sending, closing.

A figure per message hides what grows with the number of connections. So the
benchmark reads the server at each phase's edges (:class:`Reading`: its CPU
time from /proc, the time, its event-loop lag from ``/metrics``) and
:func:`phase` turns two readings into what the phase cost. A server that
exposes no lag (the plain baseline) has phases without stalls.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import msgspec
from prometheus_client.parser import text_string_to_metric_families

#: The lag histogram and gauge, as iothub names them in ``/metrics`` (the Node peer uses the same names).
LAG_HISTOGRAM = "iothub_event_loop_lag_seconds"
LAG_MAX = "iothub_event_loop_lag_max_seconds"


class Lag(msgspec.Struct, frozen=True):
    """A server's event-loop lag at one moment: the histogram's cumulative counts by upper bound, and the largest lag so far."""

    buckets: tuple[tuple[float, float], ...]
    max_s: float


class Reading(msgspec.Struct, frozen=True):
    """The server at one moment."""

    cpu_s: float
    at_s: float
    lag: Lag | None


class Phase(msgspec.Struct, frozen=True):
    """What one phase cost the server."""

    name: str
    cpu_s: float
    seconds: float
    #: The upper bound of the largest lag bucket that grew in this phase (ms): the phase's longest stall was at most this.
    #: ``inf`` past the last bound; None when the server exposes no lag.
    largest_stall_ms: float | None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_lag(metrics_text: str) -> Lag | None:
    """The lag families of a ``/metrics`` text, or None when it has none."""
    buckets: list[tuple[float, float]] = []
    largest = None
    for family in text_string_to_metric_families(metrics_text):
        if family.name == LAG_HISTOGRAM:
            buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
        elif family.name == LAG_MAX:
            largest = family.samples[0].value
    if not buckets or largest is None:
        return None
    return Lag(tuple(sorted(buckets)), largest)


def reading(pid: int, lag: Lag | None) -> Reading:
    return Reading(cpu_seconds(pid), time.monotonic(), lag)


def largest_stall_ms(before: Lag | None, after: Lag | None) -> float | None:
    """The bound of the highest bucket that gained samples between two readings, in ms (0 if none did)."""
    if before is None or after is None:
        return None
    gained = [
        bound
        for (bound, _), now, then in zip(after.buckets, _per_bucket(after), _per_bucket(before))
        if now > then
    ]
    if not gained:
        return 0.0
    return math.inf if math.isinf(gained[-1]) else round(gained[-1] * 1000, 3)


def _per_bucket(lag: Lag) -> list[float]:
    """Prometheus' cumulative counts as counts per bucket."""
    cumulative = [count for _, count in lag.buckets]
    return [count - below for count, below in zip(cumulative, [0.0, *cumulative[:-1]])]


def phase(name: str, start: Reading, end: Reading) -> Phase:
    return Phase(name, end.cpu_s - start.cpu_s, end.at_s - start.at_s, largest_stall_ms(start.lag, end.lag))
