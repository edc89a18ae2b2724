"""Every REST endpoint: envelope, status codes, authentication, delivery to sockets.

Tests that need only HTTP run against the application served in the test's
own process (``in_process``); those that need sockets too, against a real
``iothub serve``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import jwt
import pytest

from ..support.clients import rest, until
from ..support.server import TEST_SECRET

#: One process, and a cluster of two gateways (tests/conftest.py).
TOPOLOGIES = ("process", "cluster")

MANAGEMENT_GETS = ["/api/realtime/connections", "/api/realtime/devices", "/api/realtime/users"]
MANAGEMENT_POSTS = ["/api/realtime/broadcast", "/api/realtime/device/123456789012345", "/api/realtime/user/a@example.com"]
MANAGEMENT = [("GET", path) for path in MANAGEMENT_GETS] + [("POST", path) for path in MANAGEMENT_POSTS]
MESSAGE = {"event": "system_notification", "data": {"message": "System maintenance"}}


def assert_envelope_failure(response, status: int, code: str) -> None:
    assert response.status == status, (response.status, response.text)
    assert set(response.body) == {"success", "message", "code"}, response.body
    assert response.body["success"] is False and response.body["code"] == code, response.body
    assert isinstance(response.body["message"], str) and response.body["message"], response.body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


@pytest.fixture
def quiet(server_factory):
    """A server of the test's own, so that counts are exact."""
    return server_factory()


# --------------------------------------------------------------------------- public endpoints


async def test_health(quiet, open_client, http, imei, email):
    response = await rest(http, "GET", quiet.url + "/health")
    assert response.status == 200
    body = response.body
    assert set(body) == {"status", "timestamp", "uptime", "connectedDevices", "connectedUsers"}
    assert body["status"] == "OK"
    assert body["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(body["timestamp"])
    assert stamp.tzinfo is not None and abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert isinstance(body["uptime"], int | float) and body["uptime"] >= 0
    assert (body["connectedDevices"], body["connectedUsers"]) == (0, 0)

    device = await open_client(quiet.url)
    await device.register(imei())
    await device.register(imei())
    dashboard = await open_client(quiet.url)
    owner = email()
    await dashboard.subscribe(owner)
    await dashboard.subscribe(email())
    body = (await rest(http, "GET", quiet.url + "/health")).body
    assert (body["connectedDevices"], body["connectedUsers"]) == (2, 2)
    assert body["uptime"] >= response.body["uptime"]

    await device.disconnect()
    await dashboard.disconnect()

    async def counts():
        health = (await rest(http, "GET", quiet.url + "/health")).body
        return (health["connectedDevices"], health["connectedUsers"]) == (0, 0)

    await until(counts)


async def test_status_is_public_and_says_the_evaluator(quiet, open_client, http, imei, email):
    device = await open_client(quiet.url)
    box, owner = imei(), email()
    await device.register(box, owner)
    await device.telemetry(box, {"batteryVoltage": 10})
    dashboard = await open_client(quiet.url)
    await dashboard.subscribe(owner)
    response = await rest(http, "GET", quiet.url + "/api/realtime/status")
    assert response.status == 200
    assert response.body["success"] is True and isinstance(response.body["message"], str)
    data = response.body["data"]
    assert data["evaluator"] == "compiled"
    assert (data["connections"], data["devices"], data["users"]) == (2, 1, 1)
    assert data["messages"]["telemetry"]["total"] == 1 and data["messages"]["alerts"]["total"] == 1
    assert box not in response.text and owner not in response.text and device.sid not in response.text


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(("method", "path"), MANAGEMENT)
async def test_management_needs_an_admin_token(in_process, http, method, path):
    server = await in_process()
    url = server.url + path
    body = {"json_body": MESSAGE} if method == "POST" else {}
    expired = server.token("admin@example.com", "admin", ttl=-60)
    other_secret = jwt.encode({"email": "a@example.com", "role": "admin", "exp": int(time.time()) + 60}, "x" * 40)
    no_exp = jwt.encode({"email": "a@example.com", "role": "admin"}, TEST_SECRET)
    no_role = jwt.encode({"email": "a@example.com", "exp": int(time.time()) + 60}, TEST_SECRET)
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Basic " + server.token("admin@example.com", "admin")},
        bearer(expired),
        bearer(other_secret),
        bearer(no_exp),
        bearer(no_role),
    ):
        assert_envelope_failure(await rest(http, method, url, headers=headers, **body), 401, "UNAUTHORIZED")
    for token in (server.token("user@example.com", "user"), server.token("d@example.com", "device", "123456789012345")):
        assert_envelope_failure(await rest(http, method, url, headers=bearer(token), **body), 403, "FORBIDDEN")


