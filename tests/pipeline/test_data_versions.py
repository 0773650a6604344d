"""Data versions as Parquet partitions: what a version stores, what a pull gives back, CSV versions of the previous
code, retention (`dkt data prune`) and a prune killed half-way. Small made-up sets: a few hundred rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.cli import main as data_cli
from dkt.bundle import write_json
from dkt.data.io import read_csv
from pipeline import data_update
from pipeline.dataset import KEY, TEST, import_initial, read_parts, write_part, write_tables, write_version_csvs
from pipeline.settings import REPO_ROOT
from pipeline.store import PRUNE_POINTS, CorruptError, IntegrityError, VersionedStore

COLS = ["userID", "assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]


def answers(users: list[str], per_user: int, day: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(users) * per_user
    items = rng.integers(1, 60, n)
    return pd.DataFrame(
        {
            "userID": np.repeat(users, per_user),
            "assessmentItemID": [f"A{i:09d}" for i in items],
            "testId": [f"A{i // 10:06d}000" for i in items],
            "answerCode": rng.integers(0, 2, n),
            "Timestamp": pd.Timestamp("2026-01-01") + pd.Timedelta(days=day) + pd.to_timedelta(np.arange(n), "min"),
            "KnowledgeTag": items % 7,
        }
    )


def simulated(folder: Path, seed: int = 0) -> Path:
    """A first set: 12 training and 4 test students, 10 answers each."""
    folder.mkdir(parents=True)
    answers([f"u{i:02d}" for i in range(12)], 10, 0, seed).to_csv(folder / "train.csv", index=False)
    answers([f"t{i:02d}" for i in range(4)], 10, 0, seed + 1).to_csv(folder / "test.csv", index=False)
    return folder


def add_version(store: VersionedStore, work: Path, rows: pd.DataFrame, version: str, mp: pytest.MonkeyPatch) -> dict:
    """The update DAG's prepare and publish steps on ``rows`` as the export: a new version named ``version``."""
    work.mkdir(parents=True)
    rows.to_csv(work / data_update.EXPORT_FILE, index=False)
    write_json(work / "export.json", {"since": "", "watermark": version, "rows": len(rows)})
    mp.setattr("pipeline.data_update.default_version", lambda: version)
    data_update.prepare(work, store)
    return data_update.publish(work, store)


def news(seed: int, day: int) -> pd.DataFrame:
    """5 more answers of a training student, 5 of a test student, 10 of a newcomer."""
    return pd.concat(
        [answers(["u00"], 5, day, seed), answers(["t00"], 5, day, seed + 1), answers([f"new{seed}"], 10, day, seed)]
    )


def part_keys(store: VersionedStore) -> set[str]:
    return {f"_parts/{k}" for k in store.blobs.list_keys("datasets/_parts")}


def test_a_version_stores_only_its_new_rows_and_pulls_as_the_csv_set(
    store: VersionedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = simulated(tmp_path / "sim")
    assert data_cli(["push", str(src), "--version", "d1"]) == 0
    d1 = store.manifest("datasets", "d1")
    # The old code's data push: the same three CSVs, byte for byte, from the one partition.
    import_initial(src, tmp_path / "old-csv")
    store.pull("datasets", "d1", tmp_path / "p1")
    for name in ("interactions.csv", "train.csv", "test.csv"):
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "old-csv" / name).read_bytes(), name

    fresh = news(7, 1)
    again = read_csv(src / "train.csv").head(6)  # re-exported rows: already stored, not added twice
    m = add_version(store, tmp_path / "w2", pd.concat([again, fresh]), "v2", monkeypatch)
    assert m["parent"] == "d1" and m["added_rows"] == 20
    assert m["partitions"][0] == d1["partitions"][0]  # the parent's partition, by reference
    own = m["partitions"][1]
    assert (own["version"], own["rows"], own["test_rows"]) == ("v2", 20, 5)  # t00's 5 answers stay on the test side
    assert m["added_bytes"] == own["bytes"] and m["rows"] == {"interactions.csv": 180, "train.csv": 135, "test.csv": 45}
    assert part_keys(store) == {d1["partitions"][0]["key"], own["key"]}  # nothing of d1 copied
    assert not store.blobs.list_keys("datasets/v2").keys() - {"manifest.json"}

    store.pull("datasets", "v2", tmp_path / "p2")
    old = pd.concat([read_csv(src / "train.csv"), read_csv(src / "test.csv")])
    want = pd.concat([old, read_csv_frame(fresh)]).sort_values(["userID", "Timestamp", "assessmentItemID"])
    got = read_csv(tmp_path / "p2" / "interactions.csv")
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True))  # same rows, order and dtypes
    test_users = set(read_csv(tmp_path / "p2" / "test.csv")["userID"])
    assert {"t00", "t01", "t02", "t03"} <= test_users and "u00" not in test_users
    assert not got.duplicated(KEY).any()


