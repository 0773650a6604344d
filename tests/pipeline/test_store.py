"""The versioned store against both backends: a local folder and a real S3 endpoint (moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.blobs import StoreError
from pipeline.settings import SettingsError, store_settings
from pipeline.store import IntegrityError, VersionedStore, VersionError


def payload(tmp_path: Path, name: str, rows: int) -> Path:
    d = tmp_path / name
    (d / "sub").mkdir(parents=True)
    (d / "train.csv").write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(rows)))
    (d / "sub" / "blob.bin").write_bytes(bytes(range(256)) * 10)
    return d


def test_push_pull_roundtrip_with_manifest(store: VersionedStore, tmp_path: Path) -> None:
    src = payload(tmp_path, "v1", rows=5)
    res = store.push("datasets", src, "v1", metrics={"auc": 0.7})
    m = res.manifest
    assert m["rows"] == {"train.csv": 5}
    assert set(m["files"]) == {"train.csv", "sub/blob.bin"}
    assert m["parent"] is None and m["metrics"] == {"auc": 0.7} and m["code_version"]
    assert store.pointed("datasets", "latest") == "v1"
    got = store.pull("datasets", "latest", tmp_path / "out")
    assert got["version"] == "v1"
    assert (tmp_path / "out" / "sub" / "blob.bin").read_bytes() == (src / "sub" / "blob.bin").read_bytes()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["version"] == "v1"


def test_versions_are_immutable(store: VersionedStore, tmp_path: Path) -> None:
    store.push("models", payload(tmp_path, "a", 1), "m1")
    with pytest.raises(VersionError, match="already exists"):
        store.push("models", payload(tmp_path, "b", 2), "m1")
    assert store.manifest("models", "m1")["rows"] == {"train.csv": 1}


def test_failed_upload_leaves_latest_where_it_was(store: VersionedStore, tmp_path: Path) -> None:
    store.push("datasets", payload(tmp_path, "good", 3), "v1")
    calls = []

    def crash_after_first(key: str, src: Path) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise StoreError("connection reset (injected)")
        store.blobs.put_file(key, src)

    with pytest.raises(StoreError, match="injected"):
        store.push("datasets", payload(tmp_path, "bad", 4), "v2", upload=crash_after_first)
    assert store.pointed("datasets", "latest") == "v1"
    assert [m["version"] for m in store.versions("datasets")] == ["v1"]  # the partial v2 is not a version
    with pytest.raises(VersionError):
        store.pull("datasets", "v2", tmp_path / "x")


def test_corrupted_upload_is_caught_before_pointers_move(store: VersionedStore, tmp_path: Path) -> None:
    store.push("datasets", payload(tmp_path, "good", 3), "v1")

    def corrupting(key: str, src: Path) -> None:
        store.blobs.put_bytes(key, src.read_bytes()[:-1])  # a truncated object

    with pytest.raises(IntegrityError, match="sha256"):
        store.push("datasets", payload(tmp_path, "bad", 4), "v2", upload=corrupting)
    assert store.pointed("datasets", "latest") == "v1"
    assert not store.exists("datasets", "v2")


def test_pull_detects_tampering(store: VersionedStore, tmp_path: Path) -> None:
    store.push("models", payload(tmp_path, "a", 2), "m1")
    store.blobs.put_bytes("models/m1/train.csv", b"a,b\n9,9\n")
    with pytest.raises(IntegrityError):
        store.pull("models", "m1", tmp_path / "out")
    assert not (tmp_path / "out" / "train.csv").exists()


def test_promote_and_rollback(store: VersionedStore, tmp_path: Path) -> None:
    for v in ("m1", "m2", "m3"):
        store.push("models", payload(tmp_path, v, 1), v)
        store.set_pointer("models", "production", v)
    assert store.pointed("models", "production") == "m3"
    assert store.pointed("models", "latest") == "m3"
    assert store.rollback("models", "production")["version"] == "m2"
    assert store.rollback("models", "production")["version"] == "m1"
    with pytest.raises(VersionError, match="no previous"):
        store.rollback("models", "production")
    with pytest.raises(VersionError, match="no complete"):
        store.set_pointer("models", "production", "nope")


def test_list_is_oldest_first_and_skips_pointers(store: VersionedStore, tmp_path: Path) -> None:
    for v in ("b1", "a2"):
        store.push("datasets", payload(tmp_path, v, 1), v)
    assert [m["version"] for m in store.versions("datasets")] == ["b1", "a2"]
    store.put_state("watermark", {"watermark": "2020-01-01 00:00:00"})
    assert store.get_state("watermark")["watermark"] == "2020-01-01 00:00:00"


@pytest.mark.parametrize("bad", ["latest", "production", "../x", "_pointers", "a/b", ""])
def test_bad_version_names(store: VersionedStore, tmp_path: Path, bad: str) -> None:
    with pytest.raises(VersionError, match="bad version name"):
        store.push("datasets", payload(tmp_path, "p", 1), bad)


def test_s3_without_bucket_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="DKT_S3_BUCKET"):
        store_settings({"DKT_STORE": "s3"})
    with pytest.raises(SettingsError, match="DKT_STORE"):
        store_settings({"DKT_STORE": "ftp"})


def test_s3_objects_live_under_the_prefix(s3_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in s3_server.env(prefix="team/a").items():
        monkeypatch.setenv(k, v)
    store = VersionedStore.from_env()
    store.push("datasets", payload(tmp_path, "p", 1), "v1")
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="team/a/")["Contents"]]
    assert "team/a/datasets/v1/manifest.json" in keys
    assert "team/a/datasets/_pointers/latest.json" in keys
