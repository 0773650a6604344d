"""The model bundle: everything needed to serve a trained model, in one folder.

Layout (``bundle.json`` is written last, so a folder without it is incomplete):

- ``bundle.json``: format, model name, kind, model / data version, code version,
  data fingerprints, max_seq_len, n_params, creation time, metrics;
- ``config.json``: the experiment config it was trained with;
- ``encoder.json``: the fitted feature vocabularies;
- ``catalog.json``: a few frequent items per skill (for knowledge-state queries);
- ``metrics.json``: the evaluation figures (``test_auc``, ``test_auc_last``, ...);
- the weights: ``weights.pt`` (sequence models), ``model.lgb`` (LightGBM) or
  ``members/<nn>-<name>/`` bundles (ensemble).
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

import dkt

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
CATALOG_ITEMS_PER_TAG = 3


class BundleError(ValueError):
    """A folder that is not a complete model bundle."""


def code_version() -> str:
    """Package version plus the git commit when the code runs from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{dkt.__version__}+{sha}" if sha else dkt.__version__


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def item_catalog(df: pd.DataFrame, per_tag: int = CATALOG_ITEMS_PER_TAG) -> dict[str, list[list[str]]]:
    """The most answered items of each skill: "a typical item" when asking for mastery of that skill."""
    counts = df.groupby(["KnowledgeTag", "assessmentItemID", "testId"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values(["KnowledgeTag", "n", "assessmentItemID"], ascending=[True, False, True])
    top = counts.groupby("KnowledgeTag").head(per_tag)
    catalog: dict[str, list[list[str]]] = {}
    for tag, item, test in top[["KnowledgeTag", "assessmentItemID", "testId"]].itertuples(index=False):
        catalog.setdefault(str(tag), []).append([str(item), str(test)])
    return catalog


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_meta(bundle_dir: str | Path) -> dict[str, Any]:
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / BUNDLE_FILE
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: no such folder")
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a complete model bundle ({BUNDLE_FILE} missing)")
    meta = json.loads(path.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {meta.get('format')!r}, this code reads {BUNDLE_FORMAT}")
    return meta
