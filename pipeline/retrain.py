"""The steps of ``retrain_and_push_dag``: pull data -> train -> evaluate -> push -> promote.

Training goes through ``train.py`` (one entry point for people and the DAG).
The gate (docs/pipeline.md#promotion-gates):
``pull_data`` holds out the newest answers of the data version (the latest ``DKT_HOLDOUT_FRACTION`` by Timestamp,
and only answers newer than everything the production model trained on); the candidate trains without them;
``evaluate`` scores candidate and production on them with the serving loader, each student's earlier answers as
context, and computes the paired bootstrap interval of the AUC difference (``pipeline.promotions``). Too few
such answers (``DKT_GATE_MIN_ANSWERS``), no production model, or a production model whose training data is
unknown: the user-split test set (``test.csv``, held-out users) decides instead, and the figures say so.
A candidate is promoted only under the rule of ``pipeline.promotions.decide`` and only if the stored version
loads and scores a smoke batch (``dkt.verify``); every decision is recorded in the promotion history.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkt.bundle import BundleError, default_version, lineage, read_meta, write_json
from dkt.cli import exit_code
from dkt.settings import TrainingSettings, load
from pipeline import promotions, timings
from pipeline.data_update import read_json
from pipeline.settings import REPO_ROOT
from pipeline.store import PointerMoved, VersionedStore, VersionError, manifest_matches

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

GATE_DIR = "gate"  # in the work folder: the holdout split pull_data prepares, which train and evaluate read
HOLDOUT = "holdout.json"
CANDIDATES_DIR = "candidates"  # in the work folder: one bundle per candidate kind (DKT_TRAIN_CANDIDATES)
SELECTION = "selection.json"  # in the work folder: which candidate won, on what figures


class NotPromoted(Exception):
    """The candidate is worse than production by more than the tolerance."""


def pull_data(work: Path, store: VersionedStore) -> dict[str, Any]:
    laps = timings.Laps()
    with laps.lap("pull data"):
        m = store.pull("datasets", "latest", work / "data")
    with laps.lap("holdout split"):
        holdout = prepare_holdout(work, store)
    print(f"holdout: {holdout['note']}", file=sys.stderr)
    if holdout["production"]:  # its weights seed the candidates of its kind (warm start, dkt train --init-from)
        with laps.lap("pull production"):
            store.pull("models", holdout["production"], work / "production")
    timings.record(work, "pull_data", laps)
    return {"data_version": m["version"], "rows": m.get("rows", {}), "holdout": holdout}


def _answers(data: Path, names: tuple[str, ...] = ("train.csv", "test.csv")) -> pd.DataFrame:
    """The labelled answers of a data set folder's files, one table."""
    import pandas as pd

    from dkt.data.io import read_csv

    frames = [read_csv(data / n) for n in names if (data / n).is_file()]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["answerCode", "Timestamp"])
    return df[df["answerCode"] >= 0]


def _stamp(ts: Any) -> str:
    from pipeline.dataset import TIME_FORMAT

    return str(ts.strftime(TIME_FORMAT))


def production_trained_until(work: Path, store: VersionedStore, prod: str) -> tuple[str | None, str]:
    """The newest answer the production model trained on, and where that figure comes from.

    A model this gate trained carries it in its manifest (``trained_until``); for another model it is the
    newest answer of the train.csv of the data version its lineage names (pulled), when that is stored."""
    manifest = store.manifest("models", prod)
    if isinstance(manifest.get("trained_until"), str):
        return manifest["trained_until"], f"production {prod}'s manifest"
    dv = manifest.get("data_version")
    if not dv or not store.exists("datasets", str(dv)):
        return None, f"production {prod} names no stored data version ({dv!r})"
    store.pull("datasets", str(dv), work / "production-data")
    train = _answers(work / "production-data", ("train.csv",))
    if not len(train):
        return None, f"data version {dv} of production {prod} has no training answers"
    return _stamp(train["Timestamp"].max()), f"train.csv of data version {dv} (production {prod})"


