"""The two kinds of Ray actor: a gateway (a whole front end on the shared port) and the supervisor.

A :class:`GatewayActor` runs a :class:`~iothub.app.Hub` in the actor's event
loop, behind the gateway's door (:mod:`iothub.frontend.door`) with an aiohttp
runner for everything but its WebSockets, on the public port with
``SO_REUSEPORT`` and on a private port of its own, where other gateways forward
requests for its sessions. Once it listens it joins the supervisor with what it holds; Ray
restarts it when its process dies, and the new one joins again.

The :class:`SupervisorActor` runs the :class:`~iothub.core.supervisor.Supervisor`
with the registry's write-behind, the heartbeat sweep, and a watch over the
gateways (:mod:`.watch`): one whose process ends, or that stops answering, is
dropped, its devices announced offline. A restarted supervisor starts a new epoch and asks every
gateway to join again with its state, so nothing is announced twice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from typing import Any

import aiohttp
import ray
from aiohttp import web
from ray.actor import ActorHandle
from ray.exceptions import RayError

from .. import logs
from ..app import SERVER_OPTIONS, Hub, Membership, sweep_forever
from ..config import Settings
from ..core.commands import (
    GatewayReport,
    GatewayState,
    Routes,
    SendToUser,
    SocketClosed,
)
from ..core.metrics import Counters
from ..core.supervisor import Supervisor
from ..persistence.factory import create_store
from ..persistence.writebehind import WriteBehind
from ..tls import server_context
from .forwarding import Forwarder
from .links import Directive, GatewayMember, Peers, SupervisorClient
from .relay import RELAY_PATH, Crossings, relay_endpoint
from .watch import HEARTBEAT_S, WATCH_PATH, watch, watch_endpoint

log = logging.getLogger(__name__)

#: The Ray namespace of a cluster's named actors.
NAMESPACE = "iothub"
SUPERVISOR = "supervisor"
#: How soon the supervisor looks again for a gateway it lost (a new incarnation joins by itself).
WATCH_RETRY_S = 0.25
#: A gateway joining a supervisor that Ray is restarting asks again, this often, this long apart.
REJOIN_ATTEMPTS = 300
REJOIN_PAUSE_S = 0.1


#: What the supervisor may ask of a gateway: the :class:`~iothub.core.supervisor.GatewayLink` methods that answer.
PLANE_COMMANDS = frozenset(
    ("attach", "detach", "join", "leave", "deliver", "send_to_socket", "broadcast", "sweep", "devices", "last_states", "counts", "report")
)
#: What a gateway may ask of the supervisor: its :class:`~iothub.core.supervisor.ControlPlane`, and who owns what.
CONTROL_QUESTIONS = frozenset(
    ("register", "subscribe", "unsubscribe", "send_to_device", "send_to_user", "broadcast", "devices", "users", "counts", "reports")
)
OWNER_QUESTIONS = frozenset(("owner_of", "devices_of"))


def gateway_name(index: int) -> str:
    return f"gateway-{index}"


class GatewayActor:
    async def __init__(self, index: int, settings: Settings, secret: str) -> None:  # type: ignore[misc]  # Ray awaits it in the actor's loop
        logs.configure(settings.log_format, debug=bool(settings.debug))
        self.name = gateway_name(index)
        self.supervisor = ray.get_actor(SUPERVISOR, namespace=NAMESPACE)
        self.client = SupervisorClient(self.supervisor)
        self.secret = secret
        self.crossings: Crossings | None = None
        membership = Membership(self.name, self.client, self.client, self._relay, self._registry_committed)
        self.hub = Hub(settings, membership=membership)
        self.plane = self.hub.plane
        self.forwarder = Forwarder(
            self.name,
            max_message_bytes=self.hub.gateway.eio.max_http_buffer_size,
            poll_timeout=(settings.ping_interval_ms + settings.ping_timeout_ms) / 1000 + 5,
        )
        self.hub.gateway.name_sessions(self.forwarder.prefix)
        self.hub.gateway.elsewhere = self.forwarder
        app = self.hub.application()
        app.router.add_get(RELAY_PATH, relay_endpoint(self.plane, secret))
        app.router.add_get(WATCH_PATH, watch_endpoint(secret))
        self.runner = web.AppRunner(app, **SERVER_OPTIONS)
        await self.runner.setup()
        entrance = self.hub.gateway.entrance(self.runner.server)
        private_host = settings.bind_host if ipaddress.ip_address(settings.bind_host).is_loopback else ray.util.get_node_ip_address()
        listener = socket.create_server((private_host, 0))
        #: The public port (shared with the other gateways), and this gateway's own private one.
        self.listeners = [
            await entrance.listen(settings.bind_host, settings.port, ssl_context=server_context(settings), reuse_port=True),
            await entrance.listen(sock=listener),
        ]
        self.address = f"http://{private_host}:{listener.getsockname()[1]}"
        self._rejoining = asyncio.Lock()
        self._joining = asyncio.get_running_loop().create_task(self.rejoin())  # after __init__: the supervisor calls back

    def _relay(self, counters: Counters) -> Crossings:
        self.crossings = self.client.crossings = Crossings(counters, self.secret)
        return self.crossings

    def _registry_committed(self) -> asyncio.Future[None]:
        return asyncio.ensure_future(self.client.registry_committed())

    async def rejoin(self) -> None:
        """Tell the supervisor what this gateway holds (it started, or the supervisor did).

        A supervisor Ray is still restarting refuses the call for a moment: asked again until it takes it.
        """
        me = ray.get_runtime_context().current_actor
        async with self._rejoining:
            for _ in range(REJOIN_ATTEMPTS):
                try:
                    await self.supervisor.join.remote(self.name, me, await self.plane.report(), self.address, self.plane.state())
                    return
                except RayError as error:
                    log.info("%s: the supervisor is not there yet (%s); asking again", self.name, type(error).__name__)
                    await asyncio.sleep(REJOIN_PAUSE_S)
            log.error("%s could not join the supervisor", self.name)

    async def ping(self) -> int:
        return os.getpid()

    # ------------------------------------------------------------------ the supervisor's commands

    async def command(self, name: str, *args: object) -> object:
        """One of the supervisor's commands (:data:`PLANE_COMMANDS`), answered by the data plane."""
        if name not in PLANE_COMMANDS:
            raise ValueError(f"no such command: {name}")
        return await getattr(self.plane, name)(*args)

    async def apply(self, directives: list[Directive]) -> None:
        """The supervisor's stream: announcements, routing changes, the peers' addresses, in order."""
        for directive in directives:
            if isinstance(directive, SendToUser):
                self.plane.announce(directive)
            elif isinstance(directive, Routes):
                await self.plane.route(directive)
            else:
                self.forwarder.update(directive.addresses)
                if self.crossings is not None:
                    self.crossings.addresses = directive.addresses

    async def stop(self) -> int:
        """Stop serving: the listeners close, what was taken is written, the sockets close; return rows lost."""
        for listener in self.listeners:
            listener.close()
        await self.runner.cleanup()
        if self.crossings is not None:
            await self.crossings.close()
        await self.client.closed.delivered()
        await self.forwarder.close()
        return self.hub.lost