@pytest.mark.parametrize("path", MANAGEMENT_GETS)
async def test_management_gets_with_an_admin_token(in_process, http, path):
    server = await in_process()
    response = await rest(http, "GET", server.url + path, headers=server.admin_headers)
    assert response.status == 200
    assert set(response.body) == {"success", "message", "data"} and response.body["success"] is True


async def test_listings(quiet, open_client, http, imei, email):
    owner = email()
    device = await open_client(quiet.url)
    boxes = sorted([imei(), imei()])
    await device.register(boxes[0], owner.upper())
    await device.register(boxes[1])
    dashboard = await open_client(quiet.url)
    await dashboard.subscribe(owner)
    await open_client(quiet.url)  # a socket with neither devices nor subscriptions still counts

    connections = (await rest(http, "GET", quiet.url + "/api/realtime/connections", headers=quiet.admin_headers)).body
    assert connections["message"] == "Connection status retrieved successfully"
    data = connections["data"]
    assert set(data) == {"devices", "users", "totalConnections", "timestamp"}
    assert data["users"] == [owner] and data["totalConnections"] == 3
    assert isinstance(data["timestamp"], int)
    devices = sorted(data["devices"], key=lambda d: d["imei"])
    for listed, box, user in zip(devices, boxes, (owner, None), strict=True):
        assert set(listed) == {"imei", "socketId", "connectedAt", "lastHeartbeat", "userEmail"}
        assert (listed["imei"], listed["socketId"], listed["userEmail"]) == (box, device.sid, user)
        assert isinstance(listed["connectedAt"], int) and listed["connectedAt"] <= listed["lastHeartbeat"] <= data["timestamp"]

    response = await rest(http, "GET", quiet.url + "/api/realtime/devices", headers=quiet.admin_headers)
    assert sorted(response.body["data"], key=lambda d: d["imei"]) == devices
    response = await rest(http, "GET", quiet.url + "/api/realtime/users", headers=quiet.admin_headers)
    assert response.body["data"] == [owner]


# --------------------------------------------------------------------------- delivery


async def test_broadcast_reaches_every_socket(quiet, open_client, http, imei, email):
    device = await open_client(quiet.url)
    await device.register(imei())
    dashboard = await open_client(quiet.url)
    await dashboard.subscribe(email())
    idle = await open_client(quiet.url)
    sockets = [device, dashboard, idle]

    response = await rest(http, "POST", quiet.url + "/api/realtime/broadcast", headers=quiet.admin_headers,
                          json_body=MESSAGE)
    assert response.status == 200
    assert response.body == {"success": True, "message": response.body["message"],
                             "data": {"event": "system_notification", "recipients": 3}}
    for client in sockets:
        assert await client.wait_event("system_notification") == MESSAGE["data"]

    # without data the event carries no argument
    response = await rest(http, "POST", quiet.url + "/api/realtime/broadcast", headers=quiet.admin_headers,
                          json_body={"event": "ping_all"})
    assert response.body["data"] == {"event": "ping_all", "recipients": 3}
    for client in sockets:
        item = await client.wait_for(lambda item: item.event == "ping_all")
        assert item.args == ()

    await idle.disconnect()
    await until(lambda: broadcast_count(http, quiet, 2))


async def broadcast_count(http, server, expected):
    response = await rest(http, "POST", server.url + "/api/realtime/broadcast", headers=server.admin_headers,
                          json_body={"event": "count"})
    return response.body["data"]["recipients"] == expected


