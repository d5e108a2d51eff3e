"""Real servers on loopback for the notifier tests: an HTTP endpoint that records what
it receives and fails on demand (Slack, PagerDuty, Security Hub stand-ins), and moto in
server mode (SNS, SQS)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

# PagerDuty's answer to an event it took.
ACCEPTED = b'{"status":"success","message":"Event processed"}'


@dataclass(frozen=True)
class Reply:
    """How to answer one request: a status, an optional Retry-After, a pause before it,
    and an optional gate: the reply waits until the test sets it (a stalled sink)."""

    status: int = 200
    body: bytes = b"ok"
    retry_after: str | None = None
    delay_s: float = 0.0
    gate: threading.Event | None = None


@contextlib.contextmanager
def released(gate: threading.Event) -> Iterator[threading.Event]:
    """Set `gate` when the block ends, however it ends: no reply it holds outlasts the test."""
    try:
        yield gate
    finally:
        gate.set()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    method: str = "POST"
    at: float = 0.0  # time.monotonic() on arrival

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Recorder:
    """What the server received, and the replies it will give next (then `default`)."""

    default: Reply = field(default_factory=Reply)
    plan: list[Reply] = field(default_factory=list)
    by_path: dict[str, Reply] = field(default_factory=dict)  # fixed replies for some paths
    requests: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def next_reply(self, received: Received) -> Reply:
        with self.changed:
            self.requests.append(received)
            self.changed.notify_all()
            if received.path in self.by_path:
                return self.by_path[received.path]
            return self.plan.pop(0) if self.plan else self.default

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """Block until `count` requests arrived (never a fixed sleep)."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.requests) >= count, timeout=timeout):
                raise AssertionError(f"{len(self.requests)} requests within {timeout}s, wanted {count}")
            return list(self.requests)

    def wait_answered(self, count: int, timeout: float = 30) -> list[int]:
        """Block until `count` replies were written (the client may read a reply before
        the server thread has noted it)."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.answered) >= count, timeout=timeout):
                raise AssertionError(f"{len(self.answered)} replies within {timeout}s, wanted {count}")
            return list(self.answered)

    def bodies(self) -> list[Any]:
        with self.changed:
            return [r.json() for r in self.requests]


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received = Received(self.path, dict(self.headers.items()), self.rfile.read(length),
                                self.command, time.monotonic())
            reply = recorder.next_reply(received)
            if reply.gate is not None:
                reply.gate.wait(timeout=300)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            try:
                self.send_response(reply.status)
                if reply.retry_after is not None:
                    self.send_header("Retry-After", reply.retry_after)
                kind = "application/json" if reply.body[:1] in (b"{", b"[") else "text/plain"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client gave up (a timeout test)
            with recorder.changed:
                recorder.answered.append(reply.status)
                recorder.changed.notify_all()

        do_PATCH = do_POST  # BatchUpdateFindings is PATCH /findings/batchupdate

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def http_recorder(path: str = "/hook") -> Iterator[Recorder]:
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()


