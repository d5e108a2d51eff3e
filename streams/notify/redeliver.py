"""`flapguard notify redeliver`: send the notification dead-letter topic again.

Each dead letter holds the original alert bytes (so the original `dedup_key`) and, in
headers, the sink it failed on and where it came from on the alerts topic. Redelivery
sends it to that sink again, except a PagerDuty `trigger` whose incident has been
resolved since (a later `resolved` record for its `dedup_key` on the alerts topic):
sending it would re-open a closed incident.

Progress is its own consumer group (`<group-id>.redeliver`) on the dead-letter topic,
committed after each record has an outcome: a second run sends nothing again. A run
handles what the topic held when it started; what fails again goes back onto the
dead-letter topic (same headers, new error) for a later run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from streams.core.records import HEADER_REASON
from streams.kafka.workarounds import all_topics_metadata
from streams.notify.deliveries import Origin, delivery_record
from streams.notify.deliveries import Outcome as Delivery
from streams.notify.service import (
    DEADLETTER_REASON,
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_ORIGIN,
    HEADER_SINK,
    Interrupted,
    NotifySettings,
    Sender,
    create_output_topics,
    finish_or_stop,
    now_ms,
    open_senders,
    with_retries,
)
from streams.notify.sinks import Alert, AlertError, Kind, parse_alert

log = logging.getLogger("flapguard.notify")


class Outcome(Enum):
    RESENT = "re-sent"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    sink: str
    value: bytes
    key: bytes | None
    origin: Origin | None
    origin_header: bytes


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    sink: str
    dedup_key: str
    why: str = ""
    attempts: int = 0

    def line(self) -> str:
        why = f": {self.why}" if self.why else ""
        return f"{self.outcome.value:8} {self.sink:10} {self.dedup_key or '-'}{why}"


@dataclass(slots=True)
class Report:
    found: int = 0  # dead letters beyond the group's progress when the run started
    results: list[Result] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    def summary(self) -> str:
        left = self.found - len(self.results)
        stopped = f"; stopped, {left} left for the next run" if left else ""
        return (f"re-sent {self.count(Outcome.RESENT)}, skipped {self.count(Outcome.SKIPPED)}, "
                f"failed {self.count(Outcome.FAILED)} of {self.found} dead-lettered "
                f"notification(s){stopped}")


def parse_origin(header: bytes | None) -> Origin | None:
    """`topic/partition/offset` (`Origin.text`; the topic may itself contain `/`)."""
    if not header:
        return None
    topic, _, rest = header.decode(errors="replace").rpartition("/")
    topic, _, partition = topic.rpartition("/")
    try:
        return Origin(topic, int(partition), int(rest)) if topic else None
    except ValueError:
        return None


def dead_letter_from(record: Any) -> DeadLetter:
    headers = dict(record.headers or ())
    sink = (headers.get(HEADER_SINK) or b"").decode(errors="replace")
    origin_header = headers.get(HEADER_ORIGIN) or b""
    return DeadLetter(sink, record.value or b"", record.key, parse_origin(origin_header), origin_header)


def resolved_since(alert: Alert, origin: Origin | None,
                   resolutions: dict[str, list[Origin]]) -> Origin | None:
    """The `resolved` record that closed this trigger's incident after it was written, if any.
    Without an origin, any resolution of its `dedup_key` counts (never re-open)."""
    for resolution in resolutions.get(alert.dedup_key, ()):
        if origin is None or (resolution.topic, resolution.partition) != (origin.topic, origin.partition):
            return resolution
        if resolution.offset > origin.offset:
            return resolution
    return None


def needs_resolution_check(letter: DeadLetter, alert: Alert) -> bool:
    return letter.sink == "pagerduty" and alert.kind is not Kind.RESOLVED


def redeliver_headers(letter: DeadLetter, error: str, attempts: int) -> list[tuple[str, bytes]]:
    """The headers of a dead letter that failed again: its origin is kept, so a later run
    still knows which alert it was."""
    return [
        (HEADER_REASON, DEADLETTER_REASON),
        (HEADER_SINK, letter.sink.encode()),
        (HEADER_ERROR, error[:1000].encode()),
        (HEADER_ATTEMPTS, str(attempts).encode()),
        (HEADER_ORIGIN, letter.origin_header),
    ]


_DELIVERY_OUTCOMES = {Outcome.RESENT: Delivery.DELIVERED, Outcome.FAILED: Delivery.DEAD_LETTERED,
                      Outcome.SKIPPED: Delivery.SKIPPED}


def redelivery_record(letter: DeadLetter, alert: Alert, result: Result) -> dict[str, Any]:
    """The delivery record of one redelivery (`streams.notify.deliveries`)."""
    failed = result.outcome is Outcome.FAILED
    return delivery_record(
        result.sink, _DELIVERY_OUTCOMES[result.outcome], alert, letter.origin, now_ms(),
        error=result.why if failed else None, attempts=result.attempts if failed else None,
        why=result.why if result.outcome is Outcome.SKIPPED else None, redelivered=True)


def _partitions(cluster: Any, topic: str) -> list[int]:
    return sorted(cluster.partitions_for_topic(topic) or ())


async def _read_resolutions(consumer: Any, settings: NotifySettings, wanted: dict[str, Origin | None],
                            partitions: list[int]) -> dict[str, list[Origin]]:
    """`resolved` records on the alerts topic for the `dedup_key`s in `wanted`, read from the
    earliest origin on each partition (a resolution comes after its trigger) to the end."""
    from aiokafka import TopicPartition

    topic = settings.alerts_topic
    if not wanted or not partitions:
        return {}
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    # A trigger of unknown origin could have been resolved anywhere: read everything then.
    everywhere = any(o is None or o.topic != topic for o in wanted.values())
    for tp in tps:
        # Partitions without a trigger are read whole too: partitions added to the topic
        # since would put a later resolution elsewhere.
        origins = [o.offset for o in wanted.values() if o is not None and o.partition == tp.partition]
        consumer.seek(tp, starts[tp] if everywhere or not origins else max(starts[tp], min(origins)))
    found: dict[str, list[Origin]] = {}
    remaining = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000)
        for tp, records in batch.items():
            for r in records:
                if r.offset >= ends[tp]:
                    continue
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                    value = orjson.loads(r.value or b"")
                    key = value.get("dedup_key")
                    if value.get("kind") == Kind.RESOLVED.value and key in wanted:
                        found.setdefault(key, []).append(Origin(tp.topic, tp.partition, r.offset))
        remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    return found


async def _read_dead_letters(consumer: Any, settings: NotifySettings, partitions: list[int]) -> list[Any]:
    """What the dead-letter topic holds now beyond this group's committed offsets."""
    from aiokafka import TopicPartition

    topic = settings.deadletter_topic
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return []
    consumer.assign(tps)
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        committed = await consumer.committed(tp)
        consumer.seek(tp, max(starts[tp], committed) if committed is not None else starts[tp])
    records: list[Any] = []
    remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000)
        for tp, rs in batch.items():
            records.extend(r for r in rs if r.offset < ends[tp])
        remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    return records


