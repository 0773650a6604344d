"""Every torch sequence model in the registry: output contract, causality, padding, clear errors, real learning.

Batches come from real features of simulated students, so causality is checked
through the same encoding that training and serving use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bench.step_bench import torch_layers
from dkt.config import ConfigError, TrainParams, load_config, parse_config
from dkt.cuda_graphs import masked_loss, shape_classes
from dkt.data.features import CATEGORICAL, CONT_COLUMNS, CONTINUOUS, FIRST, RESPONSE, FeatureEncoder, FeatureFrame
from dkt.data.schema import COLUMNS, validate
from dkt.data.sequences import PAD_ROW, Batcher, make_windows, window_lengths
from dkt.metrics import auc
from dkt.models import kind_class, model_names
from dkt.models.base import LocalConv
from dkt.models.sequence import SequenceKind
from dkt.scoring import score_windows
from dkt.simulate import simulate
from dkt.training import fit_sequence_model, seed_everything

REPO = Path(__file__).resolve().parents[3]
# Every registered torch sequence kind: a new kind is checked here without being listed (SMALL must size it).
MODELS = sorted(n for n in model_names() if issubclass(kind_class(n), SequenceKind))
NEW_MODELS = ["bert", "dkvmn", "lstmattn", "saint"]
SEQ_LEN = 50
BATCH_LEN = 200  # window of the batch-level tests: long enough for real padding, within every max_positions
# Small versions of each model: the contract does not depend on width, and small trains in seconds.
SMALL: dict[str, dict[str, Any]] = {
    "lstm": {"hidden_dim": 32, "embedding": "sum", "lstm_input": "sum", "head_dim": 32},  # config/lstm.json's options
    "lstmattn": {"hidden_dim": 32},
    "bert": {"hidden_dim": 32, "n_layers": 1},
    "saint": {"n_enc_layers": 1, "n_dec_layers": 1},
    "dkvmn": {"memory_size": 8, "key_dim": 16, "value_dim": 32},
    "akt": {"d_model": 16, "emb_dim": 8, "n_heads": 1},
    "simplekt": {"d_model": 16, "emb_dim": 8, "n_heads": 1, "n_blocks": 1},
}


def build_torch_model(name: str, params: dict[str, Any], sizes: dict[str, int]) -> nn.Module:
    kind = kind_class(name)
    assert issubclass(kind, SequenceKind)
    return kind.build(params, sizes)


def small_params(name: str) -> dict[str, Any]:
    return {"d_model": 32, "emb_dim": 16, **SMALL[name]}


@dataclass
class SimData:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    encoder: FeatureEncoder
    oracle_test_auc: float


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread: None) -> None:
    """Small models: a second intra-op thread only adds sync cost on a busy CPU."""


@pytest.fixture(scope="module")
def data() -> SimData:
    df = simulate(160, seed=11).interactions
    users = np.random.default_rng(0).permutation(np.sort(df["userID"].unique()))
    parts = [df[df["userID"].isin(u)].reset_index(drop=True) for u in (users[:100], users[100:120], users[120:])]
    train, valid, test = (
        validate(p[list(COLUMNS)], name) for p, name in zip(parts, ("train", "valid", "test"), strict=True)
    )
    oracle = auc(parts[2]["answerCode"].to_numpy(), parts[2]["p_true"].to_numpy())
    return SimData(train, valid, test, FeatureEncoder.fit(train), oracle)


def make_model(name: str, data: SimData, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_torch_model(name, small_params(name), data.encoder.sizes()).eval()


def one_user(data: SimData, min_len: int = SEQ_LEN) -> pd.DataFrame:
    lengths = data.test.groupby("userID").size()
    user = lengths[lengths >= min_len].index[0]
    rows = data.test[data.test["userID"] == user].sort_values("Timestamp", kind="stable")
    return rows.head(SEQ_LEN).reset_index(drop=True)


def batch_of(ff: FeatureFrame, width: int | None = None) -> dict[str, torch.Tensor]:
    """Every user of ``ff`` as one window (their last BATCH_LEN rows), padded on the right to ``width``."""
    windows = make_windows(ff, BATCH_LEN, last_only=True)
    index = windows.index[:, : int((windows.index != PAD_ROW).sum(axis=1).max())]
    if width is not None:
        index = np.pad(index, ((0, 0), (0, width - index.shape[1])), constant_values=PAD_ROW)
    return Batcher(ff).batch(index)


@torch.no_grad()
def logits_of(model: nn.Module, df: pd.DataFrame, data: SimData) -> np.ndarray:
    return model(batch_of(data.encoder.transform(df)))[0].numpy()


@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_one_finite_logit_per_position(name: str, data: SimData) -> None:
    ff = data.encoder.transform(data.test)
    batch = batch_of(ff)
    out = make_model(name, data)(batch)
    assert out.shape == batch["mask"].shape
    assert torch.isfinite(out).all()
    assert out[batch["mask"]].std() > 0  # not a constant


@pytest.mark.parametrize("name", MODELS)
def test_no_position_sees_any_input_after_it(name: str, data: SimData) -> None:
    model = make_model(name, data)
    batch = batch_of(data.encoder.transform(one_user(data)))
    k = SEQ_LEN // 2
    scrambled = {key: value.clone() for key, value in batch.items()}
    gen = torch.Generator().manual_seed(1)
    sizes = data.encoder.sizes()
    for key in (*CATEGORICAL, *RESPONSE):
        future = scrambled[key][:, k + 1 :]
        future.copy_(torch.randint(FIRST, sizes[key], future.shape, generator=gen))
    scrambled["cont"][:, k + 1 :] = torch.rand(scrambled["cont"][:, k + 1 :].shape, generator=gen)
    with torch.no_grad():
        before, after = model(batch)[0], model(scrambled)[0]
    torch.testing.assert_close(after[: k + 1], before[: k + 1], rtol=0, atol=1e-5)
    assert (after[k + 1 :] - before[k + 1 :]).abs().max() > 1e-4  # the scrambled part was really read


@pytest.mark.parametrize("name", MODELS)
def test_an_answer_changes_later_predictions_only(name: str, data: SimData) -> None:
    check_an_answer_changes_later_predictions_only(make_model(name, data), data)


def check_an_answer_changes_later_predictions_only(model: nn.Module, data: SimData) -> None:
    seq = one_user(data)
    k = SEQ_LEN // 2
    flipped = seq.copy()
    flipped.loc[k, "answerCode"] = 1 - flipped.loc[k, "answerCode"]
    before, after = logits_of(model, seq, data), logits_of(model, flipped, data)
    # The prediction for answer k itself must not know answer k.
    np.testing.assert_allclose(after[: k + 1], before[: k + 1], rtol=0, atol=1e-5)
    assert np.abs(after[k + 1] - before[k + 1]) > 1e-4, "the model ignores the previous answer"


def check_extra_padding_changes_nothing(model: nn.Module, data: SimData) -> None:
    """17 more padded positions on the right of every test user's window leave every real position's logit as it was."""
    tight = batch_of(data.encoder.transform(data.test))
    padded = batch_of(data.encoder.transform(data.test), width=tight["mask"].shape[1] + 17)
    with torch.no_grad():
        a, b = model(tight), model(padded)
    mask = tight["mask"]
    torch.testing.assert_close(b[:, : mask.shape[1]][mask], a[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_a_future_item_changes_nothing_before_it(name: str, data: SimData) -> None:
    model = make_model(name, data)
    seq = one_user(data)
    k = SEQ_LEN // 2
    other = data.train[data.train["KnowledgeTag"] != seq.loc[k, "KnowledgeTag"]].iloc[0]
    changed = seq.copy()
    changed.loc[k, ["assessmentItemID", "testId", "KnowledgeTag"]] = other[
        ["assessmentItemID", "testId", "KnowledgeTag"]
    ].to_numpy()
    before, after = logits_of(model, seq, data), logits_of(model, validate(changed, "changed"), data)
    np.testing.assert_allclose(after[:k], before[:k], rtol=0, atol=1e-5)
    assert np.abs(after[k] - before[k]) > 1e-4, "the model ignores the item it is asked about"


@pytest.mark.parametrize("name", MODELS)
def test_padding_never_changes_real_positions(name: str, data: SimData) -> None:
    model = make_model(name, data)
    ff = data.encoder.transform(data.test)
    lengths = np.minimum(ff.user_lengths, BATCH_LEN)
    tight = batch_of(ff)
    padded = batch_of(ff, width=tight["mask"].shape[1] + 17)
    # One short user alone: no padding at all, versus beside longer users in the batch.
    short = int(np.argmin(lengths))
    alone_ff = data.encoder.transform(data.test[data.test["userID"] == ff.users[short]])
    with torch.no_grad():
        a, b = model(tight), model(padded)
        alone = model(batch_of(alone_ff))[0]
    mask = tight["mask"]
    torch.testing.assert_close(b[:, : mask.shape[1]][mask], a[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(a[short][mask[short]], alone[: int(lengths[short])], rtol=0, atol=1e-5)
    assert lengths.min() < tight["mask"].shape[1]  # the batch really was padded


@pytest.mark.parametrize("name", MODELS)
def test_weights_round_trip_through_a_state_dict(name: str, data: SimData) -> None:
    model = make_model(name, data, seed=0)
    fresh = make_model(name, data, seed=1)
    fresh.load_state_dict(model.state_dict())
    batch = batch_of(data.encoder.transform(data.test))
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch), model(batch))


@pytest.mark.parametrize("name", MODELS)
def test_unknown_parameter_is_named(name: str, data: SimData) -> None:
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['hiden_dim'\]"):
        build_torch_model(name, {"hiden_dim": 64}, data.encoder.sizes())


BAD_PARAMS = [
    ("lstmattn", {"hidden_dim": 30, "n_heads": 4}, "hidden_dim .30. must be divisible by n_heads .4."),
    ("lstmattn", {"n_attn_layers": 0}, "n_attn_layers must be a positive integer"),
    ("bert", {"hidden_dim": 100, "n_heads": 3}, "hidden_dim .100. must be divisible by n_heads .3."),
    ("bert", {"dropout": 1.5}, "dropout must be in"),
    ("bert", {"attn_dropout": 1.0}, "attn_dropout must be in .0, 1., got 1.0"),
    ("saint", {"attn_dropout": -0.1}, "attn_dropout must be in"),
    ("lstmattn", {"dropout": "0.2"}, "dropout must be in .0, 1., got .0.2."),
    ("saint", {"d_model": 30, "n_heads": 4}, "d_model .30. must be divisible by n_heads .4."),
    ("saint", {"n_dec_layers": "2"}, "n_dec_layers must be a positive integer, got '2'"),
    ("dkvmn", {"memory_size": 0}, "memory_size must be a positive integer"),
    ("dkvmn", {"emb_dropout": -0.1}, "emb_dropout must be in"),
    ("akt", {"d_model": 30, "n_heads": 4}, "d_model .30. must be divisible by n_heads .4."),
    ("simplekt", {"n_blocks": 0}, "n_blocks must be a positive integer"),
    ("lstm", {"order_inputs": "yes"}, "order_inputs must be true or false, got 'yes'"),
    ("saint", {"decoder_query": 1}, "decoder_query must be true or false, got 1"),
    ("bert", {"local_conv": -1}, "local_conv must be an integer >= 0 .0: none., got -1"),
    ("saint", {"local_conv": 2.5}, "local_conv must be an integer >= 0 .0: none., got 2.5"),
    ("bert", {"local_conv": True}, "local_conv must be an integer >= 0 .0: none., got True"),
]


@pytest.mark.parametrize(("name", "params", "message"), BAD_PARAMS)
def test_bad_parameter_value_is_named(name: str, params: dict[str, Any], message: str, data: SimData) -> None:
    with pytest.raises(ValueError, match=message):
        build_torch_model(name, params, data.encoder.sizes())


@pytest.mark.parametrize("name", MODELS)
def test_the_order_columns_are_read_only_where_the_config_asks(name: str, data: SimData) -> None:
    """Every FeatureFrame carries the eight order columns after the five counts; a model built without
    ``order_inputs`` (every bundle trained before them) scores exactly as if they were not there, and one built with
    it reads them."""
    batch = batch_of(data.encoder.transform(data.test))
    assert batch["cont"].shape[-1] == len(CONT_COLUMNS)
    other = {**batch, "cont": batch["cont"].clone()}
    other["cont"][..., len(CONTINUOUS) :] = torch.rand(other["cont"][..., len(CONTINUOUS) :].shape)
    for order_inputs in (False, True):
        torch.manual_seed(0)
        model = build_torch_model(name, small_params(name) | {"order_inputs": order_inputs}, data.encoder.sizes())
        with torch.no_grad():
            a, b = model.eval()(batch), model(other)
        assert torch.equal(a, b) is not order_inputs, order_inputs


@pytest.mark.parametrize("name", ["bert", "saint"])
def test_sequence_longer_than_positions_is_a_clear_error(name: str, data: SimData) -> None:
    model = build_torch_model(name, small_params(name) | {"max_positions": 8}, data.encoder.sizes())
    with pytest.raises(ValueError, match=r"sequence length \d+ exceeds model_params.max_positions \(8\)"):
        model(batch_of(data.encoder.transform(one_user(data))))


# The options of the full-split ALiBi runs (docs/sequence-models.md); the shipped configs keep the position table.
ALIBI = {"positions": "alibi", "embedding": "sum", "dropout": 0.0}


@pytest.mark.parametrize("name", ["bert", "saint"])
def test_alibi_keeps_causality_and_padding(name: str, data: SimData) -> None:
    torch.manual_seed(0)
    model = build_torch_model(name, small_params(name) | ALIBI, data.encoder.sizes()).eval()
    check_an_answer_changes_later_predictions_only(model, data)
    check_extra_padding_changes_nothing(model, data)


@pytest.mark.parametrize("name", ["bert", "saint"])
def test_alibi_reads_no_position_table(name: str, data: SimData) -> None:
    """ALiBi's bias depends on distances only: a window longer than max_positions is scored, not refused."""
    short = build_torch_model(name, small_params(name) | ALIBI | {"max_positions": 8}, data.encoder.sizes()).eval()
    with torch.no_grad():
        out = short(batch_of(data.encoder.transform(one_user(data))))
    assert out.shape[1] > 8 and torch.isfinite(out).all()


