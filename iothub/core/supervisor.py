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
:class:`~iothub.core.records.Registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from msgspec import Raw, Struct

from .clock import now_ms
from .commands import (
    Attach,
    Broadcast,
    Counts,
    Departed,
    Detach,
    Join,
    LastStates,
    Leave,
    Register,
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

    async def send_to_socket(self, command: SendToSocket) -> int: ...

    async def broadcast(self, command: Broadcast) -> int: ...

    async def sweep(self, command: Sweep) -> list[Departed]: ...

    async def devices(self) -> list[DeviceInfo]: ...

    async def last_states(self, command: LastStates) -> list[LastTelemetry]: ...

    async def counts(self) -> Counts: ...


class Location(Struct, frozen=True, gc=False):
    """Where a live device runs, and who owns it (one per live device: kept small, and out of the cyclic GC)."""

    gateway: str
    sid: str
    owner: str | None


class Supervisor:
    def __init__(
        self, registry: Registry, *, heartbeat_timeout_ms: int = 300_000, clock: Callable[[], int] = now_ms
    ) -> None:
        self.registry = registry
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.clock = clock
        self._gateways: dict[str, GatewayLink] = {}
        #: imei → where it is live.
        self._located: dict[str, Location] = {}
        #: e-mail → the gateways with a socket subscribed to it.
        self._audience: dict[str, set[str]] = {}

    def add_gateway(self, name: str, link: GatewayLink) -> None:
        self._gateways[name] = link

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
        now = self.clock()
        if not await self._gateways[command.gateway].attach(Attach(command.sid, imei, owner, now)):
            return DeviceRegistered(imei=imei)  # the socket left while the registry answered
        previous = self._located.get(imei)
        if previous is not None and previous.gateway != command.gateway:
            await self._gateways[previous.gateway].detach(Detach(imei))
        self._located[imei] = Location(command.gateway, command.sid, owner)
        await self._announce(owner, imei, "online", now)
        return DeviceRegistered(imei=imei)

    async def socket_closed(self, command: SocketClosed) -> None:
        """A gateway lost a socket: its devices go offline, its e-mails may lose that gateway's audience."""
        for email in command.unwatched:
            self._forget_audience(command.gateway, email)
        now = self.clock()
        for departed in command.offline:
            location = self._located.get(departed.imei)
            if location is not None and location.gateway == command.gateway and location.sid == command.sid:
                del self._located[departed.imei]
            await self._announce(departed.owner, departed.imei, "offline", now)

    async def sweep(self) -> list[str]:
        """Drop devices silent for longer than the heartbeat timeout, on every gateway; return their imeis."""
        now = self.clock()
        dropped = []
        for name, link in self._gateways.items():
            for departed in await link.sweep(Sweep(now, self.heartbeat_timeout_ms)):
                location = self._located.get(departed.imei)
                if location is not None and location.gateway == name:
                    del self._located[departed.imei]
                await self._announce(departed.owner, departed.imei, "offline", now)
                dropped.append(departed.imei)
        return dropped

    async def _announce(self, owner: str | None, imei: str, status: Literal["online", "offline"], now: int) -> None:
        gateways = self._audience.get(owner) if owner is not None else None
        if owner is None or not gateways:
            return
        payload = encode(DeviceStatus(imei=imei, status=status, timestamp=now))
        for name in tuple(gateways):
            await self._gateways[name].deliver(SendToUser(owner, "device_status", payload))

    # ------------------------------------------------------------------ users

    async def subscribe(self, command: Subscribe) -> UserSubscribed | Failure:
        """Join the e-mail's stream; answer with its devices' last known telemetry."""
        email = command.email
        try:
            records = await self.registry.devices_of(email)
        except ProtocolError as error:
            return Failure.of(error)
        if await self._gateways[command.gateway].join(Join(command.sid, email)):
            self._audience.setdefault(email, set()).add(command.gateway)
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
        if await self._gateways[command.gateway].leave(Leave(command.sid, command.email)):
            self._forget_audience(command.gateway, command.email)
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

    def _forget_audience(self, gateway: str, email: str) -> None:
        gateways = self._audience.get(email)
        if gateways is not None:
            gateways.discard(gateway)
            if not gateways:
                del self._audience[email]

    # ------------------------------------------------------------------ operators

    async def send_to_device(self, command: SendToDevice) -> Delivery | Failure:
        location = self._located.get(command.imei)
        if location is None:
            return Failure(code=ErrorCode.NOT_FOUND, message=f"device {command.imei} is not connected")
        link = self._gateways[location.gateway]
        recipients = await link.send_to_socket(SendToSocket(location.sid, command.event, command.payload))
        return Delivery(command.event, recipients)

    async def send_to_user(self, command: SendToUser) -> Delivery | Failure:
        gateways = self._audience.get(command.email)
        if not gateways:
            return Failure(code=ErrorCode.NOT_FOUND, message=f"nobody is subscribed to {command.email}")
        recipients = 0
        for name in tuple(gateways):
            recipients += await self._gateways[name].deliver(command)
        return Delivery(command.event, recipients)

    async def broadcast(self, command: Broadcast) -> Delivery:
        recipients = 0
        for link in tuple(self._gateways.values()):
            recipients += await link.broadcast(command)
        return Delivery(command.event, recipients)

    async def devices(self) -> list[DeviceInfo]:
        return [device for link in tuple(self._gateways.values()) for device in await link.devices()]

    def users(self) -> list[str]:
        return sorted(self._audience)

    async def counts(self) -> Counts:
        connections = devices = 0
        for link in tuple(self._gateways.values()):
            counts = await link.counts()
            connections += counts.connections
            devices += counts.devices
        return Counts(connections=connections, devices=devices)
