"""Building and pushing the stack's images: assembling each build context, tagging by content, pushing.

Image specs are data (config/swarm.json, validated here). Tags always carry a version: the model
version for the inference image, a hash of the build context for the others, so an unchanged
runtime/client/proxy image is never rebuilt and `latest` is never the only tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from dkt.bundle import read_json_file

REPO_ROOT = Path(__file__).resolve().parent.parent
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# Docker tags: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
_TAG_BAD = re.compile(r"[^A-Za-z0-9_.-]")


class DockerError(RuntimeError):
    """A docker (or bentoml) command failed; the message names the command and the end of its output."""


class ImageSpec(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._/-]*$")
    dockerfile: str
    sources: list[str] = []
    files: list[str] = []
    requirements_include: list[str] | None = None
    requirements_exclude: list[str] = []
    wheels: bool = False
    questions: bool = False  # the item bank (questions.csv) the client serves


class StackConfig(BaseModel):
    stack: str = Field(default="dkt", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$")
    services: dict[str, str]
    images: dict[str, ImageSpec]


def load_stack_config(path: Path) -> StackConfig:
    raw = read_json_file(path, "stack config")
    try:
        cfg = StackConfig(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from None
    for key in ("inference-runtime", "inference", "client", "proxy"):
        if key not in cfg.images:
            raise ValueError(f"{path}: images.{key} is missing")
    for key in ("inference", "client", "proxy"):
        if key not in cfg.services:
            raise ValueError(f"{path}: services.{key} is missing")
    return cfg


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, tail: int = 40) -> str:
    """Run a command, return stdout; on failure raise DockerError with the last lines of its output."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL, check=False
    )
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()
        raise DockerError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n" + "\n".join(out[-tail:]))
    return proc.stdout


def filter_requirements(lines: Iterable[str], include: list[str] | None, exclude: list[str]) -> list[str]:
    """The pinned lines of requirements.txt an image needs: pins never drift from the app venv's."""
    wanted = {n.lower() for n in include} if include is not None else None
    dropped = {n.lower() for n in exclude}
    out: list[str] = []
    seen: set[str] = set()
    for line in lines:
        m = _REQ_NAME.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        name = m.group(1).lower()
        if name in dropped or (wanted is not None and name not in wanted):
            continue
        seen.add(name)
        out.append(line.strip())
    if wanted is not None and (missing := wanted - seen):
        raise ValueError(f"requirements.txt has no pin for {', '.join(sorted(missing))}")
    return out


def tag_for(version: str) -> str:
    """A model version as a Docker tag (Docker allows fewer characters than model versions may use)."""
    tag = _TAG_BAD.sub("-", version.strip())[:128]
    if not tag or tag[0] in ".-":
        raise ValueError(f"model version {version!r} cannot be made into a Docker tag")
    return tag


def context_hash(ctx: Path) -> str:
    """Content hash of a build context (paths and bytes), the version of images without a model."""
    h = hashlib.sha256()
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(ctx)).encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def _copy_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def assemble_context(
    spec: ImageSpec,
    ctx: Path,
    *,
    repo: Path = REPO_ROOT,
    ca_bundle: Path | None = None,
    wheels_dir: Path | None = None,
    questions: Path | None = None,
) -> Path:
    """Fill ``ctx`` with what the Dockerfile of ``spec`` copies; ValueError naming anything missing."""
    ctx.mkdir(parents=True, exist_ok=True)
    dockerfile = repo / spec.dockerfile
    if not dockerfile.is_file():
        raise ValueError(f"{dockerfile}: Dockerfile not found (config/swarm.json images.*.dockerfile)")
    shutil.copy2(dockerfile, ctx / "Dockerfile")
    for name in spec.sources:
        src = repo / name
        if not src.exists():
            raise ValueError(f"{src}: source named in config/swarm.json for image {spec.name} does not exist")
        _copy_tree(src, ctx / "src" / name)
    for name in spec.files:
        src = repo / name
        if not src.is_file():
            raise ValueError(f"{src}: file named in config/swarm.json for image {spec.name} does not exist")
        shutil.copy2(src, ctx / src.name)
    if spec.requirements_include is not None or spec.requirements_exclude:
        lines = filter_requirements(
            (repo / "requirements.txt").read_text().splitlines(), spec.requirements_include, spec.requirements_exclude
        )
        (ctx / "requirements.txt").write_text("\n".join(lines) + "\n")
        ca = ca_bundle or Path("/etc/ssl/certs/ca-certificates.crt")
        if not ca.is_file():
            raise ValueError(f"{ca}: CA bundle for pip inside the build not found (set DKT_BUILD_CA)")
        shutil.copy2(ca, ctx / "build-ca.crt")
    if spec.questions:
        if questions is None or not questions.is_file():
            raise ValueError(
                f"{questions}: question bank for image {spec.name} not found "
                "(set DKT_QUESTIONS, or write one with `dkt simulate --out data/sim`)"
            )
        shutil.copy2(questions, ctx / "src" / "questions.csv")
    if spec.wheels:
        (ctx / "wheels").mkdir(exist_ok=True)
        for whl in sorted(wheels_dir.glob("*.whl")) if wheels_dir and wheels_dir.is_dir() else []:
            try:  # a hard link keeps the 190 MB torch wheel from being copied on every build
                os.link(whl, ctx / "wheels" / whl.name)
            except OSError:
                shutil.copy2(whl, ctx / "wheels" / whl.name)
    return ctx


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False).returncode == 0


