"""Where state outlives a process: the ``Store`` interface and its rows.

The live state (who is connected, who subscribes) belongs to the
:class:`~iothub.supervisor.Supervisor`; a store keeps what must survive a
restart: the registry (imei → owner), the last telemetry of each device, and
the telemetry and alert histories. Telemetry and alerts reach it in batches
from the write-behind buffer, never from the per-message path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from msgspec import Struct


class TelemetryRecord(Struct, frozen=True, gc=False):
    imei: str
    timestamp: int
    data: bytes
    receivedAt: int


class AlertRecord(Struct, frozen=True, gc=False):
    imei: str
    timestamp: int
    code: str
    level: str
    message: str
    data: bytes


class DeviceRecord(Struct, frozen=True):
    """A registered device: its owner and, if it ever sent one, its last telemetry."""

    imei: str
    owner: str | None
    last: TelemetryRecord | None = None


class Store(Protocol):
    #: Shown at startup and in ``/api/realtime/status``.
    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def set_owner(self, imei: str, email: str) -> None: ...

    async def owner_of(self, imei: str) -> str | None: ...

    async def devices_of(self, email: str) -> list[DeviceRecord]:
        """Every device the e-mail owns, connected or not."""
        ...

    async def write(self, telemetry: Sequence[TelemetryRecord], alerts: Sequence[AlertRecord]) -> None:
        """Append one batch; the last telemetry of each device follows the newest timestamp."""
        ...
