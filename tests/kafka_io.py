"""Helpers for the integration tests: a worker subprocess and topic readers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.kafka.topics import create_topics

ROLES = ("findings", "alerts", "suppressed", "deadletter", "decisions")


@dataclass
class WorkerRun:
    """One `flapguard worker` child process and its topics."""

    bootstrap: str
    app_id: str
    workdir: Path
    partitions: int = 4
    extra: list[str] = field(default_factory=list)
    # The child's whole environment (None: this process's), e.g. broker security.
    env: dict[str, str] | None = None
    # Whether the worker writes every decision to the decisions topic.
    decisions: bool = True
    # Another findings topic than `<app_id>.findings` (several runs over one input).
    findings_topic: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    source_partitions: int | None = None  # of the findings topic, when `create_source` made it

    @property
    def topics(self) -> dict[str, str]:
        topics = {role: f"{self.app_id}.{role}" for role in ROLES}
        if self.findings_topic is not None:
            topics["findings"] = self.findings_topic
        return topics

    def create_source(self, partitions: int = 1) -> None:
        asyncio.run(create_topics(self.bootstrap, {self.topics["findings"]: partitions}))
        self.source_partitions = partitions

    def start(self) -> None:
        t = self.topics
        args = [
            sys.executable, "-m", "streams", "worker",
            "--bootstrap-servers", self.bootstrap, "--app-id", self.app_id,
            "--findings-topic", t["findings"], "--alerts-topic", t["alerts"],
            "--suppressed-topic", t["suppressed"], "--deadletter-topic", t["deadletter"],
            *(["--decisions-topic", t["decisions"]] if self.decisions else []),
            "--partitions", str(self.partitions),
            "--idle-flush", "2s", "--session-timeout", "6s", "--log-level", "INFO",
            "--data-dir", str(self.workdir / "data"), "--metrics-address", "127.0.0.1:0",
            *self.extra,
        ]
        self.starts += 1
        log = (self.workdir / f"worker-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=self.env)
        log.close()

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / f"worker-{self.starts}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def assert_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")


def read_until(
    bootstrap: str,
    topics: list[str],
    done: Callable[[dict[str, list[Any]]], bool],
    *,
    timeout: float,
    alive: Callable[[], None] | None = None,
) -> dict[str, list[Any]]:
    """All records of `topics` from the start, read until `done(records)` holds."""
    return asyncio.run(_read_until(bootstrap, topics, done, timeout, alive))


async def _read_until(
    bootstrap: str,
    topics: list[str],
    done: Callable[[dict[str, list[Any]]], bool],
    timeout: float,
    alive: Callable[[], None] | None,
) -> dict[str, list[Any]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                metadata_max_age_ms=1000)
    await consumer.start()
    got: dict[str, list[Any]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    try:
        while not done(got):
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                sizes = {t: len(v) for t, v in got.items()}
                raise AssertionError(f"condition not met within {timeout}s; read {sizes}")
            batches = await consumer.getmany(timeout_ms=300)
            for tp, records in batches.items():
                got[tp.topic].extend(records)
    finally:
        await consumer.stop()
    return got


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


AlertKey = tuple[Any, ...]


def expected_alert_keys(decisions: list[dict[str, Any]]) -> set[AlertKey]:
    """(dedup_key, finding_id, kind) of every alert and resolution among decision records,
    the incidents they closed (`closes`, each a `resolved` record) included."""
    keys = {(r["dedup_key"], r["finding_id"], r.get("kind")) for r in decisions
            if r["decision"] in ("alert", "resolved")}
    keys |= {(c["dedup_key"], c["finding_id"], "resolved") for r in decisions
             for c in r.get("closes", ())}
    return keys


def alert_keys(records: list[Any]) -> set[AlertKey]:
    """(dedup_key, finding_id, kind) of every record of an alerts topic: a repeat after a
    retry collapses into its first copy only if it carries the same dedup_key."""
    return {(a["dedup_key"], a["finding_id"], a["kind"]) for a in values(records)}


def read_all(bootstrap: str, topic: str, timeout: float = 30) -> list[Any]:
    """Every record of `topic` up to its end offsets at the time of the call."""
    return asyncio.run(_read_all(bootstrap, topic, timeout))


async def _read_all(bootstrap: str, topic: str, timeout: float) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        assert partitions, f"no topic {topic}"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout}s")
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                got.extend(records)
        return got
    finally:
        await consumer.stop()


def progress_report(run: WorkerRun) -> str:
    """Where a worker stands on its findings topic, for a failure message: end offsets,
    the group's committed offsets and the next findings record each partition's state
    expects (`next_source`)."""
    ends, committed = asyncio.run(_offsets(run))
    meta: dict[int, Any] = {}
    for record in read_all(run.bootstrap, f"{run.app_id}-meta-changelog"):
        if record.value:
            meta[int(orjson.loads(record.key))] = orjson.loads(record.value).get("next_source")
    return f"findings end offsets {ends}, committed {committed}, state expects {meta}"


async def _offsets(run: WorkerRun) -> tuple[dict[int, int], dict[int, int]]:
    from aiokafka.admin import AIOKafkaAdminClient

    topic = run.topics["findings"]
    ends = await end_offsets(run.bootstrap, topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=run.bootstrap)
    await admin.start()
    try:
        committed = {tp.partition: meta.offset
                     for tp, meta in (await admin.list_consumer_group_offsets(run.app_id)).items()
                     if tp.topic == topic}
    finally:
        await admin.close()
    return ends, committed


def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets, by (topic, partition)."""
    return {tp: offset for tp, (offset, _) in committed_with_metadata(bootstrap, group).items()}


def committed_with_metadata(bootstrap: str, group: str) -> dict[tuple[str, int], tuple[int, str]]:
    """The group's committed offsets and the metadata committed with each, by (topic, partition)."""
    async def run() -> dict[tuple[str, int], tuple[int, str]]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {(tp.topic, tp.partition): (meta.offset, meta.metadata)
                for tp, meta in offsets.items() if meta.offset >= 0}

    return asyncio.run(run())


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of every partition of `topic`."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
