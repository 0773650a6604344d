#!/usr/bin/env bash
# Prepare a training host: the app virtualenv with CUDA torch when `nvidia-smi` finds a GPU (CPU wheel
# otherwise), the project, and an Airflow Edge worker for the `train` queue that runs the DAGs' train tasks
# for the inference host's Airflow (started there with DKT_TRAIN_EXECUTOR=edge).
# Idempotent and non-interactive.
set -euo pipefail
cd "$(dirname "$0")"
repo="$(pwd)"

usage() {
  cat <<'USAGE'
usage: ./init_for_train_server.sh [--no-worker | --worker-only | --stop-worker] [--help]

  --no-worker     only the Python environment, no Airflow worker
  --worker-only   only the Airflow worker (skips the app virtualenv and torch install)
  --stop-worker   stop the worker started here (it finishes as offline in Airflow), then exit

The worker is `airflow edge worker` (provider apache-airflow-providers-edge3, pinned in
requirements-airflow.txt). It polls the inference host's Airflow API over HTTP for tasks on its queue;
the inference host must run Airflow with DKT_TRAIN_EXECUTOR=edge (`make up` or
init_for_inference_server.sh), reachable from here (DKT_AIRFLOW_HOST=0.0.0.0 for `make up`).
Tasks run with this script's environment: set the store here as there (DKT_STORE=s3, DKT_S3_*, AWS_*).

env (defaults in brackets):
  DKT_TORCH_CUDA_INDEX [https://download.pytorch.org/whl/cu126]  index for the CUDA torch build
  DKT_AIRFLOW_URL [http://127.0.0.1:8081]  the inference host's Airflow api-server as seen from here; the
                  worker uses $DKT_AIRFLOW_URL/edge_worker/v1/rpcapi and $DKT_AIRFLOW_URL/execution/
  DKT_AIRFLOW_JWT_SECRET_FILE [var/secrets/airflow_jwt_secret]  a copy of the inference host's file of
                  that name: the shared [api_auth] jwt_secret that signs the worker's requests
                  (or set AIRFLOW__API_AUTH__JWT_SECRET itself)
  DKT_TRAIN_QUEUE [train]           queue this worker serves (the same value as on the inference host)
  DKT_EDGE_HOSTNAME [fully qualified host name]  the worker's name in Airflow, unique per worker
  DKT_WORKER_WAIT [120]             seconds to wait for the worker to register with the inference host
  DKT_AIRFLOW_VENV [.venv-airflow]  the Airflow virtualenv (requirements-airflow.txt)
  AIRFLOW_HOME [var/airflow-worker] the worker's home: edge-worker.log, edge-worker.pid, task logs
  AIRFLOW__CORE__DAGS_FOLDER [dags] the same DAG files as on the inference host
USAGE
}
app=1
worker=1
stop=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --no-worker) worker=0 ;;
    --worker-only) app=0 ;;
    --stop-worker) stop=1 ;;
    *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
step() { echo "==> $*"; }
py="${PYTHON:-python3}"
venv="${DKT_AIRFLOW_VENV:-$repo/.venv-airflow}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$repo/var/airflow-worker}"
pidfile="$AIRFLOW_HOME/edge-worker.pid"
log="$AIRFLOW_HOME/edge-worker.log"
# A pid file's pid is only the worker if its command line says so (/proc/PID/cmdline; the worker retitles itself
# "airflow edge worker: HOST"): a pid reused by an unrelated process is left alone, with a warning.
worker_pid() {
  local pid cmd
  [[ -s "$pidfile" ]] && pid="$(<"$pidfile")" && [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
  if [[ "$cmd" == *airflow* && "$cmd" == *"edge worker"* ]]; then echo "$pid"; return 0; fi
  echo "warning: $pidfile names pid $pid, which runs '${cmd:0:200}', not the edge worker: left alone" >&2
  return 1
}

if [[ $stop -eq 1 ]]; then
  if pid="$(worker_pid)"; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then echo "error: worker (pid $pid) still running after 60 s" >&2; exit 1; fi
    echo "worker stopped (pid $pid)"
  else
    echo "no worker running (pid file $pidfile)"
  fi
  exit 0
fi

if [[ $worker -eq 1 ]]; then
  # Checked first, so a missing secret fails in a second, not after the torch download.
  if [[ -z "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ]]; then
    secret_file="${DKT_AIRFLOW_JWT_SECRET_FILE:-$repo/var/secrets/airflow_jwt_secret}"
    if [[ ! -s "$secret_file" ]]; then
      echo "error: no $secret_file: copy var/secrets/airflow_jwt_secret from the inference host" \
        "(written by \`DKT_TRAIN_EXECUTOR=edge make up\` or init_for_inference_server.sh), or set" \
        "AIRFLOW__API_AUTH__JWT_SECRET (see --help)" >&2
      exit 2
    fi
    AIRFLOW__API_AUTH__JWT_SECRET="$(<"$secret_file")"
    export AIRFLOW__API_AUTH__JWT_SECRET
  fi
fi

if [[ $app -eq 1 ]]; then
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
  .venv/bin/pip install -q --no-deps -e .  # the dkt command (.venv/bin/dkt)
  .venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
fi

if [[ $worker -eq 1 ]]; then
  queue="${DKT_TRAIN_QUEUE:-train}"
  step "Airflow Edge worker for queue $queue"
  # The same stamp as `make airflow-venv`: reinstall only when requirements-airflow.txt changed.
  if [[ ! "$venv/.installed" -nt requirements-airflow.txt ]]; then
    [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q -r requirements-airflow.txt
    touch "$venv/.installed"
  fi
  mkdir -p "$AIRFLOW_HOME"
  if pid="$(worker_pid)"; then
    echo "worker already running (pid $pid, log $log); --stop-worker first to apply new settings"
  else
    url="${DKT_AIRFLOW_URL:-http://127.0.0.1:8081}"
    url="${url%/}"
    # The same executors as the inference host's: the worker parses the DAGs too, and a task that names
    # an executor Airflow does not list fails to load.
    export DKT_TRAIN_EXECUTOR=edge DKT_TRAIN_QUEUE="$queue"
    export AIRFLOW__CORE__EXECUTOR="LocalExecutor,airflow.providers.edge3.executors.EdgeExecutor"
    export AIRFLOW__EDGE__API_URL="$url/edge_worker/v1/rpcapi"
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$url/execution/"
    export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$repo/dags}"
    export AIRFLOW__CORE__LOAD_EXAMPLES=False
    name=()
    [[ -n "${DKT_EDGE_HOSTNAME:-}" ]] && name=(--edge-hostname "$DKT_EDGE_HOSTNAME")
    rm -f "$pidfile"
    nohup "$venv/bin/airflow" edge worker --queues "$queue" --pid "$pidfile" "${name[@]}" >>"$log" 2>&1 &
    wpid=$!
    # The worker writes its pid file only after the inference host's edge API accepted its registration.
    wait_s="${DKT_WORKER_WAIT:-120}"
    for ((i = 0; i < wait_s; i++)); do
      [[ -s "$pidfile" ]] && break
      if ! kill -0 "$wpid" 2>/dev/null; then
        echo "error: the worker exited before registering with $url; the end of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
      fi
      sleep 1
    done
    if [[ ! -s "$pidfile" ]]; then
      kill -TERM "$wpid" 2>/dev/null || true
      echo "error: the worker did not register with $url within ${wait_s}s (is the URL reachable, is" \
        "DKT_TRAIN_EXECUTOR=edge set there?); stopped it. The end of $log:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    echo "worker registered with $url (pid $wpid, queue $queue, log $log)"
  fi
fi
echo "done"
