"""``GET /api/openapi.json``: the REST API described in OpenAPI 3.1, generated from the structs that encode it.

Each operation below names the msgspec types of its body, its query and path
parameters and its answer, the very types the handlers decode and encode
with; :func:`document` turns them into JSON Schema with msgspec's
``schema_components`` (JSON Schema 2020-12, OpenAPI 3.1's dialect). Nothing
about a shape is written here by hand, only what an operation is: its route,
who may call it, and which failures it can answer. The document is built
once, when the application is.

``tests/integration/test_openapi.py`` checks the document with
openapi-spec-validator, that every route the application serves is in it,
and that every example answer in the README validates against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Literal

import msgspec
from aiohttp import web

from ..core.protocol import Connections, Delivery, DeviceInfo, DirectedMessage, Email, Envelope, ErrorEnvelope, Imei
from .history import AlertItem, AlertQuery, HistoryPage, HistoryQuery, TelemetryItem
from .rest import Health, Status

PATH = "/api/openapi.json"
REF_TEMPLATE = "#/components/schemas/{name}"

Auth = Literal["public", "admin", "reader", "metrics"]

#: What each failure status means, whatever the operation.
STATUS_TEXT = {
    400: "The body or a parameter is malformed or out of range (INVALID_PAYLOAD, INVALID_IMEI, INVALID_EMAIL)",
    401: "No valid token (UNAUTHORIZED)",
    403: "The token does not allow this (FORBIDDEN)",
    404: "The target is not connected (NOT_FOUND)",
    413: "The body is larger than MAX_PAYLOAD_BYTES (PAYLOAD_TOO_LARGE)",
    500: "Anything unexpected (INTERNAL); the detail is in the server's log",
    503: "The store does not answer; retry later (STORE_UNAVAILABLE)",
}
#: The failures a kind of caller can meet, besides the operation's own.
AUTH_FAILURES: dict[Auth, tuple[int, ...]] = {"public": (), "admin": (401, 403), "reader": (401, 403), "metrics": (401,)}


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post"]
    path: str
    summary: str
    #: The type of the JSON answer, or None for another content type (``content``).
    answer: Any
    auth: Auth = "public"
    body: Any = None
    query: type[msgspec.Struct] | None = None
    path_parameters: dict[str, Any] = field(default_factory=dict)
    failures: tuple[int, ...] = ()
    content: str = "application/json"
    description: str = ""


OPERATIONS = (
    Operation("get", "/health", "Liveness, and the store's outage (still 200 while degraded)", Health),
    Operation("get", "/api/realtime/status", "Counts and message rates, nothing personal", Envelope[Status]),
    Operation("get", "/api/realtime/connections", "Connected devices and subscribed users", Envelope[Connections], auth="admin"),
    Operation("get", "/api/realtime/devices", "Connected devices", Envelope[list[DeviceInfo]], auth="admin"),
    Operation("get", "/api/realtime/users", "E-mails with a subscribed socket", Envelope[list[str]], auth="admin"),
    Operation(
        "post", "/api/realtime/broadcast", "An event to every connected socket", Envelope[Delivery], auth="admin",
        body=DirectedMessage, failures=(400, 413),
    ),
    Operation(
        "post", "/api/realtime/device/{imei}", "An event to a device's socket", Envelope[Delivery], auth="admin",
        body=DirectedMessage, path_parameters={"imei": Imei}, failures=(400, 404, 413),
    ),
    Operation(
        "post", "/api/realtime/user/{email}", "An event to every socket subscribed to an e-mail", Envelope[Delivery], auth="admin",
        body=DirectedMessage, path_parameters={"email": Email}, failures=(400, 404, 413),
    ),
    Operation(
        "get", "/api/telemetry/{imei}", "A device's telemetry, newest first, a page at a time", Envelope[HistoryPage[TelemetryItem]],
        auth="reader", query=HistoryQuery, path_parameters={"imei": Imei}, failures=(400, 503),
        description="An admin token reads every device, a user token the devices it owns.",
    ),
    Operation(
        "get", "/api/alerts", "Alerts, newest first, a page at a time", Envelope[HistoryPage[AlertItem]],
        auth="reader", query=AlertQuery, failures=(400, 503),
        description="Without imei, a user token reads the alerts of all its devices and an admin token all alerts.",
    ),
    Operation(
        "get", "/metrics", "Prometheus metrics (text format)", None, auth="metrics", content="text/plain",
        description="Open unless IOTHUB_METRICS_TOKEN is set; then it needs Authorization: Bearer <that token>.",
    ),
    Operation("get", PATH, "This document", None),
    Operation("get", "/", "The live dashboard page", None, content="text/html"),
    Operation(
        "get", "/static/{path}", "The dashboard page's scripts, styles and their libraries", None,
        path_parameters={"path": str}, failures=(404,), content="application/octet-stream",
    ),
    Operation(
        "get", "/socket.io/", "Socket.IO (Engine.IO v4): a long-poll, or the upgrade to a WebSocket", None, content="text/plain",
        description="The Socket.IO protocol, not REST: see the README's Protocol section.", failures=(400,),
    ),
    Operation(
        "post", "/socket.io/", "Socket.IO (Engine.IO v4): packets sent by long-polling", None, content="text/plain",
        description="The Socket.IO protocol, not REST: see the README's Protocol section.", failures=(400,),
    ),
)  # fmt: skip

#: The path of each operation that is Socket.IO's, with the OPTIONS Engine.IO answers for CORS.
SOCKETIO_PATH = "/socket.io/"


def _parameters(operation: Operation, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": msgspec.json.schema(kind)}
        for name, kind in operation.path_parameters.items()
    ]
    if operation.query is not None:
        query = schemas[operation.query.__name__]
        required = set(query.get("required", ()))
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": schema}
            for name, schema in query["properties"].items()
            if name not in operation.path_parameters
        ]
    return parameters


def _responses(operation: Operation, answer: dict[str, Any] | None) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": operation.summary}
    ok["content"] = {operation.content: {"schema": answer if answer is not None else {}}}
    responses = {"200": ok}
    error = {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(name="ErrorEnvelope")}}}
    for status in sorted({*AUTH_FAILURES[operation.auth], *operation.failures, 500}):
        responses[str(status)] = {"description": STATUS_TEXT[status], "content": error}
    return responses


def _security(auth: Auth) -> list[dict[str, list[str]]]:
    """Who may call: nobody in particular, a bearer token of a role, or (metrics) either, as IOTHUB_METRICS_TOKEN decides."""
    schemes: dict[Auth, list[dict[str, list[str]]]] = {
        "public": [], "admin": [{"adminToken": []}], "reader": [{"readerToken": []}], "metrics": [{}, {"metricsToken": []}],
    }  # fmt: skip
    return schemes[auth]


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`OPERATIONS`."""
    answers = [operation.answer for operation in OPERATIONS if operation.answer is not None]
    bodies = [operation.body for operation in OPERATIONS if operation.body is not None]
    queries = [operation.query for operation in OPERATIONS if operation.query is not None]
    refs, schemas = msgspec.json.schema_components([*answers, *bodies, *queries, ErrorEnvelope], ref_template=REF_TEMPLATE)
    answer_refs = dict(zip(map(id, answers), refs))
    body_refs = dict(zip(map(id, bodies), refs[len(answers) :]))
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        entry: dict[str, Any] = {
            "summary": operation.summary,
            "operationId": f"{operation.method}{operation.path}",
            "security": _security(operation.auth),
            "parameters": _parameters(operation, schemas),
            "responses": _responses(operation, answer_refs.get(id(operation.answer))),
        }
        if operation.description:
            entry["description"] = operation.description
        if operation.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_refs[id(operation.body)]}}}
        paths.setdefault(operation.path, {})[operation.method] = entry
    paths[SOCKETIO_PATH]["options"] = {
        "summary": "Socket.IO's CORS preflight",
        "operationId": f"options{SOCKETIO_PATH}",
        "responses": {"200": {"description": "The origins FRONTEND_URL allows"}},
    }
    for name in {query.__name__ for query in queries}:
        del schemas[name]  # described as parameters, not as a body
    return {
        "openapi": "3.1.0",
        "info": {"title": "IoT Hub REST API", "version": version("iothub"), "description": "Every answer is {success, message, data?}; "
                 "a failure adds code and has the status its code names."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A token with role admin"},
                "readerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A token with role admin or user"},
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "IOTHUB_METRICS_TOKEN, when it is set"},
            },
        },
    }  # fmt: skip


def add_routes(app: web.Application) -> None:
    body = msgspec.json.encode(document())

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(PATH, openapi)