def prepare_holdout(work: Path, store: VersionedStore) -> dict[str, Any]:
    """Split the newest answers off for the gate: ``work/gate/`` gets train.csv and test.csv without them and
    ``holdout.json`` says where the split is (``active``) or why the user-split test set decides instead."""
    import pandas as pd

    from pipeline.dataset import MergeResult, write_dataset

    settings = load(TrainingSettings)
    gate = work / GATE_DIR
    gate.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    doc: dict[str, Any] = {
        "active": False,
        "fraction": settings.holdout_fraction,
        "min_answers": settings.gate_min_answers,
        "n": 0,
        "cutoff": None,
        "production": store.pointed("models", "production"),
        "production_trained_until": None,
    }
    whole = "the candidate trains on the whole train.csv"
    if doc["production"] is None:
        doc["note"] = f"no production model: nothing to compare with; {whole}"
    elif (got := production_trained_until(work, store, doc["production"]))[0] is None:
        doc["note"] = f"what production trained on is unknown ({got[1]}): the user-split test set decides; {whole}"
    else:
        until, source = got
        doc["production_trained_until"] = until
        times = _answers(data)["Timestamp"].sort_values(ignore_index=True)
        k = math.ceil(settings.holdout_fraction * len(times))
        newer = times[times > pd.Timestamp(until)]
        # The later of: the k-th newest answer, and the first answer production did not train on.
        cutoff = max(times.iloc[len(times) - k], newer.iloc[0]) if k and len(newer) else None
        held = int((times >= cutoff).sum()) if cutoff is not None else 0
        doc.update(n=held, cutoff=_stamp(cutoff) if cutoff is not None else None)
        where = f"the newest {settings.holdout_fraction:.0%} of {len(times)} answers newer than {until} ({source})"
        if held < settings.gate_min_answers:
            doc["note"] = (f"{held} answers in {where}, fewer than DKT_GATE_MIN_ANSWERS={settings.gate_min_answers}:"
                           f" the user-split test set decides; {whole}")  # fmt: skip
        else:
            doc["active"] = True
            doc["note"] = f"{held} answers from {doc['cutoff']} on: {where}; the candidate trains without them"
    train = _answers(data, ("train.csv",))
    if doc["active"]:
        cut = pd.Timestamp(doc["cutoff"])
        test = _answers(data, ("test.csv",))
        train, test = train[train["Timestamp"] < cut], test[test["Timestamp"] < cut]
        both = pd.concat([train, test], ignore_index=True)
        write_dataset(MergeResult(both, train, test, len(both), len(both)), gate)
    doc["candidate_trained_until"] = _stamp(train["Timestamp"].max()) if len(train) else None
    write_json(gate / HOLDOUT, doc)
    return doc


def read_holdout(work: Path) -> dict[str, Any]:
    path = work / GATE_DIR / HOLDOUT
    if path.is_file():
        return read_json(path)
    # A work folder staged by hand (tests, a person re-running evaluate): no split, the user-split test set.
    return {"active": False, "note": f"no {path} (pull_data did not run here): the user-split test set decides",
            "min_answers": load(TrainingSettings).gate_min_answers, "candidate_trained_until": None}  # fmt: skip


