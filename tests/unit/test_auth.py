"""Authenticator and Principal: JWT (HS256) minting, verification and PROTOCOL.md's scoping."""

from __future__ import annotations

import time
from typing import Any

import jwt
import msgspec
import pytest

from iothub.core.auth import ANONYMOUS, DEVELOPMENT_SECRET, Authenticator, Principal
from iothub.core.errors import ErrorCode, ProtocolError

SECRET = "test-secret-" + "s" * 56  # long enough for HS512 too
IMEI, OTHER_IMEI = "356938035643809", "490154203237518"
EMAIL = "user@example.com"


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(SECRET, production=True)


def signed(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def later() -> int:
    return int(time.time()) + 3600


def unauthorized(call: Any, *args: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        call(*args)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    assert info.value.http_status == 401
    return info.value


@pytest.mark.parametrize(
    ("role", "imei", "expected"),
    [
        ("admin", None, Principal("admin", EMAIL)),
        ("user", None, Principal("user", EMAIL)),
        ("device", IMEI, Principal("device", EMAIL, IMEI)),
    ],
)
def test_mint_then_verify_roundtrip(auth: Authenticator, role: Any, imei: str | None, expected: Principal) -> None:
    verified = auth.verify(auth.mint(EMAIL, role, imei))
    assert msgspec.structs.replace(verified, expires=None) == expected
    assert verified.expires is not None and abs(verified.expires - (time.time() + 3600)) < 5  # when a socket opened with it ends


def test_minted_token_is_hs256_with_exp(auth: Authenticator) -> None:
    token = auth.mint("User@Example.COM", "user", ttl_seconds=60)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["email"] == EMAIL
    assert claims["role"] == "user"
    assert 0 < claims["exp"] - time.time() <= 60


def test_verify_lower_cases_the_email(auth: Authenticator) -> None:
    token = signed({"email": "User@Example.COM", "role": "user", "exp": later()})
    assert auth.verify(token).email == EMAIL


@pytest.mark.parametrize(("role", "imei"), [("device", None), ("device", ""), ("root", None)])
def test_mint_refuses_a_device_without_imei_or_an_unknown_role(auth: Authenticator, role: Any, imei: str | None) -> None:
    with pytest.raises(ValueError):
        auth.mint(EMAIL, role, imei)


def test_expired_token_is_unauthorized(auth: Authenticator) -> None:
    error = unauthorized(auth.verify, auth.mint(EMAIL, "admin", ttl_seconds=-10))
    assert "expired" in error.message


@pytest.mark.parametrize(
    "token",
    [
        signed({"email": EMAIL, "role": "admin", "exp": later()}, secret="another-secret-" + "o" * 32),
        signed({"email": EMAIL, "role": "admin"}),
        signed({"email": EMAIL, "role": "admin", "exp": later()}, algorithm="HS512"),
        jwt.encode({"email": EMAIL, "role": "admin", "exp": later()}, "", algorithm="none"),  # "": no key, typed as one
        "not.a.token",
        "",
    ],
    ids=["wrong secret", "no exp", "other algorithm", "unsigned", "garbage", "empty"],
)
def test_invalid_token_is_unauthorized(auth: Authenticator, token: str) -> None:
    unauthorized(auth.verify, token)


@pytest.mark.parametrize(
    "claims",
    [
        {"email": EMAIL},
        {"email": EMAIL, "role": "root"},
        {"email": EMAIL, "role": None},
        {"role": "admin"},
        {"role": "user", "email": 42},
        {"role": "device", "email": EMAIL},
        {"role": "device", "email": EMAIL, "imei": 356938035643809},
    ],
    ids=["no role", "unknown role", "null role", "no email", "non-string email", "device without imei", "numeric imei"],
)
def test_token_lacking_claims_is_unauthorized(auth: Authenticator, claims: dict[str, Any]) -> None:
    unauthorized(auth.verify, signed({**claims, "exp": later()}))


def test_development_without_secret_uses_the_development_secret() -> None:
    """`iothub token` and `iothub serve` agree with no set-up."""
    minted = Authenticator(None, production=False).mint(EMAIL, "admin")
    assert jwt.decode(minted, DEVELOPMENT_SECRET, algorithms=["HS256"])["role"] == "admin"


# --------------------------------------------------------------------------- sockets


@pytest.mark.parametrize("handshake", [None, {}, {"token": None}, {"token": ""}, "a-string", ["token"]])
def test_development_socket_without_token_is_anonymous(handshake: object) -> None:
    assert Authenticator(SECRET, production=False).for_socket(handshake) is ANONYMOUS


@pytest.mark.parametrize("handshake", [None, {}, {"token": None}, {"token": ""}, {"jwt": "x"}])
def test_production_socket_without_token_is_refused(auth: Authenticator, handshake: object) -> None:
    unauthorized(auth.for_socket, handshake)


@pytest.mark.parametrize("production", [True, False])
@pytest.mark.parametrize("token", [42, ["a.b.c"], {"t": 1}, "not.a.token"])
def test_socket_token_that_is_given_is_always_checked(production: bool, token: object) -> None:
    """Development lets anonymous sockets in, but never a bad token."""
    unauthorized(Authenticator(SECRET, production=production).for_socket, {"token": token})


def test_socket_with_a_valid_token_gets_its_principal(auth: Authenticator) -> None:
    principal = auth.for_socket({"token": auth.mint(EMAIL, "device", IMEI)})
    assert msgspec.structs.replace(principal, expires=None) == Principal("device", EMAIL, IMEI)


# --------------------------------------------------------------------------- REST


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_request_with_a_bearer_token_gets_its_principal(auth: Authenticator, scheme: str) -> None:
    principal = auth.for_request(f"{scheme} {auth.mint(EMAIL, 'admin')}")
    assert msgspec.structs.replace(principal, expires=None) == Principal("admin", EMAIL)


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer not.a.token"],
)
def test_request_without_a_valid_bearer_token_is_unauthorized(auth: Authenticator, header: str | None) -> None:
    unauthorized(auth.for_request, header)


def test_request_without_token_is_refused_even_in_development() -> None:
    unauthorized(Authenticator(SECRET, production=False).for_request, None)


# --------------------------------------------------------------------------- scoping


@pytest.mark.parametrize(
    ("principal", "imei", "allowed"),
    [
        (ANONYMOUS, IMEI, True),
        (Principal("admin", EMAIL), IMEI, True),
        (Principal("device", EMAIL, IMEI), IMEI, True),
        (Principal("device", EMAIL, IMEI), OTHER_IMEI, False),
        (Principal("user", EMAIL), IMEI, False),
    ],
)
def test_may_register(principal: Principal, imei: str, allowed: bool) -> None:
    """A device token registers only its own imei; admins and development sockets anything."""
    assert principal.may_register(imei) is allowed


@pytest.mark.parametrize(
    ("principal", "email", "allowed"),
    [
        (ANONYMOUS, EMAIL, True),
        (Principal("admin", "admin@example.com"), EMAIL, True),
        (Principal("user", EMAIL), EMAIL, True),
        (Principal("user", EMAIL), "other@example.com", False),
        (Principal("device", EMAIL, IMEI), EMAIL, False),
    ],
)
def test_may_subscribe(principal: Principal, email: str, allowed: bool) -> None:
    """A user token subscribes only to its own e-mail; a device token to none."""
    assert principal.may_subscribe(email) is allowed


def test_verified_user_may_subscribe_to_the_decoded_email(auth: Authenticator) -> None:
    """Token e-mail and subscribe_user e-mail are both lower-cased, so case never refuses."""
    principal = auth.verify(signed({"email": "User@Example.com", "role": "user", "exp": later()}))
    assert principal.may_subscribe("user@example.com")
