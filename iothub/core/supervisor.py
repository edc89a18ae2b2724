"""The supervisor: the control plane — the registry, who is connected where, who is subscribed where.

It decides what a registration or a subscription changes, announces devices
going online and offline to their owners' dashboards, routes broadcasts and
directed messages, and runs the heartbeat sweep. It is never on a telemetry
message's path: the gateways' data planes take those on their own.

It speaks in the structs of :mod:`iothub.core.commands` and answers a refusal
with a :class:`~iothub.core.protocol.Failure`, so that it can live in another
process. It reaches each gateway through a :class:`GatewayLink` — in one
process the gateway's :class:`~iothub.core.dataplane.DataPlane` itself,
called directly — and the owner of a device through a
:class:`~iothub.core.records.Registry`. What the gateways' front ends and the
REST API ask of it is the :class:`ControlPlane`, which in cluster mode is a
client of the supervisor's actor.

Its tables can be rebuilt from the gateways: each tells what it holds when it
joins (:meth:`Supervisor.join`), so a supervisor that restarts starts a new
epoch and asks them again, and a gateway that dies is dropped
(:meth:`Supervisor.drop`) with its devices announced offline. Which gateways
watch which e-mail is pushed to every gateway as it changes (:class:`Routes`),
so that telemetry never waits for the supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, Protocol

import msgspec
from msgspec import Raw, Struct

from .clock import now_ms
from .commands import (
    Attach,
    Broadcast,
    Counts,
    Departed,
    Detach,
    GatewayReport,
    GatewayState,
    Join,
    LastStates,
    Leave,
    Register,
    Routes,
    SendToDevice,
    SendToSocket,
    SendToUser,
    SocketClosed,
    Subscribe,
    Sweep,
    Unsubscribe,
)
from .errors import ErrorCode, ProtocolError
from .protocol import (
    Delivery,
    DeviceInfo,
    DeviceRegistered,
    DeviceStatus,
    Failure,
    LastTelemetry,
    UserSubscribed,
    UserUnsubscribed,
    encode,
)
from .records import Registry


class GatewayLink(Protocol):
    """A gateway, as the supervisor commands it (the methods of :class:`~iothub.core.dataplane.DataPlane`)."""

    async def attach(self, command: Attach) -> bool: ...

    async def detach(self, command: Detach) -> None: ...

    async def join(self, command: Join) -> bool: ...

    async def leave(self, command: Leave) -> bool: ...

    async def deliver(self, command: SendToUser) -> int: ...

    def announce(self, command: SendToUser) -> None:
        """:meth:`deliver`, not waited for (``device_status``): in cluster mode it goes out in the next batch."""
        ...

    async def settled(self) -> None:
        """Return once the gateway has taken everything announced to it so far."""
        ...

    async def route(self, routes: Routes) -> None:
        """Take a change to the routing table, in the order sent; return once the gateway has it."""
        ...

    async def send_to_socket(self, command: SendToSocket) -> int: ...

    async def broadcast(self, command: Broadcast) -> int: ...

    async def sweep(self, command: Sweep) -> list[Departed]: ...

    async def devices(self) -> list[DeviceInfo]: ...

    async def last_states(self, command: LastStates) -> list[LastTelemetry]: ...

    async def counts(self) -> Counts: ...

    async def report(self) -> GatewayReport: ...


class ControlPlane(Protocol):
    """The supervisor as the front ends and the REST API ask it: the :class:`Supervisor` itself in one
    process, a client of its actor in cluster mode."""

    async def register(self, command: Register) -> DeviceRegistered | Failure: ...

    async def socket_closed(self, command: SocketClosed) -> None: ...

    async def subscribe(self, command: Subscribe) -> UserSubscribed | Failure: ...

    async def unsubscribe(self, command: Unsubscribe) -> UserUnsubscribed: ...

    async def send_to_device(self, command: SendToDevice) -> Delivery | Failure: ...

    async def send_to_user(self, command: SendToUser) -> Delivery | Failure: ...

    async def broadcast(self, command: Broadcast) -> Delivery: ...

    async def devices(self) -> list[DeviceInfo]: ...

    async def users(self) -> list[str]: ...

    async def counts(self) -> Counts: ...

    async def reports(self) -> list[GatewayReport]: ...


#: The answer to a gateway the supervisor does not count in the cluster now (dropped, and not yet back).
REJOINING = Failure(code=ErrorCode.INTERNAL, message="this gateway is rejoining the cluster; retry in a moment")


class Location(Struct, frozen=True, gc=False):
    """Where a live device runs, and who owns it (one per live device: kept small, and out of the cyclic GC)."""

    gateway: str
    sid: str
    owner: str | None


class Supervisor:
    def __init__(
        self,
        registry: Registry,
        *,
        heartbeat_timeout_ms: int = 300_000,
        clock: Callable[[], int] = now_ms,
        epoch: int = 0,
    ) -> None:
        self.registry = registry
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.clock = clock
        self._gateways: dict[str, GatewayLink] = {}
        #: imei → where it is live.
        self._located: dict[str, Location] = {}
        #: e-mail → the gateways with a socket subscribed to it.
        self._audience: dict[str, set[str]] = {}
        #: Names a new table of routes (this supervisor's start); ``version`` counts the changes since.
        self.epoch = epoch
        self.version = 0
        #: The last report of each gateway dropped and not back, shown as not alive.
        self._lost: dict[str, GatewayReport] = {}

    def add_gateway(self, name: str, link: GatewayLink) -> None:
        self._gateways[name] = link

    async def join(self, name: str, link: GatewayLink, state: GatewayState) -> None:
        """A gateway (re)joins with what it holds: its devices and audiences enter the tables, silently —
        they were announced when they happened — and it gets the whole routing table.

        A gateway of the same name still in the tables is an earlier incarnation: it is dropped first.
        One that was dropped while it lived (it did not answer in time) has had its devices announced
        offline: they are announced online again. A device live elsewhere too stays where the tables
        have it, and is detached from the joiner.
        """
        if name in self._gateways:
            await self.drop(name)
        returning = self._lost.pop(name, None) is not None
        self._gateways[name] = link
        changed = [email for email in state.watched if self._watch(name, email)]
        now = self.clock()
        for live in state.devices:
            known = self._located.get(live.imei)
            if known is None:
                self._located[live.imei] = Location(name, live.sid, live.owner)
                if returning:
                    self._announce(live.owner, live.imei, "online", now)
            else:
                await link.detach(Detach(live.imei))
        self.version += 1
        await link.route(Routes(self.epoch, self.version, {email: sorted(gateways) for email, gateways in self._audience.items()}, full=True))
        await self._publish(changed, skip=name)

    async def drop(self, name: str, last: GatewayReport | None = None) -> list[str]:
        """A gateway is gone (its process died): its devices go offline for their owners, its audiences
        leave the routing table. ``last``: its last report, shown as not alive until it is back."""
        if self._gateways.pop(name, None) is None:
            return []
        if last is not None:
            self._lost[name] = msgspec.structs.replace(last, alive=False, counts=Counts(0, 0))
        unwatched = [email for email, gateways in self._audience.items() if name in gateways]
        for email in unwatched:
            await self._forget_audience(name, email)
        now = self.clock()
        gone = [(imei, location.owner) for imei, location in self._located.items() if location.gateway == name]
        for imei, owner in gone:
            del self._located[imei]
            self._announce(owner, imei, "offline", now)
        return [imei for imei, _ in gone]

    def gateways(self) -> list[str]:
        return list(self._gateways)

    # ------------------------------------------------------------------ devices

    async def register(self, command: Register) -> DeviceRegistered | Failure:
        """Bind the imei to the socket; the newest registration of an imei wins, on any gateway."""
        imei, owner = command.imei, command.owner
        try:
            live = self._located.get(imei)
            if owner is not None:
                if live is None or live.owner != owner:
                    await self.registry.set_owner(imei, owner)
            elif live is not None:
                owner = live.owner
            else:
                owner = await self.registry.owner_of(imei)
        except ProtocolError as error:
            return Failure.of(error)
        link = self._gateways.get(command.gateway)
        if link is None:
            return REJOINING
        now = self.clock()
        if not await link.attach(Attach(command.sid, imei, owner, now)):
            return DeviceRegistered(imei=imei)  # the socket left while the registry answered
        previous = self._located.get(imei)
        if previous is not None and previous.gateway != command.gateway and previous.gateway in self._gateways:
            await self._gateways[previous.gateway].detach(Detach(imei))
        self._located[imei] = Location(command.gateway, command.sid, owner)
        self._announce(owner, imei, "online", now)
        if owner is not None:  # the dashboards hear of it before the device's first telemetry reaches them
            await asyncio.gather(*(self._gateways[name].settled() for name in self._audience.get(owner, ())))
        return DeviceRegistered(imei=imei)

    async def socket_closed(self, command: SocketClosed) -> None:
        """A gateway lost a socket: its devices go offline, its e-mails may lose that gateway's audience."""
        for email in command.unwatched:
            await self._forget_audience(command.gateway, email)
        now = self.clock()
        for departed in command.offline:
            location = self._located.get(departed.imei)
            if location is not None and location.gateway == command.gateway and location.sid == command.sid:
                del self._located[departed.imei]
            self._announce(departed.owner, departed.imei, "offline", now)

    async def sweep(self) -> list[str]:
        """Drop devices silent for longer than the heartbeat timeout, on every gateway; return their imeis."""
        now = self.clock()
        dropped = []
        for name, link in tuple(self._gateways.items()):
            for departed in await link.sweep(Sweep(now, self.heartbeat_timeout_ms)):
                location = self._located.get(departed.imei)
                if location is not None and location.gateway == name:
                    del self._located[departed.imei]
                self._announce(departed.owner, departed.imei, "offline", now)
                dropped.append(departed.imei)
        return dropped

    def _announce(self, owner: str | None, imei: str, status: Literal["online", "offline"], now: int) -> None:
        gateways = self._audience.get(owner) if owner is not None else None
        if owner is None or not gateways:
            return
        command = SendToUser(owner, "device_status", encode(DeviceStatus(imei=imei, status=status, timestamp=now)))
        for name in gateways:
            self._gateways[name].announce(command)

    # ------------------------------------------------------------------ users

    async def subscribe(self, command: Subscribe) -> UserSubscribed | Failure:
        """Join the e-mail's stream; answer with its devices' last known telemetry."""
        email = command.email
        try:
            records = await self.registry.devices_of(email)
        except ProtocolError as error:
            return Failure.of(error)
        link = self._gateways.get(command.gateway)
        if link is None:
            return REJOINING
        if await link.join(Join(command.sid, email)) and self._watch(command.gateway, email):
            await self._publish([email])  # before the reply: from then on, telemetry from every gateway comes here
        recent = await self._last_states([record.imei for record in records])
        telemetries = []
        for record in records:
            live = recent.get(record.imei)
            stored = record.last
            connected = record.imei in self._located
            if live is not None and (stored is None or live.timestamp >= stored.timestamp):
                telemetries.append(LastTelemetry(record.imei, live.timestamp, live.data, connected))
            elif stored is not None:
                telemetries.append(LastTelemetry(record.imei, stored.timestamp, Raw(stored.data), connected))
        return UserSubscribed(email=email, deviceCount=len(records), telemetries=telemetries)

    async def unsubscribe(self, command: Unsubscribe) -> UserUnsubscribed:
        link = self._gateways.get(command.gateway)
        if link is not None and await link.leave(Leave(command.sid, command.email)):
            await self._forget_audience(command.gateway, command.email)
        return UserUnsubscribed(email=command.email)

    async def _last_states(self, imeis: list[str]) -> dict[str, LastTelemetry]:
        """The gateways' last telemetry of each imei: a live device's, else the newest a departed one left."""
        recent: dict[str, LastTelemetry] = {}
        if not imeis:
            return recent
        for link in self._gateways.values():
            for state in await link.last_states(LastStates(imeis)):
                known = recent.get(state.imei)
                if known is None or (state.connected, state.timestamp) > (known.connected, known.timestamp):
                    recent[state.imei] = state
        return recent

    def _watch(self, gateway: str, email: str) -> bool:
        """Add the gateway to the e-mail's audience; True when it was not in it."""
        gateways = self._audience.setdefault(email, set())
        if gateway in gateways:
            return False
        gateways.add(gateway)
        return True

    async def _forget_audience(self, gateway: str, email: str) -> None:
        gateways = self._audience.get(email)
        if gateways is not None and gateway in gateways:
            gateways.discard(gateway)
            if not gateways:
                del self._audience[email]
            await self._publish([email])

    async def _publish(self, emails: list[str], skip: str | None = None) -> None:
        """Push the audiences of ``emails`` to every gateway (but ``skip``), as one numbered change;
        return once every gateway has it."""
        if not emails or len(self._gateways) < 2:  # one gateway needs no routes: a joiner gets the whole table
            return
        self.version += 1
        routes = Routes(self.epoch, self.version, {email: sorted(self._audience.get(email, ())) for email in emails})
        await asyncio.gather(*(link.route(routes) for name, link in tuple(self._gateways.items()) if name != skip))

    # ------------------------------------------------------------------ operators

    async def send_to_device(self, command: SendToDevice) -> Delivery | Failure:
        location = self._located.get(command.imei)
        if location is None:
            return Failure(code=ErrorCode.NOT_FOUND, message=f"device {command.imei} is not connected")
        link = self._gateways.get(location.gateway)
        if link is None:
            return Failure(code=ErrorCode.NOT_FOUND, message=f"device {command.imei} is not connected")
        recipients = await link.send_to_socket(SendToSocket(location.sid, command.event, command.payload))
        return Delivery(command.event, recipients)

    async def send_to_user(self, command: SendToUser) -> Delivery | Failure:
        gateways = self._audience.get(command.email)
        if not gateways:
            return Failure(code=ErrorCode.NOT_FOUND, message=f"nobody is subscribed to {command.email}")
        recipients = 0
        for name in tuple(gateways):
            link = self._gateways.get(name)
            if link is not None:
                recipients += await link.deliver(command)
        return Delivery(command.event, recipients)

    async def broadcast(self, command: Broadcast) -> Delivery:
        recipients = 0
        for link in tuple(self._gateways.values()):
            recipients += await link.broadcast(command)
        return Delivery(command.event, recipients)

    async def devices(self) -> list[DeviceInfo]:
        return [device for link in tuple(self._gateways.values()) for device in await link.devices()]

    async def users(self) -> list[str]:
        return sorted(self._audience)

    async def reports(self) -> list[GatewayReport]:
        """Every gateway's report, those dropped and not back included (not alive), by name.

        Both taken as they are now: one that comes back while the live ones answer is still in the dropped ones.
        """
        live, lost = tuple(self._gateways.values()), tuple(self._lost.values())
        reports = [await link.report() for link in live]
        return sorted([*reports, *lost], key=lambda report: report.name)

    async def counts(self) -> Counts:
        connections = devices = 0
        for link in tuple(self._gateways.values()):
            counts = await link.counts()
            connections += counts.connections
            devices += counts.devices
        return Counts(connections=connections, devices=devices)
