"""Servers under test: a process started on a free loopback port, ready once ``/health`` answers, stopped by its pid.

The one harness the tests and the benchmarks share. It starts any server
command (``iothub serve``, the plain baseline in ``bench/``), keeps its output
in a file — a pipe that nobody reads while a load runs would stop a server
that logs a lot — and, on a failed start, says what the server said.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

#: ``iothub serve`` in this interpreter: the server as a process of its own.
IOTHUB_SERVE = (sys.executable, "-m", "iothub", "serve")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


#: The supervisor's line when a gateway joins a cluster (iothub/cluster/actors.py).
GATEWAY_JOINED = re.compile(r"(gateway-\d+) \(pid (\d+), private address (http://[\d.:]+)\) joined")


class Gateway(NamedTuple):
    """One gateway of a running server: its process, and the address only it listens on."""

    pid: int
    address: str


class ServerFailed(RuntimeError):
    """The server exited, or did not answer ``/health`` in time; the message ends with what it printed."""


class ServerProcess:
    """A server process on ``127.0.0.1:port``, started with ``env`` over this process's environment."""

    def __init__(
        self,
        command: Sequence[str] = IOTHUB_SERVE,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout: float = 30,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: the server speaks HTTPS; its ``/health`` is asked with this client context."""
        self.port = port or free_port()
        self.ssl_context = ssl_context
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        # Open for the process's life, not a block: the server writes to it until it is stopped.
        self._log: IO[bytes] = log_path.open("w+b") if log_path is not None else tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(list(command), env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        try:
            self._wait_ready(ready_timeout)
        except ServerFailed:
            self.stop(signal.SIGKILL)
            raise

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def status(self, at: str | None = None) -> dict[str, Any]:
        """``GET /api/realtime/status``'s data, from the shared port or ``at`` one gateway's own address."""
        with urllib.request.urlopen((at or self.url) + "/api/realtime/status", timeout=5, context=self.ssl_context) as answer:
            data: dict[str, Any] = json.load(answer)["data"]
            return data

    def gateways(self, count: int, timeout: float = 60) -> dict[str, Gateway]:
        """The ``count`` gateways of a cluster that have joined, by name (from the supervisor's log lines):
        a client connected to a gateway's own address is on that gateway, where the shared port lets the
        kernel choose. One process is its own single gateway."""
        if count == 1:
            return {"gateway-0": Gateway(self.pid, self.url)}
        deadline = time.monotonic() + timeout
        while True:
            joined = {name: Gateway(int(pid), address) for name, pid, address in GATEWAY_JOINED.findall(self.log())}
            if len(joined) >= count:
                return joined
            if time.monotonic() > deadline:
                raise ServerFailed(f"{count} gateways did not all join within {timeout:g} s: {self.log()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        """Everything the server has printed so far."""
        self._log.flush()
        self._log.seek(0)
        said = self._log.read().decode(errors="replace")
        self._log.seek(0, os.SEEK_END)
        return said

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Stop the process (by its pid): ``sig``, then SIGKILL after ``timeout`` s; return its exit code."""
        if self.process.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout)
        return self.process.returncode

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServerFailed(f"the server exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1, context=self.ssl_context):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise ServerFailed(f"the server did not answer /health within {timeout:g} s: {self.log()[-2000:]}") from None
                time.sleep(0.05)
