"""``iothub bench``'s servers: which store a started iothub uses, where its rows go, bad --server values, and a
small fleet through iothub and through the Node peer.

The servers here are real ``iothub serve`` processes started the way the
benchmark starts them, without any load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.addresses import source_addresses
from bench.fleet import BenchServer, Scenario, drive, pin_threads
from iothub.cli import main


def status(server: BenchServer) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/api/realtime/status", timeout=10) as response:
        return json.loads(response.read())["data"]


@pytest.fixture
def started() -> Any:
    """``started(spec, env)``: a benchmark server, stopped at the end."""
    servers: list[BenchServer] = []

    def start(spec: str, env: dict[str, str] | None = None) -> BenchServer:
        servers.append(BenchServer(spec, env or {}))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_a_started_iothub_writes_to_a_temporary_file_removed_when_it_stops(started, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # where the default data/iothub.db would land
    server = started("iothub")
    database = Path(server.data.name) / "iothub.db"
    assert status(server)["store"] == "sqlite"
    assert database.is_file()
    server.stop()
    assert not database.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_store_after_the_colon_is_that_servers_store(started, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert status(started("iothub:memory"))["store"] == "memory"
    assert status(started("iothub:sqlite"))["store"] == "sqlite"


def test_a_database_given_in_server_env_is_used_and_kept(started, tmp_path) -> None:
    database = tmp_path / "kept" / "bench.db"
    server = started("iothub", {"IOTHUB_DB_PATH": str(database)})
    assert server.data is None
    server.stop()
    assert database.is_file()


def test_a_server_that_does_not_start_says_why_and_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit, match=r"iothub:mongodb server did not start: .*IOTHUB_STORE=mongodb needs MONGODB_URI"):
        BenchServer("iothub:mongodb", {})
    assert list(tmp_path.iterdir()) == []


def test_pinning_a_server_pins_every_thread_it_has(started, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    server = started("iothub")  # open by now: its SQLite writer and reader threads exist
    core = min(os.sched_getaffinity(0))
    pin_threads(server.pid, {core})
    threads = list(Path(f"/proc/{server.pid}/task").iterdir())
    assert len(threads) >= 3
    assert {int(thread.name): os.sched_getaffinity(int(thread.name)) for thread in threads} == {
        int(thread.name): {core} for thread in threads
    }


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--server", "iothub:postgres"], "--server iothub:postgres: give iothub, iothub:<store> (sqlite, mongodb, memory)"),
        (["--server", "iothub:"], "--server iothub:: give iothub"),
        (["--server", "nginx"], "--server nginx: give iothub"),
        (["--rounds", "0"], "--rounds must be 1 or more"),
        (["--server-env", "IOTHUB_STORE"], "--server-env takes NAME=VALUE"),
        (["--rate", "0", "--window", "0"], "give --window or --rate"),
    ],
)
def test_bad_bench_arguments_are_refused_before_anything_starts(arguments: list[str], message: str, capsys) -> None:
    assert main(["bench", "--out", "/nonexistent/never-written", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_the_cluster_benchmark_places_its_load_and_measures_every_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``iothub bench cluster``, small: two gateways with half the deliveries crossing, the load in two Ray actors."""
    arguments = ["--workers", "2", "--crossing", "worst", "--devices", "40", "--owners", "4", "--rate", "200", "--duration", "2"]
    assert main(["bench", "cluster", *arguments, "--load-workers", "2", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("cluster-*.json")
    result, alone = json.loads(written.read_text())
    assert (alone["workers"], alone["config"]) == (1, "1 process, 1/2 of the load"), "the process each gateway is compared with"
    assert alone["connections_by_gateway"] == {"gateway-0": 22}
    assert result["gateway_efficiency"] == round(alone["cpu_us_per_delivered"] / result["cpu_us_per_delivered"], 3)
    assert result["workers"] == 2 and result["load_workers"] == 2
    assert result["connections_by_gateway"] == {"gateway-0": 22, "gateway-1": 22}, "each owner's dashboard on one, its devices on both"
    assert 0.3 < result["crossed_share"] < 0.7
    assert (result["lost"], result["duplicated"], result["out_of_order"]) == (0, 0, 0)
    assert result["delivered_per_second"] > 0 and result["cpu_us_per_delivered"] > 0
    assert {"gateways", "supervisor", "driver"} <= result["cpu_by_role"].keys()
    assert "connections by gateway" in capsys.readouterr().out


def test_a_cpu_budget_holds_the_server_to_its_cores(tmp_path: Path) -> None:
    """``--cpu-budget``: the server's processes get no more than the budget, and a window of messages in flight
    uses it up — what makes throughputs comparable as if each configuration had cores of its own."""
    arguments = ["--workers", "1", "--devices", "40", "--owners", "4", "--window", "2", "--duration", "3", "--cpu-budget", "0.1"]
    assert main(["bench", "cluster", *arguments, "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("cluster-*.json")
    (result,) = json.loads(written.read_text())
    assert result["budget_cores"] == 0.1
    assert result["cpu_cores"] <= 0.1 * 1.1, "the quota caps the server's CPU"
    assert result["throttled_share"] > 0.5, "saturated: the budget, not the load, decided the throughput"
    assert (result["lost"], result["duplicated"], result["out_of_order"]) == (0, 0, 0)
    cgroups = Path("/sys/fs/cgroup")
    assert not [*cgroups.glob("iothub-bench-*"), *cgroups.glob("*/iothub-bench-*")], "the cgroup is removed with its server"


@pytest.mark.parametrize("budget", ["0", "-1"])
def test_a_cpu_budget_of_no_cores_is_refused(budget: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "cluster", "--cpu-budget", budget])
    assert exited.value.code == 2 and "--cpu-budget: a CPU budget is a positive number of cores" in capsys.readouterr().err


async def test_a_spread_source_address_reaches_a_server_on_loopback(in_process) -> None:
    served = await in_process()
    address = source_addresses("127.0.0.1", 2, 1)[1]
    assert address is not None
    endpoint = served.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) as session,
        session.ws_connect(endpoint) as ws,
    ):
        assert ws.get_extra_info("sockname")[0] == address
        assert (await ws.receive_str(timeout=5)).startswith("0{")  # Engine.IO's open packet


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="the Node peer needs node and npm")
@pytest.mark.parametrize("spec", ["iothub:memory", "node"])
async def test_a_small_fleet_through_a_started_server_is_answered_delivered_and_costed(started, spec: str) -> None:
    server = started(spec)
    scenario = Scenario(name="tiny", devices=20, dashboards=4, rate=40, duration=1, warmup=0.5, idle=0.5)
    result = await drive(scenario, server.url, server.pid, spec)
    assert result.acknowledged == result.sent > 0 and result.refused == 0
    assert (result.lost, result.duplicated, result.out_of_order) == (0, 0, 0)
    assert result.alerts_received == result.alerts_expected
    assert [phase.name for phase in result.phases] == ["connect", "idle", "warm-up", "steady", "drain", "close"]
    assert all(phase.largest_stall_ms is not None for phase in result.phases)  # both expose the event loop's lag
    assert result.loop_lag_max_ms is not None and result.connect_cpu_us_per_connection is not None
