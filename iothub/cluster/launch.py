"""``iothub serve --workers N``: the cluster's driver.

It starts Ray (or joins ``RAY_ADDRESS``), the supervisor actor, then N gateway
actors spread over the cluster's nodes, and says where it listens once every
gateway does. On SIGTERM or SIGINT it stops the gateways together — each
closes its listeners, writes what it took and closes its sockets — then the
supervisor, which writes the registry's last changes, and exits 0, or 1 when
rows were lost. The actors share this process's fate: when it ends, Ray ends them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import threading
from types import FrameType
from typing import Any

import ray
from ray.exceptions import RayError

from .. import logs
from ..config import ConfigError, Settings
from ..persistence.factory import store_kind
from .actors import NAMESPACE, SUPERVISOR, GatewayActor, SupervisorActor, actor_options, gateway_name

log = logging.getLogger(__name__)

#: How long the gateways and the supervisor get to start (Ray starts a process for each).
START_TIMEOUT_S = 120.0
#: How long one actor gets to stop: its write-behind's own limit (IOTHUB_SHUTDOWN_TIMEOUT_MS) and the sockets' close.
STOP_TIMEOUT_S = 60.0


def serve_cluster(settings: Settings) -> int:
    local = settings.ray_address is None
    loopback = ipaddress.ip_address(settings.bind_host).is_loopback
    options: dict[str, Any] = {}
    if local:
        # One machine: every gateway gets a slot, and Ray's own traffic stays on loopback when the server does.
        options["num_cpus"] = max(settings.workers, os.cpu_count() or 1)
        if loopback:
            options["_node_ip_address"] = "127.0.0.1"
    # "local": a new cluster of this process's own, never one Ray would otherwise find on this machine.
    ray.init(address=settings.ray_address or "local", namespace=NAMESPACE, include_dashboard=False, **options)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    secret = secrets.token_urlsafe(32)  # the gateways' relay and watch endpoints take only the cluster's actors
    try:
        supervisor_actor: Any = ray.remote(SupervisorActor)
        gateway_actor: Any = ray.remote(GatewayActor)
        supervisor = supervisor_actor.options(**actor_options(name=SUPERVISOR, num_cpus=0)).remote(settings, settings.workers, secret)
        ray.get(supervisor.ready.remote(), timeout=START_TIMEOUT_S)
        gateways = [
            gateway_actor.options(**actor_options(name=f"iothub-{gateway_name(index)}", num_cpus=1, scheduling_strategy="SPREAD")).remote(
                index, settings, secret
            )
            for index in range(settings.workers)
        ]
        pids = ray.get([gateway.ping.remote() for gateway in gateways], timeout=START_TIMEOUT_S)
    except (RayError, TimeoutError) as exc:
        ray.shutdown()
        raise ConfigError(f"the cluster did not start: {exc}") from exc
    logs.announce(describe(settings, pids), settings.log_format)
    while not stopping.wait(1.0):
        pass
    log.info("stopping the cluster's %d gateways", len(gateways))
    lost = sum(stopped(stopping) for stopping in [gateway.stop.remote() for gateway in gateways])  # together
    lost += stopped(supervisor.stop.remote())
    ray.shutdown()
    return 1 if lost else 0


def stopped(stopping: Any) -> int:
    """An actor's stop, awaited: the rows it could not write (1 when it could not stop cleanly: say so)."""
    try:
        lost: int = ray.get(stopping, timeout=STOP_TIMEOUT_S)
    except (RayError, TimeoutError) as error:
        log.error("an actor of the cluster did not stop cleanly: %s", error)
        return 1
    return lost


def describe(settings: Settings, pids: list[int]) -> str:
    where = "a local Ray cluster" if settings.ray_address is None else f"the Ray cluster at {settings.ray_address}"
    return (
        f"iothub listening on {'https' if settings.tls_cert else 'http'}://{settings.bind_host}:{settings.port} "
        f"with {len(pids)} gateways (pids {', '.join(map(str, pids))}) on {where} "
        f"(env {settings.env}, store {store_kind(settings)}, alert evaluator {settings.evaluator})"
    )
