"""Run several of the repository's scripts (``inference.py``, ``packer.py``, ...) in ONE child process.

Each script is executed as ``__main__`` from its file (``runpy.run_path``), with its own ``sys.argv`` and its
stdout / stderr captured, exactly as ``python <script> <args>`` would run it, except that the interpreter, and
so the imports of torch, pandas and BentoML, are shared: a test that needs the same script for seven bundles
pays one Python start-up (about 6 CPU seconds each), not seven. The child's environment is the caller's.

    batch = ScriptBatch.start([Job("packer.py", ["--model-dir", "b1"]), ...], env, log_dir)
    ...  # other work meanwhile: the child runs beside it
    results = batch.wait()
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Job:
    script: str  # relative to the repository root
    argv: list[str]


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def exit_code(code: object) -> int:
    """``SystemExit.code`` as the shell sees it: None is 0, a message is 1 (printed to stderr by Python)."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def run_one(job: Job) -> Result:
    out, err = io.StringIO(), io.StringIO()
    argv_before = sys.argv
    sys.argv = [job.script, *job.argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(REPO_ROOT / job.script), run_name="__main__")
            except SystemExit as e:
                code = exit_code(e.code)
                if not isinstance(e.code, int | None):
                    print(e.code, file=sys.stderr)
            except BaseException:  # what an uncaught exception does to `python script.py`: traceback, exit 1
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv_before
    return Result(code, out.getvalue(), err.getvalue())


@dataclass
class ScriptBatch:
    proc: subprocess.Popen[bytes]
    results_file: Path
    log: Path

    @classmethod
    def start(cls, jobs: Sequence[Job], env: Mapping[str, str], work: Path) -> ScriptBatch:
        """The child runs ``jobs`` one after another, in order; ``work`` gets its spec, results and log."""
        work.mkdir(parents=True, exist_ok=True)
        spec, results, log = work / "jobs.json", work / "results.json", work / "batch.log"
        spec.write_text(json.dumps([asdict(j) for j in jobs]))
        argv = [sys.executable, "-m", "tests.support.scripts", str(spec), str(results)]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env={**env, "PYTHONPATH": str(REPO_ROOT)}, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        return cls(proc, results, log)

    def wait(self, timeout: float = 900) -> list[Result]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # no child left behind by a test that gave up on it
            self.proc.wait()
            raise
        if rc != 0 or not self.results_file.is_file():
            raise RuntimeError(f"the script batch exited with {rc}:\n{self.log.read_text()[-3000:]}")
        return [Result(**r) for r in json.loads(self.results_file.read_text())]


def main(argv: list[str]) -> int:
    spec, results = map(Path, argv)
    jobs = [Job(**j) for j in json.loads(spec.read_text())]
    results.write_text(json.dumps([asdict(run_one(job)) for job in jobs]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
