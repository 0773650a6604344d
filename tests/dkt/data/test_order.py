"""The order of a student's answers (``dkt.data.order``): as network inputs, in the encoder's table and in a served
student's state, which must give every row the same numbers bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dkt.data.features import CONT_COLUMNS, CONTINUOUS, FeatureEncoder
from dkt.data.order import ORDER, ORDER_INPUTS, OrderState, order_features, scale_inputs
from dkt.data.schema import COLUMNS, validate
from dkt.models.inputs import StudentFeatures
from dkt.simulate import simulate

ORDER_COLUMNS = slice(len(CONTINUOUS), len(CONT_COLUMNS))


def test_inputs_are_scaled_to_plus_minus_one_with_nothing_before_as_zero() -> None:
    """Answers and decayed accuracies as 2y - 1, streaks over 10 (capped), the gap log-scaled to 1 at 1,000 answers;
    NaN (nothing before) is 0."""
    nan = float("nan")
    values = np.array(
        [
            [1.0, 0.0, nan, 3.0, 1.0, 0.75, -12.0, 0.25],
            [nan, nan, nan, nan, nan, nan, nan, nan],
            [0.0, 1.0, 1.0, -10.0, 5000.0, 0.0, 10.0, 1.0],
        ]
    )
    got = scale_inputs(values)
    assert got.dtype == np.float32 and list(ORDER_INPUTS) == [f"order_{n}" for n in ORDER]
    np.testing.assert_allclose(got[0], [1, -1, 0, 0.3, np.log(2) / np.log(1001), 0.5, -1, -0.5], rtol=1e-6)
    np.testing.assert_array_equal(got[1], np.zeros(8))
    np.testing.assert_allclose(got[2], [-1, 1, 1, -1, 1, -1, 1, 1])


def test_the_encoder_appends_the_order_keyed_by_the_encoded_skill() -> None:
    """The encoder's last eight continuous columns are the scaled order features of each row's earlier answers,
    per student, keyed by the encoded skill: two skills it has never seen share the unknown key."""
    rows = [
        ("a", "A060001001", "A060000001", 1, "2020-01-01 00:00:00", 7),
        ("a", "A060001002", "A060000001", 0, "2020-01-01 00:00:07", 7),
        ("a", "A070002001", "A070000002", 1, "2020-01-01 00:01:00", 8),
        ("a", "A060001001", "A060000001", 1, "2020-01-01 00:02:00", 7),
        ("b", "A060001001", "A060000001", 0, "2020-01-02 00:00:00", 7),
    ]
    df = validate(pd.DataFrame(rows, columns=list(COLUMNS)), "t")
    enc = FeatureEncoder.fit(df)
    ff = enc.transform(df)
    assert ff.cont.shape == (5, len(CONT_COLUMNS))
    order = ff.cont[:, ORDER_COLUMNS]
    # Row 3 (a, skill 7 again): 7's answers 1, 0 -> last 0 (-1), last2 1, streak -1, two answers since, ewm 1/3.
    np.testing.assert_allclose(order[3, :6], [-1, 1, 0, -0.1, np.log(3) / np.log(1001), 2 * (0.5 / 1.5) - 1], rtol=1e-6)
    np.testing.assert_array_equal(order[4], np.zeros(8))  # b's first row: nothing before
    want = scale_inputs(order_features(np.array([0, 0, 0, 0, 1]), ff.cat["tag"].tolist(), ff.answer))
    np.testing.assert_array_equal(order, want)
    # Unseen skills 98 and 99 both encode as unknown: the second reads the first's answer as its own skill's.
    new = validate(
        pd.DataFrame(
            [("c", "A1", "T1", 1, "2020-01-03 00:00:00", 98), ("c", "A2", "T1", 0, "2020-01-03 00:01:00", 99)],
            columns=list(COLUMNS),
        ),
        "t",
    )
    assert enc.transform(new).cont[1, len(CONTINUOUS)] == 1.0  # tag_last: right


@pytest.fixture(scope="module")
def history() -> tuple[FeatureEncoder, pd.DataFrame]:
    """A long simulated student with unanswered rows and ties, and an encoder fitted without them."""
    df = validate(simulate(12, seed=9).interactions[list(COLUMNS)], "sim")
    users = df["userID"].value_counts().index
    enc = FeatureEncoder.fit(df[df["userID"] != users[0]])
    hist = df[df["userID"] == users[0]].sort_values("Timestamp", kind="stable").reset_index(drop=True)
    hist.loc[hist.index % 9 == 4, "answerCode"] = -1
    assert len(hist) > 60 and (hist["answerCode"] == -1).any()
    return enc, hist


def test_a_served_student_steps_to_the_encoder_s_columns_bit_for_bit(
    history: tuple[FeatureEncoder, pd.DataFrame],
) -> None:
    """``StudentFeatures.after`` one answer at a time gives each row the continuous columns the batch encoding gives
    it, order columns included, bit for bit; ``StudentFeatures.of`` reaches the stepped state in one pass; and a
    candidate scored after the history gets the columns of an unanswered row in the table."""
    enc, hist = history
    batch = enc.encode_table(hist)
    state, rows = StudentFeatures(), []
    for i, answer in enumerate(hist.to_dict("records")):
        if i == len(hist) // 2:
            assert StudentFeatures.of(enc.encode_table(hist.iloc[:i]), hist.iloc[:i]) == state
        row, state = state.after(enc, answer)
        rows.append(row.cont[0])
    np.testing.assert_array_equal(np.stack(rows), batch.cont)
    assert np.abs(batch.cont[:, ORDER_COLUMNS]).sum() > 0
    assert StudentFeatures.of(batch, hist) == state
    # The next item, shown after the last answer, as a candidate and as an unanswered row of the table.
    nxt = hist.iloc[[len(hist) // 3]].copy()
    nxt["Timestamp"] = hist["Timestamp"].iloc[-1] + pd.Timedelta(seconds=30)
    nxt["answerCode"] = -1
    cand = state.encode(enc, nxt, nxt["Timestamp"].iloc[0])
    np.testing.assert_array_equal(cand.cont[0], enc.encode_table(pd.concat([hist, nxt], ignore_index=True)).cont[-1])


def test_order_state_steps_as_the_batch_pass() -> None:
    """``OrderState.after`` (serving's frozen state) and ``OrderState.of`` give the rows ``order_features`` gives,
    NaNs in the same places."""
    rng = np.random.default_rng(1)
    tags = rng.integers(0, 4, 50).tolist()
    answers = rng.choice([-1, 0, 1], 50, p=[0.1, 0.4, 0.5])
    batch = order_features(np.zeros(50, dtype=np.int64), tags, answers)
    state = OrderState()
    for i, (t, a) in enumerate(zip(tags, answers.tolist(), strict=True)):
        np.testing.assert_array_equal(np.array(state.row(t)), batch[i])
        if a >= 0:
            state = state.after(t, float(a))
    assert OrderState.of(tags, answers) == state
