"""Authentication of sockets: production refuses and scopes, development lets anonymous sockets do all."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import jwt
import pytest

from ..support.clients import REPLY_STYLES, assert_failure, refused, rest
from ..support.server import TEST_SECRET, free_port, start_server, workers_of

#: One process, and a cluster of two gateways (tests/conftest.py).
TOPOLOGIES = ("process", "cluster")


@pytest.fixture(scope="module")
def production(tmp_path_factory, topology):
    """One production server for the module (its clients use their own imeis and e-mails)."""
    running = start_server(tmp_path_factory.mktemp("production"), IOTHUB_ENV="production", workers=workers_of(topology))
    yield running
    running.stop()


def refused_with(errors, code="UNAUTHORIZED"):
    assert len(errors) == 1, errors
    error = errors[0]
    assert isinstance(error, dict) and error["data"] == {"code": code}, error
    assert isinstance(error["message"], str) and error["message"], error


def hs512_token() -> str:
    """A token signed with the right secret but not with HS256."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT finds the test secret short for HS512
        return jwt.encode({"email": "a@example.com", "role": "admin", "exp": int(time.time()) + 600}, TEST_SECRET,
                          algorithm="HS512")


# --------------------------------------------------------------------------- connecting


async def test_socket_without_token_is_refused(production):
    refused_with(await refused(production.url))
    refused_with(await refused(production.url, auth={}))
    refused_with(await refused(production.url, auth={"token": ""}))


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("a.b.c", id="three-parts"),
        pytest.param(12345, id="number"),
        pytest.param(jwt.encode({"email": "a@example.com", "role": "admin", "exp": int(time.time()) + 600}, "z" * 40),
                     id="other-secret"),
        pytest.param(jwt.encode({"email": "a@example.com", "role": "admin"}, TEST_SECRET), id="no-exp"),
        pytest.param(jwt.encode({"email": "a@example.com", "role": "root", "exp": int(time.time()) + 600}, TEST_SECRET),
                     id="unknown-role"),
        pytest.param(jwt.encode({"email": "d@example.com", "role": "device", "exp": int(time.time()) + 600},
                                TEST_SECRET), id="device-without-imei"),
        pytest.param(hs512_token(), id="other-algorithm"),
    ],
)
async def test_socket_with_invalid_token_is_refused(production, token):
    refused_with(await refused(production.url, auth={"token": token}))


async def test_socket_with_expired_token_is_refused(production):
    refused_with(await refused(production.url, auth={"token": production.token("a@example.com", "admin", ttl=-30)}))


async def test_socket_with_valid_token_connects(production, open_client):
    client = await open_client(production.url, token=production.token("u@example.com", "user"))
    assert client.connected and client.connect_errors == []


# --------------------------------------------------------------------------- scopes


@pytest.mark.parametrize("style", REPLY_STYLES)
async def test_device_token_registers_only_its_own_imei(production, open_client, imei, email, style):
    own, other, owner = imei(), imei(), email()
    dashboard = await open_client(production.url, token=production.token(owner, "user"))
    await dashboard.subscribe(owner)
    device = await open_client(production.url, token=production.token(owner, "device", own))  # the owner's own device

    reply = await device.reply(style, "register_device", {"imei": own, "userEmail": owner})
    assert reply == {"success": True, "imei": own, "message": "Device registered successfully"}
    assert_failure(await device.reply(style, "register_device", {"imei": other}), "FORBIDDEN")
    assert_failure(await device.reply(style, "subscribe_user", {"email": "device@example.com"}), "FORBIDDEN")
    assert_failure(await device.reply(style, "subscribe_user", {"email": owner}), "FORBIDDEN")

    reply = await device.reply(style, "telemetry_data", {"imei": own, "timestamp": 8, "data": {"speed": 8}})
    assert reply == {"success": True, "message": "Telemetry processed successfully"}
    assert await dashboard.wait_event("telemetry_update") == {
        "type": "telemetry_update", "imei": own, "timestamp": 8, "data": {"speed": 8}
    }
    assert (await device.call("heartbeat", {"imei": own}))["success"] is True
    assert_failure(await device.call("heartbeat", {"imei": other}), "DEVICE_NOT_REGISTERED")
    assert device.connected


