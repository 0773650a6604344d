"""Loading a bundle: the one entry point serving, batch inference and evaluation use.

``load_predictor(bundle_dir)`` reads ``bundle.json`` and hands the folder to its model kind
(``dkt.models.interface``), which returns a ``Predictor``: P(correct) for rows of a table
(``predict_rows``), for candidate items after a history (``predict_candidates`` /
``predict_candidates_batch``), and the incremental form (``initial_state`` / ``step`` / ``score``).
``Predictor``, ``Job``, ``resolve_at`` and ``encode_candidates`` are importable from here too: the
names callers have always used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dkt.bundle import read_meta
from dkt.models.inputs import Job, encode_candidates, resolve_at
from dkt.models.interface import Predictor, kind_class, model_names

__all__ = ["Job", "Predictor", "encode_candidates", "load_predictor", "resolve_at"]


def load_predictor(bundle_dir: str | Path, device: str = "cpu", meta: dict[str, Any] | None = None) -> Predictor:
    """Load any model bundle written by ``train.py``.

    ``meta`` stands in for ``bundle.json``: train.py loads and smoke-tests a bundle before it writes that file.
    """
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir) if meta is None else meta
    name = meta.get("model")
    if name not in model_names():
        raise ValueError(f"{bundle_dir}: unknown model {name!r}; known: {model_names()}")
    kind = kind_class(name)
    if meta.get("kind") != kind.bundle_kind:
        raise ValueError(f"{bundle_dir}: bundle kind {meta.get('kind')!r} does not match model {name!r}")
    return kind.load(bundle_dir, meta, device=device)