@pytest.mark.parametrize("positions", ["alibi", "learned", "none"])
def test_saint_attention_gives_what_torchs_own_layers_give(positions: str, data: SimData) -> None:
    """saint runs its torch layers' weights through ``attend`` (one ALiBi bias broadcast over the batch): outputs and
    gradients are those of the layers' own forward with the repeated float mask, so old bundles score the same."""
    params = small_params("saint") | {"positions": positions, "dropout": 0.0, "decoder_query": True, "local_conv": 4}
    torch.manual_seed(0)
    model = build_torch_model("saint", params, data.encoder.sizes()).train()
    batch = batch_of(data.encoder.transform(data.test))
    assert batch["mask"].shape[0] > 1 and not batch["mask"].all()  # several users, right padding

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)  # the same embedding-dropout draw in both runs
        out = model(batch)
        out[batch["mask"]].sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ours, our_grads = run()
    with torch_layers():  # saint's path before round 13 (bench/step_bench.py --torch-layers times the two)
        theirs, their_grads = run()
    mask = batch["mask"]
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)
    assert len(our_grads) == len(their_grads) > 10
    for a, b in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_saint_decoder_query_gives_the_decoder_the_asked_item(data: SimData) -> None:
    """With ``decoder_query`` the decoder's input at t holds the item asked at t (so one decoder layer can weigh past
    answers by the asked item); without it, the paper's form, it holds the responses before t only. Either way the
    model stays causal and padding changes nothing."""
    ff = data.encoder.transform(one_user(data))
    batch = batch_of(ff)
    other = {**batch, "item": batch["item"].clone()}
    t = 10
    other["item"][0, t] = 1 + other["item"][0, t] % (data.encoder.sizes()["item"] - 1)  # another row of the item table
    assert not torch.equal(other["item"], batch["item"])
    for decoder_query in (False, True):
        torch.manual_seed(0)
        params = small_params("saint") | {"decoder_query": decoder_query}
        model = build_torch_model("saint", params, data.encoder.sizes()).eval()
        seen: list[torch.Tensor] = []

        def record(_module: nn.Module, args: tuple[torch.Tensor, ...], seen: list[torch.Tensor] = seen) -> None:
            seen.append(args[0].clone())

        hook = model.decoder[0].norm1.register_forward_pre_hook(record)  # the first decoder layer's input
        with torch.no_grad():
            model(batch), model(other)
        hook.remove()
        changed = (seen[0] != seen[1]).any(dim=-1)[0]
        assert changed[t].item() is decoder_query, decoder_query
        assert not changed[:t].any() and not changed[t + 1 :].any()
        check_an_answer_changes_later_predictions_only(model, data)
        check_extra_padding_changes_nothing(model, data)


