"""``GET /metrics``: Prometheus' text format, read from the gateways' counters when Prometheus scrapes.

Nothing on a message's path calls prometheus-client. The gateways count in
plain integers (:class:`~iothub.core.metrics.Counters`); at scrape time the
supervisor asks every gateway for its report — its
:class:`~iothub.core.metrics.GatewayMetrics` and its write-behind's
:class:`~iothub.core.metrics.StoreMetrics` — and :class:`HubCollector` adds
them up into metric families. In one process there is one gateway; in
cluster mode every live one, so the figures are cluster-wide.

Names follow Prometheus' rules: an ``iothub_`` prefix, ``_total`` on counters,
seconds and bytes as units, and no label that carries an imei or an e-mail.
With ``IOTHUB_METRICS_TOKEN`` set, a scrape needs ``Authorization: Bearer
<that token>``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import operator
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core.commands import GatewayReport
from ..core.errors import ErrorCode, ProtocolError
from ..core.metrics import HistogramSnapshot, PeakSnapshot
from .services import SERVICES

PATH = "/metrics"


Family = type[CounterMetricFamily] | type[GaugeMetricFamily]

#: The families that are one number per gateway, summed: (type, name, help, the snapshot's field).
PLAIN: tuple[tuple[Family, str, str, str], ...] = (
    (GaugeMetricFamily, "iothub_devices_online", "Devices registered on a connected socket", "devices_online"),
    (CounterMetricFamily, "iothub_connects", "Socket.IO connections accepted", "connects"),
    (
        CounterMetricFamily, "iothub_received_bytes",
        "Socket.IO traffic received: WebSocket frames (headers included, before decompression) and long-polling request bodies",
        "bytes_received",
    ),
    (
        CounterMetricFamily, "iothub_sent_bytes",
        "Socket.IO traffic sent: WebSocket frames (headers included, before compression) and long-polling response bodies",
        "bytes_sent",
    ),
)  # fmt: skip
#: The families with one label, summed label by label: (type, name, help, label, the snapshot's field).
LABELLED: tuple[tuple[Family, str, str, str, str], ...] = (
    (
        GaugeMetricFamily, "iothub_connected_sockets",
        "Connected Socket.IO sockets, by role: registered a device, subscribed to an e-mail, or neither", "role", "sockets",
    ),
    (CounterMetricFamily, "iothub_disconnects", "Socket.IO connections ended, by reason", "reason", "disconnects"),
    (
        CounterMetricFamily, "iothub_auth_failures",
        "Tokens refused (missing, invalid or expired), by interface: a socket's handshake or a REST request", "interface", "auth_failures",
    ),
    (
        CounterMetricFamily, "iothub_events_received", "Socket.IO events received, by event name (other: any other name)", "event",
        "events_received",
    ),
    (
        CounterMetricFamily, "iothub_packets_sent",
        "Socket.IO packets queued to sockets, one per recipient, by event name "
        "(ack: acknowledgements; other: operators' broadcasts and directed messages)", "event", "packets_sent",
    ),
    (
        CounterMetricFamily, "iothub_cluster_relayed",
        "Cluster mode: packets relayed to (packets_out, in batches_out) and from (packets_in) other gateways, "
        "and packets dropped for a gateway too far behind", "kind", "relayed",
    ),
    (
        CounterMetricFamily, "iothub_refusals", "Socket.IO events refused, and sockets cut off as too slow, by reason", "reason",
        "refusals",
    ),
)  # fmt: skip


def _labelled(family: Family, name: str, documentation: str, label: str, counts: Iterable[Mapping[str, int]]) -> Metric:
    """One family with one label, the counts of every gateway added up label by label."""
    total: Counter[str] = Counter()
    for each in counts:
        total.update(each)
    metric = family(name, documentation, labels=[label])
    for value, count in sorted(total.items()):
        metric.add_metric([value], count)
    return metric


def _histogram(name: str, documentation: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*snapshot.bounds, float("inf")), snapshot.counts):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=snapshot.sum)


Snapshot = TypeVar("Snapshot", HistogramSnapshot, PeakSnapshot)


def _summed(snapshots: Iterable[Snapshot]) -> Snapshot:
    """The gateways' snapshots of one metric added up (there is at least one)."""
    return functools.reduce(operator.add, snapshots)


