"""The counters behind ``/metrics`` as plain objects: buckets, labels, refusal reasons, sockets by role."""

from __future__ import annotations

import pytest

from iothub.core.errors import ErrorCode
from iothub.core.metrics import (
    ACK_SLOT,
    DISCONNECT_REASONS,
    RECEIVED_EVENTS,
    REFUSAL_REASONS,
    Counters,
    Histogram,
    HistogramSnapshot,
    PeakSnapshot,
    received_index,
)
from iothub.core.rules import DEFAULT_RULES, merge_rules
from iothub.persistence.memory import MemoryStore

from ..support.planes import OneProcess, RecordingRecorder


def test_a_bucket_holds_what_is_at_most_its_bound() -> None:
    histogram = Histogram((0.001, 0.01))
    for ns in (0, 1_000_000, 1_000_001, 10_000_000, 10_000_001, 10**12):
        histogram.observe(ns)
    snapshot = histogram.snapshot()
    assert snapshot.bounds == (0.001, 0.01)
    assert snapshot.counts == (2, 2, 2)
    assert snapshot.sum == pytest.approx((0 + 1_000_000 + 1_000_001 + 10_000_000 + 10_000_001 + 10**12) / 1e9)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram((0.01, 0.001))


def test_histograms_of_two_gateways_add_up() -> None:
    a = HistogramSnapshot((1.0,), (1, 2), 3.5)
    assert a + HistogramSnapshot((1.0,), (4, 0), 1.0) == HistogramSnapshot((1.0,), (5, 2), 4.5)
    with pytest.raises(ValueError, match="different buckets"):
        a + HistogramSnapshot((2.0,), (0, 0), 0.0)


def test_every_error_code_is_a_refusal_reason() -> None:
    counters = Counters(DEFAULT_RULES)
    for code in ErrorCode:
        counters.refused(code)
    assert set(counters.refusals) == set(REFUSAL_REASONS)
    assert sum(counters.refusals.values()) == len(ErrorCode)
    assert counters.refusals["invalid"] == 5  # payload, imei, e-mail, a target that does not exist, a method not allowed
    assert counters.refusals["too_slow"] == 0  # not an event's refusal: a socket cut off


def test_events_are_labelled_by_the_protocols_names_or_other() -> None:
    assert RECEIVED_EVENTS[0] == "telemetry_data" and RECEIVED_EVENTS[-1] == "other"
    assert RECEIVED_EVENTS[received_index("subscribe_user")] == "subscribe_user"
    assert RECEIVED_EVENTS[received_index("my_own_event")] == "other"
    assert RECEIVED_EVENTS[received_index(None)] == "other"


def test_packets_sent_are_labelled_by_the_servers_events_and_the_rules() -> None:
    rules = merge_rules([{"code": "COOLANT_HOT", "field": "coolantTemp", "op": ">", "threshold": 110, "level": "info", "message": "hot",
                          "event": "coolant_alarm"}])  # fmt: skip
    counters = Counters(rules)
    counters.sent_to("coolant_alarm", 2)
    counters.sent_to("health_warning", 0)
    counters.sent_to("system_notification", 5)  # an operator's broadcast: its name is no label
    counters.sent_to("other", 1)
    counters.sent[ACK_SLOT] += 1
    sent = counters.snapshot("g", {}, 0).packets_sent
    assert {name: count for name, count in sent.items() if count} == {"coolant_alarm": 2, "other": 6, "ack": 1}
    assert {"telemetry_update", "device_status", "vehicle_alert", "crash_detected", "error"} <= sent.keys()


def test_a_disconnect_reason_is_one_of_a_few() -> None:
    counters = Counters(DEFAULT_RULES)
    for reason in ("client disconnect", "ping timeout", None, "something new"):
        counters.disconnected(reason)
    assert set(counters.disconnects) == set(DISCONNECT_REASONS)
    assert {reason: count for reason, count in counters.disconnects.items() if count} == {
        "client_disconnect": 1, "ping_timeout": 1, "other": 2,
    }  # fmt: skip


async def test_sockets_are_counted_by_what_they_do() -> None:
    hub = OneProcess.build(MemoryStore(), RecordingRecorder())
    hub.connect("device", "dashboard", "both", "idle")
    assert (await hub.register("device", "356938035643809", "a@example.com")).success is True
    await hub.subscribe("dashboard", "a@example.com")
    assert (await hub.register("both", "490154203237518", "b@example.com")).success is True
    await hub.subscribe("both", "a@example.com")
    hub.telemetry("device", "356938035643809", {"batteryVoltage": 11.0, "crashDetection": 1})
    metrics = hub.plane.metrics()
    assert metrics.sockets == {"device": 2, "dashboard": 1, "other": 1}
    assert metrics.devices_online == 2
    assert {(a.code, a.level): a.count for a in metrics.alerts if a.count} == {("LOW_BATTERY", "warning"): 1, ("CRASH_DETECTED", "critical"): 1}
    await hub.disconnect("device")
    await hub.unsubscribe("dashboard", "a@example.com")
    assert hub.plane.metrics().sockets == {"device": 1, "dashboard": 0, "other": 2}


def test_peaks_of_two_gateways_add_up_and_keep_the_larger() -> None:
    a = PeakSnapshot(HistogramSnapshot((1.0,), (1, 0), 0.5), 0.5)
    b = PeakSnapshot(HistogramSnapshot((1.0,), (0, 1), 2.0), 2.0)
    assert a + b == PeakSnapshot(HistogramSnapshot((1.0,), (1, 1), 2.5), 2.0)
