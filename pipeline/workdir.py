"""Per-run work folders: where the steps of one DAG run hand files to each other."""

from __future__ import annotations

import re
from pathlib import Path

from dkt.settings import PipelineSettings, load


def work_root() -> Path:
    return load(PipelineSettings).work_root


def work_dir(flow: str, run_id: str) -> Path:
    """``$DKT_WORK_ROOT/<flow>/<run_id>`` with the run id made file-name safe (Airflow ids hold ':' and '+')."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    return work_root() / flow / safe
