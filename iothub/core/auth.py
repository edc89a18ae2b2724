"""Who is asking, and may they: JWT (HS256) for REST and for Socket.IO handshakes.

A :class:`Principal` is what a verified token says (role, e-mail, imei); its
``may_*`` methods are the scoping rules of PROTOCOL.md. In development a socket
without a token is :data:`ANONYMOUS`, which may do everything, as in the seed.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import jwt
from msgspec import Struct

from .errors import ErrorCode, ProtocolError

Role = Literal["admin", "user", "device"]
ROLES: tuple[Role, ...] = ("admin", "user", "device")

#: Used when JWT_SECRET is unset in development, so that ``iothub token`` and
#: ``iothub serve`` agree with no set-up. Production refuses it.
DEVELOPMENT_SECRET = "iothub-development-secret-not-for-production"


class Principal(Struct, frozen=True):
    role: Role | None
    email: str | None = None
    imei: str | None = None
    #: When the token ends (seconds since the epoch); a socket opened with it ends then too.
    expires: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" or self.role is None

    def may_register(self, imei: str) -> bool:
        return self.is_admin or (self.role == "device" and self.imei == imei)

    def may_set_owner(self, email: str) -> bool:
        """Whether this principal may make ``email`` a device's owner: only that person, or an admin."""
        return self.is_admin or self.email == email

    def may_subscribe(self, email: str) -> bool:
        return self.is_admin or (self.role == "user" and self.email == email)

    def may_read_device(self, owner: str | None) -> bool:
        """Whether this principal may read a device's history (REST)."""
        return self.role == "admin" or (self.role == "user" and owner is not None and self.email == owner)


#: A development socket without a token.
ANONYMOUS = Principal(role=None)


class Authenticator:
    """Mints and verifies the server's tokens."""

    def __init__(self, secret: str | None, *, production: bool) -> None:
        self.secret = secret or DEVELOPMENT_SECRET
        self.production = production

    def mint(self, email: str, role: Role, imei: str | None = None, ttl_seconds: int = 3600) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if role == "device" and not imei:
            raise ValueError("a device token needs an imei")
        claims: dict[str, Any] = {"email": email.lower(), "role": role, "exp": int(time.time()) + ttl_seconds}
        if imei:
            claims["imei"] = imei
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """The principal a token names; ``UNAUTHORIZED`` if it is not valid now."""
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "token has expired") from None
        except jwt.InvalidTokenError:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "token is not valid") from None
        role = claims.get("role")
        email = claims.get("email")
        imei = claims.get("imei")
        if role not in ROLES or not isinstance(email, str) or (role == "device" and not isinstance(imei, str)):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "token lacks the role, email or imei claim")
        exp = claims.get("exp")
        expires = int(exp) if isinstance(exp, int | float) else None
        return Principal(role=role, email=email.lower(), imei=imei if isinstance(imei, str) else None, expires=expires)

    def for_socket(self, auth: object) -> Principal:
        """The principal of a Socket.IO handshake's ``auth`` object.

        A token, when given, is always checked; without one, development lets
        the socket in as :data:`ANONYMOUS` and production refuses it.
        """
        token = auth.get("token") if isinstance(auth, dict) else None
        if token is None or token == "":
            if self.production:
                raise ProtocolError(ErrorCode.UNAUTHORIZED, "a token is required: connect with auth: {token}")
            return ANONYMOUS
        if not isinstance(token, str):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "auth.token must be a string")
        return self.verify(token)

    def for_request(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer`` header; REST always needs one."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <token>")
        return self.verify(token.strip())
