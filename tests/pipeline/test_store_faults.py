"""Faults under the store that no kill -9 test covers: its S3 endpoint going away mid-push, and its disk full.

Each runs the real ``dkt models push`` process into the fault, then checks: one ``error:`` line and exit 2 (no
traceback), no version and nothing else left behind once the next run has swept, and the next run completes.
Kill -9 of a push (both backends) is in test_store_concurrency.py; docs/hardening.md has the whole fault table.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.store import LEASE, VersionedStore, manifest_matches
from tests.pipeline.s3server import S3Server
from tests.pipeline.test_store_concurrency import fake_bundle, run_cli, store_leftovers
from tests.serving.servers import ROOT, free_port

pytestmark = pytest.mark.slow  # real push processes against real endpoints and filesystems


class Outage:
    """A TCP relay in front of the session's moto server: ``cut()`` is the endpoint going away (every open
    connection reset, new ones refused), ``restore()`` it coming back with its objects, as S3 or MinIO after an
    outage. Stopping moto itself would lose its in-memory bucket, and with it what the next run must find."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._cut_after: int | None = None  # bytes sent up (client to S3) at which the relay cuts itself
        self._sent = 0
        self.restore()

    def cut_after(self, nbytes: int) -> None:
        """Cut once ``nbytes`` more have gone up through the relay: mid-upload by construction, however loaded the
        machine is (a test that watched the bucket's listing and cut from outside cut late under CI's load)."""
        with self._lock:
            self._sent, self._cut_after = 0, nbytes

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the port again after a cut
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:  # already cut: the fixture's teardown after a test that failed mid-outage
                self._listener.close()
                self._listener = None
            conns, self._conns = self._conns, []
        for c in conns:
            # SO_LINGER 0: close sends a RST, what a client sees when the host behind the endpoint goes down.
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            server = socket.create_connection(self.target)
            with self._lock:
                if self._listener is not listener:  # cut while this one was being connected: it must not live on
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            for a, b, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if up and self._count(len(data)):
                    self.cut()  # this chunk never reaches S3: the connection dies mid-request
                    return
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            return

    def _count(self, n: int) -> bool:
        with self._lock:
            if self._cut_after is None:
                return False
            self._sent += n
            if self._sent < self._cut_after:
                return False
            self._cut_after = None
            return True


