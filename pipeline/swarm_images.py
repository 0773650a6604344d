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
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatch
from importlib.metadata import Distribution
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, Field, ValidationError

from dkt.bundle import read_json_file
from pipeline.requirements import filter_requirements, requirement_names

REPO_ROOT = Path(__file__).resolve().parent.parent
# Docker tags: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
_TAG_BAD = re.compile(r"[^A-Za-z0-9_.-]")
# Where the Dockerfiles put the distributions copied from the app venv (docker/inference-runtime.Dockerfile).
IMAGE_VENV = "/opt/venv"
# The first line pip writes into a console script: the absolute path of the python it installed with.
_SCRIPT = re.compile(rb"#!/\S*/python[0-9.]*\r?\n")


class DockerError(RuntimeError):
    """A docker (or bentoml) command failed; the message names the command and the end of its output."""


class ImageSpec(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._/-]*$")
    dockerfile: str
    sources: list[str] = []
    files: list[str] = []
    # The pins of requirements.txt the image needs: their installed distributions are copied from the app venv.
    requirements_include: list[str] | None = None
    requirements_exclude: list[str] = []
    questions: bool = False  # the item bank (questions.csv) the client serves
    # Executables of this host copied into the context's bin/ (found on PATH): the Prometheus image gets the Debian
    # package's binary, so no image is pulled and nothing is downloaded during the build.
    binaries: list[str] = []
    # Distributions not taken although a pin depends on them: torch's sympy, mpmath and networkx (torch.compile and
    # torch.fx's symbolic shapes import them, serving never does) and setuptools (building, not serving).
    drop_distributions: list[str] = []
    # Files of the distributions left out (globs on the path under site-packages, `*` spans folders): torch's tests,
    # headers, executables and test libraries, the packages' test suites, bytecode of what serving never imports.
    prune: list[str] = []
    # `strip --strip-unneeded` on the shared objects (their symbol tables: about 90 MB of libtorch_cpu.so alone).
    strip: bool = False
    # The Bento whose `bentoml serve` decides which bytecode the image keeps (pipeline.swarm_images.runtime_for_bento);
    # None: all of it.
    bytecode_of: str | None = None


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
    for key in ("inference-runtime", "inference", "client", "proxy", "prometheus"):
        if key not in cfg.images:
            raise ValueError(f"{path}: images.{key} is missing")
    for key in ("inference", "client", "proxy", "prometheus"):
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


