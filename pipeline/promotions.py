"""Promotion gates and their history: every decision to move (or not move) ``models/production``, with its figures.

The history lives in the store, one object per decision (``state/promotions/<at>-<id>.json``), each written
with a conditional create: concurrent gates never overwrite each other, so no entry is ever lost (one shared
JSON list would need a read-modify-write that a second writer can undo). Entry (the operator page reads it)::

    {"at": "2026-11-26T08:30:00.123456Z", "gate": "holdout" | "shadow" | "manual", "candidate": "v2",
     "production": "v1" or null, "promoted": true, "reason": "...",
     "figures": {"n": 812, "candidate_auc": 0.74, "production_auc": 0.73, "diff": -0.01,
                 "diff_ci95": [-0.02, 0.0], "min_answers": 500, ...}}

The rule both gates apply (docs/pipeline.md#promotion-gates): ``diff`` is production's AUC minus the
candidate's on the same answers, ``diff_ci95`` its paired bootstrap 95% interval (each resample draws the
answers once and scores both models on that draw). The candidate is promoted when the interval's upper bound
is at most the tolerance (``DKT_PROMOTE_TOLERANCE``): the evidence says it is not worse by more than that.
When the lower bound is above the tolerance it is shown worse; in between the answers do not decide yet.
There the gates part ways (``fresh``): the shadow gate waits for more answers, while the retrain gate promotes
a candidate whose point estimate is within the tolerance, since it is not shown worse and it learnt from the
newest answers (keeping production on "undecided" would stop retrained models from ever reaching students).
"""

from __future__ import annotations

import json
import math
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dkt.bundle import BundleError
from pipeline.store import CorruptError, PointerMoved, VersionedStore

if TYPE_CHECKING:
    import pandas as pd

PREFIX = "state/promotions"
GATES = ("holdout", "shadow", "manual")
ENTRY_KEYS = ("at", "gate", "candidate", "production", "promoted", "reason", "figures")
FIGURE_KEYS = ("n", "candidate_auc", "production_auc", "diff", "diff_ci95", "min_answers")
Verdict = Literal["promote", "worse", "undecided"]


# -- history ---------------------------------------------------------------------------------------
def entry(
    gate: str, candidate: str, production: str | None, promoted: bool, reason: str, figures: dict[str, Any]
) -> dict[str, Any]:
    """One history entry, stamped now (UTC, microseconds: decisions of one second still list in order)."""
    at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    doc = {"at": at, "gate": gate, "candidate": candidate, "production": production,
           "promoted": bool(promoted), "reason": reason, "figures": figures}  # fmt: skip
    check_entry(doc, "a new entry")
    return doc


