"""`Worker.catch_up` (streams/worker/app.py): findings records the consumer fetched and never
delivered to the agent are read directly when an idle tick names their partition, in
both layouts, with or without a committed offset.

faust-streaming drops such records only in some runs of the multi-worker tests, so the
catch-up is driven here directly: a real `Worker` (its Faust app is built, never
started) with the consumer's answers (assignment, committed offsets, end offsets) and
the guard's reads from the broker given by the test.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import orjson
import pytest
from faust.types import TP

from streams.core.keys import partition_for
from streams.kafka.topics import Topics
from streams.worker.app import STALL_S, TICK_KEY, Worker
from streams.worker.outbox import Outbox
from streams.worker.settings import WorkerSettings
from tests.builders import dumps, finding, page, parse_one
from tests.faust_fakes import Gaps, Record

PARTITIONS = 4
SOURCE = "catchup.findings"


class Consumer:
    """What the worker asks of Faust's consumer."""

    def __init__(self, assigned: set[TP], committed: dict[TP, int], end: int) -> None:
        self.assigned = assigned
        self._committed_offset = committed
        self._gap: defaultdict[TP, Gaps] = defaultdict(Gaps)
        self.end = end
        self.stable = end  # the last stable offset: below `end` while a transaction is open
        # Faust's consumer thread and its aiokafka consumer (`workarounds.last_stable_offset`).
        self._thread = self

    def _ensure_consumer(self) -> Consumer:
        return self

    def last_stable_offset(self, tp: TP) -> int:
        return self.stable

    def assignment(self) -> set[TP]:
        return self.assigned

    def highwater(self, tp: TP) -> int:
        return self.end


def pages(partition: int, count: int) -> list[Record]:
    """`count` findings records on `partition`, each a page of two findings."""
    return [Record(SOURCE, partition, offset, None, dumps(page([
        finding(f"f-{offset}-{n}", resource=f"arn:aws:s3:::bucket-{offset}-{n}") for n in range(2)])))
        for offset in range(count)]


def worker(*, direct: bool, records: list[Record], committed: dict[TP, int], end: int | None = None,
           batch_size: int = 500) -> tuple[Worker, Consumer, list[Any]]:
    settings = WorkerSettings(bootstrap_servers="127.0.0.1:1", app_id="catchup", partitions=PARTITIONS,
                              topics=Topics(findings=SOURCE), metrics_address=None, batch_size=batch_size)
    w = Worker(settings)
    w.direct = direct
    keyed = w.keyed.get_topic_name()
    assigned = {TP(SOURCE, p) for p in range(PARTITIONS)} | {TP(keyed, p) for p in range(PARTITIONS)}
    consumer = Consumer(assigned, committed, end=len(records) if end is None else end)
    w.app.consumer = consumer
    reads: list[Any] = []

    async def read(topic: str, partition: int, start: int, end: int) -> list[Any]:
        reads.append((topic, partition, start, end))
        return [r for r in records if start <= r.offset < end]

    async def earliest(tps: set[TP]) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    w.source_guard._read = read  # type: ignore[method-assign]
    w.source_guard._earliest = earliest  # type: ignore[method-assign]
    return w, consumer, reads


def tick(w: Worker, partition: int, names: int) -> Record:
    return Record(w.keyed.get_topic_name(), partition, 0, TICK_KEY, str(names).encode())


def forwarded(out: Outbox, topic: str) -> list[bytes]:
    return sorted(key for (name, _), records in out.placed.items() if name == topic
                  for key, _, _ in records if key is not None)


def expected_keys(records: list[Record]) -> list[bytes]:
    return sorted(parse_one(f).partition_key.encode()
                  for r in records for f in orjson.loads(r.value)["Findings"])


@pytest.mark.parametrize("committed", [None, 1], ids=["nothing-committed", "committed"])
def test_keyed_layout_reads_what_never_reached_the_agent_and_forwards_it(committed: int | None) -> None:
    records = pages(3, 3)
    tp = TP(SOURCE, 3)
    done = {} if committed is None else {tp: committed}
    w, consumer, reads = worker(direct=False, records=records, committed=done)
    out = Outbox(None)
    outcomes = asyncio.run(w.catch_up(tick(w, 0, 3), consumer.assigned, out))
    start = committed or 0
    assert reads == [(SOURCE, 3, start, 3)]
    assert outcomes == []  # forwarded to the keyed topic, decided from there
    assert forwarded(out, w.keyed.get_topic_name()) == expected_keys(records[start:])
    for key in forwarded(out, w.keyed.get_topic_name()):
        placed = [p for (name, p), rs in out.placed.items() if any(k == key for k, _, _ in rs)]
        assert placed == [partition_for(key, PARTITIONS)]
    assert consumer._gap[tp].added == [(start, 3)]  # Faust counts them as done
    assert w.source_guard.expected_at(tp) == 3


