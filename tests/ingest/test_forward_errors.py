"""Bad configuration of the forwarders: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.demo.brokers import free_port
from tests.aws import AWS_ENV, forward, moto_fixture, moto_server_fixture  # noqa: F401

NO_CREDENTIALS = {k: v for k, v in AWS_ENV.items()
                  if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("flapguard forward: error:")
    for word in words:
        assert word in lines[0]


def test_unreachable_security_hub_endpoint_is_a_one_line_error(kafka_bootstrap: str,
                                                               unique_name: str) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    done = forward("securityhub", "--endpoint-url", nobody, "--region", "us-east-1",
                   "--bootstrap-servers", kafka_bootstrap, "--topic", f"{unique_name}-findings",
                   "--once", "--max-attempts", "2")
    assert_one_line_error(done, nobody)


def test_unreachable_sqs_endpoint_is_a_one_line_error(kafka_bootstrap: str, unique_name: str) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    done = forward("sqs", "--endpoint-url", nobody, "--region", "us-east-1",
                   "--queue-url", f"{nobody}/123456789012/q", "--bootstrap-servers", kafka_bootstrap,
                   "--topic", f"{unique_name}-findings", "--deadletter-topic", f"{unique_name}-dl",
                   "--once", "--max-attempts", "2")
    assert_one_line_error(done, "SQS")


@pytest.mark.parametrize("source", ["securityhub", "sqs"])
def test_missing_credentials_is_a_one_line_error(source: str) -> None:
    queue = ["--queue-url", "http://127.0.0.1:9/q"] if source == "sqs" else []
    done = forward(source, "--endpoint-url", "http://127.0.0.1:9", "--region", "us-east-1",
                   "--once", *queue, env=NO_CREDENTIALS)
    assert_one_line_error(done, "no AWS credentials")


def test_bad_broker_address_is_a_one_line_error(moto: str) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    done = forward("securityhub", "--endpoint-url", moto, "--region", "us-east-1",
                   "--bootstrap-servers", nobody, "--once")
    assert_one_line_error(done, "Kafka", nobody)


@pytest.mark.parametrize(("args", "words"), [
    (["securityhub", "--once"], ["no AWS Region"]),
    (["sqs", "--region", "us-east-1", "--once"], ["--queue-url"]),
    (["securityhub", "--region", "us-east-1", "--cursor", "s3:bucket"], ["--cursor"]),
])
def test_incomplete_configuration_is_a_one_line_error(args: list[str], words: list[str]) -> None:
    done = forward(*args, env={k: v for k, v in AWS_ENV.items() if k != "AWS_DEFAULT_REGION"})
    assert_one_line_error(done, *words)


def test_a_damaged_cursor_file_is_a_one_line_error(moto: str, kafka_bootstrap: str, unique_name: str,
                                                   tmp_path: Path) -> None:
    cursor = tmp_path / "cursor.json"
    cursor.write_text("[1, 2")
    done = forward("securityhub", "--endpoint-url", moto, "--region", "us-east-1",
                   "--bootstrap-servers", kafka_bootstrap, "--topic", f"{unique_name}-findings",
                   "--once", "--cursor", f"file:{cursor}")
    assert_one_line_error(done, str(cursor))
