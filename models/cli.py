"""Versioned models in the store (local folder or S3; see docs/pipeline.md).

    dkt models list
    dkt models push BUNDLE_DIR [--promote]     # version = the bundle's model_version
    dkt models pull production --dest DIR      # or latest, or a version
    dkt models promote VERSION                 # point production at a stored version
    dkt models rollback                        # production back to the previous one
    dkt models shadow VERSION | --clear        # the model served beside production, logged, never shown
    dkt models promote-shadow [--client-db F] [--min-answers N]   # gate (b): promote it on live answers
    dkt models promotions [--json]             # every promotion decision, newest first, with its figures
    dkt models quality [--by tag|day] [--model-version V] [--explored-only] [--json] [--db F]   # online quality
    dkt models pull-data|train|evaluate|push-candidate|promote-if-better --run-id ID   (retrain DAG steps)

Exit codes: 0 done, 2 bad input or store error, 99 candidate not promoted or nothing to decide yet (a skip for
Airflow). The promotion gates: docs/pipeline.md#promotion-gates.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkt.bundle import BundleError, lineage, read_meta
from dkt.cli import EXIT_SKIP, Parser, add_dag_steps
from dkt.quality import BY
from pipeline import promotions, retrain
from pipeline.blobs import StoreError
from pipeline.settings import SettingsError
from pipeline.store import VersionedStore, VersionError
from pipeline.workdir import work_dir

if TYPE_CHECKING:
    import pandas as pd

FLOW = "retrain_and_push"
DAG_STEPS = ("pull-data", "train", "evaluate", "push-candidate", "promote-if-better")  # retrain_and_push_dag's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="dkt models", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list stored model versions with their test AUC")
    push = sub.add_parser("push", help="push a model bundle folder as a new version; moves latest")
    push.add_argument("bundle", type=Path)
    push.add_argument("--promote", action="store_true", help="also point production at it")
    pull = sub.add_parser("pull", help="download a version (or latest / production) and check its hashes")
    pull.add_argument("ref", nargs="?", default="production")
    pull.add_argument("--dest", type=Path, required=True)
    promote = sub.add_parser("promote", help="point production at a stored version")
    promote.add_argument("version")
    sub.add_parser("rollback", help="point production back at the version before it")
    shadow = sub.add_parser("shadow", help="set or clear models/shadow: the model scored beside production")
    shadow.add_argument("version", nargs="?", help="a stored version (or latest)")
    shadow.add_argument("--clear", action="store_true", help="no shadow model any more")
    gate = sub.add_parser(
        "promote-shadow",
        help="promote the shadow model when the answers both models scored show it is not worse",
        description="Reads the client's prediction log, takes the explored answers (DKT_EXPLORE_RATE: questions"
        " drawn at random, not chosen by production) production and the shadow both scored,"
        " and promotes the shadow when the upper bound of the paired bootstrap 95% interval of production's AUC"
        " minus the shadow's is at most the tolerance (docs/pipeline.md#promotion-gates). Exit 99: waiting for"
        " answers, refused, or no shadow.",
    )
    gate.add_argument("--client-db", type=Path, help="the client's answer store (default $DKT_CLIENT_DB)")
    gate.add_argument(
        "--min-answers", type=int, help="explored answers both scored before deciding ($DKT_SHADOW_MIN_ANSWERS)"
    )
    gate.add_argument("--tolerance", type=float, help="non-inferiority margin (default $DKT_PROMOTE_TOLERANCE)")
    gate.add_argument("--run-id", help="the Airflow run (promote_shadow_dag), kept in the figures as run_id")
    history = sub.add_parser("promotions", help="the promotion history, newest first, with the deciding figures")
    history.add_argument("--json", action="store_true", help="the entries as JSON")
    quality = sub.add_parser(
        "quality",
        help="online quality per model version from the client's prediction log (docs/monitoring.md)",
        description="AUC, log loss, accuracy, ECE and n of each model version's logged predictions against the"
        " answers that followed, with bootstrap 95% intervals; overall, or per KnowledgeTag or day (UTC).",
    )
    quality.add_argument("--db", type=Path, help="the client's answer store (default $DKT_CLIENT_DB)")
    quality.add_argument("--model-version", help="only this model version")
    quality.add_argument("--by", choices=BY, help="one row per model version and KnowledgeTag, or per day")
    quality.add_argument("--json", action="store_true", help="JSON (with the reliability curves) instead of a table")
    quality.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (0: no intervals)")
    quality.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    quality.add_argument(
        "--explored-only",
        action="store_true",
        help="only answers to explored questions (drawn at random, DKT_EXPLORE_RATE): the others were chosen near"
        " the target difficulty by production, which squeezes its probabilities and its AUC (docs/monitoring.md)",
    )
    steps = add_dag_steps(sub, "retrain_and_push_dag", DAG_STEPS)
    train = steps["train"]
    train.add_argument("--config", type=Path, help="train this one experiment config (no choice among candidates)")
    train.add_argument("--epochs", type=int, help="maximum epochs (default $DKT_TRAIN_EPOCHS or the config's)")
    train.add_argument(
        "--candidates", help="model kinds to train and choose from, comma-separated (default $DKT_TRAIN_CANDIDATES)"
    )
    steps["promote-if-better"].add_argument(
        "--tolerance", type=float, help="allowed AUC drop (default $DKT_PROMOTE_TOLERANCE or 0.005)"
    )
    return p.parse_args(argv)


def list_models(store: VersionedStore) -> int:
    """Stored versions, oldest first, with lineage and marks: production, latest, shadow, and serving (what the live
    service's /metadata reports, at the URL the last deploy recorded). A corrupt manifest is reported, exit 2."""
    from pipeline.deploy_served import SERVING_STATE, served_now

    prod = store.pointed("models", "production")
    latest = store.pointed("models", "latest")
    shadow = store.pointed("models", "shadow")
    serving_doc = store.get_state(SERVING_STATE) or {}
    url = serving_doc.get("metadata_url")
    serving = served_now(str(url), timeout=3) if url else None
    recorded = serving_doc.get("model_version")
    errors: list[str] = []
    versions = store.versions("models", errors)
    for m in versions:
        pointers = (("production", prod), ("latest", latest), ("shadow", shadow), ("serving", serving))
        marks = [n for n, v in pointers if v == m["version"]]
        if serving is None and url and recorded == m["version"]:
            marks.append(f"serving at the last deploy ({url} does not answer now)")
        auc = m.get("metrics", {}).get("test_auc")
        auc_s = f"{auc:.4f}" if isinstance(auc, float) else "?"
        code = m.get("code_commit") or m.get("code_version")
        config = m.get("config_hash")
        tail = f"  <- {', '.join(marks)}" if marks else ""
        print(
            f"{m['version']}  model={m.get('model')}  test_auc={auc_s}  data={m.get('data_version')}"
            f"  code={str(code)[:12] if code else None}  seed={m.get('seed')}"
            f"  config={str(config).removeprefix('sha256:')[:12] if config else None}  created={m['created_at']}{tail}"
        )
    if serving and serving not in {m["version"] for m in versions}:
        print(f"serving: {serving} ({url}), which is not a stored version")
    if serving and prod and serving != prod:
        print(f"note: production names {prod} but {url} serves {serving} (a deploy is pending or failed)",
              file=sys.stderr)  # fmt: skip
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 2 if errors else 0


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def read_prediction_log(path: Path | None, option: str) -> tuple[Path, pd.DataFrame]:
    """The client's scored predictions (``client.db.scored_predictions``), read-only: no file is created, no
    schema migrated. ``path`` None: $DKT_CLIENT_DB. ``ValueError`` naming the file when it cannot be read."""
    import sqlite3

    from client.db import scored_predictions
    from dkt.settings import ClientSettings, load

    path = path or Path(load(ClientSettings).client_db)
    if not path.is_file():
        raise ValueError(f"{path}: no such client database ({option} or DKT_CLIENT_DB)")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            return path, scored_predictions(conn)
    except sqlite3.DatabaseError as exc:  # not SQLite, or a store from before the log (schema < 3)
        raise ValueError(f"{path}: cannot read the prediction log: {exc}") from None


def quality_report(args: argparse.Namespace) -> int:
    """Read the prediction log and print the quality."""
    from dkt.quality import quality_table

    if args.n_boot < 0:
        raise ValueError(f"--n-boot must be >= 0, not {args.n_boot}")
    path, scored = read_prediction_log(args.db, "--db")
    if args.model_version is not None:
        known = sorted(scored["model_version"].unique())
        if args.model_version not in known:
            raise ValueError(f"{path}: no scored predictions of model version {args.model_version!r}"
                             f" (logged: {', '.join(known) or 'none'})")  # fmt: skip
        scored = scored[scored["model_version"] == args.model_version]
    if args.explored_only:
        scored = scored[scored["explored"].astype(bool)]
    rows = quality_table(scored, by=args.by, n_boot=args.n_boot, seed=args.seed)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    key = {"tag": "KnowledgeTag", "day": "day", None: None}[args.by]
    head = ["model_version", *([key] if key else []), "n", "auc", "logloss", "accuracy", "ece"]
    table = [
        [str(r["model_version"]), *([str(r[key])] if key else []), str(r["n"]),
         *(_fmt(r[m], r["ci"].get(m)) for m in ("auc", "logloss", "accuracy", "ece"))]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *table, strict=True)]
    for line in [head, *table]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    if not rows:
        print(f"(no scored predictions in {path})", file=sys.stderr)
    return 0


