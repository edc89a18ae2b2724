"""Which store a server uses: MongoDB when ``MONGODB_URI`` is set, else SQLite in a local file.

``IOTHUB_STORE`` picks one explicitly; ``memory`` keeps nothing across
restarts (persistence off, for tests and benchmarks). The MongoDB module is
imported only when chosen, so the default path never imports motor.
"""

from __future__ import annotations

from ..config import ConfigError, Settings
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .store import Store

#: Rows of each history the memory store keeps, so that a long run stays bounded.
MEMORY_HISTORY_ROWS = 100_000


def store_kind(settings: Settings) -> str:
    """The store a configuration asks for, ``auto`` settled."""
    if settings.store == "auto":
        return "mongodb" if settings.mongodb_uri else "sqlite"
    return settings.store


def create_store(settings: Settings) -> Store:
    kind = store_kind(settings)
    if kind == "memory":
        return MemoryStore(history_limit=MEMORY_HISTORY_ROWS)
    if kind == "mongodb":
        from .mongo import MongoStore

        if settings.mongodb_uri is None:
            raise ConfigError("IOTHUB_STORE=mongodb needs MONGODB_URI")
        return MongoStore(settings.mongodb_uri, durable=settings.durable_ack, retention_days=settings.history_retention_days)
    return SQLiteStore(settings.db_path, durable=settings.durable_ack, retention_days=settings.history_retention_days)
