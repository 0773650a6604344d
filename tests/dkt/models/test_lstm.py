"""lstm's lighter input (``embedding`` "sum", ``lstm_input`` "sum", ``head_dim``): what it computes and its errors.

The contract every kind keeps (causality, padding, learning) is checked for lstm's shipped options in
test_sequence_models.py; here: that the summed embedding is the concatenated one re-parametrised, that the options
change the widths they name, and that a bad value is named when the config is read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from dkt.config import ConfigError, parse_config
from dkt.data.features import CATEGORICAL, CONTINUOUS, RESPONSE, FeatureEncoder
from dkt.data.sequences import Batcher, make_windows
from dkt.models.base import InputConfig, InputEmbedding, SequenceDropout
from dkt.models.lstm import LSTMKind, LSTMModel
from dkt.simulate import simulate


@pytest.fixture(scope="module")
def encoded() -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """(embedding sizes, one batch of every simulated user's last 40 answers)."""
    df = simulate(12, seed=3).interactions
    enc = FeatureEncoder.fit(df)
    ff = enc.transform(df)
    windows = make_windows(ff, 40, last_only=True)
    return enc.sizes(), Batcher(ff).batch(windows.index, windows.score)


def test_summed_embedding_is_the_concatenated_one_reparametrised(encoded: tuple[dict, dict]) -> None:
    """A projection of a concatenation is a sum of per-feature projections: each summed table set to its concat
    table times its block of the projection (and the bias carried by the continuous map) gives the same two
    vectors, so "sum" loses nothing that "concat" could learn."""
    sizes, batch = encoded
    torch.manual_seed(0)
    concat = InputEmbedding(InputConfig(d_model=24, emb_dim=8), sizes).eval()
    summed = InputEmbedding(InputConfig(d_model=24, emb_dim=8, embedding="sum"), sizes).eval()
    with torch.no_grad():
        for names, tables, proj in ((CATEGORICAL, "cat", "query_proj"), (RESPONSE, "resp", "inter_proj")):
            blocks = getattr(concat, proj).weight.split(8, dim=1)
            for name, block in zip(names, blocks, strict=False):
                getattr(summed, tables)[name].weight.copy_(getattr(concat, tables)[name].weight @ block.T)
        summed.cont_proj.weight.copy_(concat.query_proj.weight[:, -len(CONTINUOUS) :])
        summed.cont_proj.bias.copy_(concat.query_proj.bias)
        # The interaction's bias has no continuous map to ride on: it goes on every row of one of its tables, as
        # every position reads exactly one row of each.
        summed.resp["prev_answer"].weight.add_(concat.inter_proj.bias)
        (q_cat, i_cat), (q_sum, i_sum) = concat(batch), summed(batch)
    torch.testing.assert_close(q_sum, q_cat, rtol=0, atol=1e-5)
    torch.testing.assert_close(i_sum, i_cat, rtol=0, atol=1e-5)
    assert batch["mask"].sum() > 100 and (~batch["mask"]).any()  # real positions, and padding too


@pytest.mark.parametrize(
    ("params", "lstm_in", "head"),
    [({}, 32, 48), ({"lstm_input": "sum"}, 16, 48), ({"lstm_input": "sum", "head_dim": 8}, 16, 8)],
)
def test_options_set_the_lstm_input_and_head_widths(
    params: dict[str, Any], lstm_in: int, head: int, encoded: tuple[dict, dict]
) -> None:
    sizes, batch = encoded
    model = LSTMKind.build({"d_model": 16, "hidden_dim": 32, "embedding": "sum", **params}, sizes)
    assert isinstance(model, LSTMModel)
    assert model.lstm.input_size == lstm_in and model.head.net[0].out_features == head
    out = model.eval()(batch)
    assert out.shape == batch["mask"].shape and torch.isfinite(out).all()
    # The incremental step reads the same input: one LSTM step from zeros is the batch's first position.
    x, query = model.embed(batch)
    h, _ = model.lstm(x[:, :1])
    np.testing.assert_allclose(model.readout(h, query[:, :1])[:, 0].detach(), out[:, 0].detach(), atol=1e-6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lstm_input": "wide"}, r"LSTMConfig.lstm_input must be one of \('concat', 'sum'\), got 'wide'"),
        ({"embedding": "mean"}, r"LSTMConfig.embedding must be one of \('concat', 'sum'\), got 'mean'"),
        ({"head_dim": 0}, r"LSTMConfig.head_dim must be a positive integer, got 0"),
        ({"dropout_mask": "row"}, r"LSTMConfig.dropout_mask must be one of \('element', 'sequence'\), got 'row'"),
    ],
)
def test_a_bad_option_is_named_when_the_config_is_read(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"exp\.json: invalid config\n.*{message}"):
        parse_config({"model": "lstm", "model_params": params}, "exp.json")


