"""The suite's own pytest plugins (tests/support/xdist_groups.py, tests/support/timeline.py), run as `make test` runs
them: a real pytest with two xdist workers on a small project of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.servers import ROOT

# Six tests of a group that must share a worker, beside six free ones; each group test records its worker.
PROJECT = """
import os, time, pytest

@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    time.sleep(0.05)
    with open(os.environ["WORKERS_SEEN"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_free(i):
    time.sleep(0.05)
"""


@pytest.mark.slow  # a nested pytest and its two xdist workers: 12 CPU-s, 6% of `make test-fast`; `make test` runs it
def test_an_xdist_group_runs_on_one_worker_and_the_timeline_names_both(tmp_path: Path) -> None:
    (tmp_path / "test_project.py").write_text(PROJECT)
    seen, timeline = tmp_path / "workers.txt", tmp_path / "timeline.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKERS_SEEN": str(seen)}
    # pyproject.toml's addopts switch three unused plugins off in every pytest process of `make test`; this
    # project's folder has no pyproject.toml, so they are named here (3 CPU-s per process, three processes).
    plugins = ["-p", "tests.support.xdist_groups", "-p", "tests.support.timeline"]
    plugins += ["-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:anyio"]
    args = ["-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "--timeline", str(timeline)]
    res = subprocess.run([sys.executable, "-m", "pytest", *plugins, *args, "test_project.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "12 passed" in res.stdout
    workers = seen.read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers  # without the shim: split over gw0 and gw1
    records = [json.loads(line) for line in timeline.read_text().splitlines()]
    assert {r["worker"] for r in records} == {"gw0", "gw1"}  # the free tests went to the other worker
    assert {(r["test"].split("@")[0], r["phase"]) for r in records} >= {("test_project.py::test_grouped[0]", "call")}
    assert all(r["stop"] >= r["start"] >= 0 and r["cpu"] >= 0 for r in records)
    assert "time and CPU per worker" in res.stdout and "gw0: " in res.stdout and "gw1: " in res.stdout
