"""``iothub bench``: the fleet benchmark.

Starts the server under test (this project, the plain baseline or the Node.js peer in ``bench/``,
or a URL), pins it to one core and the load to the other, connects dashboards
and devices with the lean Socket.IO client, drives them for a bounded time and
reports what a fleet operator cares about: acknowledged and delivered messages
per second, device-to-dashboard latency, server CPU per message (from /proc),
server memory per connection, messages lost, duplicated or out of order, and
alerts expected versus received.

The server's CPU is read phase by phase (``bench/phases.py``): connecting
(per connection established), an idle window with everything connected and
nothing sent (per socket per second), sending (per message; and per message
with the connecting included), closing (per connection closed); with the
largest event-loop stall of each phase, read from the server's ``/metrics``.
A fleet larger than one source address's ports connects from several
loopback addresses (``bench/addresses.py``).

``iothub:<store>`` is this project with ``IOTHUB_STORE=<store>``, so that one
run compares persistence on (``iothub``: SQLite) and off (``iothub:memory``).
A started iothub keeps its SQLite file in a temporary folder, removed when it
stops, unless ``--server-env IOTHUB_DB_PATH=…`` names one. Several rounds run
the servers in turn (A B A B …), so that drift on a shared machine hits each
alike, and report each round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import aiohttp
import msgspec

from iothub.config import StoreKind
from iothub.heap import Pacing
from iothub.loadgen.fleet import Dashboard, Device, Tally, close_all, owner_of, start_all
from iothub.loadgen.servers import IOTHUB_SERVE, ServerFailed, ServerProcess, free_port

from . import nodepeer
from .addresses import SPARE_PORTS, ephemeral_ports, raise_open_files, source_addresses
from .phases import Lag, Phase, Reading, phase, reading

BASELINE = Path(__file__).resolve().parent / "baseline_server.py"
#: The load comes from one address, thousands of sockets at once: a started iothub has no per-address limits.
UNLIMITED_LOAD = {"IOTHUB_MAX_CONNECTIONS_PER_ADDRESS": "0", "IOTHUB_CONNECT_RATE_PER_ADDRESS": "0"}
STORES = tuple(kind for kind in get_args(StoreKind) if kind != "auto")
#: The other servers this benchmark can start: the plain Python one and the Node.js one, both in bench/.
PEERS = ("baseline", "node")


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    devices: int
    dashboards: int
    #: Telemetry messages each device keeps in flight (0: send at ``rate`` instead).
    window: int = 0
    #: Messages per second from the whole fleet, when ``window`` is 0.
    rate: float = 0
    duration: float
    warmup: float = 2.0
    #: Seconds with everything connected and nothing sent, before sending (0: none). The fleet's is one ping interval,
    #: so that each socket is pinged once in it.
    idle: float = 0


SCENARIOS: dict[str, Scenario] = {
    "burst": Scenario(name="burst", devices=100, dashboards=10, window=4, duration=10),
    "fleet": Scenario(name="fleet", devices=5000, dashboards=500, rate=2500, duration=30, warmup=5, idle=25),
}
#: Connections opened, and closed, at once: a fleet that comes and goes steadily, not in one stampede.
CONCURRENCY = 100
#: How long the benchmark waits for the server to let go of the sockets the fleet closed.
CLOSE_TIMEOUT_S = 60


class Result(msgspec.Struct, kw_only=True):
    server: str
    scenario: Scenario
    acked_per_second: float
    delivered_per_second: float
    server_cpu_us_per_message: float | None
    server_cpu_share: float | None
    #: The load generator's own CPU over the measured window: near 1.0 it, not the server, sets the pace and the latency.
    load_cpu_share: float
    latency_ms: dict[str, float]
    ack_latency_ms: dict[str, float]
    sent: int
    acknowledged: int
    refused: int
    unacknowledged: int
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    alerts_expected: dict[str, int]
    alerts_received: dict[str, int]
    server_rss_mib: float | None
    memory_per_connection_kib: float | None
    timeline: list[tuple[int, int, int]]
    #: The server's CPU and stalls phase by phase (connect, idle, warm-up, steady, drain, close), when its pid is known.
    phases: list[Phase]
    connect_cpu_us_per_connection: float | None
    idle_cpu_us_per_socket_second: float | None
    close_cpu_us_per_connection: float | None
    #: Everything but the idle window and the closing, over every acknowledged message.
    total_cpu_us_per_message: float | None
    #: The largest event-loop lag the server measured over the whole run (None: it exposes none), and the largest part
    #: of one its thread was running through: its own stall, not another process's turn on the CPU.
    loop_lag_max_ms: float | None
    loop_busy_lag_max_ms: float | None


def check_server(spec: str) -> None:
    """Refuse a ``--server`` that names nothing this benchmark can run or reach."""
    kind, colon, store = spec.partition(":")
    if spec.startswith(("http://", "https://")) or spec in PEERS or (kind == "iothub" and (not colon or store in STORES)):
        return
    raise ValueError(f"--server {spec}: give iothub, iothub:<store> ({', '.join(STORES)}), baseline, node or a URL")


class BenchServer:
    """A server this benchmark started (``iothub``, ``iothub:<store>``, ``baseline`` or ``node``), stopped by its pid."""

    def __init__(self, spec: str, env: dict[str, str]) -> None:
        kind, _, store = spec.partition(":")
        #: The started iothub's SQLite folder, unless ``env`` names a file: the benchmark's rows stay out of data/.
        self.data: tempfile.TemporaryDirectory[str] | None = None
        port = free_port()
        if kind == "baseline":
            command: tuple[str, ...] = (sys.executable, str(BASELINE), "--port", str(port))
        elif kind == "node":
            command = nodepeer.command(port)
            env = {**env, **nodepeer.environment()}
        else:
            command = (*IOTHUB_SERVE, "--port", str(port))
            env = {**env, "IOTHUB_STORE": store} if store else dict(env)
            if "IOTHUB_DB_PATH" not in env:
                self.data = tempfile.TemporaryDirectory(prefix="iothub-bench-")
                env["IOTHUB_DB_PATH"] = str(Path(self.data.name) / "iothub.db")
        try:
            self.process = ServerProcess(command, port=port, env={"HOST": "127.0.0.1", **UNLIMITED_LOAD, **env})
        except ServerFailed as failed:
            self._remove_data()
            raise SystemExit(f"{spec} server did not start: {failed}") from None
        self.url = self.process.url
        self.pid = self.process.pid

    def stop(self) -> None:
        self.process.stop()
        self._remove_data()

    def _remove_data(self) -> None:
        if self.data is not None:
            self.data.cleanup()


def pin_threads(pid: int, cores: set[int]) -> None:
    """Keep every thread of process ``pid`` on ``cores``.

    Linux keeps an affinity per thread: pinning the pid alone would leave the threads the process
    already has (a store's writer, say) where they were, on the load's core perhaps."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cores)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(samples_ns)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1e6

    return {"p50": round(at(0.50), 3), "p99": round(at(0.99), 3), "max": round(ordered[-1] / 1e6, 3)}


class Probe:
    """Reads the server under test at a phase's edge: its CPU, memory and open files from /proc, its lag from ``/metrics``."""

    def __init__(self, session: aiohttp.ClientSession, url: str, pid: int | None) -> None:
        self.session = session
        self.url = url
        self.pid = pid

    async def read(self) -> Reading | None:
        if self.pid is None:
            return None
        try:
            async with self.session.get(self.url + "/metrics") as response:
                text = await response.text() if response.status == 200 else None
        except aiohttp.ClientError:
            text = None
        return reading(self.pid, text)

    def rss(self) -> int | None:
        return rss_bytes(self.pid) if self.pid else None

    def open_files(self) -> int | None:
        return len(os.listdir(f"/proc/{self.pid}/fd")) if self.pid else None

    async def let_go(self, files: int | None) -> None:
        """Wait, bounded, until the server holds no more open files than ``files``: it has closed the fleet's sockets."""
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while files is not None and time.monotonic() < deadline:
            if (self.open_files() or 0) <= files:
                return
            await asyncio.sleep(0.05)


async def drive(scenario: Scenario, url: str, pid: int | None, label: str, auth: dict[str, Any] | None = None) -> Result:
    rng = random.Random(7)
    tally = Tally()
    connections = scenario.devices + scenario.dashboards
    addresses = source_addresses(urlsplit(url).hostname or "", connections, ephemeral_ports() - SPARE_PORTS)
    per_address = -(-connections // len(addresses))
    pacing = Pacing()  # the load's own collector, paced as the server's: its stalls would count as latency
    pacing.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(pacing.stop)
        sessions = [
            await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(address, 0) if address else None))
            )
            for address in addresses
        ]
        probe = Probe(await stack.enter_async_context(aiohttp.ClientSession()), url, pid)
        dashboards = [Dashboard(sessions[i // per_address], url, owner_of(i, scenario.dashboards)) for i in range(scenario.dashboards)]
        devices = [
            Device(sessions[(scenario.dashboards + i) // per_address], url, i, scenario.dashboards, tally, rng)
            for i in range(scenario.devices)
        ]
        rss_before = probe.rss()
        marks = [await probe.read()]
        await start_all(dashboards, CONCURRENCY, auth)
        await start_all(devices, CONCURRENCY, auth)
        marks.append(await probe.read())
        rss_connected = probe.rss()
        print(f"[{label}] {len(devices)} devices and {len(dashboards)} dashboards connected", flush=True)
        if scenario.idle:
            await asyncio.sleep(scenario.idle)
        marks.append(await probe.read())

        stop_at = time.monotonic() + scenario.warmup + scenario.duration
        senders = [asyncio.create_task(_send_window(d, scenario.window, stop_at)) for d in devices] if scenario.window else [
            asyncio.create_task(_send_rate(d, scenario.devices / scenario.rate, stop_at, rng)) for d in devices
        ]
        await asyncio.sleep(scenario.warmup)
        for dashboard in dashboards:
            dashboard.latency_ns.clear()
        tally.ack_latency_ns.clear()
        marks.append(await probe.read())
        acked_start, delivered_start, started = tally.acked, _delivered(dashboards), time.monotonic()
        load_cpu_start = time.process_time()
        while time.monotonic() < stop_at:
            await asyncio.sleep(1)
            elapsed = time.monotonic() - started
            print(
                f"[{label}] {elapsed:5.1f}s acknowledged {tally.acked - acked_start:>8} "
                f"({(tally.acked - acked_start) / elapsed:>8.0f}/s) delivered {_delivered(dashboards) - delivered_start:>8}",
                flush=True,
            )
        elapsed = time.monotonic() - started
        load_cpu_share = (time.process_time() - load_cpu_start) / elapsed
        marks.append(await probe.read())
        acked_window = tally.acked - acked_start
        delivered_window = _delivered(dashboards) - delivered_start
        await asyncio.gather(*senders)
        await _drain(tally, dashboards, timeout=10)
        marks.append(await probe.read())
        rss_end = probe.rss()

        alerts_received: Counter[str] = Counter()
        for dashboard in dashboards:
            alerts_received.update(dashboard.alerts)
        delivered = _delivered(dashboards)
        latencies = [sample for dashboard in dashboards for sample in dashboard.latency_ns]
        seconds = sorted(set(tally.acked_per_second) | {s for d in dashboards for s in d.delivered_per_second})
        timeline = [
            (second - seconds[0], tally.acked_per_second[second], sum(d.delivered_per_second[second] for d in dashboards))
            for second in seconds
        ]
        members: tuple[Device | Dashboard, ...] = (*devices, *dashboards)
        files_open = probe.open_files()
        await close_all(members, CONCURRENCY)
        await probe.let_go(files_open - connections if files_open is not None else None)
        marks.append(await probe.read())
    costs = Costs(marks, connections)
    steady = costs.phase("steady")
    return Result(
        server=label,
        scenario=scenario,
        acked_per_second=round(acked_window / elapsed, 1),
        delivered_per_second=round(delivered_window / elapsed, 1),
        server_cpu_us_per_message=_per(costs.cpu_s("steady"), acked_window),
        server_cpu_share=round(steady.cpu_s / elapsed, 3) if steady else None,
        load_cpu_share=round(load_cpu_share, 3),
        latency_ms=percentiles(latencies),
        ack_latency_ms=percentiles(tally.ack_latency_ns),
        sent=tally.sent,
        acknowledged=tally.acked,
        refused=tally.failed,
        unacknowledged=tally.sent - tally.acked - tally.failed,
        delivered=delivered,
        lost=max(0, tally.acked - delivered),
        duplicated=sum(d.duplicates for d in dashboards),
        out_of_order=sum(d.out_of_order for d in dashboards),
        alerts_expected=dict(tally.alerts_sent),
        alerts_received=dict(alerts_received),
        server_rss_mib=round(rss_end / 2**20, 1) if rss_end else None,
        memory_per_connection_kib=(
            round((rss_connected - rss_before) / connections / 1024, 2) if rss_before is not None and rss_connected else None
        ),
        timeline=timeline,
        phases=costs.phases,
        connect_cpu_us_per_connection=costs.per_connection("connect"),
        idle_cpu_us_per_socket_second=costs.idle_per_socket_second() if scenario.idle else None,
        close_cpu_us_per_connection=costs.per_connection("close"),
        total_cpu_us_per_message=_per(costs.cpu_s("connect", "warm-up", "steady", "drain"), tally.acked),
        loop_lag_max_ms=costs.largest_ms(lambda last: last.lag),
        loop_busy_lag_max_ms=costs.largest_ms(lambda last: last.busy_lag),
    )


#: The phases between the benchmark's readings of the server, in order.
PHASES = ("connect", "idle", "warm-up", "steady", "drain", "close")


class Costs:
    """The phases between readings of the server (none when it was not read), and the figures made of them."""

    def __init__(self, marks: Sequence[Reading | None], connections: int) -> None:
        self.connections = connections
        known = [mark for mark in marks if mark is not None]
        self.phases = [phase(name, start, end) for name, start, end in zip(PHASES, known, known[1:])]
        self._by_name = {each.name: each for each in self.phases}
        self._last = known[-1] if known else None

    def phase(self, name: str) -> Phase | None:
        return self._by_name.get(name)

    def cpu_s(self, *names: str) -> float | None:
        phases = [self._by_name.get(name) for name in names]
        return sum(each.cpu_s for each in phases if each is not None) if all(phases) else None

    def per_connection(self, name: str) -> float | None:
        return _per(self.cpu_s(name), self.connections)

    def idle_per_socket_second(self) -> float | None:
        idle = self._by_name.get("idle")
        return _per(idle.cpu_s / idle.seconds, self.connections) if idle and idle.seconds else None

    def largest_ms(self, which: Callable[[Reading], Lag | None]) -> float | None:
        """The largest of ``which`` lag over the whole run, from the last reading."""
        lag = which(self._last) if self._last else None
        return round(lag.max_s * 1000, 3) if lag else None


def _per(cpu_s: float | None, count: int) -> float | None:
    """CPU seconds per item, in µs."""
    return round(cpu_s / count * 1e6, 2) if cpu_s is not None and count else None


def _delivered(dashboards: list[Dashboard]) -> int:
    return sum(dashboard.delivered for dashboard in dashboards)


async def _send_window(device: Device, window: int, stop_at: float) -> None:
    """Keep ``window`` messages in flight until ``stop_at``."""
    done = asyncio.get_running_loop().create_future()

    def next_message() -> None:
        if time.monotonic() < stop_at:
            device.send(next_message)
        elif device.in_flight == 0 and not done.done():
            done.set_result(None)

    for _ in range(window):
        device.send(next_message)
    try:
        await asyncio.wait_for(done, stop_at - time.monotonic() + 10)
    except TimeoutError:
        pass


async def _send_rate(device: Device, period: float, stop_at: float, rng: random.Random) -> None:
    """One message every ``period`` seconds, on a random phase, until ``stop_at`` (never sleeping past it)."""
    next_at = time.monotonic() + rng.uniform(0, period)
    while next_at < stop_at:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        device.send()
        next_at += period


async def _drain(tally: Tally, dashboards: list[Dashboard], timeout: float) -> None:
    """Wait, bounded, until every sent message is answered and every acknowledged one delivered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tally.acked + tally.failed >= tally.sent and _delivered(dashboards) >= tally.acked:
            return
        await asyncio.sleep(0.1)


def run(
    scenario: Scenario,
    servers: list[str],
    out_dir: Path,
    *,
    rounds: int = 1,
    pin: bool = True,
    pid: int | None = None,
    server_env: dict[str, str] | None = None,
) -> list[Result]:
    """Benchmark the servers in turn, ``rounds`` times; write the JSON (every run) and the chart (the first round)."""
    from . import report as benchreport

    cores = sorted(os.sched_getaffinity(0)) if pin else []
    results = []
    for round_number in range(1, rounds + 1):
        for server in servers:
            label = server if rounds == 1 else f"{server} #{round_number}"
            results.append(_run_one(scenario, server, label, cores=cores, pid=pid, server_env=server_env or {}))
        print(benchreport.table(results[-len(servers) :]))
    if rounds > 1:
        print(benchreport.rounds(results, servers))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    benchreport.write_json(results, stem.with_suffix(".json"))
    print(f"wrote {stem.with_suffix('.json')}")
    if benchreport.write_chart(results[: len(servers)], stem.with_suffix(".png")):
        print(f"wrote {stem.with_suffix('.png')}")
    else:
        print("no chart: install matplotlib (pip install -e '.[bench]')")
    return results


def _run_one(scenario: Scenario, server: str, label: str, *, cores: list[int], pid: int | None, server_env: dict[str, str]) -> Result:
    """Start ``server`` unless it is a URL, pin it to the first of ``cores`` and the load to the others, drive it."""
    from iothub.loop import new_event_loop

    started = None if server.startswith("http") else BenchServer(server, server_env)
    url, server_pid = (server, pid) if started is None else (started.url, started.pid)
    if len(cores) > 1 and server_pid:
        pin_threads(server_pid, {cores[0]})
        pin_threads(os.getpid(), set(cores[1:]))
    try:
        loop = new_event_loop()
        try:
            return loop.run_until_complete(drive(scenario, url, server_pid, label))
        finally:
            loop.close()
    finally:
        if started is not None:
            started.stop()


def _parser() -> argparse.ArgumentParser:
    bench = argparse.ArgumentParser(
        prog="iothub bench",
        description="Start the server(s) under test, drive a simulated fleet, report throughput, latency, CPU and memory.",
    )
    bench.add_argument("--scenario", choices=SCENARIOS, default="burst")
    bench.add_argument(
        "--server",
        action="append",
        help="iothub (default), iothub:<store> (that store: sqlite, mongodb or memory), baseline (plain python-socketio), "
        "node (the Node.js Socket.IO server in bench/node), or the URL of a running server; repeat to compare",
    )
    bench.add_argument("--rounds", type=int, default=1, help="run the servers in turn this many times; report the medians")
    bench.add_argument("--pid", type=int, help="pid of the server at --server URL, for its CPU and memory")
    bench.add_argument("--devices", type=int)
    bench.add_argument("--dashboards", type=int)
    bench.add_argument("--window", type=int, help="messages in flight per device")
    bench.add_argument("--rate", type=float, help="messages per second from the whole fleet (instead of --window)")
    bench.add_argument("--duration", type=float, help="seconds measured, after the warm-up")
    bench.add_argument("--idle", type=float, help="seconds with everything connected and nothing sent, measured before sending")
    bench.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of a started iothub (its SQLite file is a temporary one unless IOTHUB_DB_PATH is given)",
    )
    bench.add_argument("--out", default="bench/results", help="folder for the JSON and PNG (default bench/results)")
    bench.add_argument("--no-pin", action="store_true", help="do not pin the server and the load to separate cores")
    return bench


def main(argv: Sequence[str] | None = None) -> int:
    """``iothub bench`` and ``python -m bench``; ``iothub bench cluster …`` is :mod:`bench.cluster`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cluster"]:
        from .cluster import main as cluster

        return cluster(argv[1:])
    args = _parser().parse_args(argv)
    changes = {name: getattr(args, name) for name in ("devices", "dashboards", "window", "rate", "duration", "idle")}
    if args.rate is not None and args.window is None:
        changes["window"] = 0
    scenario = msgspec.structs.replace(SCENARIOS[args.scenario], **{k: v for k, v in changes.items() if v is not None})
    servers = args.server or ["iothub"]
    try:
        if not scenario.window and not scenario.rate:
            raise ValueError("give --window or --rate")
        if args.rounds < 1:
            raise ValueError("--rounds must be 1 or more")
        for server in servers:
            check_server(server)
        if any("=" not in item for item in args.server_env):
            raise ValueError("--server-env takes NAME=VALUE")
        raise_open_files(scenario.devices + scenario.dashboards)
    except ValueError as exc:
        print(f"iothub: {exc}", file=sys.stderr)
        return 2
    server_env = dict(item.split("=", 1) for item in args.server_env)
    run(scenario, servers, Path(args.out), rounds=args.rounds, pin=not args.no_pin, pid=args.pid, server_env=server_env)
    return 0
