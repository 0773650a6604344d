"""Python commands that the code under test starts as processes, without each paying its imports again.

The data update's export step runs ``DKT_EXPORT_CMD`` as a real process and reads its exit code, stdout and the file
it wrote. ``python -m pipeline.file_export`` spends 0.75 CPU-s importing pandas and the project before it reads a
line, and tests/pipeline/test_data_update.py ran it about twenty times. Here a server process imports the command's
module once; each run of the command is a fork of it:

    python -I -S tests/support/zygote.py run SOCKET MODULE ARGS...     (the command line the code under test runs)

The small client (stdlib only, no site: about 0.02 CPU-s) hands the server its stdin, stdout and stderr, its
argument list, environment and working folder; the server forks, the child runs MODULE as ``__main__``
(``runpy``, as ``python -m MODULE`` does) on those descriptors, and the client exits with the child's exit code. So
the caller still starts a real process, reads its real output and exit code, and the module's code runs in a process
of its own with a fresh copy of the module; only the import of its dependencies is shared.

    with Zygote.started(["pipeline.file_export"], tmp_dir) as zygote:
        env["DKT_EXPORT_CMD"] = zygote.command("pipeline.file_export", "--source", inbox)
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
REPO_ROOT = HERE.parents[2]
CODE = struct.Struct("!i")


def send_request(conn: socket.socket, request: dict[str, object]) -> None:
    """The request as one length-prefixed JSON message, this process's fds 0-2 passed along (SCM_RIGHTS)."""
    body = json.dumps(request).encode()
    fds = array.array("i", [0, 1, 2])
    conn.sendmsg([struct.pack("!I", len(body))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    conn.sendall(body)


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the zygote closed the connection")
        data += chunk
    return data


def client(sock_path: str, module: str, argv: list[str]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(sock_path)
        send_request(conn, {"module": module, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)})
        (code,) = CODE.unpack(recv_exactly(conn, CODE.size))
    return code


def receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    fds = array.array("i")
    head, ancdata, _, _ = conn.recvmsg(4, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    (size,) = struct.unpack("!I", head)
    return json.loads(recv_exactly(conn, size)), list(fds)


def run_child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become ``python -m MODULE ARGV`` on the client's descriptors, report the exit code."""
    import runpy
    import traceback

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command's own process: ended by SIGTERM as Python is
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # `python -m` puts the working folder first
    module = request["module"]
    sys.argv = [module, *request["argv"]]
    sys.modules.pop(module, None)  # a fresh copy runs as __main__, as under `python -m`
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)  # what Python prints for sys.exit("message")
    except BaseException:
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    conn.sendall(CODE.pack(code))
    os._exit(code)


def serve(sock_path: str, preload: Sequence[str]) -> None:
    for name in preload:
        __import__(name)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # out of accept(), to reap the children before exiting

    signal.signal(signal.SIGTERM, stop)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(sock_path)
        server.listen(16)
        print("ready", flush=True)
        parent = os.getppid()
        server.settimeout(10)
        try:
            while True:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    if os.getppid() != parent:  # the test process died without stopping it: no orphan left behind
                        break
                    continue
                conn.settimeout(None)
                request, fds = receive_request(conn)
                sys.stdout.flush()
                sys.stderr.flush()
                if os.fork() == 0:
                    server.close()
                    run_child(conn, request, fds)
                for fd in fds:
                    os.close(fd)
                conn.close()
                reap(block=False)
        except KeyboardInterrupt:
            pass
    reap(block=True)  # waited for, so their CPU counts in this process's, and so in the test's


def reap(block: bool) -> None:
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
            if pid == 0:
                return


@dataclass
class Zygote:
    process: subprocess.Popen[str]
    socket_path: Path

    def command(self, module: str, *args: str | Path) -> str:
        """The shell-quoted command line that runs ``python -m MODULE ARGS...`` through this zygote."""
        argv = [sys.executable, "-I", "-S", str(HERE), "run", str(self.socket_path), module, *map(str, args)]
        return shlex.join(argv)

    @classmethod
    @contextlib.contextmanager
    def started(cls, preload: Sequence[str], folder: Path) -> Iterator[Zygote]:
        path = folder / "zygote.sock"  # AF_UNIX paths are short: pytest's tmp folders fit
        proc = subprocess.Popen(
            [sys.executable, str(HERE), "serve", str(path), *preload],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"the zygote did not start (exit {proc.wait(timeout=60)})")
            yield cls(proc, path)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        sys.exit(client(sys.argv[2], sys.argv[3], sys.argv[4:]))
    sys.path[0] = str(REPO_ROOT)  # as under `python -m` from the root (run as a file, tests/support was first)
    serve(sys.argv[2], sys.argv[3:])
