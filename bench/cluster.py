"""``iothub bench cluster``: N gateways on Ray against one process, in one run.

Each configuration starts ``iothub serve --workers N`` and drives the same
fleet: one dashboard per owner, the owner's devices at a fixed total rate (or
a window of messages in flight). Clients connect to a gateway's own address,
so where they are is chosen, not left to the kernel:

- ``--crossing none``: an owner's devices are on the gateway of its dashboard;
  nothing crosses.
- ``--crossing worst``: an owner's devices are spread over all N gateways and
  its dashboard on one: (N−1)/N of the deliveries cross, the share random
  placement gives.

What it reports: the server's CPU per delivered message summed over every
process of the server — the driver, the gateways, the supervisor and Ray's
own (GCS, raylet, agents) — and the scaling efficiency, CPU per message at
N = 1 ÷ CPU per message at N; throughput, device-to-dashboard latency, what
crossed (from ``/metrics``), messages lost, duplicated or out of order; and
memory: Ray's fixed cost (every process but the gateways) and each gateway's.

On a machine with fewer free cores than gateways plus load, wall-clock
throughput measures the contention for cores, not the server; the CPU a
delivered message costs is what decides how many messages N free cores
carry. The wall-clock figures are printed beside it, for a run with the load
capped (``--rate``), as the cross-check.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import msgspec

from iothub.loadgen.fleet import Dashboard, Device, Tally, owner_of, start_all
from iothub.loadgen.servers import IOTHUB_SERVE, ServerProcess, free_port

from .fleet import UNLIMITED_LOAD, _delivered, _drain, _send_rate, _send_window, cpu_seconds, percentiles, rss_bytes

GATEWAY_JOINED = re.compile(r"(gateway-\d+) \(pid (\d+), private address (http://[\d.:]+)\) joined")
CROSSING = ("none", "worst")


class Config(msgspec.Struct, frozen=True):
    workers: int
    crossing: str

    @property
    def label(self) -> str:
        return "1 process" if self.workers == 1 else f"{self.workers} gateways, crossing {self.crossing}"


class Load(msgspec.Struct, frozen=True, kw_only=True):
    devices: int = 2000
    owners: int = 200
    rate: float = 4000.0
    window: int = 0
    duration: float = 20.0
    warmup: float = 3.0


class ClusterResult(msgspec.Struct, kw_only=True):
    config: str
    workers: int
    crossing: str
    load: Load
    acked_per_second: float
    delivered_per_second: float
    cpu_us_per_delivered: float
    cpu_cores: float
    crossed_share: float
    latency_ms: dict[str, float]
    lost: int
    duplicated: int
    out_of_order: int
    ray_fixed_mib: float
    gateway_mib: list[float]
    #: CPU µs per delivered message by the kind of process: gateways, supervisor, driver, Ray's.
    cpu_by_role: dict[str, float]
    scaling_efficiency: float | None = None


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (Ray's GCS, raylet, agents and actors are all the driver's)."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                queue.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def role_of(pid: int, root: int) -> str:
    """What a process of the server is, for the CPU breakdown."""
    if pid == root:
        return "driver"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for marker, role in (("GatewayActor", "gateways"), ("SupervisorActor", "supervisor"), ("gcs_server", "ray gcs"), ("raylet/raylet", "ray raylet")):
        if marker in command:
            return role
    return "ray other"


def tree_cpu(root: int) -> dict[int, float]:
    usage = {}
    for pid in process_tree(root):
        try:
            usage[pid] = cpu_seconds(pid)
        except OSError:
            continue
    return usage


def gateway_addresses(server: ServerProcess, workers: int, timeout: float = 60) -> dict[str, tuple[int, str]]:
    """name → (pid, own address), from the supervisor's log (one process: its own pid and URL)."""
    if workers == 1:
        return {"gateway-0": (server.pid, server.url)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        joined = {name: (int(pid), address) for name, pid, address in GATEWAY_JOINED.findall(server.log())}
        if len(joined) >= workers:
            return joined
        time.sleep(0.2)
    raise SystemExit(f"the cluster's {workers} gateways did not all join: {server.log()[-2000:]}")


def relayed(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(value) for value in re.findall(r'iothub_cluster_relayed_total\{kind="packets_in"\} (\S+)', text))


async def drive(config: Config, load: Load, server: ServerProcess) -> ClusterResult:
    gateways = gateway_addresses(server, config.workers)
    urls = [address for _, (_, address) in sorted(gateways.items())]
    rng = random.Random(7)
    tally = Tally()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        dashboards = [Dashboard(session, urls[owner % len(urls)], owner_of(owner, load.owners)) for owner in range(load.owners)]
        devices = []
        for index in range(load.devices):
            owner = index % load.owners
            on = owner if config.crossing == "none" else owner + index // load.owners
            devices.append(Device(session, urls[on % len(urls)], index, load.owners, tally, rng))
        await start_all(dashboards, 100)
        await start_all(devices, 100)
        print(f"[{config.label}] {load.devices} devices and {load.owners} dashboards connected", flush=True)
        stop_at = time.monotonic() + load.warmup + load.duration
        senders = [
            asyncio.create_task(_send_window(d, load.window, stop_at) if load.window else _send_rate(d, load.devices / load.rate, stop_at, rng))
            for d in devices
        ]
        await asyncio.sleep(load.warmup)
        for dashboard in dashboards:
            dashboard.latency_ns.clear()
        cpu_before, relayed_before = tree_cpu(server.pid), relayed(server.url)
        acked_before, delivered_before, started = tally.acked, _delivered(dashboards), time.monotonic()
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        elapsed = time.monotonic() - started
        cpu_after, relayed_after = tree_cpu(server.pid), relayed(server.url)
        acked, delivered = tally.acked - acked_before, _delivered(dashboards) - delivered_before
        await asyncio.gather(*senders)
        await _drain(tally, dashboards, timeout=10)
        gateway_pids = {pid for pid, _ in gateways.values()} if config.workers > 1 else set()
        rss = {pid: rss_bytes(pid) for pid in process_tree(server.pid)}
        members: tuple[Device | Dashboard, ...] = (*devices, *dashboards)
        await asyncio.gather(*(member.client.close() for member in members))
    cpu = sum(cpu_after[pid] - cpu_before[pid] for pid in cpu_after.keys() & cpu_before.keys())
    by_role: dict[str, float] = {}
    for pid in cpu_after.keys() & cpu_before.keys():
        role = role_of(pid, server.pid)
        by_role[role] = by_role.get(role, 0.0) + (cpu_after[pid] - cpu_before[pid]) / max(delivered, 1) * 1e6
    return ClusterResult(
        config=config.label,
        workers=config.workers,
        crossing=config.crossing,
        load=load,
        acked_per_second=round(acked / elapsed, 1),
        delivered_per_second=round(delivered / elapsed, 1),
        cpu_us_per_delivered=round(cpu / delivered * 1e6, 2) if delivered else float("nan"),
        cpu_cores=round(cpu / elapsed, 3),
        crossed_share=round((relayed_after - relayed_before) / delivered, 3) if delivered else 0.0,
        latency_ms=percentiles([sample for dashboard in dashboards for sample in dashboard.latency_ns]),
        lost=max(0, tally.acked - _delivered(dashboards)),
        duplicated=sum(d.duplicates for d in dashboards),
        out_of_order=sum(d.out_of_order for d in dashboards),
        ray_fixed_mib=round(sum(size for pid, size in rss.items() if pid not in gateway_pids) / 2**20, 1) if gateway_pids else 0.0,
        gateway_mib=[round(rss[pid] / 2**20, 1) for pid in sorted(gateway_pids) if pid in rss] or [round(rss[server.pid] / 2**20, 1)],
        cpu_by_role={role: round(value, 2) for role, value in sorted(by_role.items())},
    )


def run_one(config: Config, load: Load) -> ClusterResult:
    from iothub.loop import new_event_loop

    with tempfile.TemporaryDirectory(prefix="iothub-bench-") as data:
        port = free_port()
        env = {"HOST": "127.0.0.1", **UNLIMITED_LOAD, "IOTHUB_WORKERS": str(config.workers), "IOTHUB_DB_PATH": str(Path(data) / "iothub.db")}
        server = ServerProcess((*IOTHUB_SERVE, "--port", str(port)), port=port, env=env, ready_timeout=120)
        try:
            loop = new_event_loop()
            try:
                return loop.run_until_complete(drive(config, load, server))
            finally:
                loop.close()
        finally:
            server.stop(timeout=60)


def table(results: list[ClusterResult]) -> str:
    header = (
        f"{'configuration':<30} {'acked/s':>9} {'delivered/s':>12} {'CPU µs/msg':>11} {'cores':>6} {'efficiency':>10} "
        f"{'crossed':>8} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'dup':>4} {'ooo':>4} {'Ray MiB':>8} {'gateway MiB':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        efficiency = "" if r.scaling_efficiency is None else f"{r.scaling_efficiency:.2f}"
        lines.append(
            f"{r.config:<30} {r.acked_per_second:>9.0f} {r.delivered_per_second:>12.0f} {r.cpu_us_per_delivered:>11.1f} {r.cpu_cores:>6.2f} "
            f"{efficiency:>10} {r.crossed_share:>8.2f} {r.latency_ms['p50']:>7.2f} {r.latency_ms['p99']:>7.2f} {r.lost:>5} "
            f"{r.duplicated:>4} {r.out_of_order:>4} {r.ray_fixed_mib:>8.0f} {', '.join(f'{m:.0f}' for m in r.gateway_mib):>12}"
        )
    lines.append("")
    lines.append(
        "CPU µs per delivered message, by process: "
        + "; ".join(f"{r.config}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.cpu_by_role.items()) for r in results)
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iothub bench cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, action="append", help="gateways of a configuration (repeat; default 1 and 2)")
    parser.add_argument("--crossing", choices=CROSSING, action="append", help="placement for N > 1 (repeat; default both)")
    default = Load()
    parser.add_argument("--devices", type=int, default=default.devices)
    parser.add_argument("--owners", type=int, default=default.owners, help="owners, one dashboard each")
    parser.add_argument("--rate", type=float, default=default.rate, help="messages per second from the whole fleet")
    parser.add_argument("--window", type=int, default=0, help="messages in flight per device (instead of --rate)")
    parser.add_argument("--duration", type=float, default=default.duration)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    load = Load(devices=args.devices, owners=args.owners, rate=args.rate, window=args.window, duration=args.duration)
    configs = [
        Config(workers, crossing)
        for workers in args.workers or [1, 2]
        for crossing in ((args.crossing or list(CROSSING)) if workers > 1 else ["none"])
    ]
    results = [run_one(config, load) for config in configs]
    single = next((r.cpu_us_per_delivered for r in results if r.workers == 1), None)
    for result in results:
        if single is not None and result.workers > 1:
            result.scaling_efficiency = round(single / result.cpu_us_per_delivered, 3)
    print(table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(results)))
    print(f"wrote {path}")
    return 0 if all(r.lost == 0 and r.duplicated == 0 and r.out_of_order == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
