"""``GET /metrics`` after real traffic: every figure moved by exactly what the clients sent and received.

Each test has a server of its own, scraped with prometheus-client's parser
before and after, so that a difference is this test's traffic and nothing
else's. Bytes are checked with a Socket.IO client written by hand on a raw
WebSocket (and on raw long-polling requests), whose every frame the test
sees.
"""

from __future__ import annotations

import json
from collections import Counter

import aiohttp
import pytest

from iothub.frontend.transport import masked_frame_size

from ..support.clients import assert_failure, refused, rest, until
from ..support.scrape import Key, Scrape, scrape

NORMAL = {"speed": 50, "engineRpm": 2000, "batteryVoltage": 12.6, "position": {"latitude": 1.5, "longitude": 2.5}}
LOW_BATTERY = {"batteryVoltage": 11.2}
HIGH_RPM_AND_DTC = {"engineRpm": 5000, "dtc": 3}
CRASH = {"crashDetection": 1, "speed": 0}


def key(name: str, **labels: str) -> Key:
    return name, tuple(sorted(labels.items()))


def frame_size(text: str) -> int:
    """A server frame's bytes: unmasked."""
    size = len(text.encode())
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


async def test_a_scrape_moves_by_exactly_the_traffic(server_factory, open_client, http, imei, email):
    server = server_factory(IOTHUB_RATE_LIMIT="0.01", IOTHUB_RATE_BURST="30", MAX_PAYLOAD_BYTES="2048")
    before = await scrape(http, server.url)
    owner, box = email(), imei()

    dashboard = await open_client(server.url)
    await dashboard.subscribe(owner)
    device = await open_client(server.url)
    await device.register(box, owner)
    for data in (NORMAL, NORMAL, LOW_BATTERY, HIGH_RPM_AND_DTC, CRASH):
        await device.telemetry(box, data)
    assert (await device.call("heartbeat", {"imei": box}))["success"] is True
    assert_failure(await device.call("telemetry_data", {"imei": "12345", "data": {}}), "INVALID_IMEI")
    assert_failure(await device.call("telemetry_data", {"imei": imei(), "data": {}}), "DEVICE_NOT_REGISTERED")
    assert_failure(await device.call("telemetry_data", {"imei": box, "data": {"note": "x" * 3000}}), "PAYLOAD_TOO_LARGE")
    assert (await device.request("no_such_event", {})).event == "error"  # no acknowledgement: the reply is an `error` event
    assert (await device.request("telemetry_data", {"imei": box, "data": NORMAL})).event == "telemetry_processed"

    flooder = await open_client(server.url)
    limited = 0
    for _ in range(32):
        reply = await flooder.call("unsubscribe_user", {"email": owner})
        limited += reply.get("code") == "RATE_LIMITED"
    assert limited == 2  # a burst of 30, then one event every 100 s

    assert await refused(server.url, auth={"token": "not-a-token"})
    response = await rest(http, "GET", server.url + "/api/realtime/devices", headers={"Authorization": "Bearer nope"})
    assert response.status == 401
    broadcast = await rest(
        http, "POST", server.url + "/api/realtime/broadcast", headers=server.admin_headers, json_body={"event": "maintenance", "data": {}}
    )
    assert broadcast.body["data"] == {"event": "maintenance", "recipients": 3}
    await dashboard.wait_event("maintenance")
    await device.disconnect()
    await dashboard.wait_event("device_status", lambda status: status["status"] == "offline")
    await dashboard.sync()
    after = await scrape(http, server.url)

    received = Counter(item.event for item in dashboard.received)
    # every call above was acknowledged, the refused ones too
    device_calls = 1 + 5 + 1 + 3  # register, telemetry ×5, heartbeat, three refused telemetry
    dashboard_calls = 1 + 1  # subscribe, the sync barrier
    expected = Counter(
        {
            key("iothub_connects_total"): 3,
            key("iothub_auth_failures_total", interface="socket"): 1,
            key("iothub_auth_failures_total", interface="rest"): 1,
            key("iothub_events_received_total", event="subscribe_user"): 1,
            key("iothub_events_received_total", event="register_device"): 1,
            key("iothub_events_received_total", event="telemetry_data"): 5 + 3 + 1,
            key("iothub_events_received_total", event="heartbeat"): 1,
            key("iothub_events_received_total", event="other"): 1,
            key("iothub_events_received_total", event="unsubscribe_user"): 32 + 1,  # the flood, the sync barrier
            key("iothub_packets_sent_total", event="ack"): device_calls + dashboard_calls + 32,
            key("iothub_packets_sent_total", event="error"): 1,
            key("iothub_packets_sent_total", event="telemetry_processed"): 1,
            key("iothub_packets_sent_total", event="telemetry_update"): received["telemetry_update"],
            key("iothub_packets_sent_total", event="vehicle_alert"): received["vehicle_alert"],
            key("iothub_packets_sent_total", event="crash_detected"): received["crash_detected"],
            key("iothub_packets_sent_total", event="device_status"): received["device_status"],
            key("iothub_packets_sent_total", event="other"): 3,
            key("iothub_refusals_total", reason="invalid"): 2,
            key("iothub_refusals_total", reason="not_registered"): 1,
            key("iothub_refusals_total", reason="too_large"): 1,
            key("iothub_refusals_total", reason="rate_limited"): 2,
            key("iothub_alerts_total", code="LOW_BATTERY", level="warning"): 1,
            key("iothub_alerts_total", code="HIGH_RPM", level="warning"): 1,
            key("iothub_alerts_total", code="DTC_DETECTED", level="warning"): 1,
            key("iothub_alerts_total", code="CRASH_DETECTED", level="critical"): 1,
            key("iothub_telemetry_fanout_seconds_count"): 6,
            key("iothub_connected_sockets", role="dashboard"): 1,
            key("iothub_connected_sockets", role="other"): 1,
        }
    )
    assert (received["telemetry_update"], received["vehicle_alert"], received["crash_detected"], received["device_status"]) == (6, 3, 1, 2)
    moved = {k: v for k, v in after.minus(before).items() if k[0].startswith("iothub_") and not _moves_by_itself(k[0])}
    # python-socketio's client closes its WebSocket before its DISCONNECT packet leaves: either reason may be counted
    assert sum(moved.pop(k) for k in list(moved) if k[0] == "iothub_disconnects_total") == 1
    assert moved == dict(expected)
    assert after.value("iothub_telemetry_fanout_seconds_sum") > 0
    assert after.value("iothub_devices_online") == 0


