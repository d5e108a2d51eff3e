"""Broker TLS and SASL for real: one extra Apache Kafka (module scope) with an SSL
listener that requires client certificates and a SASL_SSL listener with SCRAM users,
under a throwaway CA (tests/secure_kafka.py). The worker, `flapguard replay` and the
notifier connect through them with the flags' environment variables; the tests' own
readers use the broker's PLAINTEXT listener. Wrong credentials are one-line errors,
and no secret ever shows in any output, log, --help or metrics page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.backtest.replay import replay_async
from streams.cli import main
from streams.demo.brokers import default_kafka_libs, free_port
from streams.kafka.security import BrokerSecurity
from streams.kafka.topics import create_topics
from tests.aws import AWS_ENV, client, forward, moto_fixture, moto_server_fixture  # noqa: F401
from tests.builders import envelope, finding
from tests.kafka_io import WorkerRun, read_all, read_until, values
from tests.notify_servers import Reply, http_recorder
from tests.scrape import scrape_until
from tests.secure_kafka import KEY_PASSWORD, SCRAM_PASSWORD, SCRAM_USER, Pki, SecureKafkaBroker, make_pki

FIXTURES = Path(__file__).parents[1] / "fixtures"
INCIDENT = FIXTURES / "incident-rds45.jsonl"
EXPECTED = orjson.loads((FIXTURES / "incident-rds45.expected.json").read_bytes())
EXPECTED_ALERTS = sum(1 for row in EXPECTED if row["decision"] == "alert")
SLACK_SECRET = "/services/T0SECRET/B0SECRET/slackTOKENe5a1c0ffee"
PAGERDUTY_KEY = "pdkey-9f8e7d6c5b4a-secret"
WRONG_PASSWORD = "wrong-Pa55-d00d-also-secret"
TIMEOUT = 120


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[SecureKafkaBroker]:
    libs = default_kafka_libs()
    if not any(libs.glob("kafka_2.13-*.jar")):
        pytest.skip(f"no Apache Kafka jars in {libs}: run scripts/fetch-kafka")
    with SecureKafkaBroker(pki, libs=libs) as started:
        yield started


def base_env(**extra: str) -> dict[str, str]:
    """This environment without FLAPGUARD_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAPGUARD_")}
    env.update(extra)
    return env


def ssl_env(pki: Pki) -> dict[str, str]:
    """SSL with a client certificate whose key is encrypted."""
    return BrokerSecurity("SSL", ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                          key_file=str(pki.client_key_encrypted), key_password=KEY_PASSWORD).to_env()


def sasl_env(pki: Pki, mechanism: str = "SCRAM-SHA-512", password: str = SCRAM_PASSWORD) -> dict[str, str]:
    """SASL_SSL with SCRAM; a client certificate and key password as well (the listener
    does not ask for it), so that every broker secret is in the environment."""
    return BrokerSecurity("SASL_SSL", ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                          key_file=str(pki.client_key_encrypted), key_password=KEY_PASSWORD,
                          sasl_mechanism=mechanism, sasl_username=SCRAM_USER,
                          sasl_password=password).to_env()


SECRETS = (SCRAM_PASSWORD, KEY_PASSWORD, SLACK_SECRET, "slackTOKENe5a1c0ffee", PAGERDUTY_KEY,
           WRONG_PASSWORD)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret shows in {where}"


@contextlib.contextmanager
def worker(broker: SecureKafkaBroker, servers: str, name: str, tmp_path: Path, env: dict[str, str],
           *extra: str) -> Iterator[WorkerRun]:
    run = WorkerRun(broker.bootstrap_servers, name, tmp_path, partitions=2,
                    extra=["--bootstrap-servers", servers, *extra], env=env)
    run.create_source(partitions=1)  # over PLAINTEXT: the test's own setup
    try:
        yield run
    finally:
        run.stop()


def all_alerts(run: WorkerRun) -> list[dict[str, Any]]:
    """The incident's alerts, read over PLAINTEXT once every finding is decided."""
    t = run.topics

    def done(got: dict[str, list[Any]]) -> bool:
        return len({(r["line"], r["index"]) for r in values(got[t["decisions"]])}) >= len(EXPECTED)

    got = read_until(run.bootstrap, [t["alerts"], t["decisions"]], done, timeout=TIMEOUT,
                     alive=run.assert_alive)
    return values(got[t["alerts"]])