def check_entry(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` as the schema says, or ``ValueError`` naming ``where`` and what is wrong."""
    if not isinstance(doc, dict) or sorted(doc) != sorted(ENTRY_KEYS):
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{where}: a promotion entry has exactly the keys {list(ENTRY_KEYS)}, got {got}")
    if doc["gate"] not in GATES:
        raise ValueError(f"{where}: gate {doc['gate']!r} is not one of {', '.join(GATES)}")
    if not isinstance(doc["candidate"], str) or not (doc["production"] is None or isinstance(doc["production"], str)):
        raise ValueError(f"{where}: candidate must be a version name, production a version name or null")
    if not isinstance(doc["promoted"], bool) or not isinstance(doc["reason"], str) or not isinstance(doc["at"], str):
        raise ValueError(f"{where}: promoted must be a boolean, reason and at strings")
    figures = doc["figures"]
    if not isinstance(figures, dict) or any(k not in figures for k in FIGURE_KEYS):
        raise ValueError(f"{where}: figures must hold at least {list(FIGURE_KEYS)}")
    return doc


def record(store: VersionedStore, doc: dict[str, Any]) -> str:
    """Append one entry to the history; returns its key. A conditional create: never replaces an entry."""
    check_entry(doc, "promotion entry")
    stamp = doc["at"].replace("-", "").replace(":", "").replace(".", "")
    body = json.dumps(doc, indent=2, allow_nan=False).encode()
    while True:
        key = f"{PREFIX}/{stamp}-{uuid.uuid4().hex[:12]}.json"
        if store.blobs.put_bytes_if(key, body, None) is not None:
            return key


def history(store: VersionedStore) -> list[dict[str, Any]]:
    """Every recorded decision, newest first. A stored entry that is not one is a ``CorruptError`` naming its key."""
    docs = []
    for rel in store.blobs.list_keys(PREFIX):
        if not rel.endswith(".json") or "/" in rel:
            continue
        key = f"{PREFIX}/{rel}"
        raw = store.blobs.get_bytes(key)
        if raw is None:  # listed, then gone: nothing deletes entries, but a listing is not a snapshot
            continue
        try:
            docs.append((rel, check_entry(json.loads(raw), f"{store.blobs.url}: {key}")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptError(f"{store.blobs.url}: {key}: corrupt promotion entry: {exc}") from None
        except ValueError as exc:
            raise CorruptError(f"corrupt promotion entry: {exc}") from None
    # The key starts with the entry's time; its random tail orders entries of one second arbitrarily but stably.
    return [d for _, d in sorted(docs, key=lambda kd: (kd[1]["at"], kd[0]), reverse=True)]


# -- the paired comparison ---------------------------------------------------------------------------
def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def compare(
    y: np.ndarray, p_candidate: np.ndarray, p_production: np.ndarray | None, n_boot: int, seed: int = 0
) -> dict[str, Any]:
    """The figures of a gate: both AUCs on the same answers ``y``, production minus candidate, and the paired
    bootstrap 95% interval of that difference (``n_boot`` resamples, seeded). Without production, its figures
    are null. AUCs are ``dkt.quality``'s (ties count one half); an AUC of one class only is null."""
    from dkt.quality import BOOT_CELLS, _Sorted

    y = np.asarray(y, dtype=np.float64)
    pc = np.asarray(p_candidate, dtype=np.float64)
    n = int(y.size)
    # The candidate's order: answers sorted by its scores once; production's weights are a column permutation.
    oc = np.argsort(pc, kind="stable")
    cand = _Sorted(pc[oc], y[oc])  # already sorted: its own stable sort keeps this order
    one = np.ones((1, n))
    c_auc = _finite(float(cand.metrics(one)["auc"][0])) if n else None
    figures: dict[str, Any] = {"n": n, "candidate_auc": c_auc, "production_auc": None, "diff": None,
                               "diff_ci95": None, "n_boot": n_boot}  # fmt: skip
    if p_production is None or n == 0:
        return figures
    pp = np.asarray(p_production, dtype=np.float64)
    op = np.argsort(pp, kind="stable")
    prod = _Sorted(pp[op], y[op])
    p_auc = _finite(float(prod.metrics(one)["auc"][0]))
    figures["production_auc"] = p_auc
    if c_auc is None or p_auc is None:
        return figures
    figures["diff"] = p_auc - c_auc
    # Column j of production's order is answer op[j]; in the candidate's order that answer sits at where[op[j]].
    where = np.empty(n, dtype=np.int64)
    where[oc] = np.arange(n)
    to_prod = where[op]
    rng = np.random.default_rng(seed)
    block = max(1, BOOT_CELLS // n)
    diffs = []
    for start in range(0, n_boot, block):
        w = cand.resample(rng, min(block, n_boot - start))  # counts per answer, candidate's order
        diffs.append(prod.metrics(w[:, to_prod])["auc"] - cand.metrics(w)["auc"])
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    d = d[~np.isnan(d)]  # a resample with one class only has no AUC
    if d.size:
        lo, hi = np.percentile(d, [2.5, 97.5])
        figures["diff_ci95"] = [float(lo), float(hi)]
    return figures


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str

    @property
    def promote(self) -> bool:
        return self.verdict == "promote"


def decide(figures: dict[str, Any], tolerance: float, production: str | None, fresh: bool = False) -> Decision:
    """The rule of both gates (module docstring) on ``compare``'s figures; ``production``: its version, if any.

    ``fresh``: the candidate was trained on newer data than production (the retrain gate), so an interval that
    does not decide promotes it when the point estimate is within the tolerance."""
    c, p, ci = figures["candidate_auc"], figures["production_auc"], figures["diff_ci95"]
    n = figures["n"]
    if c is None:
        return Decision("worse", f"candidate AUC is undefined on {n} answers (one class only)")
    if production is None:
        return Decision("promote", f"no production model yet; candidate AUC {c:.4f} on {n} answers")
    if p is None:  # as before the gates: production unmeasurable here, so it cannot show the candidate worse
        return Decision("promote", f"production AUC is undefined on these {n} answers; candidate AUC {c:.4f}")
    head = f"production - candidate AUC {figures['diff']:+.4f} ({p:.4f} vs {c:.4f}, n={n})"
    if ci is None:
        return Decision("undecided", f"{head}: no bootstrap interval (every resample had one class only)")
    span = f"95% interval [{ci[0]:+.4f}, {ci[1]:+.4f}]"
    if ci[1] <= tolerance:
        return Decision("promote", f"{head}, {span}: not worse by more than {tolerance}")
    if ci[0] > tolerance:
        return Decision("worse", f"{head}, {span}: worse by more than {tolerance}")
    if fresh and figures["diff"] <= tolerance:
        return Decision("promote", f"{head}, {span}: not shown worse and within {tolerance}; it knows newer answers")
    return Decision("undecided", f"{head}, {span}: the answers do not show it is within {tolerance} of production")


def describe(figures: dict[str, Any]) -> str:
    """The figures on one line, for the task log."""
    return "figures: " + json.dumps(figures, sort_keys=True)


# -- gate (b): a shadow model on live answers ----------------------------------------------------------
@dataclass(frozen=True)
class ShadowOutcome:
    status: Literal["promoted", "refused", "waiting", "nothing"]
    message: str
    figures: dict[str, Any] | None = None


def shadow_pairs(scored: pd.DataFrame, production: str, shadow: str) -> pd.DataFrame:
    """The explored answers both models scored: the production and shadow predictions of the same request (one
    question, one answer), one row each with ``answerCode``, ``p_production`` and ``p_shadow``, in answer order.
    ``scored``: ``client.db.scored_predictions``.

    Only explored questions (drawn at random, DKT_EXPLORE_RATE) count: the others were chosen because production
    put them near the target difficulty, which squeezes production's probabilities together and leaves its AUC
    near 0.5 whatever the model, while the shadow's keep their spread (docs/monitoring.md#exploration)."""
    keys = ["request_id", "interaction_id"]
    explored = scored["explored"].astype(bool)
    prod = scored.loc[
        explored & (scored["role"] == "production") & (scored["model_version"] == production),
        [*keys, "answerCode", "probability"],
    ]
    shad = scored.loc[
        explored & (scored["role"] == "shadow") & (scored["model_version"] == shadow), [*keys, "probability"]
    ]
    pairs = prod.merge(shad, on=keys, suffixes=("_production", "_shadow"))
    pairs = pairs.rename(columns={"probability_production": "p_production", "probability_shadow": "p_shadow"})
    return pairs.sort_values("interaction_id", kind="stable").reset_index(drop=True)


def verify_stored(store: VersionedStore, version: str) -> dict[str, Any]:
    """Pull a stored model version into a scratch folder and check that it loads and scores a smoke batch.

    What is checked is what production would point at: the stored files, not a local copy of them.
    Raises ``BundleError`` naming the version when it does not.
    """
    from dkt.verify import verify_bundle  # torch and the models: only when a model is checked

    with tempfile.TemporaryDirectory(prefix=f"dkt-verify-{version}-") as tmp:
        store.pull("models", version, Path(tmp))
        try:
            return verify_bundle(tmp)
        except BundleError as exc:
            raise BundleError(f"model version {version} cannot be served: {exc}") from None


def promote_shadow(
    store: VersionedStore,
    scored: pd.DataFrame,
    min_answers: int,
    tolerance: float,
    n_boot: int,
    run_id: str | None = None,
) -> ShadowOutcome:
    """Gate (b): promote ``models/shadow`` once ``min_answers`` explored answers were scored by it and by production
    (``shadow_pairs``) and
    ``decide`` says promote; clears ``shadow`` then. A refusal is recorded once per (shadow, production) pair;
    too few answers, or answers that do not decide yet, are ``waiting`` and record nothing."""
    shadow = store.pointed("models", "shadow")
    production = store.pointed("models", "production")
    if shadow is None:
        return ShadowOutcome("nothing", "no shadow model is set (dkt models shadow VERSION)")
    if production is None:
        return ShadowOutcome("nothing", f"no production model to compare shadow {shadow} with")
    if shadow == production:
        return ShadowOutcome("nothing", f"shadow names production ({shadow}): nothing to compare")
    pairs = shadow_pairs(scored, production, shadow)
    both = f"explored answers scored by both production {production} and shadow {shadow}"
    if len(pairs) < min_answers:
        return ShadowOutcome("waiting", f"waiting: {len(pairs)} of the {min_answers} {both}")
    figures = compare(pairs["answerCode"].to_numpy(), pairs["p_shadow"].to_numpy(), pairs["p_production"].to_numpy(),
                      n_boot)  # fmt: skip
    figures.update(min_answers=min_answers, tolerance=tolerance, set=f"online: the {len(pairs)} {both}")
    if run_id:
        figures["run_id"] = run_id  # the Airflow run whose log printed them
    decision = decide(figures, tolerance, production)
    if decision.verdict == "undecided":
        return ShadowOutcome("waiting", f"waiting: {decision.reason}", figures)
    if not decision.promote:
        last = next((e for e in history(store) if e["gate"] == "shadow"), None)
        if not (last and last["candidate"] == shadow and last["production"] == production and not last["promoted"]):
            record(store, entry("shadow", shadow, production, False, decision.reason, figures))
        return ShadowOutcome("refused", decision.reason, figures)
    verify_stored(store, shadow)  # BundleError: a shadow that does not load from the store is never promoted
    try:
        store.set_pointer("models", "production", shadow, reason=f"shadow gate: {decision.reason}", only_if=production)
    except PointerMoved as exc:
        why = f"production moved while the shadow gate decided: {exc}"
        record(store, entry("shadow", shadow, production, False, why, figures))
        return ShadowOutcome("refused", why, figures)
    store.clear_pointer("models", "shadow")
    record(store, entry("shadow", shadow, production, True, decision.reason, figures))
    return ShadowOutcome("promoted", decision.reason, figures)
