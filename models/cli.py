"""Versioned models in the store (local folder or S3; see docs/pipeline.md).

    dkt models list
    dkt models push BUNDLE_DIR [--promote]     # version = the bundle's model_version
    dkt models pull production --dest DIR      # or latest, or a version
    dkt models promote VERSION                 # point production at a stored version
    dkt models rollback                        # production back to the previous one
    dkt models quality [--by tag|day] [--model-version V] [--json] [--db F]   # online quality from the client's log
    dkt models pull-data|train|evaluate|push-candidate|promote-if-better --run-id ID   (retrain DAG steps)

Exit codes: 0 done, 2 bad input or store error, 99 candidate not promoted (a skip for Airflow).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path

from dkt.bundle import BundleError, lineage, read_meta
from dkt.cli import EXIT_SKIP, Parser, add_dag_steps
from dkt.quality import BY
from pipeline import retrain
from pipeline.blobs import StoreError
from pipeline.settings import SettingsError
from pipeline.store import VersionedStore, VersionError
from pipeline.workdir import work_dir

FLOW = "retrain_and_push"


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
    quality = sub.add_parser(
        "quality",
        help="online quality per model version from the client's prediction log (docs/monitoring.md)",
        description="AUC, log loss, accuracy, ECE and n of each model version's logged predictions against the"
        " answers that followed, with bootstrap 95%% intervals; overall, or per KnowledgeTag or day (UTC).",
    )
    quality.add_argument("--db", type=Path, help="the client's answer store (default $DKT_CLIENT_DB)")
    quality.add_argument("--model-version", help="only this model version")
    quality.add_argument("--by", choices=BY, help="one row per model version and KnowledgeTag, or per day")
    quality.add_argument("--json", action="store_true", help="JSON (with the reliability curves) instead of a table")
    quality.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (0: no intervals)")
    quality.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    steps = add_dag_steps(
        sub, "retrain_and_push_dag", ("pull-data", "train", "evaluate", "push-candidate", "promote-if-better")
    )
    train = steps["train"]
    train.add_argument("--config", type=Path, help="experiment config (default $DKT_TRAIN_CONFIG or config/lstm.json)")
    train.add_argument("--epochs", type=int, help="maximum epochs (default $DKT_TRAIN_EPOCHS or the config's)")
    steps["promote-if-better"].add_argument(
        "--tolerance", type=float, help="allowed AUC drop (default $DKT_PROMOTE_TOLERANCE or 0.005)"
    )
    return p.parse_args(argv)


def list_models(store: VersionedStore) -> int:
    """Stored versions, oldest first, with lineage and marks: production, latest, and serving (what the live
    service's /metadata reports, at the URL the last deploy recorded). A corrupt manifest is reported, exit 2."""
    from pipeline.deploy_served import SERVING_STATE, served_now

    prod = store.pointed("models", "production")
    latest = store.pointed("models", "latest")
    serving_doc = store.get_state(SERVING_STATE) or {}
    url = serving_doc.get("metadata_url")
    serving = served_now(str(url), timeout=3) if url else None
    recorded = serving_doc.get("model_version")
    errors: list[str] = []
    versions = store.versions("models", errors)
    for m in versions:
        marks = [n for n, v in (("production", prod), ("latest", latest), ("serving", serving)) if v == m["version"]]
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


def quality_report(args: argparse.Namespace) -> int:
    """Read the prediction log (read-only: no file is created, no schema migrated) and print the quality."""
    import sqlite3

    from client.db import scored_predictions
    from dkt.quality import quality_table
    from dkt.settings import ClientSettings, load

    path = args.db or Path(load(ClientSettings).client_db)
    if args.n_boot < 0:
        raise ValueError(f"--n-boot must be >= 0, not {args.n_boot}")
    if not path.is_file():
        raise ValueError(f"{path}: no such client database (--db or DKT_CLIENT_DB)")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            scored = scored_predictions(conn)
    except sqlite3.DatabaseError as exc:  # not SQLite, or a store from before the log (schema < 3)
        raise ValueError(f"{path}: cannot read the prediction log: {exc}") from None
    if args.model_version is not None:
        known = sorted(scored["model_version"].unique())
        if args.model_version not in known:
            raise ValueError(f"{path}: no scored predictions of model version {args.model_version!r}"
                             f" (logged: {', '.join(known) or 'none'})")  # fmt: skip
        scored = scored[scored["model_version"] == args.model_version]
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
            retrain.verify_stored(store, args.version)
            doc = store.set_pointer("models", "production", args.version, reason="manual promote")
            print(json.dumps({"production": doc["version"], "previous": doc["history"][:1]}))
            return 0
        if args.cmd == "rollback":
            doc = store.rollback("models", "production")
            print(json.dumps({"production": doc["version"], "reason": doc["reason"]}))
            return 0
        work = work_dir(FLOW, args.run_id)
        work.mkdir(parents=True, exist_ok=True)
        if args.cmd == "pull-data":
            doc = retrain.pull_data(work, store)
        elif args.cmd == "train":
            doc = retrain.train(work, args.config, args.epochs)
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
    except (BundleError, StoreError, VersionError, SettingsError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
