"""What a gateway counts: message rates for ``/api/realtime/status``, and the counters ``/metrics`` reads.

Everything here is cheap enough for every message: a counter is an integer
attribute or a list slot added to in place, a histogram a bisect and two
additions. Nothing is formatted, locked or labelled on the per-message path;
the HTTP layer reads a gateway's :class:`GatewayMetrics` snapshot when
Prometheus scrapes, and turns it into metric families there. The snapshot is
a msgspec struct, so that a scrape in cluster mode can ask every gateway for
its own and add them up.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable

from msgspec import Struct

from .errors import ErrorCode
from .protocol import EVENT_NAMES
from .rules import AlertRule

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
    """The message rates ``/api/realtime/status`` shows."""

    __slots__ = ("telemetry", "alerts", "deliveries", "errors")

    def __init__(self) -> None:
        self.telemetry = RateMeter()
        self.alerts = RateMeter()
        self.deliveries = RateMeter()
        self.errors = RateMeter()

    def snapshot(self, now_ms: int) -> dict[str, Rates]:
        return {name: Rates(meter.total, meter.per_second(now_ms)) for name in self.__slots__ if (meter := getattr(self, name))}


# --------------------------------------------------------------------------- histograms


class HistogramSnapshot(Struct, frozen=True):
    """A histogram as Prometheus reads it, in seconds."""

    #: Upper bounds of the buckets (``le``); the last bucket, +Inf, has none.
    bounds: tuple[float, ...]
    #: Observations per bucket, not cumulative: one more than ``bounds``.
    counts: tuple[int, ...]
    sum: float

    def __add__(self, other: HistogramSnapshot) -> HistogramSnapshot:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets cannot be added")
        return HistogramSnapshot(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts)), self.sum + other.sum)


class Histogram:
    """Durations in integer nanoseconds, counted into fixed buckets: a bisect and two additions each."""

    __slots__ = ("bounds", "counts", "total_ns", "_seconds")

    def __init__(self, bounds_seconds: Iterable[float]) -> None:
        self._seconds = tuple(bounds_seconds)
        if list(self._seconds) != sorted(set(self._seconds)):
            raise ValueError("bucket bounds must be increasing")
        self.bounds = tuple(round(bound * 1e9) for bound in self._seconds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total_ns = 0

    def observe(self, ns: int) -> None:
        """One duration; bucket ``i`` holds those ≤ ``bounds[i]`` and above the bound before (Prometheus' ``le``)."""
        self.counts[bisect_left(self.bounds, ns)] += 1
        self.total_ns += ns

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self._seconds, tuple(self.counts), self.total_ns / 1e9)


class PeakSnapshot(Struct, frozen=True):
    """A :class:`PeakHistogram`: its histogram, and the largest observation, in seconds."""

    histogram: HistogramSnapshot
    max: float

    def __add__(self, other: PeakSnapshot) -> PeakSnapshot:
        return PeakSnapshot(self.histogram + other.histogram, max(self.max, other.max))


class PeakHistogram(Histogram):
    """A histogram that also keeps its largest observation: for stalls, where the worst one is the figure."""

    __slots__ = ("max_ns",)

    def __init__(self, bounds_seconds: Iterable[float]) -> None:
        super().__init__(bounds_seconds)
        self.max_ns = 0

    def observe(self, ns: int) -> None:
        super().observe(ns)
        self.max_ns = max(self.max_ns, ns)

    def peak_snapshot(self) -> PeakSnapshot:
        return PeakSnapshot(self.snapshot(), self.max_ns / 1e9)


#: From receiving a telemetry message to queueing its last dashboard packet: microseconds, unless the loop is behind.
FANOUT_BUCKETS = (10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3)
#: One write-behind batch's commit: milliseconds, seconds when the store struggles.
COMMIT_BUCKETS = (1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0)
#: How late the event loop ran a timer: under a millisecond when it keeps up; 20 ms is the fleet's bound for a stall.
LOOP_LAG_BUCKETS = (1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 200e-3, 500e-3, 1.0, 2.0, 5.0)


# --------------------------------------------------------------------------- a gateway's counters

