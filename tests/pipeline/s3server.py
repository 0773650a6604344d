"""A real S3 HTTP endpoint for tests: moto's server app in a subprocess, with a versioned bucket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3

from tests.serving.servers import free_port

# moto's threaded server checks If-Match / If-None-Match and then writes, without a lock between the two;
# S3 itself makes a conditional write atomic. The store's concurrency rests on that guarantee, so the test
# server serialises conditional writes (and only those) to give the same one.
LAUNCHER = """
import os, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import create_backend_app

os.environ.setdefault("MOTO_PORT", sys.argv[2])
# S3's app itself, not moto's DomainDispatcherApplication: that one finds the service of every request anew, under one
# lock for all threads, listing moto's ~170 service packages on disk twice per request (a fifth of the server's CPU).
app = create_backend_app("s3")
lock = threading.Lock()

def atomic_conditional_writes(environ, start_response):
    if environ.get("REQUEST_METHOD") == "PUT" and ("HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ):
        with lock:
            return list(app(environ, start_response))
    return app(environ, start_response)

run_simple(sys.argv[1], int(sys.argv[2]), atomic_conditional_writes, threaded=True, request_handler=MotoRequestHandler)
"""

CREDS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def env(self, prefix: str = "dkt") -> dict[str, str]:
        return {**CREDS, "DKT_STORE": "s3", "DKT_S3_BUCKET": self.bucket, "DKT_S3_PREFIX": prefix,
                "DKT_S3_ENDPOINT_URL": self.endpoint}  # fmt: skip

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")  # fmt: skip


@contextmanager
def moto_server(log: Path, bucket: str = "dkt-test") -> Iterator[S3Server]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "127.0.0.1", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **CREDS})  # fmt: skip
    try:
        server = S3Server(f"http://127.0.0.1:{port}", bucket)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {log}") from None
                time.sleep(0.2)
        c = server.client()
        c.create_bucket(Bucket=bucket)
        c.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
