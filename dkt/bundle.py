"""The model bundle: everything needed to serve a trained model, in one folder.

Layout (``bundle.json`` is written last, so a folder without it is incomplete):

- ``bundle.json``: format, model name, kind, model / data version, code version,
  data fingerprints, max_seq_len, n_params, creation time, metrics, and the lineage
  (``LINEAGE_KEYS``: data version, code commit, config hash, seed). It is written only
  after the saved model has loaded and scored a smoke batch (``dkt.verify``);
- ``config.json``: the experiment config it was trained with;
- ``encoder.json``: the fitted feature vocabularies;
- ``catalog.json``: a few frequent items per skill (for knowledge-state queries);
- ``metrics.json``: the evaluation figures (``test_auc``, ``test_auc_last``, ...);
- the weights: ``weights.pt`` (sequence models), ``model.lgb`` (LightGBM) or
  ``members/<nn>-<name>/`` bundles (ensemble).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dkt

if TYPE_CHECKING:  # pandas only names item_catalog's argument: every store command imports this module, pandas is 0.8 s
    import pandas as pd

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
CATALOG_ITEMS_PER_TAG = 3


class BundleError(ValueError):
    """A folder that is not a complete model bundle."""


UNKNOWN = "unknown"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# What ties a model version to how it was made; the store manifest carries these keys too.
LINEAGE_KEYS = ("data_version", "code_commit", "code_dirty", "code_version", "config_hash", "seed")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_commit() -> tuple[str, bool | None]:
    """(full commit of the checkout this code runs from, whether tracked files differ from it).

    ``("unknown", None)`` when the code is not running from a git checkout of this project (an
    installed copy, an image without .git): no commit is guessed.
    """
    top = _git("rev-parse", "--show-toplevel")
    # Only this project's own checkout counts, not some repository that happens to contain an installed copy.
    if not top or Path(top).resolve() != PACKAGE_ROOT:
        return UNKNOWN, None
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return UNKNOWN, None
    return sha, bool(_git("status", "--porcelain", "--untracked-files=no"))


def code_version(commit: str | None = None, dirty: bool | None = None) -> str:
    """Package version plus the short commit (``+unknown`` outside a checkout), ``.dirty`` when uncommitted.

    Without ``commit`` both are read from the checkout (``code_commit``)."""
    if commit is None:
        commit, dirty = code_commit()
    short = commit[:12] if commit != UNKNOWN else UNKNOWN
    return f"{dkt.__version__}+{short}{'.dirty' if dirty else ''}"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the config as canonical JSON (sorted keys): equal settings, equal hash, whatever the file layout."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def lineage(meta: dict[str, Any]) -> dict[str, Any]:
    """The lineage keys of a bundle's metadata, for the store manifest (missing ones, from old bundles, as None)."""
    return {k: meta.get(k) for k in LINEAGE_KEYS}


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
    # allow_nan=False: NaN is not JSON; an undefined figure must be None with a reason, never NaN.
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")
    tmp.replace(path)


def read_json_file(path: Path, what: str, error: type[ValueError] = ValueError) -> Any:
    """A JSON file a person wrote (a config): a missing or broken file is one ``error`` naming the path."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None


def read_meta(bundle_dir: str | Path) -> dict[str, Any]:
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / BUNDLE_FILE
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: no such folder")
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a complete model bundle ({BUNDLE_FILE} missing)")
    try:
        meta = json.loads(path.read_text(), parse_constant=refuse_nan)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: not a JSON object")
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {meta.get('format')!r}, this code reads {BUNDLE_FORMAT}")
    return meta


def refuse_nan(name: str) -> Any:
    """``json.loads(..., parse_constant=refuse_nan)``: NaN / Infinity in a file are an error, never a number."""
    raise ValueError(f"{name} is not a JSON number (an undefined figure must be null)")
