#!/usr/bin/env bash
# Usage: mk/apt-install.sh [apt-get install options] PACKAGE...
# Installs Debian packages as root, one apt-get at a time across every caller. `make test` installs its parts side
# by side (Docker, chromium, prometheus): apt-get's -o DPkg::Lock::Timeout waits for dpkg's lock only, not for
# /var/lib/apt/lists/lock that `apt-get update` takes, so a second update failed at once ("Could not get lock") and
# stopped the run on a fresh machine. A flock around update + install serialises them; the wait is bounded.
set -euo pipefail
[[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || {
  echo "error: installing ${*: -1} needs root and apt-get" >&2
  exit 1
}
exec 9>/var/lock/dkt-apt-install.lock
flock -w 900 9 || { echo "error: another apt-get held /var/lock/dkt-apt-install.lock for 15 minutes" >&2; exit 1; }
apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@"
