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
throughput measures the contention for cores, not the server. Two ways
around it:

- ``--rate``: the load capped, every configuration delivers what is sent, and
  the CPU a delivered message costs says how many N free cores would carry.
  But a process's CPU per message falls as its load rises (its loop's
  wake-ups, flushes and timers are shared by more messages), so N gateways
  each carrying 1/N of a fixed rate are compared with a busier process; the
  "1/N of the load" configuration is printed to show how much.
- ``--cpu-budget C`` with ``--window``: each configuration's server is held to
  C cores per gateway (:mod:`.budget`, a cgroup) and saturated; the rest of
  the machine runs the load. Throughput is then what the budget buys, as on
  N machines of C cores: ``delivered/s at N ÷ (N × delivered/s at 1)`` is the
  scaling efficiency in throughput, each gateway as busy as the one process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from iothub.loadgen.fleet import Dashboard, Device, Tally, owner_of, start_all
from iothub.loadgen.servers import IOTHUB_SERVE, ServerProcess, free_port

from .budget import BudgetUnavailable, CpuBudget
from .fleet import UNLIMITED_LOAD, _delivered, _drain, _send_rate, _send_window, percentiles, rss_bytes
from .phases import cpu_seconds

CROSSING = ("none", "worst")
#: Seconds between the load's shards all connected and their common start.
START_DELAY_S = 0.5


