"""AWS stand-ins for the forwarder tests: moto in server mode on a free loopback port,
a throttling HTTP proxy in front of it, findings made importable, and the forwarder
run as a child process (so it can be killed for real).

Fixtures here are imported by the test modules that use them:
``from tests.aws import moto_fixture, moto_server_fixture  # noqa: F401``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from streams.demo.brokers import free_port

MOTO_SERVER = Path(sys.executable).with_name("moto_server")

# Fake credentials for moto; no shared config or instance metadata is consulted.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/flapguard-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/flapguard-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer at {url} within {timeout}s") from None
            time.sleep(0.1)


@pytest.fixture(scope="session", name="moto_server")
def moto_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not MOTO_SERVER.exists():
        pytest.skip(f"{MOTO_SERVER} missing: install the test extras (moto[server])")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/moto-api/", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(name="moto")
def moto_fixture(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The endpoint URL of the session's moto server, emptied for this test; fake
    credentials in the environment."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return moto_server


def client(service: str, endpoint: str, region: str = "us-east-1", role_arn: str | None = None) -> Any:
    """A boto3 client on moto; with `role_arn`, in the role's account (moto keeps one
    backend per account)."""
    import boto3

    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    if role_arn is not None:
        sts = boto3.client("sts", endpoint_url=endpoint, region_name=region, **keys)
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="flapguard-test")["Credentials"]
        keys = {"aws_access_key_id": creds["AccessKeyId"],
                "aws_secret_access_key": creds["SecretAccessKey"],
                "aws_session_token": creds["SessionToken"]}
    return boto3.client(service, endpoint_url=endpoint, region_name=region, **keys)


def importable(finding: dict[str, Any], shape: Any) -> dict[str, Any]:
    """`finding` without the members botocore's BatchImportFindings model does not know
    (the public samples carry a few, e.g. FindingProviderFields.Severity.Normalized)."""
    def clean(value: Any, shape: Any) -> Any:
        if shape.type_name == "structure":
            return {k: clean(v, shape.members[k]) for k, v in value.items() if k in shape.members}
        if shape.type_name == "list":
            return [clean(v, shape.member) for v in value]
        if shape.type_name == "map":
            return {k: clean(v, shape.value) for k, v in value.items()}
        return value

    cleaned: dict[str, Any] = clean(finding, shape)
    return cleaned


def import_findings(endpoint: str, region: str, findings: Sequence[dict[str, Any]],
                    role_arn: str | None = None) -> list[dict[str, Any]]:
    """BatchImportFindings in batches of 100; the findings as imported."""
    hub = client("securityhub", endpoint, region, role_arn)
    model = hub.meta.service_model.operation_model("BatchImportFindings")
    shape = model.input_shape.members["Findings"].member
    cleaned = [importable(f, shape) for f in findings]
    for start in range(0, len(cleaned), 100):
        answer = hub.batch_import_findings(Findings=cleaned[start:start + 100])
        assert answer["FailedCount"] == 0, answer["FailedFindings"][:1]
    return cleaned


def forward(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`flapguard forward ...` to completion."""
    return subprocess.run([sys.executable, "-m", "streams", "forward", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=forwarder_env(env))


def start_forward(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """`flapguard forward ...` in the background, output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "streams", "forward", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=forwarder_env(None),
                                start_new_session=True)


def forwarder_env(env: dict[str, str] | None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "FLAPGUARD_")) and k != "KAFKA_BOOTSTRAP_SERVERS"}
    # No /metrics listener: parallel forwarders would collide on the default port.
    return {**base, "FLAPGUARD_METRICS_ADDRESS": "off", **(AWS_ENV if env is None else env)}


class ThrottlingProxy:
    """A loopback HTTP endpoint in front of moto that answers the requests whose
    number (0-based) is in `throttled` the way the Security Hub REST API throttles
    (HTTP 429, `{"__type": "ThrottlingException"}`), and proxies the others."""

    def __init__(self, upstream: str, throttled: range) -> None:
        self.upstream = upstream
        self.throttled = throttled
        self.requests = 0
        self.throttled_count = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._handle()

            def do_GET(self) -> None:
                self._handle()

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    number = proxy.requests
                    proxy.requests += 1
                    throttle = number in proxy.throttled
                    proxy.throttled_count += throttle
                if throttle:
                    self._reply(429, {"Content-Type": "application/json",
                                      "x-amzn-ErrorType": "ThrottlingException"},
                                b'{"__type":"ThrottlingException","message":"Rate exceeded"}')
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                request = urllib.request.Request(proxy.upstream + self.path, data=body or None,
                                                 headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        self._reply(answer.status, dict(answer.headers), answer.read())
                except urllib.error.HTTPError as error:
                    self._reply(error.code, dict(error.headers), error.read())

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                            "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThrottlingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
