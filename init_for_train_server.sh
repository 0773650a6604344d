#!/usr/bin/env bash
# Prepare a training host: the app virtualenv with CUDA torch when `nvidia-smi` finds a GPU (CPU wheel
# otherwise), the project, and an Airflow worker for the `train` queue that runs the DAGs' train tasks.
# Idempotent and non-interactive.
set -euo pipefail
cd "$(dirname "$0")"
repo="$(pwd)"

usage() {
  cat <<'USAGE'
usage: ./init_for_train_server.sh [--no-worker] [--help]

  --no-worker   only the Python environment, no Airflow worker

env (defaults in brackets):
  DKT_TORCH_CUDA_INDEX [https://download.pytorch.org/whl/cu126]  index for the CUDA torch build
  DKT_TRAIN_QUEUE [train]            Airflow queue this worker serves
  DKT_AIRFLOW_API_URL [http://127.0.0.1:8081/execution/]  the inference host's Airflow execution API
  AIRFLOW_HOME [var/airflow-worker]
USAGE
}
worker=1
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --no-worker) worker=0 ;;
    *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
step() { echo "==> $*"; }
py="${PYTHON:-python3}"

step "app virtualenv (.venv)"
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
torch_pin="$(grep -E '^torch==' requirements.txt)"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  echo "GPU found: $(nvidia-smi -L | head -n1)"
  .venv/bin/pip install -q --index-url "${DKT_TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu126}" "$torch_pin"
else
  echo "no GPU: CPU torch wheel"
  # The CPU wheel from PyTorch's CPU index (or a local PIP_FIND_LINKS folder) keeps the install small.
  .venv/bin/pip install -q --extra-index-url https://download.pytorch.org/whl/cpu "$torch_pin"
fi
.venv/bin/pip install -q -r requirements.txt
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"

if [[ $worker -eq 1 ]]; then
  step "Airflow worker for queue ${DKT_TRAIN_QUEUE:-train}"
  export AIRFLOW_HOME="${AIRFLOW_HOME:-$repo/var/airflow-worker}"
  export AIRFLOW__CORE__DAGS_FOLDER="$repo/dags"
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${DKT_AIRFLOW_API_URL:-http://127.0.0.1:8081/execution/}"
  mkdir -p "$AIRFLOW_HOME" "$repo/var/run"
  if [[ ! -x .venv-airflow/bin/airflow ]]; then
    "$py" -m venv .venv-airflow
    .venv-airflow/bin/pip install -q -r requirements-airflow.txt
  fi
  # Airflow 3 runs remote task workers through the Edge executor provider (no Celery broker needed).
  .venv-airflow/bin/pip install -q "apache-airflow-providers-edge3"
  pidfile="$repo/var/run/airflow-edge-worker.pid"
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "worker already running (pid $(cat "$pidfile"))"
  else
    nohup .venv-airflow/bin/airflow edge worker --queues "${DKT_TRAIN_QUEUE:-train}" \
      >>"$AIRFLOW_HOME/edge-worker.log" 2>&1 &
    echo $! >"$pidfile"
    echo "worker started (pid $!, log $AIRFLOW_HOME/edge-worker.log)"
  fi
fi
echo "done"
