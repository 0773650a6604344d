"""Build-context assembly and image naming (pipeline.swarm_images), on the real config and Dockerfiles."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.requirements import filter_requirements
from pipeline.swarm_images import (
    IMAGE_VENV,
    REPO_ROOT,
    ImageSpec,
    VenvFiles,
    assemble_context,
    context_hash,
    image_pins,
    load_stack_config,
    tag_for,
)

CONFIG = REPO_ROOT / "config" / "swarm.json"
REQS = (REPO_ROOT / "requirements.txt").read_text().splitlines()


def test_filter_requirements_keeps_pins_and_drops_excluded() -> None:
    lines = ["# comment", "torch==2.13.0", "Flask==3.1.3", "", "gunicorn==27.0.1", "bentoml==1.4.39"]
    assert filter_requirements(lines, None, ["flask", "gunicorn"]) == ["torch==2.13.0", "bentoml==1.4.39"]
    assert filter_requirements(lines, ["Flask", "gunicorn"], []) == ["Flask==3.1.3", "gunicorn==27.0.1"]


def test_filter_requirements_names_a_missing_pin() -> None:
    with pytest.raises(ValueError, match="no pin for nosuchpkg"):
        filter_requirements(REQS, ["Flask", "nosuchpkg"], [])


@pytest.mark.parametrize(
    ("version", "tag"), [("v2", "v2"), ("2024-05-01 run#3", "2024-05-01-run-3"), ("A_b.1", "A_b.1")]
)
def test_tag_for_makes_docker_tags(version: str, tag: str) -> None:
    assert tag_for(version) == tag


@pytest.mark.parametrize("bad", ["", "-x", ".x"])
def test_tag_for_rejects_unusable_versions(bad: str) -> None:
    with pytest.raises(ValueError, match="Docker tag"):
        tag_for(bad)


def test_real_stack_config_loads() -> None:
    cfg = load_stack_config(CONFIG)
    assert cfg.images["inference"].sources == [], "the inference image's content is the Bento, nothing else"
    assert {"inference", "client", "proxy"} <= set(cfg.services)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"services": {}, "images": {}}), "images.inference-runtime is missing"),
        (json.dumps({"services": {}, "images": {"x": {"name": "Bad Name", "dockerfile": "d"}}}), "images.x.name"),
    ],
)
def test_bad_stack_config_names_file_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "swarm.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_stack_config(path)
    assert str(path) in str(info.value)


def fake_venv(root: Path, dists: dict[str, tuple[str, list[str], dict[str, str]]]) -> Path:
    """A venv holding ``name: (version, Requires-Dist lines, {path: content})`` as pip lays them out."""
    site = root / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    for name, (version, requires, files) in dists.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"] + [
            f"Requires-Dist: {r}" for r in requires
        ]
        (info / "METADATA").write_text("\n".join(meta) + "\n")
        record = [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
        for rel, content in files.items():
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            (site / rel).write_text(content)
            record.append(f"{rel},sha256=x,{len(content)}")
        (info / "RECORD").write_text("\n".join(record) + "\n")
    return root


def test_venv_files_are_the_pins_closure_with_scripts_pointed_at_the_image(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    fake_venv(venv, {
        "app": ("1.0", ["dep>=2", "extra-only; extra == 'x'", "win-only; sys_platform == 'win32'"],
                {"app/__init__.py": "A", "app/__pycache__/__init__.cpython-311.pyc": "bytecode",
                 "../../../bin/app": f"#!{venv}/bin/python\nimport app\n"}),
        "dep": ("2.1", [], {"dep.py": "D"}),
        "extra-only": ("1", [], {"e.py": "E"}),
        "unrelated": ("1", [], {"u.py": "U"}),
    })  # fmt: skip
    files = VenvFiles(["app==1.0"], prefix=venv)
    site = Path("lib/python3.11/site-packages")
    assert site / "app/__pycache__/__init__.cpython-311.pyc" in files.files and Path("bin/app") in files.files
    assert not any(p.name in ("e.py", "u.py") for p in files.files), "only what pip installed for the pins"
    files.copy_to(tmp_path / "ctx")
    assert (tmp_path / "ctx/bin/app").read_text() == f"#!{IMAGE_VENV}/bin/python\nimport app\n"
    assert (tmp_path / "ctx" / site / "dep.py").stat().st_ino == (venv / site / "dep.py").stat().st_ino  # linked
    (tmp_path / "ctx2").mkdir()
    files.write_tar(tmp_path / "ctx2" / "venv.tar")
    with tarfile.open(tmp_path / "ctx2" / "venv.tar") as tar:
        script = tar.getmember("./bin/app")
        assert (script.uid, script.gid) == (0, 0) and tar.extractfile(script).read().startswith(b"#!/opt/venv/")  # type: ignore[union-attr]
    assert [p.name for p in (tmp_path / "ctx2").iterdir()] == ["venv.tar"]
    first = files.digest
    (venv / site / "dep-2.1.dist-info/RECORD").write_text("dep.py,sha256=y,1\n")  # a reinstall changes the RECORD
    assert VenvFiles(["app==1.0"], prefix=venv).digest != first


def test_venv_files_refuse_a_venv_that_does_not_match_the_pins(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path / "venv", {"app": ("1.0", ["dep>=2"], {}), "dep": ("1.5", [], {})})
    with pytest.raises(ValueError, match=r"requirements.txt pins app==2.0 but in .*site-packages 1.0 is installed"):
        VenvFiles(["app==2.0"], prefix=venv)
    with pytest.raises(ValueError, match=r"pins nothere==1 but .* it is not installed \(make setup"):
        VenvFiles(["nothere==1"], prefix=venv)
    shutil.rmtree(venv / "lib/python3.11/site-packages/dep-1.5.dist-info")
    with pytest.raises(ValueError, match=r"app 1.0 needs dep>=2 but it is not installed"):
        VenvFiles(["app==1.0"], prefix=venv)
    with pytest.raises(ValueError, match="is no virtualenv"):
        VenvFiles(["app==1.0"], prefix=tmp_path)


def test_venv_files_drop_prune_and_strip_without_touching_the_app_venv(tmp_path: Path) -> None:
    """The slim runtime: a dropped dependency is not followed, pruned files stay out, shared objects are stripped
    copies (a hard link would strip the app venv's own file) and the options are part of the digest."""
    import markupsafe

    so = next(Path(markupsafe.__file__).parent.glob("_speedups.*.so"))  # built with its symbols (not stripped)
    venv = fake_venv(tmp_path / "venv", {
        "app": ("1.0", ["big>=1", "dep"], {"app/__init__.py": "A", "app/tests/test_app.py": "T",
                                            "app/jit/__pycache__/x.cpython-311.pyc": "B", "app/jit/x.py": "X"}),
        "big": ("1", [], {"big.py": "B"}),
        "dep": ("1", ["grafted"], {"dep/__init__.py": "D"}),
        "grafted": ("1", [], {"grafted/__init__.py": "G"}),  # auditwheel-repaired: its libraries in grafted.libs/
    })  # fmt: skip
    site = Path("lib/python3.11/site-packages")
    shutil.copy2(so, venv / site / "dep" / "_fast.so")
    record = venv / site / "dep-1.dist-info" / "RECORD"
    record.write_text(record.read_text() + "dep/_fast.so,sha256=x,1\n")
    (venv / site / "grafted.libs").mkdir()
    shutil.copy2(so, venv / site / "grafted.libs" / "libg.so")
    record = venv / site / "grafted-1.dist-info" / "RECORD"
    record.write_text(record.read_text() + "grafted.libs/libg.so,sha256=x,1\n")
    before = (venv / site / "dep/_fast.so").read_bytes()
    plain = VenvFiles(["app==1.0"], prefix=venv)
    slim = VenvFiles(["app==1.0"], prefix=venv, drop=["big"], prune=["*/tests/*", "app/jit/*.pyc"], strip=True)
    assert {
        p.relative_to(site).as_posix() for p in slim.files if p.is_relative_to(site) and "dist-info" not in str(p)
    } == {
        "app/__init__.py",
        "app/jit/x.py",
        "dep/__init__.py",
        "dep/_fast.so",
        "grafted/__init__.py",
        "grafted.libs/libg.so",
    }
    assert slim.digest != plain.digest
    slim.copy_to(tmp_path / "ctx")
    stripped = tmp_path / "ctx" / site / "dep/_fast.so"
    assert stripped.stat().st_ino != (venv / site / "dep/_fast.so").stat().st_ino
    assert stripped.stat().st_size < len(before) and (venv / site / "dep/_fast.so").read_bytes() == before
    symbols = subprocess.run(["nm", str(stripped)], capture_output=True, text=True)
    assert "no symbols" in symbols.stderr, symbols.stdout[:300]
    # patchelf rewrote a repaired wheel's libraries: strip would corrupt them, so they are the venv's own file
    grafted = tmp_path / "ctx" / site / "grafted.libs/libg.so"
    assert grafted.stat().st_ino == (venv / site / "grafted.libs/libg.so").stat().st_ino


def test_runtime_image_gets_the_app_venvs_torch_and_bentoml_not_the_clients(tmp_path: Path) -> None:
    spec = load_stack_config(CONFIG).images["inference-runtime"]
    pins = image_pins(spec)
    assert pins is not None and "torch==2.13.0" in pins and not any(p.lower().startswith("flask") for p in pins)
    ctx = assemble_context(spec, tmp_path / "ctx")
    assert (ctx / "requirements.txt").read_text().splitlines() == pins and not (ctx / "venv.tar").exists()
    assert (ctx / "venv-finish.sh").is_file() and "FROM ${BASE_IMAGE}" in (ctx / "Dockerfile").read_text()
    names = {
        p.parts[3]
        for p in VenvFiles(pins).files
        if len(p.parts) > 4 and p.parts[:3] == ("lib", "python3.11", "site-packages")
    }
    assert {"torch", "bentoml", "lightgbm"} <= names and "flask" not in names


def test_inference_image_is_the_bentos_generated_dockerfile_on_the_runtime_image() -> None:
    """The inference image is `bentoml containerize` of the Bento (pipeline/swarm_images.py): bentofile.yaml names
    the template config/swarm.json names, and the template builds offline on the runtime image: no apt, pip or uv
    step of BentoML's (they would download torch's CUDA build), the Bento copied as it is."""
    import yaml

    template = load_stack_config(CONFIG).images["inference"].dockerfile
    assert yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())["docker"]["dockerfile_template"] == template
    text = (REPO_ROOT / template).read_text()
    blocks = dict(re.findall(r"{% block (\w+) %}(.*?){% endblock %}", text, re.S))
    assert set(blocks) == {"SETUP_BENTO_BASE_IMAGE", "SETUP_BENTO_COMPONENTS"}
    assert "FROM ${RUNTIME_IMAGE} AS base-container" in blocks["SETUP_BENTO_BASE_IMAGE"]
    steps = [ln for ln in blocks["SETUP_BENTO_COMPONENTS"].splitlines() if ln.startswith(("RUN", "COPY"))]
    assert not any(word in step for step in steps for word in ("apt-get", "pip ", "uv ")), steps
    assert "COPY --chown={{ bento__user }}:{{ bento__user }} . ./" in steps


