"""The in-process interfaces of the two planes, across processes on Ray.

- :class:`GatewayMember`: a gateway actor as the supervisor commands it (a
  :class:`~iothub.core.supervisor.GatewayLink`). Commands it waits for are
  actor calls; announcements and routing changes go in one ordered
  :class:`~.batches.Batcher` stream.
- :class:`SupervisorClient`: the supervisor actor as a gateway's front end and
  REST API ask it (a :class:`~iothub.core.supervisor.ControlPlane` and a
  :class:`~iothub.core.records.Owners`). Closed sockets go in batches; a call
  waited for first sends what waits, so the supervisor hears of things in the
  order they happened.
- :class:`Crossings`: a gateway's :class:`~iothub.core.dataplane.Relay`, one
  batched stream per other gateway, straight to it: the supervisor is never on
  a telemetry message's path.

A call that fails because the other process is gone becomes a value: the
supervisor drops a gateway it cannot reach, and a gateway answers its client
that the supervisor is restarting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import msgspec
from ray.actor import ActorHandle
from ray.exceptions import RayError

from ..core.commands import (
    Attach,
    Broadcast,
    Counts,
    Crossing,
    Departed,
    Detach,
    GatewayReport,
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
from ..core.errors import ErrorCode, ProtocolError
from ..core.metrics import Counters
from ..core.protocol import Delivery, DeviceInfo, DeviceRegistered, Failure, LastTelemetry, UserSubscribed, UserUnsubscribed
from ..core.records import DeviceRecord
from .batches import Batcher

T = TypeVar("T")

#: How far apart a gateway's calls relaying packets to another one start: a few milliseconds of
#: latency, for batches of many packets (a call costs about as much CPU as a hundred packets).
RELAY_INTERVAL_S = 0.004
#: A gateway's answer when the supervisor cannot be reached (it is restarting: Ray starts it again).
SUPERVISOR_AWAY = "the cluster's supervisor is restarting; retry in a moment"


class Peers(msgspec.Struct, frozen=True):
    """Every live gateway by name: its actor (where packets are relayed) and its private address
    (``http://host:port``, where a request for one of its sessions is forwarded)."""

    handles: dict[str, ActorHandle]
    addresses: dict[str, str]


#: What the supervisor streams to a gateway.
Directive = SendToUser | Routes | Peers


class GatewayMember:
    """A gateway actor, as the supervisor's :class:`~iothub.core.supervisor.GatewayLink`."""

    def __init__(
        self, name: str, handle: ActorHandle, report: GatewayReport, address: str, lost: Callable[[GatewayMember], None]
    ) -> None:
        self.name = name
        self.handle = handle
        #: Its private address, for forwarding.
        self.address = address
        #: Its latest report: what operators see of it once it is gone.
        self.last = report
        self._lost = lost
        self.stream: Batcher[Directive] = Batcher(self._apply, name=name, kind="directives")

    def _apply(self, batch: list[Directive]) -> Any:
        return self.handle.apply.remote(batch)

    async def _call(self, method: str, failed: T, *args: object) -> T:
        self.stream.flush_now()
        try:
            answer: T = await getattr(self.handle, method).remote(*args)
        except RayError:
            self._lost(self)
            return failed
        return answer

    async def attach(self, command: Attach) -> bool:
        return await self._call("attach", False, command)

    async def detach(self, command: Detach) -> None:
        await self._call("detach", None, command)

    async def join(self, command: Join) -> bool:
        return await self._call("join", False, command)

    async def leave(self, command: Leave) -> bool:
        return await self._call("leave", False, command)

    async def deliver(self, command: SendToUser) -> int:
        return await self._call("deliver", 0, command)

    def announce(self, command: SendToUser) -> None:
        self.stream.push(command)

    async def settled(self) -> None:
        await self.stream.delivered()

    async def route(self, routes: Routes) -> None:
        self.stream.push(routes)
        await self.stream.delivered()

    async def send_to_socket(self, command: SendToSocket) -> int:
        return await self._call("send_to_socket", 0, command)

    async def broadcast(self, command: Broadcast) -> int:
        return await self._call("broadcast", 0, command)

    async def sweep(self, command: Sweep) -> list[Departed]:
        return await self._call("sweep", [], command)

    async def devices(self) -> list[DeviceInfo]:
        return await self._call("devices", [])

    async def last_states(self, command: LastStates) -> list[LastTelemetry]:
        return await self._call("last_states", [], command)

    async def counts(self) -> Counts:
        return await self._call("counts", Counts(0, 0))

    async def report(self) -> GatewayReport:
        gone = msgspec.structs.replace(self.last, alive=False, counts=Counts(0, 0))
        self.last = await self._call("report", gone)
        return self.last


class SupervisorClient:
    """The supervisor actor, as a gateway's :class:`~iothub.core.supervisor.ControlPlane` and
    :class:`~iothub.core.records.Owners`."""

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle
        #: This gateway's relay: what it relayed before a socket closed reaches the other gateways
        #: before the supervisor announces that socket's devices offline there.
        self.crossings: Crossings | None = None
        self.closed: Batcher[SocketClosed] = Batcher(self._closed, name="the supervisor", kind="closed sockets")

    def _closed(self, batch: list[SocketClosed]) -> Any:
        return self.handle.sockets_closed.remote(batch)

    async def _ask(self, method: str, *args: object) -> Any:
        self.closed.flush_now()
        return await getattr(self.handle, method).remote(*args)

    async def _command(self, method: str, command: object) -> Any:
        """A command whose refusal is a value: the supervisor's absence is one too."""
        try:
            return await self._ask(method, command)
        except RayError:
            return Failure(code=ErrorCode.INTERNAL, message=SUPERVISOR_AWAY)

    async def _listing(self, method: str, *args: object) -> Any:
        """A question whose answer has no room for a refusal: its absence is the server's error."""
        try:
            return await self._ask(method, *args)
        except RayError:
            raise ProtocolError(ErrorCode.INTERNAL, SUPERVISOR_AWAY) from None

    async def register(self, command: Register) -> DeviceRegistered | Failure:
        reply: DeviceRegistered | Failure = await self._command("register", command)
        return reply

    async def socket_closed(self, command: SocketClosed) -> None:
        if self.crossings is not None and command.offline:
            await self.crossings.delivered()
        self.closed.push(command)

    async def subscribe(self, command: Subscribe) -> UserSubscribed | Failure:
        reply: UserSubscribed | Failure = await self._command("subscribe", command)
        return reply

    async def unsubscribe(self, command: Unsubscribe) -> UserUnsubscribed:
        reply = await self._command("unsubscribe", command)
        return UserUnsubscribed(email=command.email) if isinstance(reply, Failure) else reply

    async def send_to_device(self, command: SendToDevice) -> Delivery | Failure:
        reply: Delivery | Failure = await self._command("send_to_device", command)
        return reply

    async def send_to_user(self, command: SendToUser) -> Delivery | Failure:
        reply: Delivery | Failure = await self._command("send_to_user", command)
        return reply

    async def broadcast(self, command: Broadcast) -> Delivery:
        reply: Delivery = await self._listing("broadcast", command)
        return reply

    async def devices(self) -> list[DeviceInfo]:
        reply: list[DeviceInfo] = await self._listing("devices")
        return reply

    async def users(self) -> list[str]:
        reply: list[str] = await self._listing("users")
        return reply

    async def counts(self) -> Counts:
        reply: Counts = await self._listing("counts")
        return reply

    async def reports(self) -> list[GatewayReport]:
        reply: list[GatewayReport] = await self._listing("reports")
        return reply

    async def owner_of(self, imei: str) -> str | None:
        reply: str | None = await self._listing("owner_of", imei)
        return reply

    async def devices_of(self, email: str) -> list[DeviceRecord]:
        reply: list[DeviceRecord] = await self._listing("devices_of", email)
        return reply

    async def registry_committed(self) -> None:
        """Resolved once every owner change the supervisor has taken so far is committed."""
        await self._listing("registry_committed")


class Crossings:
    """A gateway's relay: for each other gateway, the packets of its subscribers, batched per loop turn."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        #: The other gateways' actors, by name (:class:`Peers`, pushed by the supervisor).
        self.peers: dict[str, ActorHandle] = {}
        self._out: dict[str, Batcher[Crossing]] = {}

    def relay(self, gateways: Collection[str], packet: Crossing) -> None:
        relayed = self.counters.relayed
        for name in gateways:
            out = self._out.get(name)
            if out is None:
                out = self._out[name] = Batcher(self._sender(name), name=name, kind="relayed packets", interval=RELAY_INTERVAL_S)
            dropped = out.dropped
            out.push(packet)
            if out.dropped == dropped:
                relayed["packets_out"] += 1
            else:
                relayed["packets_dropped"] += 1

    def _sender(self, name: str) -> Callable[[list[Crossing]], Awaitable[object]]:
        async def send(batch: list[Crossing]) -> object:
            peer = self.peers.get(name)
            if peer is None:  # gone from the cluster since the routes named it: its dashboards went with it
                self.counters.relayed["packets_dropped"] += len(batch)
                return None
            self.counters.relayed["calls_out"] += 1
            return await peer.receive.remote(batch)

        return send

    async def delivered(self) -> None:
        """Once everything relayed so far has been taken by the other gateways."""
        for out in tuple(self._out.values()):
            await out.delivered()
