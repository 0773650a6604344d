#!/usr/bin/env bash
# Build the offline base image (Debian bookworm + python3.11) and `docker import` it: from this host's
# installed packages when it is a bookworm host that has them (seconds), else with debootstrap (minutes).
# Why: no container registry is reachable here, so `FROM python:3.11-slim` cannot be pulled.
# Where a registry is reachable, skip this and build with `--build-arg BASE_IMAGE=python:3.11-slim`.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: docker_manual/build_base_image.sh [--force] [--help]

Builds the base image $DKT_BASE_IMAGE (default local/python:3.11-bookworm): Debian bookworm with
python3, venv, pip, CA certificates and libgomp1. Idempotent: does nothing when the image already
exists, unless --force.

env:
  DKT_BASE_IMAGE   image name to create            (default local/python:3.11-bookworm)
  DKT_BASE_FROM    auto | host | debootstrap       (default auto: the host's installed packages when it is a
                                                    bookworm host that has them, debootstrap otherwise;
                                                    host: fail when it cannot)
  DKT_DEBIAN_MIRROR Debian mirror for debootstrap  (default: first URI in /etc/apt/sources.list.d/*.sources,
                                                    else http://deb.debian.org/debian)
  DKT_EXTRA_CA_DIR  extra CA certificates copied into the image (default /usr/local/share/ca-certificates)
USAGE
}

force=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --force) force=1 ;;
    *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

image="${DKT_BASE_IMAGE:-local/python:3.11-bookworm}"
if [[ $force -eq 0 ]] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image already exists"
  exit 0
fi
packages=(python3 python3-venv python3-pip ca-certificates libgomp1)
from="${DKT_BASE_FROM:-auto}"
case "$from" in
  auto|host|debootstrap) ;;
  *) echo "error: DKT_BASE_FROM=$from: expected auto, host or debootstrap" >&2; exit 2 ;;
esac

mirror="${DKT_DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror="$(grep -h -m1 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
here="$(cd "$(dirname "$0")" && pwd)"
import_image() {
  docker import -c 'ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1' -c 'CMD ["python3"]' - "$image" >/dev/null
  echo "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
}

if [[ "$from" != debootstrap ]]; then
  if why="$(python3 "$here/rootfs_from_host.py" --check "${packages[@]}")"; then
    echo "base image from this host's installed Debian packages (${packages[*]} and what they need)"
    # A failed writer would leave docker import a truncated tar: never keep what it made of it.
    python3 "$here/rootfs_from_host.py" --mirror "$mirror" "${packages[@]}" | import_image \
      || { docker rmi -f "$image" >/dev/null 2>&1; echo "error: building $image from the host failed" >&2; exit 1; }
    exit 0
  fi
  [[ "$from" == host ]] && { echo "error: DKT_BASE_FROM=host: $why" >&2; exit 1; }
  echo "not from the host ($why): debootstrap"
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap not installed (apt-get install -y debootstrap)" >&2; exit 1; }

rootfs="$(mktemp -d /tmp/dkt-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror into $rootfs (40 s on a quiet machine, 4.5 min on a busy 2-core one)"
debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

# The egress proxy re-signs TLS: its CA must be trusted inside images, or pip cannot reach PyPI.
extra_ca="${DKT_EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
if compgen -G "$extra_ca/*.crt" >/dev/null; then
  cp "$extra_ca"/*.crt "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null
fi
# Builds use the same mirror as the host (apt in a Dockerfile, e.g. the proxy image).
echo "deb $mirror bookworm main" >"$rootfs/etc/apt/sources.list"

# Trim caches and docs: about 300 MB becomes about 120 MB.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en*' -exec rm -rf {} +

tar -C "$rootfs" -c . | import_image
