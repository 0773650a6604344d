"""What the store reads back is checked: corrupt pointers, manifests and state documents are one clear error
naming the object (exit 2 from the CLIs, no traceback), and pull never writes outside its destination."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from data.cli import main as data_cli
from models.cli import main as models_cli
from pipeline.blobs import StoreError
from pipeline.store import CorruptError, PointerMoved, VersionedStore


def small(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "bundle.json").write_text(json.dumps({"format": 1, "model": "lstm", "model_version": name,
                                               "data_version": "d7", "code_commit": "0123456789abcdef",
                                               "config_hash": "sha256:" + "ab" * 32, "seed": 11,
                                               "metrics": {"test_auc": 0.71}}))  # fmt: skip
    (d / "weights.bin").write_bytes(b"w" * 100)
    return d


def one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


POINTER_CASES = {
    "not json": b"{not json",
    "a list": b"[1, 2]",
    "no version": json.dumps({"history": []}).encode(),
    "version a number": json.dumps({"version": 3}).encode(),
    "history not a list": json.dumps({"version": "m1", "history": "m0"}).encode(),
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("case", sorted(POINTER_CASES))
def test_corrupt_pointer_is_one_error_naming_it(
    store: VersionedStore, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    store.push("models", small(tmp_path, "m1"), "m1")
    store.blobs.put_bytes("models/_pointers/production.json", POINTER_CASES[case])
    for argv in (["list"], ["pull", "production", "--dest", str(tmp_path / "out")], ["rollback"]):
        capsys.readouterr()
        assert models_cli(argv) == 2
        one_error_line(capsys, "models/_pointers/production.json", "corrupt pointer")
    assert not (tmp_path / "out" / "weights.bin").exists()
    with pytest.raises(CorruptError, match=r"production\.json"):
        store.set_pointer("models", "production", "m1")  # never silently overwritten


MANIFEST_CASES = {
    "not json": lambda m: b"\x00garbage",
    "no files": lambda m: json.dumps({k: v for k, v in m.items() if k != "files"}).encode(),
    "files a list": lambda m: json.dumps({**m, "files": ["weights.bin"]}).encode(),
    "bad sha": lambda m: json.dumps({**m, "files": {"weights.bin": {"sha256": "xyz", "bytes": 1}}}).encode(),
    "bytes a string": lambda m: json.dumps(
        {**m, "files": {k: {**v, "bytes": "100"} for k, v in m["files"].items()}}
    ).encode(),
    "other version": lambda m: json.dumps({**m, "version": "m9"}).encode(),
    "no created_at": lambda m: json.dumps({k: v for k, v in m.items() if k != "created_at"}).encode(),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_corrupt_manifest_is_one_error_naming_it(
    store: VersionedStore, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    m = store.push("models", small(tmp_path, "m1"), "m1").manifest
    store.push("models", small(tmp_path, "m2"), "m2")
    store.blobs.put_bytes("models/m1/manifest.json", MANIFEST_CASES[case](m))
    assert models_cli(["pull", "m1", "--dest", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "models/m1/manifest.json", "corrupt manifest")
    assert not (tmp_path / "out" / "weights.bin").exists()
    # list shows the good versions and names the bad one, then exits 2
    assert models_cli(["list"]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("m2  ") and "m1" not in out.out
    assert "models/m1/manifest.json" in out.err and "Traceback" not in out.err
    assert models_cli(["promote", "m1"]) == 2
    one_error_line(capsys, "models/m1/manifest.json")


def test_corrupt_data_manifest_and_state(
    store: VersionedStore, sim_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert data_cli(["push", str(sim_dir), "--version", "d1"]) == 0
    store.blobs.put_bytes("datasets/d1/manifest.json", b'{"version": "d1", "files": 7}')
    capsys.readouterr()
    assert data_cli(["list"]) == 2
    one_error_line(capsys, "datasets/d1/manifest.json")
    store.blobs.put_bytes("state/watermark.json", b"[]")
    with pytest.raises(CorruptError, match=r"state/watermark\.json"):
        store.get_state("watermark")


ESCAPES = ["../escape.txt", "/etc/escape.txt", "a/../../escape.txt", "a//b", "./x", "C:/x",
           "..\\escape.txt", "a\\..\\..\\escape.txt", "C:\\escape.txt", "\\\\host\\share\\escape.txt"]  # fmt: skip


@pytest.mark.parametrize("bad", ESCAPES)
def test_pull_refuses_file_names_outside_the_destination_before_writing(
    store: VersionedStore, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    """A crafted manifest (on the real moto S3 endpoint and on a folder): the pull through the CLI exits 2 with one
    line naming the manifest and the file, before anything is written, inside --dest or out of it."""
    m = store.push("models", small(tmp_path, "m1"), "m1").manifest
    entry = m["files"]["weights.bin"]
    store.blobs.put_bytes(
        "models/m1/manifest.json", json.dumps({**m, "files": {"weights.bin": entry, bad: entry}}).encode()
    )
    before = set(tmp_path.rglob("*"))
    dest = tmp_path / "deep" / "out"
    capsys.readouterr()
    assert models_cli(["pull", "m1", "--dest", str(dest)]) == 2
    one_error_line(capsys, "models/m1/manifest.json", repr(bad), "not a plain relative path")
    with pytest.raises(CorruptError, match="not a plain relative path"):
        store.pull("models", "m1", dest)
    assert set(tmp_path.rglob("*")) == before  # nothing written anywhere: not even --dest was created
    assert not (tmp_path / "deep" / "escape.txt").exists()


def test_pull_refuses_a_symlink_in_the_destination_leading_out(store: VersionedStore, tmp_path: Path) -> None:
    d = small(tmp_path, "m1")
    (d / "sub").mkdir()
    (d / "sub" / "x.bin").write_bytes(b"x")
    store.push("models", d, "m1")
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(CorruptError, match="outside"):
        store.pull("models", "m1", dest)
    assert list(outside.iterdir()) == [] and not (dest / "weights.bin").exists()


def test_list_shows_lineage_and_marks(
    store: VersionedStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_cli(["push", str(small(tmp_path, "m1"))]) == 0
    store.set_pointer("models", "production", "m1")
    capsys.readouterr()
    assert models_cli(["list"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("m1  model=lstm  test_auc=0.7100  data=d7  code=0123456789ab  seed=11  config=abababababab")
    assert line.endswith("<- production, latest")


def test_conditional_pointer_move(store: VersionedStore, tmp_path: Path) -> None:
    for v in ("m1", "m2", "m3"):
        store.push("models", small(tmp_path, v), v)
    store.set_pointer("models", "production", "m2")
    with pytest.raises(PointerMoved, match="names 'm2', not 'm1'"):
        store.set_pointer("models", "production", "m3", only_if="m1")
    assert store.set_pointer("models", "production", "m3", only_if="m2")["version"] == "m3"
    assert [e["version"] for e in store.pointer("models", "production")["log"]] == ["m2", "m3"]


def test_a_failed_push_removes_its_partial_upload(store: VersionedStore, tmp_path: Path) -> None:
    d = small(tmp_path, "m1")
    calls: list[str] = []

    def fail_second(key: str, src: Path) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise StoreError("connection reset (injected)")
        store.blobs.put_file(key, src)

    with pytest.raises(StoreError, match="injected"):
        store.push("models", d, "m1", upload=fail_second)
    assert store.blobs.list_keys("models") == {}
    assert store.push("models", d, "m1").version == "m1"  # and the name is free again


def test_conditional_writes_of_the_backend(store: VersionedStore) -> None:
    """The primitive under leases and pointer moves: create-if-absent and replace-if-unchanged (S3 If-None-Match /
    If-Match, here through the moto server over HTTP), and no increment lost by 6 threads racing on one key."""
    b = store.blobs
    tag = b.put_bytes_if("state/k.json", b"0", None)
    assert tag is not None and b.put_bytes_if("state/k.json", b"x", None) is None
    assert b.put_bytes_if("state/k.json", b"1", "stale-etag") is None
    assert b.get_bytes("state/k.json") == b"0"

    def bump(n: int) -> None:
        for _ in range(n):
            while True:
                data, etag = b.get_bytes_etag("state/k.json")  # type: ignore[misc]
                if b.put_bytes_if("state/k.json", str(int(data) + 1).encode(), etag) is not None:
                    break

    threads = [threading.Thread(target=bump, args=(5,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.get_bytes("state/k.json") == b"30"


def test_list_says_when_the_recorded_service_does_not_answer(
    store: VersionedStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.deploy_served import SERVING_STATE
    from tests.serving.servers import free_port

    store.push("models", small(tmp_path, "m1"), "m1")
    url = f"http://127.0.0.1:{free_port()}/metadata"  # nothing listens there
    store.put_state(SERVING_STATE, {"model_version": "m1", "mode": "local", "metadata_url": url})
    capsys.readouterr()
    assert models_cli(["list"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith(f"<- latest, serving at the last deploy ({url} does not answer now)"), line
