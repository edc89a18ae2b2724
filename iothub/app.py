"""The Hub: one server process, its parts wired together and their lifetime.

settings → store, write-behind, alert engine, data plane, supervisor and
gateway (Socket.IO), plus the REST routes, all on one aiohttp application
and one port. In one process the supervisor commands the one data plane
directly. In cluster mode (:mod:`iothub.cluster`) each gateway actor runs a
Hub given a :class:`Membership`: the supervisor is then its actor's client,
and the data plane relays to the other gateways.

Shutdown (SIGTERM/SIGINT, through aiohttp): the listener closes, telemetry is
refused, the write-behind writes everything it took (waiting at most
IOTHUB_SHUTDOWN_TIMEOUT_MS for a failing store), the sockets close (held
long-polls answered), requests still open after REQUEST_GRACE_S are cut, and
last the store closes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .config import ConfigError, Settings
from .core.alerts import AlertEngine
from .core.auth import Authenticator
from .core.dataplane import DataPlane, Relay
from .core.metrics import Counters
from .core.records import Owners
from .core.supervisor import ControlPlane, Supervisor
from .frontend.gateway import Gateway
from .http import dashboard, history, metrics, openapi, rest
from .http.services import SERVICES, Services
from .loop import LagMonitor
from .persistence.factory import create_store
from .persistence.store import Store
from .persistence.writebehind import WriteBehind

log = logging.getLogger(__name__)

#: How long a shutdown waits, once the sockets are closed, for requests still open (aiohttp's
#: default is 60 s): a WebSocket client that does not answer the close, a slow REST call.
REQUEST_GRACE_S = 5.0
#: The longest request line or header aiohttp reads (its default is 8 KiB): an oversized token then
#: reaches authentication and gets the 401 envelope, not aiohttp's plain-text 400.
MAX_HEADER_BYTES = 128 * 1024
#: How long a connection refused before its body was read (a 413) may go on sending it before it is
#: closed (aiohttp's default is 10 s of reading whatever comes).
LINGER_S = 1.0
#: aiohttp's server options, the same for one process (:func:`serve`) and a gateway actor's runner.
SERVER_OPTIONS: dict[str, Any] = {
    "access_log": None,
    "shutdown_timeout": REQUEST_GRACE_S,
    "max_line_size": MAX_HEADER_BYTES,
    "max_field_size": MAX_HEADER_BYTES,
    "lingering_time": LINGER_S,
}
#: How often the age of the write-behind's backlog is checked.
BACKLOG_CHECK_S = 0.05
#: The one gateway's name in the supervisor's tables.
GATEWAY_NAME = "gateway-0"


@dataclass(frozen=True)
class Membership:
    """A gateway's part in a cluster: its name, the supervisor it asks, and the way to the other gateways."""

    name: str
    supervisor: ControlPlane
    #: Who owns which device, as the supervisor has it.
    registry: Owners
    #: The way to the other gateways, made with this gateway's counters (it counts what it relays).
    relay: Callable[[Counters], Relay]
    #: Durable acknowledgements: a future resolved once the registry's changes so far are committed.
    registry_committed: Callable[[], asyncio.Future[None]]


