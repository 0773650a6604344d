"""Choosing the next question and gathering what the page shows after an answer.

Skills are shown by name (``skill_label``: "Addition, level 2"), never by KnowledgeTag; tests by their skill
and number within it (``ItemBank.test_label``). Prerequisites come from the item bank's skill order
(dkt/itembank.py SKILLS, operation x level): a skill's prerequisite is the same operation one level lower
(``prerequisites``); level-1 skills have none. Levels are dkt/mastery.py's."""

from __future__ import annotations

import random
from typing import Any

from client.inference import InferenceClient, InferenceUnavailable
from dkt.itembank import SKILLS, load_questions
from dkt.mastery import LEVELS, level, shown_mastery, skill_evidence

OPERATION_NAMES = {"add": "Addition", "sub": "Subtraction", "mul": "Multiplication", "div": "Division"}
TAG_SKILL = {s.tag: s for s in SKILLS}


def skill_label(tag: int) -> str:
    """A skill's name for people: "Addition, level 2"; a skill the bank's generator does not know: "New skill"."""
    skill = TAG_SKILL.get(int(tag))
    return f"{OPERATION_NAMES[skill.op]}, level {skill.level}" if skill is not None else "New skill"


def prerequisites(tag: int) -> list[int]:
    """The skills to master before ``tag``: the same operation one level lower (none for level 1 or unknown)."""
    skill = TAG_SKILL.get(int(tag))
    if skill is None or skill.level == 1:
        return []
    return [next(s.tag for s in SKILLS if s.op == skill.op and s.level == skill.level - 1)]


def skill_order(tag: int) -> tuple[int, int]:
    """Easiest first: level, then operation (the bank's base difficulty grows that way); unknown skills last."""
    skill = TAG_SKILL.get(int(tag))
    return (skill.level, SKILLS.index(skill)) if skill is not None else (99, int(tag))


