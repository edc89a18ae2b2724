"""What a server facing the internet must hold against careless and hostile clients — one test or
more for each defect the outside probe found (issue "Hardening"), against real server processes."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys

import aiohttp
import pytest

from ..support.clients import TIMEOUT, assert_failure, connect, rest, until
from ..support.raw import StalledWebSocket, closed_by_server, engine_socket, next_event, polling_session, raw_http, rss_bytes
from ..support.server import RunningServer
from ..support.sqlite import locked

MIB = 1024 * 1024


def tracebacks(server: RunningServer) -> int:
    return server.log().count("Traceback")


async def connection_count(http: aiohttp.ClientSession, server: RunningServer) -> int:
    response = await rest(http, "GET", server.url + "/api/realtime/status")
    return int(response.body["data"]["connections"])


# --------------------------------------------------------------------------- 1. binary attachments


async def test_an_event_announcing_attachments_is_refused_before_any_is_held(server, http):
    """The announcement is answered at once; 64 attachments of 1 MiB are dropped as they come, never held."""
    ws = await engine_socket(http, server.url)
    before = rss_bytes(server.pid)
    await ws.send_str('4564-1["telemetry_data",{"_placeholder":true,"num":0}]')
    ack = await next_event(ws)
    assert ack[0]["success"] is False and ack[0]["message"] == "binary payloads are not accepted"
    for _ in range(64):
        await ws.send_bytes(b"\x00" * MIB)
    await ws.send_str('42["heartbeat",{"imei":"123456789012345"}]')  # still connected, still answered
    assert (await next_event(ws))[1]["code"] == "DEVICE_NOT_REGISTERED"
    assert rss_bytes(server.pid) - before < 24 * MIB  # 64 MiB went in
    await ws.close()


async def test_a_binary_frame_nobody_announced_closes_the_socket(server, http):
    ws = await engine_socket(http, server.url)
    await ws.send_bytes(b"\x00\x01\x02")
    assert await closed_by_server(ws)


# --------------------------------------------------------------------------- 2. a reader that stops reading


@pytest.fixture
def tight(server_factory) -> RunningServer:
    return server_factory(IOTHUB_MAX_QUEUED_BYTES=str(64 * 1024))


async def flood(server: RunningServer, owner: str, imei: str, messages: int, size: int) -> None:
    """A device sends ``messages`` telemetry updates of about ``size`` bytes each, as fast as it can."""
    async with connect(server.url) as device:
        await device.register(imei, owner)
        data = {"blob": "x" * size}
        for batch in range(0, messages, 100):
            await asyncio.gather(*(device.emit("telemetry_data", {"imei": imei, "data": data}) for _ in range(batch, batch + 100)))
        await device.call("heartbeat", {"imei": imei})


async def test_a_websocket_dashboard_that_stops_reading_is_cut_off(tight, http, imei, email):
    owner = email()
    stalled = await StalledWebSocket.open("127.0.0.1", tight.port)
    stalled.send("40")
    stalled.send("42" + json.dumps(["subscribe_user", {"email": owner}]))
    await stalled.read_some()
    await until(lambda: connection_count(http, tight), timeout=TIMEOUT)
    await flood(tight, owner, imei(), messages=6000, size=8 * 1024)  # 48 MiB towards a socket that reads nothing
    await until(lambda: "cut off as too slow" in tight.log())
    assert await connection_count(http, tight) == 0
    stalled.close()


async def test_a_polling_dashboard_that_stops_polling_is_cut_off(tight, http, imei, email):
    owner = email()
    session = await polling_session(http, tight.url)
    async with http.post(session, data="42" + json.dumps(["subscribe_user", {"email": owner}])) as response:
        assert response.status == 200
    await flood(tight, owner, imei(), messages=6000, size=8 * 1024)  # and the dashboard never polls again
    await until(lambda: "cut off as too slow" in tight.log())
    assert tight.log().count("cut off as too slow") == 1  # counted and logged once, however much more came
    async with http.get(session) as response:  # its session is gone
        assert response.status == 400


# --------------------------------------------------------------------------- 3. an oversized polling POST


async def test_an_oversized_polling_post_is_answered_413_at_once_and_closed(server, http):
    base = server.url + "/socket.io/?EIO=4&transport=polling"
    async with http.get(base) as response:
        sid = json.loads((await response.text())[1:])["sid"]
    head = (
        f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {12 * 1000 * 1000}\r\n\r\n"
    )
    answer, closed = await raw_http("127.0.0.1", server.port, head)
    assert answer.startswith(b"HTTP/1.1 413")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["success"] is False and body["code"] == "PAYLOAD_TOO_LARGE"
    assert closed


# --------------------------------------------------------------------------- 4. malformed frames


@pytest.mark.parametrize(
    "frame",
    ["zzz", "", "9", "4zzz", "42" + "1" * 5000 + '["heartbeat",{}]', "44", "44{}", "43abc"],
    ids=["zzz", "empty", "unknown type", "bad socket.io type", "5000-digit ack id",
         "client CONNECT_ERROR", "client CONNECT_ERROR with data", "ack without id"],
)
async def test_a_malformed_frame_closes_the_socket_with_one_line_and_no_traceback(server, http, frame):
    lines = len(server.log().splitlines())
    ws = await engine_socket(http, server.url)
    await ws.send_str(frame)
    assert await closed_by_server(ws)
    said = server.log().splitlines()[lines:]
    assert len(said) <= 1 and "Traceback" not in "\n".join(said), said
    assert said == [] or "protocol error" in said[0]


async def test_an_empty_socket_io_packet_is_answered_as_what_it_is_not(server, http):
    """``4`` alone is an EVENT with no array: the error says so (it used to say "binary payloads")."""
    ws = await engine_socket(http, server.url)
    await ws.send_str("4")
    error = await next_event(ws)
    assert error[0] == "error" and error[1]["message"] == "an event must be a JSON array starting with its name"
    await ws.close()


async def test_a_flood_of_malformed_frames_cannot_flood_the_log(server, http):
    before = len(server.log())
    for _ in range(200):
        ws = await engine_socket(http, server.url, connect=False)
        await ws.send_str("zzz")
        await closed_by_server(ws)
    assert len(server.log()) - before < 20 * 300  # a few lines a second, not one per frame
    assert tracebacks(server) == 0


# --------------------------------------------------------------------------- 5. a polling client's disconnect


async def test_a_polling_clients_close_answers_its_held_poll_at_once(server, http):
    session = await polling_session(http, server.url)

    async def poll() -> int:
        async with http.get(session) as response:
            await response.read()
            return response.status

    held = asyncio.ensure_future(poll())
    await asyncio.sleep(0.2)  # the poll is held by now
    async with http.post(session, data="1") as response:  # the client's CLOSE
        assert response.status == 200
    assert await asyncio.wait_for(held, TIMEOUT) == 200  # not held until ping interval + ping timeout (45 s)


async def test_the_python_clients_polling_disconnect_goes_through(server):
    async with connect(server.url, transports=["polling"]) as client:
        await client.subscribe("polling@example.com")
    assert not client.sio.connected


# --------------------------------------------------------------------------- 6. a session that never connects


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_session_that_never_sends_connect_is_closed(server_factory, http, transport):
    quick = server_factory(IOTHUB_CONNECT_TIMEOUT_MS="300", IOTHUB_PING_INTERVAL_MS="100", IOTHUB_PING_TIMEOUT_MS="2000")
    if transport == "websocket":
        ws = await engine_socket(http, quick.url, connect=False)  # it answers every ping, and never connects
        assert await closed_by_server(ws)
    else:
        base = quick.url + "/socket.io/?EIO=4&transport=polling"
        async with http.get(base) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        for _ in range(50):  # poll, answering pings, until the server ends the session
            async with http.get(f"{base}&sid={sid}") as response:
                packets = (await response.text()).split("\x1e")
            if response.status == 400 or "1" in packets:
                break
            if "2" in packets:
                async with http.post(f"{base}&sid={sid}", data="3"):
                    pass
        else:
            raise AssertionError("the session was never closed")
    connected = await engine_socket(http, quick.url)  # one that connects in time stays
    assert not await closed_by_server(connected, timeout=1.0)
    await connected.close()


# --------------------------------------------------------------------------- 7. a forged history cursor


@pytest.mark.parametrize("position", ["[99999999999999999999999,1]", "[1,99999999999999999999999]", "[-99999999999999999999,1]"])
async def test_a_cursor_outside_64_bits_is_400_not_503(in_process, http, position):
    server = await in_process()
    cursor = base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")
    for path in (f"/api/telemetry/356938035643809?cursor={cursor}", f"/api/alerts?cursor={cursor}"):
        response = await rest(http, "GET", server.url + path, headers=server.admin_headers)
        assert (response.status, response.body["code"]) == (400, "INVALID_PAYLOAD"), path


# --------------------------------------------------------------------------- 8. production CORS


@pytest.fixture
def production(server_factory) -> RunningServer:
    return server_factory(IOTHUB_ENV="production", IOTHUB_PING_INTERVAL_MS="25000")


async def test_production_refuses_a_foreign_origin_by_default(production, http):
    token = production.token("u@example.com", "user")
    url = production.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused_handshake:
        await http.ws_connect(url, headers={"Origin": "https://evil.example"})
    assert refused_handshake.value.status == 400
    async with http.get(production.url + "/socket.io/?EIO=4&transport=polling", headers={"Origin": "https://evil.example"}) as response:
        assert response.status == 400
    own = await http.ws_connect(url, headers={"Origin": production.url})  # the server's own page may
    await own.close()
    async with connect(production.url, token=token) as device_like:  # and so may clients that send no Origin
        assert device_like.connected


# --------------------------------------------------------------------------- 9. a device token and another person's device


async def test_a_device_token_cannot_give_its_device_to_someone_else(production, open_client, imei, email, http):
    victim, box = email(), imei()
    dashboard = await open_client(production.url, token=production.token(victim, "user"))
    await dashboard.subscribe(victim)
    device = await open_client(production.url, token=production.token("mallory@example.com", "device", box))
    assert_failure(await device.call("register_device", {"imei": box, "userEmail": victim}), "FORBIDDEN")
    assert_failure(await device.call("telemetry_data", {"imei": box, "data": {"crashDetection": 1}}), "DEVICE_NOT_REGISTERED")
    await dashboard.sync()
    assert dashboard.events() == []
    assert (await dashboard.call("subscribe_user", {"email": victim}))["deviceCount"] == 0
    admin = await open_client(production.url, token=production.token("ops@example.com", "admin"))
    assert (await admin.call("register_device", {"imei": imei(), "userEmail": victim}))["success"] is True  # an admin may


# --------------------------------------------------------------------------- 10. a huge Authorization header


async def test_a_100_kb_authorization_header_gets_the_401_envelope(server, http):
    response = await rest(http, "GET", server.url + "/api/realtime/devices", headers={"Authorization": "Bearer " + "x" * 100_000})
    assert (response.status, response.body["code"]) == (401, "UNAUTHORIZED")
    assert "xxxx" not in response.text
    assert tracebacks(server) == 0


# --------------------------------------------------------------------------- 11. an expired token


async def test_a_socket_ends_when_its_token_expires(production, imei):
    box = imei()
    async with connect(production.url, token=production.token("d@example.com", "device", box, ttl=2)) as device:
        await device.register(box)
        await until(lambda: not device.connected, timeout=TIMEOUT)
        assert not device.sio.connected


# --------------------------------------------------------------------------- 12. the loss window under saturation


async def test_reads_are_held_while_the_store_is_behind_and_nothing_is_lost(server_factory, imei, http, tmp_path):
    """A store that cannot keep up (here: locked for a while) makes the server stop reading, not buffer on."""
    import sqlite3

    db = tmp_path / "held.db"
    # python-engineio advertises the ping interval in whole seconds (int(0.2) * 1000 = 0): with 200 ms the client would
    # wait at most the 300 ms ping timeout for a packet, the very period of the held server's pings, and lose the race.
    slow = server_factory(
        IOTHUB_DB_PATH=str(db), IOTHUB_MAX_BACKLOG_AGE_MS="200", IOTHUB_FLUSH_INTERVAL_MS="10",
        IOTHUB_PING_INTERVAL_MS="1000", IOTHUB_PING_TIMEOUT_MS="300",
    )
    box = imei()
    async with connect(slow.url) as device:
        await device.register(box)
        await device.call("telemetry_data", {"imei": box, "timestamp": 1, "data": {}})
        with locked(db):  # the store cannot write now
            for n in range(2, 50):
                await device.emit("telemetry_data", {"imei": box, "timestamp": n, "data": {}})
            await until(lambda: "reading from sockets is held" in slow.log())
            backlog = (await rest(http, "GET", slow.url + "/api/realtime/status")).body["data"]["backlog"]
            await asyncio.sleep(1.5)  # a ping and several ping timeouts: a socket the server does not read is not dropped for it
            assert (await rest(http, "GET", slow.url + "/api/realtime/status")).body["data"]["backlog"] == backlog  # nothing read
        assert (await device.call("heartbeat", {"imei": box}))["success"] is True  # read again, in order
        assert device.connected
    await until(lambda: "reading from sockets again" in slow.log())
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM telemetry").fetchone()[0]
    assert rows == 49


# --------------------------------------------------------------------------- the smaller ones


async def test_a_405_says_method_not_allowed(server, http):
    response = await rest(http, "DELETE", server.url + "/health")
    assert (response.status, response.body["code"]) == (405, "METHOD_NOT_ALLOWED")


async def test_a_nan_literal_is_called_invalid_json(server, imei):
    async with connect(server.url) as client:
        reply = await client.call("telemetry_data", {"imei": imei(), "data": {"speed": float("nan")}})
    assert_failure(reply, "INVALID_PAYLOAD")
    assert reply["message"].startswith("the event is not valid JSON")


async def test_serve_help_states_the_real_defaults_and_flags_follow_the_variables():
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "iothub", "serve", "--help"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out = (await asyncio.wait_for(process.communicate(), TIMEOUT))[0].decode()
    assert "--ping-interval-ms IOTHUB_PING_INTERVAL_MS" in out and "--alert-rules IOTHUB_ALERT_RULES" in out
    assert "--env IOTHUB_ENV" in out and "--max-queued-bytes IOTHUB_MAX_QUEUED_BYTES" in out
    assert re.search(r"FRONTEND_URL\s+\(env FRONTEND_URL; default \* in development", out), out


@pytest.mark.parametrize("duration", ["1", "3"])
async def test_simulate_ends_on_time_with_a_tally(server, duration):
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "iothub", "simulate", "--url", server.url, "--devices", "20", "--rate", "10", "--duration", duration,
          "--owners", "20"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT + float(duration))
    lines = out.decode().splitlines()
    assert process.returncode == 0, err
    assert lines[0].endswith("owners owner0..owner19@fleet.example")
    sent, acknowledged = (int(n) for n in re.findall(r"sent (\d+), acknowledged (\d+)", lines[-1])[0])
    assert sent == acknowledged > 0

