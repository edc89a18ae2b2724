"""Settings: the seed's environment variables, the ones this server adds, and their checks.

Every setting has one environment variable and one ``iothub serve`` flag (the
flag wins): the variable's name in lower case, without ``IOTHUB_``, with dashes. :meth:`Settings.load` refuses a configuration that cannot work —
above all production without a strong ``JWT_SECRET`` — before anything listens.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
from msgspec import Struct, field

from .core.auth import DEVELOPMENT_SECRET
from .core.rules import DEFAULT_RULES, AlertRule, merge_rules

Environment = Literal["development", "production"]
Evaluator = Literal["compiled", "reference"]
LogFormat = Literal["text", "json"]
StoreKind = Literal["auto", "sqlite", "mongodb", "memory"]

#: Secrets that appear in examples and so protect nothing.
WEAK_SECRETS = frozenset({"your_jwt_secret", "secret", "changeme", "jwt_secret", "development", DEVELOPMENT_SECRET})
MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """The configuration cannot work; the message says which setting and why."""


class Settings(Struct, frozen=True, kw_only=True):
    #: None: 127.0.0.1 in development (nothing else can reach a server started to try it), 0.0.0.0 in production.
    host: str | None = None
    port: int = 6162
    tls_cert: str | None = None
    tls_key: str | None = None
    env: Environment = "development"
    jwt_secret: str | None = None
    frontend_url: str | None = None
    debug: str | None = None
    heartbeat_timeout_ms: int = 300_000
    cleanup_interval_ms: int = 300_000
    ping_interval_ms: int = 25_000
    ping_timeout_ms: int = 20_000
    max_payload_bytes: int = 10 * 1024 * 1024
    alert_rules_file: str | None = None
    alert_cooldown_ms: int = 0
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    ws_compression: bool = False
    evaluator: Evaluator = "compiled"
    store: StoreKind = "auto"
    db_path: str = "data/iothub.db"
    mongodb_uri: str | None = None
    durable_ack: bool = False
    buffer_rows: int = 500_000
    batch_rows: int = 1000
    flush_interval_ms: int = 50
    history_retention_days: int = 0
    shutdown_timeout_ms: int = 10_000
    max_connections: int = 100_000
    max_connections_per_address: int = 1_000
    connect_rate_per_address: float = 50.0
    auth_failures_per_address: int = 20
    auth_ban_ms: int = 60_000
    trusted_proxies: str | None = None
    max_queued_bytes: int = 512 * 1024
    connect_timeout_ms: int = 45_000
    max_backlog_age_ms: int = 1_000
    metrics_token: str | None = None
    map_tiles: str | None = None
    map_attribution: str | None = None
    log_format: LogFormat = "text"
    #: Gateways: 1 is one process (Ray never imported); more run as Ray actors behind one port.
    workers: int = 1
    #: An existing Ray cluster to run the gateways on (``ray start --head``); None starts a local one.
    ray_address: str | None = None
    rules: tuple[AlertRule, ...] = field(default=DEFAULT_RULES)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def bind_host(self) -> str:
        """Where the server listens: HOST, else loopback in development and every interface in production."""
        if self.host:
            return self.host
        return "0.0.0.0" if self.production else "127.0.0.1"

    @property
    def proxies(self) -> tuple[str, ...]:
        """Addresses and networks whose ``X-Forwarded-For`` is believed (IOTHUB_TRUSTED_PROXIES)."""
        return tuple(item.strip() for item in (self.trusted_proxies or "").split(",") if item.strip())

    @property
    def burst(self) -> float:
        """Events a socket may send at once: IOTHUB_RATE_BURST, else two seconds' worth (at least one)."""
        return self.rate_burst or max(1.0, 2 * self.rate_limit)

    @property
    def cors_origins(self) -> list[str] | str | None:
        """Origins allowed to open sockets and call REST from a browser: FRONTEND_URL's list, ``*``
        (development's default), or None — the server's own origin only (production's default)."""
        if self.frontend_url:
            return [origin.strip().rstrip("/") for origin in self.frontend_url.split(",") if origin.strip()]
        return None if self.production else "*"

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``environ`` (default ``os.environ``), then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable in ENVIRONMENT.items():
            if environ.get(variable, "") != "":
                values[name] = environ[variable]
        if "env" not in values and environ.get("NODE_ENV") in ("development", "production"):
            values["env"] = environ["NODE_ENV"]
        values.update({name: value for name, value in overrides.items() if value is not None})
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid setting: {_name_setting(str(exc))}") from None
        return settings._checked()

    def _checked(self) -> Settings:
        if not 0 < self.port < 65536:
            raise ConfigError(f"PORT must be 1..65535, not {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("IOTHUB_TLS_CERT and IOTHUB_TLS_KEY go together: set both (HTTPS and WSS) or neither (HTTP and WS)")
        positive = (
            "heartbeat_timeout_ms",
            "cleanup_interval_ms",
            "ping_interval_ms",
            "ping_timeout_ms",
            "max_payload_bytes",
            "buffer_rows",
            "batch_rows",
            "flush_interval_ms",
            "shutdown_timeout_ms",
            "max_queued_bytes",
            "connect_timeout_ms",
            "max_backlog_age_ms",
            "auth_ban_ms",
            "workers",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENVIRONMENT[name]} must be positive")
        unlimited_when_zero = ("max_connections", "max_connections_per_address", "connect_rate_per_address", "auth_failures_per_address")
        for name in ("rate_limit", "rate_burst", "alert_cooldown_ms", "history_retention_days", *unlimited_when_zero):
            if not getattr(self, name) >= 0:  # NaN included
                raise ConfigError(f"{ENVIRONMENT[name]} must be a number, 0 or more")
        if self.batch_rows > self.buffer_rows:
            raise ConfigError("IOTHUB_BATCH_ROWS cannot be more than IOTHUB_BUFFER_ROWS")
        if self.store == "mongodb" and not self.mongodb_uri:
            raise ConfigError("IOTHUB_STORE=mongodb needs MONGODB_URI")
        if self.workers > 1 and self.store == "memory":
            raise ConfigError("IOTHUB_STORE=memory keeps history inside one process: several IOTHUB_WORKERS need sqlite or mongodb")
        if self.production:
            secret = self.jwt_secret or ""
            if len(secret) < MIN_SECRET_LENGTH or secret.lower() in WEAK_SECRETS or _repetitive(secret):
                raise ConfigError(f"production needs JWT_SECRET of at least {MIN_SECRET_LENGTH} characters that is not an example value")
        for proxy in self.proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"IOTHUB_TRUSTED_PROXIES: {proxy!r} is not an address or a network") from None
        if self.alert_rules_file:
            return msgspec.structs.replace(self, rules=_read_rules(Path(self.alert_rules_file)))
        return self


