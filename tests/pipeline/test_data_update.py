"""update_data_dag's steps on a real store: merge, dedupe, stable split, and crash safety."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from data.cli import main as data_cli
from dkt.data.io import read_csv
from pipeline.dataset import KEY
from pipeline.store import VersionedStore
from tests.support.zygote import Zygote


def new_rows(sim_dir: Path) -> pd.DataFrame:
    """A day later: 6 more answers of one training user and 4 of a brand-new user."""
    train = read_csv(sim_dir / "train.csv")
    user = train["userID"].iloc[0]
    old = train[train["userID"] == user].tail(6).copy()
    old["Timestamp"] = old["Timestamp"] + pd.Timedelta(days=1)
    fresh = train[train["userID"] == train["userID"].iloc[-1]].head(4).copy()
    fresh["userID"] = "newcomer-1"
    return pd.concat([old, fresh], ignore_index=True)


# On one xdist worker: the module's exporter zygote (below) is then started once, not on both.
pytestmark = pytest.mark.xdist_group("data-update")


@pytest.fixture(scope="module")
def file_export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """`python -m pipeline.file_export` as a real process whose imports (0.75 CPU-s: pandas, the project) are paid
    once for the module's twenty-odd export steps (tests/support/zygote.py)."""
    with Zygote.started(["pipeline.file_export"], tmp_path_factory.mktemp("zygote")) as zygote:
        yield zygote


@pytest.fixture
def seeded(
    store: VersionedStore, sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_export: Zygote
) -> Path:
    """A store holding the simulated set, and an inbox the file exporter reads from."""
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    assert data_cli(["push", str(sim_dir), "--version", "d1"]) == 0
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    new_rows(sim_dir).to_csv(inbox / "batch1.csv", index=False)
    monkeypatch.setenv("DKT_EXPORT_CMD", file_export.command("pipeline.file_export", "--source", inbox))
    return inbox


def run_steps(run_id: str, steps: tuple[str, ...] = ("export", "prepare", "publish", "advance-watermark")) -> list[int]:
    return [data_cli([s, "--run-id", run_id]) for s in steps]


def latest_rows(store: VersionedStore, dest: Path) -> pd.DataFrame:
    store.pull("datasets", "latest", dest)
    return read_csv(dest / "interactions.csv")


def test_update_adds_new_rows_and_moves_latest_then_watermark(
    store: VersionedStore, seeded: Path, sim_dir: Path, tmp_path: Path
) -> None:
    before = len(read_csv(sim_dir / "train.csv")) + len(read_csv(sim_dir / "test.csv"))
    assert run_steps("r1") == [0, 0, 0, 0]
    latest = store.pointed("datasets", "latest")
    assert latest != "d1"
    m = store.manifest("datasets", latest)
    assert m["parent"] == "d1" and m["added_rows"] == 10
    df = latest_rows(store, tmp_path / "l")
    assert len(df) == before + 10
    assert not df.duplicated(KEY).any()
    assert store.get_state("watermark")["watermark"] == str(new_rows(sim_dir)["Timestamp"].max())
    # Nothing new on the next run: publish skips (exit 99), latest stays, the watermark holds.
    assert run_steps("r2") == [0, 0, 99, 0]
    assert store.pointed("datasets", "latest") == latest


def test_rerun_after_crash_between_push_and_watermark(
    store: VersionedStore, seeded: Path, sim_dir: Path, tmp_path: Path
) -> None:
    before = len(read_csv(sim_dir / "train.csv")) + len(read_csv(sim_dir / "test.csv"))
    assert run_steps("crashed", ("export", "prepare", "publish")) == [0, 0, 0]  # then the worker died
    assert store.get_state("watermark") is None  # the cursor did not move
    pushed = store.pointed("datasets", "latest")
    # The next run exports the same rows again (and one more batch that arrived meanwhile).
    extra = new_rows(sim_dir).assign(Timestamp=lambda d: d["Timestamp"] + pd.Timedelta(days=2)).head(3)
    extra.to_csv(seeded / "batch2.csv", index=False)
    assert run_steps("rerun") == [0, 0, 0, 0]
    m = store.manifest("datasets", store.pointed("datasets", "latest"))
    assert m["parent"] == pushed and m["added_rows"] == 3  # the 10 re-exported rows were not added twice
    df = latest_rows(store, tmp_path / "l")
    assert not df.duplicated(KEY).any()
    assert len(df) == before + 13


def test_two_runs_within_one_second_get_two_versions(
    store: VersionedStore, seeded: Path, sim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Version names have one-second resolution. A re-run landing in the crashed run's second once took
    # that run's version for its own retry: its new rows never reached a version, and the watermark moved.
    monkeypatch.setattr("pipeline.data_update.default_version", lambda: "same-second")
    assert run_steps("crashed", ("export", "prepare", "publish")) == [0, 0, 0]
    assert store.pointed("datasets", "latest") == "same-second"
    extra = new_rows(sim_dir).assign(Timestamp=lambda d: d["Timestamp"] + pd.Timedelta(days=2)).head(3)
    extra.to_csv(seeded / "batch2.csv", index=False)
    assert run_steps("rerun") == [0, 0, 0, 0]
    m = store.manifest("datasets", store.pointed("datasets", "latest"))
    assert (m["version"], m["parent"], m["added_rows"]) == ("same-second-2", "same-second", 3)
    # and the rerun's own retry still finds its push, not the other run's
    assert data_cli(["publish", "--run-id", "rerun"]) == 0
    assert store.pointed("datasets", "latest") == "same-second-2"
    assert [v["version"] for v in store.versions("datasets")] == ["d1", "same-second", "same-second-2"]


def test_retry_of_publish_after_it_pushed_is_idempotent(store: VersionedStore, seeded: Path) -> None:
    assert run_steps("r", ("export", "prepare", "publish")) == [0, 0, 0]
    version = store.pointed("datasets", "latest")
    assert run_steps("r", ("publish", "advance-watermark")) == [0, 0]  # Airflow retried the task
    assert [m["version"] for m in store.versions("datasets")] == ["d1", version]


def test_bad_export_fails_validation_and_changes_nothing(
    store: VersionedStore, seeded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (seeded / "batch1.csv").write_text(
        "userID,assessmentItemID,testId,answerCode,Timestamp,KnowledgeTag\nu1,A1,T1,7,2020-01-01 00:00:00,5\n"
    )
    assert run_steps("bad", ("export",)) == [2]
    assert "answerCode" in capsys.readouterr().err
    assert store.pointed("datasets", "latest") == "d1" and store.get_state("watermark") is None


def test_users_keep_their_side_of_the_split(store: VersionedStore, seeded: Path, sim_dir: Path, tmp_path: Path) -> None:
    assert run_steps("r1") == [0, 0, 0, 0]
    store.pull("datasets", "latest", tmp_path / "l")
    old_test = set(read_csv(sim_dir / "test.csv")["userID"])
    new_test = set(read_csv(tmp_path / "l" / "test.csv")["userID"])
    new_train = set(read_csv(tmp_path / "l" / "train.csv")["userID"])
    assert old_test <= new_test
    assert not (new_test & new_train)
    assert "newcomer-1" in new_test | new_train


def test_watermark_does_not_move_when_version_missing(store: VersionedStore, seeded: Path, tmp_path: Path) -> None:
    assert run_steps("r", ("export", "prepare")) == [0, 0]
    assert run_steps("r", ("advance-watermark",)) == [2]  # publish never ran
    assert store.get_state("watermark") is None
