"""A test's hand on a server's SQLite file: its write lock held from outside, as a stuck or slow store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(db_path: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection: every write of the server fails meanwhile.

    Taking the lock waits (up to SQLite's default five seconds) for a batch the server is writing.
    """
    connection = sqlite3.connect(db_path, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()