def test_local_conv_reads_each_position_and_the_kernel_minus_one_before_it() -> None:
    """LocalConv's output at t moves with its input at t - kernel + 1 .. t and with nothing else: the last answers
    exactly, never a later one."""
    torch.manual_seed(0)
    conv, kernel, t = LocalConv(8, 4), 4, 12
    x = torch.randn(2, 20, 8)
    nudged = x.clone()
    nudged[:, t] += 1.0
    with torch.no_grad():
        moved = (conv(nudged) - conv(x)).abs().amax(dim=-1) > 0  # (batch, time)
    expected = torch.zeros(20, dtype=torch.bool)
    expected[t : t + kernel] = True
    assert torch.equal(moved[0], expected) and torch.equal(moved[1], expected)


@pytest.mark.parametrize("name", ["bert", "saint"])
def test_local_conv_keeps_causality_and_padding_and_is_read(name: str, data: SimData) -> None:
    """With ``local_conv`` (the shipped bert and saint) an answer still changes later predictions only and padding
    changes nothing; and the convolution is in the model's path: zeroing its weights changes the scores."""
    torch.manual_seed(0)
    model = build_torch_model(name, small_params(name) | ALIBI | {"local_conv": 4}, data.encoder.sizes()).eval()
    check_an_answer_changes_later_predictions_only(model, data)
    check_extra_padding_changes_nothing(model, data)
    batch = batch_of(data.encoder.transform(one_user(data)))
    convs = [m for m in model.modules() if isinstance(m, LocalConv)]
    assert len(convs) == {"bert": 1, "saint": 2}[name]
    with torch.no_grad():
        before = model(batch)
        for c in convs:
            c.conv.weight.zero_()
            c.conv.bias.zero_()
        assert (model(batch) - before).abs().max() > 1e-4


