"""At most ``max_concurrency`` requests at once inside the service; more get 429 at once.

BentoML's own limit (``traffic.max_concurrency``) sits in front of every user middleware, so a request counted
from its headers on: 256 clients that send headers and never finish the body held every slot and each other call
got 429 (issue 13). This one sits behind serving/body_limit.py, so only requests whose body has arrived count.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class ConcurrencyLimit:
    def __init__(self, app: ASGIApp, max_concurrency: int, skip_paths: frozenset[str] = frozenset()):
        self.app = app
        self.max_concurrency = max_concurrency
        self.skip_paths = skip_paths  # probes and metrics answer however busy the model is
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_concurrency:
            response = JSONResponse({"error": "too many requests"}, status_code=429, headers={"retry-after": "1"})
            await response(scope, receive, send)
            return
        self.active += 1  # one event loop per worker: no lock needed between the check and the count
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


PROBES = frozenset({"/readyz", "/livez", "/healthz", "/metrics"})