def promote_shadow(args: argparse.Namespace, store: VersionedStore) -> int:
    """Gate (b); prints the figures (the Airflow task log) and the outcome. 0: promoted; 99: anything else."""
    from dkt.settings import TrainingSettings, load

    settings = load(TrainingSettings)
    min_answers = args.min_answers if args.min_answers is not None else settings.shadow_min_answers
    if min_answers < 1:
        raise ValueError(f"--min-answers must be at least 1, not {min_answers}")
    tolerance = args.tolerance if args.tolerance is not None else settings.promote_tolerance
    _, scored = read_prediction_log(args.client_db, "--client-db")
    out = promotions.promote_shadow(store, scored, min_answers, tolerance, settings.gate_bootstrap, args.run_id)
    if out.figures is not None:
        print(f"promote-shadow: {promotions.describe(out.figures)}", file=sys.stderr)
    if out.status == "promoted":
        print(json.dumps({"promoted": store.pointed("models", "production"), "reason": out.message,
                          "figures": out.figures}))  # fmt: skip
        return 0
    print(f"skip: {'not promoted: ' if out.status == 'refused' else ''}{out.message}", file=sys.stderr)
    return EXIT_SKIP


def print_history(store: VersionedStore, as_json: bool) -> int:
    entries = promotions.history(store)
    if as_json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        f = e["figures"]
        ci = f["diff_ci95"]
        span = f" ci95=[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
        diff = f" diff={f['diff']:+.4f}" if f["diff"] is not None else ""
        print(f"{e['at']}  {e['gate']:<7}  {'promoted' if e['promoted'] else 'refused ':<8}  {e['candidate']}"
              f" (production {e['production']})  n={f['n']}{diff}{span}  {e['reason']}")  # fmt: skip
    if not entries:
        print("(no promotion recorded yet)", file=sys.stderr)
    return 0


