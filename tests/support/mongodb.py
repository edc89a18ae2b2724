"""The MongoDB server the tests use: ``IOTHUB_TEST_MONGODB_URI`` when set, else SecantusDB, started here.

SecantusDB (PyPI ``secantusdb``, in the test extra) is a single-node server
that speaks MongoDB's wire protocol over WiredTiger. The tests start its
Python daemon (``python -m secantus``, the ``secantusd-py`` command) once a
session: on a free loopback port, as a standalone server (as the compose
file's ``mongo:7`` is), its data in a temporary folder, stopped by its pid at
the end. It is not MongoDB: the README's Persistence section says where it
differs for this project.

Missing, it fails the tests that need it (they do not skip): ``make test``
installs it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from iothub.loadgen.servers import free_port

#: A real MongoDB to test against instead (each test gets its own database, dropped afterwards).
MONGODB_URI = os.environ.get("IOTHUB_TEST_MONGODB_URI")
#: What the tests' MongoDB is, as their ids say it.
MONGO = "mongodb" if MONGODB_URI else "secantusdb"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class SecantusDB:
    """``secantusd-py`` on 127.0.0.1, its data and log in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log_path = directory / "secantusdb.log"
        config = directory / "secantusd.toml"
        config.write_text("")  # an explicit, empty config: no secantusd.toml found elsewhere applies
        command = [
            sys.executable, "-m", "secantus", "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", str(directory / "data"), "--standalone", "--log-level", "WARNING",
        ]  # fmt: skip
        self._log: IO[bytes] = self.log_path.open("w+b")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.process.pid
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"SecantusDB exited with {self.process.returncode}: {self.log()[-2000:]}")
            client: MongoClient = MongoClient(self.uri, serverSelectionTimeoutMS=500, directConnection=True)
            try:
                client.admin.command("ping")
                return
            except PyMongoError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SecantusDB did not answer within {READY_TIMEOUT:g} s: {self.log()[-2000:]}") from None
            finally:
                client.close()

    def stop(self) -> int:
        """SIGTERM by pid (it checkpoints and closes WiredTiger), SIGKILL if that takes too long; its exit code."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT)
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of the session's MongoDB server (no database in it: each user makes its own)."""
    if MONGODB_URI:
        yield MONGODB_URI
        return
    if importlib.util.find_spec("secantus") is None:
        pytest.fail("the MongoDB tests need SecantusDB (pip install -e '.[test]') or IOTHUB_TEST_MONGODB_URI", pytrace=False)
    server = SecantusDB(tmp_path_factory.mktemp("secantusdb"))
    yield server.uri
    server.stop()
