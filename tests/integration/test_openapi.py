"""``GET /api/openapi.json``: a valid OpenAPI 3.1 document, of every route served, that real answers and the README's examples fit.

- openapi-spec-validator checks the document itself.
- Every route the application serves (method and path) is in it, and every
  operation in it is served.
- Real answers of every REST endpoint, successes and failures, validate
  against the schema the document gives for their status.
- Every ``curl`` example of the README whose answer is shown (``# {…}``
  lines under it, an optional ``(status)`` after) validates against that
  operation's schema, and so does every JSON body it sends (``-d '{…}'``).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from iothub.app import Hub
from iothub.config import Settings
from iothub.http import openapi

from ..support.clients import rest

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
async def served(in_process, http):
    server = await in_process()
    response = await rest(http, "GET", server.url + "/api/openapi.json")
    assert response.status == 200
    return server, response.body


def schema_of(document: dict[str, Any], method: str, path: str, status: int, content: str = "application/json") -> Draft202012Validator:
    """A validator for the answer ``status`` of an operation, its ``$ref``s resolving in the document."""
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} does not document {status}"
    schema = responses[str(status)]["content"][content]["schema"]
    return Draft202012Validator({**schema, "components": document["components"]})


def body_schema_of(document: dict[str, Any], method: str, path: str) -> Draft202012Validator:
    schema = document["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": document["components"]})


def template_of(document: dict[str, Any], url_path: str) -> str:
    """The document's path template that ``url_path`` matches (``/api/telemetry/123…`` → ``/api/telemetry/{imei}``)."""
    for template in document["paths"]:
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), url_path):
            return template
    raise AssertionError(f"no path of the document matches {url_path}")


def assert_valid(validator: Draft202012Validator, instance: Any, what: str) -> None:
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(instance)]
    assert errors == [], f"{what}: {errors}"


async def test_the_document_is_valid_openapi_3_1(served):
    _server, document = served
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_served_is_described_and_every_description_served():
    app = Hub(Settings.load({"IOTHUB_STORE": "memory"})).application()
    served: set[tuple[str, str]] = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        path = resource.canonical + "/{path}" if isinstance(resource, web.StaticResource) else resource.canonical
        if route.method != "HEAD":  # aiohttp answers HEAD wherever it answers GET
            served.add((route.method.lower(), path))
    described = {(method, path) for path, operations in openapi.document()["paths"].items() for method in operations}
    assert served == described


async def test_real_answers_fit_the_document(served, http, open_client):
    server, document = served
    admin = server.admin_headers
    user = {"Authorization": "Bearer " + server.token("user@example.com", "user")}
    message = {"event": "maintenance", "data": {"at": "noon"}}
    calls: list[tuple[str, str, dict[str, str], Any, int]] = [
        ("GET", "/health", {}, None, 200),
        ("GET", "/api/realtime/status", {}, None, 200),
        ("GET", "/api/realtime/connections", admin, None, 200),
        ("GET", "/api/realtime/connections", {}, None, 401),
        ("GET", "/api/realtime/devices", admin, None, 200),
        ("GET", "/api/realtime/devices", user, None, 403),
        ("GET", "/api/realtime/users", admin, None, 200),
        ("POST", "/api/realtime/broadcast", admin, message, 200),
        ("POST", "/api/realtime/broadcast", admin, {"event": "connect"}, 400),
        ("POST", "/api/realtime/device/123456789012345", admin, message, 404),
        ("POST", "/api/realtime/device/12345", admin, message, 400),
        ("POST", "/api/realtime/user/nobody@example.com", admin, message, 404),
        ("GET", "/api/telemetry/123456789012345?limit=2", admin, None, 200),
        ("GET", "/api/telemetry/123456789012345?limit=0", admin, None, 400),
        ("GET", "/api/telemetry/123456789012345", user, None, 403),
        ("GET", "/api/alerts?level=critical", admin, None, 200),
        ("GET", "/api/alerts?level=loud", admin, None, 400),
    ]
    for method, url, headers, body, status in calls:
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json_body"] = body
        response = await rest(http, method, server.url + url, **kwargs)
        assert response.status == status, (method, url, response.body)
        path = template_of(document, url.split("?")[0])
        assert_valid(schema_of(document, method, path, status), response.body, f"{method} {url} → {status}")
        if body is not None and status == 200:
            assert_valid(body_schema_of(document, method, path), body, f"{method} {url} body")


def readme_examples() -> list[tuple[str, str, Any | None, Any, int]]:
    """Each README ``curl`` with a shown answer: (method, URL path, JSON body sent or None, answer, status)."""
    examples = []
    lines = README.read_text().splitlines()
    index = 0
    while index < len(lines):
        if not lines[index].startswith("curl "):
            index += 1
            continue
        command = lines[index].split(" #")[0]
        while command.rstrip().endswith("\\"):
            index += 1
            command = command.rstrip()[:-1] + " " + lines[index].split(" #")[0]
        index += 1
        shown = []
        while index < len(lines) and lines[index].startswith("#"):
            shown.append(lines[index][1:].strip())
            index += 1
        text = " ".join(shown)
        if not text.startswith("{"):
            continue
        try:
            answer, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"README line {index}: the example answer is not JSON ({exc}): {text}") from None
        status = re.fullmatch(r"\s*(?:\((\d{3})\))?\s*", text[end:])
        assert status is not None, f"unexpected text after an example answer: {text[end:]!r}"
        words = shlex.split(command.replace('"$AUTH"', "AUTH").replace("$TOKEN", "TOKEN"))
        method = words[words.index("-X") + 1] if "-X" in words else "GET"
        sent = json.loads(words[words.index("-d") + 1]) if "-d" in words else None
        url = next(word for word in words if word.startswith("http"))
        examples.append((method, re.sub(r"^https?://[^/]+", "", url).split("?")[0], sent, answer, int(status[1] or 200)))
    return examples


async def test_the_readmes_examples_fit_the_document(served):
    _server, document = served
    examples = readme_examples()
    assert len(examples) >= 5, examples
    for method, path, sent, answer, status in examples:
        template = template_of(document, path)
        assert_valid(schema_of(document, method, template, status), answer, f"README: {method} {path} → {status}")
        if sent is not None:
            assert_valid(body_schema_of(document, method, template), sent, f"README: {method} {path} body")
