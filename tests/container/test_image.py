"""The container image: built from the Dockerfile, its own entry command started in its filesystem.

Containers cannot run on the CI machine (the runtime is refused setrlimit and cgroups)
and no registry can be reached, but images can be built. So the image is built with
podman FROM a Debian base made here by mmdebstrap, its filesystem is exported, and its
declared entry command is started in it the way `docker run` would: the image's
environment, user and working directory, as PID 1 of a PID namespace of its own (a
PID 1 gets `docker stop`'s SIGTERM only if it handles it). Only HOST and PORT are
overridden, to stay on loopback on a free port. A real Socket.IO client then drives it.

podman's storage is build/container/ in the clone (`make clean` removes it); the base
image is kept there and reused. Every missing tool fails the test: it never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import socketio

REPO = Path(__file__).resolve().parents[2]
STATE = REPO / "build" / "container"
BASE_IMAGE = "localhost/debian:bookworm-base"
IMAGE = "localhost/iothub:test"
#: How the host reaches Debian (its mirrors); mmdebstrap's default mirror where absent.
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
#: The host's apt settings that decide whether it reaches its mirror (a proxy, an old snapshot).
HOST_APT_OPTIONS = ("Acquire::http::Proxy", "Acquire::https::Proxy", "Acquire::Check-Valid-Until", "Acquire::Check-Date")
#: What lets pip inside the build reach the package index as the host's pip does.
LENT_TO_BUILD = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pip.conf"))
#: C compiler drivers and the compiler proper, with or without a target prefix or version.
COMPILER = re.compile(r"(?:[\w.+-]+-)?(?:gcc|g\+\+|cc|c\+\+|clang|clang\+\+|tcc|cc1|cc1plus)(?:-[\d.]+)?")
IMEI = "123456789012345"
OWNER = "owner@example.com"

pytestmark = pytest.mark.timeout(600)


class ImageUser(NamedTuple):
    name: str
    uid: int
    gid: int


class ImageServer(NamedTuple):
    url: str
    pid: int  # the server's, as the host sees it
    launcher: subprocess.Popen[bytes]  # unshare, its parent, which exits with its status
    env: dict[str, str]
    log: Path


def run(*command: str, timeout: float) -> str:
    """Run a command; its stdout, or a test failure that shows the end of its output (a build's is on stdout)."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command[:4])} … exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def podman() -> list[str]:
    """The podman command with its storage inside the clone."""
    if os.geteuid() != 0:
        pytest.fail("the image test needs root (mmdebstrap, podman's storage, entering the image's root)")
    missing = [tool for tool in ("podman", "mmdebstrap", "unshare", "tar", "apt-config") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)} (apt-get install podman mmdebstrap)")
    return ["podman", "--root", str(STATE / "storage"), "--runroot", str(STATE / "run")]


