#!/usr/bin/env bash
# `make test`'s runner: the Docker suite (mostly waiting on image builds and rolling updates) runs beside
# the rest (CPU-bound on about one core), so both cores work and the wall time is about the longer of the two.
# Usage: mk/run-tests.sh PYTHON [pytest args...]. Exits non-zero when either run fails, "no tests" (5) included.
set -uo pipefail
py=$1
shift
logdir=$(mktemp -d -t dkt-tests.XXXXXX)
"$py" -m pytest tests/docker "$@" >"$logdir/docker.log" 2>&1 &
docker_pid=$!
"$py" -m pytest --ignore=tests/docker "$@" 2>&1 | tee "$logdir/main.log"
main_rc=${PIPESTATUS[0]}
echo "== waiting for tests/docker (running alongside; log $logdir/docker.log)"
wait "$docker_pid"
docker_rc=$?
cat "$logdir/docker.log"

# One closing line over both runs, from each run's pytest summary (its last line).
count() { tail -n 1 "$logdir/$1.log" | grep -oE "[0-9]+ $2" | grep -oE '^[0-9]+' || echo 0; }
passed=$(($(count main passed) + $(count docker passed)))
failed=$(($(count main failed) + $(count docker failed) + $(count main error) + $(count docker error)))
skipped=$(($(count main skipped) + $(count docker skipped)))
echo "pytest exit codes: main $main_rc, docker $docker_rc"
echo "total: $passed passed, $failed failed, $skipped skipped"
[ "$main_rc" -eq 0 ] && [ "$docker_rc" -eq 0 ]
