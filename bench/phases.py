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

#: The lag metrics as iothub names them in ``/metrics`` (the Node peer uses the same names): the lateness every socket
#: waited, and the part of it the server's thread was running (its own stalls, not another process's turn on the CPU).
LAG = "iothub_event_loop_lag"
BUSY_LAG = "iothub_event_loop_busy_lag"


class Lag(msgspec.Struct, frozen=True):
    """A server's event-loop lag at one moment: the histogram's cumulative counts by upper bound, and the largest lag so far."""

    buckets: tuple[tuple[float, float], ...]
    max_s: float


class Reading(msgspec.Struct, frozen=True):
    """The server at one moment."""

    cpu_s: float
    at_s: float
    lag: Lag | None
    busy_lag: Lag | None


class Phase(msgspec.Struct, frozen=True):
    """What one phase cost the server."""

    name: str
    cpu_s: float
    seconds: float
    #: The upper bound of the largest lag bucket that grew in this phase (ms): the phase's longest stall was at most this.
    #: ``inf`` past the last bound; None when the server exposes no lag.
    largest_stall_ms: float | None
    #: The same of the busy lag: the longest stall the server's own work caused.
    largest_busy_stall_ms: float | None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_lag(metrics_text: str, name: str = LAG) -> Lag | None:
    """The histogram ``<name>_seconds`` and gauge ``<name>_max_seconds`` of a ``/metrics`` text, or None when it has none."""
    buckets: list[tuple[float, float]] = []
    largest = None
    for family in text_string_to_metric_families(metrics_text):
        if family.name == f"{name}_seconds":
            buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
        elif family.name == f"{name}_max_seconds":
            largest = family.samples[0].value
    if not buckets or largest is None:
        return None
    return Lag(tuple(sorted(buckets)), largest)


def reading(pid: int, metrics_text: str | None) -> Reading:
    """The server ``pid`` now, with the lag of its ``/metrics`` (None: it has no such page)."""
    if metrics_text is None:
        return Reading(cpu_seconds(pid), time.monotonic(), None, None)
    return Reading(cpu_seconds(pid), time.monotonic(), parse_lag(metrics_text), parse_lag(metrics_text, BUSY_LAG))


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
    return Phase(
        name,
        end.cpu_s - start.cpu_s,
        end.at_s - start.at_s,
        largest_stall_ms(start.lag, end.lag),
        largest_stall_ms(start.busy_lag, end.busy_lag),
    )
