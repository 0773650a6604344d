"""pipeline.swarm's settings, metadata check and CLI errors (no Docker needed for these)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from pipeline.swarm import METADATA_SAMPLES, SwarmSettings, check_client_store, check_metadata, swarm_settings
from pipeline.swarm_images import REPO_ROOT
from pipeline.swarm_service import RolloutFailed
from tests.support.cli import in_process


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """``dkt swarm ARGS`` in the test's process from the repository root, ``env`` added to this environment (was a
    `python -m dkt swarm` process per call, 0.6 CPU-s of imports each). What the command refuses and says is the point
    here; its process contract (exit 2, one line, no traceback) is tests/test_cli.py's bad-input test, on the installed
    script; an exception here fails the test, where a process would have printed a traceback."""

    def run(*args: str, env: dict[str, str] | None = None) -> Ran:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(REPO_ROOT)
        return Ran(*in_process(["swarm", *args], capsys))

    return run


def test_settings_defaults() -> None:
    s = swarm_settings({})
    assert (s.registry, s.client_url) == ("127.0.0.1:5000", "http://127.0.0.1:8080")
    assert swarm_settings({"DKT_REGISTRY": "reg.example:5000", "DKT_SWARM_TIMEOUT": "90"}).timeout == 90


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_bad_timeout_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="DKT_SWARM_TIMEOUT"):
        swarm_settings({"DKT_SWARM_TIMEOUT": value})


def fetcher(versions: list[str]) -> Any:
    seq = list(versions)

    def fetch(_s: SwarmSettings) -> dict[str, Any]:
        v = seq.pop(0) if len(seq) > 1 else seq[0]
        if v == "down":
            raise OSError("connection refused")
        return {"model_version": v}

    return fetch


def test_metadata_must_agree_many_times_in_a_row() -> None:
    seq = ["down", "v1", "v2", "v1", *["v2"] * METADATA_SAMPLES]
    assert check_metadata(swarm_settings({}), "v2", timeout=10, fetch=fetcher(seq)) == {"model_version": "v2"}


def test_metadata_stuck_on_the_old_version_fails_with_the_url() -> None:
    with pytest.raises(RolloutFailed, match=r"127.0.0.1:3000/metadata did not report model_version=v2.*v1"):
        check_metadata(swarm_settings({}), "v2", timeout=0.5, fetch=fetcher(["v1"]))


def test_help_lists_the_commands(cli: Callable[..., Ran]) -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("build", "deploy", "scale", "status", "down"):
        assert command in out.stdout
    assert "--replicas" in cli("scale", "--help").stdout


def test_deploy_needs_a_model_or_an_image(cli: Callable[..., Ran]) -> None:
    out = cli("deploy")
    assert out.returncode == 2 and "one of the arguments --model-dir --model-tag --image is required" in out.stderr


def test_deploy_of_a_folder_that_is_no_bundle_fails_before_building(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    (tmp_path / "answers").mkdir()
    out = cli("deploy", "--model-dir", str(tmp_path), env={"DKT_CLIENT_DB": str(tmp_path / "answers/c.db")})
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {tmp_path}: not a model bundle (no bundle.json)"


def test_bad_replicas_is_refused(cli: Callable[..., Ran]) -> None:
    out = cli("scale", "--replicas", "0")
    assert out.returncode == 2 and "--replicas must be >= 1" in out.stderr


def test_bad_env_is_reported_not_raised(cli: Callable[..., Ran]) -> None:
    out = cli("status", env={"DKT_SWARM_TIMEOUT": "x"})
    assert out.returncode == 2 and out.stderr.startswith("error: DKT_SWARM_TIMEOUT='x': ")


# The answer store: the folder of DKT_CLIENT_DB, bind-mounted into the client, the same file the export reads.


def test_client_db_defaults_to_the_clients_own_default_resolved_at_the_repository_root() -> None:
    # the export runs `dkt client export-interactions` from the repository root with the same variable
    assert swarm_settings({}).client_db == REPO_ROOT / "var" / "client.db"
    assert swarm_settings({"DKT_CLIENT_DB": "var/client/c.db"}).client_db == REPO_ROOT / "var/client/c.db"
    assert swarm_settings({"DKT_CLIENT_DB": "/srv/a/c.db"}).client_db == Path("/srv/a/c.db")


def test_deploy_refuses_a_missing_answer_folder_before_building(tmp_path: Path, cli: Callable[..., Ran]) -> None:
    db = tmp_path / "nowhere" / "client.db"
    out = cli("deploy", "--model-tag", "dkt-model:v1", env={"DKT_CLIENT_DB": str(db)})
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: DKT_CLIENT_DB={db}: folder {db.parent} does not exist; create it")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_folder_shared_with_other_files_is_refused_naming_them(tmp_path: Path) -> None:
    (tmp_path / "client.db").write_bytes(b"")
    (tmp_path / "store").mkdir()
    with pytest.raises(ValueError, match=r"holds more than the client database \(store\).*folder of its own"):
        check_client_store(tmp_path / "client.db")


def test_an_unwritable_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "answers"
    folder.mkdir(mode=0o500)
    with pytest.raises(ValueError, match=r"answers is not writable \(mode dr-x------.*chmod u\+rwx"):
        check_client_store(folder / "client.db")


def test_a_folder_of_another_account_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "answers"
    folder.mkdir()
    os.chown(folder, 4321, 4321)
    with pytest.raises(ValueError, match=r"belongs to uid 4321, but this deploy .* runs as uid 0.*chown 0:0"):
        check_client_store(folder / "client.db")


def test_a_database_file_the_container_user_cannot_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test chowns files to another uid and must run as root (the CI container does)")
    folder = tmp_path / "answers"
    folder.mkdir()
    os.chown(folder, 4321, 4321)
    (folder / "client.db-wal").write_bytes(b"")  # root's, mode 644: the container user (4321) could not write it
    monkeypatch.setattr(os, "geteuid", lambda: 4321)  # an operator account that owns the folder
    with pytest.raises(ValueError, match=r"client.db-wal is not writable by the folder's owner 4321:4321"):
        check_client_store(folder / "client.db")
    os.chown(folder / "client.db-wal", 4321, 4321)
    assert check_client_store(folder / "client.db").compose_env() == {
        "DKT_CLIENT_DATA_DIR": str(folder),
        "DKT_CLIENT_DB_NAME": "client.db",
        "DKT_CLIENT_USER": "4321:4321",
    }


def test_an_empty_dedicated_folder_is_accepted_and_runs_the_client_as_its_owner(tmp_path: Path) -> None:
    st = tmp_path.stat()
    store = check_client_store(tmp_path / "client.db")
    assert (store.folder, store.uid, store.gid) == (tmp_path, st.st_uid, st.st_gid)
