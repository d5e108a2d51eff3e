"""OffsetGuard (streams/worker/offsets.py): records faust-streaming's consumer skipped are read
directly, also on a partition with nothing committed and no state yet."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from faust.types import TP

from streams.worker.offsets import OffsetGuard
from tests.faust_fakes import Gaps, Record


class Consumer:
    def __init__(self, committed: dict[TP, int], earliest: int, assigned: set[TP] | None = None) -> None:
        self._committed_offset = committed
        self._gap: defaultdict[TP, Gaps] = defaultdict(Gaps)
        self.earliest = earliest
        self.assigned = assigned or set()
        self.asked = 0

    def assignment(self) -> set[TP]:
        return self.assigned



class App:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer


def guard(committed: dict[TP, int], earliest: int, assigned: set[TP] | None = None
          ) -> tuple[OffsetGuard, Consumer, list[Any]]:
    consumer = Consumer(committed, earliest, assigned)
    g = OffsetGuard("unused:9092", App(consumer))
    reads: list[Any] = []

    async def read(topic: str, partition: int, start: int, end: int) -> list[Any]:
        reads.append((start, end))
        return [Record(topic, partition, o) for o in range(start, end)]

    async def earliest(tps: set[TP]) -> dict[TP, int]:
        consumer.asked += 1
        return dict.fromkeys(tps, consumer.earliest)

    g._read = read  # type: ignore[method-assign]
    g._earliest = earliest  # type: ignore[method-assign]
    return g, consumer, reads


def missing(g: OffsetGuard, record: Record, expected: int | None) -> Any:
    return asyncio.run(g.missing(record, expected))


def test_a_first_record_after_nothing_committed_reveals_the_records_skipped_before_it() -> None:
    g, consumer, reads = guard({}, earliest=0)
    record = Record("keyed", 5, 1)
    assert g.expected(record) is None  # nothing committed
    got = missing(g, record, g.expected(record))
    assert [r.offset for r in got] == [0] and reads == [(0, 1)]
    assert consumer._gap[record.tp].added == [(0, 1)]


@pytest.mark.parametrize("earliest", [0, 7])
def test_the_first_record_at_the_log_start_needs_nothing(earliest: int) -> None:
    g, consumer, reads = guard({}, earliest=earliest)
    assert missing(g, Record("keyed", 0, earliest), None) == []
    assert missing(g, Record("keyed", 0, earliest), None) == []
    assert reads == [] and consumer.asked == 1  # the log start is asked once per partition


def test_the_log_start_of_every_assigned_partition_of_the_topic_is_asked_at_once() -> None:
    """One request to the broker for the topic, not one per partition."""
    assigned = {TP("keyed", p) for p in range(4)} | {TP("findings", p) for p in range(4)}
    g, consumer, reads = guard({}, earliest=0, assigned=assigned)
    for p in range(4):
        assert missing(g, Record("keyed", p, 0), None) == []
    assert consumer.asked == 1
    assert missing(g, Record("findings", 3, 0), None) == []
    assert consumer.asked == 2 and reads == []


def test_committed_and_applied_offsets_still_rule() -> None:
    tp = TP("keyed", 2)
    g, _, reads = guard({tp: 10}, earliest=0)
    record = Record("keyed", 2, 12)
    assert [r.offset for r in missing(g, record, g.expected(record))] == [10, 11]
    assert missing(g, Record("keyed", 2, 9), 10) is None  # applied before a restart: skipped
    assert reads == [(10, 12)]


def test_the_log_start_comes_from_the_broker_with_the_guards_own_client(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """Not from Faust's consumer, which answers from its thread once it is done with
    what it is fetching: the agent waited up to 1.5 s for it."""
    from aiokafka import AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    from streams.kafka.topics import create_topics

    topic = f"{unique_name}-keyed"

    async def run() -> int:
        await create_topics(kafka_bootstrap, {topic: 2})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for _ in range(5):
                await producer.send_and_wait(topic, b"x", partition=1)
        finally:
            await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:  # the log of partition 1 now starts at offset 3, as after retention
            await admin.delete_records({TopicPartition(topic, 1): RecordsToDelete(3)})
        finally:
            await admin.close()
        consumer = Consumer({}, earliest=-1, assigned={TP(topic, 0), TP(topic, 1)})
        g = OffsetGuard(kafka_bootstrap, App(consumer))
        starts = [await g.first_offset_at(TP(topic, p)) for p in (0, 1)]
        assert starts == [0, 3]
        return len(g.starts)

    assert asyncio.run(run()) == 2  # both asked at once


def test_a_gap_without_records_is_passed_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A transaction's commit marker (or a compacted offset) holds no record: the reader
    finds nothing there, and that is no loss to warn about."""
    g, _, reads = guard({TP("findings", 0): 4}, earliest=0)

    async def nothing(topic: str, partition: int, start: int, end: int) -> list[Any]:
        reads.append((start, end))
        return []

    g._read = nothing  # type: ignore[method-assign]
    record = Record("findings", 0, 5)
    assert missing(g, record, g.expected(record)) == []
    assert reads == [(4, 5)]
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