@pytest.mark.kafka
def test_worker_reads_and_writes_over_ssl_with_a_client_certificate(
        broker: SecureKafkaBroker, pki: Pki, unique_name: str, tmp_path: Path) -> None:
    env = ssl_env(pki)
    with worker(broker, broker.ssl_servers, unique_name, tmp_path, base_env(**env)) as run:
        security = BrokerSecurity.from_env(env)
        asyncio.run(replay_async([INCIDENT], bootstrap=broker.ssl_servers,
                                 topic=run.topics["findings"], partitions=1, security=security))
        run.start()
        alerts = all_alerts(run)
    assert len(alerts) == EXPECTED_ALERTS and all(a["kind"] == "new" for a in alerts)
    log = run.log_tail(400)
    assert "Traceback" not in log
    assert_no_secret(log, "the worker's log")


@pytest.mark.kafka
def test_sasl_ssl_end_to_end_replay_worker_notifier_and_no_secret_in_any_output(
        broker: SecureKafkaBroker, pki: Pki, unique_name: str, tmp_path: Path) -> None:
    """`flapguard replay` (SCRAM-SHA-512) -> worker (SCRAM-SHA-256, metrics scraped) ->
    notifier (SCRAM-SHA-512) delivering to stdout, Slack and PagerDuty stand-ins, with
    every secret in the environment of every process."""
    with http_recorder(SLACK_SECRET) as slack, http_recorder("/v2/enqueue") as pagerduty:
        pagerduty.default = Reply(202, b'{"status":"success"}')
        secrets = {"FLAPGUARD_SLACK_WEBHOOK_URL": slack.url, "FLAPGUARD_PAGERDUTY_ROUTING_KEY":
                   PAGERDUTY_KEY, "FLAPGUARD_PAGERDUTY_URL": pagerduty.url}
        assert SLACK_SECRET in slack.url
        port = free_port()
        with worker(broker, broker.sasl_servers, unique_name, tmp_path,
                    base_env(**sasl_env(pki, "SCRAM-SHA-256"), **secrets),
                    "--metrics-address", f"127.0.0.1:{port}") as run:
            replayed = subprocess.run(
                [sys.executable, "-m", "streams", "replay", "--input", str(INCIDENT),
                 "--bootstrap-servers", broker.sasl_servers, "--topic", run.topics["findings"]],
                capture_output=True, text=True, timeout=TIMEOUT,
                env=base_env(**sasl_env(pki), **secrets))
            assert replayed.returncode == 0, replayed.stderr[-2000:]
            assert f"replayed {len(INCIDENT.read_bytes().splitlines())} records" in replayed.stdout
            run.start()
            alerts = all_alerts(run)
            assert len(alerts) == EXPECTED_ALERTS
            text, _ = scrape_until(
                f"http://127.0.0.1:{port}/metrics",
                lambda s: sum(v for (name, _), v in s.items() if name == "flapguard_alerts_total")
                >= EXPECTED_ALERTS,
                run.proc, timeout=60)  # type: ignore[arg-type]
        worker_log = run.log_tail(1000)

        notified = subprocess.run(
            [sys.executable, "-m", "streams", "notify", "--bootstrap-servers", broker.sasl_servers,
             "--alerts-topic", run.topics["alerts"], "--group-id", f"{unique_name}-notify",
             "--deadletter-topic", f"{unique_name}.notify-deadletter", "--session-timeout", "6s",
             "--stdout", "--slack-rate", "50/s", "--exit-when-idle", "--log-level", "INFO",
             "--metrics-address", "off"],
            capture_output=True, text=True, timeout=TIMEOUT, env=base_env(**sasl_env(pki), **secrets))
        assert notified.returncode == 0, notified.stderr[-3000:]
        printed = [orjson.loads(line) for line in notified.stdout.splitlines() if line.startswith("{")]
        assert sorted(a["finding_id"] for a in printed) == sorted(a["finding_id"] for a in alerts)
        assert len(slack.requests) == len(pagerduty.requests) == EXPECTED_ALERTS
        assert {r.json()["routing_key"] for r in pagerduty.requests} == {PAGERDUTY_KEY}

    assert "Traceback" not in worker_log
    for where, output in [("replay stdout", replayed.stdout), ("replay stderr", replayed.stderr),
                          ("the worker's log", worker_log), ("the worker's metrics", text),
                          ("notify stdout", notified.stdout), ("notify stderr", notified.stderr)]:
        assert_no_secret(output, where)


