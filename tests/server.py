"""Starting a real ``iothub serve`` process on a free loopback port, and stopping it by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from iothub.core.auth import Authenticator

TEST_SECRET = "test-secret-that-is-long-enough-for-production-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, email: str, role: str, imei: str | None = None, ttl: int = 600) -> str:
        return Authenticator(self.env.get("JWT_SECRET", TEST_SECRET), production=False).mint(email, role, imei, ttl)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token("admin@example.com", "admin")}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Stop the process this server started (by its pid) and return its exit code."""
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        return self.process.returncode


def start_server(log_dir: Path, port: int | None = None, **env: str) -> RunningServer:
    """Run ``iothub serve`` on 127.0.0.1 with ``env`` over a test environment; wait for /health."""
    port = port or free_port()
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "JWT_SECRET": TEST_SECRET,
        "IOTHUB_ENV": "development",
        "IOTHUB_DB_PATH": str(log_dir / "iothub.db"),  # never in the repository
        **env,
    }
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "iothub", "serve"], env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    server = RunningServer(process, port, log_path, environment)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=1):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not answer /health within 30 s:\n{server.log()}")
