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

from ..support.clients import connect, until

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
    """IOTHUB_WS_COMPRESSION=true: aiohttp compresses each frame as it sends, one send after another."""
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
