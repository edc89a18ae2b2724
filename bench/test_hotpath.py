"""Micro-benchmarks of the per-message path: decode + alert rules, packets, one fan-out.

Run with ``make bench`` (``pytest bench --benchmark-only``). The json+dicts
case is the plain way to do the same work, measured in the same run so the
ratio means something on any machine.
"""

from __future__ import annotations

import json
from time import perf_counter_ns

import msgspec
import pytest

from iothub.core.alerts import AlertEngine, EvaluatorKind
from iothub.core.commands import Register, Subscribe
from iothub.core.dataplane import DataPlane
from iothub.core.metrics import ACK_SLOT, TELEMETRY_DATA, Counters
from iothub.core.protocol import TelemetryData, TelemetryDataEvent, TelemetryUpdate, decode_event, encode
from iothub.core.supervisor import Supervisor
from iothub.frontend.packets import EventPacket, event_text, split_event
from iothub.frontend.transport import FramedPacket, masked_frame_size
from iothub.persistence.memory import MemoryStore
from iothub.persistence.writebehind import WriteBehind

TELEMETRY = (
    '["telemetry_data",{"imei":"123456789012345","timestamp":1703123456789,"data":{"engineRpm":2500,'
    '"speed":65,"fuelLevel":75,"batteryVoltage":12.5,"crashDetection":0,"dtc":0,'
    '"position":{"latitude":40.7128,"longitude":-74.006}}}]'
)


def json_and_dicts(text: str) -> list[str]:
    """The plain hot path: stdlib json, dict look-ups and isinstance checks."""
    _event, payload = json.loads(text)
    imei = payload.get("imei")
    if not isinstance(imei, str) or len(imei) != 15 or not imei.isdigit():
        raise ValueError("imei")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise ValueError("data")
    for name in ("engineRpm", "speed", "fuelLevel", "batteryVoltage", "crashDetection", "dtc"):
        value = data.get(name)
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(name)
    position = data.get("position")
    if position is not None and not (-90 <= position["latitude"] <= 90 and -180 <= position["longitude"] <= 180):
        raise ValueError("position")
    fired = []
    if (v := data.get("crashDetection")) is not None and v > 0:
        fired.append("CRASH_DETECTED")
    if (v := data.get("batteryVoltage")) is not None and v < 12.0:
        fired.append("LOW_BATTERY")
    if (v := data.get("engineRpm")) is not None and v > 4000:
        fired.append("HIGH_RPM")
    if (v := data.get("dtc")) is not None and v > 0:
        fired.append("DTC_DETECTED")
    return fired


def test_hot_path(benchmark) -> None:
    """Decode a telemetry_data event and evaluate the rules: the one compiled pass the gateway runs."""
    engine = AlertEngine()
    message, fired = benchmark(engine.read, TELEMETRY)
    assert message.imei == "123456789012345" and fired == ()


@pytest.mark.parametrize("kind", ["compiled", "reference"])
def test_hot_path_through_msgspec(benchmark, kind: EvaluatorKind) -> None:
    """The road every other event takes: msgspec decodes the event, then data's readings, then the evaluator."""
    engine = AlertEngine(evaluator=kind)

    def hot_path() -> tuple[int, ...]:
        event = decode_event(TELEMETRY)
        assert isinstance(event, TelemetryDataEvent)
        return engine.check(event.payload.data)

    assert benchmark(hot_path) == ()


def test_hot_path_json_and_dicts(benchmark) -> None:
    assert benchmark(json_and_dicts, TELEMETRY) == []


def test_packet_decode(benchmark) -> None:
    """A Socket.IO EVENT packet with an ack id, split as the gateway does."""
    assert benchmark(split_event, "217" + TELEMETRY) == (17, TELEMETRY)


def test_packet_decode_by_python_socketio(benchmark) -> None:
    """The same packet through python-socketio's generic parser, which the gateway keeps for the rare ones."""
    packet = benchmark(lambda: EventPacket(encoded_packet="2" + "17" + TELEMETRY))
    assert packet.id == 17


def test_packet_encode(benchmark) -> None:
    """A telemetry_update packet and its WebSocket frame, built once per message."""
    update = TelemetryUpdate(imei="123456789012345", timestamp=1, data=msgspec.Raw(b'{"speed":65}'))
    frame = benchmark(lambda: FramedPacket(4, event_text("telemetry_update", encode(update))).frame())
    assert frame.endswith(b'"data":{"speed":65}}]')


class CountingOutbox:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, sids, event, payload) -> int:
        self.sent += len(sids)
        return len(sids)


async def test_fan_out(benchmark) -> None:
    """One telemetry message through the data plane to an owner with ten dashboards."""
    store = MemoryStore()
    outbox = CountingOutbox()
    plane = DataPlane("gateway-0", AlertEngine(), outbox, WriteBehind(store))
    supervisor = Supervisor(store)
    supervisor.add_gateway(plane.name, plane)
    plane.connect("device")
    await supervisor.register(Register(plane.name, "device", "123456789012345", "owner@example.com"))
    for index in range(10):
        plane.connect(f"dashboard{index}")
        await supervisor.subscribe(Subscribe(plane.name, f"dashboard{index}", "owner@example.com"))
    message = decode_event(TELEMETRY).payload
    assert isinstance(message, TelemetryData)
    benchmark(plane.telemetry, "device", message)
    assert outbox.sent >= 10



def test_counting_one_message(benchmark) -> None:
    """What ``/metrics`` adds to one telemetry message with one dashboard, as the pump and the gateway count it."""
    counters = Counters(AlertEngine().rules)

    def count(text: str) -> None:
        counters.bytes_in += masked_frame_size(len(text) if text.isascii() else len(text.encode()))  # the pump reads it
        received = perf_counter_ns()  # the gateway takes it
        counters.sent_to("telemetry_update", 1)  # the data plane's fan-out
        counters.fanout.observe(perf_counter_ns() - received)  # taken → last dashboard packet queued
        counters.received[TELEMETRY_DATA] += 1
        counters.sent[ACK_SLOT] += 1  # the reply
        counters.bytes_out += 180  # the pump's write at the end of the loop turn

    benchmark(count, TELEMETRY)
    assert counters.received[TELEMETRY_DATA] == sum(counters.fanout.counts) > 0
