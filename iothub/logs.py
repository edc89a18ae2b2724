"""The server's log lines: readable text by default, one JSON object per line with ``LOG_FORMAT=json``.

A JSON line has ``time`` (ISO 8601, UTC), ``level``, ``logger`` and
``message``, and ``socket`` or ``request`` when the line is about one (a
log call's ``extra``), and ``exception`` with the traceback when there is one.

No line carries a token, whatever logs it: with ``DEBUG`` set,
python-socketio and python-engineio log raw packets, a handshake's
``auth: {token}`` among them. Both formats pass every line through
:func:`redact`, which blanks JSON Web Tokens, ``"token"`` fields and
``Bearer`` credentials.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import msgspec

#: What a token looks like in a line: a JWT (its header always starts ``eyJ``), a JSON ``token`` field, a bearer credential.
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"
    r"|(?<=[\"']token[\"']: [\"'])[^\"']*|(?<=[\"']token[\"']:[\"'])[^\"']*"
    r"|(?<=Bearer )\S+",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
#: The ``extra`` fields a line may carry: what it concerns.
CONCERNS = ("socket", "request")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_encode = msgspec.json.Encoder().encode


def redact(text: str) -> str:
    return _SECRETS.sub(REDACTED, text)


class TextFormatter(logging.Formatter):
    """The default: ``time level logger: message``, tokens blanked."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, tokens blanked."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for concern in CONCERNS:
            value = record.__dict__.get(concern)
            if value is not None:
                line[concern] = redact(str(value))
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return _encode(line).decode()


def configure(log_format: str, *, debug: bool) -> None:
    """Send every logger's lines to stderr in ``log_format`` (``text`` or ``json``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)


def announce(line: str, log_format: str) -> None:
    """The startup line: printed as it is, or, with JSON logs, a log line like every other."""
    if log_format == "json":
        logging.getLogger("iothub").info(line)
    else:
        print(line, flush=True)
