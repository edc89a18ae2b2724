"""Client helpers for the integration tests: real Socket.IO sockets and real HTTP.

:func:`connect` opens a ``socketio.AsyncClient`` that records every event it
receives; :class:`Client` waits for them with a deadline. :func:`rest` calls
the HTTP API and checks that the answer leaks no internals.

Ordering is what makes negative checks exact instead of "wait and hope": the
server handles one socket's events in order and queues every packet it sends
to a socket in order, so once :meth:`Client.sync` returns, everything the
server queued for that socket before it has arrived.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import socketio
from socketio import packet as sio_packet

#: How long any single wait in these tests may take before it fails.
TIMEOUT = 5.0

#: The reply event of each client event sent without an acknowledgement.
REPLY_EVENTS = {
    "register_device": "device_registered",
    "telemetry_data": "telemetry_processed",
    "subscribe_user": "user_subscribed",
    "unsubscribe_user": "user_unsubscribed",
}

#: The two ways a client can get its reply (PROTOCOL.md, "Replies").
REPLY_STYLES = ("ack", "event")

#: Text that would mean a failure leaked the server's internals.
_LEAKS = re.compile(r"Traceback|File \"|\.pyx?\b|site-packages|/work/|/usr/|Error\(|line \d+", re.IGNORECASE)

_NO_PAYLOAD = object()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def assert_clean(reply: Any) -> None:
    """Fail if ``reply`` (a payload or text) carries a stack trace or a file path."""
    text = reply if isinstance(reply, str) else json.dumps(reply)
    leak = _LEAKS.search(text)
    assert leak is None, f"reply leaks internals ({leak.group()!r}): {text[:500]}"


def assert_failure(reply: Any, code: str) -> None:
    """``reply`` is exactly ``{success: false, code, message}`` with a non-empty, clean message."""
    assert isinstance(reply, dict), reply
    assert set(reply) == {"success", "code", "message"}, reply
    assert reply["success"] is False, reply
    assert reply["code"] == code, reply
    assert isinstance(reply["message"], str) and reply["message"], reply
    assert_clean(reply)


# --------------------------------------------------------------------------- raw JSON on the wire


class RawJson:
    """An argument sent as this exact JSON text (e.g. ``null``, nesting json.dumps cannot write)."""

    def __init__(self, text: str) -> None:
        self.text = text


class _RawAwareJson:
    loads = staticmethod(json.loads)

    @staticmethod
    def dumps(value: Any, **kwargs: Any) -> str:
        if isinstance(value, list) and any(isinstance(item, RawJson) for item in value):
            parts = (item.text if isinstance(item, RawJson) else json.dumps(item, **kwargs) for item in value)
            return "[" + ",".join(parts) + "]"
        return json.dumps(value, **kwargs)


class RawAwarePacket(sio_packet.Packet):
    """The client's packet class, able to put :class:`RawJson` text on the wire verbatim."""

    json = _RawAwareJson


# --------------------------------------------------------------------------- sockets


@dataclass(frozen=True)
class Received:
    event: str
    args: tuple[Any, ...]

    @property
    def payload(self) -> Any:
        """The event's single argument (None when it came with none)."""
        return self.args[0] if self.args else None


