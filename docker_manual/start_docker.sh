#!/usr/bin/env bash
# Make a Docker engine answer on this host: install it (Debian) when missing, start dockerd when
# not running. Idempotent and non-interactive; used by `make test-setup` and init_for_*_server.sh.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: docker_manual/start_docker.sh [--swarm] [--help]

Installs docker.io, docker-registry and debootstrap with apt-get when dockerd is missing (needs root),
starts dockerd in the background when `docker info` fails (systemd when it runs, else nohup), and
with --swarm makes this node a single-node swarm manager (advertising $DKT_SWARM_ADDR).

env:
  DKT_SWARM_ADDR    address the swarm advertises (default 127.0.0.1)
  DKT_DOCKERD_LOG   dockerd log when started without systemd (default /var/log/dockerd.log)
USAGE
}
swarm=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --swarm) swarm=1 ;;
    *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "error: missing ${need[*]}; install them as root (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  echo "installing ${need[*]}"
  # One apt-get at a time beside `make test`'s other parts (mk/apt-install.sh says why).
  "$(dirname "$0")/../mk/apt-install.sh" "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if [[ -d /run/systemd/system ]]; then
    systemctl start docker
  else
    log="${DKT_DOCKERD_LOG:-/var/log/dockerd.log}"
    # A dockerd that was killed leaves its pid file; dockerd refuses to start when that pid was reused.
    pidfile=/var/run/docker.pid
    if [[ -f $pidfile ]]; then
      pid="$(cat "$pidfile" 2>/dev/null || true)"
      if [[ -z $pid ]] || [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" != dockerd ]]; then
        echo "removing stale $pidfile (pid '${pid}' is not a running dockerd)"
        rm -f "$pidfile"
      fi
    fi
    # setsid: its own session, so the daemon outlives the shell or job that started it (a killed process
    # group would otherwise take dockerd down with it, mid-deploy).
    setsid nohup dockerd >>"$log" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "error: dockerd did not start; see ${log:-journalctl -u docker}" >&2; exit 1; }
  echo "dockerd started"
fi

if [[ $swarm -eq 1 ]]; then
  state="$(docker info --format '{{.Swarm.LocalNodeState}}')"
  if [[ "$state" != "active" ]]; then
    docker swarm init --advertise-addr "${DKT_SWARM_ADDR:-127.0.0.1}" >/dev/null
    echo "swarm initialised"
  fi
fi
echo "docker engine ready"
