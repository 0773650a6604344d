"""A packed model and a live `bentoml serve`, made once per test session (a plugin of tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serving.servers import PY, ROOT, Server, bentoml_env, bentoml_service


@dataclass
class Packed:
    home: Path  # BENTOML_HOME holding the model and the Bento
    model_tag: str
    bento_tag: str
    bundle: Path


@pytest.fixture(scope="session")
def packed(lstm_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Packed:
    home = tmp_path_factory.mktemp("bentoml")
    proc = subprocess.run(
        [PY, "packer.py", "--model-dir", str(lstm_bundle)],
        cwd=ROOT,
        env=bentoml_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("model: ") and lines[-1].startswith("bento: "), proc.stdout
    return Packed(home, lines[-2].split(": ", 1)[1], lines[-1].split(": ", 1)[1], lstm_bundle)


@pytest.fixture(scope="session")
def service(packed: Packed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`bentoml serve service:DKTService` from the repo root, on the packed model. It follows a served-model file in
    a folder of its own (``/metadata``'s ``swap.file``; absent but while tests/pipeline/test_deploy.py's swap test
    runs, which removes it again: the server then serves the packed model again)."""
    log = tmp_path_factory.mktemp("logs") / "bentoml.log"
    env = bentoml_env(packed.home, packed.model_tag)
    env["DKT_SERVED_MODEL_FILE"] = str(tmp_path_factory.mktemp("run") / "served_model.json")
    with bentoml_service("service:DKTService", env, log) as server:
        yield server