def docker_build(ctx: Path, ref: str, build_args: dict[str, str], extra_tags: Sequence[str] = ()) -> None:
    # --network host: pip and apt inside the build reach the mirrors the way the host does.
    cmd = ["docker", "build", "--network", "host", "-t", ref]
    for t in extra_tags:
        cmd += ["-t", t]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    run([*cmd, str(ctx)], tail=60)


def docker_push(ref: str) -> None:
    run(["docker", "push", ref])


def export_model(model_tag: str, dest: Path) -> Path:
    """`bentoml models export` of a packed model (from the app venv's model store) into a build context."""
    bentoml = Path(sys.executable).with_name("bentoml")
    cmd = [str(bentoml)] if bentoml.is_file() else [sys.executable, "-m", "bentoml"]
    run([*cmd, "models", "export", model_tag, str(dest)])
    if not dest.is_file():
        # bentoml appends .bentomodel when the name lacks it
        found = sorted(dest.parent.glob(dest.name + "*"))
        if not found:
            raise DockerError(f"bentoml models export {model_tag} wrote nothing at {dest}")
        found[0].rename(dest)
    return dest


def build_hashed_image(
    spec: ImageSpec,
    registry: str,
    build_args: dict[str, str],
    *,
    repo: Path = REPO_ROOT,
    ca_bundle: Path | None = None,
    wheels_dir: Path | None = None,
    questions: Path | None = None,
    prefix: str = "c",
) -> tuple[str, bool]:
    """Build (unless present) and push an image tagged by its context hash. Returns (ref, built)."""
    with tempfile.TemporaryDirectory(prefix=f"dkt-{spec.name}-") as tmp:
        ctx = assemble_context(
            spec, Path(tmp), repo=repo, ca_bundle=ca_bundle, wheels_dir=wheels_dir, questions=questions
        )
        h = hashlib.sha256((context_hash(ctx) + json.dumps(build_args, sort_keys=True)).encode()).hexdigest()[:12]
        ref = f"{registry}/{spec.name}:{prefix}-{h}"
        built = not image_exists(ref)
        if built:
            docker_build(ctx, ref, build_args)
    docker_push(ref)
    return ref, built


def build_hashed_images(
    jobs: Mapping[str, tuple[ImageSpec, str]],
    registry: str,
    build_args: dict[str, str],
    *,
    progress: Callable[[str], None] = lambda _msg: None,
    **context: Any,
) -> dict[str, tuple[str, bool]]:
    """``build_hashed_image`` for each ``key: (spec, tag prefix)``, side by side; returns ``key: (ref, built)``.

    The builds do not depend on each other and wait on the network (pip, apt) and the disk as much as on
    the CPU: side by side, a first build on a busy 2-core host takes about as long as the runtime image alone.
    Every build runs to its end; the first failure is raised after them.
    """

    def one(key: str) -> tuple[str, bool]:
        spec, prefix = jobs[key]
        ref, built = build_hashed_image(spec, registry, build_args, prefix=prefix, **context)
        progress(f"image {spec.name}: {ref} ({'built' if built else 'unchanged'})")
        return ref, built

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {key: pool.submit(one, key) for key in jobs}
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return {key: f.result() for key, f in futures.items()}


def build_inference_image(
    spec: ImageSpec,
    registry: str,
    runtime_ref: str,
    model_tag: str,
    model_version: str,
    *,
    repo: Path = REPO_ROOT,
) -> str:
    """Build and push the inference image for one packed model; tagged with the model version and `latest`.

    A model version is never overwritten, so an image already tagged with it is reused: redeploying
    the same version (to scale, say) must not change the image digest, or Swarm would roll every replica.
    """
    name = f"{registry}/{spec.name}"
    ref = f"{name}:{tag_for(model_version)}"
    if image_exists(ref):
        run(["docker", "tag", ref, f"{name}:latest"])
    else:
        with tempfile.TemporaryDirectory(prefix="dkt-inference-") as tmp:
            ctx = assemble_context(spec, Path(tmp), repo=repo)
            export_model(model_tag, ctx / "model.bentomodel")
            docker_build(
                ctx,
                ref,
                {"RUNTIME_IMAGE": runtime_ref, "MODEL_TAG": model_tag, "MODEL_VERSION": model_version},
                extra_tags=[f"{name}:latest"],
            )
    # Pushed either way: the registry may be new (another host, a wiped volume); a no-op when it has it.
    docker_push(ref)
    docker_push(f"{name}:latest")
    return ref
