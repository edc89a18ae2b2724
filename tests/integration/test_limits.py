"""The limits a public server lives by, against real servers: each refusal a clear status and code, counted;
and the bind a development server picks."""

from __future__ import annotations

import json

import aiohttp

from ..support.clients import connect, refused, rest
from ..support.raw import raw_http, websocket_head
from ..support.server import start_server

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


async def handshake(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with http.get(url + HANDSHAKE, headers=headers or {}) as response:
        text = await response.text()
        return response.status, json.loads(text[1:] if text.startswith("0") else text)


async def test_connections_per_address_are_limited_with_429(server_factory, http):
    server = server_factory(IOTHUB_MAX_CONNECTIONS_PER_ADDRESS="3")
    async with connect(server.url), connect(server.url), connect(server.url):
        status, body = await handshake(http, server.url)
        assert (status, body["success"], body["code"]) == (429, False, "RATE_LIMITED")
        await refused(server.url)  # the official client sees its connection refused
    async with connect(server.url) as again:  # room again once they left
        assert again.connected


async def test_a_websocket_handshake_is_admitted_the_same_way_whatever_its_query_says(server_factory):
    """Only a real ``sid`` parameter (an upgrade) skips admission: a look-alike does not open a session past the limit."""
    server = server_factory(IOTHUB_MAX_CONNECTIONS_PER_ADDRESS="1")
    async with connect(server.url):
        for query in ("EIO=4&transport=websocket", "EIO=4&transport=websocket&xsid=1", "EIO=4&transport=websocket&asid=x&sids=y"):
            answer, closed = await raw_http("127.0.0.1", server.port, websocket_head("127.0.0.1", server.port, query=query))
            assert answer.startswith(b"HTTP/1.1 429 "), (query, answer[:200])
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "RATE_LIMITED" and closed


async def test_the_server_wide_limit_answers_503(server_factory, http):
    server = server_factory(IOTHUB_MAX_CONNECTIONS="2")
    async with connect(server.url), connect(server.url):
        status, body = await handshake(http, server.url)
        assert (status, body["code"]) == (503, "RATE_LIMITED")


async def test_new_connections_per_second_are_limited(server_factory, http):
    server = server_factory(IOTHUB_CONNECT_RATE_PER_ADDRESS="2")  # bursts of 4
    statuses = [(await handshake(http, server.url))[0] for _ in range(8)]
    assert statuses[:4] == [200] * 4 and 429 in statuses[4:]


async def test_failed_authentications_ban_the_address_for_sockets_and_rest(server_factory, http):
    server = server_factory(IOTHUB_ENV="production", IOTHUB_AUTH_FAILURES_PER_ADDRESS="3", IOTHUB_AUTH_BAN_MS="60000")
    for _ in range(2):
        await refused(server.url, auth={"token": "forged"})
    response = await rest(http, "GET", server.url + "/api/realtime/devices", headers={"Authorization": "Bearer forged"})
    assert response.status == 401  # the third failure
    status, body = await handshake(http, server.url)
    assert (status, body["code"]) == (429, "RATE_LIMITED")
    good = server.admin_headers  # even a valid token, from this address, waits out the ban
    response = await rest(http, "GET", server.url + "/api/realtime/devices", headers=good)
    assert (response.status, response.body["code"]) == (429, "RATE_LIMITED")
    async with http.get(server.url + "/api/realtime/devices", headers=good) as raw:
        assert int(raw.headers["Retry-After"]) > 0


async def test_forwarded_for_counts_only_from_a_trusted_proxy(server_factory, http):
    server = server_factory(IOTHUB_MAX_CONNECTIONS_PER_ADDRESS="1", IOTHUB_TRUSTED_PROXIES="127.0.0.1")
    behind_proxy = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(3)]
    assert [(await handshake(http, server.url, headers))[0] for headers in behind_proxy] == [200, 200, 200]
    assert (await handshake(http, server.url, behind_proxy[0]))[0] == 429  # that client has its one

    untrusting = server_factory(IOTHUB_MAX_CONNECTIONS_PER_ADDRESS="1")
    assert (await handshake(http, untrusting.url, behind_proxy[0]))[0] == 200
    assert (await handshake(http, untrusting.url, behind_proxy[1]))[0] == 429  # the header is not believed: one peer


def test_the_startup_line_says_where_it_listens(tmp_path):
    running = start_server(tmp_path)  # HOST=127.0.0.1, as every test server
    try:
        assert "iothub listening on http://127.0.0.1:" in running.log()
    finally:
        running.stop()