def _moves_by_itself(name: str) -> bool:
    """Figures whose value the test does not set exactly: bytes (their own test), the fan-out's buckets and
    time, the store's, which follow the write-behind's timing, and the event loop's lag (the loop's own timing)."""
    moving = ("iothub_received_bytes", "iothub_sent_bytes", "iothub_store_", "iothub_writebehind_", "iothub_event_loop_")
    return name.startswith(moving) or name in {
        "iothub_telemetry_fanout_seconds_bucket",
        "iothub_telemetry_fanout_seconds_sum",
    }


async def _raw_socket(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientWebSocketResponse, list[str], list[str]]:
    """A Socket.IO connection over a bare WebSocket: the texts sent and received so far come back with it."""
    ws = await http.ws_connect(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket")
    sent: list[str] = []
    received = [(await ws.receive_str(timeout=5))]  # Engine.IO's open packet
    assert received[0].startswith("0{")
    sent.append("40")
    await ws.send_str("40")
    received.append(await ws.receive_str(timeout=5))
    assert received[-1].startswith("40{")
    return ws, sent, received


async def _exchange(ws: aiohttp.ClientWebSocketResponse, sent: list[str], received: list[str], text: str) -> str:
    sent.append(text)
    await ws.send_str(text)
    received.append(await ws.receive_str(timeout=5))
    return received[-1]


async def test_bytes_are_the_frames_that_crossed_the_wire(server_factory, http, imei, email):
    server = server_factory()
    before = await scrape(http, server.url)
    box, owner = imei(), email()
    dashboard, dashboard_sent, dashboard_received = await _raw_socket(http, server.url)
    reply = await _exchange(dashboard, dashboard_sent, dashboard_received, '421["subscribe_user",{"email":"%s"}]' % owner)
    assert reply.startswith("431[") and '"success":true' in reply
    device, device_sent, device_received = await _raw_socket(http, server.url)
    registration = '421["register_device",{"imei":"%s","userEmail":"%s"}]' % (box, owner)
    assert '"success":true' in await _exchange(device, device_sent, device_received, registration)
    dashboard_received.append(await dashboard.receive_str(timeout=5))  # device_status online
    reading = json.dumps({"imei": box, "data": {"speed": 7, "label": "Ünïcødé ✓", "batteryVoltage": 11.0}}, ensure_ascii=False)
    assert '"success":true' in await _exchange(device, device_sent, device_received, f'422["telemetry_data",{reading}]')
    dashboard_received.append(await dashboard.receive_str(timeout=5))  # telemetry_update
    dashboard_received.append(await dashboard.receive_str(timeout=5))  # vehicle_alert
    assert [json.loads(text[2:])[0] for text in dashboard_received[3:]] == ["device_status", "telemetry_update", "vehicle_alert"]
    await device.close()  # a transport closed without Socket.IO's disconnect
    dashboard_received.append(await dashboard.receive_str(timeout=5))  # device_status offline
    dashboard_sent.append("41")  # Socket.IO's disconnect, then the transport closes
    await dashboard.send_str("41")

    async def settled() -> Scrape | None:
        now = await scrape(http, server.url)
        return now if now.value("iothub_disconnects_total", reason="client_disconnect") == 1 else None

    after = await until(settled)
    await dashboard.close()
    assert after.value("iothub_disconnects_total", reason="transport_close") == 1
    sent = dashboard_sent + device_sent
    received = dashboard_received + device_received
    assert after.value("iothub_received_bytes_total") - before.value("iothub_received_bytes_total") == sum(
        masked_frame_size(len(text.encode())) for text in sent
    )
    assert after.value("iothub_sent_bytes_total") - before.value("iothub_sent_bytes_total") == sum(frame_size(text) for text in received)


async def test_long_polling_bodies_are_counted(server_factory, http):
    server = server_factory()
    before = await scrape(http, server.url)
    endpoint = server.url + "/socket.io/?EIO=4&transport=polling"
    bodies_in, bodies_out = 0, 0
    async with http.get(endpoint) as response:
        opened = await response.read()
        bodies_out += len(opened)
    sid = json.loads(opened[1:])["sid"]
    session = f"{endpoint}&sid={sid}"
    async with http.post(session, data=b"40") as response:
        bodies_in += 2
        bodies_out += len(await response.read())
    async with http.get(session) as response:
        connected = await response.read()
        assert connected.startswith(b"40{")
        bodies_out += len(connected)
    async with http.post(session, data=b"1") as response:  # Engine.IO close
        bodies_in += 1
        bodies_out += len(await response.read())
    after = await scrape(http, server.url)
    assert after.value("iothub_received_bytes_total") - before.value("iothub_received_bytes_total") == bodies_in
    assert after.value("iothub_sent_bytes_total") - before.value("iothub_sent_bytes_total") == bodies_out
    assert after.value("iothub_connects_total") - before.value("iothub_connects_total") == 1


async def test_store_figures_follow_the_write_behind(server_factory, open_client, http, imei, email):
    server = server_factory()
    owner, box = email(), imei()
    device = await open_client(server.url)
    await device.register(box, owner)
    for _ in range(3):
        await device.telemetry(box, NORMAL)

    async def written() -> Scrape | None:
        now = await scrape(http, server.url)
        return now if now.value("iothub_writebehind_backlog_rows") == 0 else None

    after = await until(written)
    assert after.value("iothub_store_commit_seconds_count") >= 1
    assert after.value("iothub_store_commit_seconds_bucket", le="+Inf") == after.value("iothub_store_commit_seconds_count")
    assert after.by("iothub_store_errors_total", "operation") == {"write": 0, "read": 0}


async def test_every_family_has_its_type(in_process, http):
    served = await in_process()
    scraped = await scrape(http, served.url)
    assert {name: kind for name, kind in scraped.types.items() if name.startswith("iothub_")} == {
        "iothub_connected_sockets": "gauge",
        "iothub_devices_online": "gauge",
        "iothub_connects": "counter",
        "iothub_disconnects": "counter",
        "iothub_auth_failures": "counter",
        "iothub_events_received": "counter",
        "iothub_packets_sent": "counter",
        "iothub_received_bytes": "counter",
        "iothub_sent_bytes": "counter",
        "iothub_refusals": "counter",
        "iothub_cluster_relayed": "counter",
        "iothub_alerts": "counter",
        "iothub_telemetry_fanout_seconds": "histogram",
        "iothub_event_loop_lag_seconds": "histogram",
        "iothub_event_loop_lag_max_seconds": "gauge",
        "iothub_event_loop_busy_lag_seconds": "histogram",
        "iothub_event_loop_busy_lag_max_seconds": "gauge",
        "iothub_writebehind_backlog_rows": "gauge",
        "iothub_store_commit_seconds": "histogram",
        "iothub_store_errors": "counter",
    }
    assert scraped.by("iothub_refusals_total", "reason").keys() == {
        "invalid", "too_large", "rate_limited", "store_unavailable", "too_slow", "unauthorized", "forbidden", "not_registered", "internal",
        "protocol_error", "connection_limit", "banned", "connect_timeout",
    }  # fmt: skip
    assert scraped.by("iothub_cluster_relayed_total", "kind") == dict.fromkeys(("packets_out", "batches_out", "packets_in", "packets_dropped"), 0)
    assert scraped.value("process_cpu_seconds_total") > 0


async def test_the_process_figures_are_read_afresh_at_every_scrape(server_factory, http):
    """The process's own figures (read in a worker thread, off the event loop) follow what it holds now."""
    server = server_factory()
    before = await scrape(http, server.url)
    endpoint = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    sockets = [await http.ws_connect(endpoint) for _ in range(20)]
    during = await scrape(http, server.url)
    assert during.value("process_open_fds") >= before.value("process_open_fds") + 20
    for socket in sockets:
        await socket.close()

    async def released() -> bool:
        return (await scrape(http, server.url)).value("process_open_fds") < during.value("process_open_fds") - 10

    assert await until(released)
    assert during.value("process_max_fds") > 0 and during.value("process_resident_memory_bytes") > 0
    assert during.value("process_cpu_seconds_total") >= before.value("process_cpu_seconds_total")


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "metrics-secret", "bearer metrics-secret"])
async def test_a_metrics_token_keeps_others_out(in_process, http, authorization):
    served = await in_process(IOTHUB_METRICS_TOKEN="metrics-secret")
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await rest(http, "GET", served.url + "/metrics", headers=headers)
    assert response.status == 401 and response.body["code"] == "UNAUTHORIZED"
    scraped = await scrape(http, served.url, Authorization="Bearer metrics-secret")
    assert scraped.value("iothub_auth_failures_total", interface="rest") == 1


async def test_the_event_loop_lag_is_sampled_while_the_server_runs(in_process, http):
    served = await in_process()

    async def sampled() -> Scrape | None:
        now = await scrape(http, served.url)
        return now if now.value("iothub_event_loop_lag_seconds_count") >= 3 else None

    after = await until(sampled)
    assert after.value("iothub_event_loop_lag_seconds_bucket", le="+Inf") == after.value("iothub_event_loop_lag_seconds_count")
    assert after.value("iothub_event_loop_busy_lag_seconds_count") == after.value("iothub_event_loop_lag_seconds_count")
    assert 0 <= after.value("iothub_event_loop_busy_lag_max_seconds") <= after.value("iothub_event_loop_lag_max_seconds")
