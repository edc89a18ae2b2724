"""The data plane: one gateway's live devices and subscribers, and the path of every telemetry message.

A telemetry message is a few function calls here — the device actor's last
state, the local subscribers' packet, the alerts, the row for the
write-behind — with no task, no queue, no await and no call to the
supervisor. What the plane records it hands back as a commit handle, so that
a durable acknowledgement can wait for exactly that batch.

The plane owns the tables of its own gateway — imei → live
:class:`DeviceActor`, socket → its devices, e-mail → subscribed sockets — and
changes them on the supervisor's word (:meth:`attach`, :meth:`join`, …):
those commands are coroutines because in cluster mode they arrive from
another process, but they never suspend in one.

In cluster mode it also keeps the supervisor's pushed copy of which other
gateways watch each e-mail (:meth:`route`), and hands an owner's packets for
those gateways to its :class:`Relay`, which carries them across in batches;
what other gateways relay here arrives through :meth:`receive`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Protocol

from msgspec import Raw

from .alerts import AlertEngine
from .clock import now_ms
from .commands import (
    Attach,
    Broadcast,
    Counts,
    Crossing,
    Departed,
    Detach,
    GatewayReport,
    GatewayState,
    Join,
    LastStates,
    Leave,
    Live,
    Routes,
    SendToSocket,
    SendToUser,
    SocketClosed,
    Sweep,
)
from .device import DeviceActor
from .errors import ErrorCode, ProtocolError
from .metrics import Counters, GatewayMetrics, Meters, Rates
from .protocol import AlertEvent, DeviceInfo, HeartbeatAck, LastTelemetry, TelemetryData, TelemetryUpdate, encode, is_imei
from .records import AlertRecord, Commit, Recorder, TelemetryRecord


class Outbox(Protocol):
    """The front end, as the data plane sees it."""

    def send(self, sids: Collection[str], event: str, payload: bytes | None) -> int:
        """Queue ``event`` with one JSON argument (or none) to each socket; return how many."""
        ...


class Relay(Protocol):
    """The way to other gateways (cluster mode): packets for their subscribers, carried in batches."""

    def relay(self, gateways: Collection[str], packet: Crossing) -> None:
        """Queue ``packet`` for each of ``gateways``; never waits."""
        ...


class DataPlane:
    def __init__(
        self,
        name: str,
        engine: AlertEngine,
        outbox: Outbox,
        recorder: Recorder,
        *,
        alert_cooldown_ms: int = 0,
        clock: Callable[[], int] = now_ms,
        counters: Counters | None = None,
        relay: Relay | None = None,
    ) -> None:
        #: The gateway's name in the supervisor's tables.
        self.name = name
        self.engine = engine
        self.outbox = outbox
        self.recorder = recorder
        self.alert_cooldown_ms = alert_cooldown_ms
        self.clock = clock
        self.meters = Meters()
        #: The gateway's counters for ``/metrics``: the front end counts its traffic in them, the plane its alerts.
        self.counters = counters if counters is not None else Counters(engine.rules)
        self.relay = relay
        self._sockets: set[str] = set()
        self._live: dict[str, DeviceActor] = {}
        #: A tuple, not a set or a list: a socket registers one device, a gateway box a few; a
        #: tuple of strings is the smallest, and the cyclic GC stops tracking it.
        self._socket_devices: dict[str, tuple[str, ...]] = {}
        self._subscribers: dict[str, set[str]] = {}
        self._socket_subscriptions: dict[str, set[str]] = {}
        #: Devices that left, kept until the store surely has their last telemetry
        #: (the write-behind may not have written it yet); pruned by the sweep.
        self._departed: dict[str, DeviceActor] = {}
        #: e-mail → the other gateways with sockets watching it (the supervisor's pushed table, own name left out).
        self._elsewhere: dict[str, tuple[str, ...]] = {}
        #: The (epoch, version) of the last routing change taken.
        self.routes_version = (0, 0)

    # ------------------------------------------------------------------ sockets

    def connect(self, sid: str) -> None:
        self._sockets.add(sid)

    def disconnect(self, sid: str) -> SocketClosed:
        """Forget the socket at once; what the supervisor must hear of it comes back."""
        self._sockets.discard(sid)
        unwatched = [email for email in self._socket_subscriptions.pop(sid, ()) if self._leave(sid, email)]
        offline = []
        for imei in self._socket_devices.pop(sid, ()):
            device = self._departed[imei] = self._live.pop(imei)
            offline.append(Departed(imei, device.owner))
        return SocketClosed(self.name, sid, offline, unwatched)

    # ------------------------------------------------------------------ the per-message path

    def telemetry_event(self, sid: str, text: str) -> Commit | None:
        """A plain ``telemetry_data`` event's text, read and taken in one compiled pass.

        None when the text is anything else (another event, an error, an
        unusual spelling): the front end then decodes it and calls :meth:`telemetry`.
        """
        reading = self.engine.read(text)
        return None if reading is None else self.telemetry(sid, *reading)

    def telemetry(self, sid: str, message: TelemetryData, fired: tuple[int, ...] | None = None) -> Commit:
        """One telemetry message: history, last state, dashboards, then alerts.

        ``fired``: the rules the message fires, when its reading already found
        them (:meth:`AlertEngine.read`); else its ``data`` is checked here.
        The recorder takes the row first: when it refuses (its buffer is full),
        nothing has changed and the device may send the message again.
        """
        device = self._device_of(sid, message.imei)
        if fired is None:
            fired = self.engine.check(message.data)
        now = self.clock()
        timestamp = now if message.timestamp is None else message.timestamp
        data = bytes(message.data)
        commit = self.recorder.telemetry(TelemetryRecord(device.imei, timestamp, data, now))
        device.observe(timestamp, message.data, now)
        self.meters.telemetry.mark(now)
        owner = device.owner
        subscribers = self._subscribers.get(owner) if owner is not None else None
        elsewhere = self._elsewhere.get(owner) if owner is not None else None
        if subscribers or elsewhere:
            payload = encode(TelemetryUpdate(imei=device.imei, timestamp=timestamp, data=message.data))
            if subscribers:
                self.meters.deliveries.mark(now, self.outbox.send(subscribers, "telemetry_update", payload))
            if elsewhere and self.relay is not None and owner is not None:
                self.relay.relay(elsewhere, (owner, "telemetry_update", payload))
        for index in fired:
            self._alert(device, index, timestamp, message.data, data, subscribers, elsewhere, now)
        return commit

    def heartbeat(self, sid: str, imei: str) -> HeartbeatAck:
        now = self.clock()
        self._device_of(sid, imei).heartbeat(now)
        return HeartbeatAck(imei=imei, timestamp=now)

    def refused(self) -> None:
        """Count an event the front end refused."""
        self.meters.errors.mark(self.clock())

    def rates(self, now: int) -> dict[str, Rates]:
        """Telemetry, alerts, deliveries and refusals: totals and per-second rates, for ``/api/realtime/status``."""
        return self.meters.snapshot(now)

    def metrics(self) -> GatewayMetrics:
        """The counters, and the gauges of this gateway's tables: sockets by what they do, devices online."""
        devices = sum(1 for imeis in self._socket_devices.values() if imeis)
        dashboards = sum(1 for sid, emails in self._socket_subscriptions.items() if emails and not self._socket_devices.get(sid))
        sockets = {"device": devices, "dashboard": dashboards, "other": len(self._sockets) - devices - dashboards}
        return self.counters.snapshot(self.name, sockets, len(self._live))

    def _device_of(self, sid: str, imei: str) -> DeviceActor:
        device = self._live.get(imei)
        if device is None or device.sid != sid:
            if not is_imei(imei):
                raise ProtocolError(ErrorCode.INVALID_IMEI, "imei must be a string of 15 digits")
            raise ProtocolError(ErrorCode.DEVICE_NOT_REGISTERED, f"register_device {imei} on this socket first")
        return device

    def _alert(
        self,
        device: DeviceActor,
        index: int,
        timestamp: int,
        raw: Raw,
        data: bytes,
        subscribers: set[str] | None,
        elsewhere: tuple[str, ...] | None,
        now: int,
    ) -> None:
        rule = self.engine.rules[index]
        may_hold_back = rule.level != "critical" and rule.code != "CRASH_DETECTED"  # PROTOCOL.md: never held back
        if may_hold_back and not device.may_alert(rule.code, now, self.alert_cooldown_ms):
            return
        alert = self.engine.alerts[index]
        self.meters.alerts.mark(now)
        self.counters.alerts[index] += 1
        if subscribers or elsewhere:
            payload = encode(AlertEvent(type=rule.event_name, imei=device.imei, timestamp=timestamp, data=raw, alert=alert))
            if subscribers:
                self.meters.deliveries.mark(now, self.outbox.send(subscribers, rule.event_name, payload))
            if elsewhere and self.relay is not None and device.owner is not None:
                self.relay.relay(elsewhere, (device.owner, rule.event_name, payload))
        self.recorder.alert(AlertRecord(device.imei, timestamp, alert.code, alert.level, alert.message, data))

    # ------------------------------------------------------------------ commands from the control plane

    async def attach(self, command: Attach) -> bool:
        """Bind the imei to the socket; False when the socket has left meanwhile (nothing is bound)."""
        sid, imei = command.sid, command.imei
        if sid not in self._sockets:
            return False
        live = self._live.get(imei)
        if live is not None and live.sid == sid:
            live.owner = command.owner
            live.heartbeat(command.now)
            return True
        device = DeviceActor(imei, sid, command.owner, command.now)
        departed = self._departed.pop(imei, None)
        previous = live if live is not None else departed
        if previous is not None:
            device.last_timestamp, device.last_data = previous.last_timestamp, previous.last_data
        if live is not None:
            self._unbind(live.sid, imei)
        self._live[imei] = device
        self._socket_devices[sid] = (*self._socket_devices.get(sid, ()), imei)
        return True

    def _unbind(self, sid: str, imei: str) -> None:
        self._socket_devices[sid] = tuple(other for other in self._socket_devices[sid] if other != imei)

    async def detach(self, command: Detach) -> None:
        device = self._live.pop(command.imei, None)
        if device is not None:
            self._unbind(device.sid, device.imei)
            self._departed[device.imei] = device

    async def join(self, command: Join) -> bool:
        """Add the socket to the e-mail's subscribers; False when the socket has left meanwhile."""
        if command.sid not in self._sockets:
            return False
        self._subscribers.setdefault(command.email, set()).add(command.sid)
        self._socket_subscriptions.setdefault(command.sid, set()).add(command.email)
        return True

    async def leave(self, command: Leave) -> bool:
        """Take the socket off the e-mail's subscribers; True when no socket here watches the e-mail now."""
        emails = self._socket_subscriptions.get(command.sid)
        if emails is None or command.email not in emails:
            return False
        emails.discard(command.email)
        return self._leave(command.sid, command.email)

    def _leave(self, sid: str, email: str) -> bool:
        sockets = self._subscribers.get(email)
        if sockets is None:
            return False
        sockets.discard(sid)
        if sockets:
            return False
        del self._subscribers[email]
        return True

    async def deliver(self, command: SendToUser) -> int:
        subscribers = self._subscribers.get(command.email)
        return self.outbox.send(subscribers, command.event, command.payload) if subscribers else 0

    def announce(self, command: SendToUser) -> None:
        """:meth:`deliver`, for a sender that needs no count and must not wait (a ``device_status``)."""
        subscribers = self._subscribers.get(command.email)
        if subscribers:
            self.outbox.send(subscribers, command.event, command.payload)

    async def settled(self) -> None:
        """Everything announced here is taken as it comes: nothing to wait for."""

    def receive(self, packets: list[Crossing]) -> int:
        """Packets other gateways relayed for subscribers here; return how many sockets took one."""
        subscribers = self._subscribers
        sent = 0
        for email, event, payload in packets:
            sockets = subscribers.get(email)
            if sockets:
                sent += self.outbox.send(sockets, event, payload)
        self.meters.deliveries.mark(self.clock(), sent)
        return sent

    async def route(self, routes: Routes) -> None:
        """Take the supervisor's change to which gateways watch which e-mails (this one left out)."""
        if routes.full:
            self._elsewhere = {}
        for email, gateways in routes.audience.items():
            others = tuple(name for name in gateways if name != self.name)
            if others:
                self._elsewhere[email] = others
            else:
                self._elsewhere.pop(email, None)
        self.routes_version = (routes.epoch, routes.version)

    def state(self) -> GatewayState:
        """The live devices and watched e-mails, for a supervisor (re)building its tables."""
        return GatewayState([Live(d.imei, d.sid, d.owner) for d in self._live.values()], list(self._subscribers))

    async def send_to_socket(self, command: SendToSocket) -> int:
        return self.outbox.send((command.sid,), command.event, command.payload) if command.sid in self._sockets else 0

    async def broadcast(self, command: Broadcast) -> int:
        return self.outbox.send(self._sockets, command.event, command.payload)

    async def sweep(self, command: Sweep) -> list[Departed]:
        """Drop devices silent for longer than the timeout, and departed ones the store surely has by now."""
        now, timeout = command.now, command.timeout_ms
        self._departed = {imei: d for imei, d in self._departed.items() if not d.expired(now, timeout)}
        expired = [device for device in self._live.values() if device.expired(now, timeout)]
        for device in expired:
            del self._live[device.imei]
            self._unbind(device.sid, device.imei)
        return [Departed(device.imei, device.owner) for device in expired]

    async def devices(self) -> list[DeviceInfo]:
        return [device.info() for device in self._live.values()]

    async def last_states(self, command: LastStates) -> list[LastTelemetry]:
        """Each imei's last telemetry held here, ``connected`` when the device is live here."""
        states = []
        for imei in command.imeis:
            live = self._live.get(imei)
            device = live if live is not None else self._departed.get(imei)
            if device is not None and device.last_data is not None and device.last_timestamp is not None:
                states.append(LastTelemetry(imei, device.last_timestamp, device.last_data, live is not None))
        return states

    async def counts(self) -> Counts:
        return Counts(connections=len(self._sockets), devices=len(self._live))

    async def report(self) -> GatewayReport:
        return GatewayReport(
            name=self.name,
            pid=os.getpid(),
            counts=await self.counts(),
            rates=self.rates(self.clock()),
            metrics=self.metrics(),
            store=self.recorder.metrics(),
        )