def train_mode_outputs(model: nn.Module, data: SimData) -> tuple[torch.Tensor, torch.Tensor]:
    """Two training-mode forward passes over the same batch: equal unless a dropout mask was drawn."""
    batch = batch_of(data.encoder.transform(data.test))
    model.train()
    with torch.no_grad():
        return model(batch), model(batch)


@pytest.mark.parametrize("name", ["bert", "saint"])
def test_attn_dropout_drops_the_attention_probabilities_only(name: str, data: SimData) -> None:
    """attn_dropout alone decides the attention's masks: with every other dropout at 0, a training pass is random
    exactly when attn_dropout is above 0; and unset, it follows ``dropout`` (the shipped configs' behaviour)."""
    quiet = small_params(name) | {"dropout": 0.0, "emb_dropout": 0.0}
    for params, random in (
        (quiet | {"attn_dropout": 0.5}, True),
        (quiet | {"attn_dropout": 0.0}, False),
        (quiet, False),
        (small_params(name) | {"dropout": 0.5, "emb_dropout": 0.0}, True),
    ):
        torch.manual_seed(0)
        a, b = train_mode_outputs(build_torch_model(name, params, data.encoder.sizes()), data)
        assert (not torch.equal(a, b)) is random, params
    # attn_dropout 0 turns off the attention's dropout only: with ``dropout`` on, a training pass stays random.
    torch.manual_seed(0)
    model = build_torch_model(name, quiet | {"dropout": 0.5, "attn_dropout": 0.0}, data.encoder.sizes())
    a, b = train_mode_outputs(model, data)
    assert not torch.equal(a, b)


