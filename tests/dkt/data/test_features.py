from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dkt.data import features
from dkt.data.features import CONTINUOUS, FIRST, UNK, FeatureEncoder, FeatureFrame
from dkt.data.schema import COLUMNS, validate
from dkt.simulate import simulate


def frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["userID", "assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]
    return validate(pd.DataFrame(rows, columns=cols), "test")


TRAIN = frame(
    [
        ("a", "A060001001", "A060000001", 1, "2020-01-01 00:00:00", 7),
        ("a", "A060001002", "A060000001", 0, "2020-01-01 00:00:07", 7),
        ("a", "A070002001", "A070000002", 1, "2020-01-01 03:00:00", 8),
        ("b", "A060001001", "A060000001", 0, "2020-01-02 00:00:00", 7),
    ]
)


def test_item_id_parts_and_unknown_values() -> None:
    enc = FeatureEncoder.fit(TRAIN)
    assert set(enc.vocab["head"]) == {"060", "070"}
    assert set(enc.vocab["paper"]) == {"060001", "070002"}
    assert set(enc.vocab["tail"]) == {"001", "002"}
    new = frame([("c", "A999009009", "A999000009", 1, "2020-01-03", 99)])
    ff = enc.transform(new)
    for name in ("item", "test", "tag", "head", "paper", "tail"):
        assert ff.cat[name][0] == UNK, name


def test_rows_sorted_by_user_and_time_with_mapping_back() -> None:
    shuffled = TRAIN.iloc[[3, 2, 0, 1]].reset_index(drop=True)
    ff = FeatureEncoder.fit(TRAIN).transform(shuffled)
    assert list(ff.users) == ["a", "b"]
    assert ff.user_starts.tolist() == [0, 3, 4]
    assert ff.row_index.tolist() == [2, 3, 1, 0]


def test_running_features_use_only_earlier_answers() -> None:
    ff = FeatureEncoder.fit(TRAIN).transform(TRAIN)
    acc = ff.cont[:, CONTINUOUS.index("user_acc")]
    # (correct + 1) / (answered + 2) over answers strictly before the row.
    np.testing.assert_allclose(acc, [1 / 2, 2 / 3, 2 / 4, 1 / 2])
    tag_acc = ff.cont[:, CONTINUOUS.index("tag_acc")]
    np.testing.assert_allclose(tag_acc, [1 / 2, 2 / 3, 1 / 2, 1 / 2])
    # Previous answer tokens: none for a user's first row, then wrong/correct of the row before.
    assert ff.resp["prev_answer"].tolist() == [UNK, FIRST + 1, FIRST + 0, UNK]


def test_elapsed_is_capped_and_bucketed() -> None:
    ff = FeatureEncoder.fit(TRAIN).transform(TRAIN)
    elapsed = ff.cont[:, CONTINUOUS.index("elapsed_s")]
    np.testing.assert_allclose(elapsed, [0, 7 / 600, 1.0, 0], atol=1e-6)  # 3 hours -> capped at 600 s
    assert ff.cat["elapsed"][0] == UNK and ff.cat["elapsed"][3] == UNK
    assert FIRST < ff.cat["elapsed"][1] < ff.cat["elapsed"][2]


def test_encoder_round_trips_through_json() -> None:
    enc = FeatureEncoder.fit(TRAIN)
    again = FeatureEncoder.from_dict(enc.to_dict())
    assert again.vocab == enc.vocab
    assert again.sizes() == enc.sizes()


def test_encoders_fit_on_labelled_training_rows_only() -> None:
    with_target = pd.concat(
        [TRAIN, frame([("z", "A555001001", "A555000001", -1, "2020-01-05", 55)])], ignore_index=True
    )
    enc = FeatureEncoder.fit(with_target)
    assert "A555001001" not in enc.vocab["item"]


def test_features_at_t_ignore_the_answer_and_response_time_of_t() -> None:
    """The time rule: nothing decided once item t is shown (its answer, how long it took) reaches row t."""
    sim = simulate(6, seed=2)
    df = validate(sim.interactions[sim.interactions["userID"] == "u00001"][list(COLUMNS)], "sim").head(40)
    enc = FeatureEncoder.fit(sim.interactions[list(COLUMNS)])
    base = enc.transform(df)
    t = 25
    # Item t answered the other way and 10 minutes more slowly: its answer changes, and every later
    # shown-at time moves by the extra response time. Rows up to t must not change.
    changed = df.copy()
    changed.loc[t, "answerCode"] = 1 - changed.loc[t, "answerCode"]
    changed.loc[t + 1 :, "Timestamp"] += pd.Timedelta(minutes=10)
    after = enc.transform(changed)
    before_f, after_f = base.cat | base.resp, after.cat | after.resp
    for name in before_f:
        np.testing.assert_array_equal(before_f[name][: t + 1], after_f[name][: t + 1], err_msg=name)
    np.testing.assert_array_equal(base.cont[: t + 1], after.cont[: t + 1])
    # The change is seen from t + 1 on: its previous answer and the elapsed time before it.
    for name in ("prev_answer", "elapsed"):
        assert before_f[name][t + 1] != after_f[name][t + 1], name


def assert_same_frame(got: FeatureFrame, want: FeatureFrame) -> None:
    """Every array of two encodings equal, dtypes included."""
    assert got.users.dtype == want.users.dtype and got.users.tolist() == want.users.tolist()
    for name in ("user_starts", "row_index", "answer", "cont"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    for group in ("cat", "resp"):
        a, b = getattr(got, group), getattr(want, group)
        assert list(a) == list(b), group
        for name in b:
            assert a[name].dtype == b[name].dtype, name
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_one_student_fast_path_equals_the_table_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A served cold student is encoded from columns (``encode_columns``) and small tables from lists: both give
    exactly what the pandas path of a large table gives, for real simulated histories with unseen items and skills,
    unlabelled rows, tied timestamps, rows out of order, and no rows at all."""
    sim = simulate(10, seed=5)
    df = validate(sim.interactions[list(COLUMNS)], "sim")
    users = sorted(df["userID"].unique())
    enc = FeatureEncoder.fit(df[~df["userID"].isin(users[:3])])  # the first 3 students' unseen items/skills -> UNK
    rng = np.random.default_rng(0)
    students = []
    for u in users[:6]:
        g = df[df["userID"] == u].head(120).reset_index(drop=True)
        g.loc[g.index % 7 == 3, "Timestamp"] = g["Timestamp"].shift(1)  # ties: shown in the same second
        g.loc[g.index % 11 == 5, "answerCode"] = -1
        students.append(g.iloc[rng.permutation(len(g))].reset_index(drop=True))  # out of order
    students.append(df.iloc[:0])
    monkeypatch.setattr(features, "SMALL_TABLE", -1)  # the reference: pandas' vectorised path
    want = [enc.transform(g) for g in students]
    monkeypatch.undo()
    unseen = 0
    for g, ref in zip(students, want, strict=True):
        assert_same_frame(enc.transform(g), ref)
        user = str(g["userID"].iloc[0]) if len(g) else "0"
        fast = enc.encode_columns(
            g["assessmentItemID"].tolist(),
            g["testId"].tolist(),
            g["answerCode"].to_numpy(),
            g["Timestamp"].astype(str).tolist(),  # as serving holds them: ISO strings
            g["KnowledgeTag"].tolist(),
            user,
        )
        assert_same_frame(fast, ref)
        unseen += int((fast.cat["item"] == UNK).sum() + (fast.cat["tag"] == UNK).sum())
    assert unseen > 0  # the unseen cases were exercised
    assert len(want[-1]) == 0


def test_running_skill_counts_match_a_count_of_earlier_rows() -> None:
    """The per (student, skill) counts against a plain count of each row's earlier labelled answers, in a table
    of many students large enough for the vectorised path."""
    df = validate(simulate(40, seed=4).interactions[list(COLUMNS)], "sim")
    assert len(df) > features.SMALL_TABLE
    ff = FeatureEncoder.fit(df).transform(df)
    rows = df.iloc[ff.row_index]
    seen: dict[tuple[str, int], list[int]] = {}
    want_n, want_c = [], []
    for user, tag, code in zip(rows["userID"], rows["KnowledgeTag"], rows["answerCode"], strict=True):
        n, c = seen.setdefault((user, int(tag)), [0, 0])
        want_n.append(n)
        want_c.append(c)
        if code >= 0:
            seen[user, int(tag)] = [n + 1, c + int(code)]
    got = ff.cont[:, CONTINUOUS.index("tag_acc")]
    np.testing.assert_allclose(got, (np.array(want_c) + 1.0) / (np.array(want_n) + 2.0), rtol=1e-6)
