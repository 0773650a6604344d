"""Kernel launches and host waits per training step: our lstm (train.py's loop) and the reference DKT, counted.

On a GPU a step of these small models costs kernel launches, and the host's waits for the device, more than
arithmetic (docs/training-speed.md). Both can be counted without a GPU: every aten op a step dispatches that
computes something (not a view, not metadata) is one kernel launch on CUDA, near enough (a fused or foreach op is one
call), and every read of a tensor's value on the host (``.item()``, a boolean index, ``nonzero``) makes the host wait
for the device there. This bench counts them with a ``TorchDispatchMode`` over the same training run as
bench/train_speed_bench.py (one epoch unless ``--epochs``), each model as it runs on CUDA: ours with the fused AdamW
(``dkt.training.fused_adamw``) and its input looked up in one gather (``InputEmbedding.one_gather``), both of which
CUDA runs and the CPU does not; the reference with torch's foreach Adam (Adam's default on CUDA).

    .venv/bin/python bench/op_count_bench.py                             # ASSISTments 2009 train file, one epoch
    .venv/bin/python bench/op_count_bench.py --max-students 200 --top 12
    .venv/bin/python bench/op_count_bench.py --set train.batch_tokens=4096 --set train.lr=0.006
    .venv/bin/python bench/op_count_bench.py --set train.batch_tokens=null --set train.batch_size=32   # before round 8

Prints one table: per model the training steps, kernel ops per step, host reads per step and in all (by op), the
ops it launches most, the recurrence's time steps per epoch, and the positions its recurrence computes per epoch
(rows x width, padding included: the CPU's work). An LSTM's time steps run one after another; at these batch sizes
each is a few kernels too small to fill a GPU, so there a batch costs about its width whatever its rows (expected
from round 4's H100 figures, not yet measured step by step). Counting slows a run several times over: its seconds
mean nothing, the counts do. Copies from host to device cannot be seen on a CPU; the training loop's are staged in
pinned memory (``host_to_device``).
Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.modules.module import register_module_forward_pre_hook  # noqa: E402
from torch.nn.utils.rnn import PackedSequence  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from bench import min_dkt, train_speed_bench  # noqa: E402
from dkt import training  # noqa: E402
from dkt.config import ConfigError  # noqa: E402
from dkt.data.schema import DataValidationError  # noqa: E402
from dkt.models import sequence  # noqa: E402
from dkt.models.base import InputEmbedding  # noqa: E402

# Ops that read a value on the host: on CUDA each waits for every kernel queued before it.
HOST_READS = frozenset({"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2"})
# No data touched; or, for a scalar read, a copy to the host rather than a kernel (counted as a read).
NOT_KERNELS = frozenset({"aten.lift_fresh", "aten.detach", "aten._local_scalar_dense"})


def is_kernel(func: Any) -> bool:
    """Whether a dispatched aten op computes (a launch on CUDA): not a view (an output that aliases an input without
    writing it) and not metadata."""
    name = str(func.overloadpacket)
    if name in NOT_KERNELS or not name.startswith("aten."):
        return False
    aliases = [r.alias_info for r in func._schema.returns if r.alias_info is not None]
    return not aliases or any(a.is_write for a in aliases)


def reads_host(func: Any, args: tuple[Any, ...]) -> bool:
    """Whether the op reads a tensor's value on the host (a boolean index does, to size its result)."""
    name = str(func.overloadpacket)
    if name in HOST_READS:
        return True
    if name == "aten.index":
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()))
    return False


