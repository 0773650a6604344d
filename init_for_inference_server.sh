#!/usr/bin/env bash
# Prepare the inference host: Docker engine + single-node swarm, local registry, offline base image,
# the app virtualenv, Airflow (own virtualenv, generated admin password) with the project's DAGs,
# and — given a model bundle — the DKT stack. Idempotent and non-interactive: rerun it any time.
set -euo pipefail
cd "$(dirname "$0")"
repo="$(pwd)"

usage() {
  cat <<'USAGE'
usage: ./init_for_inference_server.sh [--model-dir DIR] [--replicas N] [--no-airflow] [--stop] [--help]

  --model-dir DIR   deploy (or roll) the stack to this model bundle now; without it the stack is
                    deployed by update_inference_server_dag when a model is promoted
  --replicas N      inference replicas for that deploy (default: keep the running count, else 3);
                    later deploys by the DAG keep the count
  --no-airflow      skip the Airflow virtualenv and services
  --stop            stop the Airflow services started here and remove the stack, then exit
                    (the engine, the swarm, the registry and the images stay)

env (defaults in brackets):
  DKT_REGISTRY [127.0.0.1:5000]     registry; a local one is started when it is on loopback
  DKT_BASE_IMAGE [local/python:3.11-bookworm]  python:3.11-slim where a registry is reachable
  AIRFLOW_HOME [var/airflow]        Airflow's home (SQLite DB, logs, generated passwords)
  DKT_AIRFLOW_PORT [8081]           Airflow API server / UI port
  DKT_TRAIN_EXECUTOR [local]        local: every task runs here. edge: the train-queue tasks go to the
                                    Edge executor, i.e. to the worker init_for_train_server.sh starts on the
                                    GPU host; the API server then serves the edge worker API too, and the
                                    shared secret is generated into var/secrets/airflow_jwt_secret (or taken
                                    from AIRFLOW__API_AUTH__JWT_SECRET): copy it to the train host
  DKT_SECRET_KEY [generated]        the client's session secret; unset: generated once into
                                    var/swarm/client_secret_key (mode 0600)
  DKT_CLIENT_DB [var/client/client.db]  the answer store: the swarm client writes it (bind mount of its
                                    folder), update_data_dag exports it; the folder is created here
  DKT_DEPLOY_MODE is set to swarm for the Airflow services started here
USAGE
}
model_dir=""
replicas=()
airflow=1
stop=0
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --model-dir) model_dir="${2:?--model-dir needs a folder}"; shift 2 ;;
    --replicas)
      [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "error: --replicas needs a whole number >= 1, got '${2:-}'" >&2; exit 2; }
      replicas=(--replicas "$2"); shift 2 ;;
    --no-airflow) airflow=0; shift ;;
    --stop) stop=1; shift ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
