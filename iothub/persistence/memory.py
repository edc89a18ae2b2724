"""The in-memory store: the contract with nothing behind it, for tests and throwaway runs.

With ``history_limit`` each history keeps only its newest rows, so that a
long run without persistence (``IOTHUB_STORE=memory``) does not grow forever.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from ..core.records import AlertRecord, DeviceRecord, TelemetryRecord
from .store import Page, R, Window, decode_cursor, newest_by_device, page_of


class MemoryStore:
    name = "memory"

    def __init__(self, history_limit: int | None = None) -> None:
        self.history_limit = history_limit
        self.owners: dict[str, str] = {}
        self.last: dict[str, TelemetryRecord] = {}
        self.telemetry: list[TelemetryRecord] = []
        self.alerts: list[AlertRecord] = []
        #: Rows dropped from the front of each history: a row's key is its index plus these.
        self._dropped = {"telemetry": 0, "alerts": 0}

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

    async def write(
        self, telemetry: Sequence[TelemetryRecord], alerts: Sequence[AlertRecord], owners: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.owners.update(owners)
        self.telemetry.extend(telemetry)
        self.alerts.extend(alerts)
        self._trim("telemetry")
        self._trim("alerts")
        for imei, record in newest_by_device(telemetry).items():
            known = self.last.get(imei)
            if known is None or record.timestamp >= known.timestamp:
                self.last[imei] = record

    async def telemetry_history(self, imei: str, window: Window) -> Page[TelemetryRecord]:
        return self._page("telemetry", (record.imei == imei for record in self.telemetry), window)

    async def alert_history(
        self,
        window: Window,
        *,
        imeis: Collection[str] | None = None,
        code: str | None = None,
        level: str | None = None,
    ) -> Page[AlertRecord]:
        wanted = (
            (imeis is None or alert.imei in imeis) and (code is None or alert.code == code) and (level is None or alert.level == level)
            for alert in self.alerts
        )
        return self._page("alerts", wanted, window)

    def _page(self, history: str, wanted: Iterable[bool], window: Window) -> Page[R]:
        after = decode_cursor(window.cursor, int) if window.cursor is not None else None
        first = self._dropped[history]
        rows = [
            (first + index, record)
            for index, (record, keep) in enumerate(zip(getattr(self, history), wanted))
            if keep and window.covers(record.timestamp) and (after is None or (record.timestamp, first + index) < after)
        ]
        rows.sort(key=lambda row: (row[1].timestamp, row[0]), reverse=True)
        return page_of(rows[: window.limit + 1], window.limit)

    def _trim(self, history: str) -> None:
        rows = getattr(self, history)
        excess = len(rows) - self.history_limit if self.history_limit is not None else 0
        if excess > 0:
            del rows[:excess]
            self._dropped[history] += excess
