#!/usr/bin/env bash
# Start Debian's `docker-registry` on loopback so swarm nodes can pull the images we build.
# Idempotent: does nothing when a registry already answers at $DKT_REGISTRY.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: docker_manual/start_registry.sh [--help]

Starts a local image registry (Debian package docker-registry) in the background unless one
already answers at $DKT_REGISTRY. A registry on another host is used as is, never started.

env:
  DKT_REGISTRY       registry host:port                 (default 127.0.0.1:5000)
  DKT_REGISTRY_ROOT  where the local registry keeps blobs (default /var/lib/dkt-registry)
  DKT_REGISTRY_LOG   log file                            (default /var/log/dkt-registry.log)
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
registry="${DKT_REGISTRY:-127.0.0.1:5000}"
root="${DKT_REGISTRY_ROOT:-/var/lib/dkt-registry}"
log="${DKT_REGISTRY_LOG:-/var/log/dkt-registry.log}"

answers() { python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$registry/v2/', timeout=2)" 2>/dev/null; }

if answers; then
  echo "registry answers at $registry"
  exit 0
fi
case "$registry" in
  127.0.0.1:*|localhost:*) ;;
  *) echo "error: registry $registry does not answer and is not local; start it there" >&2; exit 1 ;;
esac
command -v docker-registry >/dev/null || { echo "error: docker-registry not installed (apt-get install -y docker-registry)" >&2; exit 1; }

mkdir -p "$root" "$(dirname "$log")"
REGISTRY_HTTP_ADDR="$registry" REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$root" \
  nohup docker-registry serve "$here/../docker/registry.yml" >>"$log" 2>&1 &
for _ in $(seq 1 50); do
  if answers; then echo "registry started at $registry (log: $log)"; exit 0; fi
  sleep 0.2
done
echo "error: registry did not answer at $registry within 10 s; see $log" >&2
exit 1
