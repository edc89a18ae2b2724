"""``iothub``: serve, and mint tokens for local use."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from .auth import ROLES, Authenticator
from .config import ENVIRONMENT, ConfigError, Settings


def _serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the server", description="Run the server; flags override the environment.")
    for name, variable in ENVIRONMENT.items():
        default = Settings.__struct_defaults__[Settings.__struct_fields__.index(name)]
        serve.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, metavar=variable, help=f"(env {variable}; default {default!r})"
        )


def _token_parser(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser("token", help="mint a JWT for local use", description="Print a token signed with JWT_SECRET.")
    token.add_argument("--email", required=True)
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--imei", help="the device's imei (role device)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iothub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_parser(commands)
    _token_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "token":
            return token(args)
        return serve({name: getattr(args, name) for name in ENVIRONMENT})
    except ConfigError as exc:
        print(f"iothub: {exc}", file=sys.stderr)
        return 2


def token(args: argparse.Namespace) -> int:
    settings = Settings.load()
    authenticator = Authenticator(settings.jwt_secret, production=settings.production)
    try:
        print(authenticator.mint(args.email, args.role, args.imei, args.ttl))
    except ValueError as exc:
        print(f"iothub: {exc}", file=sys.stderr)
        return 2
    return 0


def serve(overrides: dict[str, str | None]) -> int:
    from .app import Hub

    settings = Settings.load(**overrides)
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    hub = Hub(settings)
    web.run_app(
        hub.application(),
        host=settings.host,
        port=settings.port,
        print=lambda _banner: print(hub.describe(), flush=True),
        loop=_event_loop(),
        access_log=None,
    )
    return 0


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    sys.exit(main())
