"""The official JavaScript client over TLS: socket.io-client 4 to ``https://`` (so WSS, and polling over HTTPS).

The seed's device and dashboard scripts run unchanged against a server with
IOTHUB_TLS_CERT and IOTHUB_TLS_KEY. Node.js trusts the test authority through
NODE_EXTRA_CA_CERTS, as a user with a private authority would set it up; the
scripts inherit it from this process's environment. Without it, and over
cleartext, the client is not connected.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ..support.server import RunningServer
from ..support.tls import Certificates
from .test_interop_js import NPM_TIMEOUT, TRANSPORTS, JsClient, seed_flow, server_log_on_failure

# The session's npm install may happen in this module's first test.
pytestmark = pytest.mark.timeout(NPM_TIMEOUT + 120)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_seed_device_and_dashboard_over_tls(
    js: JsClient,
    tls_server: RunningServer,
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    imei: Callable[[], str],
    email: Callable[[], str],
    transport: str,
) -> None:
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(certificates.ca))
    assert tls_server.url.startswith("https://")
    with server_log_on_failure(tls_server):
        seed_flow(js, tls_server.url, transport, imei(), email(), "event")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_without_trusting_the_authority_or_in_cleartext_the_client_is_not_connected(
    js: JsClient,
    tls_server: RunningServer,
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    imei: Callable[[], str],
    email: Callable[[], str],
    transport: str,
) -> None:
    monkeypatch.delenv("NODE_EXTRA_CA_CERTS", raising=False)
    untrusted = js.device(tls_server.url, transport, imei(), email())
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(certificates.ca))
    cleartext = js.device(f"http://127.0.0.1:{tls_server.port}", transport, imei(), email())
    for run in (untrusted, cleartext):
        assert run.returncode == 3, f"expected connect_error (exit code 3):\n{run}"
        assert run.of("connect") == [] and run.of("sent") == [], run