@pytest.fixture(scope="module")
def base_image(podman: list[str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Debian bookworm with python3, made here because no registry can be reached."""
    if subprocess.run([*podman, "image", "exists", BASE_IMAGE], check=False).returncode == 0:
        return BASE_IMAGE
    work = tmp_path_factory.mktemp("base")
    command = ["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates"]
    options = run("apt-config", "dump", *HOST_APT_OPTIONS, timeout=30)
    if options:
        (work / "host.conf").write_text(options)
        command.append(f"--aptopt={work / 'host.conf'}")
    command += ["bookworm", str(work / "rootfs.tar")]
    if HOST_SOURCES.is_file():
        command.append(str(HOST_SOURCES))
    try:
        run(*command, timeout=300)
        run(*podman, "import", str(work / "rootfs.tar"), BASE_IMAGE, timeout=120)
    finally:
        shutil.rmtree(work)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(podman: list[str], base_image: str) -> dict[str, Any]:
    """The Dockerfile built FROM the local base, as `podman image inspect` describes it.

    Docker format, as the OCI format has no HEALTHCHECK. The host's CA bundle and pip
    configuration are lent read-only to the build's RUN steps, not copied into the image.
    """
    lent = [f"--volume={path}:{path}:ro" for path in LENT_TO_BUILD if path.is_file()]
    run(
        *podman, "build", "--isolation=chroot", "--format=docker", "--pull=never",
        f"--build-arg=BASE={base_image}", *lent, f"--tag={IMAGE}", str(REPO),
        timeout=480,
    )
    return json.loads(run(*podman, "image", "inspect", IMAGE, timeout=30))[0]


@pytest.fixture(scope="module")
def rootfs(podman: list[str], image: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's filesystem as `podman export` gives it, unpacked with its numeric owners."""
    work = tmp_path_factory.mktemp("image")
    root = work / "root"
    root.mkdir()
    container = run(*podman, "create", "--no-healthcheck", IMAGE, timeout=60).strip()
    try:
        run(*podman, "export", f"--output={work / 'image.tar'}", container, timeout=120)
    finally:
        run(*podman, "rm", container, timeout=60)
    run("tar", "--extract", "--numeric-owner", "--same-owner", f"--file={work / 'image.tar'}", f"--directory={root}", timeout=120)
    (work / "image.tar").unlink()
    yield root
    shutil.rmtree(work)


@pytest.fixture(scope="module")
def user(image: dict[str, Any], rootfs: Path) -> ImageUser:
    """The image's USER resolved against its own /etc/passwd and /etc/group, as a runtime does."""
    spec = image["Config"].get("User") or "root"
    name_or_id, _, group = spec.partition(":")
    passwd = [line.split(":") for line in (rootfs / "etc/passwd").read_text().splitlines() if line]
    entry = next((fields for fields in passwd if name_or_id in (fields[0], fields[2])), None)
    assert entry is not None, f"USER {spec} is not in the image's /etc/passwd"
    if not group:
        return ImageUser(entry[0], int(entry[2]), int(entry[3]))
    if group.isdigit():
        return ImageUser(entry[0], int(entry[2]), int(group))
    groups = [line.split(":") for line in (rootfs / "etc/group").read_text().splitlines() if line]
    return ImageUser(entry[0], int(entry[2]), next(int(fields[2]) for fields in groups if fields[0] == group))


def in_image(root: Path, config: dict[str, Any], user: ImageUser, argv: list[str], *, pid_one: bool = False) -> list[str]:
    """``argv`` run in the image's filesystem, working directory and user, with no supplementary groups.

    ``pid_one``: as PID 1 of a new PID namespace with its own /proc, as in a container;
    the mount of /proc lives in a private mount namespace and goes when the process does.
    """
    namespaces = ["--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc=/proc"] if pid_one else []
    return [
        shutil.which("unshare") or "unshare", *namespaces, f"--root={root}", f"--wd={config.get('WorkingDir') or '/'}",
        "--setgid", str(user.gid), "--setuid", str(user.uid), "--", *argv,
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def image_server(image: dict[str, Any], rootfs: Path, user: ImageUser, tmp_path: Path) -> Iterator[ImageServer]:
    """The image's ENTRYPOINT and CMD, started with its ENV (HOST and PORT overridden); stopped by pid."""
    config = image["Config"]
    port = free_port()
    env = dict(item.split("=", 1) for item in config.get("Env", [])) | {"HOST": "127.0.0.1", "PORT": str(port)}
    argv = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        launcher = subprocess.Popen(in_image(rootfs, config, user, argv, pid_one=True), env=env, stdout=out, stderr=subprocess.STDOUT)
    pid: int | None = None
    try:
        pid = _child_of(launcher, log)
        server = ImageServer(f"http://127.0.0.1:{port}", pid, launcher, env, log)
        _wait_healthy(server)
        yield server
    finally:
        _stop(launcher, pid)


def _child_of(launcher: subprocess.Popen[bytes], log: Path) -> int:
    """The server's pid: the only child of unshare --fork."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            pytest.fail(f"the entry command exited {launcher.returncode}:\n{log.read_text()}")
        pids = children.read_text().split()
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    pytest.fail("unshare started no child")


def _wait_healthy(server: ImageServer) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.launcher.poll() is not None:
            pytest.fail(f"the server exited {server.launcher.returncode}:\n{server.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"no answer on {server.url}/health within 30 s:\n{server.log.read_text()}")


def _stop(launcher: subprocess.Popen[bytes], pid: int | None) -> None:
    """SIGTERM to the server, SIGKILL if it lingers; unshare, which ignores both while it waits, then exits."""
    if launcher.poll() is not None:
        return
    if pid is None:  # SIGKILL to unshare: its --kill-child sends the server SIGTERM
        launcher.kill()
        launcher.wait(timeout=20)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        launcher.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        launcher.wait(timeout=10)


def test_the_image_declares_what_operators_rely_on(image: dict[str, Any]) -> None:
    config = image["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert set(config["ExposedPorts"]) == {"6162/tcp"}
    assert env["PORT"] == "6162"
    assert env["HOST"] == "0.0.0.0", "a container's server must listen on every interface"
    assert env["IOTHUB_DB_PATH"].startswith("/data/")
    assert set(config["Volumes"]) == {"/data"}
    assert [*config["Entrypoint"], *config["Cmd"]] == ["iothub", "serve"]
    assert image["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL")


def test_the_image_holds_the_compiled_server_and_no_compiler(rootfs: Path) -> None:
    named_like_compilers = [
        Path(directory, name)
        for directory, subdirectories, files in os.walk(rootfs)  # links not followed: absolute ones point into the host
        for name in (*subdirectories, *files)
        if COMPILER.fullmatch(name)
    ]
    compilers = [str(path.relative_to(rootfs)) for path in named_like_compilers if path.is_symlink() or not path.is_dir()]
    assert compilers == []
    assert not list(rootfs.glob("opt/venv/lib/python3*/site-packages/Cython")), "Cython is for the build stage only"
    assert list(rootfs.glob("opt/venv/lib/python3*/site-packages/iothub/**/_alerts*.so"))


def test_the_server_runs_as_the_images_non_root_user(image_server: ImageServer, user: ImageUser) -> None:
    assert user.name == "iothub"
    assert user.uid != 0 and user.gid != 0
    status = dict(line.split(":", 1) for line in Path(f"/proc/{image_server.pid}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(user.uid)] * 4
    assert status["Gid"].split() == [str(user.gid)] * 4
    assert status["Groups"].split() == []
    assert status["NSpid"].split()[-1] == "1", "the entry command is PID 1, as in a container"


def test_the_server_keeps_sqlite_on_the_volume_and_runs_the_compiled_evaluator(
    image_server: ImageServer, rootfs: Path, user: ImageUser
) -> None:
    assert "store sqlite, alert evaluator compiled" in image_server.log.read_text()
    database = rootfs / image_server.env["IOTHUB_DB_PATH"].lstrip("/")
    assert database.stat().st_uid == user.uid


async def test_a_subscribed_dashboard_receives_a_devices_telemetry(image_server: ImageServer) -> None:
    device, dashboard = socketio.AsyncClient(), socketio.AsyncClient()
    updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    dashboard.on("telemetry_update", updates.put_nowait)
    try:
        await device.connect(image_server.url, transports=["websocket"])
        await dashboard.connect(image_server.url, transports=["websocket"])
        registered = await device.call("register_device", {"imei": IMEI, "userEmail": OWNER}, timeout=10)
        assert registered["success"] is True
        subscribed = await dashboard.call("subscribe_user", {"email": OWNER}, timeout=10)
        assert subscribed["success"] is True
        sent = await device.call("telemetry_data", {"imei": IMEI, "data": {"speed": 10}}, timeout=10)
        assert sent["success"] is True
        update = await asyncio.wait_for(updates.get(), timeout=10)
        assert (update["type"], update["imei"], update["data"]) == ("telemetry_update", IMEI, {"speed": 10})
    finally:
        await device.disconnect()
        await dashboard.disconnect()


async def test_health_answers(image_server: ImageServer) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{image_server.url}/health") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "OK"


def test_the_images_healthcheck_passes_while_the_server_answers_and_fails_without_it(
    image: dict[str, Any], rootfs: Path, user: ImageUser, image_server: ImageServer
) -> None:
    kind, *argv = image["Healthcheck"]["Test"]
    command = argv if kind == "CMD" else ["/bin/sh", "-c", *argv]
    timeout = image["Healthcheck"]["Timeout"] / 1e9
    check = in_image(rootfs, image["Config"], user, command)
    assert subprocess.run(check, env=image_server.env, timeout=timeout, check=False).returncode == 0
    elsewhere = image_server.env | {"PORT": str(free_port())}
    assert subprocess.run(check, env=elsewhere, capture_output=True, timeout=timeout, check=False).returncode != 0


def test_sigterm_as_from_docker_stop_ends_the_server_cleanly(image_server: ImageServer) -> None:
    os.kill(image_server.pid, signal.SIGTERM)
    assert image_server.launcher.wait(timeout=15) == 0, image_server.log.read_text()
