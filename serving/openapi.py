"""The OpenAPI document the service publishes (``/docs.json``), made to say what the service answers.

BentoML generates it from the endpoints' signatures, but documents a 400 whose ``detail`` is a string (the body
is pydantic's list of errors), none of the answers serving/hardening.py adds (408, 413, 415, 429) nor BentoML's
own request timeout (504), and not ``/metadata`` (a mounted Starlette app). ``OpenApiDoc`` rewrites the document
as it leaves; schemathesis checks every response against it (tests/serving/test_schemathesis.py).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SPEC_PATH = "/docs.json"
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
VALIDATION_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
# What the endpoints answer besides 200, and why (docs/serving.md#errors).
API_ERRORS = {
    400: ("a field is missing, of the wrong type or out of range; the body is not JSON", VALIDATION_ERROR),
    408: ("the request body did not arrive within DKT_BODY_TIMEOUT_S", ERROR),
    413: ("the request body is over DKT_MAX_BODY_BYTES", ERROR),
    # BentoML answers its own 4xx exceptions with the error object in a one-element list.
    409: (
        "`since` does not match the answers the service holds for this student_id: send the whole history",
        {"type": "array", "items": ERROR, "minItems": 1, "maxItems": 1},
    ),
    415: ("the body is declared as something other than application/json", ERROR),
    429: ("DKT_MAX_CONCURRENCY requests are already being served", ERROR),
    500: ("the service failed (a bug: never a client's mistake)", ERROR),
    504: ("not answered within DKT_SERVICE_TIMEOUT_S", ERROR),
}


def _response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


METADATA = {
    "get": {
        "tags": ["Service APIs"],
        "operationId": "dkt_service__metadata",
        "description": "The served model: name, version, lineage, metrics, limits (docs/serving.md).",
        "responses": {
            "200": _response("the model's metadata", {"type": "object", "additionalProperties": True}),
            "503": _response("the model is still loading", ERROR),
        },
    }
}


def amend(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with every endpoint's real answers and ``/metadata``."""
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "x-bentoml-name" in operation:
                operation["responses"] = {
                    "200": operation["responses"]["200"],
                    **{str(code): _response(why, schema) for code, (why, schema) in API_ERRORS.items()},
                }
    spec.setdefault("paths", {})["/metadata"] = METADATA
    # An optional argument (`at: Timestamp | None = None`) takes null: BentoML drops the None of some and writes
    # pydantic's {"type": "null"} for others, which is JSON Schema (OpenAPI 3.1), not the 3.0 it declares.
    spec["openapi"] = "3.1.0"
    _allow_null(spec)
    return spec


def _allow_null(node: Any) -> None:
    """Every property that defaults to None, in the components and in the inline request bodies, takes null."""
    if isinstance(node, list):
        for item in node:
            _allow_null(item)
    if not isinstance(node, dict):
        return
    properties = node.get("properties")
    if isinstance(properties, dict):
        for name, prop in properties.items():
            if isinstance(prop, dict) and prop.get("default", ...) is None and "anyOf" not in prop:
                kept = {k: v for k, v in prop.items() if k not in ("default", "title")}
                properties[name] = {"anyOf": [kept, {"type": "null"}], "default": None, "title": prop.get("title")}
    for value in node.values():
        _allow_null(value)


class OpenApiDoc:
    """Rewrites the ``GET /docs.json`` response with :func:`amend`; every other request passes untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SPEC_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_amended(start, b"".join(chunks), send)
            else:
                await send(message)

        await self.app(scope, receive, keep)


async def _send_amended(start: Message | None, body: bytes, send: Send) -> None:
    assert start is not None, "a response body before its start"
    if start["status"] == 200:
        body = json.dumps(amend(json.loads(body))).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
