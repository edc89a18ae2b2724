"""Simulated devices and dashboards: the load ``iothub bench`` and ``iothub simulate`` put on a server.

A :class:`Device` behaves like the seed's example device (register, heartbeat,
plausible telemetry, an alert now and then) and stamps each message with a
sequence number and its send time. A :class:`Dashboard` subscribes to one
owner and checks what arrives: latency, losses, duplicates, order, alerts.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from ..core.rules import DEFAULT_RULES, AlertRule
from .client import WireClient

#: One message in this many carries a reading that fires a rule.
ALERT_SHARE = 0.11


def firing_value(rule: AlertRule) -> float:
    """A reading a little past the rule's threshold: a fifth above, a twentieth below (one, at a threshold of 0)."""
    threshold = rule.threshold
    match rule.op:
        case ">":
            return threshold + (abs(threshold) * 0.2 or 1.0)
        case "<":
            return threshold - (abs(threshold) * 0.05 or 1.0)
        case "!=":
            return threshold + 1.0
        case _:  # ">=", "<=", "=="
            return threshold


def alert_readings(rules: Sequence[AlertRule] = DEFAULT_RULES) -> dict[str, dict[str, float]]:
    """What an alerting message sets, by rule code, derived from the rules themselves."""
    return {rule.code: {rule.field: firing_value(rule)} for rule in rules}


#: The readings the simulated fleet uses to raise alerts, and the events those alerts go out as.
ALERT_READINGS = alert_readings()
ALERT_EVENTS = frozenset(rule.event_name for rule in DEFAULT_RULES)


def owner_of(index: int, owners: int) -> str:
    return f"owner{index % owners}@fleet.example"


def imei_of(index: int) -> str:
    return f"{350000000000000 + index:015d}"


class Tally:
    """What one side of the fleet counted, summed over all its members."""

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.alerts_sent: Counter[str] = Counter()
        self.ack_latency_ns: list[int] = []
        self.acked_per_second: Counter[int] = Counter()

    def line(self) -> str:
        return f"sent {self.sent}, acknowledged {self.acked}, refused {self.failed}, alerts {sum(self.alerts_sent.values())}"