def candidate_configs(spec: str) -> list[Path]:
    """The configs of ``DKT_TRAIN_CANDIDATES`` (or the DAG param): model names (``config/<name>.json``) or paths."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(f"DKT_TRAIN_CANDIDATES {spec!r}: no model kind named")
    configs = []
    for name in names:
        path = Path(name) if name.endswith(".json") else REPO_ROOT / "config" / f"{name}.json"
        if not path.is_file():
            known = sorted(p.stem for p in (REPO_ROOT / "config").glob("*.json"))
            raise ValueError(f"DKT_TRAIN_CANDIDATES {spec!r}: no config {path} (model names: {', '.join(known)})")
        configs.append(path)
    return configs


def fine_tune_config(cfg: Path, production: Path, out: Path) -> Path | None:
    """A copy of ``cfg`` for a short fine-tune when production's weights can seed it (its kind warm-starts and
    ``SequenceKind.warm_refusal`` finds nothing against it): at most ``DKT_WARM_EPOCHS`` epochs, early stopping after
    ``DKT_WARM_PATIENCE`` without a validation gain. The model has learnt the old answers already; the config's
    from-scratch budget (30 epochs, patience 3) would spend patience + 1 epochs at least on every cycle. None: the
    candidate trains as configured (from scratch, or a kind that ignores --init-from)."""
    from dkt.models.interface import kind_class

    doc = json.loads(cfg.read_text())
    try:
        if read_meta(production).get("model") != doc.get("model"):
            return None  # before kind_class: importing a kind's module can take seconds (lightgbm)
        kind = kind_class(str(doc.get("model")))
    except (BundleError, ValueError, TypeError):
        return None  # train.py says why it trains from scratch, or names the unknown kind in its own error
    refusal = getattr(kind, "warm_refusal", None)
    if refusal is None or refusal(production, doc.get("model_params") or {}) is not None:
        return None
    settings = load(TrainingSettings)
    section = dict(doc.get("train") or {})
    section["epochs"] = min(int(section.get("epochs", settings.warm_epochs)), settings.warm_epochs)
    section["patience"] = settings.warm_patience
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**doc, "train": section})
    return out


def train(
    work: Path,
    config: Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
    candidates: str | None = None,
) -> dict[str, Any]:
    """Train each candidate kind into ``work/candidates/`` with train.py (same flags a person would use), then keep
    the best (``select``) as ``work/candidate``. ``config`` trains that one config alone."""
    settings = load(TrainingSettings)
    configs = [config] if config else candidate_configs(candidates or settings.candidates)
    data_manifest = read_json(work / "data" / "manifest.json")
    epochs = epochs or settings.epochs
    version = default_version()  # one version for all: only the winner is ever stored
    # The holdout split when pull_data made one: the gate's answers never reach training.
    files = work / GATE_DIR if read_holdout(work)["active"] else work / "data"
    shutil.rmtree(work / CANDIDATES_DIR, ignore_errors=True)  # a retry starts over, no stale candidate competes
    production = work / "production"
    warm = (production / "bundle.json").is_file()  # pulled by pull_data; the kind decides if it fits
    trained = {}
    laps = timings.Laps()
    for i, cfg in enumerate(configs):
        out = work / CANDIDATES_DIR / f"{i + 1}-{cfg.stem}"
        tuned = fine_tune_config(cfg, production, out.with_name(f"{out.name}.fine-tune.json")) if warm else None
        if tuned is not None:
            print(f"train: {cfg.stem} warm-starts from production: a fine-tune ({tuned})", file=sys.stderr)
        argv = [
            "--config", str(tuned or cfg),
            "--train-file", str(files / "train.csv"),
            "--test-file", str(files / "test.csv"),
            "--output-dir", str(out),
            "--model-version", version,
            "--data-version", data_manifest["version"],
            "--device", device or settings.device,
            "--no-progress",
        ]  # fmt: skip
        if epochs:  # --epochs wins over the config's train.epochs, so a fine-tune keeps its own, smaller cap
            argv += ["--epochs", str(min(epochs, settings.warm_epochs) if tuned else epochs)]
        if warm:
            argv += ["--init-from", str(production)]
        print("train: python train.py " + " ".join(argv), file=sys.stderr)  # what a person runs to repeat it
        with laps.lap(f"train.py {out.name}"):
            code, stdout = train_in_process(argv)
        if code != 0:
            raise RuntimeError(f"train.py --config {cfg} failed with exit {code}")
        trained[out.name] = json.loads(stdout.strip().splitlines()[-1])
    with laps.lap("select"):
        selection = select(work)
    # What train.py's own figures say of each candidate: its epochs, whether it fine-tuned, and the seconds of its
    # training loop (the rest of its wall time: process start and imports, data, the test-set evaluation and the
    # bundle write). Each its own: a from-scratch candidate's loop is not the fine-tuned winner's.
    own: dict[str, float | int | str | None] = {}
    for name in trained:
        metrics = read_meta(work / CANDIDATES_DIR / name).get("metrics", {})
        tuned_here = (work / CANDIDATES_DIR / f"{name}.fine-tune.json").is_file()
        own |= {f"{name} training_loop": metrics.get("train_seconds"), f"{name} epochs": metrics.get("epochs_run"),
                f"{name} fine_tune": str(tuned_here)}  # fmt: skip
    timings.record(work, "train", laps, **own)
    return {"model_version": version, "model": selection["winner_model"], "metrics": trained[selection["winner"]],
            "selection": selection}  # fmt: skip


def train_in_process(argv: list[str]) -> tuple[int, str]:
    """``train.py argv`` in this process: its exit code and its stdout (the last line: the metrics JSON); its logs go
    to stderr (the task log). Not a child process: the interpreter, pandas and torch (imported here already to check
    the warm start) are not loaded a second time, 3-4 s at load. A crash is printed and is exit 1, as a child's."""
    from dkt.commands.train import main as train_main

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = train_main(argv)
    except SystemExit as exc:  # argparse: its one line is printed
        code = exit_code(exc)
    except Exception:  # an unforeseen failure: its traceback in the task log, then one error line
        traceback.print_exc()
        code = 1
    return code, out.getvalue()


