"""The chaos run (docs/operations.md, Crash safety): three workers on eight partitions
decide findings that arrive from a plain producer (lz4), a transactional producer (some
transactions aborted) and, now and then, a poison record, while workers are SIGKILLed
and restarted at random points and the broker is restarted once.

At the end, expected = the in-process backtest of what landed on the findings topic,
read back read_committed in partition order (the worker decides each partition in
offset order: the findings topic is keyed and co-partitioned, so findings are decided
where they arrive). Checked: every expected alert is on the alerts topic by
`dedup_key` (none lost, none unexpected), no input is decided twice differently, no
record of an aborted transaction is decided, every poison record is dead-lettered.

`scripts/chaos` runs it at full length and prints the figures; tests/worker/test_chaos.py
runs a short one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.backtest.run import Occurrence, run_backtest
from streams.core.findings import parse_message
from streams.core.keys import partition_for
from streams.core.policy import Policy
from streams.core.records import HEADER_INPUT, HEADER_LINE, decision_record
from streams.core.state import Origin
from streams.demo.brokers import KafkaBroker
from tests.kafka_io import WorkerRun, alert_keys, expected_alert_keys, read_all, values
from tests.timeline import history

PARTITIONS = 8
WORKERS = 3
INPUT = "chaos"
# Long enough that no partition counts as idle while records still arrive (a broker
# restart pauses the producers for seconds): the backtest releases holds only at the end.
IDLE_FLUSH = "20s"
# Lines of records written in aborted transactions: none of them may be decided.
ABORTED = 10_000_000


@dataclass
class Plan:
    kills: int = 20
    seed: int = 1
    accounts: int = 5
    days: int = 60
    poison_every: int = 150  # one poison record per this many findings
    transactional_share: float = 0.3  # of the findings, written in transactions
    abort_share: float = 0.15  # of the transactions, aborted
    broker_restart: bool = True
    kill_every: tuple[float, float] = (1.0, 4.0)  # seconds between kills, uniform
    timeout: float = 600.0  # for the end: everything decided


@dataclass
class Report:
    kills: int = 0
    broker_restarts: int = 0
    records: int = 0  # that landed (committed), poison included
    findings: int = 0
    poison: int = 0
    aborted: int = 0  # records written in aborted transactions
    expected_alerts: int = 0
    found_alerts: int = 0
    alert_records: int = 0  # on the alerts topic, repeats included
    lost: list[Any] = field(default_factory=list)
    unexpected: list[Any] = field(default_factory=list)
    inconsistent: list[Any] = field(default_factory=list)  # decided twice differently
    aborted_decided: list[int] = field(default_factory=list)
    poison_missing: list[int] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        """Alert records repeated with the same key (at-least-once after a kill)."""
        return self.alert_records - self.found_alerts

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.inconsistent or self.aborted_decided
                    or self.poison_missing)

    def figures(self) -> str:
        return "\n".join([
            f"kills survived:     {self.kills} (broker restarts: {self.broker_restarts})",
            f"records landed:     {self.records} ({self.findings} findings, {self.poison} poison; "
            f"{self.aborted} more in aborted transactions)",
            f"alerts expected:    {self.expected_alerts}",
            f"alerts found:       {self.found_alerts} ({self.duplicates} repeats with the same key)",
            f"lost:               {len(self.lost)}",
            f"unexpected:         {len(self.unexpected)}",
            f"decided twice differently: {len(self.inconsistent)}",
            f"aborted but decided: {len(self.aborted_decided)}",
            f"poison not dead-lettered: {len(self.poison_missing)}",
        ])


def run_chaos(broker: KafkaBroker, workdir: Path, plan: Plan, log: Callable[[str], None] = print) -> Report:
    rng = random.Random(plan.seed)
    app_id = f"chaos-{uuid.uuid4().hex[:8]}"
    workers = [WorkerRun(broker.bootstrap_servers, app_id, workdir / f"w{n}", partitions=PARTITIONS,
                         extra=["--idle-flush", IDLE_FLUSH])
               for n in range(WORKERS)]
    for worker in workers:
        worker.workdir.mkdir(parents=True)
    topics = workers[0].topics
    workers[0].create_source(partitions=PARTITIONS)
    report = Report()
    findings = history(seed=plan.seed, accounts=plan.accounts, days=plan.days)
    writes = _writes(findings, plan, rng)
    # Production spans the kills: about the mean time between kills per kill.
    duration = plan.kills * sum(plan.kill_every) / 2
    aborted_lines: list[int] = []
    produced = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            asyncio.run(_produce(broker.bootstrap_servers, topics["findings"], writes, duration,
                                 plan.abort_share, aborted_lines))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            produced.set()

    try:
        for worker in workers:
            worker.start()
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        _kill_and_restart(workers, broker, plan, rng, report, log)
        producer.join()
        if errors:
            raise errors[0]
        landed = _read_committed(broker.bootstrap_servers, topics["findings"])
        expected = _expected(landed, report)
        report.aborted = len(aborted_lines)
        _wait_decided(workers, topics["decisions"], expected, plan.timeout)
        _compare(broker.bootstrap_servers, topics, expected, set(aborted_lines), report)
    finally:
        for worker in workers:
            worker.stop()
    return report


Write = tuple[int, bytes, bytes | None, int, str]  # line, value, key, partition, how


def _writes(findings: list[dict[str, Any]], plan: Plan, rng: random.Random) -> list[Write]:
    """Every record to write, numbered (its line), with its key, partition and producer."""
    policy = Policy()
    now = int(time.time() * 1000)
    writes: list[Write] = []
    line = 0
    for finding in findings:
        value = orjson.dumps(finding)
        [parsed] = parse_message(value, policy=policy, now_ms=now)
        key = getattr(parsed, "partition_key", None)
        assert isinstance(key, str), parsed
        line += 1
        how = "transaction" if rng.random() < plan.transactional_share else "plain"
        writes.append((line, value, key.encode(), partition_for(key.encode(), PARTITIONS), how))
        if line % plan.poison_every == 0:
            line += 1
            poison = b'{"SchemaVersion": "2018-10-08", "Id": "' + bytes(rng.randbytes(40).hex(), "ascii")
            writes.append((line, poison, None, rng.randrange(PARTITIONS), "plain"))
    return writes


async def _produce(bootstrap: str, topic: str, writes: list[Write], duration: float,
                   abort_share: float, aborted_lines: list[int]) -> None:
    """Write everything over about `duration` seconds, in chunks: plain records with an
    lz4 producer; transactional ones in transactions of up to 20 records, some aborted
    (and then written again, committed, so the input is whole)."""
    from aiokafka import AIOKafkaProducer

    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="lz4", acks="all",
                             enable_idempotence=True, request_timeout_ms=60000)
    from aiokafka.errors import KafkaError

    transactional_id = f"chaos-{uuid.uuid4().hex[:8]}"

    async def new_transactional() -> Any:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    transactional_id=transactional_id, request_timeout_ms=60000)
        await producer.start()
        return producer

    await plain.start()
    transactional: Any = await new_transactional()

    async def in_transaction(batch: list[Write], *, abort: bool) -> None:
        """One transaction, committed or aborted. When the broker restart breaks it, a new
        producer with the same transactional id fences the old one and aborts what it
        left open, and a committed batch is written again (had its commit landed after
        all, its records land twice: the expected decisions come from what landed)."""
        nonlocal transactional
        for attempt in range(10):
            try:
                if transactional is None:
                    transactional = await new_transactional()
                with contextlib.suppress(_Abort):
                    async with transactional.transaction():
                        await _send_all(transactional, topic, batch)
                        if abort:
                            raise _Abort
                return
            except KafkaError:
                if attempt == 9:
                    raise
                if transactional is not None:
                    with contextlib.suppress(Exception):
                        await transactional.stop()
                transactional = None
                await asyncio.sleep(2)
    rng = random.Random(len(writes))
    chunk = 40
    pause = duration / max(1, len(writes) / chunk)
    try:
        for start in range(0, len(writes), chunk):
            part = writes[start:start + chunk]
            pending = []
            for line, value, key, partition, how in part:
                if how == "plain":
                    pending.append(await plain.send(topic, value, key=key, partition=partition,
                                                    headers=_headers(line)))
            await asyncio.gather(*pending)
            in_transactions = [w for w in part if w[4] == "transaction"]
            for n in range(0, len(in_transactions), 20):
                batch = in_transactions[n:n + 20]
                if rng.random() < abort_share:
                    # Aborted, then written again in a transaction that commits, so
                    # the input is whole.
                    aborted = [(ABORTED + line, value, key, partition, how)
                               for line, value, key, partition, how in batch]
                    aborted_lines.extend(w[0] for w in aborted)
                    await in_transaction(aborted, abort=True)
                await in_transaction(batch, abort=False)
            await asyncio.sleep(pause)
    finally:
        await plain.stop()
        if transactional is not None:
            await transactional.stop()


class _Abort(Exception):
    """Leaves a transaction context: aiokafka aborts the transaction."""


async def _send_all(producer: Any, topic: str, writes: list[Write]) -> None:
    for line, value, key, partition, _ in writes:
        await producer.send(topic, value, key=key, partition=partition, headers=_headers(line))


def _headers(line: int) -> list[tuple[str, bytes]]:
    return [(HEADER_INPUT, INPUT.encode()), (HEADER_LINE, str(line).encode())]


def _kill_and_restart(workers: list[WorkerRun], broker: KafkaBroker, plan: Plan, rng: random.Random,
                      report: Report, log: Callable[[str], None]) -> None:
    low, high = plan.kill_every
    while report.kills < plan.kills:
        time.sleep(rng.uniform(low, high))
        for worker in workers:
            worker.assert_alive()
        victim = rng.choice(workers)
        victim.kill()
        report.kills += 1
        time.sleep(rng.uniform(0, 1.5))
        victim.start()
        log(f"kill {report.kills}: worker {workers.index(victim)} killed and restarted")
        if plan.broker_restart and report.broker_restarts == 0 and report.kills >= plan.kills // 2:
            broker.halt()
            time.sleep(rng.uniform(1, 3))
            broker.resume()
            report.broker_restarts += 1
            log("broker restarted")


def _read_committed(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record of `topic`, partition by partition in offset order."""
    return asyncio.run(_read_committed_async(bootstrap, topic))


