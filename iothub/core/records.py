"""What the core hands to persistence and asks of it: the rows, and the two roles a store plays.

The data plane records rows through a :class:`Recorder`, and the supervisor
reads and changes owners through a :class:`Registry`: both are the
write-behind buffer in front of the store, which the core never sees.
These types live here so that persistence depends on the core, not the
other way round.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from msgspec import Struct

from .metrics import StoreMetrics


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


class Owners(Protocol):
    """Who owns which device, as the history API asks it."""

    async def owner_of(self, imei: str) -> str | None: ...

    async def devices_of(self, email: str) -> list[DeviceRecord]:
        """Every device the e-mail owns, connected or not, by imei."""
        ...


class Registry(Owners, Protocol):
    """Who owns which device: what the supervisor reads and writes of a store."""

    async def set_owner(self, imei: str, email: str) -> None: ...


class Commit(Protocol):
    """The batch a row was taken into: durable acknowledgements wait for its commit."""

    def committed(self) -> asyncio.Future[None]:
        """Resolved once the batch is committed; failed if the server stops first."""
        ...


class Recorder(Protocol):
    """The write-behind buffer, as the data plane sees it."""

    def telemetry(self, record: TelemetryRecord) -> Commit:
        """Take the row and name its batch, or raise ``ProtocolError`` (``STORE_UNAVAILABLE``) having taken nothing."""
        ...

    def alert(self, record: AlertRecord) -> None:
        """Take an alert of the message just taken, into that message's batch."""
        ...

    def metrics(self) -> StoreMetrics:
        """The buffer's backlog, commit times and errors, for operators."""
        ...
