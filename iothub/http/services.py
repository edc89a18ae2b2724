"""What the HTTP handlers work with: one typed object, under one application key.

The application (:mod:`iothub.app`) builds it; handlers read it with
``request.app[SERVICES]``. The HTTP layer thus depends on the core and on
persistence, never on the application that wires them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from ..core.alerts import EvaluatorKind
from ..core.auth import Authenticator
from ..core.dataplane import DataPlane
from ..core.limits import AddressLimits
from ..core.records import Owners
from ..core.supervisor import ControlPlane
from ..persistence.store import Store
from ..persistence.writebehind import WriteBehind


@dataclass
class Services:
    authenticator: Authenticator
    #: The supervisor, or in cluster mode its actor's client: every answer is cluster-wide.
    supervisor: ControlPlane
    #: This process's data plane: its message counters.
    plane: DataPlane
    #: Who owns which device, as the supervisor has it (its write-behind's pending changes included).
    registry: Owners
    write_behind: WriteBehind
    store: Store
    evaluator: EvaluatorKind
    #: Per-address limits: REST counts failed authentications there, and refuses banned addresses.
    limits: AddressLimits
    #: Trusted proxies, whose X-Forwarded-For names the client.
    proxies: tuple[str, ...] = ()
    started: float = field(default_factory=time.monotonic)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started


SERVICES = web.AppKey("services", Services)