class Client:
    """A connected ``socketio.AsyncClient`` and every event it has received, in order."""

    def __init__(self, sio: socketio.AsyncClient) -> None:
        self.sio = sio
        self.received: list[Received] = []
        self.connect_errors: list[Any] = []
        self.disconnects = 0
        self._arrived = asyncio.Event()

    # -- recording

    def _record(self, event: str, *args: Any) -> None:
        self.received.append(Received(event, args))
        self._arrived.set()

    def _record_connect_error(self, *args: Any) -> None:
        self.connect_errors.append(args[0] if len(args) == 1 else args)
        self._arrived.set()

    def _record_disconnect(self, *args: Any) -> None:
        self.disconnects += 1
        self._arrived.set()

    @property
    def sid(self) -> str:
        return self.sio.get_sid()

    @property
    def connected(self) -> bool:
        return self.sio.connected and self.disconnects == 0

    def mark(self) -> int:
        """A position in :attr:`received`, for "events after this point"."""
        return len(self.received)

    def events(self, name: str | None = None, since: int = 0) -> list[Received]:
        return [item for item in self.received[since:] if name is None or item.event == name]

    def payloads(self, name: str, since: int = 0) -> list[Any]:
        return [item.payload for item in self.events(name, since)]

    # -- waiting

    async def wait_for(self, predicate: Callable[[Received], bool], timeout: float = TIMEOUT, since: int = 0) -> Received:
        """The first received event (from ``since``) matching ``predicate``; fail after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._arrived.clear()
            for item in self.received[since:]:
                if predicate(item):
                    return item
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [(item.event, str(item.args)[:120]) for item in self.received[since:]]
                raise AssertionError(f"no matching event within {timeout} s; received {seen}")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_event(
        self, name: str, where: Callable[[Any], bool] | None = None, timeout: float = TIMEOUT, since: int = 0
    ) -> Any:
        """The payload of the first ``name`` event (from ``since``) whose payload satisfies ``where``."""
        item = await self.wait_for(
            lambda item: item.event == name and (where is None or where(item.payload)), timeout, since
        )
        return item.payload

    async def wait_count(self, name: str, count: int, timeout: float = TIMEOUT, since: int = 0) -> list[Any]:
        """Wait until ``count`` events ``name`` arrived (from ``since``); return their payloads."""
        await self.wait_for(lambda _: len(self.events(name, since)) >= count, timeout, since)
        return self.payloads(name, since)

    # -- sending

    async def call(self, event: Any, data: Any = _NO_PAYLOAD, timeout: float = TIMEOUT) -> Any:
        """Send with an acknowledgement; return the acknowledgement's payload."""
        if data is _NO_PAYLOAD:
            return await self.sio.call(event, timeout=timeout)
        return await self.sio.call(event, data, timeout=timeout)

    async def emit(self, event: Any, data: Any = _NO_PAYLOAD) -> None:
        """Send without an acknowledgement."""
        if data is _NO_PAYLOAD:
            await self.sio.emit(event)
        else:
            await self.sio.emit(event, data)

    async def request(self, event: Any, data: Any = _NO_PAYLOAD, timeout: float = TIMEOUT) -> Received:
        """Send without an acknowledgement and wait for the reply event or ``error``."""
        since = self.mark()
        await self.emit(event, data)
        expected = {"error", REPLY_EVENTS.get(event, "error")}
        return await self.wait_for(lambda item: item.event in expected, timeout, since)

    async def reply(self, style: str, event: Any, data: Any = _NO_PAYLOAD) -> Any:
        """Send in a reply style and return the one reply, checking it came only that way.

        ``"ack"``: the reply is the acknowledgement and no reply event (nor
        ``error``) follows. ``"event"``: exactly one reply arrives, as the
        event of PROTOCOL.md's table on success and as ``error`` on failure.
        """
        replies = {"error", REPLY_EVENTS.get(event, "error")}
        since = self.mark()
        if style == "ack":
            reply = await self.call(event, data)
            await self.sync()
            extra = [item for item in self.events(since=since) if item.event in replies]
            assert extra == [], f"an acknowledged {event} also emitted {extra}"
            return reply
        assert style == "event", style
        item = await self.request(event, data)
        await self.sync()
        assert [e for e in self.events(since=since) if e.event in replies] == [item], self.events(since=since)
        assert len(item.args) == 1, item
        success = isinstance(item.payload, dict) and item.payload.get("success") is True
        assert item.event == (REPLY_EVENTS.get(event) if success else "error"), item
        return item.payload

    async def sync(self) -> None:
        """Return once everything the server queued for this socket so far has arrived."""
        reply = await self.call("unsubscribe_user", {"email": "sync-barrier@example.invalid"})
        assert reply == {"success": True, "email": "sync-barrier@example.invalid"}, reply

    async def disconnect(self) -> None:
        """Disconnect now, over either transport.

        python-engineio's client, on polling, waits for its pending long-poll
        GET, which python-engineio's server answers only at its ping interval
        (25 s). So once the close has been POSTed, that GET is aborted by
        closing the client's HTTP session. (socket.io-client aborts it too.)
        """
        sio, eio = self.sio, self.sio.eio
        if eio.state != "connected" or eio.current_transport != "polling":
            if sio.connected:
                await sio.disconnect()
            elif eio.state != "disconnected":
                await eio.disconnect()
            return
        writer = eio.write_loop_task
        closing = asyncio.ensure_future(sio.disconnect())
        if writer is not None:
            await asyncio.wait_for(asyncio.shield(writer), TIMEOUT)  # the close packet reached the server
        if eio.http is not None and not eio.http.closed:
            await eio.http.close()
        await asyncio.wait_for(closing, TIMEOUT)

    # -- the protocol's common steps

    async def register(self, imei: str, owner: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"imei": imei}
        if owner is not None:
            payload["userEmail"] = owner
        reply = await self.call("register_device", payload)
        assert reply == {"success": True, "imei": imei, "message": "Device registered successfully"}, reply
        return reply

    async def telemetry(self, imei: str, data: dict[str, Any], timestamp: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"imei": imei, "data": data}
        if timestamp is not None:
            payload["timestamp"] = timestamp
        reply = await self.call("telemetry_data", payload)
        assert reply == {"success": True, "message": "Telemetry processed successfully"}, reply
        return reply

    async def subscribe(self, email: str) -> dict[str, Any]:
        reply = await self.call("subscribe_user", {"email": email})
        assert reply.get("success") is True and reply.get("email") == email.lower(), reply
        return reply


