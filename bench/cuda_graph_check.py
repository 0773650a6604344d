"""Step for step: the training loop with CUDA graphs (``train.cuda_graphs``) against the same loop without them.

    bash bench/gpu_run.sh --graph-check                                        # on a lent GPU machine (docs/gpu.md)
    .venv/bin/python bench/cuda_graph_check.py --device cpu --max-students 100  # here: proves the script runs

lstm (config/lstm.json) trains twice from one seed through the real loop (``dkt.training.fit_sequence_model``), with
dropout 0 and AMP off so both runs compute the same function with no random masks, in fp32: once with
``train.cuda_graphs`` and once without. Both draw the same batches in the same order (the order comes from the
seed); the graphed run pads each to its shape class, which changes nothing a step computes
(tests/dkt/models/test_sequence_models.py). A learning rate read a step late, a warm-up whose updates were not
undone or gradients kept from another graph would part the runs within an epoch; kernel rounding parts them by
far less. Prints each epoch's training loss and validation AUC for both and the largest weight difference; exit 1
when a difference is over its tolerance, 2 on bad input. On the CPU the flag is ignored, so both runs are eager and
agree exactly: that proves the script, not the graphs (docs/training-speed.md, round 9).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.train_speed_bench import add_data_arguments, config_and_data, with_changes  # noqa: E402
from dkt.config import ConfigError  # noqa: E402
from dkt.data.features import FeatureEncoder  # noqa: E402
from dkt.data.schema import DataValidationError  # noqa: E402
from dkt.models import kind_class  # noqa: E402
from dkt.models.sequence import SequenceKind  # noqa: E402
from dkt.training import fit_sequence_model, seed_everything  # noqa: E402

# Fixed so the two runs compute one function: no dropout masks to draw, fp32 throughout.
SAME_FUNCTION = ["model_params.dropout=0", "train.amp=false"]
LOSS_TOL, AUC_TOL, WEIGHT_TOL = 1e-3, 2e-3, 1e-2  # rounding of other kernels and orders, over a few hundred steps


def weight_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[str, float]:
    """The tensor whose largest difference, relative to its largest magnitude, is largest, and that difference."""
    gaps = {
        k: float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)) for k in a if a[k].is_floating_point()
    }
    name = max(gaps, key=gaps.__getitem__)
    return name, gaps[name]


def compare(runs: dict[bool, tuple[list[dict[str, float]], dict[str, torch.Tensor]]]) -> list[str]:
    """Every difference over its tolerance between the graphed run (True) and the eager one (False), as lines."""
    (eager_h, eager_w), (graph_h, graph_w) = runs[False], runs[True]
    bad = []
    if len(eager_h) != len(graph_h):
        bad.append(f"epochs run: {len(graph_h)} graphed against {len(eager_h)} eager")
    for e, g in zip(eager_h, graph_h, strict=False):
        for key, tol in (("train_loss", LOSS_TOL), ("valid_auc", AUC_TOL)):
            if abs(e[key] - g[key]) > tol:
                gap = f"{g[key]:.6f} graphed against {e[key]:.6f} eager (tolerance {tol})"
                bad.append(f"epoch {e['epoch']} {key}: {gap}")
    name, gap = weight_gap(eager_w, graph_w)
    if gap > WEIGHT_TOL:
        bad.append(f"weights {name}: differ by {gap:.2e} of their largest magnitude (tolerance {WEIGHT_TOL})")
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=2, help="epochs each run trains (default 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if args.epochs < 1:
        print("error: --epochs must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg, data = config_and_data(args)
        kind = kind_class(cfg.model)
        if not issubclass(kind, SequenceKind):
            raise ConfigError(f"--config: {cfg.model} is not a sequence model; the check trains one")
        cfg = with_changes(cfg, SAME_FUNCTION, "the check's own --set")
    except (ConfigError, DataValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    encoder = FeatureEncoder.fit(data.train)
    train_ff, valid_ff = encoder.transform(data.train), encoder.transform(data.valid)
    runs: dict[bool, tuple[list[dict[str, float]], dict[str, Any]]] = {}
    for graphs in (False, True):
        seed_everything(args.seed)
        model = kind.build(cfg.model_params, encoder.sizes())
        params = cfg.train.model_copy(update={"cuda_graphs": graphs, "epochs": args.epochs, "patience": args.epochs})
        fit = fit_sequence_model(
            model, train_ff, valid_ff, params, torch.device(args.device), args.seed, progress=False
        )
        runs[graphs] = (fit.history, {k: v.detach().float().cpu() for k, v in model.state_dict().items()})

    print("| epoch | train loss, eager | graphed | valid AUC, eager | graphed |\n|---|---|---|---|---|")
    for e, g in zip(runs[False][0], runs[True][0], strict=False):
        losses, aucs = f"{e['train_loss']:.6f} | {g['train_loss']:.6f}", f"{e['valid_auc']:.6f} | {g['valid_auc']:.6f}"
        print(f"| {e['epoch']} | {losses} | {aucs} |")
    name, gap = weight_gap(runs[False][1], runs[True][1])
    print(f"largest weight difference: {gap:.2e} of the tensor's largest magnitude ({name})")
    bad = compare(runs)
    for line in bad:
        print(f"FAIL {line}")
    print("the graphed loop trains what the eager one does" if not bad else f"{len(bad)} difference(s) over tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