#: Events a socket sends, as ``/metrics`` labels them: the protocol's, telemetry first, then ``other``.
RECEIVED_EVENTS: tuple[str, ...] = ("telemetry_data", *sorted(str(name) for name in EVENT_NAMES if name != "telemetry_data"), "other")
TELEMETRY_DATA = 0
OTHER_EVENT = len(RECEIVED_EVENTS) - 1
_RECEIVED_INDEX = {name: index for index, name in enumerate(RECEIVED_EVENTS)}

#: Packets the server sends that are not one of the protocol's events: acknowledgements (always
#: slot :data:`ACK_SLOT` of :attr:`Counters.sent`), and operators' broadcasts and directed messages
#: (their names are the operators' choice: no label each).
ACK = "ack"
ACK_SLOT = 0
OPERATOR_EVENT = "other"
#: The server's own events, besides the alerts' (which the rules name).
SERVER_EVENTS = (
    "telemetry_update", "device_status", "device_registered", "telemetry_processed", "user_subscribed", "user_unsubscribed", "error",
)  # fmt: skip

#: Why an event or a connection was refused, as ``/metrics`` labels it. ``too_slow`` is a socket cut off
#: because it did not read what it was sent; ``protocol_error`` one closed over a frame that does not
#: parse; ``connection_limit`` and ``banned`` new connections refused at the handshake (per-address and
#: server-wide limits; failed authentications); ``connect_timeout`` a session that never sent CONNECT.
REFUSAL_REASONS = (
    "invalid", "too_large", "rate_limited", "store_unavailable", "too_slow", "unauthorized", "forbidden", "not_registered", "internal",
    "protocol_error", "connection_limit", "banned", "connect_timeout",
)  # fmt: skip
_REFUSAL_OF_CODE = {
    ErrorCode.INVALID_PAYLOAD: "invalid",
    ErrorCode.INVALID_IMEI: "invalid",
    ErrorCode.INVALID_EMAIL: "invalid",
    ErrorCode.NOT_FOUND: "invalid",
    ErrorCode.METHOD_NOT_ALLOWED: "invalid",
    ErrorCode.PAYLOAD_TOO_LARGE: "too_large",
    ErrorCode.RATE_LIMITED: "rate_limited",
    ErrorCode.STORE_UNAVAILABLE: "store_unavailable",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.FORBIDDEN: "forbidden",
    ErrorCode.DEVICE_NOT_REGISTERED: "not_registered",
    ErrorCode.INTERNAL: "internal",
}

#: Why a socket left (python-engineio's reasons, as labels).
DISCONNECT_REASONS = ("client_disconnect", "server_disconnect", "ping_timeout", "transport_close", "transport_error", "other")
#: Where a token was refused.
AUTH_INTERFACES = ("socket", "rest")
#: What a connected socket does: it registered a device, it subscribed to an e-mail, or neither (yet).
SOCKET_ROLES = ("device", "dashboard", "other")


def received_index(name: str | None) -> int:
    """The slot of :attr:`Counters.received` an event of that name counts in."""
    return _RECEIVED_INDEX.get(name, OTHER_EVENT) if name is not None else OTHER_EVENT


class AlertCount(Struct, frozen=True):
    code: str
    level: str
    count: int


#: What a gateway counts of its relaying (cluster mode): packets sent to other gateways, the batches that
#: carried them, packets received from them, and packets dropped because a peer fell too far behind.
RELAYED = ("packets_out", "batches_out", "packets_in", "packets_dropped")


class GatewayMetrics(Struct, frozen=True, kw_only=True):
    """One gateway's counters and gauges at one moment: what a scrape reads, and what gateways add up."""

    gateway: str
    #: Connected sockets by role (:data:`SOCKET_ROLES`).
    sockets: dict[str, int]
    devices_online: int
    connects: int
    disconnects: dict[str, int]
    auth_failures: dict[str, int]
    events_received: dict[str, int]
    packets_sent: dict[str, int]
    bytes_received: int
    bytes_sent: int
    refusals: dict[str, int]
    alerts: list[AlertCount]
    telemetry_fanout: HistogramSnapshot
    #: Cluster mode: packets relayed to and from other gateways, and batches that carried them (:data:`RELAYED`).
    relayed: dict[str, int]
    #: How late the event loop ran (:class:`iothub.loop.LagMonitor`), and the part of it its thread was running.
    event_loop_lag: PeakSnapshot
    event_loop_busy_lag: PeakSnapshot


