"""A header timeout for the service's HTTP server.

uvicorn (which ``bentoml serve`` runs, with no option for it) waits for a request's headers forever: a client that
opens a connection and sends half a request line keeps a socket and a file descriptor for as long as it likes.
BentoML builds the uvicorn server itself, so the only hook is uvicorn's protocol class: ``install_header_timeout``
arms a timer when a connection opens and again after each response; when it fires with no request in progress
(headers not yet complete, or an idle keep-alive connection) the connection is closed. A request whose headers
have arrived is the body timeout's (serving/body_limit.py) and BentoML's request timeout's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("bentoml.dkt_service")


def _protocols() -> list[type[Any]]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    found: list[type[Any]] = [H11Protocol]
    try:  # only when httptools is installed, which uvicorn then prefers
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        pass
    else:
        found.append(HttpToolsProtocol)
    return found


def _idle(protocol: Any) -> bool:
    cycle = getattr(protocol, "cycle", None)
    return cycle is None or cycle.response_complete


def _arm(protocol: Any, seconds: float) -> None:
    timer = getattr(protocol, "_dkt_header_timer", None)
    if timer is not None:
        timer.cancel()

    def expire() -> None:
        transport = getattr(protocol, "transport", None)
        if _idle(protocol) and transport is not None and not transport.is_closing():
            transport.close()

    protocol._dkt_header_timer = asyncio.get_running_loop().call_later(seconds, expire)


def install_header_timeout(seconds: float) -> None:
    """Patch uvicorn's HTTP protocol classes (once per process) so idle and half-sent connections close."""
    for cls in _protocols():
        if getattr(cls, "_dkt_header_timeout", None) is not None:
            cls._dkt_header_timeout = seconds
            continue
        made, complete, lost = cls.connection_made, cls.on_response_complete, cls.connection_lost

        def connection_made(self: Any, transport: Any, _made: Any = made) -> None:
            _made(self, transport)
            _arm(self, type(self)._dkt_header_timeout)

        def on_response_complete(self: Any, _complete: Any = complete) -> None:
            _complete(self)
            if not self.transport.is_closing():
                _arm(self, type(self)._dkt_header_timeout)

        def connection_lost(self: Any, exc: Exception | None, _lost: Any = lost) -> None:
            timer = getattr(self, "_dkt_header_timer", None)
            if timer is not None:
                timer.cancel()
            _lost(self, exc)

        cls.connection_made, cls.on_response_complete, cls.connection_lost = (
            connection_made,
            on_response_complete,
            connection_lost,
        )
        cls._dkt_header_timeout = seconds
    log.debug("header timeout %.1f s on %s", seconds, ", ".join(c.__name__ for c in _protocols()))
