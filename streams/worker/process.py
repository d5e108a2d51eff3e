"""`flapguard worker` as a child process: for the demo and the Kafka-path backtest."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path


@contextlib.contextmanager
def worker_process(args: list[str], log_path: Path, *, stop_timeout_s: float = 30.0,
                   env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `flapguard worker ARGS` with its output in `log_path`; on exit, SIGTERM its
    process group (Faust finishes the batch in hand and commits), SIGKILL if it hangs.
    `env` adds to this process's environment (broker security: `BrokerSecurity.to_env`,
    so that no secret is on the child's command line)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streams", "worker", *args],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env} if env else None)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
