"""The mastery levels (dkt/mastery.py): the rules of its docstring, and the evidence read off a history."""

from __future__ import annotations

import pandas as pd
import pytest

from dkt.mastery import LEVELS, RECENT, RULES, level, shown_mastery, skill_evidence, skill_levels


def row(tag: int, code: int, ts: str) -> dict:
    return {"KnowledgeTag": tag, "answerCode": code, "Timestamp": ts}


def test_levels_are_ordered_and_every_rule_names_one() -> None:
    assert LEVELS == ("not started", "practising", "familiar", "proficient", "mastered")
    assert [r.level for r in RULES] == list(reversed(LEVELS[1:]))  # highest first, the first that holds wins


@pytest.mark.parametrize("mastery", [None, 0.0, 0.5, 0.99])
def test_no_evidence_is_not_started_whatever_the_model_says(mastery: float | None) -> None:
    assert level(mastery, 0) == "not started"
    assert level(mastery, 0, [1, 1, 1]) == "not started"  # recent answers without a count are no evidence


@pytest.mark.parametrize(
    ("mastery", "evidence", "recent", "expected"),
    [
        (0.99, 1, [1], "practising"),  # one lucky answer never reads more than practising
        (0.40, 9, [1, 1, 1, 1, 1], "practising"),  # the model says no
        (None, 9, [1, 1, 1, 1, 1], "practising"),  # no model figure: evidence alone claims no more
        (0.55, 2, [0, 1], "familiar"),
        (0.90, 2, [0, 0], "practising"),  # familiar needs a right answer among the recent ones
        (0.70, 4, [1, 0, 1, 1], "proficient"),
        (0.70, 3, [1, 1, 1], "familiar"),  # proficient needs 4 answers
        (0.95, 9, [1, 0, 1, 0, 1], "familiar"),  # two recent mistakes: not proficient, however high the model
        (0.85, 6, [1, 1, 1, 1, 1], "mastered"),
        (0.84, 6, [1, 1, 1, 1, 1], "proficient"),
        (0.95, 5, [1, 1, 1, 1, 1], "proficient"),  # mastered needs 6 answers
        (0.95, 9, [1, 1, 1, 1, 0], "proficient"),  # the last answer wrong: not mastered
        (0.95, 9, [0, 0, 0, 1, 1, 1, 1, 1], "mastered"),  # only the last RECENT answers count
    ],
)
def test_level_rules(mastery: float | None, evidence: int, recent: list[int], expected: str) -> None:
    assert level(mastery, evidence, recent) == expected


def test_skill_evidence_counts_answers_in_time_order_and_keeps_the_last_few() -> None:
    history = [row(7, 1, f"2020-01-01 10:00:{s:02d}") for s in range(10, 10 + RECENT + 2)]
    history[-1]["answerCode"] = 0  # the latest answer in skill 7
    history += [
        row(7, 0, "2020-01-01 09:00:00"),  # earliest, listed last: time decides the order, not the list
        row(3, 1, "2020-01-01 11:00:00"),
        row(3, -1, "2020-01-01 11:00:05"),  # not answered: no evidence
        row(5, -1, "2020-01-01 11:00:06"),
    ]
    ev = skill_evidence(history)
    assert ev == {7: (RECENT + 3, [1] * (RECENT - 1) + [0]), 3: (1, [1])}
    assert skill_evidence(pd.DataFrame(history).assign(Timestamp=lambda d: pd.to_datetime(d["Timestamp"]))) == ev
    assert skill_evidence([]) == {}


def test_skill_levels_is_what_knowledge_state_returns_per_skill() -> None:
    history = [row(3, 1, f"2020-01-01 10:00:0{i}") for i in range(2)]
    assert skill_levels({4: 0.9, 3: 0.6}, history) == [
        {"KnowledgeTag": 3, "mastery": 0.6, "skill_mastery": None, "level": "familiar", "evidence": 2},
        {"KnowledgeTag": 4, "mastery": 0.9, "skill_mastery": None, "level": "not started", "evidence": 0},
    ]
    # With the skills' own masteries the level is decided from them, and a skill without answers shows none.
    assert skill_levels({4: 0.9, 3: 0.9}, history, {3: 0.5, 4: 0.99}) == [
        {"KnowledgeTag": 3, "mastery": 0.9, "skill_mastery": 0.5, "level": "practising", "evidence": 2},
        {"KnowledgeTag": 4, "mastery": 0.9, "skill_mastery": None, "level": "not started", "evidence": 0},
    ]


def test_a_page_shows_the_skills_own_mastery_where_there_is_one() -> None:
    assert shown_mastery({"mastery": 0.6, "skill_mastery": 0.8}) == 0.8
    assert shown_mastery({"mastery": 0.6, "skill_mastery": None}) == 0.6  # no answers in the skill
    assert shown_mastery({"mastery": 0.6}) == 0.6  # a service from before skill_mastery
