"""Rate of `flapguard backtest` in-process against parsing alone, same file, same run.

Generates a feed (`flapguard generate`, default 40 accounts over 3 weeks) unless
`--input` names one, then measures, best of `--repeat` runs each, on one core:
  (a) parsing alone: read the file line by line and `orjson.loads` every line;
  (b) the backtest: read, parse, validate, key, hold, decide and report every finding
      (no labels, no decisions file), as `flapguard backtest --input FILE` does.
Prints both rates in findings per second (one finding per line in a generated feed),
wall clock and CPU time, and their ratio. A benchmark, not a test: figures vary with
the machine's load; CPU time is the steadier figure on a busy machine.

`--from-topic`: the same feed replayed onto a fresh topic (`--topic-partitions`, 1 by
default) of the broker `--bootstrap-servers` names, or of a local Apache Kafka started
from the jars of `scripts/fetch-kafka`; then `--repeat` runs of each, taking turns:
(a) a raw read, a plain aiokafka consumer with the backtest's settings reading every
record and `orjson.loads` of each value; (b) `flapguard backtest --from-topic` over the
same records, with `--jobs` (default: one per CPU; its CPU time counts its processes');
(c) the raw read again, of the record batches' own records as the backtest reads them
(no `ConsumerRecord` each); (d) with `--jobs` above 1, the backtest again in one
process. Prints each run's ratios (wall clock and CPU), the medians with their range,
and the ratio of the best run of each (the least disturbed on a shared machine). The
topic is deleted at the end; `--topic` reads an existing topic instead (neither
replayed nor deleted).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.backtest.generate import Profile, write_feed  # noqa: E402
from streams.backtest.run import backtest_files, open_input  # noqa: E402
from streams.core.policy import Policy  # noqa: E402


def parse_only(path: Path) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    loads = orjson.loads
    with open_input(path) as handle:
        for line in handle:
            if line.strip():
                loads(line)
                count += 1
    return count, time.perf_counter() - wall, time.process_time() - cpu


def backtest(path: Path) -> tuple[int, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    report = backtest_files([path], policy=Policy(), now_ms=int(time.time() * 1000),
                            labels=None, progress=False)
    return report.findings, time.perf_counter() - wall, time.process_time() - cpu


def raw_consume(bootstrap: str, topic: str, *, bare: bool = False) -> tuple[int, float, float]:
    """Every record of `topic` read with the backtest's consumer settings, each value
    parsed with orjson: the floor a topic backtest is measured against. `bare`: the
    record batches' own records, not aiokafka's `ConsumerRecord`s (as the backtest
    reads them)."""
    import asyncio

    from aiokafka import TopicPartition

    from streams.backtest.from_topic import plain_consumer
    from streams.kafka.security import PLAINTEXT

    async def go() -> int:
        consumer = plain_consumer(bootstrap, PLAINTEXT, bare=bare)
        await consumer.start()
        try:
            cluster = await consumer._client.fetch_all_metadata()
            tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic))]
            ends = await consumer.end_offsets(tps)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            count = 0
            loads = orjson.loads
            left = {tp for tp in tps if ends[tp]}
            while left:
                for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                    for record in records:
                        loads(record.value)
                    count += len(records)
                left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
            return count
        finally:
            await consumer.stop()

    wall, cpu = time.perf_counter(), time.process_time()
    count = asyncio.run(go())
    return count, time.perf_counter() - wall, time.process_time() - cpu


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the topic
    backtest's processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def topic_backtest(bootstrap: str, topic: str, jobs: int | None = None) -> tuple[int, float, float]:
    from streams.backtest.from_topic import backtest_topic

    wall, cpu = time.perf_counter(), cpu_seconds()
    result = backtest_topic(topic, bootstrap=bootstrap, policy=Policy(), now_ms=int(time.time() * 1000),
                            progress=False, jobs=jobs)
    return result.report.findings, time.perf_counter() - wall, cpu_seconds() - cpu


def bench_topic(path: Path, args: argparse.Namespace) -> None:
    import asyncio
    import contextlib
    import uuid

    from streams.backtest.from_topic import available_cpus
    from streams.backtest.replay import replay_async
    from streams.kafka.topics import delete_topics

    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap_servers
        if bootstrap is None:
            from streams.demo.brokers import KafkaBroker, default_kafka_libs

            bootstrap = stack.enter_context(KafkaBroker(default_kafka_libs())).bootstrap_servers
        topic = args.topic
        if topic is None:
            topic = f"bench-backtest-{uuid.uuid4().hex[:8]}"
            stack.callback(lambda: asyncio.run(delete_topics(bootstrap, topic)))
            replayed = asyncio.run(replay_async([path], bootstrap=bootstrap, topic=topic,
                                                partitions=args.topic_partitions))
            print(f"replayed {replayed.records:,} records onto {topic} "
                  f"({args.topic_partitions} partitions)")
        # They take turns, so that all see the same load of a shared machine; each run's
        # ratios are printed, then the medians.
        jobs = args.jobs or available_cpus()
        raws: list[tuple[int, float, float]] = []
        bares: list[tuple[int, float, float]] = []
        tests: list[tuple[int, float, float]] = []
        ones: list[tuple[int, float, float]] = []  # the backtest in one process
        for n in range(args.repeat):
            raws.append(raw_consume(bootstrap, topic))
            tests.append(topic_backtest(bootstrap, topic, jobs))
            bares.append(raw_consume(bootstrap, topic, bare=True))
            if jobs > 1:
                ones.append(topic_backtest(bootstrap, topic, 1))
            (n_raw, wall_raw, cpu_raw), (n_bt, wall_bt, cpu_bt) = raws[-1], tests[-1]
            one = f"; in one process {wall_raw / ones[-1][1]:.2f} (wall)" if ones else ""
            print(f"run {n + 1}: raw read {n_raw / wall_raw:>8,.0f} records/s, backtest "
                  f"{n_bt / wall_bt:>8,.0f} findings/s, ratio {wall_raw / wall_bt:.2f} (wall), "
                  f"{cpu_raw / cpu_bt:.2f} (CPU); against the bare read {bares[-1][1] / wall_bt:.2f} (wall)"
                  f"{one}", flush=True)
    print(f"the backtest with --jobs {jobs} (processes on a co-partitioned topic of several partitions; "
          "its CPU time counts theirs):" if jobs > 1 else "the backtest in one process (--jobs 1):")
    summarize(raws, tests, bares, args.repeat)
    if ones:
        print("the backtest in one process (--jobs 1):")
        summarize(raws, ones, bares, args.repeat)


def summarize(raws: list[tuple[int, float, float]], tests: list[tuple[int, float, float]],
              bares: list[tuple[int, float, float]], repeat: int) -> None:
    n_raw, n_bt = raws[0][0], tests[0][0]
    walls = sorted(r[1] / t[1] for r, t in zip(raws, tests, strict=True))
    cpus = sorted(r[2] / t[2] for r, t in zip(raws, tests, strict=True))
    raw_wall, raw_cpu = median(r[1] for r in raws), median(r[2] for r in raws)
    bt_wall, bt_cpu = median(t[1] for t in tests), median(t[2] for t in tests)
    print(f"raw read (aiokafka + orjson.loads):  {n_raw / raw_wall:>10,.0f} records/s wall, "
          f"{n_raw / raw_cpu:>10,.0f} records/s CPU  (medians of {repeat})")
    print(f"backtest --from-topic:               {n_bt / bt_wall:>10,.0f} findings/s wall, "
          f"{n_bt / bt_cpu:>10,.0f} findings/s CPU")
    print(f"ratio backtest/raw read: {median(walls):.2f} (wall, runs {walls[0]:.2f}-{walls[-1]:.2f}), "
          f"{median(cpus):.2f} (CPU, runs {cpus[0]:.2f}-{cpus[-1]:.2f})")
    # The least disturbed run of each, as timeit takes the best: a shared machine's load
    # only ever slows a run down.
    print(f"ratio of the best runs: {min(r[1] for r in raws) / min(t[1] for t in tests):.2f} (wall), "
          f"{min(r[2] for r in raws) / min(t[2] for t in tests):.2f} (CPU)")
    # The backtest takes the record batches' own records (no ConsumerRecord each): the
    # same raw read, so reading, is also given against that.
    bare = sorted(b[1] / t[1] for b, t in zip(bares, tests, strict=True))
    print(f"ratio backtest/raw read of the bare records: {median(bare):.2f} (wall, runs "
          f"{bare[0]:.2f}-{bare[-1]:.2f}; raw read {n_raw / median(b[1] for b in bares):,.0f} records/s)")


def best(run: object, path: Path, repeat: int) -> tuple[int, float, float]:
    results = [run(path) for _ in range(repeat)]  # type: ignore[operator]
    count = results[0][0]
    return count, min(r[1] for r in results), min(r[2] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="a findings file (default: generate one)")
    parser.add_argument("--accounts", type=int, default=40)
    parser.add_argument("--days", type=float, default=21)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--from-topic", action="store_true",
                        help="measure the topic backtest against a raw aiokafka read")
    parser.add_argument("--bootstrap-servers", help="--from-topic: this broker (default: a local one)")
    parser.add_argument("--topic-partitions", type=int, default=1)
    parser.add_argument("--jobs", type=int, help="--from-topic: the backtest's --jobs (default: one per "
                                                 "CPU); with more than one, it is also run with --jobs 1")
    parser.add_argument("--topic", help="--from-topic: read this topic of --bootstrap-servers as it is "
                                        "(not replayed, not deleted)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        path = args.input
        if path is None:
            path = Path(tmp) / "feed.jsonl"
            stats = write_feed(Profile(seed=args.seed, accounts=args.accounts, days=args.days), path)
            print(f"generated {stats.findings:,} findings ({args.accounts} accounts, {args.days:g} days, "
                  f"{path.stat().st_size / stats.findings:,.0f} bytes each)")
        if args.from_topic:
            bench_topic(path, args)
            return 0
        n_parse, wall_parse, cpu_parse = best(parse_only, path, args.repeat)
        n_bt, wall_bt, cpu_bt = best(backtest, path, args.repeat)
    print(f"parse only (orjson.loads per line): {n_parse / wall_parse:>10,.0f} lines/s wall, "
          f"{n_parse / cpu_parse:>10,.0f} lines/s CPU")
    print(f"backtest (in-process, 1 partition): {n_bt / wall_bt:>10,.0f} findings/s wall, "
          f"{n_bt / cpu_bt:>10,.0f} findings/s CPU")
    print(f"ratio backtest/parse: {cpu_parse / cpu_bt:.2f} (CPU), {wall_parse / wall_bt:.2f} (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
