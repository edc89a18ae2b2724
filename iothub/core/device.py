"""DeviceActor: the live state of one connected device.

Lightweight on purpose: a slotted object per device, thousands to a process,
its messages handled in arrival order by the one event loop that owns it.
"""

from __future__ import annotations

from msgspec import Raw

from .protocol import DeviceInfo


class DeviceActor:
    __slots__ = ("imei", "sid", "owner", "connected_at", "last_heartbeat", "last_timestamp", "last_data", "alerted_at")

    def __init__(self, imei: str, sid: str, owner: str | None, now: int) -> None:
        self.imei = imei
        self.sid = sid
        self.owner = owner
        self.connected_at = now
        self.last_heartbeat = now
        self.last_timestamp: int | None = None
        self.last_data: Raw | None = None
        #: When each alert code last went out, for the cooldown (made on the first alert under one).
        self.alerted_at: dict[str, int] | None = None

    def heartbeat(self, now: int) -> None:
        self.last_heartbeat = now

    def observe(self, timestamp: int, data: Raw, now: int) -> None:
        """Take a telemetry message: it is the last state and counts as a heartbeat."""
        self.last_heartbeat = now
        if self.last_timestamp is None or timestamp >= self.last_timestamp:
            self.last_timestamp = timestamp
            self.last_data = data

    def may_alert(self, code: str, now: int, cooldown_ms: int) -> bool:
        """Whether an alert of ``code`` may go out now; records it if so."""
        if not cooldown_ms:
            return True
        if self.alerted_at is None:
            self.alerted_at = {}
        elif now - self.alerted_at.get(code, -cooldown_ms) < cooldown_ms:
            return False
        self.alerted_at[code] = now
        return True

    def expired(self, now: int, timeout_ms: int) -> bool:
        return now - self.last_heartbeat > timeout_ms

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            imei=self.imei,
            socketId=self.sid,
            connectedAt=self.connected_at,
            lastHeartbeat=self.last_heartbeat,
            userEmail=self.owner,
        )
