"""The live dashboard page at ``/``: static files from the package, no build step, nothing fetched from the internet.

``index.html`` gets the page's settings inlined once, when the application is
built (:class:`PageConfig`: development or production sign-in, the map's tile
URL, the alert rules, so that the page can mark the readings that alert);
the scripts, styles and vendored libraries (``static/vendor``, see the
README's Operations section) are served from ``/static/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
from aiohttp import web
from msgspec import Struct

from ..core.rules import AlertRule

STATIC = Path(__file__).parent / "static"
STATIC_PREFIX = "/static"
#: Where index.html takes its settings: a JSON script element the page reads.
CONFIG_MARK = "<!--iothub-config-->"


class RuleView(Struct, frozen=True):
    """What the page needs of a rule to mark an alerting reading."""

    code: str
    field: str
    op: str
    threshold: float
    level: str


class PageConfig(Struct, frozen=True, kw_only=True):
    production: bool
    #: A Leaflet tile URL template (``https://…/{z}/{x}/{y}.png``), or None for markers on a plain background.
    tiles: str | None
    attribution: str | None
    rules: list[RuleView]


def page(config: PageConfig) -> bytes:
    """index.html with ``config`` inlined; ``<`` escaped, so no value can close the script element."""
    text = msgspec.json.encode(config).decode().replace("<", "\\u003c")
    script = f'<script id="iothub-config" type="application/json">{text}</script>'
    return (STATIC / "index.html").read_text().replace(CONFIG_MARK, script).encode()


def add_routes(app: web.Application, *, production: bool, tiles: str | None, attribution: str | None, rules: Sequence[AlertRule]) -> None:
    views = [RuleView(rule.code, rule.field, rule.op, rule.threshold, rule.level) for rule in rules]
    body = page(PageConfig(production=production, tiles=tiles, attribution=attribution, rules=views))

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    app.router.add_static(STATIC_PREFIX, STATIC, append_version=False)
