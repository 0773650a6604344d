"""From a student's answers and the items to score, to model inputs: one path for every model kind.

Train/serve parity: a candidate shown at ``at`` after a history is scored exactly as the same item
would be as an answerCode -1 row at time ``at`` in a file holding that history (``predict_rows``,
which ``inference.py`` and test evaluation use). Both the batch form (``encode_candidates``: a whole
history per request) and the incremental form (``StudentFeatures``: running counts updated one
answer at a time) give a candidate the features ``dkt.data.features.FeatureEncoder.transform`` gives
that row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from dkt.data.features import CONTINUOUS, FeatureEncoder, FeatureFrame, count_features

ELAPSED_COLUMN = CONTINUOUS.index("elapsed_s")
N_COUNT_COLUMNS = 4  # the first CONTINUOUS columns come from count_features
HISTORY_COLUMNS = ("assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag")

Job = tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]  # (history, candidates, at)


def resolve_at(history: pd.DataFrame, at: pd.Timestamp | str | None) -> pd.Timestamp:
    """When the candidates are shown (naive UTC): ``at``, or by default now.

    The default is never before the history's last answer: a caller that gives no time means "next",
    and a clock a little behind the one that stamped the answers must not hide them.
    """
    if at is not None:
        ts = pd.Timestamp(at)
        return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    return max(now, history["Timestamp"].max()) if len(history) else now


def known_before(history: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """The answers given by the time a candidate is shown at ``at``: later ones are its future, as offline."""
    return history[history["Timestamp"] <= at]


def candidate_rows(candidates: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """Candidates as answerCode -1 rows shown at ``at`` (no userID)."""
    k = len(candidates)
    return pd.DataFrame(
        {
            "assessmentItemID": candidates["assessmentItemID"].astype(str).to_numpy(),
            "testId": candidates["testId"].astype(str).to_numpy(),
            "answerCode": np.full(k, -1, dtype="int8"),
            "Timestamp": np.full(k, at, dtype="datetime64[ns]"),
            "KnowledgeTag": candidates["KnowledgeTag"].astype("int64").to_numpy(),
        }
    )


@dataclass
class EncodedCandidates:
    """Every job's full history followed by its candidates, encoded as one user per job.

    ``ff`` rows of job ``u`` (in ``jobs`` order) start at ``ff.user_starts[u]``: ``n`` history rows, then
    ``k`` candidate rows whose features are each what that candidate would get as the row right after
    the history (see ``encode_candidates``).
    """

    ff: FeatureFrame
    table: pd.DataFrame  # the encoded table in input order (``ff.row_index`` maps sorted rows into it)
    jobs: list[tuple[int, int, int]]  # (job number, n history rows, k candidates)

    def candidate_rows(self, u: int) -> np.ndarray:
        _, n, k = self.jobs[u]
        first = int(self.ff.user_starts[u]) + n
        return np.arange(first, first + k)


def encode_candidates(encoder: FeatureEncoder, jobs: Sequence[Job]) -> EncodedCandidates | None:
    """Encode all jobs with candidates at once; ``None`` when no job has any.

    A candidate row's features depend on the rows before it. Candidates are answerCode -1 rows, so the
    running counts and accuracies do not move between them; only what describes the previous row
    (elapsed time, previous response) would see the candidate before it, and is copied from the first
    candidate, which follows the history directly.
    """
    frames, layout = [], []
    for j, (history, candidates, at) in enumerate(jobs):
        if len(candidates) == 0:
            continue
        at = resolve_at(history, at)
        hist = known_before(history, at).loc[:, list(HISTORY_COLUMNS)]
        # Candidates come after the history in input order: the stable time sort keeps them after
        # answers given in the same second, as an answerCode -1 row after them in a file would be.
        table = pd.concat([hist, candidate_rows(candidates, at)], ignore_index=True)
        frames.append(table.assign(userID=f"{len(layout):08d}"))  # zero-padded: users sort in job order
        layout.append((j, len(hist), len(candidates)))
    if not layout:
        return None
    table = pd.concat(frames, ignore_index=True)
    ff = encoder.transform(table)
    for u, (_, n, k) in enumerate(layout):
        first = int(ff.user_starts[u]) + n
        ff.cat["elapsed"][first + 1 : first + k] = ff.cat["elapsed"][first]
        for name in ff.resp:
            ff.resp[name][first + 1 : first + k] = ff.resp[name][first]
        ff.cont[first + 1 : first + k, ELAPSED_COLUMN] = ff.cont[first, ELAPSED_COLUMN]
    return EncodedCandidates(ff=ff, table=table, jobs=layout)


# ---------------------------------------------------------------- FeatureFrame pieces


def frame_rows(ff: FeatureFrame, rows: np.ndarray) -> FeatureFrame:
    """The given rows of ``ff`` as a FeatureFrame of one user."""
    rows = np.asarray(rows, dtype=np.int64)
    return FeatureFrame(
        users=np.array(["0"], dtype=object),
        user_starts=np.array([0, len(rows)], dtype=np.int64),
        row_index=np.arange(len(rows), dtype=np.int64),
        answer=ff.answer[rows],
        cat={k: v[rows] for k, v in ff.cat.items()},
        resp={k: v[rows] for k, v in ff.resp.items()},
        cont=ff.cont[rows],
    )


def stack_frames(frames: Sequence[FeatureFrame]) -> FeatureFrame:
    """Frames one after another, as one user (only row positions matter to the windows built on it)."""
    n = sum(len(f) for f in frames)
    first = frames[0]
    return FeatureFrame(
        users=np.array(["0"], dtype=object),
        user_starts=np.array([0, n], dtype=np.int64),
        row_index=np.arange(n, dtype=np.int64),
        answer=np.concatenate([f.answer for f in frames]),
        cat={k: np.concatenate([f.cat[k] for f in frames]) for k in first.cat},
        resp={k: np.concatenate([f.resp[k] for f in frames]) for k in first.resp},
        cont=np.concatenate([f.cont for f in frames]),
    )


# ---------------------------------------------------------------- incremental form


# Only for the column types of an empty history.
EMPTY_ANSWER = {"assessmentItemID": "", "testId": "", "answerCode": -1, "Timestamp": "2000-01-01", "KnowledgeTag": 0}
EMPTY_HISTORY = pd.DataFrame({"Timestamp": pd.Series(dtype="datetime64[ns]")})


def answer_frame(answer: Mapping[str, Any]) -> pd.DataFrame:
    """One answer (a mapping with ``HISTORY_COLUMNS``, e.g. a history row) as a one-row history table."""
    missing = [c for c in HISTORY_COLUMNS if c not in answer]
    if missing:
        raise ValueError(f"an answer needs {list(HISTORY_COLUMNS)}; missing {missing}")
    row = {c: [answer[c]] for c in HISTORY_COLUMNS}
    row["Timestamp"] = [resolve_at(EMPTY_HISTORY, answer["Timestamp"])]  # naive UTC, as history tables hold it
    return pd.DataFrame(row).astype({"answerCode": "int64", "KnowledgeTag": "int64"})


def check_order(last: pd.Timestamp, ts: pd.Timestamp, what: str = "an answer") -> None:
    """Answers are stepped in time order, and candidates are shown after the last of them."""
    if ts < last:
        raise ValueError(f"{what} at {ts} is before the student's last answer ({last})")


@dataclass(frozen=True)
class StudentFeatures:
    """What the features of a student's next row depend on, updated one answer at a time.

    The running counts of labelled answers (overall and per skill, keyed by encoded KnowledgeTag as
    ``FeatureEncoder.transform`` keys them) and the last answer (for elapsed time and the previous
    response). A value: ``after`` returns a new one and never changes this one.
    """

    position: int = 0  # answers so far: the position the next row takes in the student's history
    n: int = 0  # labelled answers so far
    correct: int = 0
    tags: Mapping[int, tuple[int, int]] = field(default_factory=dict)  # encoded tag -> (labelled, correct)
    last: pd.DataFrame | None = None  # the last answer, one row of HISTORY_COLUMNS

    def encode(self, encoder: FeatureEncoder, candidates: pd.DataFrame, at: pd.Timestamp | None) -> FeatureFrame:
        """Features of each candidate shown at ``at`` (default now) after these answers, one row each.

        The previous-row features come from ``encode_candidates`` over the last answer alone, the
        counts from this state: together what ``encode_candidates`` gives after the whole history.
        """
        last = self.last if self.last is not None else answer_frame(EMPTY_ANSWER).iloc[0:0]
        at = resolve_at(last, at)
        if self.last is not None:
            check_order(self.last["Timestamp"].iloc[0], at, "at")
        enc = encode_candidates(encoder, [(last, candidates, at)])
        if enc is None:
            raise ValueError("no candidates to encode")
        ff = frame_rows(enc.ff, enc.candidate_rows(0))
        tag_counts = np.array([self.tags.get(int(t), (0, 0)) for t in ff.cat["tag"]], dtype=np.float64)
        tag_counts = tag_counts.reshape(-1, 2)
        k = len(ff)
        counts = count_features(
            np.full(k, float(self.n)), np.full(k, float(self.correct)), tag_counts[:, 0], tag_counts[:, 1]
        )
        ff.cont[:, :N_COUNT_COLUMNS] = np.stack(counts, axis=1).astype(np.float32)
        return ff

    def after(self, encoder: FeatureEncoder, answer: Mapping[str, Any]) -> tuple[FeatureFrame, StudentFeatures]:
        """(the answer's own row of features, the state after it).

        A row's features never include its own answer, so the answer's row is encoded as a candidate
        shown at its Timestamp; the answer then moves the counts.
        """
        row = answer_frame(answer)
        ts = row["Timestamp"].iloc[0]
        if self.last is not None:
            check_order(self.last["Timestamp"].iloc[0], ts)
        ff = self.encode(encoder, row, ts)
        ff.answer[:] = row["answerCode"].to_numpy()
        code = int(row["answerCode"].iloc[0])
        state = replace(self, position=self.position + 1, last=row)
        if code >= 0:
            tag = int(ff.cat["tag"][0])
            n, c = self.tags.get(tag, (0, 0))
            state = replace(
                state, n=self.n + 1, correct=self.correct + code, tags={**self.tags, tag: (n + 1, c + code)}
            )
        return ff, state
