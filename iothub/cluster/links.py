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

A call that fails because the other process is gone becomes a value: the
supervisor drops a gateway it cannot reach, and a gateway answers its client
that the supervisor is restarting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from ray.actor import ActorHandle
from ray.exceptions import RayError

from ..core.commands import (
    Attach,
    Broadcast,
    Counts,
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
from ..core.protocol import Delivery, DeviceInfo, DeviceRegistered, Failure, LastTelemetry, UserSubscribed, UserUnsubscribed
from ..core.records import DeviceRecord
from .batches import Batcher
from .relay import Crossings

T = TypeVar("T")

#: A gateway's answer when the supervisor cannot be reached (it is restarting: Ray starts it again).
SUPERVISOR_AWAY = "the cluster's supervisor is restarting; retry in a moment"


class Peers(msgspec.Struct, frozen=True):
    """Every live gateway's private address (``http://host:port``), by name: where packets are relayed
    to it, and where a request for one of its sessions is forwarded."""

    addresses: dict[str, str]


#: What the supervisor streams to a gateway.
Directive = SendToUser | Routes | Peers


class GatewayMember:
    """A gateway actor, as the supervisor's :class:`~iothub.core.supervisor.GatewayLink`."""

    def __init__(self, name: str, handle: ActorHandle, report: GatewayReport, address: str, lost: Callable[[GatewayMember], None]) -> None:
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
            answer: T = await self.handle.command.remote(method, *args)
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
        report: GatewayReport | None = await self._call("report", None)
        if report is None:
            return msgspec.structs.replace(self.last, alive=False, counts=Counts(0, 0))
        self.last = report
        return report


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
        return await self.handle.ask.remote(method, *args)

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
        self.closed.flush_now()
        try:
            await self.handle.registry_committed.remote()
        except RayError:
            raise ProtocolError(ErrorCode.INTERNAL, SUPERVISOR_AWAY) from None