def manual_entry(store: VersionedStore, candidate: str, production: str | None, reason: str) -> dict[str, Any]:
    """A person's move of production: the history keeps it beside the gates', with the stored test AUCs."""

    def test_auc(version: str | None) -> float | None:
        auc = store.manifest("models", version).get("metrics", {}).get("test_auc") if version else None
        return float(auc) if isinstance(auc, int | float) else None

    c, p = test_auc(candidate), test_auc(production)
    figures = {"n": 0, "candidate_auc": c, "production_auc": p, "diff": p - c if c is not None and p is not None
               else None, "diff_ci95": None, "min_answers": 0, "set": "stored test AUCs (no gate)"}  # fmt: skip
    return promotions.entry("manual", candidate, production, True, reason, figures)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "quality":  # reads the client's store, not the model store
        try:
            return quality_report(args)
        except (ValueError, OSError) as exc:  # SettingsError is a ValueError
            print(f"error: dkt models quality: {exc}", file=sys.stderr)
            return 2
    try:
        store = VersionedStore.from_env()
        if args.cmd == "list":
            return list_models(store)
        if args.cmd == "push":
            meta = read_meta(args.bundle)
            if args.promote:  # production only ever names a model that loads and scores (dkt.verify)
                from dkt.verify import verify_bundle

                verify_bundle(args.bundle)
            res = store.push(
                "models",
                args.bundle,
                meta["model_version"],
                parent=store.pointed("models", "production"),
                metrics=meta.get("metrics", {}),
                extra={"model": meta["model"], **lineage(meta)},
                move_pointers=("latest", "production") if args.promote else ("latest",),
            )
            print(json.dumps({"version": res.version, "promoted": args.promote}))
            return 0
        if args.cmd == "pull":
            m = store.pull("models", args.ref, args.dest)
            print(json.dumps({"version": m["version"], "dest": str(args.dest)}))
            return 0
        if args.cmd == "promote":
            promotions.verify_stored(store, args.version)
            previous = store.pointed("models", "production")
            doc = store.set_pointer("models", "production", args.version, reason="manual promote")
            promotions.record(store, manual_entry(store, args.version, previous, "manual promote"))
            print(json.dumps({"production": doc["version"], "previous": doc["history"][:1]}))
            return 0
        if args.cmd == "rollback":
            previous = store.pointed("models", "production")
            doc = store.rollback("models", "production")
            promotions.record(store, manual_entry(store, doc["version"], previous, doc["reason"]))
            print(json.dumps({"production": doc["version"], "reason": doc["reason"]}))
            return 0
        if args.cmd == "shadow":
            if args.clear == (args.version is not None):
                raise ValueError("give a VERSION to shadow, or --clear (not both)")
            if args.clear:
                print(json.dumps({"shadow": None, "cleared": store.clear_pointer("models", "shadow")}))
                return 0
            version = store.resolve("models", args.version)
            promotions.verify_stored(store, version)  # the deploy must be able to serve it beside production
            doc = store.set_pointer("models", "shadow", version, reason="dkt models shadow")
            print(json.dumps({"shadow": doc["version"], "production": store.pointed("models", "production")}))
            return 0
        if args.cmd == "promote-shadow":
            return promote_shadow(args, store)
        if args.cmd == "promotions":
            return print_history(store, args.json)
        work = work_dir(FLOW, args.run_id)
        work.mkdir(parents=True, exist_ok=True)
        if args.cmd == "pull-data":
            doc = retrain.pull_data(work, store)
        elif args.cmd == "train":
            doc = retrain.train(work, args.config, args.epochs, candidates=args.candidates)
        elif args.cmd == "evaluate":
            doc = retrain.evaluate(work, store)
        elif args.cmd == "push-candidate":
            doc = retrain.push_model(work, store)
        else:
            doc = retrain.promote_if_better(work, store, args.tolerance)
        print(json.dumps({k: v for k, v in doc.items() if k != "files"}, default=str))
        return 0
    except retrain.NotPromoted as exc:
        print(f"skip: not promoted: {exc}", file=sys.stderr)
        return EXIT_SKIP
    except (BundleError, StoreError, VersionError, SettingsError, OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