@asynccontextmanager
async def connect(
    url: str,
    *,
    transports: Sequence[str] = ("websocket",),
    token: str | None = None,
    auth: Any = None,
    http_session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[Client]:
    """A connected client recording everything it receives; disconnected on exit.

    ``http_session``: the aiohttp session both transports use, e.g. one whose
    connector trusts a test certificate (certificates are verified either way).
    """
    # aiohttp's client refuses WebSocket messages over 4 MiB by default; the server may send up to its limit
    sio = socketio.AsyncClient(
        reconnection=False, serializer=RawAwarePacket, websocket_extra_options={"max_msg_size": 64 * 1024 * 1024}, http_session=http_session
    )
    client = Client(sio)
    sio.on("*", client._record)
    sio.on("connect_error", client._record_connect_error)
    sio.on("disconnect", client._record_disconnect)
    if token is not None:
        auth = {"token": token}
    await sio.connect(url, transports=list(transports), auth=auth, wait_timeout=TIMEOUT)
    try:
        yield client
    finally:
        await client.disconnect()


async def refused(url: str, *, transports: Sequence[str] = ("websocket",), auth: Any = None) -> list[Any]:
    """Try to connect; assert the server refuses; return what ``connect_error`` carried."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", lambda *args: errors.append(args[0] if len(args) == 1 else args))
    try:
        await sio.connect(url, transports=list(transports), auth=auth, wait_timeout=TIMEOUT)
    except socketio.exceptions.ConnectionError:
        pass
    else:
        await sio.disconnect()
        raise AssertionError("the server accepted the connection")
    finally:
        if sio.eio.state != "disconnected":
            await sio.eio.disconnect()
    return errors


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    text: str


async def rest(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = _NO_PAYLOAD,
    data: bytes | str | None = None,
) -> Response:
    """One HTTP request; the body parsed as JSON (it always must be) and checked for leaks."""
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if json_body is not _NO_PAYLOAD:
        kwargs["json"] = json_body
    elif data is not None:
        kwargs["data"] = data
    async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=TIMEOUT), **kwargs) as response:
        text = await response.text()
        assert response.content_type == "application/json", (response.status, response.content_type, text[:300])
        assert_clean(text)
        return Response(response.status, json.loads(text), text)


async def until(check: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.02) -> Any:
    """Call (and await) ``check`` until it returns something truthy; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def live_devices(session: aiohttp.ClientSession, server: Any) -> dict[str, dict[str, Any]]:
    """``GET /api/realtime/devices`` as imei → device (admin token)."""
    response = await rest(session, "GET", server.url + "/api/realtime/devices", headers=server.admin_headers)
    assert response.status == 200 and response.body["success"] is True, response.body
    return {device["imei"]: device for device in response.body["data"]}


async def connections(session: aiohttp.ClientSession, server: Any) -> dict[str, Any]:
    """``GET /api/realtime/connections``'s ``data`` (admin token)."""
    response = await rest(session, "GET", server.url + "/api/realtime/connections", headers=server.admin_headers)
    assert response.status == 200 and response.body["success"] is True, response.body
    return response.body["data"]