class OpCounter(TorchDispatchMode):
    """Counts, while active, the kernel ops and the host reads dispatched (by name), optimizer steps, and the
    recurrence's time steps in training (``recurrence``)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self.steps = 0
        self.recurrence = 0
        self.positions = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if is_kernel(func):
            self.kernels[str(func.overloadpacket)] += 1
        if reads_host(func, args):
            self.reads[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def counted(owner: Any, name: str, counter: OpCounter) -> Iterator[None]:
    """``owner.name`` (a training function) runs under ``counter`` until the block ends; every optimizer step it
    takes is counted as a training step."""
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with counter:
            return original(*args, **kwargs)

    def step(*_: Any) -> None:
        counter.steps += 1

    def recurrence(module: nn.Module, args: tuple[Any, ...]) -> None:
        # A recurrent layer's time steps run one after another: on a GPU, at these batch sizes, each is a few
        # small kernels whose latency, not arithmetic, sets the layer's time (cuDNN's too). Training passes only.
        if isinstance(module, nn.RNNBase) and module.training and torch.is_grad_enabled():
            x = args[0]
            if isinstance(x, PackedSequence):
                t, n = len(x.batch_sizes), int(x.batch_sizes.sum())
            else:
                t, n = x.shape[1 if module.batch_first else 0], x.shape[0] * x.shape[1]
            counter.recurrence += t * module.num_layers
            counter.positions += n

    setattr(owner, name, wrapper)
    hooks = [register_optimizer_step_post_hook(step), register_module_forward_pre_hook(recurrence)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        setattr(owner, name, original)


def count_both(cfg: Any, data: Any, epochs: int) -> dict[str, dict[str, Any]]:
    """Per model: its steps, counted ops and host reads over at most ``epochs`` epochs of training."""
    ref, ours = OpCounter(), OpCounter()
    with counted(min_dkt, "fit", ref):
        r = train_speed_bench.reference(data, epochs, "cpu", foreach=True)
    # Ours as CUDA runs it: the input looked up in one gather, the fused AdamW.
    InputEmbedding.one_gather, cpu_fused = True, training.fused_adamw
    training.fused_adamw = lambda _device: True
    try:
        with counted(sequence, "fit_sequence_model", ours):
            o = train_speed_bench.ours(cfg, data, epochs, "cpu")
    finally:
        InputEmbedding.one_gather, training.fused_adamw = None, cpu_fused
    return {"reference DKT (bench/min_dkt.py)": summary(ref, r), f"{cfg.model} (train.py's loop)": summary(ours, o)}


def summary(counter: OpCounter, run: dict[str, Any]) -> dict[str, Any]:
    kernels, reads, steps = sum(counter.kernels.values()), sum(counter.reads.values()), max(1, counter.steps)
    return {
        "epochs": run["epochs"],
        "steps": counter.steps,
        "kernels": kernels,
        "kernels_per_step": kernels / steps,
        "host_reads": reads,
        "host_reads_per_step": reads / steps,
        "recurrence": counter.recurrence,
        "recurrence_per_epoch": counter.recurrence / max(1, run["epochs"]),
        "positions_per_epoch": counter.positions / max(1, run["epochs"]),
        "reads_by_op": counter.reads.most_common(),
        "top": counter.kernels.most_common(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_speed_bench.add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=1, help="epochs counted (default 1)")
    p.add_argument("--top", type=int, default=8, help="ops listed per model (default 8)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.top < 0:
        print("error: --epochs must be at least 1 and --top at least 0", file=sys.stderr)
        return 2
    try:
        cfg, data = train_speed_bench.config_and_data(args)
    except (ConfigError, DataValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    results = count_both(cfg, data, args.epochs)
    columns = ["model", "epochs", "steps", "kernel ops / step", "host reads / step", "host reads (by op)"]
    print(f"| {' | '.join(columns)} | most launched (per step) | recurrence steps / epoch | positions / epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        top = ", ".join(f"{op.removeprefix('aten.')} {n / max(1, r['steps']):.1f}" for op, n in r["top"][: args.top])
        reads = ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in r["reads_by_op"])
        print(
            f"| {name} | {r['epochs']} | {r['steps']} | {r['kernels_per_step']:.1f} | {r['host_reads_per_step']:.2f} "
            f"| {r['host_reads']}{f': {reads}' if reads else ''} | {top} | {r['recurrence_per_epoch']:,.0f} "
            f"| {r['positions_per_epoch']:,.0f} |"
        )
    ref, ours = results.values()
    print(f"kernel ops per step, {cfg.model} / reference: {ours['kernels_per_step'] / ref['kernels_per_step']:.2f}x")
    if ref["recurrence"]:
        ratio = ours["recurrence_per_epoch"] / ref["recurrence_per_epoch"]
        print(f"recurrence steps per epoch, {cfg.model} / reference: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
