"""The supervisor over several gateways, with plain objects: the routing table it pushes, what crosses,
gateways joining, dropped and coming back, and a supervisor rebuilt from the gateways' state.

Each gateway is a :class:`DataPlane` with a recording outbox; its relay hands
what it relays straight to the other plane's :meth:`DataPlane.receive`, as
the cluster's batches do — so a test says who received what, on which gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import msgspec

from iothub.core.alerts import AlertEngine
from iothub.core.commands import Crossing, GatewayReport, GatewayState, Live, Register, SendToDevice, SocketClosed, Subscribe
from iothub.core.dataplane import DataPlane
from iothub.core.protocol import Delivery, DeviceRegistered, TelemetryData, UserSubscribed
from iothub.core.supervisor import Supervisor
from iothub.persistence.memory import MemoryStore

from ..support.planes import Clock, RecordingOutbox, RecordingRecorder

IMEI = "356938035643809"
ALICE = "alice@example.com"
LOW_BATTERY = {"batteryVoltage": 9.0}


class Relay:
    """Carries packets to the named planes at once, counting them."""

    def __init__(self, planes: dict[str, DataPlane]) -> None:
        self.planes = planes
        self.carried: list[tuple[str, Crossing]] = []

    def relay(self, gateways: Collection[str], packet: Crossing) -> None:
        for name in gateways:
            self.carried.append((name, packet))
            self.planes[name].receive([packet])


class Cluster:
    def __init__(self, *names: str) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.planes: dict[str, DataPlane] = {}
        self.outboxes: dict[str, RecordingOutbox] = {}
        self.relay = Relay(self.planes)
        engine = AlertEngine()
        for name in names:
            self.outboxes[name] = RecordingOutbox()
            self.planes[name] = DataPlane(name, engine, self.outboxes[name], RecordingRecorder(), clock=self.clock, relay=self.relay)
        self.supervisor = self.new_supervisor(epoch=1)

    def new_supervisor(self, epoch: int) -> Supervisor:
        supervisor = Supervisor(self.store, clock=self.clock, epoch=epoch)
        for name, plane in self.planes.items():
            supervisor.add_gateway(name, plane)
        return supervisor

    async def register(self, gateway: str, sid: str, imei: str = IMEI, owner: str | None = ALICE) -> None:
        self.planes[gateway].connect(sid)
        reply = await self.supervisor.register(Register(gateway, sid, imei, owner))
        assert isinstance(reply, DeviceRegistered), reply

    async def subscribe(self, gateway: str, sid: str, email: str = ALICE) -> UserSubscribed:
        self.planes[gateway].connect(sid)
        reply = await self.supervisor.subscribe(Subscribe(gateway, sid, email))
        assert isinstance(reply, UserSubscribed), reply
        return reply

    def telemetry(self, gateway: str, sid: str, data: dict[str, Any], imei: str = IMEI) -> None:
        self.planes[gateway].telemetry(sid, TelemetryData(imei=imei, data=msgspec.Raw(msgspec.json.encode(data))))

    def events(self, gateway: str, sid: str) -> list[str]:
        return self.outboxes[gateway].events(sid)

    def received(self, gateway: str, sid: str) -> list[tuple[str, Any]]:
        return self.outboxes[gateway].received(sid)


async def test_telemetry_and_its_alerts_reach_a_dashboard_on_another_gateway() -> None:
    cluster = Cluster("a", "b")
    await cluster.subscribe("b", "dashboard")
    await cluster.register("a", "device")
    cluster.telemetry("a", "device", LOW_BATTERY)
    assert cluster.events("b", "dashboard") == ["device_status", "telemetry_update", "vehicle_alert"]
    assert [name for name, _ in cluster.relay.carried] == ["b", "b"], "one packet each, to the watching gateway only"


async def test_nothing_crosses_to_a_gateway_without_subscribers_of_the_owner() -> None:
    cluster = Cluster("a", "b")
    await cluster.subscribe("a", "dashboard")
    await cluster.register("a", "device")
    cluster.telemetry("a", "device", LOW_BATTERY)
    assert cluster.relay.carried == []
    assert cluster.events("a", "dashboard") == ["device_status", "telemetry_update", "vehicle_alert"]


async def test_the_routes_follow_the_last_subscriber_leaving_a_gateway() -> None:
    cluster = Cluster("a", "b")
    await cluster.subscribe("b", "dashboard")
    await cluster.register("a", "device")
    await cluster.supervisor.socket_closed(cluster.planes["b"].disconnect("dashboard"))
    cluster.telemetry("a", "device", {"speed": 1})
    assert cluster.relay.carried == []
    assert cluster.planes["a"].routes_version == (1, 2), "one numbered change to subscribe, one to leave"


async def test_the_newest_registration_wins_across_gateways() -> None:
    cluster = Cluster("a", "b")
    await cluster.subscribe("a", "dashboard")
    await cluster.register("a", "old")
    await cluster.register("b", "new")
    assert [device.socketId for device in await cluster.supervisor.devices()] == ["new"]
    cluster.telemetry("b", "new", {"speed": 2})
    assert cluster.events("a", "dashboard")[-1] == "telemetry_update"
    delivery = await cluster.supervisor.send_to_device(SendToDevice(IMEI, "command", b"{}"))
    assert delivery == Delivery("command", 1) and cluster.events("b", "new") == ["command"]


async def test_a_dropped_gateways_devices_go_offline_and_its_audience_leaves_the_routes() -> None:
    cluster = Cluster("a", "b")
    await cluster.subscribe("a", "dashboard")
    await cluster.subscribe("b", "other dashboard")
    await cluster.register("b", "device")
    gone = await cluster.supervisor.drop("b")
    assert gone == [IMEI]
    assert cluster.received("a", "dashboard")[-1] == (
        "device_status",
        {"type": "device_status", "imei": IMEI, "status": "offline", "timestamp": cluster.clock.now},
    )
    assert (await cluster.supervisor.counts()).devices == 0
    assert cluster.supervisor.gateways() == ["a"]


async def test_a_gateway_dropped_while_it_lived_comes_back_and_its_devices_are_online_again() -> None:
    cluster = Cluster("a", "b")
    await cluster.subscribe("a", "dashboard")
    await cluster.register("b", "device")
    report = await cluster.planes["b"].report()
    await cluster.supervisor.drop("b", report)
    assert [(r.name, r.alive) for r in await cluster.supervisor.reports()] == [("a", True), ("b", False)]
    await cluster.supervisor.join("b", cluster.planes["b"], cluster.planes["b"].state())
    statuses = [payload["status"] for event, payload in cluster.received("a", "dashboard") if event == "device_status"]
    assert statuses == ["online", "offline", "online"]
    assert [(r.name, r.alive) for r in await cluster.supervisor.reports()] == [("a", True), ("b", True)]


class SlowToReport:
    """A gateway's link whose report waits for ``released``: what the status sees while another gateway joins."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.asked = asyncio.Event()
        self.released = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.plane, name)

    async def report(self) -> GatewayReport:
        self.asked.set()
        await self.released.wait()
        return await self.plane.report()


