"""The private python-socketio / python-engineio / aiohttp API the front end relies on is still there, as it was written for.

An upgrade of either library that renames, removes or reshapes one of these
fails here, by name, instead of breaking the server silently.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path

import pytest
import socketio
from aiohttp import web
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_server import AsyncServer as EngineServer
from engineio.async_socket import AsyncSocket

import iothub
from iothub.frontend import compat

PACKAGE = Path(iothub.__file__).parent
#: The private names compat.py overrides or reads; none may appear anywhere else in the package.
PRIVATE_NAMES = ("_handle_eio_connect", "_handle_eio_message", "_handle_event", "_binary_packet", "_async", "async_drivers")


@pytest.mark.parametrize(
    ("method", "parameters"),
    [
        ("_handle_eio_connect", ["self", "eio_sid", "environ"]),
        ("_handle_eio_message", ["self", "eio_sid", "data"]),
        ("_handle_event", ["self", "eio_sid", "namespace", "id", "data"]),
    ],
)
def test_the_overridden_private_methods_keep_their_signatures(method: str, parameters: list[str]) -> None:
    assert list(inspect.signature(getattr(socketio.AsyncServer, method)).parameters) == parameters
    assert inspect.iscoroutinefunction(getattr(socketio.AsyncServer, method))


async def test_the_private_tables_are_where_compat_reads_and_writes_them() -> None:
    server = socketio.AsyncServer(async_mode="aiohttp")
    assert isinstance(server._binary_packet, dict)
    assert {"websocket", "create_route", "translate_request"} <= set(server.eio._async)
    assert list(inspect.signature(server.eio._async["create_route"]).parameters) == ["app", "engineio_server", "engineio_endpoint"]
    assert list(inspect.signature(server.eio._async["translate_request"]).parameters) == ["request"]


def test_the_websocket_driver_is_built_with_its_handler_and_server() -> None:
    assert list(inspect.signature(eio_aiohttp.WebSocket.__init__).parameters) == ["self", "handler", "server"]
    driver = compat.websocket_driver(lambda socket, environ: None)
    handler, server = object(), object()
    instance = driver(handler, server)
    assert (instance.handler, instance.server) == (handler, server)


async def test_engine_sockets_and_servers_have_every_attribute_the_front_end_uses() -> None:
    engine = EngineServer(async_mode="aiohttp")
    socket = AsyncSocket(engine, "sid-1")
    assert [name for name in compat.ENGINE_SOCKET_ATTRIBUTES if not hasattr(socket, name)] == []
    assert [name for name in compat.ENGINE_SERVER_ATTRIBUTES if not hasattr(engine, name)] == []
    assert isinstance(socket.queue, asyncio.Queue)
    assert {"PING_TIMEOUT", "TRANSPORT_CLOSE"} <= set(vars(engine.reason))


def test_the_installed_versions_are_the_ones_compat_was_written_for() -> None:
    compat.check_versions()


def test_other_versions_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "version", lambda package: "99.0.0")
    with pytest.raises(RuntimeError, match=r"python-socketio 5\.18\.x, but 99\.0\.0 is installed"):
        compat.check_versions()


def test_no_module_but_compat_touches_a_private_name() -> None:
    pattern = re.compile(r"\b(" + "|".join(re.escape(name) for name in PRIVATE_NAMES) + r")\b")
    touches = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "compat.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert touches == []


async def test_a_detached_connection_stays_open_and_aiohttp_writes_nothing_more_to_it() -> None:
    """What the transport relies on to take a WebSocket handshake that aiohttp read (a kept-alive connection)."""
    taken: asyncio.Future[asyncio.Transport | None] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.Response:
        taken.set_result(compat.detach(request))
        return web.Response(text="aiohttp must not send this")

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        transport = await asyncio.wait_for(taken, 5)
        assert transport is not None
        await asyncio.sleep(0.1)  # aiohttp has finished with the request by now
        assert not transport.is_closing()
        transport.write(b"the pump's bytes\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"the pump's bytes\n"
        transport.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
        await runner.cleanup()