class SupervisorActor:
    async def __init__(self, settings: Settings, gateways: int, secret: str) -> None:  # type: ignore[misc]  # Ray awaits it in the actor's loop
        logs.configure(settings.log_format, debug=bool(settings.debug))
        self.settings = settings
        self.secret = secret
        self.store = create_store(settings)
        await self.store.open()
        self.write_behind = WriteBehind(
            self.store, capacity=settings.buffer_rows, batch_rows=settings.batch_rows, flush_interval=settings.flush_interval_ms / 1000
        )
        self.write_behind.start()
        self.supervisor = Supervisor(self.write_behind, heartbeat_timeout_ms=settings.heartbeat_timeout_ms, epoch=time.time_ns())
        #: Every gateway that ever joined (dropped ones too: the watch asks them to come back).
        self.members: dict[str, GatewayMember] = {}
        self._expected = gateways
        self._drops: set[asyncio.Task[None]] = set()
        #: One watch per gateway, over its latest incarnation.
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=HEARTBEAT_S))
        loop = asyncio.get_running_loop()
        self._chores = [
            loop.create_task(sweep_forever(self.supervisor, settings), name="iothub-heartbeat-sweep"),
            loop.create_task(self._recall(), name="iothub-recall-gateways"),
        ]

    async def ready(self) -> int:
        return os.getpid()

    async def join(self, name: str, handle: ActorHandle, report: GatewayReport, address: str, state: GatewayState) -> None:
        previous = self.members.get(name)
        if previous is not None:
            await self._drop(previous)  # an earlier incarnation, if the watch has not dropped it yet
        member = GatewayMember(name, handle, report, address, self._unreachable)
        self.members[name] = member
        watching = self._watches.pop(name, None)
        if watching is not None:
            watching.cancel()
        self._watches[name] = asyncio.get_running_loop().create_task(self._watch(member), name=f"iothub-watch-{name}")
        self._publish_peers(joining=name)  # first: routes to the joiner may follow at once
        await self.supervisor.join(name, member, state)
        log.info("%s (pid %d, private address %s) joined with %d devices", name, report.pid, address, len(state.devices))

    def _unreachable(self, member: GatewayMember) -> None:
        task = asyncio.get_running_loop().create_task(self._drop(member))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    async def _drop(self, member: GatewayMember) -> None:
        """Drop this incarnation of a gateway, unless it is gone already or a newer one has joined."""
        if self.members.get(member.name) is not member or member.name not in self.supervisor.gateways():
            return
        gone = await self.supervisor.drop(member.name, member.last)
        self._publish_peers()
        log.warning("%s (pid %d) is gone: %d devices offline", member.name, member.last.pid, len(gone))

    def _publish_peers(self, joining: str | None = None) -> None:
        live = {*self.supervisor.gateways(), *([joining] if joining else [])}
        members = [member for name, member in self.members.items() if name in live]
        peers = Peers({member.name: member.address for member in members})
        for name in live:
            self.members[name].stream.push(peers)

    async def _watch(self, member: GatewayMember) -> None:
        """Drop the gateway when its watch socket ends; ask it to rejoin if it answers again after a drop."""
        while self.members.get(member.name) is member:
            await watch(self._session, member.address, self.secret, lambda: self._answered(member))
            await self._drop(member)
            await asyncio.sleep(WATCH_RETRY_S)

    def _answered(self, member: GatewayMember) -> None:
        if member.name not in self.supervisor.gateways():
            member.handle.rejoin.remote()  # it was dropped while it lived: it comes back with its state

    async def _recall(self) -> None:
        """After a restart of this actor: every gateway already running joins again, with its state."""
        for index in range(self._expected):
            try:
                handle = ray.get_actor(f"iothub-{gateway_name(index)}", namespace=NAMESPACE)
            except ValueError:
                continue  # not started yet: it joins when it is
            handle.rejoin.remote()

    # ------------------------------------------------------------------ the gateways' questions

    async def ask(self, name: str, *args: object) -> object:
        """A gateway's question (:data:`CONTROL_QUESTIONS`), answered by the supervisor, or by the registry."""
        if name in CONTROL_QUESTIONS:
            return await getattr(self.supervisor, name)(*args)
        if name in OWNER_QUESTIONS:
            return await getattr(self.write_behind, name)(*args)
        raise ValueError(f"no such question: {name}")

    async def sockets_closed(self, commands: list[SocketClosed]) -> None:
        for command in commands:
            await self.supervisor.socket_closed(command)

    async def registry_committed(self) -> None:
        await self.write_behind.committed()

    async def stop(self) -> int:
        """Write the registry's last changes and close the store; return rows lost."""
        chores = (*self._chores, *self._watches.values(), *self._drops)
        for chore in chores:
            chore.cancel()
        await asyncio.gather(*chores, return_exceptions=True)
        await self._session.close()
        for member in self.members.values():
            await member.stream.delivered()
        lost = await self.write_behind.close(self.settings.shutdown_timeout_ms / 1000)
        await self.store.close()
        return lost


def actor_options(**options: Any) -> dict[str, Any]:
    """Options every actor of a cluster takes: named in the cluster's namespace, restarted when it dies."""
    return {"namespace": NAMESPACE, "max_restarts": -1, **options}