class Hub:
    def __init__(self, settings: Settings, store: Store | None = None, membership: Membership | None = None) -> None:
        self.settings = settings
        self.store: Store = store if store is not None else create_store(settings)
        self.authenticator = Authenticator(settings.jwt_secret, production=settings.production)
        self.engine = AlertEngine(settings.rules, settings.evaluator)
        self.write_behind = WriteBehind(
            self.store,
            capacity=settings.buffer_rows,
            batch_rows=settings.batch_rows,
            flush_interval=settings.flush_interval_ms / 1000,
        )
        counters = Counters(self.engine.rules)
        self.lag = LagMonitor(counters)
        self.gateway = Gateway(settings, self.authenticator, counters)
        self.plane = DataPlane(
            GATEWAY_NAME if membership is None else membership.name,
            self.engine,
            self.gateway,
            self.write_behind,
            alert_cooldown_ms=settings.alert_cooldown_ms,
            counters=counters,
            relay=None if membership is None else membership.relay(counters),
        )
        #: The supervisor in this process (None in cluster mode: it is an actor of its own, which sweeps).
        self.local_supervisor: Supervisor | None = None
        if membership is None:
            self.local_supervisor = Supervisor(self.write_behind, heartbeat_timeout_ms=settings.heartbeat_timeout_ms)
            self.local_supervisor.add_gateway(GATEWAY_NAME, self.plane)
            supervisor: ControlPlane = self.local_supervisor
            registry: Owners = self.write_behind
            registry_committed = self.write_behind.committed
        else:
            supervisor, registry, registry_committed = membership.supervisor, membership.registry, membership.registry_committed
        #: What the front end and the REST API ask: the local supervisor, or the supervisor actor's client.
        self.supervisor = supervisor
        self.gateway.bind(self.plane, supervisor, registry_committed if settings.durable_ack else None)
        self.services = Services(
            self.authenticator,
            supervisor,
            self.plane,
            registry,
            self.write_behind,
            self.store,
            self.engine.kind,
            self.gateway.limits,
            settings.proxies,
        )
        #: Rows the store had not taken when the server stopped.
        self.lost = 0
        #: How many times reading from sockets was held for a store that fell behind.
        self.reads_held = 0
        self._chores: list[asyncio.Task[None]] = []

    def application(self) -> web.Application:
        app = web.Application(
            middlewares=[
                rest.rest_only(rest.cors(self.settings.cors_origins)),
                rest.rest_only(rest.address_guard),
                rest.rest_only(rest.envelope_errors),
            ],
            client_max_size=self.settings.max_payload_bytes,
        )
        app[SERVICES] = self.services
        self.gateway.attach(app)
        rest.add_routes(app)
        history.add_routes(app)
        metrics.add_routes(app, self.settings.metrics_token)
        openapi.add_routes(app)
        dashboard.add_routes(
            app,
            production=self.settings.production,
            tiles=self.settings.map_tiles,
            attribution=self.settings.map_attribution,
            rules=self.engine.rules,
        )
        app.cleanup_ctx.append(self._lifespan)
        app.on_shutdown.append(self._shutdown)
        return app

    def describe(self) -> str:
        """The startup line: where it listens, which store, which evaluator."""
        s = self.settings
        return (
            f"iothub listening on {'https' if s.tls_cert else 'http'}://{s.bind_host}:{s.port} "
            f"(env {s.env}, store {self.store.name}, alert evaluator {self.engine.kind})"
            + ("; loopback only: set HOST=0.0.0.0 to be reached from other machines" if s.host is None and not s.production else "")
        )

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        try:
            await self.store.open()
        except Exception as exc:  # a path that cannot be written, a server that does not answer: say which
            raise ConfigError(f"cannot open the {self.store.name} store: {exc}") from exc
        self.write_behind.start()
        self.lag.start()
        self._chores = [asyncio.create_task(self._hold_reads_while_behind(), name="iothub-backlog-watch")]
        if self.local_supervisor is not None:
            self._chores.append(asyncio.create_task(sweep_forever(self.local_supervisor, self.settings), name="iothub-heartbeat-sweep"))
        self.services.started = time.monotonic()
        yield
        self.lag.stop()
        await self._stop_chores()
        await self._flush()
        await self.store.close()

    async def _shutdown(self, app: web.Application) -> None:
        """Before aiohttp waits for the connections: write what was taken, then close the sockets."""
        await self._stop_chores()
        self.gateway.gate.resume()
        await self._flush()
        await self.gateway.close_connections()

    async def _stop_chores(self) -> None:
        for chore in self._chores:
            chore.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)

    async def _flush(self) -> None:
        self.lost = await self.write_behind.close(self.settings.shutdown_timeout_ms / 1000)

    async def _hold_reads_while_behind(self) -> None:
        """Stop reading sockets while the oldest uncommitted row is older than IOTHUB_MAX_BACKLOG_AGE_MS.

        So a crash loses at most that much acknowledged telemetry even when the
        store cannot keep up: the clients slow down (TCP back-pressure) instead
        of the buffer growing. Reads resume once the backlog is younger again.
        """
        limit = self.settings.max_backlog_age_ms / 1000
        gate = self.gateway.gate
        while True:
            await asyncio.sleep(BACKLOG_CHECK_S)
            behind = self.write_behind.backlog_age(time.monotonic()) > limit
            if behind and not gate.paused:
                gate.pause()
                self.reads_held += 1
                log.warning("the %s store is more than %g s behind: reading from sockets is held until it catches up", self.store.name, limit)
            elif not behind and gate.paused:
                gate.resume()
                log.info("the %s store has caught up: reading from sockets again", self.store.name)


async def sweep_forever(supervisor: Supervisor, settings: Settings) -> None:
    """Every CLEANUP_INTERVAL_MS, the supervisor's heartbeat sweep over all its gateways."""
    interval = settings.cleanup_interval_ms / 1000
    while True:
        await asyncio.sleep(interval)
        dropped = await supervisor.sweep()
        if dropped:
            log.info("heartbeat sweep dropped %d silent devices", len(dropped))


def serve(hub: Hub, app: web.Application, ssl_context: ssl.SSLContext | None, loop: asyncio.AbstractEventLoop, announce: Callable[[], None]) -> None:
    """Serve ``app`` on the hub's port until SIGINT or SIGTERM, then shut down in order — aiohttp's
    ``web.run_app``, with the gateway's door at the listening socket instead of aiohttp's site."""
    settings = hub.settings

    async def serving() -> None:
        runner = web.AppRunner(app, handle_signals=True, **SERVER_OPTIONS)
        await runner.setup()
        listener: asyncio.Server | None = None
        try:
            listener = await hub.gateway.entrance(runner.server).listen(settings.bind_host, settings.port, ssl_context=ssl_context)
            announce()
            await asyncio.Event().wait()  # aiohttp's signal handlers raise GracefulExit out of the loop
        finally:
            if listener is not None:
                listener.close()
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    main = loop.create_task(serving())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        loop.run_until_complete(asyncio.gather(main, return_exceptions=True))
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
