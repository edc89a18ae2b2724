from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from .support.mongodb import mongodb_uri  # noqa: F401 (a session fixture: the MongoDB server, SecantusDB unless one is named)
from .support.server import RunningServer, start_server, workers_of
from .support.tls import Certificates, make_certificates, start_tls_server

_imeis = itertools.count(100000000000000)
_emails = itertools.count(1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets ``TOPOLOGIES`` runs its tests against each: one process, and a cluster of two
    gateways on Ray (PROTOCOL.md: clients see one server)."""
    if "topology" in metafunc.fixturenames:
        topologies = getattr(metafunc.module, "TOPOLOGIES", ("process",))
        metafunc.parametrize("topology", topologies, scope="module")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, topology: str) -> Iterator[RunningServer]:
    """One development server shared by a test module; tests use their own imeis and e-mails."""
    running = start_server(tmp_path_factory.mktemp("server"), workers=workers_of(topology))
    yield running
    running.stop()


@pytest.fixture
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with their own settings (environment variables); all stopped at the end."""
    started: list[RunningServer] = []

    def start(**env: str) -> RunningServer:
        running = start_server(tmp_path_factory.mktemp("server"), None, 1, **env)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def imei() -> Callable[[], str]:
    """Fresh 15-digit imeis, unique across the session."""
    return lambda: str(next(_imeis))


@pytest.fixture
def email() -> Callable[[], str]:
    """Fresh owner e-mails, unique across the session."""
    return lambda: f"owner{next(_emails)}@example.com"


@pytest.fixture
async def open_client():
    """``await open_client(url, transports=..., token=...)``: a recording Socket.IO client, closed after the test."""
    from contextlib import AsyncExitStack

    from .support.clients import connect

    async with AsyncExitStack() as stack:

        async def open_(url: str, **options):
            return await stack.enter_async_context(connect(url, **options))

        yield open_


@pytest.fixture
def watched_device(server, open_client, imei, email):
    """``await watched_device()``: a fresh owner, a dashboard subscribed to it, and a device
    registered for it, as ``(owner, dashboard, device, imei)``."""

    async def watch():
        owner = email()
        dashboard = await open_client(server.url)
        await dashboard.subscribe(owner)
        device = await open_client(server.url)
        box = imei()
        await device.register(box, owner)
        return owner, dashboard, device, box

    return watch


@pytest.fixture
async def http():
    """An aiohttp.ClientSession, closed after the test."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def in_process():
    """``await in_process(**env)``: the application served in this process, for tests that need only HTTP."""
    from contextlib import AsyncExitStack

    from .support.inprocess import serve_in_process

    async with AsyncExitStack() as stack:

        async def serve(**env: str):
            return await stack.enter_async_context(serve_in_process(**env))

        yield serve


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test authority and a server certificate from it, for 127.0.0.1 and localhost."""
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[RunningServer]:
    """A server speaking HTTPS and WSS only, with that certificate, shared by a test module."""
    running = start_tls_server(tmp_path_factory.mktemp("server"), certificates)
    yield running
    running.stop()
