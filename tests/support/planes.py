"""The core's two planes wired as one process wires them, around recording stand-ins for the front end.

:class:`OneProcess` is a :class:`~iothub.core.dataplane.DataPlane` whose
supervisor commands it directly, as :mod:`iothub.app` sets them up, with a
recording :class:`Outbox`, any recorder and registry, and an injected clock,
so that a test says exactly who received what, when.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import msgspec

from iothub.core.alerts import AlertEngine
from iothub.core.commands import Broadcast, Register, SendToDevice, SendToUser, Subscribe, Unsubscribe
from iothub.core.dataplane import DataPlane
from iothub.core.metrics import COMMIT_BUCKETS, Histogram, StoreMetrics
from iothub.core.protocol import DeviceRegistered, Failure, TelemetryData, UserSubscribed, UserUnsubscribed
from iothub.core.records import AlertRecord, Recorder, Registry, TelemetryRecord
from iothub.core.supervisor import Supervisor

T0 = 1_700_000_000_000
GATEWAY = "gateway-0"


@dataclass(frozen=True)
class Sent:
    sids: frozenset[str]
    event: str
    raw: bytes | None

    @property
    def payload(self) -> Any:
        return None if self.raw is None else msgspec.json.decode(self.raw)


class RecordingOutbox:
    """Records every send; every socket it is given receives."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def send(self, sids: Collection[str], event: str, payload: bytes | None) -> int:
        self.sent.append(Sent(frozenset(sids), event, payload))
        return len(self.sent[-1].sids)

    def received(self, sid: str) -> list[tuple[str, Any]]:
        """(event, decoded payload) of what ``sid`` got, in order."""
        return [(sent.event, sent.payload) for sent in self.sent if sid in sent.sids]

    def events(self, sid: str) -> list[str]:
        return [event for event, _ in self.received(sid)]


class Committed:
    """A commit handle whose batch is committed already."""

    def committed(self) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class RecordingRecorder:
    def __init__(self) -> None:
        self.telemetry_rows: list[TelemetryRecord] = []
        self.alert_rows: list[AlertRecord] = []

    def telemetry(self, record: TelemetryRecord) -> Committed:
        self.telemetry_rows.append(record)
        return Committed()

    def alert(self, record: AlertRecord) -> None:
        self.alert_rows.append(record)

    def metrics(self) -> StoreMetrics:
        return StoreMetrics(store="recording", backlog=0, commit=Histogram(COMMIT_BUCKETS).snapshot(), errors={})


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now


@dataclass
class OneProcess:
    plane: DataPlane
    supervisor: Supervisor
    outbox: RecordingOutbox
    clock: Clock = field(default_factory=Clock)

    @classmethod
    def build(
        cls,
        registry: Registry,
        recorder: Recorder,
        engine: AlertEngine | None = None,
        *,
        heartbeat_timeout_ms: int = 300_000,
        alert_cooldown_ms: int = 0,
    ) -> OneProcess:
        clock, outbox = Clock(), RecordingOutbox()
        plane = DataPlane(GATEWAY, engine or AlertEngine(), outbox, recorder, alert_cooldown_ms=alert_cooldown_ms, clock=clock)
        supervisor = Supervisor(registry, heartbeat_timeout_ms=heartbeat_timeout_ms, clock=clock)
        supervisor.add_gateway(GATEWAY, plane)
        return cls(plane, supervisor, outbox, clock)

    def connect(self, *sids: str) -> None:
        for sid in sids:
            self.plane.connect(sid)

    async def disconnect(self, sid: str) -> None:
        await self.supervisor.socket_closed(self.plane.disconnect(sid))

    async def register(self, sid: str, imei: str, owner: str | None = None) -> DeviceRegistered | Failure:
        return await self.supervisor.register(Register(GATEWAY, sid, imei, owner))

    async def subscribe(self, sid: str, email: str) -> UserSubscribed:
        reply = await self.supervisor.subscribe(Subscribe(GATEWAY, sid, email))
        assert isinstance(reply, UserSubscribed), reply
        return reply

    async def unsubscribe(self, sid: str, email: str) -> UserUnsubscribed:
        return await self.supervisor.unsubscribe(Unsubscribe(GATEWAY, sid, email))

    def telemetry(self, sid: str, imei: str, data: dict[str, Any] | bytes, timestamp: int | None = None) -> None:
        raw = data if isinstance(data, bytes) else msgspec.json.encode(data)
        self.plane.telemetry(sid, TelemetryData(imei=imei, data=msgspec.Raw(raw), timestamp=timestamp))

    async def send_to_device(self, imei: str, event: str, payload: bytes | None) -> int | Failure:
        reply = await self.supervisor.send_to_device(SendToDevice(imei, event, payload))
        return reply if isinstance(reply, Failure) else reply.recipients

    async def send_to_user(self, email: str, event: str, payload: bytes | None) -> int | Failure:
        reply = await self.supervisor.send_to_user(SendToUser(email, event, payload))
        return reply if isinstance(reply, Failure) else reply.recipients

    async def broadcast(self, event: str, payload: bytes | None) -> int:
        return (await self.supervisor.broadcast(Broadcast(event, payload))).recipients

    async def device_count(self) -> int:
        return (await self.supervisor.counts()).devices

    async def connection_count(self) -> int:
        return (await self.supervisor.counts()).connections