def _peak(name: str, documentation: str, snapshot: PeakSnapshot) -> Iterator[Metric]:
    """A :class:`PeakSnapshot` as a histogram ``<name>_seconds`` and a gauge ``<name>_max_seconds``."""
    yield _histogram(f"{name}_seconds", documentation, snapshot.histogram)
    largest = f"The largest since the server started (of any gateway) of: {documentation[0].lower()}{documentation[1:]}"
    yield GaugeMetricFamily(f"{name}_max_seconds", largest, value=snapshot.max)


class HubCollector(Collector):
    """The server's metric families, from the gateways' reports taken at scrape time (:attr:`reports`)."""

    def __init__(self) -> None:
        self.reports: Sequence[GatewayReport] = ()

    def collect(self) -> Iterator[Metric]:
        reports = [report for report in self.reports if report.alive]
        gateways = [report.metrics for report in reports]
        stores = [report.store for report in reports]
        for family, name, documentation, field in PLAIN:
            yield family(name, documentation, value=sum(getattr(gateway, field) for gateway in gateways))
        for family, name, documentation, label, field in LABELLED:
            yield _labelled(family, name, documentation, label, (getattr(gateway, field) for gateway in gateways))
        alerts = CounterMetricFamily("iothub_alerts", "Alerts raised (and not held back by a cooldown), by code and level", labels=["code", "level"])
        raised: Counter[tuple[str, str]] = Counter()
        for gateway in gateways:
            for alert in gateway.alerts:
                raised[alert.code, alert.level] += alert.count
        for (code, level), count in sorted(raised.items()):
            alerts.add_metric([code, level], count)
        yield alerts
        if gateways:
            yield _histogram(
                "iothub_telemetry_fanout_seconds",
                "From the gateway taking a telemetry_data event to the last of its dashboard packets (update and alerts) queued",
                _summed(gateway.telemetry_fanout for gateway in gateways),
            )
            yield from _peak(
                "iothub_event_loop_lag",
                "How late the event loop ran the lag monitor's timer: what every socket waited, to within the timer's period",
                _summed(gateway.event_loop_lag for gateway in gateways),
            )
            yield from _peak(
                "iothub_event_loop_busy_lag",
                "The part of the event loop's lag its thread spent running: the stalls the server's own work caused",
                _summed(gateway.event_loop_busy_lag for gateway in gateways),
            )
        yield GaugeMetricFamily(
            "iothub_writebehind_backlog_rows", "Rows taken by the write-behind and not yet committed", value=sum(store.backlog for store in stores)
        )
        if stores:
            commit = stores[0].commit
            for store in stores[1:]:
                commit += store.commit
            yield _histogram("iothub_store_commit_seconds", "Time to commit one write-behind batch to the store", commit)
        yield _labelled(
            CounterMetricFamily,
            "iothub_store_errors",
            "Failed store operations, by operation: write (a batch, retried) or read",
            "operation",
            [store.errors for store in stores],
        )


class ProcessSnapshot(Collector):
    """prometheus-client's process metrics (CPU, memory, open and maximum file descriptors), read in a worker thread.

    Counting the open descriptors lists ``/proc/self/fd``: one entry per socket, about 0.9 µs each (8 ms measured
    at 10,000 descriptors), which on the event loop would stop every socket at every scrape.
    :meth:`read` takes them off the loop; :meth:`collect` gives what it read.
    """

    def __init__(self) -> None:
        self._process = ProcessCollector(registry=None)
        self.families: list[Metric] = []

    async def read(self) -> None:
        self.families = await asyncio.to_thread(lambda: list(self._process.collect()))

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def add_routes(app: web.Application, token: str | None) -> None:
    """``GET /metrics``, open, or behind ``Authorization: Bearer <token>`` when a token is given."""
    services = app[SERVICES]
    registry = CollectorRegistry(auto_describe=False)
    hub = HubCollector()
    registry.register(hub)
    process = ProcessSnapshot()
    registry.register(process)
    PlatformCollector(registry=registry)
    export = make_aiohttp_handler(registry)
    expected = f"Bearer {token}".encode() if token else None

    async def metrics(request: web.Request) -> web.StreamResponse:
        if expected is not None and not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <IOTHUB_METRICS_TOKEN>")
        hub.reports = await services.supervisor.reports()
        await process.read()
        return await export(request)  # reads hub.reports and the process's figures before it first awaits

    app.router.add_get(PATH, metrics)