@pytest.mark.kafka
def test_the_sqs_forwarder_writes_over_sasl_ssl_and_shows_no_secret(
        broker: SecureKafkaBroker, pki: Pki, moto: str, unique_name: str) -> None:
    """The forwarders connect as the worker does: `forward sqs` (moto's SQS) over SCRAM."""
    sqs = client("sqs", moto)
    queue = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    findings = [finding(f"sasl-{i}", resource=f"arn:aws:rds:us-east-2:123456789012:cluster:db-{i}")
                for i in range(3)]
    for f in findings:
        sqs.send_message(QueueUrl=queue, MessageBody=orjson.dumps(envelope([f])).decode())
    out, dead = f"{unique_name}-findings", f"{unique_name}-deadletter"
    asyncio.run(create_topics(broker.bootstrap_servers, {out: 2, dead: 1}))  # over PLAINTEXT
    done = forward("sqs", "--endpoint-url", moto, "--region", "us-east-1", "--queue-url", queue,
                   "--bootstrap-servers", broker.sasl_servers, "--topic", out,
                   "--deadletter-topic", dead, "--once", "--wait-time", "1s",
                   env={**AWS_ENV, **sasl_env(pki)})
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_all(broker.bootstrap_servers, out)
    assert sorted(orjson.loads(r.value)["Id"] for r in records) == sorted(f["Id"] for f in findings)
    for where, output in [("forward stdout", done.stdout), ("forward stderr", done.stderr)]:
        assert_no_secret(output, where)


def run_cli(args: list[str], env: dict[str, str],
            timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return done, time.monotonic() - began


@pytest.mark.kafka
def test_a_wrong_password_is_a_one_line_error_and_a_quick_exit(
        broker: SecureKafkaBroker, pki: Pki, unique_name: str, tmp_path: Path) -> None:
    env = base_env(**sasl_env(pki, "SCRAM-SHA-512", WRONG_PASSWORD),
                   FLAPGUARD_SLACK_WEBHOOK_URL=f"https://hooks.example.com{SLACK_SECRET}",
                   FLAPGUARD_PAGERDUTY_ROUTING_KEY=PAGERDUTY_KEY)
    for args in (["worker", "--app-id", unique_name, "--data-dir", str(tmp_path / "data"),
                  "--metrics-address", "127.0.0.1:0", "--log-level", "INFO"],
                 ["replay", "--input", str(INCIDENT), "--topic", f"{unique_name}.findings"],
                 ["notify", "--stdout", "--metrics-address", "off", "--alerts-topic", "x"]):
        done, seconds = run_cli([*args, "--bootstrap-servers", broker.sasl_servers], env)
        command = args[0]
        assert done.returncode == 1, (command, done.stderr[-2000:])
        assert seconds < 30, command
        error = done.stderr.strip().splitlines()
        assert error[-1].startswith(f"flapguard {command}: error: Kafka at {broker.sasl_servers}: "
                                    "cannot connect (SASL_SSL SCRAM-SHA-512 as flapguard-svc"), error
        assert "SaslAuthenticationFailed" in error[-1] and "check --sasl-username" in error[-1]
        assert "Traceback" not in done.stderr
        assert_no_secret(done.stdout + done.stderr, f"{command}'s output")


@pytest.mark.kafka
def test_a_wrong_ca_or_a_missing_client_certificate_is_a_one_line_error(
        broker: SecureKafkaBroker, pki: Pki, unique_name: str) -> None:
    wrong_ca = BrokerSecurity("SSL", ca_file=str(pki.other_ca), cert_file=str(pki.client_cert),
                              key_file=str(pki.client_key)).to_env()
    no_cert = BrokerSecurity("SSL", ca_file=str(pki.ca)).to_env()
    args = ["replay", "--input", str(INCIDENT), "--topic", f"{unique_name}.findings",
            "--bootstrap-servers", broker.ssl_servers]
    for env, wanted in [(wrong_ca, "CERTIFICATE_VERIFY_FAILED"), (no_cert, "--ssl-cert-file")]:
        done, seconds = run_cli(args, base_env(**env))
        assert done.returncode == 1 and seconds < 30, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and wanted in lines[0], lines
        assert lines[0].startswith("flapguard replay: error: Kafka at ")
    # A CA file that is not there: a configuration error before any connection.
    done, _ = run_cli(args, base_env(**BrokerSecurity("SSL", ca_file=str(pki.ca) + ".gone").to_env()))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"flapguard replay: error: --ssl-ca-file: file not found: {pki.ca}.gone"]


HELP_COMMANDS = [[], ["worker"], ["backtest"], ["replay"], ["demo"], ["generate"], ["forward"],
                 ["forward", "securityhub"], ["forward", "sqs"], ["notify"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "flapguard")
def test_help_of_every_command_never_shows_a_secret(
        command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, secret in [("FLAPGUARD_SASL_PASSWORD", SCRAM_PASSWORD),
                         ("FLAPGUARD_SSL_KEY_PASSWORD", KEY_PASSWORD),
                         ("FLAPGUARD_SLACK_WEBHOOK_URL", f"https://hooks.example.com{SLACK_SECRET}"),
                         ("FLAPGUARD_PAGERDUTY_ROUTING_KEY", PAGERDUTY_KEY)]:
        monkeypatch.setenv(name, secret)
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    captured = capsys.readouterr()
    assert "usage:" in captured.out
    assert_no_secret(captured.out + captured.err, f"{' '.join(command)} --help")