step() { echo "==> $(date +%H:%M:%S) $*"; }  # timed: the test suite prints where a set-up spends its time
# airflow_pid NAME: the pid in airflow-NAME.pid if that process runs and its command line is that Airflow service
# (/proc/PID/cmdline; the api-server retitles itself "airflow api_server -- ..."). A pid reused by an unrelated
# process is left alone, with a warning.
airflow_pid() {
  local pidfile="$AIRFLOW_HOME/airflow-$1.pid" pid cmd
  [[ -s "$pidfile" ]] && pid="$(<"$pidfile")" && [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  cmd="$(tr '\0_' ' -' 2>/dev/null <"/proc/$pid/cmdline" || true)"
  if [[ "$cmd" == *airflow* && "$cmd" == *"$1"* ]]; then echo "$pid"; return 0; fi
  echo "warning: $pidfile names pid $pid, which runs '${cmd:0:200}', not airflow $1: left alone" >&2
  return 1
}
export AIRFLOW_HOME="${AIRFLOW_HOME:-$repo/var/airflow}"  # also holds the services' pid files
# One answer store for the swarm client and the Airflow export alike; a folder of its own, because the client
# container bind-mounts the whole folder (pipeline.swarm refuses a folder holding anything else).
export DKT_CLIENT_DB="${DKT_CLIENT_DB:-$repo/var/client/client.db}"

if ((stop)); then
  step "stopping the Airflow services started here"
  for name in api-server scheduler dag-processor; do
    if pid="$(airflow_pid "$name")"; then
      kill "$pid" && echo "stopped airflow $name (pid $pid)"
    fi
    rm -f "$AIRFLOW_HOME/airflow-$name.pid"
  done
  step "removing the stack"
  if [[ -x .venv/bin/python ]] && docker info >/dev/null 2>&1; then
    .venv/bin/python -m dkt swarm down
  fi
  exit 0
fi

mkdir -p "$(dirname "$DKT_CLIENT_DB")"

step "Docker engine and swarm"
docker_manual/start_docker.sh --swarm

step "registry ${DKT_REGISTRY:-127.0.0.1:5000}"
docker_manual/start_registry.sh

step "base image"
docker_manual/build_base_image.sh

step "prometheus (Debian's package: the stack's Prometheus image copies its binary)"
make -s prometheus

step "app virtualenv (.venv)"
make -s setup PYTHON="${PYTHON:-python3}"

step "client secret and operator account"
# The client's session secret: generated once into var/swarm/client_secret_key (mode 0600 from creation; the
# deploy reads it) unless DKT_SECRET_KEY is set. The operator account's generated password is printed here
# once and stored only as its hash (docs/accounts.md); a rerun says the account exists.
.venv/bin/python -c 'from pipeline.swarm_settings import swarm_settings; from pipeline.swarm_stack import client_secret
client_secret(swarm_settings())' >/dev/null
operator_password="$(.venv/bin/dkt client create-user --role operator --if-missing operator)"
if [[ -n "$operator_password" ]]; then
  echo "client operator account: user operator, password $operator_password (shown this once: keep it now)"
fi

if [[ $airflow -eq 1 ]]; then
  step "Airflow virtualenv (.venv-airflow) and services"
  export AIRFLOW__CORE__DAGS_FOLDER="$repo/dags"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  # The DAGs are the product here: a run triggered from the UI (or by an asset) must not sit queued.
  export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
  # Airflow 3's simple auth manager generates the admin password into AIRFLOW_HOME on first start.
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
  export DKT_DEPLOY_MODE=swarm
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:${DKT_AIRFLOW_PORT:-8081}/execution/"
  # [core] executor (and, with DKT_TRAIN_EXECUTOR=edge, the edge API and its shared JWT secret).
  executor_env="$(.venv/bin/dkt stack airflow-env)"
  eval "$executor_env"
  mkdir -p "$AIRFLOW_HOME"
  if [[ ! -x .venv-airflow/bin/airflow ]]; then
    "${PYTHON:-python3}" -m venv .venv-airflow
    .venv-airflow/bin/pip install -q -r requirements-airflow.txt
  fi
  .venv-airflow/bin/airflow db migrate >/dev/null
  # Airflow generates the admin password file itself: started under umask 077, it creates it 0600 (no window in
  # which the password is readable, as a chmod after the write would leave).
  umask_was="$(umask)"
  umask 077
  # 127.0.0.1 unless DKT_AIRFLOW_HOST says otherwise (Airflow's own default is 0.0.0.0); no log server (it binds
  # 0.0.0.0:8793 with no host option; the api-server reads this host's task logs from their files).
  for svc in "api-server --port ${DKT_AIRFLOW_PORT:-8081} --host ${DKT_AIRFLOW_HOST:-127.0.0.1}" \
             "scheduler --skip-serve-logs" dag-processor; do
    name="${svc%% *}"
    pidfile="$AIRFLOW_HOME/airflow-$name.pid"
    if pid="$(airflow_pid "$name")"; then
      echo "airflow $name already running (pid $pid)"
      continue
    fi
    # shellcheck disable=SC2086  # $svc holds the subcommand and its flags
    nohup .venv-airflow/bin/airflow $svc >>"$AIRFLOW_HOME/$name.log" 2>&1 &
    echo $! >"$pidfile"
    echo "airflow $name started (pid $!, log $AIRFLOW_HOME/$name.log)"
  done
  umask "$umask_was"
  pwfile="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
  for _ in $(seq 1 60); do [[ -s "$pwfile" ]] && break; sleep 1; done
  if [[ -s "$pwfile" ]]; then
    echo "Airflow UI: http://127.0.0.1:${DKT_AIRFLOW_PORT:-8081}  user admin, password in $pwfile"
  else
    echo "warning: Airflow has not written $pwfile yet; see $AIRFLOW_HOME/api-server.log" >&2
  fi
fi

if [[ -n "$model_dir" ]]; then
  step "stack: deploy $model_dir"
  .venv/bin/dkt swarm deploy --model-dir "$model_dir" "${replicas[@]}"
else
  step "stack: not deployed now (give --model-dir, or promote a model: update_inference_server_dag)"
fi
echo "done"
