"""``--ray-address``: the gateways join a Ray cluster someone started (``ray start --head``), instead of a local one.

The head runs in the foreground (``--block``) in a session of its own, so the
test stops exactly the processes it started: its process group, by id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.server import RunningServer, free_port, start_server

RAY = str(Path(sys.executable).with_name("ray"))
#: Ray's token authentication, as a cluster started with `ray start` has it: the driver must use it too
#: (the token is the one in ~/.ray/auth_token, made by the first Ray of this machine).
TOKEN_AUTH = {"RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("ray") / "head.log").open("w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **TOKEN_AUTH},
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        log.close()


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory, ray_head: str) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("joined"), workers=2, RAY_ADDRESS=ray_head, RAY_AUTH_MODE=TOKEN_AUTH["RAY_AUTH_MODE"])
    yield running
    assert running.stop() == 0


async def test_the_gateways_run_on_the_named_cluster_and_serve_as_one(joined, ray_head, open_client, imei, email) -> None:
    assert f"on the Ray cluster at {ray_head}" in joined.log()
    gateways = joined.wait_for_gateways(2)
    assert [gateway["id"] for gateway in gateways] == ["gateway-0", "gateway-1"]
    here, there = joined.gateway_addresses()["gateway-0"], joined.gateway_addresses()["gateway-1"]
    owner, box = email(), imei()
    dashboard = await open_client(here)
    await dashboard.subscribe(owner)
    device = await open_client(there)
    await device.register(box, owner)
    await device.telemetry(box, {"speed": 3})
    assert (await dashboard.wait_event("telemetry_update"))["data"] == {"speed": 3}
