"""Interop with the official JavaScript client, socket.io-client 4 from npm.

The seed's device and dashboard examples (``tests/interop/*.mjs``, kept as
close to the seed's JavaScript as a script that ends by itself allows) run
under Node.js against a real server, over the ``websocket`` and the
``polling`` transport, with the replies taken both ways PROTOCOL.md allows:
as acknowledgements (emit with a callback) and as reply events (plain emit,
``socket.on('telemetry_processed')``).

The scripts print what they send and receive as JSON lines; the assertions
here are on those lines. The dashboard's exit is deterministic: the server
handles a socket's events in order and queues the packets for a socket in
order, so the device's ``device_status`` "offline" (its disconnect) is the
last thing the dashboard gets, after every update and alert.

socket.io-client is installed with npm into a temporary folder, once a
session (the ``js`` fixture, in ``conftest.py``). If Node.js, npm or the
registry is missing, the tests fail (they do not skip): the interop is a
requirement.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from ..support.server import RunningServer, start_server, workers_of

#: One process, and a cluster of two gateways (tests/conftest.py).
TOPOLOGIES = ("process", "cluster")

# npm install may take up to NPM_TIMEOUT on a cold cache; the default 120 s per test is too short for that.
pytestmark = pytest.mark.timeout(300)

SCRIPTS = Path(__file__).parent
NPM_TIMEOUT = 180
#: The scripts' own watchdog; they print {"kind": "timeout"} and exit 2 when it fires.
SCRIPT_WATCHDOG_MS = 15_000
#: Our hard limit on a script process, above its watchdog.
SCRIPT_TIMEOUT = 20

TRANSPORTS = ["websocket", "polling"]
STYLES = ["event", "ack"]

POSITION = {"latitude": 40.7128, "longitude": -74.0060}
#: The seed's example reading plus sensors the server does not know, which must reach dashboards unchanged.
NORMAL = {
    "engineRpm": 2500,
    "speed": 65,
    "fuelLevel": 75,
    "batteryVoltage": 12.5,
    "crashDetection": 0,
    "dtc": 0,
    "position": POSITION,
    "cabinTemperature": 21.5,
    "customSensor": {"humidity": 40, "doorOpen": False, "tags": ["fleet-7", "night shift"], "label": "Ünïcødé ✓"},
    "trailerId": None,
}
#: Fires LOW_BATTERY only.
LOW_BATTERY = {
    "engineRpm": 800,
    "speed": 0,
    "fuelLevel": 60,
    "batteryVoltage": 11.2,
    "crashDetection": 0,
    "dtc": 0,
    "position": POSITION,
}
#: Fires CRASH_DETECTED only.
CRASH = {
    "engineRpm": 0,
    "speed": 0,
    "fuelLevel": 58,
    "batteryVoltage": 12.6,
    "crashDetection": 1,
    "dtc": 0,
    "position": POSITION,
}
#: What the device sends, in order (a heartbeat goes after the first).
READINGS = [NORMAL, LOW_BATTERY, CRASH]

LOW_BATTERY_ALERT = {"level": "warning", "message": "Low battery voltage detected", "code": "LOW_BATTERY"}
CRASH_ALERT = {"level": "critical", "message": "Crash detected!", "code": "CRASH_DETECTED"}
TELEMETRY_PROCESSED = {"success": True, "message": "Telemetry processed successfully"}


def registered(imei: str) -> dict[str, Any]:
    return {"success": True, "imei": imei, "message": "Device registered successfully"}


# --------------------------------------------------------------------------- running the scripts


@dataclass
class Run:
    """One finished script: its exit code and its stdout as JSON objects."""

    returncode: int
    lines: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind!r} line:\n{self}"
        return found[0]

    def received(self) -> list[tuple[str, Any]]:
        """The events the server sent this socket, in arrival order."""
        return [(line["event"], line["payload"]) for line in self.of("event")]

    def acks(self) -> list[tuple[str, Any]]:
        return [(line["event"], line["payload"]) for line in self.of("ack")]

    def __str__(self) -> str:
        text = "\n".join(json.dumps(line) for line in self.lines)
        return f"exit code {self.returncode}\n--- stdout\n{text}\n--- stderr\n{self.stderr}"


def parse_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                pytest.fail(f"a script printed a line that is not JSON: {raw!r}\n--- all of stdout\n{text}")
    return lines


@dataclass
class JsClient:
    """socket.io-client installed in ``folder`` next to copies of the interop scripts."""

    folder: Path | None
    node: str | None
    version: str | None
    problem: str | None

    def ready(self) -> tuple[str, Path]:
        if self.problem is not None:
            pytest.fail(self.problem, pytrace=False)
        assert self.node is not None and self.folder is not None
        return self.node, self.folder

    def environment(self, style: str, token: str | None) -> dict[str, str]:
        env = {**os.environ, "IOTHUB_STYLE": style, "IOTHUB_TIMEOUT_MS": str(SCRIPT_WATCHDOG_MS)}
        env.pop("IOTHUB_TOKEN", None)
        env.pop("IOTHUB_TELEMETRY", None)
        if token is not None:
            env["IOTHUB_TOKEN"] = token
        return env

    def device(
        self,
        url: str,
        transport: str,
        imei: str,
        email: str,
        *,
        style: str = "event",
        token: str | None = None,
        readings: list[dict[str, Any]] = READINGS,
    ) -> Run:
        env = self.environment(style, token)
        env["IOTHUB_TELEMETRY"] = json.dumps(readings)
        return self.run("device.mjs", [url, transport, imei, email], env)

    def fleet(self, url: str, count: int, email: str, first_imei: str) -> Run:
        """fleet.mjs: ``count`` devices and a dashboard, socket.io-client's default options."""
        return self.run("fleet.mjs", [url, str(count), email, first_imei], self.environment("ack", None))

    def run(self, script: str, args: list[str], env: dict[str, str]) -> Run:
        """One script to its end (failing the test past SCRIPT_TIMEOUT), its stdout as JSON lines."""
        node, folder = self.ready()
        try:
            done = subprocess.run([node, str(folder / script), *args], cwd=folder, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired as expired:
            pytest.fail(f"{script} did not end within {SCRIPT_TIMEOUT} s; it printed:\n{_text(expired.stdout)}")
        return Run(done.returncode, parse_lines(done.stdout), done.stderr)

    def dashboard(
        self, url: str, transport: str, email: str, imei: str | None = None, *, style: str = "event", token: str | None = None
    ) -> Dashboard:
        node, folder = self.ready()
        args = [node, str(folder / "dashboard.mjs"), url, transport, email] + ([imei] if imei else [])
        return Dashboard(args, folder, self.environment(style, token))


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


class Dashboard:
    """dashboard.mjs running in the background; its stdout read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stderr = self.process.stderr
        assert stderr is not None  # stderr=PIPE
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=lambda: self._stderr.append(stderr.read()), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None  # stdout=PIPE
        for raw in self.process.stdout:
            self._queue.put(raw)
        self._queue.put(None)

    def _take(self, raw: str) -> dict[str, Any]:
        (line,) = parse_lines(raw) or [{"kind": "blank"}]
        self.lines.append(line)
        return line

    def wait_ready(self) -> dict[str, Any]:
        """Block until the subscription is answered (the "ready" line); fail on anything else."""
        while True:
            try:
                raw = self._queue.get(timeout=SCRIPT_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"dashboard.mjs was not subscribed within {SCRIPT_TIMEOUT} s:\n{self.finish(kill=True)}")
            if raw is None:
                pytest.fail(f"dashboard.mjs ended before it was subscribed:\n{self.finish()}")
            line = self._take(raw)
            if line["kind"] == "ready":
                return line

    def finish(self, kill: bool = False) -> Run:
        """Wait for the script to end by itself (or end it, with ``kill``) and return all it printed."""
        if kill and self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(SCRIPT_TIMEOUT)
        while True:
            try:
                raw = self._queue.get_nowait()
            except queue.Empty:
                break
            if raw is not None:
                self._take(raw)
        return Run(self.process.returncode, self.lines, "".join(self._stderr))

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            assert stream is not None  # both are pipes
            stream.close()


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, topology: str) -> Iterator[RunningServer]:
    """One production server (tokens required) for this module's auth tests."""
    running = start_server(tmp_path_factory.mktemp("server"), IOTHUB_ENV="production", workers=workers_of(topology))
    yield running
    running.stop()


# --------------------------------------------------------------------------- the checks


def check_device(run: Run, transport: str, imei: str, email: str, style: str) -> list[int]:
    """The device ran its whole sequence and got every reply, the way it asked; return its telemetry timestamps."""
    assert run.returncode == 0, f"device.mjs failed:\n{run}"
    assert run.one("connect")["transport"] == transport, run
    assert run.one("done")["transport"] == transport, run

    sent = run.of("sent")
    assert [line["event"] for line in sent] == [
        "register_device",
        "telemetry_data",
        "heartbeat",
        "telemetry_data",
        "telemetry_data",
    ], run
    assert sent[0]["payload"] == {"imei": imei, "userEmail": email}
    telemetry = [line["payload"] for line in sent if line["event"] == "telemetry_data"]
    assert [message["data"] for message in telemetry] == READINGS, "JSON round trip through the script changed the data"
    assert all(message["imei"] == imei for message in telemetry)
    timestamps = [message["timestamp"] for message in telemetry]
    assert all(isinstance(t, int) for t in timestamps) and timestamps == sorted(timestamps), timestamps

    if style == "ack":
        # The reply is the acknowledgement's payload, and nothing else is emitted.
        acks = run.acks()
        assert [event for event, _ in acks] == [
            "register_device",
            "telemetry_data",
            "heartbeat",
            "telemetry_data",
            "telemetry_data",
        ], run
        assert acks[0][1] == registered(imei)
        assert [payload for event, payload in acks if event == "telemetry_data"] == [TELEMETRY_PROCESSED] * 3
        heartbeat = acks[2][1]
        assert heartbeat == {"success": True, "imei": imei, "timestamp": heartbeat["timestamp"]}
        assert isinstance(heartbeat["timestamp"], int)
        assert run.one("start")["now"] <= heartbeat["timestamp"] <= run.one("done")["now"]
        assert run.received() == [], f"a client that asked for acknowledgements got events too:\n{run}"
    else:
        # The seed's way: plain emits, replies as events; the heartbeat has no reply event.
        assert run.received() == [
            ("device_registered", registered(imei)),
            ("telemetry_processed", TELEMETRY_PROCESSED),
            ("telemetry_processed", TELEMETRY_PROCESSED),
            ("telemetry_processed", TELEMETRY_PROCESSED),
        ], run
        assert run.acks() == []
    return timestamps


def check_subscription(run: Run, style: str, expected: dict[str, Any]) -> list[tuple[str, Any]]:
    """The subscription was answered with ``expected``, the way it was asked; return the other events."""
    events = run.received()
    if style == "ack":
        assert run.acks() == [("subscribe_user", expected)], run
        assert "user_subscribed" not in [event for event, _ in events], run
        return events
    assert run.acks() == []
    assert events[:1] == [("user_subscribed", expected)], run
    return events[1:]


def check_dashboard(run: Run, transport: str, imei: str, email: str, style: str, timestamps: list[int], device: Run) -> None:
    """The dashboard got exactly: online, three updates with their alerts, offline."""
    assert run.returncode == 0, f"dashboard.mjs failed:\n{run}"
    assert run.one("connect")["transport"] == transport, run
    assert run.one("done")["transport"] == transport, run
    assert run.one("ready")["success"] is True
    stream = check_subscription(run, style, {"success": True, "email": email, "deviceCount": 0, "telemetries": []})

    names = [event for event, _ in stream]
    assert names == [
        "device_status",
        "telemetry_update",
        "telemetry_update",
        "vehicle_alert",
        "telemetry_update",
        "crash_detected",
        "device_status",
    ], run
    online, offline = stream[0][1], stream[-1][1]
    for status, payload in (("online", online), ("offline", offline)):
        assert payload == {"type": "device_status", "imei": imei, "status": status, "timestamp": payload["timestamp"]}
        assert isinstance(payload["timestamp"], int)
    # The server's clock and Node's are the same machine's.
    assert device.one("start")["now"] <= online["timestamp"] <= offline["timestamp"] <= run.one("done")["now"]

    normal, low, crash = timestamps
    assert stream[1:6] == [
        ("telemetry_update", {"type": "telemetry_update", "imei": imei, "timestamp": normal, "data": NORMAL}),
        ("telemetry_update", {"type": "telemetry_update", "imei": imei, "timestamp": low, "data": LOW_BATTERY}),
        (
            "vehicle_alert",
            {"type": "vehicle_alert", "imei": imei, "timestamp": low, "data": LOW_BATTERY, "alert": LOW_BATTERY_ALERT},
        ),
        ("telemetry_update", {"type": "telemetry_update", "imei": imei, "timestamp": crash, "data": CRASH}),
        ("crash_detected", {"type": "crash_detected", "imei": imei, "timestamp": crash, "data": CRASH, "alert": CRASH_ALERT}),
    ], run
    # Spelled out: the sensors the server does not know arrived as they were sent.
    update = stream[1][1]["data"]
    assert update["customSensor"] == NORMAL["customSensor"] and update["cabinTemperature"] == 21.5
    assert "trailerId" in update and update["trailerId"] is None


def seed_flow(js: JsClient, url: str, transport: str, imei: str, email: str, style: str, tokens: tuple[str, str] | None = None) -> None:
    """Dashboard subscribes, device registers, sends, heartbeats and leaves; check both sides."""
    device_token, user_token = tokens or (None, None)
    with js.dashboard(url, transport, email, imei, style=style, token=user_token) as dashboard:
        dashboard.wait_ready()
        device = js.device(url, transport, imei, email, style=style, token=device_token)
        timestamps = check_device(device, transport, imei, email, style)
        board = dashboard.finish()
    check_dashboard(board, transport, imei, email, style, timestamps, device)

    # A dashboard that subscribes afterwards finds the device's last reading, offline.
    with js.dashboard(url, transport, email, style=style, token=user_token) as late:
        late.wait_ready()
        snapshot = late.finish()
    assert snapshot.returncode == 0, snapshot
    rest = check_subscription(
        snapshot,
        style,
        {
            "success": True,
            "email": email,
            "deviceCount": 1,
            "telemetries": [{"imei": imei, "timestamp": timestamps[-1], "data": CRASH, "connected": False}],
        },
    )
    assert rest == [], snapshot


@contextlib.contextmanager
def server_log_on_failure(server: RunningServer) -> Iterator[None]:
    """Add whether the server still runs, and the end of its log, to a failure's message."""
    try:
        yield
    except (AssertionError, pytest.fail.Exception) as failure:
        state = "running" if server.process.poll() is None else f"exited with {server.process.returncode}"
        pytest.fail(f"{failure}\n--- server ({state}), end of its log\n{server.log()[-4000:]}", pytrace=False)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_seed_device_and_dashboard(js, server, imei, email, transport: str, style: str) -> None:
    with server_log_on_failure(server):
        seed_flow(js, server.url, transport, imei(), email(), style)


@pytest.fixture(scope="module")
def compressing(tmp_path_factory: pytest.TempPathFactory, topology: str) -> Iterator[RunningServer]:
    """A server that offers permessage-deflate (IOTHUB_WS_COMPRESSION=true)."""
    running = start_server(tmp_path_factory.mktemp("server"), IOTHUB_WS_COMPRESSION="true", workers=workers_of(topology))
    yield running
    running.stop()


def test_with_compression_on_the_official_client_agrees_deflate_and_the_whole_flow_works(js, compressing, imei, email) -> None:
    """The `ws` library under socket.io-client offers permessage-deflate: every frame the server sends it is deflated."""
    with server_log_on_failure(compressing):
        device = js.device(compressing.url, "websocket", imei(), email(), style="ack")
        assert device.returncode == 0, device
        assert device.one("connect")["extensions"].startswith("permessage-deflate"), device
        seed_flow(js, compressing.url, "websocket", imei(), email(), "ack")


def test_twenty_clients_with_the_default_options_all_connect_upgrade_and_deliver(js, server, email) -> None:
    """Polling first, then the upgrade: against two gateways, a poll or an upgrade may land on either."""
    owner, first = email(), "356938035640000"
    with server_log_on_failure(server):
        run = js.fleet(server.url, 20, owner, first)
        summary = run.one("done")
        assert run.returncode == 0, run
    assert (summary["connected"], summary["acknowledged"], summary["upgraded"]) == (20, 20, 20), summary
    assert sorted(summary["updates"]) == [str(int(first) + index) for index in range(20)]
    assert summary["errors"] == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_production_accepts_handshake_tokens(js, production, imei, email, transport: str) -> None:
    """socket.io-client's ``auth: {token}``: a device token registers its imei, a user token subscribes its e-mail."""
    device, owner = imei(), email()
    tokens = (production.token(owner, "device", device), production.token(owner, "user"))
    with server_log_on_failure(production):
        seed_flow(js, production.url, transport, device, owner, "event", tokens)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_production_refuses_sockets_without_a_valid_token(js, production, imei, email, transport: str) -> None:
    device, owner = imei(), email()
    forged = jwt.encode({"email": owner, "role": "device", "imei": device, "exp": 4102444800}, "not-the-server-secret-" * 3)
    cases = [
        (None, "a token is required: connect with auth: {token}"),
        (forged, "token is not valid"),
    ]
    for token, message in cases:
        for run in (
            js.device(production.url, transport, device, owner, token=token),
            _finished(js.dashboard(production.url, transport, owner, device, token=token)),
        ):
            assert run.returncode == 3, f"expected connect_error (exit code 3):\n{run}"
            assert run.one("connect_error") == {"kind": "connect_error", "message": message, "data": {"code": "UNAUTHORIZED"}}
            assert run.of("connect") == [] and run.received() == [], run


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_production_tokens_cover_only_their_own_imei_and_email(js, production, imei, email, transport, style) -> None:
    device, other, owner = imei(), imei(), email()
    run = js.device(production.url, transport, other, owner, style=style, token=production.token(owner, "device", device))
    assert run.returncode == 4, f"expected the registration to be refused (exit code 4):\n{run}"
    refused = run.one("refused")
    assert refused["event"] == "register_device"
    assert refused["payload"] == {"success": False, "code": "FORBIDDEN", "message": refused["payload"]["message"]}
    assert isinstance(refused["payload"]["message"], str) and refused["payload"]["message"]
    assert run.of("connect") != [], "the socket itself was accepted"
    if style == "ack":
        assert run.acks() == [("register_device", refused["payload"])] and run.received() == [], run
    else:
        assert run.received() == [("error", refused["payload"])] and run.acks() == [], run

    with js.dashboard(production.url, transport, email(), style=style, token=production.token(owner, "user")) as dashboard:
        assert dashboard.wait_ready()["success"] is False
        board = dashboard.finish()
    assert board.returncode == 0, board
    failure = (board.acks() if style == "ack" else board.received())[0][1]
    assert failure == {"success": False, "code": "FORBIDDEN", "message": failure["message"]}, board
    assert [event for event, _ in board.received()] == ([] if style == "ack" else ["error"]), board


def _finished(dashboard: Dashboard) -> Run:
    with dashboard:
        return dashboard.finish()
