"""Build-context assembly and image naming (pipeline.swarm_images), on the real config and Dockerfiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.swarm_images import (
    REPO_ROOT,
    ImageSpec,
    assemble_context,
    context_hash,
    filter_requirements,
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
    assert cfg.images["inference"].sources == ["dkt", "serving", "service.py"]
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


def test_runtime_context_has_filtered_pins_ca_and_wheels(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    spec = load_stack_config(CONFIG).images["inference-runtime"]
    ctx = assemble_context(spec, tmp_path / "ctx", ca_bundle=ca, wheels_dir=wheels)
    reqs = (ctx / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in reqs and any(r.startswith("bentoml==") for r in reqs)
    assert not any(r.lower().startswith(("flask", "gunicorn")) for r in reqs)
    assert (ctx / "wheels" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").read_bytes() == b"wheel"
    assert (ctx / "build-ca.crt").read_text() == ca.read_text()
    assert "FROM ${BASE_IMAGE}" in (ctx / "Dockerfile").read_text()


def test_inference_context_copies_service_and_package(tmp_path: Path) -> None:
    spec = load_stack_config(CONFIG).images["inference"]
    ctx = assemble_context(spec, tmp_path / "ctx")
    assert (ctx / "src" / "service.py").read_text() == (REPO_ROOT / "service.py").read_text()
    assert (ctx / "src" / "dkt" / "predictor.py").is_file()
    assert (ctx / "src" / "serving" / "batcher.py").is_file()  # what service.py stands on (serving/)
    assert not list(ctx.rglob("__pycache__"))


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
    assert "image dkt-proxy: reg:5000/dkt-proxy (unchanged)" in said


def test_client_context_holds_every_project_module_the_client_imports(tmp_path: Path) -> None:
    """The client image copies a list of files (config/swarm.json): a module the client comes to import that
    is not on the list would only show as a crash-looping container minutes into the swarm suite."""
    import subprocess
    import sys

    spec = load_stack_config(CONFIG).images["client"]
    questions = tmp_path / "questions.csv"
    questions.write_text("assessmentItemID,KnowledgeTag\n")
    ctx = assemble_context(spec, tmp_path / "ctx", ca_bundle=Path(__file__), questions=questions)
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
