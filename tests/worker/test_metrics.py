"""`streams.worker.metrics`: what the worker counts, bounded labels, the /metrics endpoint."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest
from msgspec.structs import replace
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.backtest.run import read_occurrences, run_backtest
from streams.cli import main
from streams.core.decide import Outcome
from streams.core.engine import PartitionEngine
from streams.core.policy import Policy
from streams.core.state import Store
from streams.worker import metrics

INCIDENT = Path(__file__).parents[1] / "fixtures" / "incident-rds45.jsonl"


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def incident_outcomes() -> list[Outcome]:
    outcomes: list[Outcome] = []
    policy = Policy()
    run_backtest(read_occurrences([INCIDENT], policy=policy, now_ms=int(time.time() * 1000)),
                 policy=policy, partitions=1, on_decision=outcomes.append)
    return outcomes


def test_incident_decisions_are_counted_by_decision_kind_control_and_gap() -> None:
    names = [
        ("flapguard_decisions_total", {"decision": "alert", "reason": "new"}),
        ("flapguard_decisions_total", {"decision": "suppressed", "reason": "recreated_after_archive"}),
        ("flapguard_alerts_total", {"kind": "new", "severity": "MEDIUM", "control_id": "RDS.45"}),
        ("flapguard_alerts_total", {"kind": "new", "severity": "MEDIUM", "control_id": "RDS.27"}),
        ("flapguard_suppressions_total", {"reason": "recreated_after_archive", "control_id": "RDS.45"}),
        ("flapguard_recreate_gap_seconds_count", {"reason": "recreated_after_archive"}),
        ("flapguard_recreate_gap_seconds_sum", {"reason": "recreated_after_archive"}),
    ]
    before = [sample(name, **labels) for name, labels in names]

    for outcome in incident_outcomes():
        if outcome.decision != "dead_letter":  # the worker counts those in `dead_lettered`
            metrics.decided(outcome)

    delta = [sample(name, **labels) - b for (name, labels), b in zip(names, before, strict=True)]
    assert delta[:6] == [2, 1, 1, 1, 1, 1]
    # RDS.45 was re-created 12 h 30 m 18 s after its archive.
    assert delta[6] == pytest.approx(12 * 3600 + 30 * 60 + 18, abs=60)


def test_dead_letters_count_as_decisions_and_start_at_zero() -> None:
    # Known reasons exist before the first one, so `increase()` sees the first.
    assert metrics.REGISTRY.get_sample_value("flapguard_dead_letters_total",
                                             {"reason": "oversized"}) is not None
    before = sample("flapguard_decisions_total", decision="dead_letter", reason="oversized")
    metrics.dead_lettered("oversized")
    assert sample("flapguard_dead_letters_total", reason="oversized") >= 1
    assert sample("flapguard_decisions_total", decision="dead_letter",
                  reason="oversized") == before + 1


def test_control_ids_are_bounded_and_taken_from_per_standard_generator_ids() -> None:
    label = metrics.BoundedLabel(metrics._CONTROL, limit=2)
    assert label("RDS.45") == "RDS.45"
    assert label("arn:aws:rds:eu-west-1:123456789012:cluster:db") == "other"  # a resource id
    assert label("EC2.19") == "EC2.19"
    assert label("S3.1") == "other"  # over the limit
    assert label("RDS.45") == "RDS.45"  # already admitted

    finding = next(o.finding for o in incident_outcomes() if o.finding is not None)
    per_standard = replace(finding, control_id="aws-foundational-security-best-practices/v/1.0.0/RDS.45")
    assert metrics.control_of(per_standard) == "RDS.45"
    assert metrics.control_of(replace(finding, control_id="my-own-product/rule 7")) == "other"


def test_account_label_admits_only_account_ids() -> None:
    label = metrics.BoundedLabel(metrics._ACCOUNT, limit=5)
    assert label("123456789012") == "123456789012"
    assert label("1234") == "other"
    assert label("arn:aws:iam::123456789012:root") == "other"


def test_metrics_endpoint_serves_flapguard_metrics_on_the_given_address() -> None:
    server = metrics.serve("127.0.0.1:0")
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    families = {f.name for f in text_string_to_metric_families(body)}
    assert {"flapguard_findings_consumed", "flapguard_decisions", "flapguard_dead_letters",
            "flapguard_event_time_lag_seconds", "flapguard_pending_holds",
            "process_resident_memory_bytes"} <= families
    assert not [name for name in families if name.endswith("_created")]


def test_a_taken_metrics_port_is_an_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(metrics.MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            metrics.serve(f"127.0.0.1:{port}")


@pytest.mark.parametrize("address", ["9464", "localhost:", ":9464", "host:99999"])
def test_a_malformed_metrics_address_is_a_usage_error(address: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", "--metrics-address", address])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--metrics-address" in err and "host:port" in err
    assert "Traceback" not in err


def test_metrics_address_defaults_to_loopback_and_can_be_turned_off() -> None:
    from streams.cli import build_parser
    from streams.cli.worker import worker_settings_from

    default = worker_settings_from(build_parser().parse_args(["worker"]))
    assert default.metrics_address == "127.0.0.1:9464"
    assert default.metrics_account_label is False
    off = worker_settings_from(build_parser().parse_args(
        ["worker", "--metrics-address", "off", "--metrics-account-label"]))
    assert off.metrics_address is None
    assert off.metrics_account_label is True


def test_partition_gauges_of_partitions_moved_away_are_dropped() -> None:
    engines = [PartitionEngine(Store.in_memory(), Policy(), p) for p in (0, 1)]
    for engine in engines:
        metrics.partition_done(engine, time.perf_counter(), received=True)
    assert metrics.REGISTRY.get_sample_value("flapguard_pending_holds", {"partition": "1"}) == 0

    metrics.state_sizes({"findings": 7}, partitions=[0])  # a rebalance took partition 1

    assert metrics.REGISTRY.get_sample_value("flapguard_pending_holds", {"partition": "1"}) is None
    assert metrics.REGISTRY.get_sample_value(
        "flapguard_last_finding_received_timestamp_seconds", {"partition": "1"}) is None
    assert metrics.REGISTRY.get_sample_value("flapguard_pending_holds", {"partition": "0"}) == 0
    assert sample("flapguard_state_entries", table="findings") == 7
    assert sample("flapguard_assigned_partitions") == 1
    # A partition that comes back reports again.
    metrics.partition_done(engines[1], time.perf_counter(), received=False)
    assert metrics.REGISTRY.get_sample_value("flapguard_pending_holds", {"partition": "1"}) == 0


def test_account_label_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = [o for o in incident_outcomes() if o.finding is not None]
    account = outcomes[0].finding.account  # type: ignore[union-attr]
    before = sample("flapguard_decisions_by_account_total", account=account, decision="alert")
    for outcome in outcomes:
        metrics.decided(outcome)
    assert sample("flapguard_decisions_by_account_total", account=account,
                  decision="alert") == before

    monkeypatch.setattr(metrics.OPTIONS, "account_label", True)
    for outcome in outcomes:
        metrics.decided(outcome)
    assert sample("flapguard_decisions_by_account_total", account=account,
                  decision="alert") == before + 2


def test_each_accounts_last_finding_is_shown_with_the_account_label_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One account of many going silent must show (alert rule FlapguardAccountSilent)."""
    name = "flapguard_account_last_finding_timestamp_seconds"
    findings = [o.finding for o in incident_outcomes() if o.finding is not None]
    account = findings[0].account
    monkeypatch.setattr(metrics.ACCOUNTS_LAST_SEEN, "seen", {})
    metrics.consumed_all(findings)
    assert metrics.REGISTRY.get_sample_value(name, {"account": account}) is None

    monkeypatch.setattr(metrics.OPTIONS, "account_label", True)
    before = time.time()
    metrics.consumed_all(findings)
    seen = metrics.REGISTRY.get_sample_value(name, {"account": account})
    assert seen is not None and before <= seen <= time.time()
    # A malformed account id is `other`, one series however many there are.
    metrics.consumed_all([replace(findings[0], account=f"not-an-account-{n}") for n in range(3)])
    exposition = generate_latest(metrics.REGISTRY).decode()
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    accounts = [s.labels["account"] for s in families[name].samples]
    assert sorted(accounts) == sorted({account, "other"})


