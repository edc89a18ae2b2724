"""A real ``iothub serve`` process for the integration tests, on the shared harness (:mod:`iothub.loadgen.servers`)."""

from __future__ import annotations

from pathlib import Path

from iothub.core.auth import Authenticator, Role
from iothub.loadgen.servers import ServerProcess, free_port

TEST_SECRET = "test-secret-that-is-long-enough-for-production-0123456789"
#: Tests open many sockets at once from one address: no per-address limits, unless a test sets its own.
UNLIMITED_ADDRESSES = {"IOTHUB_MAX_CONNECTIONS_PER_ADDRESS": "0", "IOTHUB_CONNECT_RATE_PER_ADDRESS": "0", "IOTHUB_AUTH_FAILURES_PER_ADDRESS": "0"}

__all__ = ["TEST_SECRET", "UNLIMITED_ADDRESSES", "RunningServer", "free_port", "start_server"]


class RunningServer(ServerProcess):
    """The server, and tokens signed with its secret."""

    def token(self, email: str, role: Role, imei: str | None = None, ttl: int = 600) -> str:
        return Authenticator(self.env.get("JWT_SECRET", TEST_SECRET), production=False).mint(email, role, imei, ttl)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token("admin@example.com", "admin")}


def start_server(log_dir: Path, port: int | None = None, **env: str) -> RunningServer:
    """Run ``iothub serve`` on 127.0.0.1 with ``env`` over a test environment; wait for /health."""
    port = port or free_port()
    environment = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "JWT_SECRET": TEST_SECRET,
        "IOTHUB_ENV": "development",
        "IOTHUB_DB_PATH": str(log_dir / "iothub.db"),  # never in the repository
        **UNLIMITED_ADDRESSES,
        **env,
    }
    return RunningServer(port=port, env=environment, log_path=log_dir / f"server-{port}.log")
