"""An ASGI middleware in front of the service: the whole request body is read, within a size and a time limit,
before anything behind it runs.

Over ``max_bytes`` (by its Content-Length, or counted as a chunked body arrives) gets 413 before it is read into
memory; a body that stops arriving (fewer bytes than its Content-Length, a chunked body with no last chunk) gets
408 after ``timeout_s``. Reading the body here, before the concurrency limit
(serving/concurrency.py), is what keeps slow clients from holding the slots that finished requests need.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Reads the body (at most ``max_bytes``, within ``timeout_s``), then hands the app the whole of it."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 10.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _reply(send, 413, f"request body over {self.max_bytes} bytes")
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except TimeoutError:
            await _reply(send, 408, f"request body not received within {self.timeout_s:g} s")
            return
        except _TooLarge:
            await _reply(send, 413, f"request body over {self.max_bytes} bytes")
            return
        except _Disconnected:
            return  # nobody left to answer
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: the disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        seen, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _reply(send: Send, status: int, error: str) -> None:
    # Connection: close: the rest of an unread body must not be parsed as the next request.
    response = JSONResponse({"error": error}, status_code=status, headers={"connection": "close"})
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
