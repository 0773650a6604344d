"""Put a model bundle into the BentoML model store and build the serving Bento around it.

    dkt pack --model-dir artifacts/lstm       (python packer.py ... is the same)
    dkt pack --model-tag dkt-model:v2         (a model already in the store: only its Bento)

Prints ``model: <model tag>`` and, on the last line, ``bento: <bento tag>``.
The store is ``$BENTOML_HOME`` (BentoML's default: ~/bentoml). The Bento holds
the code, the model and its settings, so ``bentoml serve <bento tag>`` runs
without any network access.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from dkt.bundle import BundleError, read_meta
from dkt.cli import Parser
from dkt.settings import ServiceSettings, load_or_exit
from pipeline.requirements import filter_requirements, requirement_names

ROOT = Path(__file__).resolve().parent
LABEL_VALUE = re.compile(r"[^a-zA-Z0-9._-]+")
# The inference-only packages (names; their pins are requirements.txt's): what every Bento needs.
SERVE_REQUIREMENTS = ROOT / "requirements-serve.txt"
# What a model kind imports beyond them (dkt/models/<kind>.py; a test checks every kind's imports against this).
# A Bento declares only what its kinds need, so the swarm builds the slim image for every other kind and the full
# one for these (docs/docker.md#which-kinds-get-which-image).
KIND_EXTRAS: dict[str, tuple[str, ...]] = {
    "bert": ("transformers",),
    "lgbm": ("lightgbm",),
    "ensemble": ("scipy",),
}


class PackError(ValueError):
    pass


def tag_version(model_version: str) -> str:
    """BentoML tag versions are lowercase [a-z0-9._-]; model versions may hold anything else."""
    version = LABEL_VALUE.sub("-", model_version.lower()).strip("-._")
    if not version:
        raise PackError(f"model_version {model_version!r} has no usable characters for a tag")
    return version[:63]


def label(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return LABEL_VALUE.sub("-", text).strip("-._")[:63] or "none"


def model_kinds(bundle: Path) -> set[str]:
    """The model kinds a bundle loads: its own, and for an ensemble every member's (dkt/models/ensemble.py)."""
    from dkt.models.ensemble import ENSEMBLE_FILE

    kinds = {str(read_meta(bundle)["model"])}
    if (bundle / ENSEMBLE_FILE).is_file():
        for member in json.loads((bundle / ENSEMBLE_FILE).read_text())["members"]:
            kinds |= model_kinds(bundle / member["dir"])
    return kinds