def cli_error(proc: subprocess.CompletedProcess[str] | tuple[int, str], *needles: str) -> str:
    rc, err = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else proc
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.fixture
def s3_outage(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    outage = Outage(s3_server.endpoint)
    for k, v in s3_server.env(prefix=f"t/{tmp_path.name}").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DKT_S3_ENDPOINT_URL", outage.endpoint)
    yield outage
    outage.cut()


def test_s3_endpoint_gone_mid_push_is_one_error_then_the_next_run_completes(
    s3_outage: Outage, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test's own view of the bucket goes straight to moto: it must see what the push left, outage or not.
    direct = VersionedStore.from_env()
    direct.blobs.client = s3_server.client()  # type: ignore[attr-defined]
    big = fake_bundle(tmp_path, "outage", 16 << 20, seed=5, files=2)  # multipart uploads (over 8 MiB)
    # 2 tries per S3 call, not the default 5: the same failure, reached in seconds instead of a minute of backoff.
    # The cut comes 4 MiB into what the push sends: past the lease (bytes), inside the first 16 MiB weight file.
    s3_outage.cut_after(4 << 20)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dkt", "models", "push", str(big)], cwd=ROOT,
                          env={**os.environ, "DKT_S3_MAX_ATTEMPTS": "2"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    failed_after = time.monotonic() - t0
    # The upload's own failure, not the clean-up's that met the same dead endpoint (it masked it before).
    line = cli_error(proc, "s3://", "cannot upload models/outage/weights-")
    print(f"\n[faults] S3 endpoint cut 4 MiB into a push: exit 2 at {failed_after:.0f} s: {line[:160]}")
    assert not direct.exists("models", "outage") and direct.pointed("models", "latest") is None

    s3_outage.restore()
    again = run_cli("models", "push", str(big))
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest_matches(direct.manifest("models", "outage"), big)
    assert direct.pointed("models", "latest") == "outage"
    assert store_leftovers(direct, "models") == []


# --- a full disk under a local store ------------------------------------------------------------------------------

# Run in a new user and mount namespace (unshare -rm: no privilege needed, the mount disappears with the process):
# a tmpfs of a few MiB is mounted over the store's root, so the push meets the kernel's real ENOSPC from a real
# filesystem, at whatever write it happens (a data file, its temporary copy, the manifest, a pointer). A per-file
# RLIMIT_FSIZE would give EFBIG at a chosen file size instead, and never a full disk across files.
DISK = textwrap.dedent(
    """
    set -eu
    mount -t tmpfs -o size="$SIZE" tmpfs "$DKT_STORE_ROOT"
    rc=0
    "$PY" -m dkt models push "$BUNDLE" >"$OUT/push.out" 2>"$OUT/push.err" || rc=$?
    echo "$rc" >"$OUT/push.rc"
    exec "$PY" -c "$CHECK"
    """
)
CHECK = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    from models.cli import main
    from pipeline.store import VersionedStore
    from tests.pipeline.test_store_concurrency import store_leftovers
    store, out = VersionedStore.from_env(), Path(os.environ["OUT"])
    doc = {"df_after_failure": subprocess.run(["df", "-k", os.environ["DKT_STORE_ROOT"]], capture_output=True,
                                              text=True).stdout.splitlines()[-1],
           "files_after_failure": sorted(str(p.relative_to(os.environ["DKT_STORE_ROOT"]))
                                         for p in Path(os.environ["DKT_STORE_ROOT"]).rglob("*") if p.is_file()),
           "versions_after_failure": [m["version"] for m in store.versions("models")]}
    # Room again (tmpfs grows in place), then the next run: it sweeps what the failed push left and completes.
    subprocess.run(["mount", "-o", "remount,size=" + os.environ["ROOMY"], os.environ["DKT_STORE_ROOT"]], check=True)
    doc["next_run_rc"] = main(["push", os.environ["BUNDLE"]])
    doc["latest"] = store.pointed("models", "latest")
    doc["leftovers"] = store_leftovers(store, "models")
    (out / "check.json").write_text(json.dumps(doc))
    """
)


def test_full_disk_under_the_store_is_one_error_and_the_next_run_completes(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is needed to mount a size-capped tmpfs without privileges"
    root, out = tmp_path / "store", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    big = fake_bundle(tmp_path, "full", 3 << 20, seed=6, files=3)  # 9 MiB into 6 MiB
    env = {**os.environ, "DKT_STORE": "local", "DKT_STORE_ROOT": str(root), "OUT": str(out), "BUNDLE": str(big),
           "PY": sys.executable, "SIZE": "6m", "ROOMY": "64m", "CHECK": CHECK, "PYTHONPATH": str(ROOT)}  # fmt: skip
    done = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "bash", "-c", DISK], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rc, err = int((out / "push.rc").read_text()), (out / "push.err").read_text()
    line = cli_error((rc, err), "No space left on device", "models/full/")
    doc = json.loads((out / "check.json").read_text())
    print(f"\n[faults] full disk (tmpfs 6 MiB, 9 MiB pushed): {line[:160]}; after: {doc}")
    # The failed push removed its partial files itself; only its lease may wait for the next run's sweep.
    assert doc["versions_after_failure"] == [], doc
    assert all(f.endswith(LEASE) or f.startswith("models/_pointers") for f in doc["files_after_failure"]), doc
    assert doc["next_run_rc"] == 0 and doc["latest"] == "full" and doc["leftovers"] == [], doc
