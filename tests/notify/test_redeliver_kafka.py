"""`flapguard notify redeliver` as a child process on the session's real Apache Kafka, real
HTTP servers standing in for Slack and PagerDuty: dead-lettered notifications go again to
the sink each failed on, with their dedup_keys; a PagerDuty trigger whose incident was
resolved since is never sent again; a second run sends nothing."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from streams.kafka.topics import create_topics_sync
from tests.kafka_io import read_all
from tests.notify.processes import notify_args, reaped, run, start, stop
from tests.notify.test_service_kafka import TIMEOUT, alerts, produce_alerts, slack_titles
from tests.notify_servers import ACCEPTED, Recorder, Reply, http_recorder, released

ROUTING_KEY = "rk-secret-0123"


def history() -> list[dict[str, Any]]:
    """Two CRITICAL alerts; the second is resolved afterwards."""
    opened, closed = alerts(2)
    opened["severity"] = closed["severity"] = "CRITICAL"
    resolved = dict(closed, kind="resolved", title="alert 1 resolved", compliance_status="PASSED")
    return [opened, closed, resolved]


def pagerduty_events(pagerduty: Recorder) -> list[tuple[str, str]]:
    return [(b["event_action"], b["dedup_key"]) for b in pagerduty.bodies()]


def redeliveries(bootstrap: str, alerts_topic: str) -> Counter[tuple[str, str, str, str]]:
    """The redelivery records on the deliveries topic (the notifier's default, which tests
    share) of alerts of `alerts_topic`: (sink, outcome, dedup_key, kind)."""
    records = [orjson.loads(r.value) for r in read_all(bootstrap, "securityhub.deliveries")]
    return Counter((d["sink"], d["outcome"], d["dedup_key"], d["kind"]) for d in records
                   if d.get("redelivered") and str(d.get("origin")).startswith(f"{alerts_topic}/"))


def test_redeliver_resends_to_the_failed_sink_never_reopens_a_resolved_incident_and_runs_once(
    kafka_bootstrap: str, unique_name: str,
) -> None:
    topic, dead = f"{unique_name}.alerts", f"{unique_name}.notify-deadletter"
    create_topics_sync(kafka_bootstrap, {topic: 1})
    made = history()
    produce_alerts(kafka_bootstrap, topic, made)
    with http_recorder("/services/T0/B0/secret") as slack, http_recorder("/v2/enqueue") as pagerduty:
        sinks = ["--slack-webhook-url", slack.url, "--slack-rate", "50/s", "--max-attempts", "1",
                 "--pagerduty-routing-key", ROUTING_KEY, "--pagerduty-url", pagerduty.url]
        # Slack is down; PagerDuty refuses both triggers, then takes the resolve.
        slack.default = Reply(503)
        pagerduty.plan = [Reply(503), Reply(503)]
        pagerduty.default = Reply(202, ACCEPTED)
        first = run(notify_args(kafka_bootstrap, unique_name, *sinks, "--exit-when-idle"), timeout=TIMEOUT)
        assert first.returncode == 3, first.stderr[-3000:]
        letters = read_all(kafka_bootstrap, dead)
        assert Counter(dict(r.headers)["flapguard-sink"] for r in letters) == {b"slack": 3, b"pagerduty": 2}
        assert pagerduty_events(pagerduty)[-1] == ("resolve", "dk-0001")

        # Slack is back, but refuses the first redelivered message once more.
        slack.requests.clear()
        pagerduty.requests.clear()
        slack.default = Reply(200)
        slack.plan = [Reply(503)]
        second = run(notify_args(kafka_bootstrap, unique_name, *sinks, "redeliver"), timeout=TIMEOUT)
        assert second.returncode == 3, second.stderr[-3000:]
        # The open incident is triggered again with its own dedup_key; the resolved one is not.
        assert pagerduty_events(pagerduty) == [("trigger", "dk-0000")]
        assert slack_titles(slack) == ["alert 0", "alert 1", "alert 1 resolved"]
        lines = second.stderr.strip().splitlines()
        assert "skipped  pagerduty  dk-0001: incident resolved since" in "\n".join(lines)
        assert lines[-1].startswith("flapguard notify redeliver: error: re-sent 3, skipped 1, failed 1 of 5")
        # What failed again is back on the dead-letter topic, with its origin on the alerts topic.
        again = read_all(kafka_bootstrap, dead)[len(letters):]
        assert [r.value for r in again] == [orjson.dumps(made[0])]
        assert dict(again[0].headers)["flapguard-origin"] == f"{topic}/0/0".encode()
        assert dict(again[0].headers)["flapguard-sink"] == b"slack"

        # Each dead letter handled has its delivery record, for `flapguard explain`.
        assert redeliveries(kafka_bootstrap, topic) == Counter({
            ("slack", "dead_lettered", "dk-0000", "new"): 1, ("slack", "delivered", "dk-0001", "new"): 1,
            ("slack", "delivered", "dk-0001", "resolved"): 1, ("pagerduty", "delivered", "dk-0000", "new"): 1,
            ("pagerduty", "skipped", "dk-0001", "new"): 1})

        # The next run sends only that one; the one after, nothing.
        slack.requests.clear()
        pagerduty.requests.clear()
        third = run(notify_args(kafka_bootstrap, unique_name, *sinks, "redeliver"), timeout=TIMEOUT)
        assert third.returncode == 0, third.stderr[-3000:]
        assert slack_titles(slack) == ["alert 0"]
        assert pagerduty.requests == []
        fourth = run(notify_args(kafka_bootstrap, unique_name, *sinks, "redeliver"), timeout=TIMEOUT)
        assert fourth.returncode == 0, fourth.stderr[-3000:]
        assert fourth.stderr.strip().splitlines()[-1] == (
            "re-sent 0, skipped 0, failed 0 of 0 dead-lettered notification(s)")
        assert slack_titles(slack) == ["alert 0"] and pagerduty.requests == []
        assert redeliveries(kafka_bootstrap, topic)[("slack", "delivered", "dk-0000", "new")] == 1
    for done in (first, second, third, fourth):
        assert "secret" not in done.stderr + done.stdout


def test_a_redelivery_stopped_by_sigterm_is_not_committed_and_the_next_run_sends_it(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 1})
    produce_alerts(kafka_bootstrap, topic, alerts(1))
    gate = threading.Event()
    with http_recorder("/services/T0/B0/secret") as slack:
        sinks = ["--slack-webhook-url", slack.url, "--max-attempts", "1", "--http-timeout", "300s"]
        slack.default = Reply(503)
        assert run(notify_args(kafka_bootstrap, unique_name, *sinks, "--exit-when-idle",
                               "--deliveries-topic", "off"), timeout=TIMEOUT).returncode == 3
        # Redelivery records go to a deliveries topic no notifier has created: redeliver does.
        deliveries = f"{unique_name}.deliveries"
        sinks += ["--deliveries-topic", deliveries]
        slack.requests.clear()
        slack.default = Reply(200, gate=gate)  # the sink takes the request and never answers
        log = tmp_path / "redeliver.log"
        proc = start(notify_args(kafka_bootstrap, unique_name, *sinks, "redeliver"), log)
        with reaped(proc), released(gate):
            slack.wait_for(1, timeout=TIMEOUT)
            code = stop(proc, timeout=TIMEOUT)
        assert code == 0, log.read_text()[-3000:]
        assert "re-sent 0, skipped 0, failed 0 of 1 dead-lettered notification(s); stopped, 1 left " \
            "for the next run" in log.read_text()
        # Unanswered, so not done: the next run sends it, the one after nothing.
        slack.default = Reply(200)
        again = run(notify_args(kafka_bootstrap, unique_name, *sinks, "redeliver"), timeout=TIMEOUT)
        assert again.returncode == 0, again.stderr[-3000:]
        assert slack_titles(slack) == ["alert 0", "alert 0"]
        assert run(notify_args(kafka_bootstrap, unique_name, *sinks, "redeliver"),
                   timeout=TIMEOUT).returncode == 0
        assert len(slack.requests) == 2
    # One record: the run stopped mid-request wrote none for what it did not finish.
    records = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, deliveries)]
    assert [(d["outcome"], d["redelivered"], d["origin"]) for d in records] == [
        ("delivered", True, f"{topic}/0/0")]
