"""Cluster mode across gateways: a device and a dashboard forced onto different gateways.

Each gateway also listens on an address of its own (where the others forward
requests for its sessions); a client connected there is on that gateway. The
shared public port is tested by the modules that run against both topologies.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest

from ..support.clients import TIMEOUT, assert_failure, live_devices, rest
from ..support.raw import polling_session
from ..support.scrape import scrape
from ..support.server import RunningServer, start_server

LOW_BATTERY = {"speed": 40, "batteryVoltage": 9.5}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("cluster"), workers=2)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def on(cluster: RunningServer) -> tuple[str, str]:
    """The two gateways' own addresses."""
    addresses = cluster.gateway_addresses()
    return addresses["gateway-0"], addresses["gateway-1"]


async def watched_across(open_client, here: str, there: str, owner: str, box: str):
    """A dashboard on one gateway subscribed to ``owner``, and ``owner``'s device ``box`` on the other."""
    dashboard = await open_client(here)
    await dashboard.subscribe(owner)
    device = await open_client(there)
    await device.register(box, owner)
    return owner, dashboard, device, box


async def test_telemetry_alerts_and_device_status_cross_to_a_dashboard_on_the_other_gateway(cluster, on, open_client, imei, email) -> None:
    here, there = on
    _owner, dashboard, device, box = await watched_across(open_client, here, there, email(), imei())
    await device.telemetry(box, LOW_BATTERY)
    await device.disconnect()
    statuses = await dashboard.wait_count("device_status", 2)
    assert [status["status"] for status in statuses] == ["online", "offline"]
    assert [event.event for event in dashboard.events()] == ["device_status", "telemetry_update", "vehicle_alert", "device_status"]
    update = dashboard.payloads("telemetry_update")[0]
    assert (update["imei"], update["data"]) == (box, LOW_BATTERY)
    assert dashboard.payloads("vehicle_alert")[0]["alert"]["code"] == "LOW_BATTERY"


async def test_a_dashboard_subscribing_after_the_device_gets_the_last_state_from_the_other_gateway(cluster, on, open_client, imei, email) -> None:
    here, there = on
    owner, box = email(), imei()
    device = await open_client(there)
    await device.register(box, owner)
    sent = await device.telemetry(box, {"speed": 12})
    assert sent["success"] is True
    dashboard = await open_client(here)
    reply = await dashboard.subscribe(owner)
    assert [(state["imei"], state["data"], state["connected"]) for state in reply["telemetries"]] == [(box, {"speed": 12}, True)]
    await device.telemetry(box, {"speed": 13})
    await dashboard.wait_event("telemetry_update")


async def test_the_newest_registration_wins_across_gateways(cluster, on, open_client, http, imei, email) -> None:
    here, there = on
    owner, box = email(), imei()
    dashboard = await open_client(here)
    await dashboard.subscribe(owner)
    first = await open_client(here)
    await first.register(box, owner)
    second = await open_client(there)
    await second.register(box, owner)
    assert (await live_devices(http, cluster))[box]["socketId"] == second.sid
    assert_failure(await first.call("telemetry_data", {"imei": box, "data": {"speed": 1}}), "DEVICE_NOT_REGISTERED")
    await second.telemetry(box, {"speed": 2})
    update = await dashboard.wait_event("telemetry_update")
    assert update["data"] == {"speed": 2}


async def test_broadcast_and_directed_messages_reach_sockets_on_every_gateway(cluster, on, open_client, http, imei, email) -> None:
    here, there = on
    owner, box = email(), imei()
    listeners = [await open_client(here), await open_client(there)]
    device = await open_client(there)
    await device.register(box, owner)
    watcher = await open_client(there)
    await watcher.subscribe(owner)
    admin = cluster.admin_headers
    response = await rest(http, "POST", here + "/api/realtime/broadcast", headers=admin, json_body={"event": "notice", "data": {"n": 1}})
    assert response.status == 200 and response.body["data"]["recipients"] >= 4, response.body
    for client in (*listeners, device, watcher):
        await client.wait_event("notice")
    response = await rest(http, "POST", here + f"/api/realtime/device/{box}", headers=admin, json_body={"event": "command", "data": {"go": 1}})
    assert response.status == 200 and response.body["data"]["recipients"] == 1, response.body
    assert await device.wait_event("command") == {"go": 1}
    response = await rest(http, "POST", here + f"/api/realtime/user/{owner}", headers=admin, json_body={"event": "hello", "data": {}})
    assert response.status == 200 and response.body["data"]["recipients"] == 1, response.body
    await watcher.wait_event("hello")


