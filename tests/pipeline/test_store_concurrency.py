"""The store under races and crashes, on both backends, with real processes.

Each test starts the project's real CLIs (``dkt models`` / ``dkt data``) as
separate processes: N pushes of one version released at the same instant, 8 promotes at
once, and pushes killed with SIGKILL in the middle of their upload, then run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.blobs import TMP_MARK, S3BlobStore
from pipeline.store import LEASE, MANIFEST, VersionedStore, manifest_matches
from tests.serving.servers import ROOT

pytestmark = pytest.mark.slow  # real processes, 5-30 s each

GATE = "import sys, time; from {mod}.cli import main; time.sleep(max(0.0, {t} - time.time())); sys.exit(main({argv}))"


def cli_at(mod: str, argv: list[str], start: float) -> subprocess.Popen:
    """The real CLI ``main`` in its own process, imported first and released at wall-clock ``start``."""
    code = GATE.format(mod=mod, t=start, argv=json.dumps(argv))
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def cli(mod: str, argv: list[str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dkt", mod, *argv], cwd=ROOT, env={**os.environ, **kw},  # type: ignore[dict-item]
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def run_cli(mod: str, *argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dkt", mod, *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def fake_bundle(root: Path, version: str, size: int, seed: int, files: int = 1) -> Path:
    """A folder ``models push`` accepts (bundle.json of format 1) with ``files`` random blobs of ``size`` bytes."""
    d = root / f"bundle-{version}-{seed}"
    d.mkdir(parents=True)
    meta = {"format": 1, "model": "lstm", "model_version": version, "data_version": "d1", "code_version": "t",
            "seed": seed, "metrics": {"test_auc": 0.5 + seed / 100}}  # fmt: skip
    for i in range(files):
        (d / f"weights-{i}.bin").write_bytes(os.urandom(size))
    (d / "bundle.json").write_text(json.dumps(meta))
    return d


def store_leftovers(store: VersionedStore, kind: str) -> list[str]:
    """Everything under ``kind`` that is not part of a complete version or a pointer: temp files, leases,
    files of versions without a manifest, unfinished multipart uploads."""
    keys = store.blobs.list_keys(kind)
    complete = {k.split("/")[0] for k in keys if k.endswith(f"/{MANIFEST}") and k.count("/") == 1}
    # A data version's partitions live under _parts/ (pipeline/store.py): stored, not left over, when a complete
    # version's manifest names them.
    named = {e["key"] for v in complete for e in store.manifest(kind, v).get("partitions", [])}  # type: ignore[arg-type]
    out = [
        k
        for k in keys
        if TMP_MARK in k or k.endswith(LEASE) or (k.split("/")[0] not in complete | {"_pointers"} and k not in named)
    ]
    if isinstance(store.blobs, S3BlobStore):
        ups = store.blobs.client.list_multipart_uploads(Bucket=store.blobs.bucket, Prefix=store.blobs._key(kind))
        out += [f"multipart upload of {u['Key']}" for u in ups.get("Uploads", [])]
    return out


def test_concurrent_pushes_of_one_version_give_one_version_and_clear_refusals(
    store: VersionedStore, tmp_path: Path
) -> None:
    n = 4
    bundles = [fake_bundle(tmp_path, "same-second", 6 << 20, seed=i) for i in range(n)]
    start = time.time() + 4  # every process imported and waiting before the gate opens
    procs = [cli_at("models", ["push", str(b)], start) for b in bundles]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    ok = [i for i, (rc, _, _) in enumerate(results) if rc == 0]
    print(f"\n[store] {n} concurrent pushes of one version: exit codes {[r[0] for r in results]}")
    for rc, _out, err in results:
        if rc != 0:
            assert rc == 2 and "Traceback" not in err, err
            line = err.strip().splitlines()[-1]
            assert line.startswith("error: ") and "'same-second'" in line, err
            assert "already exists" in line or "being pushed" in line, err
    assert len(ok) == 1, results
    manifest = store.manifest("models", "same-second")
    assert manifest_matches(manifest, bundles[ok[0]])  # exactly one push's files, never a mix
    assert store.pointed("models", "latest") == "same-second"
    got = store.pull("models", "latest", tmp_path / "pulled")
    assert (tmp_path / "pulled" / "weights-0.bin").read_bytes() == (bundles[ok[0]] / "weights-0.bin").read_bytes()
    assert got["metrics"]["test_auc"] == 0.5 + ok[0] / 100
    assert store_leftovers(store, "models") == []


def test_eight_concurrent_promotes_are_each_in_the_history(store: VersionedStore, tmp_path: Path) -> None:
    for i in range(9):
        store.push("models", fake_bundle(tmp_path, f"m{i}", 64, seed=i), f"m{i}")
    store.set_pointer("models", "production", "m0", reason="first")
    start = time.time() + 4
    # The store's move itself (``models promote`` also loads the model first, which these fake bundles are not).
    code = (
        "import sys, time; from pipeline.store import VersionedStore; s = VersionedStore.from_env();"
        " time.sleep(max(0.0, {t} - time.time())); s.set_pointer('models', 'production', sys.argv[1], 'promote')"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code.format(t=start), f"m{i}"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(1, 9)]  # fmt: skip
    results = [(p.wait(120), *p.communicate()) for p in procs]
    assert [r[0] for r in results] == [0] * 8, results
    ptr = store.pointer("models", "production")
    assert ptr is not None
    moves = ptr["log"][1:]  # the first entry is the move to m0
    print(f"\n[store] 8 concurrent promotes: {len(moves)} log entries, order {[m['version'] for m in moves]}")
    assert sorted(m["version"] for m in moves) == [f"m{i}" for i in range(1, 9)]
    # One chain: every move starts where the one before it ended, and the pointer is where the last one ended.
    chain = [e["version"] for e in ptr["log"]]
    assert [m["from"] for m in moves] == chain[:-1]
    assert ptr["version"] == chain[-1]
    assert ptr["history"] == list(reversed(chain[:-1]))  # rollback walks the same chain back
    assert store.rollback("models", "production")["version"] == chain[-2]


def kill_during_upload(proc: subprocess.Popen, store: VersionedStore, kind: str, version: str) -> None:
    """SIGKILL ``proc`` while it uploads: once the version holds its lease and one more object (a first file,
    or locally the temporary copy of one); fail if the push finished first."""
    deadline = time.monotonic() + 60
    while len(store.blobs.list_keys(f"{kind}/{version}")) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the push never started uploading"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert not store.exists(kind, version), "the push finished before the kill: make the payload bigger"


def test_push_killed_mid_upload_leaves_nothing_after_the_next_run_and_can_be_pushed_again(
    store: VersionedStore, tmp_path: Path
) -> None:
    big = fake_bundle(tmp_path, "killed", 48 << 20, seed=1, files=3)
    proc = cli("models", ["push", str(big)])
    kill_during_upload(proc, store, "models", "killed")
    before = store_leftovers(store, "models")
    print(f"\n[store] {type(store.blobs).__name__}: after kill -9 mid-push, left over: {before}")
    assert before, "a kill mid-upload left nothing to clean: the test did not hit the upload"
    assert [m["version"] for m in store.versions("models")] == []  # an incomplete upload is not a version

    # The next run (another version) removes the killed push's debris...
    other = fake_bundle(tmp_path, "next", 1024, seed=2)
    done = run_cli("models", "push", str(other))
    assert done.returncode == 0, done.stderr
    assert store_leftovers(store, "models") == []
    if isinstance(store.blobs, S3BlobStore) is False:
        assert not list(Path(os.environ["DKT_STORE_ROOT"]).rglob(f"*{TMP_MARK}*"))
    # ... and re-pushing the killed version completes (it is not "already exists").
    t0 = time.monotonic()
    again = run_cli("models", "push", str(big))
    assert again.returncode == 0, again.stderr
    print(f"[store] re-push of the killed version: exit 0 in {time.monotonic() - t0:.1f} s")
    assert manifest_matches(store.manifest("models", "killed"), big)
    assert store.pointed("models", "latest") == "killed"
    assert store_leftovers(store, "models") == []


def test_retry_right_after_a_kill_takes_the_dead_push_over(store: VersionedStore, tmp_path: Path) -> None:
    """The same name pushed again at once: the killed push's lease is dead (its process is gone), not busy."""
    big = fake_bundle(tmp_path, "retry", 48 << 20, seed=3, files=3)
    kill_during_upload(cli("models", ["push", str(big)]), store, "models", "retry")
    assert store.blobs.exists(f"models/retry/{LEASE}")
    again = run_cli("models", "push", str(big))
    assert again.returncode == 0, again.stderr
    assert manifest_matches(store.manifest("models", "retry"), big)
    assert store_leftovers(store, "models") == []


