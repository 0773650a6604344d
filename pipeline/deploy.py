"""The steps of ``update_inference_server_dag``: pull the production model -> pack -> deploy -> verify.

    dkt deploy pull-model|pack|deploy|verify --run-id ID    (one DAG step each)
    dkt deploy stop                                         (stop the local servers)

Each step reads and writes files in the run's work folder (``pipeline.workdir``). The deploy mode
(``DKT_DEPLOY_MODE``) picks how the packed model goes live: ``local`` is a blue/green switch on this
machine (``pipeline.deploy_local``: a failed verify switches back), or with ``DKT_DEPLOY_STRATEGY=swap`` (the
default) and a server already running, a swap of the bundle into it: pack skips packer.py (no Bento: the server
loads the bundle folder), deploy rewrites the served-model file and waits for ``/metadata``, a failed verify
swaps back; ``swarm`` hands the packed model to
``dkt swarm deploy`` (a rolling update that Swarm rolls back on failure). Whatever fails,
the store is then made to name what is served (``pipeline.deploy_served``).

A shadow model (the store pointer ``models/shadow``, set by ``dkt models shadow``) rides along in local
mode: pull-model pulls it too, pack imports it into the BentoML store, deploy starts the new server with
``DKT_SHADOW_MODEL_TAG`` and verify checks that ``/metadata`` names both. Swarm mode serves production only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from dkt.bundle import write_json
from dkt.settings import REPO_ROOT, PipelineSettings, SettingsError, load
from pipeline.blobs import StoreError
from pipeline.data_update import read_json
from pipeline.deploy_local import (
    DeployError,
    Shadow,
    app_env,
    current_url,
    restore_previous,
    served_doc,
    stop_local,
    swap_local,
    swapping,
    switch_local,
    wait_metadata,
)
from pipeline.deploy_served import metadata_url, production_back_on_served, production_on_verified
from pipeline.store import VersionedStore, VersionError
from pipeline.timings import Laps, record


# -- steps ----------------------------------------------------------------------------------
def shadow_version(store: VersionedStore) -> str | None:
    """The version the ``models/shadow`` pointer names; None when there is none or it was cleared."""
    ptr = store.pointer("models", "shadow")
    return str(ptr["version"]) if ptr and ptr.get("version") else None


def pull_model(work: Path, store: VersionedStore) -> dict[str, Any]:
    laps = Laps()
    m = store.pull("models", "production", work / "model")
    doc: dict[str, Any] = {"model_version": m["version"]}
    shadow = shadow_version(store)
    if shadow == m["version"]:
        print(f"pull-model: the shadow pointer names production ({shadow}): no shadow to serve", file=sys.stderr)
    elif shadow is not None:
        doc["shadow_version"] = store.pull("models", shadow, work / "shadow")["version"]
    write_json(work / "pull.json", doc)  # which version this run deploys, for the steps after it
    record(work, "pull_model", laps)
    return doc


def pack(work: Path) -> dict[str, Any]:
    """Import the bundle into the BentoML store and build a bento with packer.py; a shadow is only imported."""
    meta = json.loads((work / "model" / "bundle.json").read_text())
    laps = Laps()
    shadow = read_json(work / "pull.json").get("shadow_version") if (work / "pull.json").is_file() else None
    if swapping():
        # The running server loads the bundle folder itself: no model store entry, no Bento (`dkt pack` builds one
        # by hand; swarm mode and a first start here still pack).
        print(f"pack: swap: the server at {current_url()} takes {meta['model_version']} from its bundle folder;"
              " packer.py skipped (DKT_DEPLOY_STRATEGY=swap)", file=sys.stderr)  # fmt: skip
        doc = {"model_version": str(meta["model_version"]), "swap": True}
        write_json(work / "pack.json", doc | ({"shadow_version": str(shadow)} if shadow is not None else {}))
        record(work, "pack", laps)
        return doc
    with laps.lap("packer.py"):
        packed = run_packer(work / "model", bento=True)
    doc: dict[str, Any] = {**packed, "model_version": str(meta["model_version"])}
    if shadow is not None:
        doc["shadow_model_tag"] = run_packer(work / "shadow", bento=False)["model_tag"]
        doc["shadow_version"] = str(shadow)
    write_json(work / "pack.json", doc)
    record(work, "pack", laps)
    return doc


def run_packer(model_dir: Path, bento: bool) -> dict[str, str]:
    """packer.py on ``model_dir``: its model tag, and its bento tag when ``bento`` (else ``--no-bento``)."""
    argv = [sys.executable, str(REPO_ROOT / "packer.py"), "--model-dir", str(model_dir)]
    argv += [] if bento else ["--no-bento"]
    print("pack: " + " ".join(argv), file=sys.stderr)
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=app_env(), stdout=subprocess.PIPE, text=True, timeout=900)
    if proc.returncode != 0:
        raise DeployError(f"packer.py failed with exit {proc.returncode}")
    return parse_pack_output(proc.stdout, bento)


def parse_pack_output(stdout: str, bento: bool = True) -> dict[str, str]:
    """packer.py's contract: the last two lines are ``model: <tag>`` and ``bento: <tag>`` (with ``--no-bento``,
    the last line is ``model: <tag>``)."""
    want = ("model", "bento") if bento else ("model",)
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()][-len(want) :]
    found = dict(m.groups() for ln in lines if (m := re.match(r"^(model|bento):\s*(\S+)$", ln)))
    if tuple(found) != want:
        ends = " and ".join(f"'{k}: TAG'" for k in want)
        raise DeployError(f"packer.py output does not end with {ends} line{'s' if bento else ''}: {lines!r}")
    return {f"{k}_tag": v for k, v in found.items()}


def deploy(work: Path, replicas: int | None = None) -> dict[str, Any]:
    """Roll the packed model out. ``replicas`` (swarm only) also scales inference; None keeps the count."""
    packed = read_json(work / "pack.json")
    laps = Laps()
    if replicas is not None and replicas < 1:
        raise DeployError(f"replicas must be at least 1, got {replicas}")
    if load(PipelineSettings).deploy_mode == "swarm":
        # pipeline.swarm's documented CLI: builds the images from the model the pack step put in
        # BENTOML_HOME and rolls the stack over, one replica at a time (start-first); a failing new
        # image is rolled back by Swarm (exit 1).
        argv = [sys.executable, "-m", "pipeline.swarm", "deploy", "--model-tag", packed["model_tag"],
                "--expect-version", packed["model_version"]]  # fmt: skip
        if packed.get("shadow_version"):  # docs/monitoring.md: shadows are a local-mode feature for now
            print(f"deploy: swarm mode serves production only; shadow {packed['shadow_version']} is not deployed",
                  file=sys.stderr)  # fmt: skip
        if replicas is not None:
            argv += ["--replicas", str(replicas)]
        print("deploy: " + " ".join(argv), file=sys.stderr)
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=app_env(), stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise DeployError(f"swarm rollout failed (exit {proc.returncode}); the previous version keeps serving")
        lines = proc.stdout.strip().splitlines()
        doc = {"mode": "swarm", **packed, "result": json.loads(lines[-1]) if lines else {}}
    else:
        if replicas not in (None, 1):
            # One blue/green server is all local mode runs; say so rather than fail a model rollout over it.
            print(f"deploy: local mode runs one server; replicas={replicas} applies to swarm mode only",
                  file=sys.stderr)  # fmt: skip
        version = packed["model_version"]
        bundles = (work / "shadow", str(packed["shadow_version"])) if packed.get("shadow_version") else None
        if packed.get("swap"):
            doc = {"mode": "local", "strategy": "swap", **swap_local(work / "model", version, bundles, laps)}
        else:
            shadow = Shadow(packed["shadow_model_tag"], packed["shadow_version"]) if bundles else None
            # Swap strategy: the new server follows the served-model file, so the next model is swapped into it.
            strategy = load(PipelineSettings).deploy_strategy
            served = served_doc(work / "model", version, bundles) if strategy == "swap" else None
            doc = {"mode": "local", "strategy": strategy,
                   **switch_local(packed["model_tag"], version, shadow, laps, served=served)}  # fmt: skip
    write_json(work / "deploy.json", doc)
    record(work, "deploy", laps)
    return doc


def verify(work: Path) -> dict[str, Any]:
    """Check the live endpoint reports the new version; on failure switch back to the previous server."""
    packed = read_json(work / "pack.json")
    settings = load(PipelineSettings)
    if settings.deploy_mode == "swarm":
        # pipeline.swarm checked /metadata through the client path (--expect-version) before returning 0.
        return {"mode": "swarm", "model_version": packed["model_version"], **read_json(work / "deploy.json")}
    url = current_url()
    shadow = packed.get("shadow_version")
    laps = Laps()
    try:
        meta = wait_metadata(url, packed["model_version"], timeout=settings.verify_timeout, shadow=shadow)
    except DeployError:
        restored = restore_previous()  # local mode: switch back to the previous server
        what = packed["model_version"] + (f" with shadow {shadow}" if shadow else "")
        raise DeployError(f"{url} does not serve {what}; restored {restored}") from None
    doc = {"url": url, "model_version": meta.get("model_version"), "model": meta.get("model")}
    record(work, "verify", laps)
    return {**doc, "shadow_version": shadow} if shadow else doc


def deploying(work: Path) -> str | None:
    """The version this run deploys (recorded by pull-model), None before it was pulled."""
    for name in ("pack.json", "pull.json"):
        if (work / name).is_file():
            return str(read_json(work / name)["model_version"])
    return None


FLOW = "update_inference_server"
DAG_STEPS = ("pull-model", "pack", "deploy", "verify")  # update_inference_server_dag's, in order
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """``dkt deploy pull-model|pack|deploy|verify --run-id ID`` (the deploy DAG steps), or ``stop``."""
    from dkt.cli import Parser
    from pipeline.workdir import work_dir

    p = Parser(prog="dkt deploy", description=__doc__)
    p.add_argument("step", choices=[*DAG_STEPS, "stop"])
    p.add_argument("--run-id", help="the DAG run id; names the work folder (all steps but stop)")
    p.add_argument("--replicas", type=int, help="deploy only, swarm mode: inference replicas (default: keep)")
    args = p.parse_args(argv)
    try:
        load(PipelineSettings)  # a bad value stops every step here, with one line naming the variable
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.step == "stop":
        stop_local()
        return 0
    if not args.run_id:
        p.error("--run-id is required")
    work = work_dir(FLOW, args.run_id)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.step == "pull-model":
            doc = pull_model(work, VersionedStore.from_env())
        elif args.step == "pack":
            doc = pack(work)
        elif args.step == "deploy":
            doc = deploy(work, args.replicas)
        else:
            doc = verify(work)
            doc["production"] = production_on_verified(VersionedStore.from_env(), doc["model_version"], metadata_url())
    except (DeployError, StoreError, VersionError, SettingsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        failed = deploying(work)
        if isinstance(exc, DeployError) and failed:
            try:
                print(f"deploy: {production_back_on_served(VersionedStore.from_env(), failed, str(exc))}",
                      file=sys.stderr)  # fmt: skip
            except (StoreError, ValueError, OSError) as exc2:
                print(f"error: could not put production back on what is served: {exc2}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(doc, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