async def test_every_gateway_answers_for_the_whole_cluster(cluster, on, open_client, http, imei, email) -> None:
    here, there = on
    owner, box = email(), imei()
    device = await open_client(there)
    await device.register(box, owner)
    dashboard = await open_client(here)
    await dashboard.subscribe(owner)
    for address in on:
        listed = (await rest(http, "GET", address + "/api/realtime/devices", headers=cluster.admin_headers)).body["data"]
        assert box in [device["imei"] for device in listed]
        status = (await rest(http, "GET", address + "/api/realtime/status")).body["data"]
        assert [gateway["id"] for gateway in status["gateways"]] == ["gateway-0", "gateway-1"]
        assert all(gateway["alive"] for gateway in status["gateways"])
        assert status["connections"] == sum(gateway["connections"] for gateway in status["gateways"])
        for gateway in status["gateways"]:
            os.kill(gateway["pid"], 0)  # a process of this machine
        users = (await rest(http, "GET", address + "/api/realtime/users", headers=cluster.admin_headers)).body["data"]
        assert owner in users


async def test_what_crosses_is_counted_in_metrics(cluster, on, open_client, http, imei, email) -> None:
    here, there = on
    before = await scrape(http, cluster.url)
    _owner, dashboard, device, box = await watched_across(open_client, here, there, email(), imei())
    for speed in range(5):
        await device.telemetry(box, {"speed": speed})
    await dashboard.wait_count("telemetry_update", 5)
    moved = (await scrape(http, cluster.url)).minus(before)
    relayed = "iothub_cluster_relayed_total"
    assert moved[relayed, (("kind", "packets_out"),)] >= 5
    assert moved[relayed, (("kind", "packets_in"),)] >= 5
    assert moved[relayed, (("kind", "batches_out"),)] >= 1
    assert (relayed, (("kind", "packets_dropped"),)) not in moved


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]])
async def test_polling_clients_on_the_shared_port_all_connect_and_deliver(cluster, open_client, imei, email, transports) -> None:
    """The kernel spreads their requests over both gateways: a poll for the other's session is forwarded."""
    owner = email()
    dashboard = await open_client(cluster.url, transports=transports)
    await dashboard.subscribe(owner)
    devices = []
    for _ in range(10):
        client = await open_client(cluster.url, transports=transports)
        box = imei()
        await client.register(box, owner)
        devices.append((client, box))
    for client, box in devices:
        assert (await client.telemetry(box, {"speed": 1}))["success"] is True
    updates = await dashboard.wait_count("telemetry_update", 10)
    assert sorted(update["imei"] for update in updates) == sorted(box for _, box in devices)


async def test_a_polling_session_is_served_through_the_other_gateway(on, http, email) -> None:
    """Its session id names its gateway; the other one passes its polls and posts there."""
    here, there = on
    session = await polling_session(http, here, connect=False)
    assert session.rsplit("sid=", 1)[1].startswith("0."), "gateway-0's sessions start with its index"
    elsewhere = session.replace(here, there)
    async with http.post(elsewhere, data="40") as response:
        assert response.status == 200, await response.text()
    async with http.get(elsewhere) as response:
        assert (await response.text()).startswith("40")
    owner = email()
    async with http.post(elsewhere, data=f'42["subscribe_user",{{"email":"{owner}"}}]') as response:
        assert response.status == 200
    async with http.get(session) as response:  # and back on its own gateway
        reply = await response.text()
    assert reply.startswith("42") and json.loads(reply[2:])[1]["email"] == owner


async def test_a_polling_session_upgrades_through_the_other_gateway(on, http) -> None:
    """The official client's start: polling, then a WebSocket upgrade that may land on any gateway."""
    here, there = on
    session = await polling_session(http, here)
    upgrade = session.replace(here, there).replace("http", "ws", 1).replace("transport=polling", "transport=websocket")
    async with http.ws_connect(upgrade) as ws:
        await ws.send_str("2probe")
        assert await asyncio.wait_for(ws.receive_str(), TIMEOUT) == "3probe"
        await ws.send_str("5")
        await ws.send_str('42["subscribe_user",{"email":"upgraded@example.com"}]')
        while (text := await asyncio.wait_for(ws.receive_str(), TIMEOUT)) in ("2", "6"):  # a ping, a noop
            if text == "2":
                await ws.send_str("3")
        assert text.startswith("42") and json.loads(text[2:])[0] == "user_subscribed"


async def test_a_session_of_no_live_gateway_is_unknown(on, http) -> None:
    here, _ = on
    async with http.get(here + "/socket.io/?EIO=4&transport=polling&sid=7.nosuchsession") as response:
        assert response.status == 400


@pytest.mark.parametrize("secret", [None, "guessed"])
@pytest.mark.parametrize("path", ["/cluster/relay", "/cluster/watch"])
async def test_no_client_can_relay_into_a_gateway(cluster, on, http, secret, path) -> None:
    """The gateways' relay and watch WebSockets answer only the cluster's own secret, on the public port as on each
    private one."""
    headers = {} if secret is None else {"X-IoTHub-Cluster-Secret": secret}
    for address in (cluster.url, *on):
        response = await rest(http, "GET", address + path, headers=headers)
        assert response.status == 404 and response.body["code"] == "NOT_FOUND", response.body
