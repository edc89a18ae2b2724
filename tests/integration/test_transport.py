"""The transport under the protocol: pings on a timer, one write per socket per loop turn, upgrades.

A server with a short ping interval is driven by raw Engine.IO over a real
WebSocket (to see every ping and to stay silent on purpose) and by
python-socketio over long-polling and upgrades (to see nothing breaks).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp
import pytest

from iothub.frontend.door import HEAD_TIMEOUT_S

from ..support.clients import TIMEOUT, connect, until
from ..support.raw import masked_frame, raw_http, websocket_head

#: One process, and a cluster of two gateways (tests/conftest.py).
TOPOLOGIES = ("process", "cluster")

PING_INTERVAL_MS = 200
PING_TIMEOUT_MS = 400


@pytest.fixture
def pinging_server(server_factory):
    return server_factory(IOTHUB_PING_INTERVAL_MS=str(PING_INTERVAL_MS), IOTHUB_PING_TIMEOUT_MS=str(PING_TIMEOUT_MS))


async def open_engineio(url: str, session: aiohttp.ClientSession) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    ws = await session.ws_connect(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
    opening = await ws.receive_str()
    assert opening.startswith("0"), opening
    return ws, json.loads(opening[1:])


async def test_pings_keep_coming_while_the_client_answers(pinging_server) -> None:
    async with aiohttp.ClientSession() as session:
        ws, handshake = await open_engineio(pinging_server.url, session)
        assert handshake["pingTimeout"] == PING_TIMEOUT_MS
        await ws.send_str("40")
        pings: list[float] = []
        deadline = time.monotonic() + 10
        while len(pings) < 4 and time.monotonic() < deadline:
            text = await asyncio.wait_for(ws.receive_str(), 5)
            if text == "2":
                pings.append(time.monotonic())
                await ws.send_str("3")
        assert len(pings) == 4
        # Each ping waits for the answer to the one before: never two within an interval.
        assert all(later - earlier >= PING_INTERVAL_MS / 1000 * 0.9 for earlier, later in itertools.pairwise(pings))
        assert not ws.closed
        await ws.close()


async def test_a_client_that_never_answers_a_ping_is_disconnected(pinging_server, http) -> None:
    async with aiohttp.ClientSession() as session:
        ws, _ = await open_engineio(pinging_server.url, session)
        await ws.send_str("40")
        received: list[str] = []
        while True:
            message = await asyncio.wait_for(ws.receive(), 10)
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            received.append(message.data)
        assert "2" in received
        assert ws.closed


@pytest.mark.parametrize("transports", [("polling",), ("polling", "websocket")])
async def test_a_socketio_client_outlives_many_pings_on_any_transport(pinging_server, transports, imei) -> None:
    """Long-polling sockets get their pings from the same timer; an upgrade carries what was queued."""
    async with connect(pinging_server.url, transports=transports) as device:
        device_imei = imei()
        assert (await device.call("register_device", {"imei": device_imei}))["success"] is True
        await asyncio.sleep(PING_INTERVAL_MS / 1000 * 6)
        reply = await device.call("heartbeat", {"imei": device_imei})
        assert reply["success"] is True
        assert device.sio.connected
        assert device.sio.transport() == transports[-1]


async def test_many_events_to_one_socket_arrive_whole_and_in_order(server, imei, email) -> None:
    """Frames queued in one loop turn go out in one write: none lost, torn or reordered."""
    owner = email()
    async with connect(server.url) as dashboard, connect(server.url) as device:
        await dashboard.call("subscribe_user", {"email": owner})
        device_imei = imei()
        await device.call("register_device", {"imei": device_imei, "userEmail": owner})
        for sequence in range(300):
            await device.sio.emit("telemetry_data", {"imei": device_imei, "timestamp": sequence, "data": {"seq": sequence}})
        await until(lambda: len(dashboard.payloads("telemetry_update")) >= 300)
        assert [update["data"]["seq"] for update in dashboard.payloads("telemetry_update")] == list(range(300))


async def test_with_compression_on_replies_arrive_compressed_whole_and_in_order(server_factory, imei) -> None:
    """IOTHUB_WS_COMPRESSION=true: permessage-deflate is agreed, and every frame compressed with the context carried over."""
    compressing = server_factory(IOTHUB_WS_COMPRESSION="true")
    device_imei = imei()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(compressing.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket", compress=15)
        assert ws.compress == 15  # permessage-deflate was negotiated
        assert (await ws.receive_str()).startswith("0")
        await ws.send_str("40")
        assert (await ws.receive_str()).startswith("40")
        await ws.send_str("420" + json.dumps(["register_device", {"imei": device_imei}]))
        assert json.loads((await ws.receive_str())[3:])[0]["success"] is True
        for ack_id in range(1, 201):
            event = ["telemetry_data", {"imei": device_imei, "data": {"seq": ack_id}}]
            await ws.send_str(f"42{ack_id}" + json.dumps(event))
        acks: list[str] = []
        while len(acks) < 200:
            text = await asyncio.wait_for(ws.receive_str(), 10)
            if text == "2":
                await ws.send_str("3")
                continue
            acks.append(text)
        assert acks == [f'43{ack_id}[{{"success":true,"message":"Telemetry processed successfully"}}]' for ack_id in range(1, 201)]
        await ws.close()


# --------------------------------------------------------------------------- the door: a connection's first request


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: its first byte and its payload."""
    first, length = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first, await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