def test_sequence_dropout_shares_one_mask_over_time_and_is_off_in_evaluation() -> None:
    """``dropout_mask`` "sequence": every time step of a sequence loses the same features, each kept one scaled by
    1 / (1 - p); sequences draw their own masks; evaluation passes the input through unchanged."""
    torch.manual_seed(0)
    x = torch.rand(64, 30, 16) + 0.5  # no zeros of its own: a zero in the output is a dropped feature
    drop = SequenceDropout(0.25).train()
    y = drop(x)
    kept = y != 0
    assert (kept == kept[:, :1]).all()  # the same features at every step of a sequence
    assert not (kept[:, 0] == kept[:1, 0]).all()  # not the same for every sequence
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 0.65 < kept[:, 0].float().mean() < 0.85  # about 1 - p kept
    assert torch.equal(drop.eval()(x), x)


def test_an_lstm_with_sequence_dropout_masks_its_input_and_head_per_sequence(encoded: tuple[dict, dict]) -> None:
    """The option reaches the input embedding's and the head's dropout; the model in evaluation (the scores that
    validation, test and serving read) is the same function as with element masks on the same weights."""
    sizes, batch = encoded
    params = {"d_model": 16, "hidden_dim": 32, "embedding": "sum", "lstm_input": "sum", "head_dim": 8}
    torch.manual_seed(1)
    seq = LSTMKind.build({**params, "dropout_mask": "sequence"}, sizes)
    elem = LSTMKind.build(params, sizes)
    elem.load_state_dict(seq.state_dict())  # the option adds no parameter: the same state loads either way
    assert isinstance(seq.inp.drop, SequenceDropout) and isinstance(seq.head.net[2], SequenceDropout)
    assert isinstance(elem.inp.drop, torch.nn.Dropout) and isinstance(elem.head.net[2], torch.nn.Dropout)
    torch.testing.assert_close(seq.eval()(batch), elem.eval()(batch), rtol=0, atol=0)
    seq.train()
    query, _ = seq.inp(batch)
    dropped = (query == 0) & batch["mask"][..., None]
    rows = batch["mask"].all(1)  # sequences with no padding: every step's dropped features are the same
    assert dropped[rows].any() and (dropped[rows] == dropped[rows][:, :1]).all()


def test_one_gather_sums_what_a_table_at_a_time_sums(encoded: tuple[dict, dict]) -> None:
    """The one-gather lookup (what CUDA runs) gives the per-table lookup's sums to the bit and the same gradients up to
    the order the backward adds them in, and, as nn.Embedding's padding_idx promises, no table's padding row moves."""
    sizes, batch = encoded
    torch.manual_seed(0)
    inp = InputEmbedding(InputConfig(d_model=24, embedding="sum", emb_dropout=0.0), sizes).train()
    outputs, grads = [], []
    for one in (False, True):
        inp.one_gather = one
        inp.zero_grad()
        query, interaction = inp(batch)
        (query.square().sum() + interaction.sum()).backward()
        outputs.append((query.detach(), interaction.detach()))
        grads.append({name: p.grad.clone() for name, p in inp.named_parameters()})
    assert torch.equal(outputs[1][0], outputs[0][0]) and torch.equal(outputs[1][1], outputs[0][1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-5)
        if name.startswith(("cat.", "resp.")):
            assert grads[1][name][1:].any() and not grads[1][name][0].any(), name
    assert (batch["item"] == 0).any()  # the batch has padded positions