def test_observing_many_values_at_once_counts_as_observing_each() -> None:
    registry = CollectorRegistry()
    one = Histogram("one_at_a_time", "", buckets=metrics.LAG_BUCKETS, registry=registry)
    many = Histogram("all_at_once", "", buckets=metrics.LAG_BUCKETS, registry=registry)
    values = [0.0, 0.5, 1.0, *metrics.LAG_BUCKETS[:-1], 7e6, 1e12, 3.25]
    for value in values:
        one.observe(value)
    metrics.observe_all(many, values)
    metrics.observe_all(many, [])

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        family = next(f for f in registry.collect() if f.name == name)
        return [(s.name.removeprefix(name), s.labels, s.value) for s in family.samples]

    assert samples("all_at_once") == samples("one_at_a_time")


def test_a_batch_of_decisions_counts_as_each_decision_alone() -> None:
    outcomes = [o for o in incident_outcomes() if o.decision != "dead_letter"]
    names = [("flapguard_decisions_total", {"decision": "alert", "reason": "new"}),
             ("flapguard_decisions_total", {"decision": "suppressed", "reason": "recreated_after_archive"}),
             ("flapguard_alerts_total", {"kind": "new", "severity": "MEDIUM", "control_id": "RDS.45"})]
    before = [sample(name, **labels) for name, labels in names]
    metrics.decided_all(outcomes)
    middle = [sample(name, **labels) for name, labels in names]
    for outcome in outcomes:
        metrics.decided(outcome)
    after = [sample(name, **labels) for name, labels in names]
    assert [m - b for m, b in zip(middle, before, strict=True)] == [2, 1, 1]
    assert [a - m for a, m in zip(after, middle, strict=True)] == [2, 1, 1]
