"""CPU cost of one training step of a sequence model (forward, loss, backward, AdamW), random inputs.

    .venv/bin/python bench/step_bench.py --model bert --set model_params.positions=alibi --set model_params.dropout=0
    .venv/bin/python bench/step_bench.py --model saint --profile       # where the step's time goes (torch.profiler)
    .venv/bin/python bench/step_bench.py --model saint --torch-layers  # saint's attention against torch's layers
    .venv/bin/python bench/step_bench.py --model lstm --vocab 20000 --optimizer fused   # AdamW as on CUDA
    .venv/bin/python bench/step_bench.py --model lstm --vocab 20000 --one-gather   # the input's lookup as on CUDA

The config is config/<model>.json (or a path) with --set overrides applied as in bench/kt_benchmark.py. A batch
of --batch windows x --len positions, every position real, every embedding table --vocab rows (default 200: the
model body's cost, which is what decides an epoch, docs/sequence-models.md, round 4; ASSISTments 2009's 3-line files
give tables of 3-222 rows, a product's item tables thousands, which the optimizer updates whole every step). AdamW is
the form dkt.training's loop runs on the CPU (torch's for-loop) unless --optimizer says otherwise, and --one-gather
looks the input up as CUDA does (dkt.models.base.InputEmbedding.summed_in_one_gather). Prints the minimum and median
CPU-s per step (time.process_time) over --steps steps after one warm-up step.

``--torch-layers`` (saint only) also times the same model through torch's own ``nn.TransformerEncoderLayer`` and
``nn.TransformerDecoderLayer`` forward with ALiBi as a (batch x heads, t, t) float mask, saint's path before round 13
(``torch_encoder_layer``, ``torch_decoder_layer``; tests/dkt/models/test_sequence_models.py checks saint's
``attend`` gives the same numbers). The two paths take turns, step by step, so a busy machine slows both alike;
the last line is their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.kt_benchmark import override  # noqa: E402
from dkt.config import ConfigError, parse_config  # noqa: E402
from dkt.data.features import CATEGORICAL, CONT_COLUMNS, FIRST, RESPONSE  # noqa: E402
from dkt.models import saint  # noqa: E402
from dkt.models.base import InputEmbedding, causal_mask  # noqa: E402
from dkt.models.interface import kind_class  # noqa: E402
from dkt.models.sequence import SequenceKind  # noqa: E402

VOCAB = 200


def random_batch(b: int, t: int, vocab: int = VOCAB) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.randint(FIRST, vocab, (b, t), generator=gen) for k in (*CATEGORICAL, *RESPONSE)}
    batch["cont"] = torch.rand(b, t, len(CONT_COLUMNS), generator=gen)  # every column; a model reads its leading ones
    batch["mask"] = torch.ones(b, t, dtype=torch.bool)
    return batch


# torch's AdamW implementations: dkt.training's loop runs the first on CUDA (fused_adamw) and the last on the CPU
OPTIMIZERS = ("fused", "foreach", "for-loop")


def stepper(model: nn.Module, batch: dict[str, torch.Tensor], optimizer: str = "for-loop") -> Callable[[], float]:
    """One training step of ``model`` on ``batch`` (forward, loss, backward, AdamW) per call: its CPU-s."""
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[optimizer]
    opt = torch.optim.AdamW(model.parameters(), 1e-3, **impl)
    target = torch.randint(0, 2, batch["mask"].shape, generator=torch.Generator().manual_seed(1)).float()

    def step() -> float:
        start = time.process_time()
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.process_time() - start

    return step


def step_costs(
    model: nn.Module, batch: dict[str, torch.Tensor], steps: int, optimizer: str = "for-loop"
) -> list[float]:
    """CPU-s of each of ``steps`` training steps, after one warm-up step."""
    step = stepper(model, batch, optimizer)
    return [step() for _ in range(steps + 1)][1:]


def torch_mask(x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """The mask saint gave torch's layers before round 13: ALiBi's (heads, t, t) bias repeated for every window."""
    b, t, _ = x.shape
    if bias is not None:
        return bias.to(x.dtype).repeat(b, 1, 1), False
    return causal_mask(t, x.device), True


def torch_encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """saint.encoder_layer as torch's own forward."""
    mask, causal = torch_mask(x, bias)
    return layer(x, src_mask=mask, is_causal=causal)


