"""packer.py: bad bundles are refused clearly; a packed model carries its labels; the built Bento serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.serving.fixtures import Packed
from tests.serving.servers import PY, ROOT, bentoml_env, bentoml_service


def pack(bundle: Path, home: Path, bento: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "packer.py", "--model-dir", str(bundle), *([] if bento else ["--no-bento"])],
        cwd=ROOT,
        env=bentoml_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_bad_bundles_are_refused(tmp_path: Path, lstm_bundle: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = pack(empty, tmp_path / "home")
    assert r.returncode == 2 and "bundle.json missing" in r.stderr and str(empty) in r.stderr
    r = pack(tmp_path / "nowhere", tmp_path / "home")
    assert r.returncode == 2 and "no such folder" in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(lstm_bundle, broken)
    (broken / "weights.pt").write_bytes(b"not a torch file")
    r = pack(broken, tmp_path / "home")
    assert r.returncode == 2 and "cannot load the model bundle" in r.stderr, r.stderr
    assert not (tmp_path / "home" / "models" / "dkt-model").exists()  # nothing half-stored


@pytest.mark.slow
def test_packed_model_labels_and_repack(packed: Packed) -> None:
    code = (
        "import bentoml, json, sys; m = bentoml.models.get(sys.argv[1]); "
        "print(json.dumps({'labels': m.info.labels, 'metadata': m.info.metadata}))"
    )
    out = subprocess.run(
        [PY, "-c", code, packed.model_tag], env=bentoml_env(packed.home), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    meta = json.loads((packed.bundle / "bundle.json").read_text())
    assert packed.model_tag == "dkt-model:test-v1"
    assert info["labels"]["model_version"] == "test-v1"
    assert info["labels"]["data_version"] == meta["data_version"]
    assert float(info["labels"]["test_auc"]) == pytest.approx(meta["metrics"]["test_auc"], abs=1e-4)
    assert info["metadata"]["metrics"]["test_auc"] == pytest.approx(meta["metrics"]["test_auc"])
    again = pack(packed.bundle, packed.home)  # same version again: reused, same tag
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == f"model: {packed.model_tag}"
    # with the Bento too (a redeploy of the served version): the existing Bento is reused, not an error
    full = pack(packed.bundle, packed.home, bento=True)
    assert full.returncode == 0, full.stderr[-2000:]
    assert full.stdout.strip().splitlines()[-2:] == [f"model: {packed.model_tag}", f"bento: {packed.bento_tag}"]


@pytest.mark.slow
def test_built_bento_serves(packed: Packed, tmp_path: Path) -> None:
    env = bentoml_env(packed.home)
    env.pop("DKT_MODEL_TAG", None)  # the Bento carries its own model tag
    env["PYTHONPATH"] = ""  # and its own code: nothing from the checkout
    with bentoml_service(packed.bento_tag, env, tmp_path / "bento.log") as server:
        meta = requests.get(server.url + "/metadata", timeout=30).json()
        assert meta["model_tag"] == packed.model_tag and meta["model_version"] == "test-v1"
        body = {"history": [], "candidates": [{"assessmentItemID": "A1", "testId": "T1", "KnowledgeTag": 1}]}
        assert requests.post(server.url + "/predict", json=body, timeout=60).status_code == 200


@pytest.mark.slow
def test_bento_holds_only_the_service_code_whatever_lies_under_var(lstm_bundle: Path, tmp_path: Path) -> None:
    # BENTOML_HOME defaults to var/bentoml inside the repo. A build's leftover temp folder there holds a
    # service.py; an unanchored include pattern once pulled it in, and the build copied itself until
    # "File name too long". A decoy of that shape must stay out of the Bento.
    # Named by this process too: two test sessions at once (parallel engineers, xdist) share tmp_path names.
    decoy = ROOT / "var" / f"decoy-{os.getpid()}-{tmp_path.name}" / "src"
    (decoy / "dkt").mkdir(parents=True)
    (decoy / "service.py").write_text("raise SystemExit('decoy')\n")
    (decoy / "dkt" / "stray.py").write_text("")
    try:
        home = tmp_path / "home"
        r = pack(lstm_bundle, home, bento=True)
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        shutil.rmtree(decoy.parent)
    bento_tag = r.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    src = home / "bentos" / bento_tag.replace(":", "/") / "src"
    got = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    code = [p for package in ("dkt", "serving") for p in (ROOT / package).rglob("*.py")]
    want = {"service.py", "bentofile.yaml"} | {p.relative_to(ROOT).as_posix() for p in code}
    assert got == want, sorted(got ^ want)[:10]
