"""Idle partitions (streams/worker/app.py, docs/design.md §2): the release of what an idle
partition holds is decided when its tick is sent and written in the tick, so that the
tick's replay after a crash releases the same arrivals, whatever else has arrived by
then and in whatever order the agent gets the two topics.

A real `Worker` (its Faust app is built, never started) with the consumer's answers
given by the test, as in test_catch_up.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.core.engine import DIRECT_SEQ, direct_seq
from streams.core.keys import partition_for
from streams.core.records import decision_record
from streams.worker.app import TICK_KEY, Tick, Worker
from streams.worker.outbox import Outbox
from tests.builders import at, dumps, finding, page, parse_one
from tests.faust_fakes import Record
from tests.worker.test_catch_up import PARTITIONS, SOURCE, Consumer
from tests.worker.test_catch_up import worker as catch_up_worker

P = 3  # the partition under test: findings on it hash to it (decided in place)


class Ends(Consumer):
    """A consumer whose high watermarks differ by partition."""

    def __init__(self, consumer: Consumer, ends: dict[TP, int]) -> None:
        super().__init__(consumer.assigned, consumer._committed_offset, consumer.end)
        self.ends = ends

    def highwater(self, tp: TP) -> int:
        return self.ends.get(tp, 0)

    def last_stable_offset(self, tp: TP) -> int:
        return self.highwater(tp)


def own_findings(count: int) -> list[dict[str, Any]]:
    """Findings of distinct resources whose partition key hashes to `P`, one minute apart."""
    found = []
    for n in range(400):
        f = finding(f"own-{n}", resource=f"arn:aws:s3:::own-{n}", updated=at(minutes=len(found)))
        if partition_for(parse_one(f).partition_key, PARTITIONS) == P:
            found.append(f)
            if len(found) == count:
                return found
    raise AssertionError("not enough findings hash to the partition")


def direct_worker(records: list[Record]) -> tuple[Worker, Ends]:
    w, consumer, _ = catch_up_worker(direct=True, records=records, committed={})
    ends = Ends(consumer, {TP(SOURCE, P): len(records), TP(w.keyed.get_topic_name(), P): 0})
    w.app.consumer = ends

    async def earliest(tps: set[TP]) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    w.keyed_guard._earliest = earliest  # type: ignore[method-assign]
    return w, ends


def decide(w: Worker, consumer: Consumer, messages: list[Record]) -> list[dict[str, Any]]:
    outcomes, _ = asyncio.run(w.decide_partition(messages, consumer.assigned, Outbox(None)))
    return [decision_record(o) for o in outcomes]


def source_records() -> list[Record]:
    return [Record(SOURCE, P, offset, None, dumps(page([f])))
            for offset, f in enumerate(own_findings(3))]


def tick_record(w: Worker, offset: int, tick: Tick) -> Record:
    return Record(w.keyed.get_topic_name(), P, offset, TICK_KEY, tick.encode())


def test_a_tick_round_trips_and_anything_else_on_the_keyed_topic_asks_nothing() -> None:
    for tick in (Tick(), Tick(check=5), Tick(release=True, keyed_before=7, source_before=None),
                 Tick(release=True, keyed_before=None, source_before=12)):
        assert Tick.decode(tick.encode()) == tick
    for garbage in (None, b"", b"x", b"{", b'{"release": 3}', b'{"release": {"keyed": "1", "source": 2}}',
                    b'{"release": {"keyed": 1}}', b"[1]"):
        assert not Tick.decode(garbage).release


def test_a_release_counts_as_arrived_what_was_below_both_offsets() -> None:
    arrived = Tick(release=True, keyed_before=10, source_before=4).arrived()
    assert arrived(9) and not arrived(10)
    assert arrived(direct_seq(3, 999) or 0) and not arrived(direct_seq(4, 0) or 0)
    nothing_direct = Tick(release=True, keyed_before=10, source_before=None).arrived()
    assert not nothing_direct(DIRECT_SEQ)


def test_an_idle_partition_releases_what_had_arrived_when_its_tick_was_sent() -> None:
    records = source_records()
    w, consumer = direct_worker(records)
    assert decide(w, consumer, records[:2]) == []  # held for the hold
    consumer.ends[TP(SOURCE, P)] = 2  # the partition is read to its end
    tick = asyncio.run(w.release_tick(w.engines[P], consumer.assigned))
    assert tick == Tick(release=True, keyed_before=None, source_before=2)

    # The third record arrives before the tick is processed: it stays held.
    assert decide(w, consumer, records[2:]) == []
    released = decide(w, consumer, [tick_record(w, 0, tick)])
    assert [r["finding_id"] for r in released] == [f["Id"] for f in own_findings(2)]
    assert w.engines[P].pending == 1


def test_a_replayed_tick_that_comes_before_the_records_it_counts_releases_the_same() -> None:
    """After a crash the agent may get the keyed topic's tick before the findings records
    it counts as arrived (two topics have no common order): they are read ahead, and the
    decisions are those of the first run."""
    records = source_records()
    tick = Tick(release=True, keyed_before=None, source_before=2)

    first, consumer = direct_worker(records)
    first_run = decide(first, consumer, records[:2])
    first_run += decide(first, consumer, [tick_record(first, 0, tick)])
    first_run += decide(first, consumer, records[2:])

    replay, consumer = direct_worker(records)
    replayed = decide(replay, consumer, [tick_record(replay, 0, tick)])
    replayed += decide(replay, consumer, records)  # the first two are skipped: read ahead
    assert len(first_run) == 2 and replayed == first_run
    assert replay.engines[P].pending == first.engines[P].pending == 1


def test_no_release_while_the_partition_has_records_still_to_come() -> None:
    records = source_records()
    w, consumer = direct_worker(records)
    decide(w, consumer, records[:2])
    engine = w.engines[P]
    # The findings partition has a third record the engine has not had (a stall).
    assert asyncio.run(w.release_tick(engine, consumer.assigned)) is None
    consumer.ends[TP(SOURCE, P)] = 2
    # Keyed records of another worker not processed yet (not ticks of this one).
    consumer.ends[TP(w.keyed.get_topic_name(), P)] = 1
    assert asyncio.run(w.release_tick(engine, consumer.assigned)) is None
    # Its own tick is not a record to wait for.
    w.own_ticks[P] = {0}
    assert asyncio.run(w.release_tick(engine, consumer.assigned)) is not None


@pytest.mark.parametrize("value", [b"", b"3"], ids=["load", "check"])
def test_ticks_that_ask_no_release_release_nothing(value: bytes) -> None:
    records = source_records()
    w, consumer = direct_worker(records)
    decide(w, consumer, records[:2])
    consumer.ends[TP(SOURCE, P)] = 2
    assert decide(w, consumer, [Record(w.keyed.get_topic_name(), P, 0, TICK_KEY, value)]) == []
    assert w.engines[P].pending == 2


class Sent:
    """Faust's producer, as `send_tick` uses it: what was sent, written at the next
    offsets of a keyed partition whose end is `end`."""

    def __init__(self, end: int) -> None:
        self.ticks: list[tuple[int, Tick]] = []
        self.end = end

    async def send(self, topic: str, key: bytes, value: bytes, partition: int, *_: Any) -> Any:
        assert key == TICK_KEY
        self.ticks.append((partition, Tick.decode(value)))
        written = asyncio.get_running_loop().create_future()
        written.set_result(SimpleNamespace(offset=self.end))
        self.end += 1
        return written


class Assignor:
    def __init__(self, actives: set[TP]) -> None:
        self.actives = actives

    def assigned_actives(self) -> set[TP]:
        return self.actives


def test_a_partition_with_a_keyed_record_still_to_come_gets_a_plain_tick_that_reveals_it() -> None:
    """A keyed record faust-streaming dropped after a recovery, with nothing after it, is
    only seen by the offset guard once another record follows: an idle partition that
    waits for it gets a plain tick, then, once it is processed, its release."""
    records = source_records()
    w, consumer = direct_worker(records)
    decide(w, consumer, records)
    consumer.ends[TP(w.keyed.get_topic_name(), P)] = 1  # a tick the agent never got
    sent = Sent(end=1)
    w.app._producer = sent  # type: ignore[attr-defined]
    w.app.assignor = Assignor({TP(SOURCE, P), TP(w.keyed.get_topic_name(), P)})  # type: ignore[assignment]
    w.last_arrival[P] -= 3600  # idle for an hour
    asyncio.run(w.tick_idle_partitions())
    assert sent.ticks == [(P, Tick())]
    consumer.ends[TP(w.keyed.get_topic_name(), P)] = 2  # the plain tick is written
    asyncio.run(w.tick_idle_partitions())
    # Not again before it has had time to be processed, and no release: the dropped
    # record is still to come (the plain tick alone is this worker's own).
    assert len(sent.ticks) == 1
    # Both ticks processed (the guard reads the dropped one): the release follows.
    decide(w, consumer, [tick_record(w, 0, Tick()), tick_record(w, 1, Tick())])
    consumer.ends[TP(w.keyed.get_topic_name(), P)] = 2
    asyncio.run(w.tick_idle_partitions())
    assert sent.ticks[-1] == (P, Tick(release=True, keyed_before=2, source_before=3))
