"""Throughput of the worker against the limit, on the same broker and the same findings.

For two layouts of the findings topic (one finding per message; per-partition pages of
up to 100 findings, as a batching forwarder writes them) it measures, in one run:
  (a) the limit: a plain aiokafka consumer that reads the topic, parses with orjson and
      calls the core's decision code (one PartitionEngine per partition); and, for
      reference, the same consumer parsing as the worker does (`parse_message`, whose
      msgspec fast paths skip the fields flapguard does not read);
  (b) the real worker end to end (findings in, decisions, output topics, state in
      changelogged tables), as deployed by default, timed by its state writes; and
      again with `--decisions-topic` (one audit record per finding more).
Each measurement is taken `--repeat` times, the limit's and the worker's runs taking
turns; the figures are the medians, and the spread of the runs is printed with them.
The broker keeps its logs in memory (/dev/shm) unless `--data-dir` names a folder.
Prints the rates, decision latency percentiles of the worker (time from a finding's
record being written to its decision being written, in a paced run), and one line per
layout: `LAYOUT: end-to-end/limit ratio: R (worker W findings/s, limit L findings/s)`,
against the orjson limit.
A benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.core.engine import PartitionEngine  # noqa: E402
from streams.core.findings import Finding, Parsed, parse_general, parse_message  # noqa: E402
from streams.core.keys import partition_for  # noqa: E402
from streams.core.policy import Policy  # noqa: E402
from streams.core.state import Origin, Store  # noqa: E402
from streams.demo.brokers import KafkaBroker, default_kafka_libs  # noqa: E402
from streams.kafka.topics import create_topics  # noqa: E402
from tests.kafka_io import WorkerRun, end_offsets  # noqa: E402

TEMPLATE = REPO / "tests" / "fixtures" / "incident-rds45.jsonl"
HOUR_MS = 3_600_000


def make_findings(count: int, size: int = 3200) -> list[bytes]:
    """`count` ~3 KB control findings: resources refreshed every 18 h, in event order."""
    base = orjson.loads(TEMPLATE.read_bytes().split(b"\n", 1)[0])
    base["Description"] = "x" * max(0, size - len(orjson.dumps(base)))
    resources = max(1, count // 20)
    out = []
    start = 1_735_689_600_000  # 2025-01-01
    for n in range(count):
        r, step = n % resources, n // resources
        f = copy.deepcopy(base)
        f["Id"] = f"arn:aws:securityhub:ap-northeast-1:123456789012:security-control/RDS.45/finding/{r:08d}"
        f["Resources"][0]["Id"] = f"arn:aws:rds:ap-northeast-1:123456789012:cluster:db-{r:06d}"
        f["CreatedAt"] = _iso(start + r * 1000)
        f["UpdatedAt"] = _iso(start + r * 1000 + step * 18 * HOUR_MS)
        out.append(orjson.dumps(f))
    return out


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def single_layout(findings: list[bytes], partitions: int) -> list[tuple[bytes, bytes, int]]:
    records = []
    for raw in findings:
        (f,) = parse_message(raw, policy=Policy(), now_ms=int(time.time() * 1000))
        assert isinstance(f, Finding)
        key = f.partition_key.encode()
        records.append((key, raw, partition_for(key, partitions)))
    return records


def batched_layout(findings: list[bytes], partitions: int, per_message: int = 100
                   ) -> list[tuple[bytes | None, bytes, int]]:
    pages: dict[int, list[bytes]] = {}
    records: list[tuple[bytes | None, bytes, int]] = []
    for _key, raw, p in single_layout(findings, partitions):
        pages.setdefault(p, []).append(raw)
        if len(pages[p]) == per_message:
            records.append((None, b'{"Findings":[' + b",".join(pages.pop(p)) + b"]}", p))
    records.extend((None, b'{"Findings":[' + b",".join(page) + b"]}", p) for p, page in pages.items())
    return records


LAYOUTS: dict[str, Callable[[list[bytes], int], Sequence[tuple[bytes | None, bytes, int]]]] = {
    "single": single_layout, "batched": batched_layout}


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes, int]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024,
                                max_request_size=16 * 1024 * 1024, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=p) for key, value, p in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_transactional(bootstrap: str, topic: str,
                                records: Sequence[tuple[bytes | None, bytes, int]], per_transaction: int
                                ) -> None:
    """The same records in transactions of `per_transaction` records each, as Kafka Connect
    or Flink write with exactly-once delivery: each transaction leaves a commit marker on
    every partition it wrote, an offset with no record."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024,
                                max_request_size=16 * 1024 * 1024, enable_idempotence=True,
                                transactional_id=f"bench-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        for start in range(0, len(records), per_transaction):
            async with producer.transaction():
                for key, value, p in records[start:start + per_transaction]:
                    await producer.send(topic, value, key=key, partition=p)
    finally:
        await producer.stop()