#: The environment variable of each setting (the CLI flag: :func:`flag_of`).
ENVIRONMENT: dict[str, str] = {
    "host": "HOST",
    "port": "PORT",
    "tls_cert": "IOTHUB_TLS_CERT",
    "tls_key": "IOTHUB_TLS_KEY",
    "env": "IOTHUB_ENV",
    "jwt_secret": "JWT_SECRET",
    "frontend_url": "FRONTEND_URL",
    "debug": "DEBUG",
    "heartbeat_timeout_ms": "HEARTBEAT_TIMEOUT_MS",
    "cleanup_interval_ms": "CLEANUP_INTERVAL_MS",
    "ping_interval_ms": "IOTHUB_PING_INTERVAL_MS",
    "ping_timeout_ms": "IOTHUB_PING_TIMEOUT_MS",
    "max_payload_bytes": "MAX_PAYLOAD_BYTES",
    "alert_rules_file": "IOTHUB_ALERT_RULES",
    "alert_cooldown_ms": "IOTHUB_ALERT_COOLDOWN_MS",
    "rate_limit": "IOTHUB_RATE_LIMIT",
    "rate_burst": "IOTHUB_RATE_BURST",
    "ws_compression": "IOTHUB_WS_COMPRESSION",
    "evaluator": "IOTHUB_EVALUATOR",
    "store": "IOTHUB_STORE",
    "db_path": "IOTHUB_DB_PATH",
    "mongodb_uri": "MONGODB_URI",
    "durable_ack": "IOTHUB_DURABLE_ACK",
    "buffer_rows": "IOTHUB_BUFFER_ROWS",
    "batch_rows": "IOTHUB_BATCH_ROWS",
    "flush_interval_ms": "IOTHUB_FLUSH_INTERVAL_MS",
    "history_retention_days": "IOTHUB_HISTORY_RETENTION_DAYS",
    "shutdown_timeout_ms": "IOTHUB_SHUTDOWN_TIMEOUT_MS",
    "max_connections": "IOTHUB_MAX_CONNECTIONS",
    "max_connections_per_address": "IOTHUB_MAX_CONNECTIONS_PER_ADDRESS",
    "connect_rate_per_address": "IOTHUB_CONNECT_RATE_PER_ADDRESS",
    "auth_failures_per_address": "IOTHUB_AUTH_FAILURES_PER_ADDRESS",
    "auth_ban_ms": "IOTHUB_AUTH_BAN_MS",
    "trusted_proxies": "IOTHUB_TRUSTED_PROXIES",
    "max_queued_bytes": "IOTHUB_MAX_QUEUED_BYTES",
    "connect_timeout_ms": "IOTHUB_CONNECT_TIMEOUT_MS",
    "max_backlog_age_ms": "IOTHUB_MAX_BACKLOG_AGE_MS",
    "metrics_token": "IOTHUB_METRICS_TOKEN",
    "map_tiles": "IOTHUB_MAP_TILES",
    "map_attribution": "IOTHUB_MAP_ATTRIBUTION",
    "log_format": "LOG_FORMAT",
    "workers": "IOTHUB_WORKERS",
    "ray_address": "RAY_ADDRESS",
}


def flag_of(variable: str) -> str:
    """A setting's ``iothub serve`` flag: its variable in lower case, without ``IOTHUB_``, with dashes."""
    return "--" + variable.removeprefix("IOTHUB_").lower().replace("_", "-")


def _repetitive(secret: str) -> bool:
    """Whether the secret is a short run repeated (``secretsecret…``), or uses fewer than eight characters."""
    if len(set(secret)) < 8:
        return True
    return any(secret == secret[:size] * (len(secret) // size) + secret[: len(secret) % size] for size in range(1, len(secret) // 2 + 1))


def _read_rules(path: Path) -> tuple[AlertRule, ...]:
    try:
        overrides = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"IOTHUB_ALERT_RULES: cannot read {path}: {exc}") from None
    if not isinstance(overrides, list):
        raise ConfigError("IOTHUB_ALERT_RULES must hold a JSON array of rules")
    try:
        return merge_rules(overrides)
    except ValueError as exc:
        raise ConfigError(f"IOTHUB_ALERT_RULES: {exc}") from None


def _name_setting(reason: str) -> str:
    """Replace msgspec's ``$.field`` with the environment variable a user set."""
    for name, variable in ENVIRONMENT.items():
        reason = reason.replace(f"`$.{name}`", variable)
    return reason
