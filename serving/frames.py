"""A batch of jobs -> the canonical frames ``Predictor.predict_candidates_batch`` scores, one triple per job."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dkt.data.schema import COLUMNS
from serving.schema import Interaction, Job


def job_frames(jobs: list[Job]) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]]:
    """(history, candidates, at) per job (pydantic has checked every value); job ``j``'s history is user ``str(j)``."""
    out = []
    for j, job in enumerate(jobs):
        cands, at = candidates_frame(job)
        out.append((history_frame(job.history, str(j)), cands, at))
    return out


def history_frame(rows: Sequence[Interaction], user: str = "0") -> pd.DataFrame:
    """One job's history as a canonical table, oldest first (ties in request order: the order a file's rows get
    offline), with the dtypes ``dkt.data.schema.validate`` gives. Built from numpy columns in one constructor call:
    a served cold student pays for this table on every request, and pandas' per-column conversions cost more than
    the rows."""
    # The normalised ISO timestamps (serving/schema.py) parse with numpy as pandas' ISO 8601 parser reads them.
    ts = np.array([r.Timestamp for r in rows], dtype="datetime64[ns]").reshape(-1)
    order = np.argsort(ts, kind="stable")
    pick = order.tolist()
    return pd.DataFrame(
        {
            "userID": _str([user] * len(rows)),
            "assessmentItemID": _str([rows[i].assessmentItemID for i in pick]),
            "testId": _str([rows[i].testId for i in pick]),
            "answerCode": np.array([rows[i].answerCode for i in pick], dtype="int8"),
            "Timestamp": ts[order],
            "KnowledgeTag": np.array([rows[i].KnowledgeTag for i in pick], dtype="int64"),
        },
        columns=list(COLUMNS),
    )


def _str(values: list[str]) -> list[str] | pd.Series:
    """An id column: a list of str, from which pandas infers the str dtype ``validate``'s astype(str) gives (a
    third faster than a str Series); an empty list would be inferred as float, so it gets a typed Series."""
    return values if values else pd.Series(values, dtype=str)


def candidates_frame(job: Job) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """(candidates, at) of one job: what the model scores after the history."""
    cands = pd.DataFrame(
        {
            "assessmentItemID": [c.assessmentItemID for c in job.candidates],
            "testId": [c.testId for c in job.candidates],
            "KnowledgeTag": np.array([c.KnowledgeTag for c in job.candidates], dtype="int64"),
        }
    )
    return cands, pd.Timestamp(job.at) if job.at else None