def serve_packages(kinds: set[str], requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """The pinned packages a Bento of ``kinds`` declares: requirements-serve.txt's and the kinds' extras, each with
    its requirements.txt pin (PackError naming a package requirements.txt does not pin)."""
    names = requirement_names(SERVE_REQUIREMENTS.read_text().splitlines())
    names += [extra for kind in sorted(kinds) for extra in KIND_EXTRAS.get(kind, ())]
    try:
        return filter_requirements(requirements.read_text().splitlines(), names, [])
    except ValueError as e:
        raise PackError(f"{requirements}: {e} ({SERVE_REQUIREMENTS.name} or packer.KIND_EXTRAS names it)") from None


def check_bundle(model_dir: Path) -> dict[str, Any]:
    """Read the bundle and load it once: a bundle the service cannot load is rejected here, not at serve time."""
    from dkt.predictor import load_predictor

    try:
        meta = read_meta(model_dir)
        load_predictor(model_dir, device="cpu")
    except BundleError:
        raise
    except Exception as e:  # any loading failure means a broken bundle; say which folder
        raise PackError(f"{model_dir}: cannot load the model bundle: {e}") from e
    return meta


def labels_of(meta: dict[str, Any]) -> dict[str, str]:
    metrics = meta.get("metrics") or {}
    out = {
        "model": label(meta["model"]),
        "model_version": label(meta["model_version"]),
        "data_version": label(meta.get("data_version", "unknown")),
    }
    for key in ("test_auc", "test_acc", "test_auc_last"):
        if isinstance(metrics.get(key), int | float):
            out[key] = label(float(metrics[key]))
    return out


def save_model(model_dir: Path, name: str, meta: dict[str, Any]) -> str:
    """Copy the bundle into the model store; re-packing the same model version reuses the stored one."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = f"{name}:{tag_version(str(meta['model_version']))}"
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata.get("data_fingerprint") != meta.get("data_fingerprint"):
            raise PackError(f"{tag} is already in the model store with other training data; give a new model version")
        return str(existing.tag)
    metadata = {k: meta.get(k) for k in ("model", "kind", "model_version", "data_version", "code_version")}
    metadata.update({"metrics": meta.get("metrics", {}), "data_fingerprint": meta.get("data_fingerprint")})
    with bentoml.models.create(tag, labels=labels_of(meta), metadata=metadata) as model:
        shutil.copytree(model_dir, model.path, dirs_exist_ok=True)
    return str(model.tag)


def stored_model(tag: str) -> str:
    """The full tag of a model already in the store; PackError when it is not there."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return str(bentoml.models.get(tag).tag)
    except BentoMLException as e:  # NotFound, or a tag BentoML cannot parse
        raise PackError(f"--model-tag {tag}: no such model in the store ($BENTOML_HOME): {e}") from e


def bento_tag_for(model_tag: str, bentofile: Path = ROOT / "bentofile.yaml") -> str:
    """The tag of the Bento ``main`` builds around ``model_tag``: the build file's name, the model's version (what
    the local deploy serves, pipeline/deploy_local.py)."""
    spec = yaml.safe_load(bentofile.read_text()) or {}
    if not spec.get("name"):
        raise PackError(f"{bentofile}: no `name`: the Bento's tag would not follow from the model's")
    return f"{spec['name']}:{model_tag.split(':', 1)[1]}"


def build_bento(model_tag: str, bentofile: Path) -> str:
    """Build the Bento described by ``bentofile``, pinned to ``model_tag``; an existing one is reused.

    Its version is the model's, and a model version is never overwritten: re-packing the version that is
    deployed (a redeploy to scale, a retried DAG run) must neither fail nor replace what serves it.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    spec = yaml.safe_load(bentofile.read_text()) or {}
    if spec.get("name"):
        try:
            return str(bentoml.bentos.get(bento_tag_for(model_tag, bentofile)).tag)
        except NotFound:
            pass
    # The build file pinned to this model: DKT_MODEL_TAG in the Bento's env (what the service loads) and the model
    # in its `models` (what the Bento carries). Built through `bentoml.bentos.build_bentofile`, BentoML's public
    # API, from a copy of the file beside nothing else: its paths (include, requirements_txt) stay relative to
    # the build context, the repository.
    envs = [e for e in spec.get("envs", []) if e.get("name") != "DKT_MODEL_TAG"]
    spec.update(envs=[*envs, {"name": "DKT_MODEL_TAG", "value": model_tag}], models=[model_tag])
    # Its python packages: only what the model's kinds need (the image built from the Bento holds just these).
    python = {k: v for k, v in (spec.get("python") or {}).items() if k != "requirements_txt"}
    kinds = model_kinds(Path(bentoml.models.get(model_tag).path))
    spec["python"] = {**python, "packages": serve_packages(kinds, bentofile.parent / "requirements.txt")}
    # The service module reads DKT_MODEL_TAG at import: the build must resolve the same model.
    os.environ["DKT_MODEL_TAG"] = model_tag
    with tempfile.TemporaryDirectory(prefix="dkt-bentofile-") as tmp:
        pinned = Path(tmp) / "bentofile.yaml"
        pinned.write_text(yaml.safe_dump(spec, sort_keys=False))
        bento = bentoml.bentos.build_bentofile(
            str(pinned), version=model_tag.split(":", 1)[1], build_ctx=str(bentofile.parent)
        )
    return str(bento.tag)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="dkt pack", description=__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", type=Path, help="model bundle written by dkt train")
    src.add_argument("--model-tag", help="a model already in the store (NAME:VERSION): only build its Bento")
    ap.add_argument("--name", help="model name in the store (default: $DKT_MODEL_NAME, else dkt-model)")
    ap.add_argument("--bentofile", type=Path, default=ROOT / "bentofile.yaml", help="Bento build file")
    ap.add_argument("--no-bento", action="store_true", help="only put the model into the store")
    args = ap.parse_args(argv)
    args.name = args.name or load_or_exit(ServiceSettings).model_name
    try:
        if args.model_tag:
            model_tag = stored_model(args.model_tag)
        else:
            model_tag = save_model(args.model_dir, args.name, check_bundle(args.model_dir))
        print(f"model: {model_tag}", flush=True)
        if not args.no_bento:
            if not args.bentofile.is_file():
                raise PackError(f"{args.bentofile}: no such Bento build file")
            print(f"bento: {build_bento(model_tag, args.bentofile)}", flush=True)
    except (BundleError, PackError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
