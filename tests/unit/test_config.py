"""Settings.load: defaults, the environment variables, and the configurations it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iothub.config import ConfigError, Settings
from iothub.core.auth import DEVELOPMENT_SECRET
from iothub.core.rules import DEFAULT_RULES

STRONG_SECRET = "k3y-7Qw9-Lm2x-Pz8r-Vb4n-Hd6s-Jf1t-Gc5y-0Ae3"
PRODUCTION = {"NODE_ENV": "production", "JWT_SECRET": STRONG_SECRET}


def test_defaults() -> None:
    settings = Settings.load({})
    assert settings.port == 6162
    assert settings.heartbeat_timeout_ms == 300_000
    assert settings.cleanup_interval_ms == 300_000
    assert settings.max_payload_bytes == 10 * 1024 * 1024
    assert settings.env == "development"
    assert not settings.production
    assert settings.evaluator == "compiled"
    assert settings.ws_compression is False
    assert settings.rules == DEFAULT_RULES
    assert settings.jwt_secret is None


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("PORT", "8080", "port", 8080),
        ("HOST", "127.0.0.1", "host", "127.0.0.1"),
        ("HEARTBEAT_TIMEOUT_MS", "60000", "heartbeat_timeout_ms", 60_000),
        ("CLEANUP_INTERVAL_MS", "15000", "cleanup_interval_ms", 15_000),
        ("IOTHUB_PING_INTERVAL_MS", "5000", "ping_interval_ms", 5_000),
        ("IOTHUB_PING_TIMEOUT_MS", "4000", "ping_timeout_ms", 4_000),
        ("MAX_PAYLOAD_BYTES", "1048576", "max_payload_bytes", 1_048_576),
        ("IOTHUB_ALERT_COOLDOWN_MS", "30000", "alert_cooldown_ms", 30_000),
        ("IOTHUB_RATE_LIMIT", "50.5", "rate_limit", 50.5),
        ("IOTHUB_RATE_BURST", "100", "rate_burst", 100.0),
        ("IOTHUB_WS_COMPRESSION", "true", "ws_compression", True),
        ("IOTHUB_WS_COMPRESSION", "0", "ws_compression", False),
        ("IOTHUB_EVALUATOR", "reference", "evaluator", "reference"),
        ("FRONTEND_URL", "https://dash.example.com", "frontend_url", "https://dash.example.com"),
        ("DEBUG", "iothub:*", "debug", "iothub:*"),
        ("JWT_SECRET", "short is fine in development", "jwt_secret", "short is fine in development"),
    ],
)
def test_environment_variable_sets_its_setting(variable: str, value: str, attribute: str, expected: Any) -> None:
    assert getattr(Settings.load({variable: value}), attribute) == expected


def test_empty_variable_means_unset() -> None:
    assert Settings.load({"PORT": "", "NODE_ENV": "", "IOTHUB_ENV": ""}).port == 6162


def test_override_wins_over_the_environment_and_none_means_no_override() -> None:
    """The `iothub serve` flags arrive as overrides; an absent flag is None."""
    settings = Settings.load({"PORT": "8080", "HEARTBEAT_TIMEOUT_MS": "1000"}, port=9090, heartbeat_timeout_ms=None)
    assert (settings.port, settings.heartbeat_timeout_ms) == (9090, 1000)


@pytest.mark.parametrize(
    ("environ", "env"),
    [
        ({"NODE_ENV": "production", "JWT_SECRET": STRONG_SECRET}, "production"),
        ({"NODE_ENV": "development"}, "development"),
        ({"NODE_ENV": "test"}, "development"),
        ({"NODE_ENV": "production", "IOTHUB_ENV": "development"}, "development"),
        ({"NODE_ENV": "development", "IOTHUB_ENV": "production", "JWT_SECRET": STRONG_SECRET}, "production"),
    ],
)
def test_node_env_is_respected_and_iothub_env_overrides_it(environ: dict[str, str], env: str) -> None:
    settings = Settings.load(environ)
    assert settings.env == env
    assert settings.production is (env == "production")


@pytest.mark.parametrize(
    "secret",
    [None, "", "short", "x" * 31, "your_jwt_secret", "YOUR_JWT_SECRET", "changeme", DEVELOPMENT_SECRET, "secret" * 6, "x" * 40, "abcdefg" * 6],
)
def test_production_refuses_a_missing_short_or_example_secret(secret: str | None) -> None:
    environ = {"NODE_ENV": "production"} if secret is None else {"NODE_ENV": "production", "JWT_SECRET": secret}
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        Settings.load(environ)


def test_production_accepts_a_strong_secret() -> None:
    assert Settings.load(PRODUCTION).jwt_secret == STRONG_SECRET


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "http"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "-1"),
        ("IOTHUB_ENV", "staging"),
        ("HEARTBEAT_TIMEOUT_MS", "0"),
        ("HEARTBEAT_TIMEOUT_MS", "5 minutes"),
        ("HEARTBEAT_TIMEOUT_MS", "1.5"),
        ("CLEANUP_INTERVAL_MS", "-1"),
        ("IOTHUB_PING_INTERVAL_MS", "0"),
        ("MAX_PAYLOAD_BYTES", "0"),
        ("MAX_PAYLOAD_BYTES", "10MiB"),
        ("IOTHUB_ALERT_COOLDOWN_MS", "-1"),
        ("IOTHUB_RATE_LIMIT", "-0.5"),
        ("IOTHUB_RATE_LIMIT", "nan"),
        ("IOTHUB_RATE_LIMIT", "fast"),
        ("IOTHUB_RATE_BURST", "-1"),
        ("IOTHUB_WS_COMPRESSION", "perhaps"),
        ("IOTHUB_EVALUATOR", "jit"),
    ],
)
def test_bad_value_is_a_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load({variable: value})
    assert variable in str(info.value)
    assert "$." not in str(info.value)


def rules_file(tmp_path: Path, content: Any) -> dict[str, str]:
    path = tmp_path / "rules.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return {"IOTHUB_ALERT_RULES": str(path)}


def test_alert_rules_file_is_merged_over_the_defaults(tmp_path: Path) -> None:
    environ = rules_file(
        tmp_path,
        [
            {"code": "HIGH_RPM", "threshold": 5500},
            {"code": "DTC_DETECTED", "disabled": True},
            {"code": "HOT", "field": "coolantTemp", "op": ">", "threshold": 110, "level": "info", "message": "Hot"},
        ],
    )
    rules = {rule.code: rule for rule in Settings.load(environ).rules}
    assert list(rules) == ["CRASH_DETECTED", "LOW_BATTERY", "HIGH_RPM", "HOT"]
    assert rules["HIGH_RPM"].threshold == 5500
    assert (rules["HOT"].field, rules["HOT"].event_name) == ("coolantTemp", "health_warning")


def test_empty_rules_file_keeps_the_defaults(tmp_path: Path) -> None:
    assert Settings.load(rules_file(tmp_path, [])).rules == DEFAULT_RULES


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[{", "cannot read"),
        ("", "cannot read"),
        ({"code": "HIGH_RPM", "threshold": 5500}, "JSON array"),
        ([{"code": "HIGH_RPM", "op": "=>"}], "HIGH_RPM"),
        ([{"code": "NEW", "field": "speed"}], "NEW"),
        ([{"threshold": 1}], "needs a string 'code'"),
    ],
)
def test_bad_rules_file_is_a_config_error(tmp_path: Path, content: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(rules_file(tmp_path, content))
    assert "IOTHUB_ALERT_RULES" in str(info.value)
    assert problem in str(info.value)


def test_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IOTHUB_ALERT_RULES: cannot read"):
        Settings.load({"IOTHUB_ALERT_RULES": str(tmp_path / "absent.json")})


@pytest.mark.parametrize(
    ("environ", "origins"),
    [
        ({}, "*"),
        (PRODUCTION, None),
        ({"FRONTEND_URL": "https://dash.example.com/"}, ["https://dash.example.com"]),
        (
            {**PRODUCTION, "FRONTEND_URL": " https://a.example.com , https://b.example.com/,, "},
            ["https://a.example.com", "https://b.example.com"],
        ),
    ],
    ids=["development allows any", "production allows its own origin only", "trailing slash dropped", "comma-separated list"],
)
def test_cors_origins(environ: dict[str, str], origins: list[str] | str | None) -> None:
    assert Settings.load(environ).cors_origins == origins


@pytest.mark.parametrize(
    ("environ", "host"),
    [({}, "127.0.0.1"), (PRODUCTION, "0.0.0.0"), ({"HOST": "0.0.0.0"}, "0.0.0.0"), ({**PRODUCTION, "HOST": "10.1.2.3"}, "10.1.2.3")],
    ids=["development: loopback", "production: every interface", "HOST wins", "HOST wins in production"],
)
def test_the_bind_address_is_safe_by_default(environ: dict[str, str], host: str) -> None:
    assert Settings.load(environ).bind_host == host


@pytest.mark.parametrize("proxy", ["not-an-ip", "10.0.0.0/33"])
def test_a_trusted_proxy_must_be_an_address_or_a_network(proxy: str) -> None:
    with pytest.raises(ConfigError, match="IOTHUB_TRUSTED_PROXIES"):
        Settings.load({"IOTHUB_TRUSTED_PROXIES": f"127.0.0.1, {proxy}"})


@pytest.mark.parametrize(
    "variable",
    ["IOTHUB_MAX_QUEUED_BYTES", "IOTHUB_CONNECT_TIMEOUT_MS", "IOTHUB_MAX_BACKLOG_AGE_MS", "IOTHUB_AUTH_BAN_MS"],
)
def test_the_new_limits_must_be_positive(variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.load({variable: "0"})