def read_csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as read back from a CSV (the canonical dtypes)."""
    from dkt.data.schema import validate

    return validate(df.astype({"Timestamp": "datetime64[s]"}), "<made-up>")


# Local only: the S3 side of pull and push is the same code the two tests around it run on S3.
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_csv_version_of_the_previous_code_still_pulls_and_grows_partitions(
    store: VersionedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = simulated(tmp_path / "sim")
    import_initial(src, tmp_path / "csv")
    store.push("datasets", tmp_path / "csv", "old")  # what the previous `data push` stored
    store.pull("datasets", "old", tmp_path / "p-old")
    assert (tmp_path / "p-old" / "train.csv").read_bytes() == (tmp_path / "csv" / "train.csv").read_bytes()
    m = add_version(store, tmp_path / "w", news(3, 2), "v2", monkeypatch)
    # The first version on a CSV parent carries the parent's rows once, as a base partition of its own.
    assert [(e["key"].rsplit("/", 1)[1], e["version"], e["rows"]) for e in m["partitions"]] == [
        ("base.parquet", "v2", 160),
        ("new.parquet", "v2", 20),
    ]
    store.pull("datasets", "v2", tmp_path / "p2")
    got = read_csv(tmp_path / "p2" / "interactions.csv")
    old = read_csv(tmp_path / "csv" / "interactions.csv")
    assert len(got) == 180 and pd.MultiIndex.from_frame(old[KEY]).isin(pd.MultiIndex.from_frame(got[KEY])).all()
    capsys.readouterr()
    assert data_cli(["list"]) == 0
    out = capsys.readouterr().out
    assert "old  rows=160  csv" in out and "v2  rows=180  partitions=2  parent=old" in out


# Local only: the S3 side of pull and push is the same code the two tests around it run on S3.
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_pull_checks_every_partition_and_manifests_name_only_plain_partition_keys(
    store: VersionedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert data_cli(["push", str(simulated(tmp_path / "sim")), "--version", "d1"]) == 0
    m = add_version(store, tmp_path / "w", news(1, 1), "v2", monkeypatch)
    inherited = m["partitions"][0]["key"]
    store.blobs.put_bytes(f"datasets/{inherited}", b"PAR1 not the stored rows")
    with pytest.raises(IntegrityError, match=inherited):
        store.pull("datasets", "v2", tmp_path / "p")
    capsys.readouterr()
    assert data_cli(["pull", "v2", "--dest", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and inherited in err[0]
    bad = {**m, "partitions": [{**m["partitions"][1], "key": "_parts/../../escape.parquet"}]}
    store.blobs.put_bytes("datasets/v2/manifest.json", json.dumps(bad).encode())
    with pytest.raises(CorruptError, match=r"datasets/v2/manifest\.json.*partition"):
        store.manifest("datasets", "v2")


def test_retention_keeps_latest_model_named_versions_and_every_named_partition(
    store: VersionedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert data_cli(["push", str(simulated(tmp_path / "sim")), "--version", "d1"]) == 0
    for n in (2, 3, 4):
        add_version(store, tmp_path / f"w{n}", news(n, n), f"v{n}", monkeypatch)
    model = tmp_path / "model"
    model.mkdir()
    (model / "bundle.json").write_text("{}")
    store.push("models", model, "m1", extra={"data_version": "v2"})  # a stored model trained on v2
    keys = part_keys(store)
    capsys.readouterr()
    assert data_cli(["prune", "--keep", "1", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["removed"] == ["d1", "v3"] and out.err.count("prune: would remove data version") == 2
    assert [v["version"] for v in store.versions("datasets")] == ["d1", "v2", "v3", "v4"]

    assert data_cli(["prune", "--keep", "1"]) == 0
    assert [v["version"] for v in store.versions("datasets")] == ["v2", "v4"]  # v2: the model's; v4: latest
    assert part_keys(store) == keys  # v4 still names d1's and v3's partitions: none removed
    store.pull("datasets", "v4", tmp_path / "p4")
    assert len(read_csv(tmp_path / "p4" / "interactions.csv")) == 160 + 3 * 20

    # A whole new set (not inheriting) with DKT_DATA_KEEP_VERSIONS=1: the push's own retention drops v4, and with
    # it the partitions only v4 named (v3's, v4's); d1's and v2's stay, v2 (the model's) names them.
    monkeypatch.setenv("DKT_DATA_KEEP_VERSIONS", "1")
    capsys.readouterr()
    assert data_cli(["push", str(simulated(tmp_path / "sim5", seed=5)), "--version", "d5"]) == 0
    assert "prune: removed data version v4" in capsys.readouterr().err
    assert [v["version"] for v in store.versions("datasets")] == ["v2", "d5"]
    named = {e["key"] for v in store.versions("datasets") for e in v["partitions"]}
    assert part_keys(store) == named and len(named) == 3
    store.pull("datasets", "v2", tmp_path / "p2")
    assert len(read_csv(tmp_path / "p2" / "interactions.csv")) == 180


@pytest.mark.parametrize("odd_id", ["plain", 'a "quoted", comma id'])
def test_the_csvs_of_a_pull_are_what_pandas_writes(tmp_path: Path, odd_id: str) -> None:
    # Arrow writes them (fast); an id that needs CSV quotes makes it refuse and pandas writes them instead.
    rows = news(1, 1).assign(**{TEST: lambda d: d["userID"] == "t00"})
    rows.loc[rows.index[:3], "userID"] = odd_id
    write_part(rows.iloc[:12], tmp_path / "a.parquet")
    write_part(rows.iloc[12:], tmp_path / "b.parquet")
    parts = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    counts = write_version_csvs(parts, tmp_path / "arrow")
    assert counts == write_tables(read_parts(parts), tmp_path / "pandas") == {
        "interactions.csv": 20, "train.csv": 15, "test.csv": 5
    }  # fmt: skip
    for name in counts:
        assert (tmp_path / "arrow" / name).read_bytes() == (tmp_path / "pandas" / name).read_bytes(), name


def killed_prune(point: str, env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "dkt", "data", "prune", "--keep", "1"]
    proc = subprocess.run(argv, env={**os.environ, **env, "DKT_FAULT_POINT": point}, cwd=REPO_ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.slow  # a real `dkt data prune` process killed, and a wait of two lease times (2 s) for the sweep
@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("point", PRUNE_POINTS)
def test_a_prune_killed_at_any_point_leaves_every_listed_version_whole(
    point: str, store: VersionedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DKT_STORE_LEASE_SECONDS", "1")
    monkeypatch.setenv("DKT_DATA_KEEP_VERSIONS", "0")
    assert data_cli(["push", str(simulated(tmp_path / "sim")), "--version", "d1"]) == 0
    store.blobs.put_bytes("datasets/d1/drift.json", b"{}")  # what the drift step stores beside a version
    for n in (2, 3):
        add_version(store, tmp_path / f"w{n}", news(n, n), f"v{n}", monkeypatch)
    assert data_cli(["push", str(simulated(tmp_path / "sim4", seed=4)), "--version", "d4"]) == 0
    killed_prune(point, {"DKT_STORE_ROOT": str(store.blobs.root)})
    listed = [v["version"] for v in store.versions("datasets")]
    # after_manifest: d1 (oldest) is no version any more, v2 and v3 still name its partition, which is there;
    # after_partition: every old manifest went first, so the partition deleted was named by none.
    assert listed == (["v2", "v3", "d4"] if point == "prune:after_manifest" else ["d4"])
    for v in listed:  # each one whole: every partition there and hash-checked
        store.pull("datasets", v, tmp_path / f"pull-{point}-{v}")
    assert store.pointed("datasets", "latest") == "d4"
    # The next prune finishes the job; the folder the kill left goes with the sweep once its lease time is over.
    if (left := store.blobs.root / "datasets/d1/drift.json").exists():
        time.sleep(max(0.0, 2.1 - (time.time() - left.stat().st_mtime)))
    assert data_cli(["prune", "--keep", "1"]) == 0
    assert [v["version"] for v in store.versions("datasets")] == ["d4"]
    assert part_keys(store) == {e["key"] for e in store.manifest("datasets", "d4")["partitions"]}
    assert sorted(store.blobs.list_dirs("datasets")) == ["_parts", "_pointers", "d4"]
