"""packer.py: bad bundles are refused clearly; a packed model carries its labels; the built Bento serves."""

from __future__ import annotations

import ast
import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests
from packaging.utils import canonicalize_name

from dkt.models.interface import model_names
from packer import serve_packages
from tests.serving.fixtures import Packed
from tests.serving.servers import PY, ROOT, bentoml_env, bentoml_service
from tests.support.scripts import Job, Result, ScriptBatch


def pack_argv(bundle: Path, bento: bool = False) -> list[str]:
    return ["--model-dir", str(bundle), *([] if bento else ["--no-bento"])]


def pack(bundle: Path, home: Path, bento: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "packer.py", *pack_argv(bundle, bento)],
        cwd=ROOT,
        env=bentoml_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )


def packs(jobs: list[list[str]], home: Path, work: Path) -> list[Result]:
    """packer.py with each argument list, one after another in one child process (one start-up for all)."""
    return ScriptBatch.start([Job("packer.py", argv) for argv in jobs], bentoml_env(home), work).wait()


@pytest.mark.slow
def test_bad_bundles_are_refused(tmp_path: Path, lstm_bundle: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(lstm_bundle, broken)
    (broken / "weights.pt").write_bytes(b"not a torch file")
    jobs = [pack_argv(empty), pack_argv(tmp_path / "nowhere"), pack_argv(broken)]
    r_empty, r_nowhere, r_broken = packs(jobs, tmp_path / "home", tmp_path / "batch")
    for r in (r_empty, r_nowhere, r_broken):  # an error line, no traceback, nothing on stdout
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
        assert r.stdout == ""
    assert "bundle.json missing" in r_empty.stderr and str(empty) in r_empty.stderr
    assert "no such folder" in r_nowhere.stderr
    assert "cannot load the model bundle" in r_broken.stderr and str(broken) in r_broken.stderr, r_broken.stderr
    assert not (tmp_path / "home" / "models" / "dkt-model").exists()  # nothing half-stored


@pytest.mark.slow
def test_packed_model_labels_and_repack(packed: Packed, tmp_path: Path) -> None:
    code = (
        "import bentoml, json, sys; m = bentoml.models.get(sys.argv[1]); "
        "print(json.dumps({'labels': m.info.labels, 'metadata': m.info.metadata}))"
    )
    # The labels as BentoML reads them, beside the two repacks (one child runs both: one start-up).
    reader = subprocess.Popen([PY, "-c", code, packed.model_tag], env=bentoml_env(packed.home),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    # Same version again: reused, same tag; and with the Bento too (a redeploy of the served version): the
    # existing Bento is reused, not an error. --model-tag: the Bento of a model already in the store (what the
    # swarm build asks for), and an error line for one that is not there.
    jobs = [pack_argv(packed.bundle), pack_argv(packed.bundle, bento=True), ["--model-tag", packed.model_tag],
            ["--model-tag", "dkt-model:no-such-version"]]  # fmt: skip
    again, full, by_tag, missing = packs(jobs, packed.home, tmp_path / "batch")
    stdout, stderr = reader.communicate(timeout=300)
    out = subprocess.CompletedProcess(reader.args, reader.returncode, stdout, stderr)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    meta = json.loads((packed.bundle / "bundle.json").read_text())
    assert packed.model_tag == "dkt-model:test-v1"
    assert info["labels"]["model_version"] == "test-v1"
    assert info["labels"]["data_version"] == meta["data_version"]
    assert float(info["labels"]["test_auc"]) == pytest.approx(meta["metrics"]["test_auc"], abs=1e-4)
    assert info["metadata"]["metrics"]["test_auc"] == pytest.approx(meta["metrics"]["test_auc"])
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == f"model: {packed.model_tag}"
    assert full.returncode == 0, full.stderr[-2000:]
    assert full.stdout.strip().splitlines()[-2:] == [f"model: {packed.model_tag}", f"bento: {packed.bento_tag}"]
    assert by_tag.returncode == 0 and by_tag.stdout.strip().splitlines()[-1] == f"bento: {packed.bento_tag}"
    assert missing.returncode == 2 and missing.stdout == "", missing.stdout
    assert missing.stderr.startswith("error: --model-tag dkt-model:no-such-version: no such model in the store")


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
    requirements = (src.parent / "env" / "python" / "requirements.txt").read_text().split()
    # BentoML appends its own pin (bentoml==<its version>), the one already in the set
    assert set(requirements) == set(serve_packages({"lstm"})), "the Bento declares the slim set, no more"


@functools.cache  # one parse per file for all the kinds
def loaded_imports(path: Path) -> tuple[str, ...]:
    """The modules ``path`` imports when it is loaded: its body's imports (a ``from m import x`` gives m and m.x,
    x may be a module), not its functions' nor those under TYPE_CHECKING."""
    names: list[str] = []
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try | ast.ClassDef):
            todo += node.body
    return tuple(names)


def loaded_top_names(start: list[Path]) -> set[str]:
    """The top-level names loading the modules ``start`` imports, following this repository's modules they import."""
    seen: set[Path] = set()
    out: set[str] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in loaded_imports(path):
            out.add(name.split(".")[0])
            base = ROOT / Path(*name.split("."))
            todo += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
    return out


def test_every_kinds_bento_declares_every_package_serving_it_loads() -> None:
    """What `bentoml serve` loads for a model of each kind (service.py, serving/, dkt/models/<kind>.py and the
    modules of this repository they import on load) comes from the packages its Bento declares
    (packer.serve_packages) or their dependencies as the slim image takes them: a kind that comes to import another
    library fails here, not as a crash-looping container in the swarm suite."""
    from pipeline.swarm_images import load_stack_config, venv_closure

    drop = load_stack_config(ROOT / "config" / "swarm.json").images["inference-runtime"].drop_distributions
    site = Path(sysconfig.get_path("purelib"))

    @functools.cache
    def provided(packages: tuple[str, ...]) -> set[str]:  # the top-level names the image's distributions install
        records = (d.read_text("RECORD") or "" for d in venv_closure(packages, site, drop))
        return {line.split("/", 1)[0].split(",", 1)[0].removesuffix(".py") for r in records for line in r.splitlines()}

    service = loaded_top_names([ROOT / "service.py", *sorted((ROOT / "serving").glob("*.py"))])
    ours = {"service", "serving", "dkt", *sys.stdlib_module_names}
    missing = {}
    for kind in model_names():
        loaded = service | loaded_top_names([ROOT / "dkt" / "models" / f"{kind}.py"])
        if lacking := sorted(loaded - ours - provided(tuple(serve_packages({kind})))):
            missing[kind] = lacking
    assert not missing, f"loaded but not declared by the kind's Bento (packer.KIND_EXTRAS): {missing}"
    assert {"lstm", "saint", "bert", "lgbm", "ensemble"} <= set(model_names())
    assert {"torch", "pandas", "bentoml"} <= service, "the imports were read"


def test_the_torch_kinds_bento_leaves_out_the_training_storage_and_client_packages() -> None:
    slim = {canonicalize_name(p.split("==")[0]) for p in serve_packages({"lstm", "saint"})}
    assert {"torch", "bentoml", "numpy", "pandas"} <= slim
    assert not slim & {
        "transformers",
        "lightgbm",
        "scipy",
        "scikit-learn",
        "mlflow-skinny",
        "boto3",
        "flask",
        "pyarrow",
    }
    assert "transformers==5.23.0" in serve_packages({"bert"}) and "lightgbm==4.7.0" in serve_packages({"lgbm"})