@pytest.mark.parametrize("style", REPLY_STYLES)
async def test_user_token_subscribes_only_its_own_email(production, open_client, imei, email, style):
    owner, stranger = email(), email()
    user = await open_client(production.url, token=production.token(owner, "user"))
    reply = await user.reply(style, "subscribe_user", {"email": owner.upper()})
    assert reply == {"success": True, "email": owner, "deviceCount": 0, "telemetries": []}
    assert_failure(await user.reply(style, "subscribe_user", {"email": stranger}), "FORBIDDEN")
    assert_failure(await user.reply(style, "register_device", {"imei": imei()}), "FORBIDDEN")
    assert await user.reply(style, "unsubscribe_user", {"email": owner}) == {"success": True, "email": owner}
    assert user.connected


async def test_forbidden_subscription_gets_no_updates(production, open_client, imei, email):
    victim = email()
    device = await open_client(production.url, token=production.token(victim, "device", box := imei()))
    await device.register(box, victim)
    snoop = await open_client(production.url, token=production.token(email(), "user"))
    assert_failure(await snoop.call("subscribe_user", {"email": victim}), "FORBIDDEN")
    await device.telemetry(box, {"speed": 1})
    await snoop.sync()
    assert snoop.events() == []


async def test_admin_token_may_do_anything(production, open_client, imei, email):
    owners = [email(), email()]
    admin = await open_client(production.url, token=production.token("ops@example.com", "admin"))
    for owner in owners:
        await admin.subscribe(owner)
    boxes = [imei(), imei()]
    for box, owner in zip(boxes, owners, strict=True):
        await admin.register(box, owner)
        await admin.telemetry(box, {"speed": 2}, timestamp=2)
    updates = await admin.wait_count("telemetry_update", 2)
    assert sorted(update["imei"] for update in updates) == sorted(boxes)
    assert (await admin.call("unsubscribe_user", {"email": owners[0]}))["success"] is True


async def test_rest_in_production(production, http):
    response = await rest(http, "GET", production.url + "/api/realtime/devices", headers=production.admin_headers)
    assert response.status == 200
    assert (await rest(http, "GET", production.url + "/api/realtime/devices")).status == 401
    assert (await rest(http, "GET", production.url + "/health")).status == 200


# --------------------------------------------------------------------------- development


async def test_development_anonymous_socket_may_do_everything(server, open_client, imei, email):
    owner = email()
    dashboard = await open_client(server.url)
    assert (await dashboard.subscribe(owner))["deviceCount"] == 0
    device = await open_client(server.url)
    boxes = [imei(), imei()]
    for box in boxes:
        await device.register(box, owner)
        await device.telemetry(box, {"speed": 1}, timestamp=1)
        assert (await device.call("heartbeat", {"imei": box}))["success"] is True
    assert len(await dashboard.wait_count("telemetry_update", 2)) == 2
    assert (await device.subscribe(email()))["success"] is True
    assert (await device.call("unsubscribe_user", {"email": owner}))["success"] is True


# --------------------------------------------------------------------------- refusing to start


def serve(tmp_path, **env: str | None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "IOTHUB_ENV", "NODE_ENV")}
    environment.update({"HOST": "127.0.0.1", "PORT": str(free_port()), "IOTHUB_DB_PATH": str(tmp_path / "iothub.db")})
    environment.update({key: value for key, value in env.items() if value is not None})
    return subprocess.run(
        [sys.executable, "-m", "iothub", "serve"], env=environment, capture_output=True, text=True, timeout=30,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("variable", ["IOTHUB_ENV", "NODE_ENV"])
@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("short", id="short"),
        pytest.param("x" * 31, id="31-characters"),
        pytest.param("your_jwt_secret", id="example-value"),
        pytest.param("iothub-development-secret-not-for-production", id="development-default"),
    ],
)
def test_production_refuses_to_start_with_a_weak_secret(tmp_path, variable, secret):
    result = serve(tmp_path, **{variable: "production", "JWT_SECRET": secret})
    assert result.returncode != 0
    assert "JWT_SECRET" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "listening" not in result.stdout