class Device:
    def __init__(
        self, session: aiohttp.ClientSession, url: str, index: int, owners: int, tally: Tally, rng: random.Random
    ) -> None:
        self.imei = imei_of(index)
        self.owner = owner_of(index, owners)
        self.client = WireClient(session, url)
        self.tally = tally
        self.rng = rng
        self.seq = 0
        self.in_flight = 0
        self.speed = rng.uniform(0, 120)
        self.position = [40.7128 + rng.uniform(-0.05, 0.05), -74.0060 + rng.uniform(-0.05, 0.05)]

    async def start(self, auth: dict[str, Any] | None = None) -> None:
        await self.client.connect(auth)
        reply = await self.client.call("register_device", {"imei": self.imei, "userEmail": self.owner})
        if not reply.get("success"):
            raise ConnectionError(f"register_device {self.imei} refused: {reply}")

    def reading(self) -> dict[str, Any]:
        """Plausible telemetry, inside every default threshold but when one is crossed on purpose."""
        rng = self.rng
        self.speed = min(150.0, max(0.0, self.speed + rng.uniform(-5, 5)))
        self.position[0] += rng.uniform(-0.0005, 0.0005)
        self.position[1] += rng.uniform(-0.0005, 0.0005)
        data: dict[str, Any] = {
            "engineRpm": round(800 + self.speed * 18 + rng.uniform(-100, 100)),
            "speed": round(self.speed, 1),
            "fuelLevel": round(rng.uniform(10, 100), 1),
            "batteryVoltage": round(rng.uniform(12.2, 14.4), 2),
            "crashDetection": 0,
            "dtc": 0,
            "position": {"latitude": round(self.position[0], 6), "longitude": round(self.position[1], 6)},
        }
        if rng.random() < ALERT_SHARE:
            code = rng.choice(tuple(ALERT_READINGS))
            data.update(ALERT_READINGS[code])
            self.tally.alerts_sent[code] += 1
        return data

    def send(self, on_ack: Callable[[], None] | None = None) -> None:
        """One telemetry message, acknowledged; its data carries ``seq`` and ``sentNs``."""
        data = self.reading()
        sent_ns = time.time_ns()
        data["seq"] = self.seq
        data["sentNs"] = sent_ns
        self.seq += 1
        self.in_flight += 1
        self.tally.sent += 1

        def acknowledged(reply: Any) -> None:
            self.in_flight -= 1
            now = time.time_ns()
            if isinstance(reply, dict) and reply.get("success"):
                self.tally.acked += 1
                self.tally.ack_latency_ns.append(now - sent_ns)
                self.tally.acked_per_second[now // 1_000_000_000] += 1
            else:
                self.tally.failed += 1
            if on_ack is not None:
                on_ack()

        self.client.emit("telemetry_data", {"imei": self.imei, "timestamp": sent_ns // 1_000_000, "data": data}, acknowledged)

    def heartbeat(self) -> None:
        self.client.emit("heartbeat", {"imei": self.imei})


class Dashboard:
    def __init__(self, session: aiohttp.ClientSession, url: str, email: str) -> None:
        self.email = email
        self.client = WireClient(session, url, self._on_event)
        self.latency_ns: list[int] = []
        self.delivered_per_second: Counter[int] = Counter()
        self.alerts: Counter[str] = Counter()
        self.seen: dict[str, set[int]] = {}
        self.last_seq: dict[str, int] = {}
        self.duplicates = 0
        self.out_of_order = 0

    async def start(self, auth: dict[str, Any] | None = None) -> None:
        await self.client.connect(auth)
        reply = await self.client.call("subscribe_user", {"email": self.email})
        if not reply.get("success"):
            raise ConnectionError(f"subscribe_user {self.email} refused: {reply}")

    @property
    def delivered(self) -> int:
        return sum(len(seqs) for seqs in self.seen.values())

    def _on_event(self, event: str, payload: Any) -> None:
        if event == "telemetry_update":
            now = time.time_ns()
            data = payload["data"]
            imei = payload["imei"]
            seq = data.get("seq")
            sent_ns = data.get("sentNs")
            if seq is None or sent_ns is None:
                return
            self.latency_ns.append(now - sent_ns)
            self.delivered_per_second[now // 1_000_000_000] += 1
            seen = self.seen.setdefault(imei, set())
            if seq in seen:
                self.duplicates += 1
            seen.add(seq)
            if seq < self.last_seq.get(imei, -1):
                self.out_of_order += 1
            else:
                self.last_seq[imei] = seq
        elif event in ALERT_EVENTS:
            self.alerts[payload["alert"]["code"]] += 1


async def start_all(members: Sequence[Device | Dashboard], concurrency: int, auth: dict[str, Any] | None = None) -> None:
    """Connect members a bounded number at a time, so a big fleet does not stampede the server."""
    await _bounded([functools.partial(member.start, auth) for member in members], concurrency)


async def close_all(members: Sequence[Device | Dashboard], concurrency: int) -> None:
    """Close members' connections a bounded number at a time, at the pace they connected."""
    await _bounded([member.client.close for member in members], concurrency)


async def _bounded(calls: Sequence[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def call(each: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await each()

    await asyncio.gather(*(call(each) for each in calls))


async def simulate(
    url: str, devices: int, rate: float, duration: float | None, token: str | None = None, owners: int | None = None
) -> Tally:
    """``iothub simulate``: a fleet sending ``rate`` messages a second in all, for ``duration`` seconds or until
    stopped; a tally every five seconds and one at the end. ``owners`` (default: one per ten devices, at least
    one) are ``owner0@fleet.example`` and up, devices dealt out to them in turn."""
    rng = random.Random()
    tally = Tally()
    auth = {"token": token} if token else None
    owners = owners or max(1, devices // 10)
    async with aiohttp.ClientSession() as session:
        fleet = [Device(session, url, index, owners, tally, rng) for index in range(devices)]
        await start_all(fleet, 100, auth)
        print(f"{devices} devices registered on {url}; owners owner0..owner{owners - 1}@fleet.example", flush=True)
        period = devices / rate
        started = time.monotonic()
        deadline = None if duration is None else started + duration

        def left() -> float:
            return float("inf") if deadline is None else deadline - time.monotonic()

        async def run(device: Device) -> None:
            await asyncio.sleep(min(rng.uniform(0, period), max(0.0, left())))
            while left() > 0:
                device.send()
                await asyncio.sleep(min(period, max(0.0, left())))

        async def report() -> None:
            heartbeat_at = started + HEARTBEAT_EVERY_S
            while True:
                await asyncio.sleep(5)
                if time.monotonic() >= heartbeat_at:
                    for device in fleet:
                        device.heartbeat()
                    heartbeat_at += HEARTBEAT_EVERY_S
                print(tally.line(), flush=True)

        reporter = asyncio.create_task(report())
        try:
            await asyncio.gather(*(run(device) for device in fleet))
            await _answered(tally, timeout=2.0)
        finally:
            reporter.cancel()
            await asyncio.gather(*(device.client.close() for device in fleet))
            print(tally.line(), flush=True)
    return tally


#: How often the simulated devices send a heartbeat besides their telemetry.
HEARTBEAT_EVERY_S = 30


async def _answered(tally: Tally, timeout: float) -> None:
    """Wait, bounded, for the replies to what was sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tally.acked + tally.failed >= tally.sent:
            return
        await asyncio.sleep(0.05)
