"""schemathesis against a real `bentoml serve`: every endpoint of the published OpenAPI document, at least 2,000
generated requests (valid and invalid bodies, wrong methods, boundary values), every response checked against the
document (status codes, content types, headers, bodies) and none a 5xx."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.servers import Server, bentoml_env, bentoml_service

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
# Response conformance and input rejection. Not positive_data_acceptance: JSON Schema cannot say that a timestamp
# must be ISO 8601 or that a history must not repeat an answer, so schema-valid bodies can rightly get 400.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "missing_required_header",
]
# Per operation and run. Hypothesis also stops an operation early when too many of its draws are thrown away (the
# negative mode's), so a run's count varies (seed 13 at 500: 1,958 requests once, fewer another time): the test runs
# seeds 13, 14, ... until 2,000 requests are reached; small runs stop close to it.
MAX_EXAMPLES = 300
TARGET = 2000


@pytest.fixture(scope="module")
def small_service(packed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Its own server with small request limits: schemathesis generates lists up to the documented maximum, and
    building 10,000-answer histories costs its process about 100 ms of CPU a request (82 CPU-s for 844 requests
    against the default limits, 47 CPU-s for 1,958 against these). The limits are settings; the code is the same."""
    env = bentoml_env(packed.home, packed.model_tag)
    env.update(DKT_MAX_HISTORY="5", DKT_MAX_CANDIDATES="5", DKT_MAX_BODY_BYTES="65536")
    with bentoml_service("service:DKTService", env, tmp_path_factory.mktemp("st") / "bentoml.log") as server:
        yield server


def test_schemathesis_finds_no_5xx_and_no_schema_violation(small_service: Server, tmp_path: Path) -> None:
    entries: list[dict] = []
    for seed in range(13, 25):
        har = tmp_path / f"requests-{seed}.har"
        cmd = [
            SCHEMATHESIS, "run", small_service.url + "/docs.json",
            "--checks", ",".join(CHECKS), "--max-examples", str(MAX_EXAMPLES), "--seed", str(seed),
            "--workers", "1", "--no-shrink", "--generation-database", "none", "--request-timeout", "60",
            "--report", "har", "--report-har-path", str(har), "--no-color",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        entries += json.loads(har.read_text())["log"]["entries"]
        if len(entries) >= TARGET:
            break
    statuses = collections.Counter(e["response"]["status"] for e in entries)
    paths = {e["request"]["url"].removeprefix(small_service.url) for e in entries}
    print(f"\nschemathesis: {len(entries)} requests (seeds 13..{seed}), statuses {dict(sorted(statuses.items()))}")
    assert sum(n for status, n in statuses.items() if status >= 500) == 0
    assert len(entries) >= TARGET
    assert {"/predict", "/knowledge_state", "/score", "/metadata", "/readyz", "/livez"} <= paths
