"""The service against wrong and slow clients (serving/hardening.py): each protection alone and in-process, then
the real `bentoml serve` (the session's live server) held by 300 slow bodies, sent malformed bodies and watched in
its log."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import requests
from pydantic import BaseModel, ValidationError

from serving.body_limit import BodyLimit
from serving.concurrency import PROBES, ConcurrencyLimit
from serving.errors import ClientErrorLog, JsonOnly
from serving.settings import settings
from tests.serving.servers import Server
from tests.support.slow_clients import hold

# -- in-process: each middleware and the log filter --------------------------------------------------------------


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that reads the whole body and answers 200 with its length."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


async def through(app: Any, headers: list[tuple[bytes, bytes]], receive: Any, path: str = "/predict") -> int:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def whole(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 200),  # no Content-Type: JSON, as BentoML reads it
        (b"application/json", 200),
        (b"Application/JSON; charset=utf-8", 200),
        (b"multipart/form-data", 415),  # no boundary: the 500 of issue 13
        (b"multipart/form-data; boundary=x", 415),
        (b"application/x-www-form-urlencoded", 415),
        (b"application/vnd.bentoml+pickle", 415),
        (b"text/plain", 415),
        (b"", 415),
    ],
)
def test_only_json_bodies_reach_the_endpoints(content_type: bytes | None, status: int) -> None:
    headers = [] if content_type is None else [(b"content-type", content_type)]
    assert asyncio.run(through(JsonOnly(answer), headers, whole(b"{}"))) == status


def test_a_body_that_stops_arriving_gets_408_after_the_timeout() -> None:
    async def stalls() -> dict[str, Any]:
        if not hasattr(stalls, "sent"):
            stalls.sent = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b'{"cand', "more_body": True}
        await asyncio.sleep(3600)  # the client never sends the rest
        raise AssertionError("unreachable")

    start = time.monotonic()
    status = asyncio.run(through(BodyLimit(answer, max_bytes=100, timeout_s=0.2), [(b"content-length", b"50")], stalls))
    assert status == 408 and time.monotonic() - start < 30  # 0.2 s, not the hour the client would take
    # A body that arrives in time passes whole.
    assert asyncio.run(through(BodyLimit(answer, max_bytes=100, timeout_s=5), [], whole(b"{}"))) == 200


def test_only_requests_with_a_body_count_against_the_concurrency_limit() -> None:
    async def scenario() -> list[int]:
        release = asyncio.Event()

        async def busy(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await release.wait()
            await answer(scope, receive, send)

        limit = ConcurrencyLimit(busy, max_concurrency=2, skip_paths=PROBES)
        held = [asyncio.create_task(through(limit, [], whole(b"{}"))) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await through(limit, [], whole(b"{}"))  # a third while two are in the model
        probe = asyncio.create_task(through(limit, [], whole(b""), path="/readyz"))  # probes are never refused
        release.set()
        done = await asyncio.gather(*held, probe)
        return [refused, *done, await through(limit, [], whole(b"{}"))]

    assert asyncio.run(scenario()) == [429, 200, 200, 200, 200]


class Input(BaseModel):
    answerCode: int


def bentoml_error_record(exc: BaseException) -> logging.LogRecord:
    """The record BentoML's ``log_exception`` makes for a failed API call."""
    try:
        raise exc
    except BaseException as e:
        import sys

        exc_info = sys.exc_info()
        assert exc_info[1] is e
    return logging.LogRecord(
        "bentoml._internal.server.http_app", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/predict", "POST"),
        exc_info,
    )  # fmt: skip


def test_a_client_error_becomes_one_info_line_without_its_input() -> None:
    try:
        Input.model_validate({"answerCode": "SECRET-INPUT"})
    except ValidationError as e:
        record = bentoml_error_record(e)
    assert ClientErrorLog().filter(record)
    line = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert line == "INFO client error 400 on POST /predict: 1 validation error(s): answerCode (int_parsing)"
    assert record.exc_info is None and "SECRET-INPUT" not in line


def test_a_server_error_keeps_its_level_and_traceback() -> None:
    record = bentoml_error_record(RuntimeError("model broke"))
    assert ClientErrorLog().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in logging.Formatter().format(record)


# -- the live `bentoml serve` --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_slow_clients_are_cut_and_do_not_starve_the_others(service: Server) -> None:
    """300 connections that send headers and part of a body, then stall: more than BentoML's old limit of 256
    requests in flight, which answered every other call 429 (issue 13). Meanwhile /readyz and /predict answer 200;
    each slow body gets 408 (not BentoML's 504) after DKT_BODY_TIMEOUT_S; a connection that never finishes its
    headers is closed after DKT_HEADER_TIMEOUT_S."""
    wait_s = max(settings.body_timeout_s, settings.header_timeout_s) + 60  # generous: a loaded CI host
    held = hold(service.url, n=300, rounds=5, wait_s=wait_s)
    print("\n" + held.summary())
    assert all(code == 200 for v in held.probes.values() for code, _ in v), held.probes  # not 429
    assert held.statuses == {408: 300}, held.statuses
    assert b"not received within" in held.first_reply
    assert held.header_reply == b""  # closed without an answer: its request never began


BAD = [
    # (Content-Type, body, status): a malformed body or media type is the client's mistake, never a 5xx
    ("multipart/form-data", b"abc", 415),  # no boundary: a 500 (KeyError/HTTPException) before
    ("multipart/form-data; boundary=z", b"--z\r\nContent-Disposition: form-data; name=history\r\n\r\n[]\r\n--z--", 415),
    ("application/x-www-form-urlencoded", b"history=%5B%5D", 415),
    ("text/plain", b"{}", 415),
    ("application/json", b"\xff\xfe not utf-8", 400),
    ("application/json", b'{"candidates": [{"assessmentItemID": "SECRET-INPUT-7", "testId": 1}]}', 400),
]  # fmt: skip


@pytest.mark.slow
def test_malformed_requests_get_a_4xx_logged_once_at_info(service: Server) -> None:
    before = service.log.read_text(errors="replace")
    for content_type, body, status in BAD:
        r = requests.post(service.url + "/predict", data=body, headers={"Content-Type": content_type}, timeout=60)
        assert r.status_code == status, (content_type, body, r.status_code, r.text)
    assert requests.get(service.url + "/readyz", timeout=60).status_code == 200
    deadline = time.monotonic() + 60  # the log is written by another process: wait for the last lines
    while True:
        new = service.log.read_text(errors="replace")[len(before) :]
        reasons = [line for line in new.splitlines() if "client error 400 on POST /predict" in line]
        if len(reasons) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(reasons) == 2 and all("[INFO]" in line for line in reasons), reasons  # the two 400s, once each
    assert "candidates.0.testId (string_type)" in reasons[1]  # the field at fault, not its value
    assert "Traceback" not in new and "[ERROR]" not in new and "SECRET-INPUT" not in new, new[-3000:]