def torch_decoder_layer(
    layer: nn.TransformerDecoderLayer, x: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """saint.decoder_layer as torch's own forward."""
    mask, causal = torch_mask(x, bias)
    return layer(x, memory, tgt_mask=mask, memory_mask=mask, tgt_is_causal=causal, memory_is_causal=causal)


@contextmanager
def torch_layers() -> Iterator[None]:
    """saint's layers run through torch's own forward (its path before round 13) inside the block."""
    ours = saint.encoder_layer, saint.decoder_layer
    saint.encoder_layer, saint.decoder_layer = torch_encoder_layer, torch_decoder_layer
    try:
        yield
    finally:
        saint.encoder_layer, saint.decoder_layer = ours


def alternate_costs(model: nn.Module, batch: dict[str, torch.Tensor], steps: int) -> tuple[list[float], list[float]]:
    """CPU-s per step of saint's own path and of torch's layers, taking turns, after one warm-up step of each."""
    step = stepper(model, batch)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(steps + 1):
        ours.append(step())
        with torch_layers():
            theirs.append(step())
    return ours[1:], theirs[1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="config/<name>.json or a config path")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a config field")
    p.add_argument("--batch", type=int, default=32, help="windows per batch (default 32)")
    p.add_argument("--len", type=int, default=200, help="positions per window (default 200)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--vocab", type=int, default=VOCAB, help=f"ids per embedding table (default {VOCAB})")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="for-loop",
        help="AdamW's implementation (default for-loop: the CPU's)",
    )
    p.add_argument(
        "--one-gather", action="store_true", help="the input's lookup as CUDA runs it (InputEmbedding.one_gather)"
    )
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's table over 3 steps")
    p.add_argument(
        "--torch-layers", action="store_true", help="saint: also time torch's own layers with a float mask (turns)"
    )
    args = p.parse_args(argv)
    path = Path(args.model) if args.model.endswith(".json") else ROOT / "config" / f"{args.model}.json"
    try:
        if min(args.batch, args.len, args.steps, args.threads) < 1:
            raise ValueError("--batch, --len, --steps and --threads must be at least 1")
        if args.vocab <= FIRST:
            raise ValueError(f"--vocab must be more than {FIRST} (the padding and unknown ids)")
        doc = json.loads(path.read_text())
        for setting in args.set:
            override(doc, setting)
        config = parse_config(doc, str(path))
        kind = kind_class(config.model)
        if not issubclass(kind, SequenceKind):
            raise ValueError(f"{config.model} is not a torch sequence model")
        if args.torch_layers and config.model != "saint":
            raise ValueError(f"--torch-layers compares saint's attention paths; the config's model is {config.model}")
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        model = kind.build(config.model_params, {k: args.vocab for k in (*CATEGORICAL, *RESPONSE)}).train()
        if args.one_gather:
            for module in model.modules():
                if isinstance(module, InputEmbedding):
                    module.one_gather = True
    except (OSError, ValueError) as exc:  # a ConfigError names its file already
        message = str(exc) if isinstance(exc, ConfigError) else f"{path}: {exc}"
        print(f"error: {message}".replace("\n", "; "), file=sys.stderr)
        return 2
    batch = random_batch(args.batch, args.len, args.vocab)
    shape = f"({args.batch} x {args.len}, {args.threads} thread(s))"
    if args.torch_layers:
        ours, theirs = alternate_costs(model, batch, args.steps)
        for name, costs in (("saint's attend", ours), ("torch's layers, float mask", theirs)):
            summary = f"min {min(costs):.3f} median {statistics.median(costs):.3f} CPU-s per step"
            print(f"{name} {' '.join(args.set)}: {summary}")
        print(f"torch's layers / attend: {statistics.median(theirs) / statistics.median(ours):.2f}x (medians) {shape}")
        return 0
    costs = step_costs(model, batch, args.steps, args.optimizer)
    print(
        f"{config.model} {' '.join(args.set)}: min {min(costs):.3f} median {statistics.median(costs):.3f} CPU-s "
        f"per step {shape}"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step_costs(model, batch, 2)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
