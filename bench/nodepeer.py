"""``iothub bench --server node``: the official Node.js Socket.IO server doing the fleet's job (``bench/node/``).

Installed on first use with ``npm ci`` into ``bench/node/node_modules`` (the
versions ``package-lock.json`` pins), and given iothub's own alert rules,
ping timers and event-loop lag monitor's period and buckets, so that the
alerts a fleet expects are the alerts it gets and the two servers' stalls are
measured alike.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import msgspec

from iothub.config import Settings
from iothub.core.metrics import LOOP_LAG_BUCKETS
from iothub.loop import LAG_PERIOD_S

FOLDER = Path(__file__).resolve().parent / "node"
SERVER = FOLDER / "server.js"


def command(port: int) -> tuple[str, ...]:
    """The Node server on ``port``, its packages installed first if they are not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("--server node needs Node.js: node and npm on PATH")
    if not (FOLDER / "node_modules" / "socket.io").is_dir():
        print("installing the Node peer's packages (npm ci in bench/node)", flush=True)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=FOLDER, check=True)
    return (node, str(SERVER), "--port", str(port))


def environment() -> dict[str, str]:
    """``IOTHUB_BENCH_PEER``: what the Node server takes from iothub's defaults."""
    settings = Settings.load({})
    rules = [{**msgspec.structs.asdict(rule), "event": rule.event_name} for rule in settings.rules]
    peer = {
        "rules": rules,
        "pingIntervalMs": settings.ping_interval_ms,
        "pingTimeoutMs": settings.ping_timeout_ms,
        "lagPeriodS": LAG_PERIOD_S,
        "lagBucketsS": LOOP_LAG_BUCKETS,
    }
    return {"IOTHUB_BENCH_PEER": msgspec.json.encode(peer).decode()}