def holdout_context(work: Path, holdout: dict[str, Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """Every answer of the students with a held-out answer, in time order (what came before is the context),
    and which rows are held out."""
    import pandas as pd

    everything = _answers(work / "data")
    cut = pd.Timestamp(holdout["cutoff"])
    users = everything.loc[everything["Timestamp"] >= cut, "userID"].unique()
    context = everything[everything["userID"].isin(users)].sort_values(["userID", "Timestamp"], kind="stable")
    context = context.reset_index(drop=True)
    return context, (context["Timestamp"] >= cut).to_numpy()


def select(work: Path) -> dict[str, Any]:
    """Keep the best bundle of ``work/candidates/`` as ``work/candidate``; the figures go to ``selection.json``.

    Ranked by AUC on the time holdout when pull_data made one; without one by each candidate's validation AUC
    (held-out users of its training file), so that the user-split test set the gate then decides on played no
    part in the choice. A candidate whose figure is undefined ranks last; ties go to the first listed."""
    import numpy as np

    from dkt.metrics import auc

    bundles = sorted(p for p in (work / CANDIDATES_DIR).iterdir() if (p / "bundle.json").is_file())
    if not bundles:
        raise RuntimeError(f"no trained candidate in {work / CANDIDATES_DIR}")
    holdout = read_holdout(work)
    rows = []
    if len(bundles) == 1:
        by = "one candidate: nothing to choose from"
        rows.append({"name": bundles[0].name, "model": read_meta(bundles[0])["model"], "score": None})
    elif holdout["active"]:
        by = f"AUC on the time holdout ({holdout['note']})"
        context, held = holdout_context(work, holdout)
        y = context["answerCode"].to_numpy()[held]
        for b in bundles:
            [p] = probabilities(b, [context])
            ok = ~np.isnan(p[held])
            rows.append({"name": b.name, "model": read_meta(b)["model"], "score": auc(y[ok], p[held][ok])})
    else:
        by = f"validation AUC (no time holdout: {holdout['note']})"
        for b in bundles:
            meta = read_meta(b)
            rows.append({"name": b.name, "model": meta["model"], "score": meta.get("metrics", {}).get("valid_auc")})

    def rank(row: dict[str, Any]) -> float:
        score = row["score"]
        return float(score) if score is not None and math.isfinite(score) else -math.inf

    best = max(rows, key=rank)  # max keeps the first of equals
    shutil.rmtree(work / "candidate", ignore_errors=True)
    shutil.copytree(work / CANDIDATES_DIR / best["name"], work / "candidate")
    doc = {"by": by, "candidates": rows, "winner": best["name"], "winner_model": best["model"]}
    write_json(work / SELECTION, doc)
    scores = ", ".join(f"{r['name']} {r['score'] if r['score'] is None else round(r['score'], 4)}" for r in rows)
    print(f"select: {best['model']} ({best['name']}) by {by}: {scores}", file=sys.stderr)
    return doc


def probabilities(bundle: Path, tables: list[pd.DataFrame]) -> list[np.ndarray]:
    """P(correct) of every row of each table through the serving loader (earlier rows of a student: context)."""
    from dkt.predictor import load_predictor

    predictor = load_predictor(bundle, device="cpu")
    return [predictor.predict_rows(t) for t in tables]


def evaluate(work: Path, store: VersionedStore) -> dict[str, Any]:
    """Score the candidate and the current production model: on the held-out users (``candidate`` and
    ``production``: the offline metrics), and the gate's figures (``gate``) on the time holdout, or on the
    held-out users when there is no holdout (``read_holdout``'s note says why)."""
    import numpy as np

    from dkt.data.io import read_csv
    from dkt.metrics import evaluate_predictions
    from dkt.verify import verify_bundle

    laps = timings.Laps()
    verify_bundle(work / "candidate")  # an unloadable candidate stops here, before it is stored
    laps.add("imports and verify", laps.total())
    test = read_csv(work / "data" / "test.csv")
    holdout = read_holdout(work)
    tables = [test]
    if holdout["active"]:
        context, held = holdout_context(work, holdout)
        tables.append(context)
    prod = store.pointed("models", "production")
    doc: dict[str, Any] = {"candidate_version": read_meta(work / "candidate")["model_version"],
                           "production_version": prod}  # fmt: skip
    with laps.lap("score candidate"):
        scored = {"candidate": probabilities(work / "candidate", tables)}
    if prod:
        pulled = work / "production" / "bundle.json"
        # pull_data pulled it for the warm start when the tasks share this folder; another host pulls it here.
        if not (pulled.is_file() and str(read_meta(work / "production").get("model_version")) == prod):
            with laps.lap("pull production"):
                store.pull("models", prod, work / "production")
        with laps.lap("score production"):
            scored["production"] = probabilities(work / "production", tables)
    for role, probs in scored.items():
        doc[role] = evaluate_predictions(test, probs[0])
    if holdout["active"]:
        y = context["answerCode"].to_numpy()[held]
        picked = {role: probs[1][held] for role, probs in scored.items()}
        where = f"time holdout: {holdout['note']}"
    else:
        keep = test["answerCode"].to_numpy() >= 0
        for probs in scored.values():
            keep &= ~np.isnan(probs[0])
        y = test["answerCode"].to_numpy()[keep]
        picked = {role: probs[0][keep] for role, probs in scored.items()}
        where = f"user-split test set: {holdout['note']}"
    figures = promotions.compare(
        y, picked["candidate"], picked.get("production"), load(TrainingSettings).gate_bootstrap
    )
    figures.update(min_answers=int(holdout["min_answers"]), set=where, cutoff=holdout.get("cutoff"))
    doc["gate"] = {"figures": figures, "candidate_trained_until": holdout.get("candidate_trained_until")}
    if (work / SELECTION).is_file():  # the train step's choice among the candidate kinds, kept in the manifest
        doc["selection"] = read_json(work / SELECTION)
    print(f"evaluate: {promotions.describe(figures)}", file=sys.stderr)
    write_json(work / "evaluation.json", doc)
    timings.record(work, "evaluate", laps)
    return doc


def push_model(work: Path, store: VersionedStore) -> dict[str, Any]:
    """Store the candidate as a new model version (moves ``latest`` only; promotion is separate)."""
    meta = read_meta(work / "candidate")
    version = meta["model_version"]
    if store.exists("models", version):  # a retry after a crash past the upload, if the files are ours
        manifest = store.manifest("models", version)
        if not manifest_matches(manifest, work / "candidate"):
            raise VersionError(f"model version {version} is already stored with other files; retrain for a new version")
        store.set_pointer("models", "latest", version, reason="push (retry)")
        return manifest
    ev = read_json(work / "evaluation.json")
    res = store.push(
        "models",
        work / "candidate",
        version,
        parent=store.pointed("models", "production"),
        metrics=meta.get("metrics", {}),
        # trained_until: the next gate holds out only answers newer than this (prepare_holdout).
        extra={
            "model": meta["model"],
            **lineage(meta),
            "evaluation": ev,
            "trained_until": ev.get("gate", {}).get("candidate_trained_until"),
        },
    )
    return res.manifest


def load_evaluation(work: Path, store: VersionedStore) -> dict[str, Any]:
    """The evaluate step's result: from the work folder, or, when the train tasks ran on another host
    (the Edge worker, DKT_TRAIN_EXECUTOR=edge), from the manifest push_candidate stored it in."""
    local = work / "evaluation.json"
    if local.is_file():
        return read_json(local)
    latest = store.pointed("models", "latest")
    manifest = store.manifest("models", latest) if latest else {}
    ev = manifest.get("evaluation")
    if not isinstance(ev, dict) or ev.get("candidate_version") != latest:
        raise RuntimeError(
            f"no {local}, and the latest stored model ({latest}) carries no evaluation of itself: "
            "run evaluate and push-candidate for this run first"
        )
    return ev


def promote_if_better(work: Path, store: VersionedStore, tolerance: float | None = None) -> dict[str, Any]:
    """The holdout gate's decision on the evaluation's figures, recorded in the promotion history whatever it is.

    Raises ``NotPromoted`` (a skip) when the rule refuses or production moved during the run."""
    ev = load_evaluation(work, store)
    if "gate" not in ev:
        raise RuntimeError("the evaluation has no gate figures (made before the promotion gates): run evaluate again")
    tol = tolerance if tolerance is not None else load(TrainingSettings).promote_tolerance
    figures = {**ev["gate"]["figures"], "tolerance": tol}
    decision = promotions.decide(figures, tol, ev["production_version"], fresh=True)
    candidate, previous = ev["candidate_version"], ev["production_version"]
    print(f"promote_if_better: {promotions.describe(figures)}", file=sys.stderr)

    def refuse(why: str) -> NotPromoted:
        promotions.record(store, promotions.entry("holdout", candidate, previous, False, why, figures))
        return NotPromoted(why)

    current = store.pointed("models", "production")
    if current == candidate and previous != candidate:  # a retry of this step after its pointer move
        done = [e for e in promotions.history(store) if e["gate"] == "holdout" and e["candidate"] == candidate]
        if not any(e["promoted"] for e in done):  # the first try stopped between the move and the record
            promotions.record(store, promotions.entry("holdout", candidate, previous, True, decision.reason, figures))
        return {"promoted": candidate, "reason": f"already promoted: {decision.reason}", "previous": previous,
                "figures": figures}  # fmt: skip
    if current != previous:  # someone promoted meanwhile; the comparison no longer holds
        raise refuse(f"production moved from {previous} to {current} during this run")
    if not decision.promote:
        raise refuse(decision.reason)
    promotions.verify_stored(store, candidate)  # BundleError: a model that does not load is never promoted
    try:
        doc = store.set_pointer("models", "production", candidate, reason=decision.reason, only_if=previous)
    except PointerMoved as exc:
        raise refuse(f"production moved during this run: {exc}") from None
    promotions.record(store, promotions.entry("holdout", candidate, previous, True, decision.reason, figures))
    return {"promoted": candidate, "reason": decision.reason, "previous": previous, "pointer": doc,
            "figures": figures}  # fmt: skip
