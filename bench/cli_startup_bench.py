"""CPU seconds of `dkt` commands that need no tables or models: every command's --help and the store commands.

    .venv/bin/python bench/cli_startup_bench.py [--repeat 3]

Each DAG task, operator command and many tests start `python -m dkt ...` afresh, so what a command imports before
it parses its arguments is paid every time. For each command, the median user+sys CPU seconds of the process over
--repeat runs (CPU, not wall: the figure holds on a busy machine), the store ones on an empty local store in a
temporary folder. Figures: docs/testing.md ("CLI start-up").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from import_bench import ROOT, child_cpu

sys.path.insert(0, str(ROOT))
from dkt.cli import COMMANDS

STORE_COMMANDS = (["data", "list"], ["data", "prune", "--dry-run"], ["models", "list"], ["models", "promotions"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per command (median)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    print(f"load average {os.getloadavg()[0]:.1f}; CPU seconds per command, median of {args.repeat}:")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DKT_STORE": "local", "DKT_STORE_ROOT": f"{tmp}/store", "DKT_WORK_ROOT": f"{tmp}/work"}
        for argv in [["--help"], *([name, "--help"] for name in COMMANDS), *STORE_COMMANDS]:
            cmd = [sys.executable, "-m", "dkt", *argv]
            cpu = child_cpu(cmd, args.repeat, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"  dkt {' '.join(argv):<24} {cpu:5.2f} s")


if __name__ == "__main__":
    main()