def test_data_push_killed_leaves_no_staging_folder_after_the_next_run(
    store: VersionedStore, sim_dir: Path, tmp_path: Path
) -> None:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    proc = cli("data", ["push", str(sim_dir), "--version", "d-killed"], TMPDIR=str(tmp))
    deadline = time.monotonic() + 60
    while not list(tmp.glob("dkt-staging*/**/*.parquet")):  # the set is staged as one Parquet partition
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert list(tmp.glob("dkt-staging*")), "the kill left no staging folder: nothing was tested"
    done = subprocess.run([sys.executable, "-m", "dkt", "data", "push", str(sim_dir), "--version", "d-killed"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(tmp.iterdir()) == []
    assert store.pointed("datasets", "latest") == "d-killed"
    assert store_leftovers(store, "datasets") == []


def test_lease_of_another_host_is_waited_for_then_taken_over(
    store: VersionedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease whose owner cannot be checked (another host) and that nobody renews is dead after the lease time."""
    monkeypatch.setenv("DKT_STORE_LEASE_SECONDS", "2")
    store.blobs.put_bytes("models/far/weights-0.bin", b"half an upload")
    lease = {"host": "elsewhere", "host_tag": "00000000", "pid": 1, "renewed_at": time.time(), "token": "x"}
    store.blobs.put_bytes(f"models/far/{LEASE}", json.dumps(lease).encode())
    t0 = time.monotonic()
    store.push("models", fake_bundle(tmp_path, "far", 256, seed=4), "far")
    waited = time.monotonic() - t0
    assert 2 <= waited < 10, waited
    assert set(store.manifest("models", "far")["files"]) == {"weights-0.bin", "bundle.json"}
    assert store.blobs.get_bytes("models/far/weights-0.bin") != b"half an upload"
    assert store_leftovers(store, "models") == []
