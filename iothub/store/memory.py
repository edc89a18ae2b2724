"""The in-memory store: the contract with nothing behind it, for tests and throwaway runs."""

from __future__ import annotations

from collections.abc import Sequence

from . import AlertRecord, DeviceRecord, TelemetryRecord


class MemoryStore:
    name = "memory"

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.last: dict[str, TelemetryRecord] = {}
        self.telemetry: list[TelemetryRecord] = []
        self.alerts: list[AlertRecord] = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def set_owner(self, imei: str, email: str) -> None:
        self.owners[imei] = email

    async def owner_of(self, imei: str) -> str | None:
        return self.owners.get(imei)

    async def devices_of(self, email: str) -> list[DeviceRecord]:
        return [
            DeviceRecord(imei=imei, owner=owner, last=self.last.get(imei))
            for imei, owner in sorted(self.owners.items())
            if owner == email
        ]

    async def write(self, telemetry: Sequence[TelemetryRecord], alerts: Sequence[AlertRecord]) -> None:
        self.telemetry.extend(telemetry)
        self.alerts.extend(alerts)
        for record in telemetry:
            known = self.last.get(record.imei)
            if known is None or record.timestamp >= known.timestamp:
                self.last[record.imei] = record
