"""The Supervisor: who is connected, who listens to whom, and the per-message flow.

It owns the routing tables — imei → live :class:`DeviceActor`, socket → its
devices, e-mail → subscribed sockets — and everything that reads or changes
them: registration, telemetry fan-out and alerts, subscriptions, directed
messages, broadcasts and the heartbeat sweep. It knows nothing of Socket.IO:
it hands encoded payloads to an :class:`Outbox` and rows to a
:class:`Recorder`, so it is tested with plain objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Protocol

from msgspec import Raw

from .alerts import AlertEngine
from .device import DeviceActor
from .errors import ErrorCode, ProtocolError
from .metrics import Meters
from .protocol import (
    AlertEvent,
    DeviceInfo,
    DeviceRegistered,
    DeviceStatus,
    HeartbeatAck,
    LastTelemetry,
    TelemetryData,
    TelemetryUpdate,
    UserSubscribed,
    UserUnsubscribed,
    encode,
    is_imei,
)
from .records import AlertRecord, Recorder, Registry, TelemetryRecord


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Outbox(Protocol):
    """The front end, as the supervisor sees it."""

    def send(self, sids: Collection[str], event: str, payload: bytes | None) -> int:
        """Queue ``event`` with one JSON argument (or none) to each socket; return how many."""
        ...


class Supervisor:
    def __init__(
        self,
        engine: AlertEngine,
        store: Registry,
        outbox: Outbox,
        recorder: Recorder,
        *,
        heartbeat_timeout_ms: int = 300_000,
        alert_cooldown_ms: int = 0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.engine = engine
        self.store = store
        self.outbox = outbox
        self.recorder = recorder
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.alert_cooldown_ms = alert_cooldown_ms
        self.clock = clock
        self.meters = Meters()
        self._sockets: set[str] = set()
        self._devices: dict[str, DeviceActor] = {}
        #: A list, not a set: a socket registers one device, a gateway box a few.
        self._socket_devices: dict[str, list[str]] = {}
        self._subscribers: dict[str, set[str]] = {}
        self._socket_subscriptions: dict[str, set[str]] = {}
        #: Devices that left, kept until the store surely has their last telemetry
        #: (the write-behind may not have written it yet); pruned by the sweep.
        self._departed: dict[str, DeviceActor] = {}

    # ------------------------------------------------------------------ sockets

    def connect(self, sid: str) -> None:
        self._sockets.add(sid)

    def disconnect(self, sid: str) -> None:
        """Forget the socket at once: its devices go offline, its subscriptions end."""
        self._sockets.discard(sid)
        for email in self._socket_subscriptions.pop(sid, ()):
            self._leave(sid, email)
        now = self.clock()
        for imei in self._socket_devices.pop(sid, ()):
            device = self._departed[imei] = self._devices.pop(imei)
            self._status(device, "offline", now)

    # ------------------------------------------------------------------ devices

    async def register(self, sid: str, imei: str, owner: str | None) -> DeviceRegistered:
        """Bind ``imei`` to the socket; the newest registration of an imei wins."""
        live = self._devices.get(imei)
        if owner is not None:
            if live is None or live.owner != owner:
                await self.store.set_owner(imei, owner)
        elif live is not None:
            owner = live.owner
        else:
            owner = await self.store.owner_of(imei)
        if sid not in self._sockets:  # the socket left while the store answered
            return DeviceRegistered(imei=imei)
        now = self.clock()
        live = self._devices.get(imei)
        if live is not None and live.sid == sid:
            device = live
            device.owner = owner
            device.heartbeat(now)
        else:
            device = DeviceActor(imei, sid, owner, now)
            departed = self._departed.pop(imei, None)
            if live is None and departed is not None:
                device.last_timestamp, device.last_data = departed.last_timestamp, departed.last_data
            if live is not None:
                self._socket_devices[live.sid].remove(imei)
                device.last_timestamp, device.last_data = live.last_timestamp, live.last_data
            self._devices[imei] = device
            self._socket_devices.setdefault(sid, []).append(imei)
        self._status(device, "online", now)
        return DeviceRegistered(imei=imei)

    def telemetry(self, sid: str, message: TelemetryData, fired: tuple[int, ...] | None = None) -> None:
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
        self.recorder.telemetry(TelemetryRecord(device.imei, timestamp, data, now))
        device.observe(timestamp, message.data, now)
        self.meters.telemetry.mark(now)
        subscribers = self._subscribers.get(device.owner) if device.owner is not None else None
        if subscribers:
            update = TelemetryUpdate(imei=device.imei, timestamp=timestamp, data=message.data)
            self.meters.deliveries.mark(now, self.outbox.send(subscribers, "telemetry_update", encode(update)))
        for index in fired:
            self._alert(device, index, timestamp, message.data, data, subscribers, now)

    def heartbeat(self, sid: str, imei: str) -> HeartbeatAck:
        now = self.clock()
        self._device_of(sid, imei).heartbeat(now)
        return HeartbeatAck(imei=imei, timestamp=now)

    def sweep(self) -> list[str]:
        """Drop devices silent for longer than the heartbeat timeout; return their imeis."""
        now = self.clock()
        self._departed = {i: d for i, d in self._departed.items() if not d.expired(now, self.heartbeat_timeout_ms)}
        expired = [d for d in self._devices.values() if d.expired(now, self.heartbeat_timeout_ms)]
        for device in expired:
            del self._devices[device.imei]
            self._socket_devices[device.sid].remove(device.imei)
            self._status(device, "offline", now)
        return [device.imei for device in expired]

    def _device_of(self, sid: str, imei: str) -> DeviceActor:
        device = self._devices.get(imei)
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
        now: int,
    ) -> None:
        rule = self.engine.rules[index]
        may_hold_back = rule.level != "critical" and rule.code != "CRASH_DETECTED"  # PROTOCOL.md: never held back
        if may_hold_back and not device.may_alert(rule.code, now, self.alert_cooldown_ms):
            return
        alert = self.engine.alerts[index]
        self.meters.alerts.mark(now)
        if subscribers:
            event = AlertEvent(type=rule.event_name, imei=device.imei, timestamp=timestamp, data=raw, alert=alert)
            self.meters.deliveries.mark(now, self.outbox.send(subscribers, rule.event_name, encode(event)))
        self.recorder.alert(AlertRecord(device.imei, timestamp, alert.code, alert.level, alert.message, data))

    def _status(self, device: DeviceActor, status: str, now: int) -> None:
        subscribers = self._subscribers.get(device.owner) if device.owner is not None else None
        if subscribers:
            payload = encode(DeviceStatus(imei=device.imei, status=status, timestamp=now))
            self.outbox.send(subscribers, "device_status", payload)

    # ------------------------------------------------------------------ users

    async def subscribe(self, sid: str, email: str) -> UserSubscribed:
        """Join the e-mail's stream; answer with its devices' last known telemetry."""
        records = await self.store.devices_of(email)
        if sid in self._sockets:
            self._subscribers.setdefault(email, set()).add(sid)
            self._socket_subscriptions.setdefault(sid, set()).add(email)
        telemetries = []
        for record in records:
            live = self._devices.get(record.imei)
            recent = live if live is not None else self._departed.get(record.imei)
            stored = record.last
            if recent is not None and recent.last_data is not None and (stored is None or recent.last_timestamp >= stored.timestamp):
                telemetries.append(LastTelemetry(
                    imei=record.imei, timestamp=recent.last_timestamp, data=recent.last_data, connected=live is not None
                ))
            elif stored is not None:
                telemetries.append(LastTelemetry(
                        imei=record.imei, timestamp=stored.timestamp, data=Raw(stored.data), connected=live is not None
                    ))
        return UserSubscribed(email=email, deviceCount=len(records), telemetries=telemetries)

    def unsubscribe(self, sid: str, email: str) -> UserUnsubscribed:
        emails = self._socket_subscriptions.get(sid)
        if emails is not None and email in emails:
            emails.discard(email)
            self._leave(sid, email)
        return UserUnsubscribed(email=email)

    def _leave(self, sid: str, email: str) -> None:
        sockets = self._subscribers.get(email)
        if sockets is not None:
            sockets.discard(sid)
            if not sockets:
                del self._subscribers[email]

    # ------------------------------------------------------------------ operators

    def send_to_device(self, imei: str, event: str, payload: bytes | None) -> int:
        device = self._devices.get(imei)
        if device is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"device {imei} is not connected")
        return self.outbox.send((device.sid,), event, payload)

    def send_to_user(self, email: str, event: str, payload: bytes | None) -> int:
        sockets = self._subscribers.get(email)
        if not sockets:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"nobody is subscribed to {email}")
        return self.outbox.send(sockets, event, payload)

    def broadcast(self, event: str, payload: bytes | None) -> int:
        return self.outbox.send(self._sockets, event, payload)

    def devices(self) -> list[DeviceInfo]:
        return [device.info() for device in self._devices.values()]

    def users(self) -> list[str]:
        return sorted(self._subscribers)

    @property
    def connection_count(self) -> int:
        return len(self._sockets)

    @property
    def device_count(self) -> int:
        return len(self._devices)
