"""A minimal reference DKT (Piech et al. 2015): the baseline bench/train_speed_bench.py times our lstm against.

An LSTM over (skill, answer) embeddings; at step t it reads the interaction before t (a start token at a
sequence's first step) and predicts the answer at t from the output for skill t, so every position is predicted.
Adam, batches of padded chunks of at most ``max_len`` answers, early stopping on validation AUC with ``patience``.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from dkt.metrics import auc

Seq = tuple[np.ndarray, np.ndarray]  # (skill index 0..n_skills-1, answer 0/1) of one student, in time order


class MinDKT(nn.Module):
    def __init__(self, n_skills: int, hidden: int = 128):
        super().__init__()
        self.emb = nn.Embedding(2 * n_skills + 1, hidden)  # 0: start; 1 + skill + n_skills * answer
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_skills)

    def forward(self, prev: torch.Tensor, skill: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(prev))
        return self.out(h).gather(-1, skill.unsqueeze(-1)).squeeze(-1)


def tensors(seqs: list[Seq], n_skills: int, max_len: int) -> tuple[torch.Tensor, ...]:
    """(previous interaction, skill, answer, mask), each (chunks, max_len): sequences cut into chunks, padded."""
    cuts = [(s[i : i + max_len], a[i : i + max_len]) for s, a in seqs for i in range(0, len(s), max_len)]
    prev, skill, ans = (np.zeros((len(cuts), max_len), np.int64) for _ in range(3))
    mask = np.zeros((len(cuts), max_len), bool)
    for k, (s, a) in enumerate(cuts):
        n = len(s)
        skill[k, :n], ans[k, :n], mask[k, :n] = s, a, True
        prev[k, 1:n] = 1 + s[:-1] + n_skills * a[:-1]
    return tuple(torch.from_numpy(x) for x in (prev, skill, ans, mask))


def predict(model: MinDKT, data: tuple[torch.Tensor, ...], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        starts = range(0, len(data[0]), batch_size)
        p = [torch.sigmoid(model(*(x[i : i + batch_size].to(dev) for x in data[:2]))).cpu() for i in starts]
    mask = data[3].numpy()
    return data[2].numpy()[mask], torch.cat(p).numpy()[mask]


def fit(train: list[Seq], valid: list[Seq], n_skills: int, max_len: int = 200, batch_size: int = 64,
        lr: float = 2e-3, epochs: int = 30, patience: int = 3, seed: int = 42,
        device: str = "cpu", foreach: bool | None = None) -> tuple[MinDKT, dict]:  # fmt: skip
    """Train to early stopping; the model ends with its best epoch's weights. Returns (model, summary).
    ``foreach``: Adam's implementation (None: torch's default for the device)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, tr, va = MinDKT(n_skills).to(device), tensors(train, n_skills, max_len), tensors(valid, n_skills, max_len)
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=foreach)
    best, best_epoch, best_state, t0, epoch = -1.0, 0, None, time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        model.train()
        for sel in np.array_split(rng.permutation(len(tr[0])), max(1, -(-len(tr[0]) // batch_size))):
            width = int(tr[3][sel].sum(1).max())  # trim all-padding columns
            prev, skill, ans, mask = (x[sel, :width].to(device) for x in tr)
            loss = nn.functional.binary_cross_entropy_with_logits(model(prev, skill)[mask], ans[mask].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
        v_auc = auc(*predict(model, va))
        if v_auc > best:
            best, best_epoch, best_state = v_auc, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    return model, {"seconds": seconds, "epochs": epoch, "best_epoch": best_epoch, "valid_auc": best}