class ItemBank:
    def __init__(self, path: str):
        self.df = load_questions(path)
        self.by_id: dict[str, dict[str, Any]] = {
            str(r["assessmentItemID"]): {**r, "KnowledgeTag": int(r["KnowledgeTag"])}
            for r in self.df.to_dict("records")
        }
        self.by_test: dict[str, list[str]] = self.df.groupby("testId")["assessmentItemID"].apply(list).to_dict()
        self.tags: list[int] = sorted({int(t) for t in self.df["KnowledgeTag"]}, key=skill_order)
        # Each skill's tests in id order: "test 2" of a skill is its second.
        self.tests_of: dict[int, list[str]] = {
            int(tag): sorted(g["testId"].unique()) for tag, g in self.df.groupby("KnowledgeTag")
        }

    def test_label(self, test_id: str) -> str:
        items = self.by_test.get(test_id) or []
        if not items:
            return "a test"
        tag = int(self.by_id[items[0]]["KnowledgeTag"])
        return f"{skill_label(tag)} test {self.tests_of[tag].index(test_id) + 1}"

    def skill_items(self, tag: int, answered: set[str]) -> list[dict[str, Any]]:
        """The skill's items not answered yet (all of them again once the student has answered each)."""
        items = self.df[self.df["KnowledgeTag"] == int(tag)]["assessmentItemID"].tolist()
        return [self.by_id[i] for i in ([i for i in items if i not in answered] or items)]

    def item(self, item_id: str) -> dict[str, Any] | None:
        return self.by_id.get(item_id)

    def pool(
        self, answered: set[str], size: int, seed: int, skip_tags: frozenset[int] = frozenset()
    ) -> list[dict[str, Any]]:
        """Up to ``size`` unanswered items spread over every skill not in ``skip_tags`` (all items again once
        the bank is done)."""
        left = self.df[~self.df["assessmentItemID"].isin(answered) & ~self.df["KnowledgeTag"].isin(skip_tags)]
        if left.empty:
            left = self.df[~self.df["KnowledgeTag"].isin(skip_tags)] if skip_tags else self.df
        if left.empty:
            left = self.df
        per_tag = max(1, size // max(1, left["KnowledgeTag"].nunique()))
        sample = left.groupby("KnowledgeTag", group_keys=False).apply(
            lambda g: g.sample(min(len(g), per_tag), random_state=seed)
        )
        return [self.by_id[i] for i in sample["assessmentItemID"].head(size)]

    def first_question(self) -> dict[str, Any]:
        """Where a new student starts: the easiest item (a gentle start, the same for everyone)."""
        easiest = self.df.sort_values(["difficulty", "assessmentItemID"]).iloc[0]
        return self.by_id[str(easiest["assessmentItemID"])]

    def fallback_next(self, answered: set[str], last: dict[str, Any] | None, seed: int) -> dict[str, Any]:
        """Without predictions: the next unanswered item of the current test, else a random unanswered one."""
        if last is not None:
            for item in self.by_test.get(str(last["testId"]), []):
                if item not in answered:
                    return self.by_id[item]
        left = [i for i in self.by_id if i not in answered] or list(self.by_id)
        return self.by_id[random.Random(seed).choice(sorted(left))]


def _item_body(q: dict[str, Any]) -> dict[str, Any]:
    return {"assessmentItemID": q["assessmentItemID"], "testId": q["testId"], "KnowledgeTag": int(q["KnowledgeTag"])}


def choose(probs: list[float], ids: list[str], target: float, explore_rate: float, seed: int) -> tuple[int, bool]:
    """The index of the next question among the candidates, and whether it was explored.

    With probability ``explore_rate`` (drawn from ``seed``: the same student and position choose the same) the
    question is a uniformly random candidate: the answers to those are the only ones whose question the
    production model did not select, so online quality and the shadow gate measure the models on them
    (docs/monitoring.md#exploration). Otherwise: the candidate whose probability is closest to ``target``.
    """
    rng = random.Random(f"explore:{seed}")  # its own stream: the pool's sample uses ``seed`` itself
    if rng.random() < explore_rate:
        return rng.randrange(len(probs)), True
    return min(range(len(probs)), key=lambda i: (abs(probs[i] - target), ids[i])), False


def knowledge_state(
    client: InferenceClient, history: list[dict[str, Any]], request_id: str | None = None
) -> list[dict[str, Any]]:
    """Per skill: ``tag``, ``name``, the model's ``mastery``, the ``level`` and its ``evidence`` (answers in it).

    The service's ``/knowledge_state`` gives level and evidence (dkt/mastery.py); a service from before it
    gave only mastery, and then the same ``dkt.mastery.level`` is applied here to the same history."""
    state = client.post("/knowledge_state", {"history": history}, request_id)
    evidence = skill_evidence(history)
    skills = []
    for s in state["skills"]:
        tag = int(s["KnowledgeTag"])
        mastery = shown_mastery(s)  # the skill's own mastery where there is one (docs/mastery.md)
        n, recent = evidence.get(tag, (0, []))
        lvl = str(s["level"]) if s.get("level") in LEVELS else level(mastery, n, recent)
        skills.append(
            {
                "tag": tag,
                "name": skill_label(tag),
                "mastery": mastery,
                "level": lvl,
                "evidence": int(s.get("evidence", n)),
            }
        )
    return sorted(skills, key=lambda s: skill_order(s["tag"]))


def insights(
    client: InferenceClient,
    bank: ItemBank,
    history: list[dict[str, Any]],
    pool: list[dict[str, Any]],
    target: float,
    seed: int,
    skills: list[dict[str, Any]],
    at: str | None = None,
    request_id: str | None = None,
    explore_rate: float = 0.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The next question among ``pool`` and what to show; raises ``InferenceUnavailable`` when the service
    cannot answer. ``skills``: ``knowledge_state``'s answer for the same history.

    ``at`` is when the next question will be shown (its Timestamp to be): the service scores candidates as
    if asked then, which is what the model was trained on (docs/time-semantics.md). ``request_id`` is sent
    with each call; ``shown`` carries the model's name, version and the next question's probability, which
    the prediction log records, and under ``shadow`` the shadow model's probability for the same question when
    the service scored one (the page never shows it; it is logged beside production's). ``explored``: the
    question was drawn at random (``explore_rate``, see ``choose``), not chosen by ``target``.
    """
    body: dict[str, Any] = {"history": history, "candidates": [_item_body(q) for q in pool]}
    if at is not None:
        body["at"] = at
    pred = client.post("/predict", body, request_id)
    probs = [float(p["probability"]) for p in pred["predictions"]]
    if len(probs) != len(pool):  # one per candidate, in order, or the choice below would read past the list
        raise InferenceUnavailable(f"/predict answered {len(probs)} predictions for {len(pool)} candidates")
    best, explored = choose(probs, [str(q["assessmentItemID"]) for q in pool], target, explore_rate, seed)
    nxt = pool[best]
    # The test the next question belongs to: within a skill's session it is one of that skill's tests.
    test_items = [bank.by_id[i] for i in bank.by_test.get(str(nxt["testId"]), [])]
    score = client.post("/score", {"history": history, "questions": [_item_body(q) for q in test_items]}, request_id)
    test_score = {
        "testId": nxt["testId"],
        "name": bank.test_label(str(nxt["testId"])),
        "score": float(score["expected_score"]),
        "n": len(test_items),
    }
    shown = {
        "available": True,
        "next_probability": probs[best],
        "skills": skills,
        "test_score": test_score,
        "model_name": pred.get("model_name"),
        "model_version": pred.get("model_version"),
        "target": target,
        "explored": explored,
    }
    if shadow := _shadow_probability(pred.get("shadow"), best, len(pool)):
        shown["shadow"] = shadow
    return nxt, shown


def _shadow_probability(shadow: Any, best: int, n: int) -> dict[str, Any] | None:
    """The shadow's name, version and probability for the chosen candidate; None when the response has no
    usable shadow field (no shadow deployed, the shadow failed on the batch, or a malformed field)."""
    if not isinstance(shadow, dict) or not shadow.get("model_version"):
        return None
    probs = shadow.get("probabilities")
    if not isinstance(probs, list) or len(probs) != n:
        return None
    return {
        "model_name": shadow.get("model_name"),
        "model_version": str(shadow["model_version"]),
        "probability": float(probs[best]),
    }


def logged_predictions(shown: dict[str, Any]) -> list[dict[str, Any]]:
    """What the prediction log keeps of ``insights``' result: production's probability for the chosen question,
    and the shadow's beside it when there was one (none when the service named no production model version: it
    could not be attributed, and a shadow row alone would compare the shadow with nothing). Both rows carry
    ``explored``: whether the question was drawn at random."""
    if not shown.get("available") or not shown.get("model_version"):
        return []
    explored = bool(shown.get("explored"))
    logged = [
        {
            "role": "production",
            "model_name": shown.get("model_name"),
            "model_version": str(shown["model_version"]),
            "probability": float(shown["next_probability"]),
            "explored": explored,
        }
    ]
    if shadow := shown.get("shadow"):
        logged.append({"role": "shadow", **shadow, "explored": explored})
    return logged


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason[:200]}


__all__ = [
    "InferenceUnavailable",
    "ItemBank",
    "choose",
    "insights",
    "knowledge_state",
    "logged_predictions",
    "prerequisites",
    "skill_label",
    "unavailable",
]