class Counters:
    """One gateway's counters: plain integers, added to where things happen, read only by :meth:`snapshot`.

    The front end counts sockets, events, packets, bytes and refusals; the data
    plane counts alerts. No lock: everything runs on the gateway's event loop.
    """

    __slots__ = (
        "connects", "disconnects", "auth_failures", "received", "sent", "bytes_in", "bytes_out", "refusals", "alerts",
        "fanout", "relayed", "loop_lag", "loop_busy_lag", "_sent_index", "_sent_names", "_other_sent", "_alert_labels",
    )  # fmt: skip

    def __init__(self, rules: Iterable[AlertRule]) -> None:
        rules = tuple(rules)
        self.connects = 0
        self.disconnects = dict.fromkeys(DISCONNECT_REASONS, 0)
        self.auth_failures = dict.fromkeys(AUTH_INTERFACES, 0)
        #: Events received, by :data:`RECEIVED_EVENTS` slot.
        self.received = [0] * len(RECEIVED_EVENTS)
        self._sent_names = tuple(dict.fromkeys((ACK, *SERVER_EVENTS, *(rule.event_name for rule in rules), OPERATOR_EVENT)))
        self._sent_index = {name: index for index, name in enumerate(self._sent_names)}
        self._other_sent = self._sent_index[OPERATOR_EVENT]
        #: Event packets sent (one per recipient), by slot of :attr:`_sent_names`.
        self.sent = [0] * len(self._sent_names)
        self.bytes_in = 0
        self.bytes_out = 0
        self.refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        #: Alerts raised, by the rule's index in the alert engine.
        self.alerts = [0] * len(rules)
        self._alert_labels = tuple((rule.code, rule.level) for rule in rules)
        self.fanout = Histogram(FANOUT_BUCKETS)
        self.relayed = dict.fromkeys(RELAYED, 0)
        self.loop_lag = PeakHistogram(LOOP_LAG_BUCKETS)
        self.loop_busy_lag = PeakHistogram(LOOP_LAG_BUCKETS)

    def sent_to(self, event: str, recipients: int) -> None:
        """``recipients`` packets of ``event`` queued."""
        self.sent[self._sent_index.get(event, self._other_sent)] += recipients

    def refused(self, code: ErrorCode) -> None:
        self.refusals[_REFUSAL_OF_CODE[code]] += 1

    def disconnected(self, reason: object) -> None:
        label = str(reason).replace(" ", "_")
        self.disconnects[label if label in self.disconnects else "other"] += 1

    def snapshot(self, gateway: str, sockets: dict[str, int], devices_online: int) -> GatewayMetrics:
        """The counters now, with the gauges only the data plane's tables know."""
        return GatewayMetrics(
            gateway=gateway,
            sockets=sockets,
            devices_online=devices_online,
            connects=self.connects,
            disconnects=dict(self.disconnects),
            auth_failures=dict(self.auth_failures),
            events_received=dict(zip(RECEIVED_EVENTS, self.received)),
            packets_sent=dict(zip(self._sent_names, self.sent)),
            bytes_received=self.bytes_in,
            bytes_sent=self.bytes_out,
            refusals=dict(self.refusals),
            alerts=[AlertCount(code, level, count) for (code, level), count in zip(self._alert_labels, self.alerts)],
            telemetry_fanout=self.fanout.snapshot(),
            relayed=dict(self.relayed),
            event_loop_lag=self.loop_lag.peak_snapshot(),
            event_loop_busy_lag=self.loop_busy_lag.peak_snapshot(),
        )


class StoreMetrics(Struct, frozen=True, kw_only=True):
    """The write-behind's gauges and counters at one moment."""

    store: str
    backlog: int
    commit: HistogramSnapshot
    #: Failed store operations, by ``write`` (a batch, retried) and ``read``.
    errors: dict[str, int]
