#!/usr/bin/env bash
# The device command for bench/gpu_bench.py (docs/gpu.md): run from the repository root on the lent GPU machine.
# That machine has torch but not pydantic, pydantic-settings or lightgbm, and its own pandas: the wheels in .whl/
# (carried with the call) are installed beside it so the project runs on the versions it pins here.
# Arguments go to gpu_bench.py. Everything lands in $OUT: the log, nvidia-smi's view, the JSON and the tables.
# With --train-speed first, the rest go to bench/train_speed_bench.py instead (--device cuda, the carried data);
# with --profile first, to bench/cuda_profile_bench.py; with --graph-check first, to bench/cuda_graph_check.py.
#
#   bash bench/gpu_run.sh --prepare   # here, once: fill .whl/ and .gpu-data/ (both git-ignored; carry them)
set -uo pipefail
cd "$(dirname "$0")/.."

# What the GPU machine lacks, at the versions this project's .venv runs (pydantic-settings: dkt.settings).
WHEELS="pydantic pydantic_core annotated-types typing-inspection typing_extensions pydantic-settings python-dotenv
lightgbm pandas"
if [ "${1:-}" = "--prepare" ]; then
    set -e
    grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo /.gpu-data/ >>.git/info/exclude
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    mkdir -p .gpu-data
    cp ../shared/data/assist2009/train.csv ../shared/data/assist2009/test.csv ../shared/data/assist2009/README.md .gpu-data/
    rm -rf .whl
    # shellcheck disable=SC2086  # one name per word
    pins=$(.venv/bin/python -c 'import sys; from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' $WHEELS)
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
    du -sh .whl .gpu-data
    exit 0
fi
OUT=${OUT:-/tmp/gpu-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LIMIT_S=${GPU_BENCH_LIMIT_S:-450}  # below the run's timeout_s, so the bench still prints what it measured

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "error: installing the carried wheels (.whl/) failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c 'import sys, torch, pandas, pydantic; print("python", sys.version.split()[0], "torch", torch.__version__,
    "cuda", torch.cuda.is_available(), "pandas", pandas.__version__, "pydantic", pydantic.__version__)' \
    || { echo "error: the project's imports fail on this machine" >&2; exit 2; }
if [ "${1:-}" = "--train-speed" ]; then
    # Issue 16 item 7 on the card: lstm and the reference DKT to early stopping, ours under AMP (docs/training-speed.md).
    shift
    timeout --signal=INT --kill-after=20 "$LIMIT_S" python3 bench/train_speed_bench.py --device cuda \
        --data .gpu-data/train.csv .gpu-data/test.csv --json "$OUT/train_speed.json" "$@" 2>&1 | tee "$OUT/train_speed.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "${1:-}" = "--graph-check" ]; then
    # The CUDA-graphed training loop against the eager one, step for step (docs/training-speed.md round 9).
    shift
    timeout --signal=INT --kill-after=20 "$LIMIT_S" python3 bench/cuda_graph_check.py --device cuda \
        --data .gpu-data/train.csv .gpu-data/test.csv "$@" 2>&1 | tee "$OUT/cuda_graph_check.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "${1:-}" = "--profile" ]; then
    # Where a step's time goes on the card: kernels against the host's launches and waits (docs/training-speed.md).
    shift
    timeout --signal=INT --kill-after=20 "$LIMIT_S" python3 bench/cuda_profile_bench.py --device cuda \
        --data .gpu-data/train.csv .gpu-data/test.csv "$@" 2>&1 | tee "$OUT/cuda_profile.log"
    exit "${PIPESTATUS[0]}"
fi
timeout --signal=INT --kill-after=20 "$LIMIT_S" python3 bench/gpu_bench.py "$@" 2>&1 | tee "$OUT/gpu_bench.log"
