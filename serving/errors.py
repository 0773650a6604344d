"""What a client gets and what the log says when a request is wrong.

- ``JsonOnly``: the endpoints read JSON; any other declared media type gets 415 before BentoML parses it
  (BentoML would parse multipart and form bodies too, and a multipart request without a boundary raised a
  KeyError-style 500).
- ``ClientErrorLog``: BentoML logs every rejected request at ERROR with a traceback whose message carries the
  request's input (pydantic's ``input_value``). A client's mistake is not the service's error and must not be a
  way to fill its log: the record becomes one INFO line naming the status, the route and the fields at fault.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

JSON = b"application/json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# BentoML's `log_exception` (the "Exception on <path> [<method>]" record of every failed API call) logs here.
BENTOML_ERROR_LOGGER = "bentoml._internal.server.http_app"


class JsonOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            declared = dict(scope.get("headers") or []).get(b"content-type")
            # No Content-Type: BentoML reads JSON, and so do the clients that leave it out.
            if declared is not None and declared.split(b";")[0].strip().lower() != JSON:
                response = JSONResponse({"error": "Content-Type must be application/json"}, status_code=415)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def client_error_status(exc: BaseException) -> int | None:
    """The 4xx status BentoML answers ``exc`` with, or None when it is the service's fault (5xx)."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, BentoMLException):
        status = int(exc.error_code)
    elif isinstance(exc, HTTPException):
        status = exc.status_code
    else:
        return None
    return status if 400 <= status < 500 else None


def describe(exc: BaseException) -> str:
    """The reason without the input: for a validation error the path and type of each failing field."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(body)'} ({err['type']})"
            for err in exc.errors(include_input=False, include_context=False)[:5]
        )
        more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        return f"{exc.error_count()} validation error(s): {fields}{more}"
    return type(exc).__name__


class ClientErrorLog(logging.Filter):
    """Turns BentoML's ERROR-with-traceback record of a 4xx into one INFO line without the request's input."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = client_error_status(exc) if exc is not None else None
        if status is None:
            return True  # a real failure keeps its level and traceback
        path, method = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
        record.msg, record.args = "client error %d on %s %s: %s", (status, method, path, describe(exc))
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def install_client_error_log() -> None:
    logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    if not any(isinstance(f, ClientErrorLog) for f in logger.filters):
        logger.addFilter(ClientErrorLog())
