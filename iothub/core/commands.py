"""The control plane's language: what a gateway asks of the supervisor, and what the supervisor tells a gateway.

Every command and every reply is a msgspec struct, and a refusal is a value
(:class:`~iothub.core.protocol.Failure`), not an exception: nothing here holds
a socket, a future or a traceback, so the same conversation works when the
supervisor answers from another process. In one process the structs are
passed by reference, never copied or encoded.
"""

from __future__ import annotations

from typing import TypeVar

from msgspec import Struct

from .errors import ProtocolError
from .metrics import GatewayMetrics, Rates, StoreMetrics
from .protocol import Failure

T = TypeVar("T")

# --------------------------------------------------------------------------- gateway → supervisor


class Register(Struct, frozen=True):
    """Socket ``sid`` of ``gateway`` runs ``imei``; ``owner`` (when given) becomes its owner."""

    gateway: str
    sid: str
    imei: str
    owner: str | None = None


class Subscribe(Struct, frozen=True):
    """Socket ``sid`` of ``gateway`` joins ``email``'s stream."""

    gateway: str
    sid: str
    email: str


class Unsubscribe(Subscribe, frozen=True):
    """Socket ``sid`` of ``gateway`` leaves ``email``'s stream."""


class Departed(Struct, frozen=True):
    """A device that left a gateway (its socket closed, or it fell silent)."""

    imei: str
    owner: str | None


class SocketClosed(Struct, frozen=True):
    """A socket of ``gateway`` is gone: the devices it ran, and the e-mails no socket of that gateway watches now."""

    gateway: str
    sid: str
    offline: list[Departed]
    unwatched: list[str]


class SendToDevice(Struct, frozen=True):
    imei: str
    event: str
    payload: bytes | None


class SendToUser(Struct, frozen=True):
    """One event to every socket subscribed to ``email``: asked of the supervisor, which passes it on
    to each gateway with such sockets."""

    email: str
    event: str
    payload: bytes | None


class Broadcast(Struct, frozen=True):
    event: str
    payload: bytes | None


class Counts(Struct, frozen=True):
    """Sockets and live devices: of one gateway, or summed over all of them."""

    connections: int
    devices: int


class Live(Struct, frozen=True):
    """A device live on a gateway, as the gateway tells a supervisor that (re)builds its tables."""

    imei: str
    sid: str
    owner: str | None


class GatewayState(Struct, frozen=True):
    """Everything a gateway holds that the supervisor's tables are made of: its live devices and the
    e-mails its sockets watch. Sent when the gateway joins, and again to a supervisor that restarted."""

    devices: list[Live]
    watched: list[str]


class GatewayReport(Struct, frozen=True, kw_only=True):
    """One gateway as operators see it: ``/api/realtime/status``, ``/metrics``."""

    name: str
    pid: int
    alive: bool = True
    counts: Counts
    rates: dict[str, Rates]
    metrics: GatewayMetrics
    store: StoreMetrics


# --------------------------------------------------------------------------- supervisor → gateway


class Attach(Struct, frozen=True):
    """Bind ``imei`` to socket ``sid`` (the newest registration wins)."""

    sid: str
    imei: str
    owner: str | None
    now: int


class Detach(Struct, frozen=True):
    """``imei`` now runs on another gateway: drop it here, keeping its last state."""

    imei: str


class Join(Struct, frozen=True):
    """Socket ``sid`` joins (or, as :class:`Leave`, leaves) ``email``'s stream."""

    sid: str
    email: str


class Leave(Join, frozen=True):
    pass


class SendToSocket(Struct, frozen=True):
    sid: str
    event: str
    payload: bytes | None


class Sweep(Struct, frozen=True):
    """Drop devices silent for more than ``timeout_ms`` at ``now``."""

    now: int
    timeout_ms: int


class LastStates(Struct, frozen=True):
    """The last telemetry the gateway holds of each of ``imeis`` (live or recently departed)."""

    imeis: list[str]


class Routes(Struct, frozen=True):
    """Which gateways have sockets watching each e-mail: the supervisor's table, pushed to every gateway so
    that its data plane knows, without asking, where else an owner's telemetry must go.

    ``full``: the whole table, replacing what the gateway held (it joined, or the supervisor restarted:
    a new ``epoch``); else only the e-mails that changed, an empty list meaning nobody. ``version``
    counts the changes within an epoch.
    """

    epoch: int
    version: int
    audience: dict[str, list[str]]
    full: bool = False


#: One packet for the subscribers of an e-mail on another gateway: (e-mail, event, JSON payload).
Crossing = tuple[str, str, bytes]


def ok(reply: T | Failure) -> T:
    """The reply, or its failure raised as the :class:`ProtocolError` a front end answers with."""
    if isinstance(reply, Failure):
        raise ProtocolError(reply.code, reply.message)
    return reply