async def test_message_to_a_device(server, open_client, http, imei):
    gateway = await open_client(server.url)
    boxes = [imei(), imei()]
    for box in boxes:
        await gateway.register(box)
    bystander = await open_client(server.url)
    await bystander.register(imei())
    response = await rest(http, "POST", f"{server.url}/api/realtime/device/{boxes[1]}", headers=server.admin_headers,
                          json_body={"event": "device_command", "data": {"command": "restart", "imei": boxes[1]}})
    assert response.status == 200 and response.body["success"] is True
    assert response.body["data"] == {"event": "device_command", "recipients": 1}
    assert await gateway.wait_event("device_command") == {"command": "restart", "imei": boxes[1]}
    await gateway.sync()
    assert len(gateway.events("device_command")) == 1
    await bystander.sync()
    assert bystander.events() == []


async def test_message_to_a_device_that_is_not_connected(server, open_client, http, imei):
    headers = server.admin_headers
    response = await rest(http, "POST", f"{server.url}/api/realtime/device/{imei()}", headers=headers, json_body=MESSAGE)
    assert_envelope_failure(response, 404, "NOT_FOUND")
    # nor after it left
    device = await open_client(server.url)
    box = imei()
    await device.register(box)
    await device.disconnect()

    async def gone():
        response = await rest(http, "POST", f"{server.url}/api/realtime/device/{box}", headers=headers, json_body=MESSAGE)
        return response.status == 404 and response

    assert_envelope_failure(await until(gone), 404, "NOT_FOUND")


@pytest.mark.parametrize("bad", ["123", "12345678901234x", "1234567890123456", "%20123456789012345"])
async def test_message_to_a_bad_imei(in_process, http, bad):
    server = await in_process()
    response = await rest(http, "POST", f"{server.url}/api/realtime/device/{bad}", headers=server.admin_headers,
                          json_body=MESSAGE)
    assert_envelope_failure(response, 400, "INVALID_IMEI")


async def test_message_to_a_user(server, open_client, http, imei, email):
    owner = email()
    dashboards = [await open_client(server.url), await open_client(server.url)]
    for dashboard in dashboards:
        await dashboard.subscribe(owner)
    other = await open_client(server.url)
    await other.subscribe(email())
    response = await rest(http, "POST", f"{server.url}/api/realtime/user/{owner.upper()}",
                          headers=server.admin_headers,
                          json_body={"event": "user_notification", "data": {"message": "Your device is offline"}})
    assert response.status == 200 and response.body["success"] is True
    assert response.body["data"] == {"event": "user_notification", "recipients": 2}
    for dashboard in dashboards:
        assert await dashboard.wait_event("user_notification") == {"message": "Your device is offline"}
    await other.sync()
    assert other.events() == []

    await dashboards[0].call("unsubscribe_user", {"email": owner})
    response = await rest(http, "POST", f"{server.url}/api/realtime/user/{owner}", headers=server.admin_headers,
                          json_body=MESSAGE)
    assert response.body["data"] == {"event": "system_notification", "recipients": 1}


async def test_message_to_a_user_nobody_watches(in_process, http, email):
    server = await in_process()
    response = await rest(http, "POST", f"{server.url}/api/realtime/user/{email()}", headers=server.admin_headers,
                          json_body=MESSAGE)
    assert_envelope_failure(response, 404, "NOT_FOUND")


@pytest.mark.parametrize("bad", ["nobody", "a@b", "a b@example.com"])
async def test_message_to_a_bad_email(in_process, http, bad):
    server = await in_process()
    response = await rest(http, "POST", f"{server.url}/api/realtime/user/{bad}", headers=server.admin_headers,
                          json_body=MESSAGE)
    assert_envelope_failure(response, 400, "INVALID_EMAIL")


# --------------------------------------------------------------------------- bad requests

