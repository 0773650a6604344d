from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import store_settings
from pipeline.store import VersionedStore
from tests.pipeline.s3server import S3Server, moto_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VersionedStore:
    """An empty store of each backend; the S3 one is a fresh prefix in a real (moto) S3 endpoint."""
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        env = server.env(prefix=f"t/{tmp_path.name}")
    else:
        env = {"DKT_STORE": "local", "DKT_STORE_ROOT": str(tmp_path / "store")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return VersionedStore.from_env(store_settings())