def test_missing_source_is_named(tmp_path: Path) -> None:
    spec = ImageSpec(name="x", dockerfile="docker/client.Dockerfile", sources=["no_such_dir"])
    with pytest.raises(ValueError, match=r"no_such_dir.*does not exist"):
        assemble_context(spec, tmp_path / "ctx")


def test_context_hash_follows_content(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("one")
    first = context_hash(tmp_path)
    assert context_hash(tmp_path) == first
    (tmp_path / "a" / "f.txt").write_text("two")
    assert context_hash(tmp_path) != first


def test_images_build_side_by_side_and_a_failure_is_raised_after_all_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import pipeline.swarm_images as si

    cfg = load_stack_config(CONFIG)
    jobs = {k: (cfg.images[k], p) for k, p in (("inference-runtime", "r"), ("client", "c"), ("proxy", "p"))}
    started = threading.Barrier(3, timeout=10)  # breaks (and fails the build) unless all three run at once
    ended: list[str] = []

    def fake(spec: ImageSpec, registry: str, args: dict[str, str], prefix: str, **_: object) -> tuple[str, bool]:
        started.wait()
        if spec.name == "dkt-client":
            raise si.DockerError("client build failed")
        ended.append(spec.name)
        return f"{registry}/{spec.name}:{prefix}-x", True

    monkeypatch.setattr(si, "build_hashed_image", fake)
    said: list[str] = []
    with pytest.raises(si.DockerError, match="client build failed"):
        si.build_hashed_images(jobs, "reg:5000", {}, progress=said.append)
    assert sorted(ended) == ["dkt-inference-runtime", "dkt-proxy"]  # the others were not cut short
    started.reset()
    monkeypatch.setattr(si, "build_hashed_image", lambda spec, reg, args, prefix, **_: (f"{reg}/{spec.name}", False))
    out = si.build_hashed_images(jobs, "reg:5000", {}, progress=said.append)
    assert out == {k: (f"reg:5000/{s.name}", False) for k, (s, _p) in jobs.items()}
    assert any(m.startswith("image dkt-proxy: reg:5000/dkt-proxy (unchanged, pushed; ") for m in said)


def test_client_context_holds_every_project_module_the_client_imports(tmp_path: Path) -> None:
    """The client image copies a list of files (config/swarm.json): a module the client comes to import that
    is not on the list would only show as a crash-looping container minutes into the swarm suite."""
    import subprocess

    spec = load_stack_config(CONFIG).images["client"]
    questions = tmp_path / "questions.csv"
    questions.write_text("assessmentItemID,KnowledgeTag\n")
    ctx = assemble_context(spec, tmp_path / "ctx", questions=questions)
    src = ctx / "src"
    # Import it as gunicorn does, from the copied files only: any project module loaded from elsewhere is missing.
    code = (
        "import sys, client; client.create_app; import client.settings, client.db, client.tutor, client.inference\n"
        f"src = {str(src)!r}\n"
        "ours = ('client', 'dkt', 'serving', 'pipeline')\n"
        "print([n for n, m in sys.modules.items() if n.split('.')[0] in ours\n"
        "       and not (getattr(m, '__file__', None) or src).startswith(src)])"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"imported from outside the client image: {out.stdout}"


def test_prometheus_context_holds_the_hosts_binary_and_a_config_promtool_accepts(tmp_path: Path) -> None:
    """The stack's Prometheus image is built offline from this host's Debian binary, the swarm scrape config and
    the same alert rules as `make up`'s; the assembled config (rules beside it, as in the image) must load."""
    import subprocess

    spec = load_stack_config(CONFIG).images["prometheus"]
    ctx = assemble_context(spec, tmp_path / "ctx")
    binary = ctx / "bin" / "prometheus"
    host = Path(shutil.which("prometheus") or "prometheus-missing").resolve()
    assert binary.read_bytes() == host.read_bytes() and binary.stat().st_mode & 0o111
    assert (ctx / "alerts.yml").read_text() == (REPO_ROOT / "config" / "prometheus" / "alerts.yml").read_text()
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "COPY swarm.yml /etc/prometheus/prometheus.yml" in dockerfile and "\nFROM ${BASE_IMAGE}" in dockerfile
    check = subprocess.run(["promtool", "check", "config", str(ctx / "swarm.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout + check.stderr


def test_prometheus_in_the_swarm_scrapes_every_task_of_the_compose_services_on_their_ports() -> None:
    """tasks.<service> DNS, type A, on the port each service listens on (docker-compose.yml's DKT_PORT): a renamed
    service or a moved port would leave Prometheus scraping nothing, which only the slow e2e test would notice."""
    import yaml

    scrape = yaml.safe_load((REPO_ROOT / "config" / "prometheus" / "swarm.yml").read_text())
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert scrape["rule_files"] == ["alerts.yml"]
    for name in ("inference", "client"):
        [sd] = jobs[name]["dns_sd_configs"]
        assert (sd["names"], sd["type"]) == ([f"tasks.{name}"], "A")
        assert str(sd["port"]) == services[name]["environment"]["DKT_PORT"], name
        assert services[name]["deploy"]["endpoint_mode"] == "dnsrr", "a VIP would hide the replicas behind one name"
    [port] = services["prometheus"]["ports"]
    assert (port["target"], port["published"]) == (9090, "${DKT_PROMETHEUS_HOST_PORT:-9090}")
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9090"]}]
    # the operator page reads latency from the same server, by service name on the overlay
    assert services["client"]["environment"]["DKT_PROMETHEUS_URL"] == "http://prometheus:9090"


def test_an_image_binary_missing_on_the_host_is_named_with_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = load_stack_config(CONFIG).images["prometheus"]
    with pytest.raises(ValueError, match=r"^prometheus: executable .* dkt-prometheus is not on PATH \(`make prom"):
        assemble_context(spec, tmp_path / "ctx")


def test_a_deploy_of_a_given_inference_image_builds_no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dkt swarm deploy --image` (going back to an image, the e2e's broken one) rolls that image out as it is: the
    runtime is only the base of an inference image built from a Bento, and with no Bento it was the full one, a
    1.6 GB build and push (about 4 minutes of the e2e's rollback) that nothing used. The other images still build."""
    from pipeline import swarm_build
    from pipeline.swarm_settings import swarm_settings

    asked: dict[str, str] = {}

    def build_hashed_images(jobs: dict[str, tuple[ImageSpec, str]], registry: str, *_a: object, **_k: object) -> dict:
        asked.update({key: spec.name for key, (spec, _prefix) in jobs.items()})
        return {key: (f"{registry}/{spec.name}:{prefix}-0", False) for key, (spec, prefix) in jobs.items()}

    monkeypatch.setattr(swarm_build, "build_hashed_images", build_hashed_images)
    monkeypatch.setattr(swarm_build, "ensure_base_image", lambda _settings: None)
    built = swarm_build.build(swarm_settings({"DKT_REGISTRY": "reg:5000"}), with_model=False)
    assert set(asked) == set(built["images"]) == {"client", "proxy", "prometheus"}
    assert "model_version" not in built
