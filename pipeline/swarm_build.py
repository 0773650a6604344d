"""The images a deploy rolls out: the model packed into the BentoML store, then the runtime, client, proxy,
Prometheus and inference images built (each skipped when unchanged) and pushed to the registry
(pipeline/swarm_images.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.deploy import parse_pack_output
from pipeline.deploy_local import DeployError
from pipeline.swarm_images import (
    REPO_ROOT,
    DockerError,
    build_hashed_images,
    build_inference_image,
    image_exists,
    run,
    runtime_for_bento,
)
from pipeline.swarm_settings import SwarmSettings
from pipeline.swarm_stack import Stack


def say(msg: str) -> None:
    print(f"[swarm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def resolve_model(model_dir: Path | None, model_tag: str | None) -> tuple[str, str, str]:
    """(bentoml model tag, model version, Bento tag). packer.py puts a bundle dir into the store, and builds (or
    reuses) the Bento around the model: the one artifact every replica's image is made from."""
    if model_tag:
        if ":" not in model_tag:
            raise ValueError(f"--model-tag {model_tag!r}: expected NAME:VERSION, e.g. dkt-model:v2")
        bundle_version = None
        source = ["--model-tag", model_tag]
    else:
        assert model_dir is not None
        meta_file = model_dir / "bundle.json"
        if not meta_file.is_file():
            raise ValueError(f"{model_dir}: not a model bundle (no bundle.json)")
        bundle_version = str(json.loads(meta_file.read_text())["model_version"])
        source = ["--model-dir", str(model_dir)]
    say(f"packing {model_dir or model_tag} with packer.py (model and Bento)")
    out = run([sys.executable, str(REPO_ROOT / "packer.py"), *source], cwd=REPO_ROOT)
    try:
        packed = parse_pack_output(out)
    except DeployError as exc:
        raise DockerError(str(exc)) from None
    model_tag = packed["model_tag"]
    return model_tag, bundle_version or model_tag.split(":", 1)[1], packed["bento_tag"]


def ensure_base_image(settings: SwarmSettings) -> None:
    if image_exists(settings.base_image) or not settings.base_image.startswith("local/"):
        return  # a public base (python:3.11-slim) is pulled by docker build itself
    say(f"building base image {settings.base_image} (from this host's Debian packages, else debootstrap)")
    env = {**os.environ, "DKT_BASE_IMAGE": settings.base_image}
    run([str(REPO_ROOT / "docker_manual" / "build_base_image.sh")], env=env)


def build(
    settings: SwarmSettings, model_dir: Path | None = None, model_tag: str | None = None, with_model: bool = True
) -> dict[str, Any]:
    """Build and push every image; returns their refs and timings."""
    stack = Stack(settings)
    t0 = time.monotonic()
    # The model first: a bad bundle fails in seconds, before any image is built.
    model = resolve_model(model_dir, model_tag) if with_model else None
    ensure_base_image(settings)
    base = {"BASE_IMAGE": settings.base_image}
    images: dict[str, Any] = {}
    prefixes = {"inference-runtime": "r", "client": "c", "proxy": "p", "prometheus": "m"}  # tag: m-<hash> (monitoring)
    jobs = {key: (stack.config.images[key], prefix) for key, prefix in prefixes.items()}
    if model is not None:  # the runtime holds the packages the Bento declares (slim for the torch kinds)
        jobs["inference-runtime"] = (runtime_for_bento(jobs["inference-runtime"][0], model[2]), "r")
    else:
        # A given inference image (`deploy --image`) holds its runtime already: the runtime is only the base of an
        # image built here. Without a Bento it would be the full, not the slim, one: a 1.6 GB build and push
        # (about 4 minutes on a shared host) that nothing deploys.
        del jobs["inference-runtime"]
    say(f"images {', '.join(spec.name for spec, _ in jobs.values())}: build (skipped when unchanged) and push")
    for key, (ref, _built) in build_hashed_images(
        jobs, settings.registry, base, progress=say, questions=settings.questions
    ).items():
        images[key] = ref
    result: dict[str, Any] = {"images": images}
    if model is not None:
        tag, version, bento = model
        say(f"image inference from the Bento {bento}: build and push")
        t_inference = time.monotonic()
        images["inference"] = build_inference_image(
            stack.config.images["inference"], settings.registry, images["inference-runtime"], bento, version
        )
        say(f"image inference: {images['inference']} ({time.monotonic() - t_inference:.0f} s)")
        result.update(model_tag=tag, model_version=version, bento_tag=bento)
    result["build_seconds"] = round(time.monotonic() - t0, 1)
    return result