async def test_a_gateway_coming_back_while_the_reports_are_gathered_is_in_them() -> None:
    cluster = Cluster("a", "b")
    slow = SlowToReport(cluster.planes["a"])
    cluster.supervisor.add_gateway("a", slow)
    await cluster.supervisor.drop("b", await cluster.planes["b"].report())
    gathering = asyncio.ensure_future(cluster.supervisor.reports())
    await slow.asked.wait()
    await cluster.supervisor.join("b", cluster.planes["b"], cluster.planes["b"].state())
    slow.released.set()
    assert [(r.name, r.alive) for r in await gathering] == [("a", True), ("b", False)], "as it was when asked"
    assert [(r.name, r.alive) for r in await cluster.supervisor.reports()] == [("a", True), ("b", True)]


async def test_a_restarted_supervisor_rebuilds_its_tables_from_the_gateways_and_announces_nothing() -> None:
    cluster = Cluster("a", "b")
    await cluster.subscribe("a", "dashboard")
    await cluster.register("b", "device")
    before = {name: list(outbox.sent) for name, outbox in cluster.outboxes.items()}
    cluster.supervisor = Supervisor(cluster.store, clock=cluster.clock, epoch=2)
    for name, plane in cluster.planes.items():
        await cluster.supervisor.join(name, plane, plane.state())
    assert {name: list(outbox.sent) for name, outbox in cluster.outboxes.items()} == before, "nothing delivered twice"
    assert [device.imei for device in await cluster.supervisor.devices()] == [IMEI]
    assert await cluster.supervisor.users() == [ALICE]
    assert cluster.planes["b"].routes_version[0] == 2, "the new epoch's table"
    cluster.telemetry("b", "device", {"speed": 3})
    assert cluster.events("a", "dashboard")[-1] == "telemetry_update"


async def test_a_joining_gateway_state_is_what_the_supervisor_needs() -> None:
    cluster = Cluster("a")
    await cluster.subscribe("a", "dashboard")
    await cluster.register("a", "device")
    assert cluster.planes["a"].state() == GatewayState([Live(IMEI, "device", ALICE)], [ALICE])


async def test_a_socket_closed_on_a_gateway_the_supervisor_dropped_changes_nothing_else() -> None:
    cluster = Cluster("a", "b")
    await cluster.register("a", "device")
    await cluster.supervisor.drop("b")
    await cluster.supervisor.socket_closed(SocketClosed("b", "gone", [], [ALICE]))
    assert [device.imei for device in await cluster.supervisor.devices()] == [IMEI]