async def test_a_handshake_sent_a_byte_at_a_time_opens_a_session_that_speaks_websocket(server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for byte in websocket_head("127.0.0.1", server.port).encode():
            writer.write(bytes((byte,)))
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        first, opening = await read_frame(reader)
        assert first == 0x81 and opening.startswith(b'0{"sid":')
        writer.write(masked_frame(b"hello?", opcode=0x9))  # a WebSocket ping: the pong carries its payload
        assert await read_frame(reader) == (0x8A, b"hello?")
        writer.write(masked_frame(b"4", final=False) + masked_frame(b"0", opcode=0x0))  # Socket.IO's CONNECT, in two frames
        first, connected = await read_frame(reader)
        assert first == 0x81 and connected.startswith(b'40{"sid":')
        writer.write(masked_frame((1000).to_bytes(2, "big"), opcode=0x8))
        first, closing = await read_frame(reader)
        assert first == 0x88 and closing[:2] == (1000).to_bytes(2, "big")
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # and the server ends the connection
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("headers", "complaint"),
    [
        ({"Sec_WebSocket_Version": "8"}, "version 13"),
        ({"Sec_WebSocket_Key": "not a key"}, "Sec-WebSocket-Key"),
        ({"Connection": "keep-alive"}, "Connection: Upgrade"),
    ],
    ids=["old version", "bad key", "no upgrade in Connection"],
)
async def test_a_malformed_websocket_handshake_is_refused_with_the_envelope_and_opens_nothing(server, headers, complaint) -> None:
    before = server.status()["connections"]
    answer, closed = await raw_http("127.0.0.1", server.port, websocket_head("127.0.0.1", server.port, **headers))
    assert answer.startswith(b"HTTP/1.1 400 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["success"] is False and body["code"] == "INVALID_PAYLOAD" and complaint in body["message"]
    assert closed
    assert server.status()["connections"] == before


async def test_a_client_that_breaks_websocket_framing_gets_a_close_frame_with_the_reason_code(server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(websocket_head("127.0.0.1", server.port).encode())
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        await read_frame(reader)  # Engine.IO's OPEN
        writer.write(masked_frame(b"\xff\xfe"))  # a text frame that is not UTF-8
        first, closing = await read_frame(reader)
        assert first == 0x88 and closing[:2] == (1007).to_bytes(2, "big")
    finally:
        writer.close()


async def test_a_connection_that_never_finishes_its_first_request_is_closed(server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), HEAD_TIMEOUT_S + TIMEOUT) == b""
        assert time.monotonic() - started >= HEAD_TIMEOUT_S * 0.9
    finally:
        writer.close()


async def test_rest_requests_on_a_kept_alive_connection_pass_the_door_untouched(server) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(3):  # one connection: the first request decides nothing for the next
            async with session.get(server.url + "/health") as response:
                assert response.status == 200 and (await response.json())["status"] == "OK"
        ws = await session.ws_connect(server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
        assert (await asyncio.wait_for(ws.receive_str(), TIMEOUT)).startswith("0")
        await ws.close()