async def _read_committed_async(bootstrap: str, topic: str) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        got: list[Any] = []
        for partition in range(PARTITIONS):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]  # the last stable offset: all committed
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                got.extend(batch.get(tp, ()))
        return got
    finally:
        await consumer.stop()


def _line(record: Any) -> int:
    return int(dict(record.headers)[HEADER_LINE])


def _expected(landed: list[Any], report: Report) -> list[dict[str, Any]]:
    """The backtest's decisions of what landed, in partition order."""
    policy = Policy()
    now = int(time.time() * 1000)
    occurrences = []
    for seq, record in enumerate(landed):
        line = _line(record)
        for index, parsed in enumerate(parse_message(record.value, policy=policy, now_ms=now)):
            origin = Origin(INPUT, line, index, record.topic, record.partition, record.offset)
            occurrences.append(Occurrence(seq, origin, parsed))
    decided: list[Any] = []
    run_backtest(occurrences, policy=policy, partitions=PARTITIONS, on_decision=decided.append)
    records = [decision_record(o) for o in decided]
    report.records = len(landed)
    report.poison = sum(1 for r in records if r["decision"] == "dead_letter")
    report.findings = len(records) - report.poison
    return records


def _wait_decided(workers: list[WorkerRun], topic: str, expected: list[dict[str, Any]],
                  timeout: float) -> None:
    wanted = {(r["line"], r["index"]) for r in expected}
    deadline = time.monotonic() + timeout
    while True:
        decided = {(r["line"], r["index"]) for r in values(read_all(workers[0].bootstrap, topic))}
        missing = wanted - decided
        if not missing:
            return
        for worker in workers:
            worker.assert_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} inputs never decided, e.g. {sorted(missing)[:10]}")
        time.sleep(2)


def _compare(bootstrap: str, topics: dict[str, str], expected: list[dict[str, Any]],
             aborted: set[int], report: Report) -> None:
    wanted = expected_alert_keys(expected)
    alerts = read_all(bootstrap, topics["alerts"])
    seen = alert_keys(alerts)
    report.expected_alerts = len(wanted)
    report.found_alerts = len(seen)
    report.alert_records = len(alerts)
    report.lost = sorted(wanted - seen)
    report.unexpected = sorted(seen - wanted)
    outcomes: dict[tuple[int, int], set[tuple[Any, ...]]] = {}
    for r in values(read_all(bootstrap, topics["decisions"])):
        outcomes.setdefault((r["line"], r["index"]), set()).add(
            (r["decision"], r.get("kind"), r.get("reason"), r.get("dedup_key")))
    report.inconsistent = sorted((position, sorted(seen_as, key=repr))
                                 for position, seen_as in outcomes.items() if len(seen_as) > 1)
    report.aborted_decided = sorted({line for line, _ in outcomes} & aborted)
    poison = {r["line"] for r in expected if r["decision"] == "dead_letter"}
    dead = {_line(r) for r in read_all(bootstrap, topics["deadletter"])}
    report.poison_missing = sorted(poison - dead)
