"""The service's request bodies: every field is checked (400 naming it) before a job reaches the model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from serving.settings import settings

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
# Whose history a request carries, for the per-student state cache (serving/state_cache.py); optional.
StudentId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
# How many of the student's answers the service's cached state holds and the request leaves out (a returning
# client's last ``known_count``): the history carries only the answers after them (serving/state_cache.py).
Since = Annotated[int, Field(strict=True, ge=0, le=10**9)]
Tag = Annotated[int, Field(strict=True, ge=0, le=2**62)]  # a JSON integer: `true` or "7" is not a skill


def _timestamp(value: str) -> str:
    """ISO 8601 (``2020-03-24 00:17:11``, ``2020-03-24T00:17:11Z``...) normalised to naive UTC."""
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"bad timestamp {value[:40]!r}; expected ISO 8601 like '2020-03-24 00:17:11'") from None
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    if not 1970 <= ts.year <= 2100:
        raise ValueError(f"timestamp {value[:40]!r} is outside 1970..2100")
    return ts.isoformat(sep=" ")


Timestamp = Annotated[str, StringConstraints(max_length=40), AfterValidator(_timestamp)]


class Item(BaseModel):
    model_config = ConfigDict(extra="ignore")

    assessmentItemID: Id
    testId: Id
    KnowledgeTag: Tag


class Interaction(Item):
    userID: Annotated[str, StringConstraints(max_length=64)] | None = None  # one student per request: ignored
    answerCode: int = Field(strict=True, ge=-1, le=1)
    Timestamp: Timestamp


def _no_duplicates(history: list[Interaction]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(history):
        key = (row.assessmentItemID, row.Timestamp)
        if key in seen:
            raise ValueError(f"history[{i}] repeats history[{seen[key]}] (same assessmentItemID and Timestamp)")
        seen[key] = i


class HistoryRequest(BaseModel):
    history: list[Interaction] = Field(default_factory=list, max_length=settings.max_history)

    @model_validator(mode="after")
    def _check(self) -> HistoryRequest:
        _no_duplicates(self.history)
        return self


class Job(HistoryRequest):
    """One student's history and the items to score after it: the unit the batcher merges."""

    candidates: list[Item] = Field(default_factory=list, max_length=settings.max_candidates)
    at: Timestamp | None = None
