"""A real ``iothub serve`` process for the integration tests, on the shared harness (:mod:`iothub.loadgen.servers`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from iothub.core.auth import Authenticator, Role
from iothub.loadgen.servers import ServerProcess, free_port

TEST_SECRET = "test-secret-that-is-long-enough-for-production-0123456789"
#: Tests open many sockets at once from one address: no per-address limits, unless a test sets its own.
UNLIMITED_ADDRESSES = {"IOTHUB_MAX_CONNECTIONS_PER_ADDRESS": "0", "IOTHUB_CONNECT_RATE_PER_ADDRESS": "0", "IOTHUB_AUTH_FAILURES_PER_ADDRESS": "0"}


def workers_of(topology: str) -> int:
    """The gateways of a test topology: ``process`` is one, ``cluster`` two on a local Ray cluster."""
    return 2 if topology == "cluster" else 1


__all__ = ["TEST_SECRET", "UNLIMITED_ADDRESSES", "RunningServer", "free_port", "start_server", "workers_of"]


class RunningServer(ServerProcess):
    """The server, and tokens signed with its secret."""

    def token(self, email: str, role: Role, imei: str | None = None, ttl: int = 600) -> str:
        return Authenticator(self.env.get("JWT_SECRET", TEST_SECRET), production=False).mint(email, role, imei, ttl)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token("admin@example.com", "admin")}

    def gateway_addresses(self) -> dict[str, str]:
        """Each live gateway's own address, by name."""
        live = sum(gateway["alive"] for gateway in self.status()["gateways"])
        return {name: gateway.address for name, gateway in self.gateways(live, timeout=30).items()}

    def wait_for_gateways(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until ``count`` gateways are alive (a cluster answers /health as soon as its first listens)."""
        deadline = time.monotonic() + timeout
        while True:
            gateways: list[dict[str, Any]] = self.status()["gateways"]
            if sum(gateway["alive"] for gateway in gateways) >= count:
                return gateways
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} gateways not alive within {timeout:g} s: {gateways}; {self.log()[-2000:]}")
            time.sleep(0.1)


def start_server(log_dir: Path, port: int | None = None, workers: int = 1, **env: str) -> RunningServer:
    """Run ``iothub serve`` on 127.0.0.1 with ``env`` over a test environment; wait for /health (and every gateway)."""
    port = port or free_port()
    environment = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "JWT_SECRET": TEST_SECRET,
        "IOTHUB_ENV": "development",
        "IOTHUB_DB_PATH": str(log_dir / "iothub.db"),  # never in the repository
        **UNLIMITED_ADDRESSES,
        "IOTHUB_WORKERS": str(workers),
        **env,
    }
    running = RunningServer(port=port, env=environment, log_path=log_dir / f"server-{port}.log", ready_timeout=90)
    if workers > 1:
        running.wait_for_gateways(workers)
    return running
