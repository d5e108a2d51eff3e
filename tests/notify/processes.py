"""`flapguard notify` as a child process, for the notifier tests on the real broker: its
command line and environment, starting it in its own session with its log, telling it is
still alive, stopping it with a signal, and killing and reaping whatever a test leaves
running; and the routes files those tests give it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

Child = subprocess.Popen[Any]


def notify_args(bootstrap: str, name: str, *extra: str) -> list[str]:
    """`flapguard notify` on `<name>.alerts` as group `<name>-notify`, dead letters to
    `<name>.notify-deadletter`, with short sessions and retries; then `extra`."""
    return [sys.executable, "-m", "streams", "notify", "--bootstrap-servers", bootstrap,
            "--alerts-topic", f"{name}.alerts", "--group-id", f"{name}-notify",
            "--deadletter-topic", f"{name}.notify-deadletter", "--session-timeout", "6s",
            "--retry-base", "20ms", "--retry-max", "100ms", *extra]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without its `FLAPGUARD_*` settings, with `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAPGUARD_")}
    # No /metrics listener: parallel notifiers would collide on the default port.
    env["FLAPGUARD_METRICS_ADDRESS"] = "off"
    env.update(extra)
    return env


def run(args: list[str], *, timeout: float,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `args` to the end, its output captured as text (in `clean_env()` by default)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env=clean_env() if env is None else env)


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `args` in its own session (so that a signal reaches its whole process group),
    stdout and stderr to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
                                start_new_session=True)


def alive(proc: Child, log: Path) -> Callable[[], None]:
    """A check for `wait_until`: fails, with the end of `log`, once `proc` has exited."""
    def check() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"notifier exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    return check


def all_alive(procs: Sequence[Child], logs: Sequence[Path]) -> Callable[[], None]:
    """`alive` of each of `procs` with its log, the one of `logs` at the same place (both
    read when checked: processes may be added to the lists)."""
    def check() -> None:
        for proc, log in zip(procs, logs, strict=True):
            alive(proc, log)()
    return check


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str,
               alive: Callable[[], Any] | None = None) -> None:
    """Poll `condition` until it holds; fail, naming `what`, after `timeout` seconds, or as
    soon as `alive` (if given) fails."""
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


def stop(proc: Child, sig: signal.Signals = signal.SIGTERM, *, timeout: float) -> int:
    """Send `sig` to the process group of `proc` and wait for it: its exit code."""
    return stop_all([proc], sig, timeout=timeout)[0]


def stop_all(procs: Sequence[Child], sig: signal.Signals = signal.SIGTERM, *, timeout: float) -> list[int]:
    """Send `sig` to the process group of each of `procs`, then wait for each: their exit codes."""
    for proc in procs:
        os.killpg(proc.pid, sig)
    return [proc.wait(timeout=timeout) for proc in procs]


def kill(proc: Child) -> None:
    """SIGKILL the process group of `proc` and reap it."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def reaped(*procs: Child) -> Iterator[list[Child]]:
    """When the block ends, however it ends, kill and reap each of `procs` still running.
    Yields the list it watches: append the processes started within the block."""
    running = list(procs)
    try:
        yield running
    finally:
        for proc in running:
            if proc.poll() is None:
                kill(proc)


def route(name: str, *sinks: str, min_severity: str | None = None, continues: bool = False,
          group_by: Sequence[str] = (), group_wait: str | None = None,
          group_interval: str | None = None) -> str:
    """One `[[route]]` of a routes file (routes add up: `PAGES + route(...)`): its name, its
    sinks, and the settings given (`continues`: `continue = true`, the alert goes on to
    the routes after)."""
    def strings(values: Sequence[str]) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    lines = ["[[route]]", f'name = "{name}"']
    if min_severity is not None:
        lines.append(f'match = {{ min_severity = "{min_severity}" }}')
    lines.append(f"sinks = {strings(sinks)}")
    if continues:
        lines.append("continue = true")
    if group_by:
        lines.append(f"group_by = {strings(group_by)}")
    if group_wait is not None:
        lines.append(f'group_wait = "{group_wait}"')
    if group_interval is not None:
        lines.append(f'group_interval = "{group_interval}"')
    return "\n".join(lines) + "\n"


# CRITICAL pages, and goes on to the routes after.
PAGES = route("pages", "pagerduty", min_severity="CRITICAL", continues=True)
