"""``iothub``: serve, and mint tokens for local use."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import logs
from .config import ENVIRONMENT, ConfigError, Settings, flag_of
from .core.auth import ROLES, Authenticator
from .loop import new_event_loop
from .tls import server_context

#: Defaults that depend on other settings, as ``serve --help`` and the README state them.
DEFAULTS_IN_WORDS = {
    "host": "127.0.0.1 in development, 0.0.0.0 in production",
    "jwt_secret": "a development secret; production needs one",
    "frontend_url": "* in development, the server's own origin only in production",
    "rate_burst": "twice the rate",
}


def _serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the server", description="Run the server; flags override the environment.")
    for name, variable in ENVIRONMENT.items():
        default = DEFAULTS_IN_WORDS.get(name, repr(Settings.__struct_defaults__[Settings.__struct_fields__.index(name)]))
        serve.add_argument(flag_of(variable), dest=name, default=None, metavar=variable, help=f"(env {variable}; default {default})")


def _token_parser(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser("token", help="mint a JWT for local use", description="Print a token signed with JWT_SECRET.")
    token.add_argument("--email", required=True)
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--imei", help="the device's imei (role device)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")


def _bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="run the fleet benchmark (from a checkout: it lives in bench/)", add_help=False, prefix_chars="\0")
    bench.add_argument("arguments", nargs=argparse.REMAINDER)


def _simulate_parser(commands: argparse._SubParsersAction) -> None:
    simulate = commands.add_parser("simulate", help="run a fleet of simulated devices against a server")
    simulate.add_argument("--devices", type=int, default=10)
    simulate.add_argument("--rate", type=float, default=5.0, help="messages per second from the whole fleet")
    simulate.add_argument("--url", default="http://127.0.0.1:6162")
    simulate.add_argument("--duration", type=float, help="seconds to run (default: until interrupted)")
    simulate.add_argument("--token", help="a token for the handshake (production servers)")
    simulate.add_argument("--owners", type=int, help="owners the devices are dealt to (default: one per ten devices, at least one)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iothub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_parser(commands)
    _token_parser(commands)
    _bench_parser(commands)
    _simulate_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "token":
            return token(args)
        if args.command == "bench":
            return bench(args.arguments)
        if args.command == "simulate":
            return simulate(args)
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
    from .app import serve as serve_hub
    from .heap import pace_collector

    settings = Settings.load(None, **overrides)
    ssl_context = server_context(settings)  # before anything else: a TLS file it cannot use is a ConfigError
    logs.configure(settings.log_format, debug=bool(settings.debug))
    if settings.workers > 1:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read when Ray is imported: every gateway's lines, not a tally of repeats
        from .cluster.launch import serve_cluster

        return serve_cluster(settings)
    hub = Hub(settings)
    app = hub.application()
    pace_collector(app)
    serve_hub(hub, app, ssl_context, new_event_loop(), lambda: logs.announce(hub.describe(), settings.log_format))
    return 1 if hub.lost else 0  # rows the store never took: say so to whatever restarts the server


def bench(arguments: list[str]) -> int:
    """The fleet benchmark is not part of the server: it is loaded from the checkout's ``bench/`` when asked for."""
    sys.path.insert(0, os.getcwd())
    try:
        from bench.fleet import main as run_benchmark
    except ModuleNotFoundError:
        print("iothub: iothub bench runs from the project's folder, where bench/ is", file=sys.stderr)
        return 2
    return run_benchmark(arguments)


def simulate(args: argparse.Namespace) -> int:
    from .loadgen.fleet import simulate as run_fleet

    loop = new_event_loop()
    try:
        loop.run_until_complete(run_fleet(args.url, args.devices, args.rate, args.duration, args.token, args.owners))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
