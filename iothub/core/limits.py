"""What one client address may take: connections, new connections a second, failed authentications.

A server on the internet meets clients that open thousands of sockets, open
them as fast as they can, or try tokens until one works. :class:`AddressLimits`
answers, for each new connection, whether its address may have it, and bans an
address for a while once it has failed to authenticate too often. Every table
it keeps is bounded (:data:`MAX_ADDRESSES` entries, the oldest dropped first),
so no number of addresses makes it grow without end.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import Any

from .ratelimit import TokenBucket

#: Addresses each table remembers at most; beyond, the oldest entry goes (an address with open
#: connections is never dropped from the count of them, which is bounded by the connection limit).
MAX_ADDRESSES = 100_000
#: The window over which failed authentications are counted.
AUTH_WINDOW_S = 60.0


class Refusal(enum.Enum):
    """Why a new connection was refused: its HTTP status and what the client is told."""

    SERVER_FULL = (503, "the server has as many connections as it takes; retry later")
    ADDRESS_FULL = (429, "this address has as many connections as it may have")
    TOO_FAST = (429, "this address opens connections too fast; slow down")
    BANNED = (429, "this address failed to authenticate too often; retry later")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class AddressLimits:
    """Limits per client address. A limit of 0 is no limit."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_per_address: int,
        rate_per_address: float,
        auth_failures: int,
        ban_seconds: float,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.rate_per_address = rate_per_address
        self.auth_failures = auth_failures
        self.ban_seconds = ban_seconds
        self.connections = 0
        self._open: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._failures: dict[str, tuple[float, int]] = {}
        self._banned_until: dict[str, float] = {}

    def admit(self, address: str, now: float) -> Refusal | None:
        """Whether a new connection from ``address`` may open now (None: it may)."""
        if self.banned_for(address, now):
            return Refusal.BANNED
        if self.max_connections and self.connections >= self.max_connections:
            return Refusal.SERVER_FULL
        if self.max_per_address and self._open.get(address, 0) >= self.max_per_address:
            return Refusal.ADDRESS_FULL
        if self.rate_per_address:
            bucket = self._buckets.get(address)
            if bucket is None:
                bucket = self._buckets[address] = TokenBucket(self.rate_per_address, 2 * self.rate_per_address, now)
                _bound(self._buckets)
            if not bucket.take(now):
                return Refusal.TOO_FAST
        return None

    def opened(self, address: str) -> None:
        self.connections += 1
        self._open[address] = self._open.get(address, 0) + 1

    def closed(self, address: str) -> None:
        self.connections -= 1
        left = self._open.get(address, 1) - 1
        if left > 0:
            self._open[address] = left
        else:
            self._open.pop(address, None)

    def auth_failed(self, address: str, now: float) -> None:
        """Count a failed authentication; past the limit within :data:`AUTH_WINDOW_S`, ban the address."""
        if not self.auth_failures:
            return
        started, count = self._failures.get(address, (now, 0))
        if now - started > AUTH_WINDOW_S:
            started, count = now, 0
        count += 1
        if count >= self.auth_failures:
            self._failures.pop(address, None)
            self._banned_until[address] = now + self.ban_seconds
            _bound(self._banned_until)
        else:
            self._failures[address] = (started, count)
            _bound(self._failures)

    def banned_for(self, address: str, now: float) -> float:
        """Seconds the address stays refused (0: it is not)."""
        until = self._banned_until.get(address)
        if until is None:
            return 0.0
        if until <= now:
            del self._banned_until[address]
            return 0.0
        return until - now


def _bound(table: dict[str, Any]) -> None:
    """Drop the oldest entries of a table past :data:`MAX_ADDRESSES`."""
    while len(table) > MAX_ADDRESSES:
        del table[next(iter(table))]


def client_address(peer: str | None, forwarded_for: str | None, proxies: Iterable[str]) -> str:
    """The client's address: the peer's, or — when the peer is a trusted proxy — the nearest
    address in ``X-Forwarded-For`` that is not a trusted proxy itself."""
    networks = [ipaddress.ip_network(proxy, strict=False) for proxy in proxies]
    address = peer or "unknown"
    if not networks or not forwarded_for or not _within(address, networks):
        return address
    for hop in reversed([hop.strip() for hop in forwarded_for.split(",") if hop.strip()]):
        if not _within(hop, networks):
            return hop
    return address


def _within(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