class Config(msgspec.Struct, frozen=True):
    workers: int
    crossing: str
    #: 1: the whole load; N: 1/N of it (devices, owners and rate), what each of N gateways carries.
    share: int = 1

    @property
    def label(self) -> str:
        if self.workers == 1:
            return "1 process" if self.share == 1 else f"1 process, 1/{self.share} of the load"
        return f"{self.workers} gateways, crossing {self.crossing}"

    def load_of(self, load: Load) -> Load:
        if self.share == 1:
            return load
        return msgspec.structs.replace(load, devices=load.devices // self.share, owners=load.owners // self.share, rate=load.rate / self.share)


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
    #: Ray actors the load ran in (0: this process), and how the server's connections fell on its gateways.
    load_workers: int
    connections_by_gateway: dict[str, int]
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
    #: With ``--cpu-budget``: the cores the server's processes shared, and the share of the window's bandwidth periods
    #: in which they used that quota up (near 1: the budget, not the load, decided the throughput).
    budget_cores: float | None = None
    throttled_share: float = 0.0
    #: CPU per message of one process with the whole load ÷ this configuration's (N > 1).
    scaling_efficiency: float | None = None
    #: CPU per message of one process with 1/N of the load — what each gateway carries — ÷ this
    #: configuration's: the cluster's own cost, with each process as busy as the one it is compared with.
    gateway_efficiency: float | None = None
    #: With ``--cpu-budget``: delivered/s of this configuration ÷ N × delivered/s of one process, each on its budget.
    throughput_efficiency: float | None = None


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


def relayed(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(value) for value in re.findall(r'iothub_cluster_relayed_total\{kind="packets_in"\} (\S+)', text))


class ShardResult(msgspec.Struct, kw_only=True):
    """What one shard of the load saw: counts over the measured window, and every latency sample (so that
    shards merge exactly: percentiles of the merged samples, not averages of percentiles)."""

    connections: int
    acked: int
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    latency_ns: list[int]


class Shard:
    """The owners ``owner % shards == index``, one dashboard each, and their devices, placed on the
    gateways' ``urls`` by the crossing rule; in this process, or in a Ray actor (``--load-workers``)."""

    def __init__(self, index: int, shards: int, load: Load, urls: list[str], crossing: str) -> None:
        self.load, self.urls, self.crossing = load, urls, crossing
        self.owners = [owner for owner in range(load.owners) if owner % shards == index]
        self.rng = random.Random(7 + index)
        self.tally = Tally()

    async def connect(self) -> int:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        load, urls, owners = self.load, self.urls, set(self.owners)
        self.dashboards = [Dashboard(self.session, urls[owner % len(urls)], owner_of(owner, load.owners)) for owner in self.owners]
        self.devices = []
        for index in range(load.devices):
            owner = index % load.owners
            if owner in owners:
                on = owner if self.crossing == "none" else owner + index // load.owners
                self.devices.append(Device(self.session, urls[on % len(urls)], index, load.owners, self.tally, self.rng))
        await start_all(self.dashboards, 100)
        await start_all(self.devices, 100)
        return len(self.dashboards) + len(self.devices)

    async def run(self, start_at: float) -> ShardResult:
        """Send from ``start_at`` (wall clock) for the warm-up and the measured window; count the window."""
        load, tally, dashboards = self.load, self.tally, self.dashboards
        await asyncio.sleep(max(0.0, start_at - time.time()))
        stop_at = time.monotonic() + load.warmup + load.duration
        period = load.devices / load.rate
        senders = [
            asyncio.create_task(_send_window(d, load.window, stop_at) if load.window else _send_rate(d, period, stop_at, self.rng))
            for d in self.devices
        ]
        await asyncio.sleep(load.warmup)
        for dashboard in dashboards:
            dashboard.latency_ns.clear()
        acked, delivered = tally.acked, _delivered(dashboards)
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        acked, delivered = tally.acked - acked, _delivered(dashboards) - delivered
        await asyncio.gather(*senders)
        await _drain(tally, dashboards, timeout=10)
        members: tuple[Device | Dashboard, ...] = (*self.devices, *dashboards)
        await asyncio.gather(*(member.client.close() for member in members))
        await self.session.close()
        return ShardResult(
            connections=len(members),
            acked=acked,
            delivered=delivered,
            lost=max(0, tally.acked - _delivered(dashboards)),
            duplicated=sum(d.duplicates for d in dashboards),
            out_of_order=sum(d.out_of_order for d in dashboards),
            latency_ns=[sample for dashboard in dashboards for sample in dashboard.latency_ns],
        )


async def connect_shards(config: Config, load: Load, urls: list[str], load_workers: int) -> list[Any]:
    """The load's shards, connected: one here, or one per Ray actor (``load_workers``)."""
    if load_workers == 0:
        shard = Shard(0, 1, load, urls, config.crossing)
        await shard.connect()
        return [shard]
    import ray

    worker: Any = ray.remote(Shard)
    shards = [worker.options(num_cpus=0).remote(index, load_workers, load, urls, config.crossing) for index in range(load_workers)]
    await asyncio.gather(*(shard.connect.remote() for shard in shards))
    return shards


async def run_shards(shards: list[Any], load_workers: int, start_at: float) -> list[ShardResult]:
    runs = [shard.run(start_at) if load_workers == 0 else shard.run.remote(start_at) for shard in shards]
    results: list[ShardResult] = await asyncio.gather(*runs)
    return results


async def drive(config: Config, load: Load, server: ServerProcess, load_workers: int, budget: CpuBudget | None) -> ClusterResult:
    gateways = server.gateways(config.workers)
    urls = [gateway.address for _, gateway in sorted(gateways.items())]
    shards = await connect_shards(config, load, urls, load_workers)
    start_at = time.time() + START_DELAY_S
    run = asyncio.ensure_future(run_shards(shards, load_workers, start_at))
    await asyncio.sleep(max(0.0, start_at - time.time() + load.warmup))
    spread = {entry["id"]: entry["connections"] for entry in server.status()["gateways"]}
    print(f"[{config.label}] connections by gateway: {spread}", flush=True)
    periods = budget.periods() if budget else None
    cpu_before, relayed_before, started = tree_cpu(server.pid), relayed(server.url), time.monotonic()
    await asyncio.sleep(load.duration)
    elapsed = time.monotonic() - started
    cpu_after, relayed_after = tree_cpu(server.pid), relayed(server.url)
    throttled = budget.used_up_since(periods) if budget and periods else 0.0
    shards = await run
    acked, delivered = sum(s.acked for s in shards), sum(s.delivered for s in shards)
    gateway_pids = {gateway.pid for gateway in gateways.values()} if config.workers > 1 else set()
    rss = {pid: rss_bytes(pid) for pid in process_tree(server.pid)}
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
        load_workers=load_workers,
        connections_by_gateway=spread,
        acked_per_second=round(acked / elapsed, 1),
        delivered_per_second=round(delivered / elapsed, 1),
        cpu_us_per_delivered=round(cpu / delivered * 1e6, 2) if delivered else float("nan"),
        cpu_cores=round(cpu / elapsed, 3),
        crossed_share=round((relayed_after - relayed_before) / delivered, 3) if delivered else 0.0,
        latency_ms=percentiles([sample for shard in shards for sample in shard.latency_ns]),
        lost=sum(s.lost for s in shards),
        duplicated=sum(s.duplicated for s in shards),
        out_of_order=sum(s.out_of_order for s in shards),
        ray_fixed_mib=round(sum(size for pid, size in rss.items() if pid not in gateway_pids) / 2**20, 1) if gateway_pids else 0.0,
        gateway_mib=[round(rss[pid] / 2**20, 1) for pid in sorted(gateway_pids) if pid in rss] or [round(rss[server.pid] / 2**20, 1)],
        cpu_by_role={role: round(value, 2) for role, value in sorted(by_role.items())},
        budget_cores=budget.cores if budget else None,
        throttled_share=round(throttled, 3),
    )


