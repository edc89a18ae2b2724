"""The error codes of PROTOCOL.md and the one exception that carries them.

Every refusal the server makes, on a socket or over REST, is a
:class:`ProtocolError`; the front ends turn it into ``{success: false, code,
message}`` (and, for REST, the matching HTTP status).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    INVALID_IMEI = "INVALID_IMEI"
    INVALID_EMAIL = "INVALID_EMAIL"
    DEVICE_NOT_REGISTERED = "DEVICE_NOT_REGISTERED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    INTERNAL = "INTERNAL"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_PAYLOAD: 400,
    ErrorCode.INVALID_IMEI: 400,
    ErrorCode.INVALID_EMAIL: 400,
    ErrorCode.DEVICE_NOT_REGISTERED: 404,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class ProtocolError(Exception):
    """A request the server refuses, with the code and message the client sees."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]
