"""``LOG_FORMAT=json``: every line a JSON object; and no token in any line, even with every debug logger on.

The server runs in production with ``DEBUG=*``, so python-socketio and
python-engineio log the raw packets, handshakes (``auth: {token}``) among
them. Sockets sign in with a good token, a forged one and one that is not a
JWT at all; REST calls carry bearer tokens, good and bad. Then the whole log
is read: each line parses, and none holds any of those tokens.
"""

from __future__ import annotations

import json
import time

import jwt

from iothub.logs import REDACTED

from ..support.clients import refused, rest


async def test_json_lines_without_tokens(server_factory, open_client, http, imei, email):
    # short pings: a refused long-polling client closes only once its held poll ends (ping interval + timeout)
    server = server_factory(IOTHUB_ENV="production", LOG_FORMAT="json", DEBUG="*", IOTHUB_PING_INTERVAL_MS="500", IOTHUB_PING_TIMEOUT_MS="1000")
    box, owner = imei(), email()
    good = server.token(owner, "device", box)
    forged = jwt.encode({"email": owner, "role": "admin", "exp": int(time.time()) + 600}, "another-secret-" * 4)
    opaque = "opaque-secret-that-is-not-a-jwt"
    # long-polling: python-engineio logs the packets it receives that way, the handshake's token among them
    device = await open_client(server.url, token=good, transports=["polling"])
    await device.register(box, owner)
    await device.telemetry(box, {"speed": 5})
    for token in (forged, opaque):
        assert await refused(server.url, auth={"token": token}, transports=["polling"])
    admin = server.admin_headers
    assert (await rest(http, "GET", server.url + "/api/realtime/devices", headers=admin)).status == 200
    assert (await rest(http, "GET", server.url + "/api/realtime/devices", headers={"Authorization": f"Bearer {forged}"})).status == 401
    await device.disconnect()
    assert server.stop() == 0

    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert len(lines) > 10  # the debug loggers had plenty to say (fewer since held polls end at once)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines), lines[:3]
    assert any(line["message"].startswith("iothub listening on") for line in lines)
    refusals = [line for line in lines if "refused" in line["message"] and "socket" in line]
    assert len(refusals) == 2, refusals
    for secret in (good, forged, opaque, admin["Authorization"].split()[1]):
        assert secret not in log
    assert sum(REDACTED in line["message"] for line in lines) >= 3  # the three handshakes were logged, blanked


async def test_text_is_the_default(server_factory, open_client):
    server = server_factory(IOTHUB_ENV="production")
    assert await refused(server.url, auth={"token": "opaque-secret-that-is-not-a-jwt"})
    assert server.stop() == 0
    log = server.log()
    assert log.startswith("iothub listening on")
    assert " INFO iothub.frontend.gateway: socket " in log and "opaque-secret" not in log
