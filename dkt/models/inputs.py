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
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from dkt.data.features import (
    CATEGORICAL,
    CONTINUOUS,
    ELAPSED_BOUNDS_S,
    ELAPSED_CAP_S,
    FIRST,
    RESPONSE,
    UNK,
    FeatureEncoder,
    FeatureFrame,
    count_features,
)
from dkt.data.order import OrderState, scale_inputs

ELAPSED_COLUMN = CONTINUOUS.index("elapsed_s")
N_COUNT_COLUMNS = 4  # the first CONTINUOUS columns come from count_features
HISTORY_COLUMNS = ("assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag")

Job = tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]  # (history, candidates, at)


def resolve_at(history: pd.DataFrame, at: pd.Timestamp | str | None) -> pd.Timestamp:
    """When the candidates are shown (naive UTC): ``at``, or by default now.

    The default is never before the history's last answer: a caller that gives no time means "next",
    and a clock a little behind the one that stamped the answers must not hide them.
    """
    return resolve_after(history["Timestamp"].max() if len(history) else None, at)


def resolve_after(last: pd.Timestamp | None, at: pd.Timestamp | str | None) -> pd.Timestamp:
    """``resolve_at`` given only the time of the last answer (None: no answers)."""
    if at is not None:
        ts = pd.Timestamp(at)
        return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    return now if last is None else max(now, last)


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
    columns: dict[str, Any]  # the encoded table's columns (``table``), in input order
    jobs: list[tuple[int, int, int]]  # (job number, n history rows, k candidates)

    @cached_property
    def table(self) -> pd.DataFrame:
        """The encoded table in input order (``ff.row_index`` maps sorted rows into it); built only for a kind
        that reads it (LightGBM's raw columns), not on every request."""
        answers = self.columns["answerCode"].astype("int8")  # the dtype ``validate`` gives
        return pd.DataFrame({**self.columns, "answerCode": answers}, columns=[*HISTORY_COLUMNS, "userID"])

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

    The rows go to the encoder as columns (``FeatureEncoder.encode_columns``), not as a concatenated table:
    per request, pandas' table building cost more than the encoding.
    """
    parts: dict[str, list[Any]] = {c: [] for c in (*HISTORY_COLUMNS, "userID")}
    layout = []
    for j, (history, candidates, at) in enumerate(jobs):
        k = len(candidates)
        if k == 0:
            continue
        at = resolve_at(history, at)
        known = (history["Timestamp"] <= at).to_numpy()  # ``known_before``
        n = int(known.sum())
        # Candidates come after the history in input order: the stable time sort keeps them after
        # answers given in the same second, as an answerCode -1 row after them in a file would be.
        parts["assessmentItemID"] += [*history["assessmentItemID"].to_numpy()[known].tolist()]
        parts["assessmentItemID"] += candidates["assessmentItemID"].astype(str).tolist()
        parts["testId"] += [*history["testId"].to_numpy()[known].tolist(), *candidates["testId"].astype(str).tolist()]
        parts["answerCode"] += [history["answerCode"].to_numpy()[known].astype(np.int64), np.full(k, -1, np.int64)]
        at64 = np.datetime64(at.value, "ns")
        parts["Timestamp"] += [history["Timestamp"].to_numpy()[known].astype("datetime64[ns]"), np.full(k, at64)]
        parts["KnowledgeTag"] += [*history["KnowledgeTag"].to_numpy()[known].tolist()]
        parts["KnowledgeTag"] += candidates["KnowledgeTag"].astype("int64").tolist()
        parts["userID"] += [f"{len(layout):08d}"] * (n + k)  # zero-padded: users sort in job order
        layout.append((j, n, k))
    if not layout:
        return None
    columns = {
        **parts,
        "answerCode": np.concatenate(parts["answerCode"]),
        "Timestamp": np.concatenate(parts["Timestamp"]),
        "userID": np.array(parts["userID"], dtype=object),
    }
    ff = encoder.encode_columns(*(columns[c] for c in HISTORY_COLUMNS), columns["userID"])
    for u, (_, n, k) in enumerate(layout):
        first = int(ff.user_starts[u]) + n
        ff.cat["elapsed"][first + 1 : first + k] = ff.cat["elapsed"][first]
        for name in ff.resp:
            ff.resp[name][first + 1 : first + k] = ff.resp[name][first]
        ff.cont[first + 1 : first + k, ELAPSED_COLUMN] = ff.cont[first, ELAPSED_COLUMN]
    return EncodedCandidates(ff=ff, columns=columns, jobs=layout)


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

# A student's candidates as serving holds them: item ids, test ids, KnowledgeTags, and when they are shown.
CandidateColumns = tuple[list[str], list[str], list[int], pd.Timestamp | None]


def candidate_columns(candidates: pd.DataFrame) -> tuple[list[str], list[str], list[int]]:
    """A candidates frame's (item ids, test ids, KnowledgeTags) as lists."""
    items = candidates["assessmentItemID"].astype(str).tolist()
    tests = candidates["testId"].astype(str).tolist()
    return items, tests, candidates["KnowledgeTag"].astype("int64").tolist()


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
    response). A value: ``after`` returns a new one and never changes this one. Plain numbers, no
    pandas: a serving cache keeps one per student, and one step must cost microseconds, not a table.
    """

    position: int = 0  # answers so far: the position the next row takes in the student's history
    n: int = 0  # labelled answers so far
    correct: int = 0
    tags: Mapping[int, tuple[int, int]] = field(default_factory=dict)  # encoded tag -> (labelled, correct)
    last_ts: pd.Timestamp | None = None  # the last answer: when it was shown ...
    last_code: int = -1  # ... its answerCode ...
    last_tag: int = UNK  # ... and its encoded tag and item (the previous-response tokens)
    last_item: int = UNK
    order: OrderState = field(default_factory=OrderState)  # the order of the labelled answers (dkt.data.order)

    def encode(self, encoder: FeatureEncoder, candidates: pd.DataFrame, at: pd.Timestamp | None) -> FeatureFrame:
        """Features of each candidate shown at ``at`` (default now) after these answers, one row each:
        what ``encode_candidates`` gives them after the whole history (``FeatureEncoder.transform``'s rules,
        per row, without building a table)."""
        return self.encode_items(encoder, *candidate_columns(candidates), at)

    def encode_items(
        self, encoder: FeatureEncoder, items: list[str], tests: list[str], tags: list[int], at: pd.Timestamp | None
    ) -> FeatureFrame:
        """``encode`` from the candidates' columns as lists."""
        at = resolve_after(self.last_ts, at)
        if self.last_ts is not None:
            check_order(self.last_ts, at, "at")
        k = len(items)
        raw = {
            "item": items,
            "test": tests,
            "tag": [str(int(t)) for t in tags],
            "head": [i[1:4] for i in items],
            "paper": [i[1:7] for i in items],
            "tail": [i[7:10] for i in items],
        }
        # The encoder's vocabularies looked up directly (``encode_column``'s rule: unseen -> UNK).
        cat = {
            name: np.array([encoder.vocab[name].get(v, UNK) for v in values], dtype=np.int64)
            for name, values in raw.items()
        }
        if self.last_ts is None:  # the first row of a student: no previous row
            elapsed, bucket = 0.0, UNK
            prev = {name: UNK for name in RESPONSE}
        else:
            # As transform computes it: seconds since the epoch as float64, then the difference.
            seconds = min(max(at.value / 1e9 - self.last_ts.value / 1e9, 0.0), ELAPSED_CAP_S)
            bucket = int(np.searchsorted(ELAPSED_BOUNDS_S, seconds, side="right")) + FIRST
            elapsed = seconds / ELAPSED_CAP_S
            known = self.last_code >= 0
            prev = {
                "prev_answer": self.last_code + FIRST if known else FIRST + 2,
                "prev_tag_resp": FIRST + 2 * self.last_tag + self.last_code if known else UNK,
                "prev_item_resp": FIRST + 2 * self.last_item + self.last_code if known else UNK,
            }
        cat["elapsed"] = np.full(k, bucket, dtype=np.int64)
        tag_counts = np.array([self.tags.get(int(t), (0, 0)) for t in cat["tag"]], dtype=np.float64).reshape(-1, 2)
        counts = count_features(
            np.full(k, float(self.n)), np.full(k, float(self.correct)), tag_counts[:, 0], tag_counts[:, 1]
        )
        cont = np.stack([*counts, np.full(k, elapsed)], axis=1).astype(np.float32)
        cont = np.concatenate([cont, scale_inputs(self.order.rows(cat["tag"].tolist()))], axis=1)
        return FeatureFrame(
            users=np.array(["0"], dtype=object),
            user_starts=np.array([0, k], dtype=np.int64),
            row_index=np.arange(k, dtype=np.int64),
            answer=np.full(k, -1, dtype=np.int64),
            cat={name: cat[name] for name in CATEGORICAL},
            resp={name: np.full(k, prev[name], dtype=np.int64) for name in RESPONSE},
            cont=cont,
        )

    def after(self, encoder: FeatureEncoder, answer: Mapping[str, Any]) -> tuple[FeatureFrame, StudentFeatures]:
        """(the answer's own row of features, the state after it).

        A row's features never include its own answer, so the answer's row is encoded as a candidate
        shown at its Timestamp; the answer then moves the counts.
        """
        missing = [c for c in HISTORY_COLUMNS if c not in answer]
        if missing:
            raise ValueError(f"an answer needs {list(HISTORY_COLUMNS)}; missing {missing}")
        ts = resolve_after(None, answer["Timestamp"])
        if self.last_ts is not None:
            check_order(self.last_ts, ts)
        item, test = str(answer["assessmentItemID"]), str(answer["testId"])
        ff = self.encode_items(encoder, [item], [test], [int(answer["KnowledgeTag"])], ts)
        code = int(answer["answerCode"])
        ff.answer[:] = code
        tag, item = int(ff.cat["tag"][0]), int(ff.cat["item"][0])
        state = replace(self, position=self.position + 1, last_ts=ts, last_code=code, last_tag=tag, last_item=item)
        if code >= 0:
            n, c = self.tags.get(tag, (0, 0))
            state = replace(
                state,
                n=self.n + 1,
                correct=self.correct + code,
                tags={**self.tags, tag: (n + 1, c + code)},
                order=self.order.after(tag, float(code)),
            )
        return ff, state

    @classmethod
    def of(cls, ff: FeatureFrame, history: pd.DataFrame) -> StudentFeatures:
        """The state after a history in one pass: ``history`` (one student, any order) and its encoding ``ff``
        (``FeatureEncoder.transform`` or ``encode_table`` of it, whose ``row_index`` maps its time order to
        ``history``'s rows), so a cold student costs one encoding, not a step per answer."""
        m = len(ff)
        if m == 0:
            return cls()
        answer = ff.answer.astype(np.int64)
        known = answer >= 0
        tags: dict[int, tuple[int, int]] = {}
        for tag, code in zip(ff.cat["tag"][known].tolist(), answer[known].tolist(), strict=True):
            n, c = tags.get(tag, (0, 0))
            tags[tag] = (n + 1, c + code)
        return cls(
            position=m,
            n=int(known.sum()),
            correct=int(answer[known].sum()),
            tags=tags,
            last_ts=pd.Timestamp(history["Timestamp"].iloc[int(ff.row_index[-1])]),
            last_code=int(answer[-1]),
            last_tag=int(ff.cat["tag"][-1]),
            last_item=int(ff.cat["item"][-1]),
            order=OrderState.of(ff.cat["tag"].tolist(), answer),
        )