def test_direct_layout_decides_them_in_the_partitions_own_engine() -> None:
    # Findings whose key hashes to partition 3, on partition 3: decided in place.
    mine = [f for f in (finding(f"own-{n}", resource=f"arn:aws:s3:::own-{n}") for n in range(40))
            if partition_for(parse_one(f).partition_key, PARTITIONS) == 3][:2]
    assert len(mine) == 2
    records = [Record(SOURCE, 3, 0, None, dumps(page(mine)))]
    w, consumer, reads = worker(direct=True, records=records, committed={})
    out = Outbox(None)
    assert asyncio.run(w.catch_up(tick(w, 1, 3), consumer.assigned, out)) == []
    assert reads == []  # its engine's state goes with its own keyed partition's batch
    asyncio.run(w.catch_up(tick(w, 3, 3), consumer.assigned, out))
    assert reads == [(SOURCE, 3, 0, 1)]
    assert forwarded(out, w.keyed.get_topic_name()) == []  # nothing forwarded
    engine = w.engines[3]
    assert engine.next_source == 1 and engine.pending == 2  # held for the hold window


def test_a_partition_that_gave_the_agent_records_lately_is_not_read() -> None:
    records = pages(2, 2)
    w, consumer, reads = worker(direct=False, records=records, committed={})
    w.last_source[2] = time.monotonic() - STALL_S / 2
    out = Outbox(None)
    assert asyncio.run(w.catch_up(tick(w, 0, 2), consumer.assigned, out)) == []
    assert reads == [] and out.placed == {}


def test_offsets_with_no_record_are_passed_and_not_read_again() -> None:
    """A transactional topic's last offset is a commit marker (no record): the partition
    is read to its end once, then counts as caught up, with no warning for the marker."""
    records = pages(1, 2)  # offsets 0 and 1; offset 2 is the marker
    w, consumer, reads = worker(direct=False, records=records, committed={}, end=3)
    out = Outbox(None)
    asyncio.run(w.catch_up(tick(w, 0, 1), consumer.assigned, out))
    assert reads == [(SOURCE, 1, 0, 3)]
    assert w.source_behind(1) is None
    assert w.source_guard.expected_at(TP(SOURCE, 1)) == 3


def test_a_partition_whose_log_ends_in_markers_alone_costs_one_read_and_no_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, reads = worker(direct=False, records=[], committed={TP(SOURCE, 2): 5}, end=7)
    asyncio.run(w.catch_up(tick(w, 0, 2), consumer.assigned, Outbox(None)))
    asyncio.run(w.catch_up(tick(w, 0, 2), consumer.assigned, Outbox(None)))
    assert reads == [(SOURCE, 2, 5, 7)]
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


def test_records_of_an_open_transaction_are_not_looked_for() -> None:
    """Past the last stable offset lie the records of a transaction still open: a
    read_committed reader cannot have them yet (and would wait for them for ever)."""
    records = pages(0, 6)
    w, consumer, reads = worker(direct=False, records=records, committed={})
    consumer.stable = 4
    asyncio.run(w.catch_up(tick(w, 0, 0), consumer.assigned, Outbox(None)))
    assert reads == [(SOURCE, 0, 0, 4)]
    assert w.source_behind(0) is None


def test_a_long_way_behind_is_read_a_batch_at_a_time() -> None:
    records = pages(3, 5)
    w, consumer, reads = worker(direct=False, records=records, committed={}, batch_size=2)
    out = Outbox(None)
    asyncio.run(w.catch_up(tick(w, 0, 3), consumer.assigned, out))
    assert reads == [(SOURCE, 3, 0, 2), (SOURCE, 3, 2, 4), (SOURCE, 3, 4, 5)]
    assert forwarded(out, w.keyed.get_topic_name()) == expected_keys(records)
