"""The service's protections against wrong and slow clients, put on the service class in one call.

A request meets them in this order (outermost first, behind BentoML's own access log and request timeout):
OpenApiDoc (the published schema says all of this) -> JsonOnly (415) -> BodyLimit (413, 408) -> ConcurrencyLimit
(429) -> the endpoint. The header timeout acts below ASGI, on the connection; the client-error log filter on
BentoML's error logger.
"""

from __future__ import annotations

from typing import Any

from dkt.settings import ServiceSettings
from serving.body_limit import BodyLimit
from serving.concurrency import PROBES, ConcurrencyLimit
from serving.errors import JsonOnly, install_client_error_log
from serving.openapi import OpenApiDoc
from serving.timeouts import install_header_timeout


def harden(service: Any, settings: ServiceSettings) -> None:
    """Add the middlewares to ``service`` (a ``bentoml.service`` class) and install the connection and log hooks."""
    service.add_asgi_middleware(OpenApiDoc)
    service.add_asgi_middleware(JsonOnly)
    service.add_asgi_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    service.add_asgi_middleware(ConcurrencyLimit, max_concurrency=settings.max_concurrency, skip_paths=PROBES)
    install_header_timeout(settings.header_timeout_s)
    install_client_error_log()
