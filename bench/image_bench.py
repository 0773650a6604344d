"""The swarm's inference image, full against slim: size (`docker image ls`) and build cost (wall, CPU-s).

    .venv/bin/python bench/image_bench.py --model-dir BUNDLE [--keep]

Packs BUNDLE (packer.py: the Bento declares the packages its model kind needs), then builds, one after the other,
the runtime image and the Bento's image (`bentoml containerize`, pipeline/swarm_images.py) twice:
- full: the runtime of config/swarm.json's pins as before the slim set (every runtime pin, nothing dropped, pruned
  or stripped);
- slim: the runtime of the Bento's packages (pipeline/swarm_images.runtime_for_bento: dropped, pruned, stripped).
CPU-s is this process's children (context assembly, tar, strip, the docker and bentoml clients) plus the Docker
daemon's own CPU time over the build (read from /proc: other builds running beside it count too). The images are
removed at the end unless --keep. Last line: ``image: full_mb=<a> full_build_s=<b> slim_mb=<c> slim_build_s=<d>``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dkt.cli import Parser  # noqa: E402
from pipeline.swarm_images import (  # noqa: E402
    ImageSpec,
    assemble_context,
    containerize,
    docker_build,
    image_pins,
    load_stack_config,
    run,
    runtime_for_bento,
    venv_files,
)

BASE = "local/python:3.11-bookworm"


def dockerd_cpu_s() -> float:
    """The Docker daemon's CPU seconds so far (user + system, from /proc/<pid>/stat)."""
    pid = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(step: Callable[[], None]) -> tuple[float, float]:
    """(wall s, CPU s) of ``step``: its child processes and the daemon."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    daemon, t0 = dockerd_cpu_s(), time.monotonic()
    step()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime + dockerd_cpu_s() - daemon
    return time.monotonic() - t0, cpu


def size_mb(ref: str) -> tuple[str, float]:
    """(`docker image ls`'s SIZE column, bytes from `docker image inspect` in MB)."""
    shown = run(["docker", "image", "ls", "--format", "{{.Size}}", ref]).strip()
    return shown, int(run(["docker", "image", "inspect", "--format", "{{.Size}}", ref]).strip()) / 1e6


def build_runtime(spec: ImageSpec, ref: str) -> None:
    pins = image_pins(spec)
    assert pins is not None
    with tempfile.TemporaryDirectory(prefix="dkt-image-bench-") as tmp:
        ctx = assemble_context(spec, Path(tmp))
        venv_files(spec, pins).write_tar(ctx / "venv.tar")
        docker_build(ctx, ref, {"BASE_IMAGE": BASE})


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="image_bench", description=__doc__)
    ap.add_argument("--model-dir", type=Path, required=True, help="model bundle written by dkt train")
    ap.add_argument("--keep", action="store_true", help="keep the images it built")
    ap.add_argument("--only", choices=["full", "slim"], help="build only this one")
    args = ap.parse_args(argv)
    out = run([sys.executable, str(ROOT / "packer.py"), "--model-dir", str(args.model_dir)], cwd=ROOT)
    bento = out.strip().splitlines()[-1].split(": ", 1)[1]
    spec = load_stack_config(ROOT / "config" / "swarm.json").images["inference-runtime"]
    full = spec.model_copy(update={"drop_distributions": [], "prune": [], "strip": False})
    tag = f"bench-{os.getpid()}"
    refs: list[str] = []
    figures: dict[str, float] = {}
    try:
        for name, runtime in (("full", full), ("slim", runtime_for_bento(spec, bento))):
            if args.only not in (None, name):
                continue
            runtime_ref, image_ref = f"dkt-bench-runtime-{name}:{tag}", f"dkt-bench-inference-{name}:{tag}"
            refs += [runtime_ref, image_ref]
            wall_r, cpu_r = measured(lambda: build_runtime(runtime, runtime_ref))  # noqa: B023
            wall_i, cpu_i = measured(
                lambda: containerize(bento, [image_ref], {"RUNTIME_IMAGE": runtime_ref, "MODEL_VERSION": tag})  # noqa: B023
            )
            shown, mb = size_mb(image_ref)
            pins = image_pins(runtime) or []
            print(
                f"{name}: {len(pins)} pins; image {image_ref} {shown} ({mb:,.1f} MB) on {runtime_ref};"
                f" runtime build {wall_r:.0f} s wall"
                f" / {cpu_r:.0f} CPU-s, containerize {wall_i:.0f} s / {cpu_i:.0f} CPU-s",
                flush=True,
            )
            figures[f"{name}_mb"], figures[f"{name}_build_s"] = mb, wall_r + wall_i
    finally:
        if not args.keep:
            subprocess.run(["docker", "image", "rm", *refs], capture_output=True, check=False)
    print(" ".join(["image:", *(f"{k}={v:.0f}" for k, v in figures.items())]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
