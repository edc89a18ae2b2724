"""Log lines: the JSON format's fields, and no token in either format."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from iothub.logs import REDACTED, JsonFormatter, TextFormatter, redact

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJlbWFpbCI6ImFAYi5jIn0.c2lnbmF0dXJl"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("iothub.test", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


@pytest.mark.parametrize(
    "text",
    [
        JWT,
        f'Received packet MESSAGE data 0{{"token":"{JWT}"}}',
        '0{"token":"not-a-jwt-but-secret"}',
        "{'token': 'python-repr-secret'}",
        "Authorization: Bearer some-opaque-secret",
    ],
)
def test_tokens_are_blanked(text: str) -> None:
    blanked = redact(text)
    assert REDACTED in blanked
    for secret in (JWT, "not-a-jwt-but-secret", "python-repr-secret", "some-opaque-secret"):
        assert secret not in blanked


def test_a_json_line_has_its_fields_and_what_it_concerns() -> None:
    line = json.loads(JsonFormatter().format(record("socket %s refused: %s", "abc", "token is not valid", socket="abc")))
    assert set(line) == {"time", "level", "logger", "message", "socket"}
    assert (line["level"], line["logger"], line["socket"]) == ("WARNING", "iothub.test", "abc")
    assert line["message"] == "socket abc refused: token is not valid"
    assert line["time"].endswith("Z")


def test_a_json_line_carries_the_traceback_blanked() -> None:
    try:
        raise ValueError(f"bad {JWT}")
    except ValueError:
        failed = record("request failed", request="GET /api/alerts")
        failed.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(failed))
    assert line["request"] == "GET /api/alerts"
    assert "ValueError" in line["exception"] and JWT not in line["exception"]


def test_text_lines_are_blanked_too() -> None:
    text = TextFormatter().format(record("handshake %s", {"token": JWT}))
    assert "WARNING iothub.test: handshake" in text and JWT not in text