@pytest.mark.slow  # trains every kind until it learns: most of this file's time, kept out of `make test-fast`
@pytest.mark.parametrize("name", MODELS)
def test_learns_from_history_beyond_item_difficulty(name: str, data: SimData) -> None:
    seed_everything(0)
    model = build_torch_model(name, small_params(name), data.encoder.sizes())
    params = TrainParams(max_seq_len=SEQ_LEN, batch_size=32, lr=0.005, epochs=10, patience=10, warmup_ratio=0.1)
    train_ff, test_ff = data.encoder.transform(data.train), data.encoder.transform(data.test)
    fit_sequence_model(
        model, train_ff, data.encoder.transform(data.valid), params, torch.device("cpu"), 0, progress=False
    )
    windows = make_windows(test_ff, SEQ_LEN, SEQ_LEN // 2)
    prob = score_windows(model, Batcher(test_ff), windows, len(test_ff), 256, torch.device("cpu"))
    model_auc = auc(np.clip(test_ff.answer, 0, 1), prob)
    # Knowing each item's difficulty alone (its mean in training) is the bar a sequence model must clear.
    item_mean = data.train.groupby("assessmentItemID")["answerCode"].mean()
    p_item = data.test["assessmentItemID"].map(item_mean).fillna(data.train["answerCode"].mean())
    baseline = auc(data.test["answerCode"].to_numpy(), p_item.to_numpy())
    assert model_auc > baseline + 0.03, (model_auc, baseline)
    # Beating the simulator's own P(correct) would mean the model saw the answers it predicts.
    assert model_auc < data.oracle_test_auc + 0.01, (model_auc, data.oracle_test_auc)


@pytest.mark.parametrize(("name", "params", "message"), BAD_PARAMS[:3])
def test_bad_parameter_fails_when_the_config_is_read(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"exp\.json: invalid config\n.*{message}"):
        parse_config({"model": name, "model_params": params}, "exp.json")


@pytest.mark.parametrize("name", MODELS)
def test_shipped_config_builds_its_model(name: str, data: SimData) -> None:
    config = load_config(REPO / "config" / f"{name}.json")
    assert config.model == name
    assert config.model_params.get("max_positions", config.train.max_seq_len) >= config.train.max_seq_len
    build_torch_model(name, config.model_params, data.encoder.sizes())


@pytest.mark.parametrize("name", MODELS)
def test_a_step_on_a_batch_padded_to_its_cuda_graph_shape_is_the_same_step(name: str, data: SimData) -> None:
    """CUDA graphs replay fixed shapes (dkt.cuda_graphs): a batch padded with whole windows and positions of padding
    must give every kind the same loss and the same gradients as the batch as it was."""
    ff = data.encoder.transform(data.train)
    windows = make_windows(ff, BATCH_LEN, BATCH_LEN)
    classes = shape_classes(window_lengths(windows), BATCH_LEN, 32, 1000)
    steps = []
    for pad_to in (None, classes.of):
        model = make_model(name, data)  # eval mode: no dropout, so both steps are one computation
        rng = np.random.default_rng(3)
        _, batch = next(Batcher(ff).iterate(windows, 32, shuffle=True, rng=rng, batch_tokens=1000, pad_to=pad_to))
        loss = masked_loss(nn.BCEWithLogitsLoss(reduction="none"), model(batch), batch)
        loss.backward()
        steps.append((batch["mask"].shape, loss, [p.grad for p in model.parameters() if p.grad is not None]))
    (tight, loss, grads), (padded, padded_loss, padded_grads) = steps
    assert padded[0] > tight[0] or padded[1] > tight[1], (tight, padded)  # the batch really was padded
    torch.testing.assert_close(padded_loss, loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(padded_grads) > 0
    for g, pg in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(pg, g, rtol=1e-4, atol=1e-6)