def run_one(config: Config, load: Load, load_workers: int, budget_cores: float | None) -> ClusterResult:
    from iothub.loop import new_event_loop

    with contextlib.ExitStack() as stack:
        budget = stack.enter_context(CpuBudget(f"iothub-bench-{os.getpid()}", budget_cores * config.workers)) if budget_cores else None
        command = budget.command(IOTHUB_SERVE) if budget else IOTHUB_SERVE
        data = stack.enter_context(tempfile.TemporaryDirectory(prefix="iothub-bench-"))
        port = free_port()
        env = {"HOST": "127.0.0.1", **UNLIMITED_LOAD, "IOTHUB_WORKERS": str(config.workers), "IOTHUB_DB_PATH": str(Path(data) / "iothub.db")}
        env["RAY_ADDRESS"] = ""  # the load's Ray (--load-workers) set it for this process's children: the server has its own
        server = ServerProcess((*command, "--port", str(port)), port=port, env=env, ready_timeout=180)
        stack.callback(server.stop, timeout=60)  # before the budget's cgroup goes: exits run last in, first out
        loop = new_event_loop()
        stack.callback(loop.close)
        return loop.run_until_complete(drive(config, config.load_of(load), server, load_workers, budget))


def table(results: list[ClusterResult]) -> str:
    header = (
        f"{'configuration':<30} {'acked/s':>9} {'delivered/s':>12} {'CPU µs/msg':>11} {'cores':>6} {'efficiency':>10} {'per gateway':>11} "
        f"{'crossed':>8} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'dup':>4} {'ooo':>4} {'Ray MiB':>8} {'gateway MiB':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        efficiency = "" if r.scaling_efficiency is None else f"{r.scaling_efficiency:.2f}"
        per_gateway = "" if r.gateway_efficiency is None else f"{r.gateway_efficiency:.2f}"
        lines.append(
            f"{r.config:<30} {r.acked_per_second:>9.0f} {r.delivered_per_second:>12.0f} {r.cpu_us_per_delivered:>11.1f} {r.cpu_cores:>6.2f} "
            f"{efficiency:>10} {per_gateway:>11} {r.crossed_share:>8.2f} {r.latency_ms['p50']:>7.2f} {r.latency_ms['p99']:>7.2f} {r.lost:>5} "
            f"{r.duplicated:>4} {r.out_of_order:>4} {r.ray_fixed_mib:>8.0f} {', '.join(f'{m:.0f}' for m in r.gateway_mib):>12}"
        )
    lines.append("")
    if any(r.budget_cores for r in results):
        lines.append(
            "CPU budget (cores; share of periods it was used up; delivered/s ÷ N × one process's): "
            + "; ".join(
                f"{r.config}: {r.budget_cores:g}; {r.throttled_share:.2f}"
                + ("" if r.throughput_efficiency is None else f"; {r.throughput_efficiency:.2f}")
                for r in results
            )
        )
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
    parser.add_argument("--load-workers", type=int, default=0, help="run the load in this many Ray actors (default 0: in this process)")
    parser.add_argument("--ray-address", help="with --load-workers: the Ray cluster to run them on (default: a local one)")
    parser.add_argument(
        "--cpu-budget",
        type=float,
        metavar="CORES",
        help="cap each configuration's server at CORES per gateway (a cgroup; root): N gateways share N × CORES, Ray's "
        "processes included; with --window, compares throughputs as if each gateway had a core of its own",
    )
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    if args.cpu_budget is not None:
        try:
            with CpuBudget(f"iothub-bench-{os.getpid()}", args.cpu_budget):  # refused now, not after the first run
                pass
        except (BudgetUnavailable, ValueError) as exc:
            parser.error(f"--cpu-budget: {exc}")
    if args.load_workers:
        import ray

        # A Ray of the load's own (never the server's, whose CPU is measured), its workers able to import bench/.
        ray.init(
            address=args.ray_address or "local",
            namespace="iothub-bench",
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
        )
    load = Load(devices=args.devices, owners=args.owners, rate=args.rate, window=args.window, duration=args.duration)
    configs = [
        Config(workers, crossing)
        for workers in args.workers or [1, 2]
        for crossing in ((args.crossing or list(CROSSING)) if workers > 1 else ["none"])
    ]
    if not load.window and not args.cpu_budget:
        shares = sorted({config.workers for config in configs if config.workers > 1})
        configs[1:1] = [Config(1, "none", share) for share in shares]
    results = [run_one(config, load, args.load_workers, args.cpu_budget) for config in configs]
    alone = {config.share: result for config, result in zip(configs, results) if config.workers == 1}
    for config, result in zip(configs, results):
        if config.workers > 1:
            if 1 in alone:
                result.scaling_efficiency = round(alone[1].cpu_us_per_delivered / result.cpu_us_per_delivered, 3)
                if args.cpu_budget:
                    result.throughput_efficiency = round(result.delivered_per_second / (config.workers * alone[1].delivered_per_second), 3)
            if config.workers in alone:
                result.gateway_efficiency = round(alone[config.workers].cpu_us_per_delivered / result.cpu_us_per_delivered, 3)
    print(table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(results)))
    print(f"wrote {path}")
    return 0 if all(r.lost == 0 and r.duplicated == 0 and r.out_of_order == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