def _alerts_to_check(letters: Iterable[tuple[DeadLetter, Alert | None]]) -> dict[str, Origin | None]:
    """PagerDuty triggers and their earliest origin (None: look everywhere)."""
    wanted: dict[str, Origin | None] = {}
    for letter, alert in letters:
        if alert is None or not needs_resolution_check(letter, alert):
            continue
        if alert.dedup_key in wanted and wanted[alert.dedup_key] is None:
            continue
        earlier = wanted.get(alert.dedup_key)
        if letter.origin is None or earlier is None or letter.origin.offset < earlier.offset:
            wanted[alert.dedup_key] = letter.origin
    return wanted


async def run_redeliver(settings: NotifySettings, senders: dict[str, Sender] | None = None) -> Report:
    """Re-send what the dead-letter topic holds beyond this group's progress."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    report = Report()
    await create_output_topics(settings)  # as the notifier does: redelivery may come first
    kafka = dict(bootstrap_servers=settings.bootstrap_servers, **settings.security.aiokafka_kwargs())
    consumer = AIOKafkaConsumer(group_id=settings.lane_group("redeliver"), enable_auto_commit=False,
                                auto_offset_reset="earliest", **kafka)
    checker = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **kafka)
    producer = AIOKafkaProducer(acks="all", **settings.writes.aiokafka_kwargs(), **kafka)
    async with contextlib.AsyncExitStack() as stack:
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        await checker.start()
        stack.push_async_callback(checker.stop)
        await producer.start()
        stack.push_async_callback(producer.stop)
        if senders is None:
            senders = await stack.enter_async_context(open_senders(settings))
        cluster = await all_topics_metadata(consumer)
        records = await _read_dead_letters(consumer, settings,
                                           _partitions(cluster, settings.deadletter_topic))
        report.found = len(records)
        letters = [(dead_letter_from(r), _alert_or_none(r.value)) for r in records]
        resolutions = await _read_resolutions(checker, settings, _alerts_to_check(letters),
                                              _partitions(cluster, settings.alerts_topic))
        rng = random.Random()
        for record, (letter, alert) in zip(records, letters, strict=True):
            if stop.is_set():
                break
            try:
                result = await _redeliver_one(letter, alert, senders, resolutions, settings, rng, stop)
            except Interrupted:
                break
            if result.outcome is Outcome.FAILED and alert is not None:
                await producer.send_and_wait(settings.deadletter_topic, letter.value, key=letter.key,
                                             headers=redeliver_headers(letter, result.why, result.attempts))
            if alert is not None and settings.deliveries_topic:
                # On the broker before the dead letter is committed: a crash repeats the
                # record at worst, never loses it.
                await producer.send_and_wait(settings.deliveries_topic,
                                             orjson.dumps(redelivery_record(letter, alert, result)),
                                             key=alert.dedup_key.encode())
            tp = TopicPartition(record.topic, record.partition)
            await consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
            report.results.append(result)
            # stderr: the stdout sink may be writing alerts to stdout.
            print(result.line(), file=sys.stderr, flush=True)
    return report


def _alert_or_none(value: bytes | None) -> Alert | None:
    try:
        return parse_alert(value or b"")
    except AlertError:
        return None


async def _redeliver_one(letter: DeadLetter, alert: Alert | None, senders: dict[str, Sender],
                         resolutions: dict[str, list[Origin]], settings: NotifySettings,
                         rng: random.Random, stop: asyncio.Event) -> Result:
    if letter.sink == "securityhub":
        return Result(Outcome.SKIPPED, letter.sink, alert.dedup_key if alert else "",
                      "the write-back is not redone")
    if alert is None or letter.sink == "parse":
        return Result(Outcome.SKIPPED, letter.sink or "-", "", "not an alert record")
    if letter.sink not in senders:
        return Result(Outcome.FAILED, letter.sink or "-", alert.dedup_key,
                      f"sink {letter.sink or '?'} is not configured")
    if needs_resolution_check(letter, alert):
        closed = resolved_since(alert, letter.origin, resolutions)
        if closed is not None:
            return Result(Outcome.SKIPPED, letter.sink, alert.dedup_key,
                          f"incident resolved since ({closed.topic}/{closed.partition}/{closed.offset})")
    sender = senders[letter.sink]

    async def attempt() -> None:
        if sender.limiter is not None:
            await sender.limiter.wait(stop)
        await finish_or_stop(sender.send(alert), stop)

    error, attempts = await with_retries(attempt, settings.retry, rng,
                                         f"{sender.name} redelivery of {alert.dedup_key}", stop)
    if error is not None:
        return Result(Outcome.FAILED, letter.sink, alert.dedup_key, error, attempts)
    return Result(Outcome.RESENT, letter.sink, alert.dedup_key, f"{alert.kind.value} {alert.severity.name}")


def redeliver(settings: NotifySettings) -> Report:
    return asyncio.run(run_redeliver(settings))
