"""The whole application served inside the test's own process (aiohttp's test server), for tests that need only HTTP.

It is the application ``iothub serve`` runs — the same Hub, routes and
middlewares — on a free loopback port, with the memory store; no process to
start, so a test of an HTTP answer costs milliseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestServer

from iothub.app import Hub
from iothub.config import Settings
from iothub.core.auth import Authenticator, Role

from .server import TEST_SECRET, UNLIMITED_ADDRESSES


class InProcessServer:
    """The served application's address, and tokens signed with its secret (as :class:`RunningServer` has)."""

    def __init__(self, served: TestServer, hub: Hub) -> None:
        self.hub = hub
        self.url = str(served.make_url("")).rstrip("/")

    def token(self, email: str, role: Role, imei: str | None = None, ttl: int = 600) -> str:
        return Authenticator(TEST_SECRET, production=False).mint(email, role, imei, ttl)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token("admin@example.com", "admin")}


@asynccontextmanager
async def serve_in_process(**env: str) -> AsyncIterator[InProcessServer]:
    """Serve the application with ``env`` (environment variables) over a test configuration."""
    settings = Settings.load(
        {"JWT_SECRET": TEST_SECRET, "IOTHUB_ENV": "development", "IOTHUB_STORE": "memory", **UNLIMITED_ADDRESSES, **env}
    )
    hub = Hub(settings)
    served = TestServer(hub.application(), host="127.0.0.1")
    await served.start_server()
    try:
        yield InProcessServer(served, hub)
    finally:
        await served.close()
