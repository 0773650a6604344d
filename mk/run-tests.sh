#!/usr/bin/env bash
# `make test`'s runner: the Docker suite (mostly waiting on image builds and rolling updates) runs beside
# the rest, which runs on TEST_WORKERS pytest-xdist workers (tests sharing the live `bentoml serve` stay on
# one worker: --dist loadgroup, see tests/conftest.py). The wall time is about the longer of the two runs.
# Each run ends with its time and CPU per worker (tests/support/timeline.py) and leaves a per-test timeline
# (JSON lines: worker, test, phase, start, stop, CPU) in the log folder, to see where a slow run spent its time.
# Usage: mk/run-tests.sh PYTHON [pytest args...]. Exits non-zero when either run fails, "no tests" (5) included.
set -uo pipefail
# Where PYTHONDONTWRITEBYTECODE is set (this project's machines), no test run kept any bytecode: every pytest process
# rewrote the assertions of each test module again (5 of the 21 CPU-s a worker spent collecting), and each of the
# suite's hundreds of subprocesses compiled the project's modules again (0.1 CPU-s a `dkt models --help`, more for a
# training). Written once, read by every later process: .pyc files in __pycache__ (git-ignored; the Bento and the
# image build contexts exclude them), pytest's rewritten ones beside the test modules.
unset PYTHONDONTWRITEBYTECODE
py=$1
shift
workers=${TEST_WORKERS:-2}
logdir=$(mktemp -d -t dkt-tests.XXXXXX)
start=$SECONDS
("$py" -m pytest tests/docker --timeline "$logdir/docker-timeline.jsonl" "$@" >"$logdir/docker.log" 2>&1
 echo "$? $((SECONDS - start))" >"$logdir/docker.rc") &
docker_pid=$!
"$py" -m pytest --ignore=tests/docker -n "$workers" --dist loadgroup --timeline "$logdir/main-timeline.jsonl" "$@" 2>&1 |
  tee "$logdir/main.log"
main_rc=${PIPESTATUS[0]}
main_s=$((SECONDS - start))
echo "== waiting for tests/docker (running alongside; log $logdir/docker.log)"
wait "$docker_pid"
read -r docker_rc docker_s <"$logdir/docker.rc" || { docker_rc=1 docker_s="?"; }  # killed before it could write
cat "$logdir/docker.log"

# One closing line over both runs, from each run's pytest summary (its last line).
count() { tail -n 1 "$logdir/$1.log" | grep -oE "[0-9]+ $2" | grep -oE '^[0-9]+' || echo 0; }
passed=$(($(count main passed) + $(count docker passed)))
failed=$(($(count main failed) + $(count docker failed) + $(count main error) + $(count docker error)))
skipped=$(($(count main skipped) + $(count docker skipped)))
echo "pytest exit codes: main $main_rc, docker $docker_rc (5 = no tests ran: a failure too)"
echo "wall time: main suite ${main_s} s on $workers workers, docker suite ${docker_s} s beside it"
echo "total: $passed passed, $failed failed, $skipped skipped"
[ "$main_rc" -eq 0 ] && [ "$docker_rc" -eq 0 ]