BAD_BODIES = [
    pytest.param({"data": b"not json"}, id="not-json"),
    pytest.param({"data": b""}, id="empty"),
    pytest.param({"json_body": ["system_notification", {}]}, id="array"),
    pytest.param({"json_body": "system_notification"}, id="string"),
    pytest.param({"json_body": None}, id="null"),
    pytest.param({"json_body": {"data": {}}}, id="missing-event"),
    pytest.param({"json_body": {"event": ""}}, id="empty-event"),
    pytest.param({"json_body": {"event": 5}}, id="number-event"),
    pytest.param({"json_body": {"event": "x" * 65}}, id="event-over-64"),
    pytest.param({"data": b'{"event": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}"}, id="deep-data"),
    *[pytest.param({"json_body": {"event": name, "data": {}}}, id=f"reserved-{name}")
      for name in ("connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener")],
]


@pytest.mark.parametrize("path", MANAGEMENT_POSTS)
@pytest.mark.parametrize("body", BAD_BODIES)
async def test_bad_body(server, open_client, http, email, path, body):
    await (await open_client(server.url)).subscribe("a@example.com")  # so that user/... has a target
    device = await open_client(server.url)
    await device.register("123456789012345")
    response = await rest(http, "POST", server.url + path, headers=server.admin_headers, **body)
    assert_envelope_failure(response, 400, "INVALID_PAYLOAD")


async def test_event_of_64_characters_is_fine(server, open_client, http):
    client = await open_client(server.url)
    name = "e" * 64
    response = await rest(http, "POST", server.url + "/api/realtime/broadcast", headers=server.admin_headers,
                          json_body={"event": name, "data": [1, 2]})
    assert response.status == 200 and response.body["data"]["event"] == name
    assert await client.wait_event(name) == [1, 2]


async def test_body_over_max_payload(in_process, http):
    small = await in_process(MAX_PAYLOAD_BYTES="2048")
    body = {"event": "big", "data": {"blob": "x" * 4096}}
    response = await rest(http, "POST", small.url + "/api/realtime/broadcast", headers=small.admin_headers,
                          json_body=body)
    assert_envelope_failure(response, 413, "PAYLOAD_TOO_LARGE")
    # under the limit is fine
    response = await rest(http, "POST", small.url + "/api/realtime/broadcast", headers=small.admin_headers,
                          json_body={"event": "small", "data": {"blob": "x" * 1000}})
    assert response.status == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/api/realtime/nope", 404),
        ("POST", "/api/realtime/device/", 404),
        ("GET", "/api/realtime/broadcast", 405),
        ("DELETE", "/health", 405),
    ],
)
async def test_unknown_route(in_process, http, method, path, status):
    server = await in_process()
    response = await rest(http, method, server.url + path, headers=server.admin_headers)
    assert_envelope_failure(response, status, "NOT_FOUND" if status == 404 else "METHOD_NOT_ALLOWED")


# --------------------------------------------------------------------------- the token command


def mint(*args: str, secret: str | None = TEST_SECRET) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("JWT_SECRET", "IOTHUB_ENV", "NODE_ENV")}
    if secret is not None:
        env["JWT_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "iothub", "token", *args], env=env, capture_output=True, text=True, timeout=30
    )


async def test_token_command_mints_what_the_server_accepts(in_process, http):
    server = await in_process()
    admin = mint("--email", "ops@example.com", "--role", "admin")
    assert admin.returncode == 0, admin.stderr
    token = admin.stdout.strip()
    response = await rest(http, "GET", server.url + "/api/realtime/connections", headers=bearer(token))
    assert response.status == 200 and response.body["success"] is True
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert claims["email"] == "ops@example.com" and claims["role"] == "admin" and claims["exp"] > time.time()

    user = mint("--email", "user@example.com", "--role", "user").stdout.strip()
    assert (await rest(http, "GET", server.url + "/api/realtime/users", headers=bearer(user))).status == 403

    foreign = mint("--email", "ops@example.com", "--role", "admin", secret="another-secret-" + "y" * 40).stdout.strip()
    assert (await rest(http, "GET", server.url + "/api/realtime/users", headers=bearer(foreign))).status == 401

    expired = mint("--email", "ops@example.com", "--role", "admin", "--ttl", "-10").stdout.strip()
    assert (await rest(http, "GET", server.url + "/api/realtime/users", headers=bearer(expired))).status == 401


def test_token_command_refuses_a_device_token_without_imei():
    result = mint("--email", "d@example.com", "--role", "device")
    assert result.returncode != 0 and "imei" in result.stderr and result.stdout == ""
    assert "Traceback" not in result.stderr
