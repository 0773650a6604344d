"""A batch of jobs -> the canonical frames ``Predictor.predict_candidates_batch`` scores, one triple per job."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dkt.data.schema import COLUMNS
from serving.schema import Job


def job_frames(jobs: list[Job]) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]]:
    """(history, candidates, at) per job, built column-wise for the whole batch (pydantic has checked every value)."""
    sizes = np.array([len(job.history) for job in jobs], dtype=np.int64)
    rows = [row for job in jobs for row in job.history]
    hist = pd.DataFrame(
        {
            "userID": np.repeat(np.arange(len(jobs)), sizes).astype(str),
            "assessmentItemID": [r.assessmentItemID for r in rows],
            "testId": [r.testId for r in rows],
            "answerCode": np.array([r.answerCode for r in rows], dtype="int8"),
            "Timestamp": pd.to_datetime(pd.Series([r.Timestamp for r in rows], dtype=object), format="ISO8601"),
            "KnowledgeTag": np.array([r.KnowledgeTag for r in rows], dtype="int64"),
        },
        columns=list(COLUMNS),
    )
    for col in ("userID", "assessmentItemID", "testId"):
        hist[col] = hist[col].astype(str)  # the dtype ``dkt.data.schema.validate`` gives ids
    hist["Timestamp"] = hist["Timestamp"].astype("datetime64[ns]")
    # Oldest first within each job (ties in request order): the order a file's rows get offline.
    job_of = np.repeat(np.arange(len(jobs)), sizes)
    order = np.lexsort((np.arange(len(hist)), hist["Timestamp"].to_numpy(), job_of))
    hist = hist.iloc[order].reset_index(drop=True)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for j, job in enumerate(jobs):
        cands, at = candidates_frame(job)
        out.append((hist.iloc[bounds[j] : bounds[j + 1]].reset_index(drop=True), cands, at))
    return out


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
