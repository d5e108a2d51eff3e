"""`flapguard notify` as a child process against the session's real Apache Kafka."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.kafka.topics import create_topics_sync
from tests.kafka_io import read_all
from tests.notify.processes import clean_env, kill, notify_args, run, start
from tests.notify.test_sinks import FINDING_ID, record
from tests.notify_servers import Recorder, Reply, http_recorder

TIMEOUT = 60


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None]) -> None:
    async def run() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in zip(keys, values, strict=True):
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def produce_alerts(bootstrap: str, topic: str, alerts: list[dict[str, Any]]) -> None:
    produce(bootstrap, topic, [orjson.dumps(a) for a in alerts], [a["dedup_key"].encode() for a in alerts])


def alerts(count: int) -> list[dict[str, Any]]:
    return [record(dedup_key=f"dk-{i:04d}", title=f"alert {i}", finding_id=f"{FINDING_ID}-{i}")
            for i in range(count)]


def run_notify(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = run(args, timeout=TIMEOUT, env=env or clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def slack_titles(slack: Recorder) -> list[str]:
    return [b["blocks"][1]["text"]["text"].split("`")[1] for b in slack.bodies()]


def test_contract_every_alert_delivered_once_then_exit_0(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics_sync(kafka_bootstrap, {f"{unique_name}.alerts": 3})
    produce_alerts(kafka_bootstrap, f"{unique_name}.alerts", alerts(25))
    with http_recorder("/services/T0/B0/secret") as slack:
        done = run_notify(notify_args(kafka_bootstrap, unique_name, "--slack-webhook-url", slack.url,
                                      "--slack-rate", "50/s", "--exit-when-idle"))
        assert Counter(slack_titles(slack)) == Counter(f"alert {i}" for i in range(25))
        assert "secret" not in done.stderr
        # Offsets were committed: the same group has nothing left to deliver.
        run_notify(notify_args(kafka_bootstrap, unique_name, "--slack-webhook-url", slack.url,
                               "--exit-when-idle"))
        assert len(slack.requests) == 25


def test_failed_alerts_go_to_the_dead_letter_topic_and_the_consumer_moves_on(
    kafka_bootstrap: str, unique_name: str,
) -> None:
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 1})
    good = alerts(3)
    produce(kafka_bootstrap, topic, [orjson.dumps(good[0]), b"{broken", orjson.dumps(good[1]),
                                     orjson.dumps(good[2])], [b"dk-0000", None, b"dk-0001", b"dk-0002"])
    with http_recorder() as slack:
        # The first alert's two attempts fail; everything after succeeds.
        slack.plan = [Reply(503), Reply(503)]
        done = run(notify_args(kafka_bootstrap, unique_name, "--slack-webhook-url", slack.url,
                               "--slack-rate", "50/s", "--max-attempts", "2",
                               "--exit-when-idle", "--batch-size", "1"), timeout=TIMEOUT)
        assert slack_titles(slack) == ["alert 0", "alert 0", "alert 1", "alert 2"]
    # Failure is not reported as success: exit 3 and one line that says what went where.
    assert done.returncode == 3
    assert done.stderr.strip().splitlines()[-1] == (
        f"flapguard notify: error: 2 notification(s) dead-lettered to {unique_name}.notify-deadletter "
        "(parse 1, slack 1); delivered 2 notifications for 4 records; dead-lettered 2; written back 0")
    dead = read_all(kafka_bootstrap, f"{unique_name}.notify-deadletter")
    assert [r.value for r in dead] == [orjson.dumps(good[0]), b"{broken"]
    headers = [dict(r.headers) for r in dead]
    assert headers[0]["flapguard-sink"] == b"slack"
    assert headers[0]["flapguard-error"] == b"HTTP 503"
    assert headers[0]["flapguard-attempts"] == b"2"
    assert headers[0]["flapguard-reason"] == b"notify_failed"
    assert headers[0]["flapguard-origin"] == f"{topic}/0/0".encode()
    assert headers[1]["flapguard-sink"] == b"parse"
    assert dead[0].key == b"dk-0000"


def test_killed_mid_batch_and_restarted_loses_nothing_and_repeats_keep_the_dedup_key(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    create_topics_sync(kafka_bootstrap, {f"{unique_name}.alerts": 2})
    produce_alerts(kafka_bootstrap, f"{unique_name}.alerts", alerts(30))
    with http_recorder("/v2/enqueue") as pagerduty:
        pagerduty.default = Reply(202, b'{"status":"success"}', delay_s=0.1)  # a slow endpoint
        # A short session: the restarted member need not wait long for the dead one's.
        args = notify_args(kafka_bootstrap, unique_name, "--pagerduty-routing-key", "rk",
                           "--pagerduty-url", pagerduty.url, "--exit-when-idle",
                           "--session-timeout", "1500ms")
        first = start(args, tmp_path / "first.log")
        try:
            pagerduty.wait_for(5, timeout=TIMEOUT)
        finally:
            kill(first)
        killed_after = len(pagerduty.requests)
        assert killed_after < 30, "the batch finished before the kill: nothing was tested"

        pagerduty.default = Reply(202, b'{"status":"success"}')
        run_notify(args)
    bodies = pagerduty.bodies()
    keys = Counter(b["dedup_key"] for b in bodies)
    assert set(keys) == {f"dk-{i:04d}" for i in range(30)}  # nothing lost
    by_key: dict[str, list[Any]] = {}
    for body in bodies:
        by_key.setdefault(body["dedup_key"], []).append(body)
    for repeats in by_key.values():
        assert all(r == repeats[0] for r in repeats)  # a repeat is the same event, same dedup_key


BATCH_UPDATE = "/findings/batchupdate"


def test_write_back_marks_alerted_and_suppressed_findings(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics_sync(kafka_bootstrap, {f"{unique_name}.alerts": 1, f"{unique_name}.suppressed": 1})
    produce_alerts(kafka_bootstrap, f"{unique_name}.alerts", alerts(2))
    suppression = {"finding_id": FINDING_ID, "paired_finding_id": f"{FINDING_ID}-old", "key": "k",
                   "archived_at": "2025-09-30T16:14:03.000Z", "recreated_at": "2025-10-01T04:44:21.000Z",
                   "gap_seconds": 45018.0, "reason": "recreated_after_archive"}
    produce(kafka_bootstrap, f"{unique_name}.suppressed", [orjson.dumps(suppression)], [b"k"])
    with http_recorder("/") as hub:
        hub.default = Reply(200, b'{"ProcessedFindings": [], "UnprocessedFindings": []}')
        env = clean_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                        AWS_REGION="us-east-1", AWS_ENDPOINT_URL_SECURITYHUB=hub.url.rstrip("/"))
        run_notify(notify_args(kafka_bootstrap, unique_name, "--write-back", "--suppressed-topic",
                               f"{unique_name}.suppressed", "--exit-when-idle"), env)
        updates = [r.json() for r in hub.requests if r.path == BATCH_UPDATE]
    ids = {i["Id"]: u.get("Note", {}).get("Text") for u in updates for i in u["FindingIdentifiers"]}
    assert set(ids) == {f"{FINDING_ID}-0", f"{FINDING_ID}-1", FINDING_ID}
    assert all(u["Workflow"] == {"Status": "NOTIFIED"} for u in updates)
    assert ids[f"{FINDING_ID}-0"] is None
    assert "re-created 12h30m18s after" in ids[FINDING_ID]


def test_write_back_copies_a_muted_predecessors_workflow(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics_sync(kafka_bootstrap, {f"{unique_name}.alerts": 1, f"{unique_name}.suppressed": 1})
    predecessor = f"{FINDING_ID}-old"
    suppression = {"finding_id": FINDING_ID, "paired_finding_id": predecessor, "key": "k",
                   "archived_at": "2025-09-30T16:14:03.000Z", "recreated_at": "2025-10-01T04:44:21.000Z",
                   "gap_seconds": 45018.0, "reason": "recreated_after_archive"}
    produce(kafka_bootstrap, f"{unique_name}.suppressed", [orjson.dumps(suppression)], [b"k"])
    with http_recorder("/") as hub:
        hub.default = Reply(200, b'{"ProcessedFindings": [], "UnprocessedFindings": []}')
        # GetFindings answers with the predecessor (and another finding: the endpoint
        # may ignore Filters), muted by an analyst.
        found = {"Findings": [{"Id": "someone-else", "Workflow": {"Status": "SUPPRESSED"}},
                              {"Id": predecessor, "Workflow": {"Status": "SUPPRESSED"}}]}
        hub.by_path["/findings"] = Reply(200, orjson.dumps(found))
        env = clean_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                        AWS_REGION="us-east-1", AWS_ENDPOINT_URL_SECURITYHUB=hub.url.rstrip("/"))
        run_notify(notify_args(kafka_bootstrap, unique_name, "--write-back", "--suppressed-topic",
                               f"{unique_name}.suppressed", "--exit-when-idle"), env)
        lookups = [r.json() for r in hub.requests if r.path == "/findings"]
        updates = [r.json() for r in hub.requests if r.path == BATCH_UPDATE]
    assert lookups and lookups[0]["Filters"] == {"Id": [{"Value": predecessor, "Comparison": "EQUALS"}]}
    assert [(u["FindingIdentifiers"][0]["Id"], u["Workflow"]) for u in updates] == [
        (FINDING_ID, {"Status": "SUPPRESSED"})]


def test_exit_when_idle_on_a_missing_topic_exits_0_and_says_so(
    kafka_bootstrap: str, unique_name: str,
) -> None:
    done = run_notify(notify_args(kafka_bootstrap, unique_name, "--stdout", "--exit-when-idle"))
    assert "does not exist" in done.stderr


def test_stdout_sink_prints_routed_alerts_as_json_lines(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    create_topics_sync(kafka_bootstrap, {f"{unique_name}.alerts": 1})
    sent = [*alerts(3), record(dedup_key="dk-resolved", kind="resolved")]
    produce_alerts(kafka_bootstrap, f"{unique_name}.alerts", sent)
    routes = tmp_path / "routes.toml"
    routes.write_text('notify_resolved = false\n')
    done = run_notify(notify_args(kafka_bootstrap, unique_name, "--stdout", "--routes", str(routes),
                                  "--exit-when-idle"))
    assert [orjson.loads(line) for line in done.stdout.splitlines()] == sent[:3]


def test_no_sink_is_a_one_line_error(kafka_bootstrap: str, unique_name: str) -> None:
    done = run(notify_args(kafka_bootstrap, unique_name), timeout=TIMEOUT)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "no sink configured" in done.stderr


@pytest.mark.parametrize("routes", ['[[route]]\nsinks = ["sns"]\n', "[[route\n"])
def test_bad_or_unsatisfiable_routes_are_one_line_errors(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, routes: str,
) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(routes)
    done = run(notify_args(kafka_bootstrap, unique_name, "--stdout", "--routes", str(path)), timeout=TIMEOUT)
    assert done.returncode == 1
    assert done.stderr.startswith("flapguard notify: error: ") and done.stderr.strip().count("\n") == 0


def test_resolve_reasons_and_unknown_kinds_are_delivered_never_dead_lettered(
    kafka_bootstrap: str, unique_name: str,
) -> None:
    """Resolved alerts that say why their incident closed (`archived`: the finding's window
    passed with no re-creation; `superseded`: a successor opened its own incident; a reason
    this notifier does not know), and a kind it does not know, on the real broker."""
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 1})
    sent = [record(dedup_key="dk-a", title="archived one"),
            record(dedup_key="dk-a", kind="resolved", reason="archived", title="archived one"),
            record(dedup_key="dk-s", kind="resolved", reason="superseded", title="escalated one"),
            record(dedup_key="dk-p", kind="resolved", title="passed one"),
            record(dedup_key="dk-r", kind="resolved", reason="retired", title="retired one"),
            record(dedup_key="dk-e", kind="escalated", severity="CRITICAL", title="new kind")]
    produce_alerts(kafka_bootstrap, topic, sent)
    with http_recorder("/services/T0/B0/x") as slack, http_recorder("/v2/enqueue") as pagerduty:
        pagerduty.default = Reply(202, b'{"status":"success"}')
        run_notify(notify_args(kafka_bootstrap, unique_name, "--slack-webhook-url", slack.url,
                               "--slack-rate", "50/s", "--pagerduty-routing-key", "rk",
                               "--pagerduty-url", pagerduty.url, "--exit-when-idle"))
        events = [(b["dedup_key"], b["event_action"]) for b in pagerduty.bodies()]
        texts = [b["text"] for b in slack.bodies()]
    assert events == [("dk-a", "trigger"), ("dk-a", "resolve"), ("dk-s", "resolve"), ("dk-p", "resolve"),
                      ("dk-r", "resolve"), ("dk-e", "trigger")]
    assert [t.split(":")[0] for t in texts] == [
        "MEDIUM security finding (new)", "Resolved (MEDIUM, archived)", "Resolved (MEDIUM, superseded)",
        "Resolved (MEDIUM)", "Resolved (MEDIUM, retired)", "CRITICAL security finding (escalated)"]
    assert read_all(kafka_bootstrap, f"{unique_name}.notify-deadletter") == []
