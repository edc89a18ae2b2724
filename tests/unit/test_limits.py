"""Per-address limits as a plain object: connections, their rate, failed authentications and bans, and who the client is."""

from __future__ import annotations

import pytest

from iothub.core.limits import MAX_ADDRESSES, AddressLimits, Refusal, client_address


def limits(**options: float) -> AddressLimits:
    values = {"max_connections": 0, "max_per_address": 0, "rate_per_address": 0, "auth_failures": 0, "ban_seconds": 60} | options
    return AddressLimits(**values)  # type: ignore[arg-type]


def test_no_limits_admit_everything() -> None:
    free = limits()
    for _ in range(10_000):
        assert free.admit("a", 0.0) is None
        free.opened("a")
    assert free.connections == 10_000


def test_the_server_wide_limit_refuses_with_503_until_one_closes() -> None:
    full = limits(max_connections=2)
    for address in ("a", "b"):
        assert full.admit(address, 0) is None
        full.opened(address)
    assert full.admit("c", 0) is Refusal.SERVER_FULL and Refusal.SERVER_FULL.status == 503
    full.closed("a")
    assert full.admit("c", 0) is None


def test_the_per_address_limit_counts_open_connections_of_that_address_only() -> None:
    each = limits(max_per_address=2)
    for _ in range(2):
        each.opened("a")
    assert each.admit("a", 0) is Refusal.ADDRESS_FULL and Refusal.ADDRESS_FULL.status == 429
    assert each.admit("b", 0) is None
    each.closed("a")
    assert each.admit("a", 0) is None


def test_new_connections_per_second_allow_a_burst_of_two_seconds_then_the_rate() -> None:
    rated = limits(rate_per_address=5)
    assert [rated.admit("a", 0.0) for _ in range(11)] == [None] * 10 + [Refusal.TOO_FAST]
    assert rated.admit("b", 0.0) is None  # another address has its own budget
    assert rated.admit("a", 0.2) is None  # one more token a fifth of a second later
    assert rated.admit("a", 0.2) is Refusal.TOO_FAST


def test_failed_authentications_ban_the_address_for_a_while() -> None:
    guarded = limits(auth_failures=3, ban_seconds=30)
    for now in (0.0, 1.0):
        guarded.auth_failed("a", now)
    assert guarded.admit("a", 2.0) is None
    guarded.auth_failed("a", 2.0)
    assert guarded.admit("a", 3.0) is Refusal.BANNED
    assert guarded.banned_for("a", 3.0) == pytest.approx(29.0)
    assert guarded.admit("b", 3.0) is None
    assert guarded.admit("a", 32.5) is None  # the ban is over


def test_failures_outside_the_window_do_not_add_up() -> None:
    guarded = limits(auth_failures=3)
    for now in (0.0, 61.0, 122.0, 183.0):
        guarded.auth_failed("a", now)
    assert guarded.banned_for("a", 184.0) == 0


def test_no_number_of_addresses_grows_the_tables_without_end() -> None:
    guarded = limits(rate_per_address=1, auth_failures=100)
    for n in range(MAX_ADDRESSES + 5_000):
        address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        guarded.admit(address, 0.0)
        guarded.auth_failed(address, 0.0)
    assert len(guarded._buckets) <= MAX_ADDRESSES and len(guarded._failures) <= MAX_ADDRESSES


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "client"),
    [
        ("203.0.113.9", "198.51.100.1", [], "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", ["10.0.0.0/8"], "203.0.113.9"),
        ("10.0.0.5", "198.51.100.1", ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.5", "6.6.6.6, 198.51.100.1, 10.0.0.7", ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.5", None, ["10.0.0.0/8"], "10.0.0.5"),
        ("::1", "2001:db8::1", ["::1"], "2001:db8::1"),
    ],
    ids=["no proxies: the peer", "untrusted peer: its header is ignored", "trusted proxy: the client it names",
         "the nearest untrusted hop, not a forged first one", "trusted proxy without header", "IPv6"],
)
def test_the_client_address_believes_forwarded_for_only_from_trusted_proxies(
    peer: str, forwarded: str | None, proxies: list[str], client: str
) -> None:
    assert client_address(peer, forwarded, proxies) == client
