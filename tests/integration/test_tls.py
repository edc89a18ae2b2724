"""TLS: with IOTHUB_TLS_CERT and IOTHUB_TLS_KEY the one port speaks HTTPS and WSS, and nothing in cleartext.

A real ``iothub serve`` with a certificate for 127.0.0.1 and localhost, signed
by an authority made for this module (:mod:`tests.support.tls`).
The clients trust that authority only, so every connection here has checked
the server's chain and name. Then the settings a server must refuse to start
with: one variable without the other, files it cannot read or use.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import socketio
from cryptography.hazmat.primitives import serialization

from iothub.config import ConfigError, Settings

from ..support.clients import TIMEOUT, connect, rest
from ..support.server import RunningServer, free_port
from ..support.tls import Certificates


@pytest.fixture
async def trusting(certificates: Certificates) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session whose connections trust the test authority (and nothing else)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=certificates.client_context())) as session:
        yield session


# --------------------------------------------------------------------------- HTTPS and WSS


def test_the_startup_line_says_https(tls_server: RunningServer) -> None:
    assert f"iothub listening on https://127.0.0.1:{tls_server.port} " in tls_server.log()


async def test_rest_answers_over_https(tls_server: RunningServer, trusting: aiohttp.ClientSession) -> None:
    assert tls_server.url.startswith("https://")
    health = await rest(trusting, "GET", tls_server.url + "/health")
    assert health.status == 200 and health.body["status"] == "OK", health.body
    devices = await rest(trusting, "GET", tls_server.url + "/api/realtime/devices", headers=tls_server.admin_headers)
    assert devices.status == 200 and devices.body["success"] is True


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_device_reaches_a_dashboard_over_tls(
    tls_server: RunningServer, certificates: Certificates, transport: str, imei: Callable[[], str], email: Callable[[], str]
) -> None:
    owner, box = email(), imei()
    # One session per client: a polling client's disconnect closes its session (Client.disconnect).
    trust = certificates.client_context()
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as dashboard_session,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as device_session,
        connect(tls_server.url, transports=[transport], http_session=dashboard_session) as dashboard,
        connect(tls_server.url, transports=[transport], http_session=device_session) as device,
    ):
        assert dashboard.sio.transport() == device.sio.transport() == transport
        await dashboard.subscribe(owner)
        await device.register(box, owner)
        await device.telemetry(box, {"speed": 42, "batteryVoltage": 11.2}, 1_700_000_000_000)
        update = await dashboard.wait_event("telemetry_update", lambda payload: payload["imei"] == box)
        assert update["data"] == {"speed": 42, "batteryVoltage": 11.2}
        alert = await dashboard.wait_event("vehicle_alert", lambda payload: payload["imei"] == box)
        assert alert["alert"]["code"] == "LOW_BATTERY"


async def test_a_client_that_does_not_trust_the_certificate_is_not_connected(tls_server: RunningServer) -> None:
    """The system's authorities do not know the test one: the handshake fails, so the server really presents its certificate."""
    sio = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(tls_server.url, transports=["websocket"], wait_timeout=TIMEOUT)
    assert not sio.connected


# --------------------------------------------------------------------------- no cleartext


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_server: RunningServer) -> None:
    """A cleartext request is not a TLS ClientHello: the server closes the connection without an HTTP answer."""
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=TIMEOUT) as plain:
        plain.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := plain.recv(4096):
            answer += chunk
    assert not answer.startswith(b"HTTP/"), answer[:200]
    assert b"connectedDevices" not in answer


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_cleartext_socket_io_client_is_not_connected(tls_server: RunningServer, transport: str) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(f"http://127.0.0.1:{tls_server.port}", transports=[transport], wait_timeout=TIMEOUT)
    assert not sio.connected


# --------------------------------------------------------------------------- settings the server refuses


@pytest.mark.parametrize("variable", ["IOTHUB_TLS_CERT", "IOTHUB_TLS_KEY"])
def test_one_tls_variable_without_the_other_is_refused_at_load(variable: str) -> None:
    with pytest.raises(ConfigError, match="IOTHUB_TLS_CERT and IOTHUB_TLS_KEY go together"):
        Settings.load({variable: "/etc/iothub/tls.pem"})


def test_both_tls_variables_load_and_neither_is_plain_http() -> None:
    assert Settings.load({}).tls_cert is None
    settings = Settings.load({"IOTHUB_TLS_CERT": "cert.pem", "IOTHUB_TLS_KEY": "key.pem"})
    assert (settings.tls_cert, settings.tls_key) == ("cert.pem", "key.pem")


def _encrypted_key(certificates: Certificates, directory: Path) -> Path:
    key = serialization.load_pem_private_key(certificates.key.read_bytes(), None)
    path = directory / "encrypted-key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"a passphrase")
        )
    )
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing certificate", "IOTHUB_TLS_CERT: cannot read"),
        ("missing key", "IOTHUB_TLS_KEY: cannot read"),
        ("certificate is a folder", "IOTHUB_TLS_CERT: cannot read"),
        ("key of another certificate", "is not the private key of IOTHUB_TLS_CERT"),
        ("not PEM", "must be a PEM certificate chain and its PEM private key"),
        ("encrypted key", "IOTHUB_TLS_KEY is encrypted"),
    ],
)
def test_tls_files_the_server_cannot_use_stop_the_start_with_a_clear_message(
    certificates: Certificates, tmp_path: Path, case: str, expected: str
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("this is not a certificate\n")
    cert, key = {
        "missing certificate": (tmp_path / "absent.pem", certificates.key),
        "missing key": (certificates.cert, tmp_path / "absent.pem"),
        "certificate is a folder": (tmp_path, certificates.key),
        "key of another certificate": (certificates.cert, certificates.other_key),
        "not PEM": (not_pem, certificates.key),
        "encrypted key": (certificates.cert, _encrypted_key(certificates, tmp_path)),
    }[case]
    environment = {**os.environ, "HOST": "127.0.0.1", "PORT": str(free_port()), "IOTHUB_STORE": "memory",
                   "IOTHUB_TLS_CERT": str(cert), "IOTHUB_TLS_KEY": str(key)}
    done = subprocess.run(
        [sys.executable, "-m", "iothub", "serve"], env=environment, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith("iothub: ") and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "listening" not in done.stdout, done
