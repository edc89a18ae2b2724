"""Every touch of python-socketio's, python-engineio's and aiohttp's private API, fenced in one module.

The front end needs five things the libraries do not offer publicly: its own
WebSocket connection (:mod:`iothub.frontend.transport`); handshakes read by
its own door as well as aiohttp's requests; a connection taken from aiohttp
(:func:`detach`); a plain ``telemetry_data`` EVENT handed over as text before
python-socketio's generic parser sees it; and no copy of the handshake's
environ kept per socket. Each is an override of a private method, a private
table or an undocumented attribute, and all of them are here, behind the
public-named hooks of :class:`SocketIOServer`, :func:`websocket_driver` and
:func:`detach`.

Engine.IO's socket and server also have attributes with no leading underscore
that are not documented API either (the socket's ``queue``, its state flags,
its ``schedule_ping``); the transport and the gateway use them, and
:data:`ENGINE_SOCKET_ATTRIBUTES` and :data:`ENGINE_SERVER_ATTRIBUTES` list
every one. ``tests/unit/test_compat.py`` checks all of these names on the
installed libraries, so an upgrade that changes them fails loudly there, and
this module refuses at import to run with versions it was not written for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import socketio
from aiohttp import web
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket as EngineSocket
from engineio.exceptions import EngineIOError
from socketio import packet as sio_packet

from .packets import split_event

#: The releases this module was written and tested against (major.minor).
WRITTEN_FOR = {"python-socketio": "5.18", "python-engineio": "4.15"}

#: Engine.IO socket attributes used outside this module: undocumented, so checked by the compat test.
ENGINE_SOCKET_ATTRIBUTES = (
    "sid", "server", "queue", "connected", "upgraded", "upgrading", "closing", "closed",
    "last_ping", "schedule_ping", "receive", "close",
)  # fmt: skip
#: Engine.IO server attributes used outside this module, likewise.
ENGINE_SERVER_ATTRIBUTES = ("sockets", "handlers", "max_http_buffer_size", "ping_interval", "ping_timeout", "reason")

#: Engine.IO's WebSocket driver class for aiohttp, as :func:`websocket_driver` makes it.
WebSocketDriver = type[eio_aiohttp.WebSocket]

#: What python-socketio keeps of a handshake's environ for the socket's life: nothing (this server reads none).
NO_ENVIRON: dict[str, Any] = {}
#: The data :meth:`SocketIOServer.handle_event` gets for an event that announced binary attachments.
BINARY = object()


class ProtocolViolation(EngineIOError):
    """A packet that does not parse. An Engine.IO error, so that python-engineio closes a polling
    session over it as the reference server does; the WebSocket pump closes its socket too."""


def check_versions() -> None:
    """Refuse to run on python-socketio or python-engineio releases this module was not written for."""
    for package, written_for in WRITTEN_FOR.items():
        installed = version(package)
        if installed.split(".")[:2] != written_for.split("."):
            raise RuntimeError(
                f"iothub's front end uses private parts of {package} {written_for}.x, but {installed} is installed: "
                "install a supported version, or check iothub/frontend/compat.py against the new one"
            )


check_versions()


class SocketIOServer(socketio.AsyncServer):
    """python-socketio's server, with its private dispatch routed to hooks of public name.

    Subclasses implement :meth:`handle_event` and may implement
    :meth:`engine_socket_opened` and :meth:`engine_socket_closed`.

    Binary attachments are refused at their announcement: the event is
    answered as :data:`BINARY` at once, and the attachments that follow are
    counted off and dropped, never held.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        #: Engine.IO session → attachments still to drop.
        self._dropping: dict[str, int] = {}

    def use_transport(self, websocket: WebSocketDriver, create_route: Callable[..., None]) -> None:
        """Serve WebSockets with ``websocket`` and add Engine.IO's routes with ``create_route``.

        ``handle_request`` then takes an aiohttp request or, from the door, an
        environ; the environ of a request has the client's ``REMOTE_ADDR``.
        """
        self.eio._async = {**self.eio._async, "websocket": websocket, "create_route": create_route, "translate_request": _environ}

    def name_sessions(self, prefix: str) -> None:
        """Start every Engine.IO session id with ``prefix``: in cluster mode it names the gateway that owns the session."""
        generate = self.eio.generate_id
        self.eio.generate_id = lambda: prefix + generate()

    def engine_socket_opened(self, socket: EngineSocket, environ: dict[str, Any]) -> None:
        """A new Engine.IO session, before Socket.IO's CONNECT; ``environ`` is its handshake's."""

    def engine_socket_closed(self, eio_sid: str) -> None:
        """An Engine.IO session ended, Socket.IO's disconnect handled."""

    async def handle_event(self, eio_sid: str, namespace: str | None, ack_id: int | None, data: Any) -> None:
        """An EVENT: ``data`` is the JSON text of its array (:class:`~iothub.frontend.packets.EventPacket`)."""
        raise NotImplementedError

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        self.engine_socket_opened(self.eio.sockets[eio_sid], environ)
        await super()._handle_eio_connect(eio_sid, NO_ENVIRON)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self._dropping.pop(eio_sid, None)
        await super()._handle_eio_disconnect(eio_sid, reason)
        self.engine_socket_closed(eio_sid)

    async def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        """A plain EVENT on the default namespace goes straight to :meth:`handle_event`, as text.

        python-socketio's generic packet parser costs more than the rest of a
        telemetry message; anything else still goes through it. A packet that
        does not parse raises :class:`ProtocolViolation`.
        """
        try:
            if isinstance(data, str):
                event = split_event(data)
                if event is not None:
                    await self.handle_event(eio_sid, None, *event)
                    return
                if data[:1] in _BINARY_TYPES:
                    await self._refuse_binary(eio_sid, data)
                    return
            elif self._dropping.get(eio_sid, 0) > 0:
                self._dropping[eio_sid] -= 1
                return
            else:
                raise ValueError("a binary frame that no packet announced")
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ProtocolViolation(str(exc)[:200]) from None

    async def _refuse_binary(self, eio_sid: str, text: str) -> None:
        """Answer an event with attachments as :data:`BINARY` now, and drop its attachments as they come."""
        announced = self.packet_class(encoded_packet=text)
        self._dropping[eio_sid] = self._dropping.get(eio_sid, 0) + announced.attachment_count
        if announced.packet_type == sio_packet.BINARY_EVENT:
            await self.handle_event(eio_sid, announced.namespace, announced.id, BINARY)

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        await self.handle_event(eio_sid, namespace, id, data)