def _link(src: Path, dst: Path) -> None:
    """A hard link where it can (the 1.4 GB of torch & co. is not copied on every build), else a copy; either way
    the file keeps its mtime, which the copied bytecode is checked against."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def venv_closure(pins: Sequence[str], site: Path, drop: Iterable[str] = ()) -> list[Distribution]:
    """The distributions installed in ``site`` that ``pins`` need: each pin checked against the installed version,
    then their dependencies' closure, markers (extras included) evaluated as pip did when it installed them, less
    ``drop`` (dependencies not followed). ValueError naming a pin the venv does not satisfy or a dependency it lacks.

    Each distribution is found by its ``<name>-<version>.dist-info`` folder (the name as the wheel spec normalises
    it) and only the ones the closure reaches have their METADATA parsed, once: parsing all 300 of the app venv's,
    each again for its version and requirements, took seconds per call on a busy host."""
    dropped = {canonicalize_name(n) for n in drop}
    installed = {
        canonicalize_name(info.name.removesuffix(".dist-info").rsplit("-", 1)[0]): Distribution.at(info)
        for info in site.glob("*.dist-info")
    }
    metadata: dict[str, Any] = {}

    def meta(name: str) -> Any:
        if name not in metadata:
            metadata[name] = installed[name].metadata
        return metadata[name]

    hint = "make setup installs requirements.txt into the app venv"
    todo: list[tuple[Requirement, str]] = []
    for line in pins:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        version = meta(name)["Version"] if name in installed else None
        if version is None or not req.specifier.contains(version, prereleases=True):
            found = f"{version} is installed" if version else "it is not installed"
            raise ValueError(f"requirements.txt pins {line} but in {site} {found} ({hint})")
        todo.append((req, line))
    seen: dict[str, Distribution] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        if name in dropped or (name, frozenset(req.extras)) in done:
            continue
        done.add((name, frozenset(req.extras)))
        if name not in installed:
            raise ValueError(f"{wanted_by} needs {req} but it is not installed in {site} ({hint})")
        seen[name] = installed[name]
        envs = [{"extra": e} for e in ("", *req.extras)]
        for dep in map(Requirement, meta(name).get_all("Requires-Dist") or []):
            if dep.marker is None or any(dep.marker.evaluate(e) for e in envs):
                todo.append((dep, f"{meta(name)['Name']} {meta(name)['Version']}"))
    return [seen[n] for n in sorted(seen)]


class VenvFiles:
    """The files pip installed in the app venv ``prefix`` (default: the running interpreter's) for ``pins``.

    An image gets them as they are (``copy_to``), not a second resolution of the pins by a `pip install` inside
    `docker build`, which took most of the 8 minutes the runtime image took on a busy 2-core host: the files each
    distribution's RECORD lists, the bytecode pip compiled included (a replica imports torch and bentoml twice
    at start), and its scripts with their ``#!`` pointed at the image's venv. ``digest`` stands for their content
    at the cost of reading the RECORD files (each lists every file's sha256), not 1.4 GB, so a deploy that finds
    the image already built decides so in a second: a changed pin or reinstall changes it.
    The image's python must be the venv's minor version (the Dockerfiles check it), and its C library at least as
    new as the one the venv's wheels need, which holds for a base image made from the host's packages.
    """

    def __init__(
        self,
        pins: Sequence[str],
        prefix: Path | None = None,
        *,
        drop: Sequence[str] = (),
        prune: Sequence[str] = (),
        strip: bool = False,
        served_bytecode: Callable[[], set[Path]] | None = None,
    ):
        self.prefix = prefix or Path(sys.prefix)
        if not (self.prefix / "pyvenv.cfg").is_file():
            raise ValueError(
                f"{self.prefix} is no virtualenv: build the images with the app venv's python (.venv/bin/dkt)"
            )
        site = Path(
            sysconfig.get_path("purelib", "venv", vars={"base": str(self.prefix), "platbase": str(self.prefix)})
        )
        self.files: dict[Path, Path] = {}  # path in the venv -> installed file
        self.strip = strip
        # Only the bytecode of these files (resolved paths) is taken, when given: asked only when the image is built.
        self.served_bytecode = served_bytecode
        options = [sys.implementation.cache_tag, sorted(drop), list(prune), strip, served_bytecode is not None]
        h = hashlib.sha256(json.dumps(options).encode())
        # Files of auditwheel-repaired distributions (a `<name>.libs` folder beside the package): patchelf rewrote
        # their ELF files, and strip then leaves them unloadable (numpy's OpenBLAS: "ELF load command address/offset
        # not page-aligned" in the image). They are taken as they are.
        self.unstrippable: set[Path] = set()
        for dist in venv_closure(pins, site, drop):
            meta, record = dist.metadata, dist.read_text("RECORD") or ""
            repaired = re.search(r"^[^/,\n]+\.libs/", record, re.M) is not None
            h.update(f"{meta['Name']} {meta['Version']}\0".encode() + record.encode())
            for rel in dist.files or []:
                src = Path(os.path.normpath(dist.locate_file(rel)))
                if not src.is_relative_to(self.prefix):
                    raise ValueError(f"{src}: {meta['Name']} installed a file outside {self.prefix}")
                if src.is_relative_to(site) and any(fnmatch(str(src.relative_to(site)), p) for p in prune):
                    continue
                self.files[src.relative_to(self.prefix)] = src
                if repaired:
                    self.unstrippable.add(src.relative_to(self.prefix))
        self.digest = h.hexdigest()

    def copy_to(self, dest: Path) -> None:
        """Lay the files out as a venv in ``dest`` (hard links where it can: 1.4 GB is not copied per build); with
        ``strip``, the shared objects are copies, stripped (never the app venv's own files, which links would be)."""
        shared: list[Path] = []
        served = self.served_bytecode() if self.served_bytecode else None
        for rel, src in self.files.items():
            if not src.is_file():
                raise ValueError(f"{src}: listed in its distribution's RECORD but missing; reinstall it (make setup)")
            dst = dest / rel
            if rel.parts[0] == "bin" and _SCRIPT.match(text := src.read_bytes()):
                # a console script (`bentoml`): its #! names the python pip ran with, the image has its own
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(f"#!{IMAGE_VENV}/bin/python".encode() + text[text.find(b"\n") :])
                shutil.copystat(src, dst)
            elif rel.parent.name == "__pycache__" and served is not None and src.resolve() not in served:
                continue  # bytecode of a module serving never imports: compiled in memory should one be imported
            elif self.strip and rel not in self.unstrippable and ".so" in rel.suffixes and _is_elf(src):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                shared.append(dst)
            else:
                _link(src, dst)
        if shared and shutil.which("strip") is None:
            raise ValueError("strip: not on PATH, the slim image strips its shared objects (apt-get install binutils)")
        if shared:  # one strip for all of them: torch's 434 MB libtorch_cpu.so takes about 3 s
            run(["strip", "--strip-unneeded", "--preserve-dates", *map(str, shared)])

    def write_tar(self, tar: Path) -> None:
        """The venv as one tar file, which the Dockerfile ADDs: 40,000 files sent and COPYed one by one took the
        legacy builder 281 s, one file 137 s (busy 2-core host). Owned by root, as pip run as root leaves them."""
        with tempfile.TemporaryDirectory(prefix="venv-", dir=tar.parent) as stage:  # gone before the build
            self.copy_to(Path(stage))
            run(["tar", "-cf", str(tar), "--owner=0", "--group=0", "--numeric-owner", "-C", stage, "."])


def image_pins(spec: ImageSpec, repo: Path = REPO_ROOT) -> list[str] | None:
    """The pins of requirements.txt whose installed distributions ``spec``'s image gets; None: no Python deps."""
    if spec.requirements_include is None and not spec.requirements_exclude:
        return None
    lines = (repo / "requirements.txt").read_text().splitlines()
    return filter_requirements(lines, spec.requirements_include, spec.requirements_exclude)


def venv_files(spec: ImageSpec, pins: Sequence[str]) -> VenvFiles:
    """The app venv's files for ``pins`` as ``spec``'s image takes them (dropped distributions, pruned, stripped,
    only the bytecode its Bento's serving loads)."""
    bento = spec.bytecode_of
    served = (lambda: served_bytecode(bento)) if bento else None
    return VenvFiles(pins, drop=spec.drop_distributions, prune=spec.prune, strip=spec.strip, served_bytecode=served)


# Run by the app venv's python: what a `bentoml serve` of the Bento imports (its service module from the Bento, the
# model's kind through the predictor, BentoML's command, server and worker modules); prints each module's bytecode.
_SERVED_MODULES = """
import importlib, os, sys
import bentoml
bento = bentoml.bentos.get(sys.argv[1])
os.environ["DKT_MODEL_TAG"] = model = str(bento.info.models[0].tag)
bentoml.load(sys.argv[1])
from dkt.predictor import load_predictor
load_predictor(bentoml.models.get(model).path, device="cpu")
for name in ("bentoml_cli.cli", "bentoml.serving", "_bentoml_impl.server.app", "_bentoml_impl.worker.service"):
    importlib.import_module(name)
print("\\n".join(c for m in list(sys.modules.values()) if isinstance(c := getattr(m, "__cached__", None), str)))
"""


def served_bytecode(bento_tag: str) -> set[Path]:
    """The bytecode files (resolved) of the app venv that serving the Bento loads: a child of the app venv's python
    imports what `bentoml serve` does (``_SERVED_MODULES``); the image takes only these of the 200 MB pip compiled."""
    with tempfile.TemporaryDirectory(prefix="dkt-served-") as work:  # the Bento's code, not the checkout's
        out = run([sys.executable, "-c", _SERVED_MODULES, bento_tag], cwd=Path(work))
    return {Path(line).resolve() for line in out.splitlines() if line.endswith(".pyc")}


def _is_elf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"\x7fELF"


def bento_packages(bento_tag: str) -> list[str]:
    """The names of the python packages a Bento in the store ($BENTOML_HOME) declares: its
    ``env/python/requirements.txt``, the file BentoML's own generated Dockerfile would install."""
    import bentoml

    path = Path(bentoml.bentos.get(bento_tag).path) / "env" / "python" / "requirements.txt"
    return requirement_names(path.read_text().splitlines())


def runtime_for_bento(spec: ImageSpec, bento_tag: str) -> ImageSpec:
    """The runtime image ``spec`` holding exactly the packages the Bento declares (packer.py picks them per model
    kind: the slim set for the torch kinds), less the ones ``spec`` excludes: one runtime image per package set,
    tagged by content, so every Bento of the same set shares it."""
    excluded = {n.lower() for n in spec.requirements_exclude}
    wanted = [n for n in bento_packages(bento_tag) if n.lower() not in excluded]
    return spec.model_copy(
        update={"requirements_include": wanted, "requirements_exclude": [], "bytecode_of": bento_tag}
    )


def assemble_context(
    spec: ImageSpec,
    ctx: Path,
    *,
    repo: Path = REPO_ROOT,
    questions: Path | None = None,
    venv: VenvFiles | None = None,
) -> Path:
    """Fill ``ctx`` with what the Dockerfile of ``spec`` copies; ValueError naming anything missing.

    The Python distributions (venv.tar) go in only when ``venv`` is given (``build_hashed_image`` gives them once it
    knows the image must be built); the pins always do: `cat /opt/venv/requirements.txt` says what an image holds.
    """
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
    for name in spec.binaries:
        if (found := shutil.which(name)) is None:
            from pipeline.prometheus import INSTALL_HINT  # the one executable an image takes from the host so far

            hint = f" ({INSTALL_HINT})" if name == "prometheus" else ""
            where = f"image {spec.name} is not on PATH"
            raise ValueError(f"{name}: executable named in config/swarm.json for {where}{hint}")
        _copy_tree(Path(found).resolve(), ctx / "bin" / name)
    if (pins := image_pins(spec, repo)) is not None:
        (ctx / "requirements.txt").write_text("\n".join(pins) + "\n")
        if venv is not None:
            venv.write_tar(ctx / "venv.tar")
    if spec.questions:
        if questions is None or not questions.is_file():
            raise ValueError(
                f"{questions}: question bank for image {spec.name} not found "
                "(set DKT_QUESTIONS, or write one with `dkt simulate --out data/sim`)"
            )
        shutil.copy2(questions, ctx / "src" / "questions.csv")
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


def containerize(bento_tag: str, tags: Sequence[str], build_args: dict[str, str]) -> None:
    """`bentoml containerize` of a Bento in the app venv's store ($BENTOML_HOME): BentoML's generated Dockerfile
    (bentofile.yaml's docker.dockerfile_template, docker/bento.Dockerfile.j2), the Bento and its model the context."""
    bentoml = Path(sys.executable).with_name("bentoml")
    cmd = [str(bentoml)] if bentoml.is_file() else [sys.executable, "-m", "bentoml"]
    cmd += ["containerize", bento_tag]
    for tag in tags:
        cmd += ["-t", tag]
    for key, value in build_args.items():
        cmd += ["--opt", f"build-arg={key}={value}"]
    with tempfile.TemporaryDirectory(prefix="dkt-containerize-") as work:
        # BentoML copies the Bento into a temporary build context and refuses to read the template from a folder
        # outside its working directory: the one folder is both. The legacy builder, as for every other image.
        env = {**os.environ, "TMPDIR": work, "DOCKER_BUILDKIT": "0"}
        run(cmd, cwd=Path(work), env=env, tail=60)


def build_hashed_image(
    spec: ImageSpec,
    registry: str,
    build_args: dict[str, str],
    *,
    repo: Path = REPO_ROOT,
    questions: Path | None = None,
    prefix: str = "c",
) -> tuple[str, bool]:
    """Build (unless present) and push an image tagged by its context hash. Returns (ref, built)."""
    pins = image_pins(spec, repo)
    venv = venv_files(spec, pins) if pins is not None else None
    with tempfile.TemporaryDirectory(prefix=f"dkt-{spec.name}-") as tmp:
        ctx = assemble_context(spec, Path(tmp), repo=repo, questions=questions)
        content = context_hash(ctx) + (venv.digest if venv else "") + json.dumps(build_args, sort_keys=True)
        ref = f"{registry}/{spec.name}:{prefix}-{hashlib.sha256(content.encode()).hexdigest()[:12]}"
        built = not image_exists(ref)
        if built:
            if venv is not None:
                venv.write_tar(ctx / "venv.tar")
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
        t0 = time.monotonic()
        ref, built = build_hashed_image(spec, registry, build_args, prefix=prefix, **context)
        progress(
            f"image {spec.name}: {ref} ({'built' if built else 'unchanged'}, pushed; {time.monotonic() - t0:.0f} s)"
        )
        return ref, built

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {key: pool.submit(one, key) for key in jobs}
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return {key: f.result() for key, f in futures.items()}


def build_inference_image(spec: ImageSpec, registry: str, runtime_ref: str, bento_tag: str, model_version: str) -> str:
    """Build and push the inference image of one Bento (its code and model); tagged with the model version and
    `latest`. The Bento's generated Dockerfile, on the runtime image (``runtime_ref``: the distributions).

    A model version is never overwritten, so an image already tagged with it is reused: redeploying
    the same version (to scale, say) must not change the image digest, or Swarm would roll every replica.
    """
    name = f"{registry}/{spec.name}"
    ref = f"{name}:{tag_for(model_version)}"
    if image_exists(ref):
        run(["docker", "tag", ref, f"{name}:latest"])
    else:
        containerize(bento_tag, [ref, f"{name}:latest"], {"RUNTIME_IMAGE": runtime_ref, "MODEL_VERSION": model_version})
    # Pushed either way: the registry may be new (another host, a wiped volume); a no-op when it has it.
    docker_push(ref)
    docker_push(f"{name}:latest")
    return ref
