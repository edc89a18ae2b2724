"""Where a connection's memory goes: Python's allocations per connected socket, by package and by line.

``python -m bench.memory_map --devices 3000`` serves the application in this
process (memory store), traces allocations with :mod:`tracemalloc`, connects
a fleet with ``iothub bench --scenario fleet`` against it, and once every
socket is connected compares a snapshot with one taken before: what each
package, and each line, keeps per connection. Native memory that Python's
allocator does not see (uvloop's transports, the kernel's socket buffers) is
not in it; tracing also makes the process larger, so its RSS is no measure
here (``iothub bench`` measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import socket
import sys
import tracemalloc
from collections.abc import Sequence

from aiohttp import web

from .fleet import UNLIMITED_LOAD

SITE_PACKAGES = "site-packages/"


def where(filename: str) -> str:
    """The package an allocation's file belongs to: ``iothub/<layer>`` for the server's own, else the top package.

    What uvloop makes from C (transports, handles) has no Python frame but this module's call to run the loop.
    """
    if filename == __file__:
        return "uvloop"
    if "/iothub/" in filename and SITE_PACKAGES not in filename:
        return "iothub/" + filename.split("/iothub/", 1)[1].split("/", 1)[0]
    if SITE_PACKAGES in filename:
        return filename.split(SITE_PACKAGES, 1)[1].split("/", 1)[0]
    return os.path.basename(filename)


async def measure(devices: int, dashboards: int, lines: int) -> None:
    os.environ.update({"IOTHUB_STORE": "memory", **UNLIMITED_LOAD})
    from iothub.app import SERVER_OPTIONS, Hub
    from iothub.config import Settings

    hub = Hub(Settings.load(None))
    runner = web.AppRunner(hub.application(), **SERVER_OPTIONS)
    await runner.setup()
    listener = socket.create_server(("127.0.0.1", 0))
    server = await hub.gateway.entrance(runner.server).listen(sock=listener)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    tracemalloc.start(1)
    gc.collect()
    before = tracemalloc.take_snapshot()
    load = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iothub", "bench", "--scenario", "fleet", "--server", url, "--devices", str(devices),
        "--dashboards", str(dashboards), "--rate", "100", "--duration", "2", "--idle", "10", "--no-pin", "--out", "bench/results",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    sockets = hub.gateway.eio.sockets
    while True:  # the fleet's own progress is in another process: look until every socket is there
        if len(sockets) >= devices + dashboards:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # registrations and subscriptions answered
    gc.collect()
    after = tracemalloc.take_snapshot()
    connections = len(sockets)
    stats = after.compare_to(before, "lineno")
    by_package: collections.Counter[str] = collections.Counter()
    for stat in stats:
        by_package[where(stat.traceback[0].filename)] += stat.size_diff
    print(f"{connections} connections: {sum(by_package.values()) / connections / 1024:.2f} KiB each, by package:")
    for package, size in by_package.most_common():
        if size / connections >= 16:
            print(f"  {size / connections:8.0f} B  {package}")
    print(f"the {lines} lines that keep the most:")
    for stat in stats[:lines]:
        frame = stat.traceback[0]
        line = f"{where(frame.filename)} {os.path.basename(frame.filename)}:{frame.lineno}"
        print(f"  {stat.size_diff / connections:8.0f} B {stat.count_diff / connections:6.2f} objects  {line}")
    await load.wait()
    server.close()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_map", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--dashboards", type=int, default=50)
    parser.add_argument("--lines", type=int, default=20)
    args = parser.parse_args(argv)
    from iothub.loop import new_event_loop

    loop = new_event_loop()
    try:
        loop.run_until_complete(measure(args.devices, args.dashboards, args.lines))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