_BINARY_TYPES = (str(sio_packet.BINARY_EVENT), str(sio_packet.BINARY_ACK))


def _environ(request: web.Request | dict[str, Any]) -> dict[str, Any]:
    if isinstance(request, dict):
        return request
    environ: dict[str, Any] = eio_aiohttp.translate_request(request)
    environ["REMOTE_ADDR"] = request.remote or ""
    return environ


def detach(request: web.BaseRequest) -> asyncio.Transport | None:
    """Take ``request``'s connection from aiohttp: it forgets the connection, and writes and closes nothing more on it.

    aiohttp offers no way to hand a connection over (its own WebSockets stay
    behind its request handler). Its handler is told the connection was lost,
    with the transport out of its hands first, so that it does not close it.
    """
    transport, protocol = request.transport, request.protocol
    if transport is None:
        return None
    protocol.transport = None
    protocol.connection_lost(None)
    return transport


def websocket_driver(open_pump: Callable[[EngineSocket, dict[str, Any]], web.StreamResponse | None]) -> WebSocketDriver:
    """Engine.IO's WebSocket driver, reduced to handing the socket and the handshake's environ to ``open_pump``.

    Engine.IO calls the driver to run a WebSocket session, and answers the
    handshake with what it returns: None once the WebSocket is open (the door
    answered it), else a refusal.
    """

    class WebSocket(eio_aiohttp.WebSocket):
        async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse | None:
            return open_pump(self.handler.__self__, environ)

    return WebSocket
