"""`flapguard forward securityhub` against moto in server mode and the real Kafka broker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from streams.core.findings import Finding, parse_message
from streams.core.keys import partition_for
from streams.core.policy import Policy
from streams.kafka.topics import create_topics
from tests.aws import (  # noqa: F401
    ThrottlingProxy,
    forward,
    import_findings,
    moto_fixture,
    moto_server_fixture,
    start_forward,
)
from tests.builders import at, epoch_ms, finding, parse_one
from tests.kafka_io import read_all, read_until

PARTITIONS = 4
ACCOUNTS = ("111111111111", "222222222222", "333333333333")


def spread(count: int, *, prefix: str, region: str, start_minute: int = 0) -> list[dict[str, Any]]:
    """`count` findings across three accounts and three resources, one a minute."""
    return [
        finding(f"{prefix}{i}", account=ACCOUNTS[i % 3], region=region,
                resource=f"arn:aws:rds:{region}:{ACCOUNTS[i % 3]}:cluster:db-{i % 7}",
                control=("RDS.45", "RDS.27", "EC2.7")[i % 3],
                created=at(minutes=start_minute + i), updated=at(minutes=start_minute + i))
        for i in range(count)
    ]


def topic(bootstrap: str, name: str) -> str:
    asyncio.run(create_topics(bootstrap, {name: PARTITIONS}))
    return name


def assert_keyed_as_the_core(records: list[Any], imported: list[dict[str, Any]]) -> None:
    """Every imported finding exactly once, keyed and placed as the worker would."""
    by_id = {f["Id"]: f for f in imported}
    seen = [orjson.loads(r.value)["Id"] for r in records]
    assert sorted(seen) == sorted(by_id)
    for record in records:
        core: Finding = parse_one(orjson.loads(record.value))
        assert record.key == core.partition_key.encode()
        assert record.key == parse_one(by_id[core.id]).partition_key.encode()
        assert record.partition == partition_for(record.key, PARTITIONS)


def test_once_forwards_every_page_exactly_once_keyed_as_the_core_keys_it(
        moto: str, kafka_bootstrap: str, unique_name: str) -> None:
    findings = import_findings(moto, "us-east-1", spread(250, prefix="a", region="eu-west-1")
                               + spread(20, prefix="b", region="us-east-1"))
    out = topic(kafka_bootstrap, f"{unique_name}-findings")

    done = forward("securityhub", "--endpoint-url", moto, "--region", "us-east-1",
                   "--bootstrap-servers", kafka_bootstrap, "--topic", out, "--once")

    assert done.returncode == 0, done.stderr
    assert "forwarded 270 findings" in done.stdout
    assert done.stderr == ""  # no progress line when stderr is not a terminal
    assert_keyed_as_the_core(read_all(kafka_bootstrap, out), findings)


def test_pages_carry_every_finding_once_on_the_partition_its_key_hashes_to(
        moto: str, kafka_bootstrap: str, unique_name: str) -> None:
    """`--pages`: the batching form, which the worker decides without repartitioning."""
    findings = import_findings(moto, "us-east-1", spread(250, prefix="p", region="eu-west-1"))
    out = topic(kafka_bootstrap, f"{unique_name}-findings")

    done = forward("securityhub", "--endpoint-url", moto, "--region", "us-east-1",
                   "--bootstrap-servers", kafka_bootstrap, "--topic", out, "--once", "--pages")

    assert done.returncode == 0, done.stderr
    assert "forwarded 250 findings" in done.stdout
    records = read_all(kafka_bootstrap, out)
    assert len(records) < len(findings) / 10  # GetFindings pages of 100, split per partition
    seen = []
    for record in records:
        assert record.key is None
        page = parse_message(record.value, policy=Policy(), now_ms=epoch_ms(at(days=1)))
        assert all(isinstance(f, Finding) for f in page)
        assert {partition_for(f.partition_key, PARTITIONS) for f in page if isinstance(f, Finding)} \
            == {record.partition}
        seen.extend(f.id for f in page if isinstance(f, Finding))
    assert sorted(seen) == sorted(f["Id"] for f in findings)


def test_regions_are_each_polled_and_the_cursor_resumes_with_its_overlap(
        moto: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    east = import_findings(moto, "us-east-1", spread(120, prefix="e", region="us-east-1"))
    west = import_findings(moto, "eu-west-1", spread(30, prefix="w", region="eu-west-1"))
    out = topic(kafka_bootstrap, f"{unique_name}-findings")
    cursor = tmp_path / "cursor.json"
    args = ("securityhub", "--endpoint-url", moto, "--regions", "us-east-1,eu-west-1",
            "--bootstrap-servers", kafka_bootstrap, "--topic", out, "--once",
            "--cursor", f"file:{cursor}", "--overlap", "10m")

    first = forward(*args)
    assert first.returncode == 0, first.stderr
    assert_keyed_as_the_core(read_all(kafka_bootstrap, out), east + west)
    stored = orjson.loads(cursor.read_bytes())
    assert {v["updated_at"] for v in stored.values()} == {at(minutes=119), at(minutes=29)}

    # A day later: 15 new findings in us-east-1; moto still returns all 135 there.
    later = import_findings(moto, "us-east-1", spread(15, prefix="n", region="us-east-1",
                                                      start_minute=24 * 60))
    second = forward(*args)

    assert second.returncode == 0, second.stderr
    counts = Counter(orjson.loads(r.value)["Id"] for r in read_all(kafka_bootstrap, out))
    # The new ones, plus each Region's last 10 minutes before its cursor (client-side
    # UpdatedAt filter: moto ignores Filters) once more; nothing else again.
    overlap = {f["Id"] for f in east if epoch_ms(f["UpdatedAt"]) >= epoch_ms(at(minutes=109))}
    overlap |= {f["Id"] for f in west if epoch_ms(f["UpdatedAt"]) >= epoch_ms(at(minutes=19))}
    assert len(overlap) == 11 + 11
    assert {i for i, n in counts.items() if n == 2} == overlap
    assert {i for i, n in counts.items() if n == 1} == {f["Id"] for f in east + west + later} - overlap
    assert max(counts.values()) == 2


def test_a_killed_poller_restarts_from_its_acknowledged_cursor_and_loses_nothing(
        moto: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    findings = import_findings(moto, "us-east-1", spread(250, prefix="k", region="us-east-1"))
    out = topic(kafka_bootstrap, f"{unique_name}-findings")
    cursor = tmp_path / "cursor.json"
    args = ["securityhub", "--endpoint-url", moto, "--region", "us-east-1",
            "--bootstrap-servers", kafka_bootstrap, "--topic", out, "--cursor", f"file:{cursor}",
            "--overlap", "0s", "--endpoint-sorts", "yes", "--rate", "4", "--burst", "1"]
    # Pages of 10 at 4 requests/s: about 6 s for the whole backfill.
    first = start_forward(*args, "--page-size", "10", log=tmp_path / "first.log")
    read_until(kafka_bootstrap, [out], lambda got: len(got[out]) >= 60, timeout=60)
    assert first.poll() is None, (tmp_path / "first.log").read_text()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = read_all(kafka_bootstrap, out)
    acked = {orjson.loads(r.value)["Id"] for r in before}
    assert len(acked) < len(findings)  # killed mid-run
    resumed_at = orjson.loads(cursor.read_bytes())
    (value,) = resumed_at.values()
    # The cursor never names a finding the broker had not acknowledged.
    assert any(f["UpdatedAt"] == value["updated_at"] and f["Id"] in acked for f in findings)

    second = forward(*args, "--page-size", "10", "--once")

    assert second.returncode == 0, second.stderr
    after = read_all(kafka_bootstrap, out)
    assert {orjson.loads(r.value)["Id"] for r in after} == {f["Id"] for f in findings}
    resent = len(after) - len(before)
    # Resumed from the cursor, not from the start.
    assert resent == sum(1 for f in findings if f["UpdatedAt"] >= value["updated_at"])


def test_a_throttled_poller_backs_off_and_finishes_losing_nothing(
        moto: str, kafka_bootstrap: str, unique_name: str) -> None:
    findings = import_findings(moto, "us-east-1", spread(250, prefix="t", region="us-east-1"))
    out = topic(kafka_bootstrap, f"{unique_name}-findings")
    # The first page goes through; then 5 throttled answers in a row: more than
    # botocore's 3 attempts, so the poller's own back-off restarts the sweep too.
    with ThrottlingProxy(moto, throttled=range(1, 6)) as proxy:
        done = forward("securityhub", "--endpoint-url", proxy.url, "--region", "us-east-1",
                       "--bootstrap-servers", kafka_bootstrap, "--topic", out, "--once",
                       "--max-attempts", "3")

    assert done.returncode == 0, done.stderr
    assert proxy.throttled_count == 5
    assert proxy.requests >= 5 + 3 + 1  # throttled, three pages, a restarted first page
    assert "throttled" in done.stderr  # the poller said it was backing off
    assert_keyed_as_the_core(read_all(kafka_bootstrap, out), findings)


def test_roles_are_assumed_in_each_member_account_without_an_administrator(
        moto: str, kafka_bootstrap: str, unique_name: str) -> None:
    roles = [f"arn:aws:iam::{account}:role/flapguard-reader" for account in ACCOUNTS[1:]]
    findings = []
    for n, role in enumerate(roles):
        account = role.split(":")[4]
        findings += import_findings(moto, "us-east-1", [
            finding(f"r{n}-{i}", account=account, updated=at(minutes=i)) for i in range(30)], role)
    import_findings(moto, "us-east-1", [finding("default-account-only")])  # not assumed: not read
    out = topic(kafka_bootstrap, f"{unique_name}-findings")

    done = forward("securityhub", "--endpoint-url", moto, "--sts-endpoint-url", moto,
                   "--region", "us-east-1", "--role-arn", ",".join(roles),
                   "--bootstrap-servers", kafka_bootstrap, "--topic", out, "--once")

    assert done.returncode == 0, done.stderr
    assert_keyed_as_the_core(read_all(kafka_bootstrap, out), findings)


def test_continuous_poller_keeps_its_cursor_in_a_compacted_topic_and_sends_each_update_once(
        moto: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    findings = import_findings(moto, "us-east-1", spread(150, prefix="c", region="us-east-1"))
    out = topic(kafka_bootstrap, f"{unique_name}-findings")
    poller = start_forward("securityhub", "--endpoint-url", moto, "--region", "us-east-1",
                           "--bootstrap-servers", kafka_bootstrap, "--topic", out,
                           "--poll-interval", "0.3s", log=tmp_path / "poller.log")
    try:
        read_until(kafka_bootstrap, [out], lambda got: len(got[out]) >= 150, timeout=60)
        # Later updates of five findings, and two new ones, while it keeps polling.
        updates = [dict(f, UpdatedAt=at(hours=5, minutes=i)) for i, f in enumerate(findings[:5])]
        fresh = spread(2, prefix="late", region="us-east-1", start_minute=6 * 60)
        findings_now = import_findings(moto, "us-east-1", updates + fresh)
        read_until(kafka_bootstrap, [out], lambda got: len(got[out]) >= 157, timeout=60)
        cursor_topic = f"{out}.cursor"
        newest = max(f["UpdatedAt"] for f in findings_now)
        read_until(kafka_bootstrap, [cursor_topic],
                   lambda got: any(orjson.loads(r.value)["updated_at"] == newest for r in got[cursor_topic]),
                   timeout=60)
    finally:
        os.killpg(poller.pid, signal.SIGTERM)
        code = poller.wait(timeout=30)
    assert code == 0, (tmp_path / "poller.log").read_text()
    records = read_all(kafka_bootstrap, out)
    # Many sweeps over a 15-minute overlap, yet each (finding, UpdatedAt) went out once.
    sent = Counter((orjson.loads(r.value)["Id"], orjson.loads(r.value)["UpdatedAt"]) for r in records)
    assert max(sent.values()) == 1
    assert set(sent) == {(f["Id"], f["UpdatedAt"]) for f in findings + findings_now}
    (key,) = {r.key for r in read_all(kafka_bootstrap, cursor_topic)}
    assert key is not None and b"us-east-1" in key
