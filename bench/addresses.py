"""Enough client sockets for a big fleet on one machine: source addresses and open files.

Every connection to the server's one address and port needs its own source
address and port. One source address has only the kernel's ephemeral range
(about 28,000 ports), so a fleet larger than that takes its sources from
127.0.0.2, 127.0.0.3, … — all loopback, all this machine. And each socket is
an open file, in the load's process and in the server's: the soft limit is
raised to the hard one, which a server started afterwards inherits.
"""

from __future__ import annotations

import ipaddress
import resource
from pathlib import Path

#: Files a process needs besides its sockets: the interpreter's, the event loop's, a store's, a log.
SPARE_FILES = 256
#: Ports of the ephemeral range left to anything else on the machine while the fleet runs.
SPARE_PORTS = 1000


def ephemeral_ports() -> int:
    """How many source ports the kernel hands out to one address."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return high - low + 1


def source_addresses(server_host: str, connections: int, per_address: int) -> list[str | None]:
    """Where ``connections`` sockets to ``server_host`` come from: ``[None]`` (the kernel's choice) when one address's
    ``per_address`` ports suffice, else as many loopback addresses from 127.0.0.2 up as it takes."""
    if connections <= per_address:
        return [None]
    if not ipaddress.ip_address(server_host).is_loopback:
        raise ValueError(f"{connections} connections need more than one source address; that works only for a server on 127.0.0.0/8")
    needed = -(-connections // per_address)
    first = ipaddress.ip_address("127.0.0.2")
    return [str(first + offset) for offset in range(needed)]


def raise_open_files(sockets: int) -> int:
    """Raise this process's soft limit of open files to the hard one; refuse if even that is short of ``sockets``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and sockets + SPARE_FILES > hard:
        raise ValueError(
            f"{sockets} sockets need {sockets + SPARE_FILES} open files in the server and in the load, "
            f"and this machine allows a process {hard} (ulimit -Hn)"
        )
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