async def limit_rate(bootstrap: str, topic: str, partitions: int, expected: int,
                     parse: Callable[..., list[Parsed]] = parse_general) -> float:
    """Read, parse, decide: the ceiling for one Python process on this broker."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=f"limit-{uuid.uuid4().hex[:6]}",
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    policy = Policy()
    engines = [PartitionEngine(Store.in_memory(), policy, p) for p in range(partitions)]
    accepted = 0
    started = None
    try:
        while accepted < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if started is None and batches:
                started = time.perf_counter()
            now = int(time.time() * 1000)
            for tp, records in batches.items():
                engine = engines[tp.partition]
                for record in records:
                    for index, item in enumerate(parse(record.value, policy=policy, now_ms=now)):
                        if isinstance(item, Finding):
                            origin = Origin(topic, record.offset, index)
                            accepted += 1
                            engine.accept(item, origin, record.offset * 1000 + index)
        assert started is not None
        return expected / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def decision_times(bootstrap: str, topic: str, expected: int, timeout: float
                         ) -> list[tuple[int, tuple[int, int]]]:
    """(decision record timestamp, (source partition, offset)) of every decision."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, metadata_max_age_ms=1000)
    await consumer.start()
    got: list[tuple[int, tuple[int, int]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: the worker decided {len(got)} of {expected} in {timeout}s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    decision = orjson.loads(r.value)
                    got.append((r.timestamp, (decision["partition"], decision["offset"])))
    finally:
        await consumer.stop()
    return got


async def progress(bootstrap: str, app_id: str, ends: dict[int, int], timeout: float
                   ) -> tuple[float, int]:
    """Seconds from the worker's first state write to its last while it works through
    the findings topic, and the findings records it got through in between. Each batch
    ends with a write of its partitions' meta state, whose `next_source` is the next
    findings record the partition expects; a partition's records up to its first write
    are not counted (conservative: the interval may hold some of them)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(f"{app_id}-meta-changelog", bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                metadata_max_age_ms=1000)
    await consumer.start()
    reached: dict[int, int] = {}
    started: dict[int, int] = {}
    through: dict[int, int] = {}  # when each partition's state first expected its end
    first = None
    deadline = time.monotonic() + timeout
    try:
        while len(through) < len(ends):
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: the worker did not get through the findings in {timeout}s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    meta = orjson.loads(r.value) if r.value else {}
                    if meta.get("next_source") is None:
                        continue
                    reached[r.partition] = max(reached.get(r.partition, 0), meta["next_source"])
                    started.setdefault(r.partition, meta["next_source"])
                    first = r.timestamp if first is None else min(first, r.timestamp)
                    # Later writes (idle ticks releasing what is held) are not throughput.
                    if reached[r.partition] >= ends.get(r.partition, 0):
                        through.setdefault(r.partition, r.timestamp)
    finally:
        await consumer.stop()
    assert first is not None
    return (max(through.values()) - first) / 1000, sum(ends[p] - started[p] for p in ends)


def worker_rate(bootstrap: str, run: WorkerRun, count: int, transactional: bool = False) -> float:
    """Findings/s of the worker, from its first batch's state write to its last: start-up
    and group join are not throughput, and neither is the idle flush of what stays held
    at the end of the input (in wall-clock time; the limit never waits for it). A
    transactional topic's last offset on each partition is a commit marker: the worker's
    state reaches the offset before it with the last record."""
    ends = {p: end - (1 if transactional else 0)
            for p, end in asyncio.run(end_offsets(bootstrap, run.topics["findings"])).items() if end > 0}
    run.start()
    try:
        seconds, records = asyncio.run(progress(bootstrap, run.app_id, ends, 1800))
    finally:
        run.stop()
    return count * records / sum(ends.values()) / max(1e-3, seconds)


@dataclass
class Rates:
    """Findings/s of the runs of one layout, in the order they ran."""

    limit: list[float] = field(default_factory=list)
    limit_fast: list[float] = field(default_factory=list)
    worker: list[float] = field(default_factory=list)
    audited: list[float] = field(default_factory=list)
    transactional: list[float] = field(default_factory=list)


def measure(bootstrap: str, layout: str, records: Sequence[tuple[bytes | None, bytes, int]],
            count: int, partitions: int, workdir: Path, repeat: int, transactions: int = 0) -> Rates:
    """`repeat` times, on one findings topic: the limit, the limit parsing as the worker
    does, the worker as deployed by default, and the worker writing every decision to
    `--decisions-topic` too (the audit trail: one more record per finding). With
    `transactions`, also the worker on the same records written in transactions."""
    topic = f"bench-{layout}-{uuid.uuid4().hex[:6]}.findings"
    asyncio.run(create_topics(bootstrap, {topic: partitions}))
    asyncio.run(produce(bootstrap, topic, records))
    txn_topic = f"bench-{layout}-txn-{uuid.uuid4().hex[:6]}.findings"
    if transactions:
        asyncio.run(create_topics(bootstrap, {txn_topic: partitions}))
        asyncio.run(produce_transactional(bootstrap, txn_topic, records, transactions))
    rates = Rates()
    for _ in range(repeat):
        if transactions:
            run = WorkerRun(bootstrap, f"bench-{layout}-txn-{uuid.uuid4().hex[:6]}",
                            workdir / f"{layout}-txn-{uuid.uuid4().hex[:6]}", partitions=partitions,
                            decisions=False, findings_topic=txn_topic)
            run.workdir.mkdir(parents=True)
            rates.transactional.append(worker_rate(bootstrap, run, count, transactional=True))
        rates.limit.append(asyncio.run(limit_rate(bootstrap, topic, partitions, count)))
        rates.limit_fast.append(asyncio.run(limit_rate(bootstrap, topic, partitions, count, parse_message)))
        for decisions, into in ((False, rates.worker), (True, rates.audited)):
            run = WorkerRun(bootstrap, f"bench-{layout}-{uuid.uuid4().hex[:6]}",
                            workdir / f"{layout}-{uuid.uuid4().hex[:6]}", partitions=partitions,
                            decisions=decisions, findings_topic=topic)
            run.workdir.mkdir(parents=True)
            into.append(worker_rate(bootstrap, run, count))
    return rates


def spread(runs: list[float]) -> str:
    """The median of the runs, and their range when there are several."""
    median = f"{statistics.median(runs):,.0f}"
    return median if len(runs) == 1 else f"{median} (runs {min(runs):,.0f}-{max(runs):,.0f})"


def latency(bootstrap: str, findings: list[bytes], warm_up: list[bytes], partitions: int,
            workdir: Path, rate: float) -> tuple[float, float]:
    """Paced run: records written at `rate`/s; latency = decision written - record written.
    The worker first decides `warm_up`: its start and group join are not latency."""
    run = WorkerRun(bootstrap, f"bench-latency-{uuid.uuid4().hex[:6]}", workdir / "latency",
                    partitions=partitions, extra=["--hold", "0s"])
    run.workdir.mkdir(parents=True)
    asyncio.run(create_topics(bootstrap, {run.topics["findings"]: partitions,
                                          run.topics["decisions"]: partitions}))
    run.start()
    try:
        asyncio.run(produce(bootstrap, run.topics["findings"], single_layout(warm_up, partitions)))
        asyncio.run(decision_times(bootstrap, run.topics["decisions"], len(warm_up), 300))
        records = single_layout(findings, partitions)
        written = asyncio.run(paced(bootstrap, run.topics["findings"], records, rate))
        times = asyncio.run(decision_times(bootstrap, run.topics["decisions"],
                                           len(warm_up) + len(records), 600))
    finally:
        run.stop()
    lat = sorted(t - written[where] for t, where in times if where in written)
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


async def paced(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]], rate: float
                ) -> dict[tuple[int, int], int]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    written: dict[tuple[int, int], int] = {}
    try:
        start = time.monotonic()
        for n, (key, value, p) in enumerate(records):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            meta = await (await producer.send(topic, value, key=key, partition=p))
            written[(meta.partition, meta.offset)] = meta.timestamp
    finally:
        await producer.stop()
    return written


def default_data_dir() -> Path:
    """Memory (/dev/shm) where there is one. On a small machine that runs the broker too,
    the kernel writing earlier runs' logs to disk slowed later runs by up to 40% within
    one benchmark (2 cores, virtual disk), which is the machine's cost, not the worker's:
    the limit only reads."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", type=int, default=60_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each throughput measurement; figures are their medians")
    parser.add_argument("--layouts", default="single,batched",
                        help="comma-separated layouts to measure, in this order")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="where the broker keeps its logs and the workers their state "
                             "(default: /dev/shm, in memory, where there is one)")
    parser.add_argument("--transactions", type=int, default=0, metavar="N",
                        help="also run the worker on the same findings written in transactions of "
                             "N records (a transactional producer), runs interleaved with the plain ones")
    parser.add_argument("--latency-rate", type=float, default=200.0,
                        help="findings/s of the paced latency run (0 to skip)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    if not layouts or any(name not in LAYOUTS for name in layouts):
        parser.error(f"--layouts: a comma-separated list of {', '.join(LAYOUTS)}")
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir: no such folder: {args.data_dir}")
    tempfile.tempdir = str(args.data_dir)  # the broker's folder and the workers' below it
    findings = make_findings(args.findings)
    print(f"{len(findings)} findings of ~{len(findings[0])} bytes, {args.partitions} partitions, "
          f"{args.repeat} run(s) of each measurement, data in {args.data_dir}")
    # A 2 GB heap: with the tests' 512 MB, the broker's garbage collection held back the
    # worker's acknowledgements in some runs, once a run had filled a few dozen topics.
    with KafkaBroker(default_kafka_libs(), heap="2g") as broker, tempfile.TemporaryDirectory() as tmp:
        bootstrap = broker.bootstrap_servers
        results: dict[str, Rates] = {}
        for layout in layouts:
            records = LAYOUTS[layout](findings, args.partitions)
            rates = measure(bootstrap, layout, records, len(findings), args.partitions, Path(tmp),
                            args.repeat, args.transactions)
            results[layout] = rates
            print(f"{layout}: limit {spread(rates.limit)} findings/s, parsing as the worker does "
                  f"{spread(rates.limit_fast)}; worker {spread(rates.worker)} findings/s, with "
                  f"--decisions-topic {spread(rates.audited)}")
            if args.repeat > 1:
                pairs = zip(rates.worker, rates.limit, strict=True)
                print(f"{layout}: ratio of each run: " + " ".join(f"{w / lim:.2f}" for w, lim in pairs))
            if rates.transactional:
                print(f"{layout}: in transactions of {args.transactions} records: worker "
                      f"{spread(rates.transactional)} findings/s; transactional/plain ratio "
                      f"{statistics.median(rates.transactional) / statistics.median(rates.worker):.2f}")
        if args.latency_rate > 0:
            sample = findings[: int(args.latency_rate * 20)]
            warm_up = findings[-args.partitions * 4:]
            p50, p99 = latency(bootstrap, sample, warm_up, args.partitions, Path(tmp), args.latency_rate)
            print(f"decision latency at {args.latency_rate:.0f} findings/s: p50 {p50:.0f} ms, "
                  f"p99 {p99:.0f} ms")
        median = statistics.median
        for layout, rates in results.items():
            worker, limit = median(rates.worker), median(rates.limit)
            print(f"{layout}: end-to-end/limit ratio: {worker / limit:.2f} "
                  f"(worker {worker:,.0f} findings/s, limit {limit:,.0f} findings/s)")
        for layout, rates in results.items():
            audited, limit, limit_fast = median(rates.audited), median(rates.limit), median(rates.limit_fast)
            print(f"{layout}, with --decisions-topic: end-to-end/limit ratio: {audited / limit:.2f} "
                  f"(worker {audited:,.0f} findings/s)")
            print(f"{layout}, against the limit parsing as the worker does: "
                  f"{median(rates.worker) / limit_fast:.2f} (limit {limit_fast:,.0f} findings/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
