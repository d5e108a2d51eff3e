"""Memory per tracked finding, and state recovery time after a restart.

A measurement, not a test. Two modes:

`core` (default): builds `--findings` (default 1,000,000) tracked findings of state
through the pure core (`PartitionEngine`, as the backtest drives it), one fresh child
process per store, and prints the growth of the process's resident memory (RSS) per
tracked finding:
  - `memory`:  `Store.in_memory()`, state objects in dicts (the in-process backtest);
  - `bytes`:   JSON bytes in dicts (what the worker's `memory://` tables hold);
  - `rocksdb`: JSON bytes in RocksDB through rocksdict (`streams/worker/rocks_kv.py`), with
    fixed budgets of 8 MiB memtables per database and a 32 MiB shared block cache.
Each finding is a distinct Security Hub control finding on its own resource, half of
them FAILED (alerted: notified, with a dedup_key), half PASSED, one second apart in
event time (well within the 90-day state TTL, so none expires).

`recovery`: the real worker on a local Apache Kafka broker (or `--bootstrap`). The
state that `--keys` findings leave is built with the core and written to the worker's
changelog topics (the same keys and values the worker writes; what compaction keeps).
Then workers of that app start one after the other: `memory://` (restores everything
from the changelog), `rocksdb://` on an empty data folder (the same, into RocksDB),
and `rocksdb://` again on the folder the previous one left (a restart on the same
disk). Each time the script times the start until the worker is ready, sends one new
finding then and times its decision (`--hold 0s`), and reads the worker's RSS; the
same runs with no state give the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.core.engine import PartitionEngine  # noqa: E402
from streams.core.findings import Finding, parse_message  # noqa: E402
from streams.core.keys import partition_for  # noqa: E402
from streams.core.policy import Policy  # noqa: E402
from streams.core.state import Origin, Store  # noqa: E402

TEMPLATE = REPO / "tests" / "fixtures" / "incident-rds45.jsonl"
START_MS = 1_735_689_600_000  # 2025-01-01
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class Findings:
    """Distinct control findings, each on its own resource, in event-time order."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.base = orjson.loads(TEMPLATE.read_bytes().split(b"\n", 1)[0])
        self.base["RecordState"] = "ACTIVE"
        self.policy = Policy()
        self.now_ms = int(time.time() * 1000)
        self.start_ms = start_ms

    def make(self, n: int) -> Finding:
        f = copy.deepcopy(self.base)
        f["Id"] = f"arn:aws:securityhub:ap-northeast-1:123456789012:security-control/RDS.45/finding/{n:012d}"
        f["Resources"][0]["Id"] = f"arn:aws:rds:ap-northeast-1:123456789012:cluster:db-{n:09d}"
        f["Compliance"]["Status"] = "FAILED" if n % 2 == 0 else "PASSED"
        updated = self.start_ms + n * 1000
        f["CreatedAt"] = _iso(updated - 3_600_000)
        f["UpdatedAt"] = _iso(updated)
        (finding,) = parse_message(orjson.dumps(f), policy=self.policy, now_ms=self.now_ms)
        assert isinstance(finding, Finding), finding
        return finding


def feed(engines: dict[int, PartitionEngine], partitions: int, count: int, source: Findings) -> None:
    for n in range(count):
        finding = source.make(n)
        p = partition_for(finding.partition_key.encode(), partitions) if partitions > 1 else 0
        engines[p].accept(finding, Origin("bench-memory", n + 1, 0), seq=n)
    for engine in engines.values():
        engine.flush()


# --------------------------------------------------------------------------- core


def index_bytes(engine: PartitionEngine) -> int:
    """Python objects of the engine's event-time expiry index (ids, heap entries)."""
    tracked, expiry = engine._tracked, engine._expiry or []
    total = sys.getsizeof(tracked) + sys.getsizeof(expiry) + sum(sys.getsizeof(k) for k in tracked)
    return total + sum(sys.getsizeof(entry) + sys.getsizeof(entry[0]) for entry in expiry)


def core_child(kind: str, count: int, folder: Path) -> dict[str, Any]:
    source = Findings()
    maps: dict[str, Any] = {}
    if kind == "memory":
        store = Store.in_memory()
    elif kind == "bytes":
        maps = {name: {} for name in Store.NAMES}
        store = Store.over(maps)
    elif kind == "rocksdb":
        from streams.worker.rocks_kv import rocks_store

        store, maps = rocks_store(folder)
    else:
        raise SystemExit(f"unknown store {kind}")
    # As the worker: state on disk keeps no expiry index in RAM.
    engine = PartitionEngine(store, Policy(), 0, expiry_index=kind != "rocksdb")
    source.make(0)  # warm the parser's caches before the baseline
    gc.collect()
    before = rss_bytes()
    began = time.perf_counter()
    feed({0: engine}, 1, count, source)
    seconds = time.perf_counter() - began
    gc.collect()
    after = rss_bytes()
    tracked = len(store.findings) if kind == "memory" else len(maps["findings"])  # type: ignore[arg-type]
    index = index_bytes(engine)
    disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if kind == "rocksdb" else 0
    return {"store": kind, "tracked": tracked, "rss_before": before, "rss_after": after,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "seconds": seconds, "disk": disk, "expiry_index": index}


def core(count: int, stores: list[str]) -> None:
    print(f"{count:,} tracked findings through the pure core, one child process per store:")
    for kind in stores:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            done = subprocess.run([sys.executable, __file__, "--child", kind, "--findings", str(count),
                                   "--folder", tmp], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"  {kind:8} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = orjson.loads(done.stdout.strip().splitlines()[-1])
        grown = r["rss_after"] - r["rss_before"]
        line = (f"  {kind:8} RSS +{grown / 2**20:7.1f} MiB = {grown / r['tracked']:6.0f} bytes per tracked "
                f"finding ({r['tracked']:,} tracked; built at {r['tracked'] / r['seconds']:,.0f}/s; "
                f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB")
        if r["disk"]:
            line += f"; {r['disk'] / 2**20:.0f} MiB on disk"
        if r["expiry_index"]:
            line += f"; expiry index {r['expiry_index'] / r['tracked']:.0f} bytes per finding"
        print(line + ")")
    print("  (memory and bytes keep the engine's event-time expiry index, a Python set and heap\n"
          "   of every tracked id; rocksdb, as the worker, keeps none and its sweeps scan the\n"
          "   database; goal: <= 200 bytes per tracked finding with RocksDB)")


# --------------------------------------------------------------------------- recovery


def state_maps(keys: int, partitions: int) -> dict[str, dict[int, dict[str, bytes]]]:
    """name -> partition -> key -> value: the state `keys` findings leave, the last of
    them a few minutes old (nothing expires, and no sweep is due when the next one
    comes)."""
    per_partition = {p: {name: {} for name in Store.NAMES} for p in range(partitions)}
    engines = {p: PartitionEngine(Store.over(per_partition[p]), Policy(), p) for p in range(partitions)}
    start_ms = int(time.time() * 1000) - keys * 1000 - 300_000
    feed(engines, partitions, keys, Findings(start_ms))
    for p in range(partitions):
        # The keyed topic of the restarted worker starts empty: no offset was applied.
        meta = per_partition[p]["meta"]
        for key, raw in meta.items():
            meta[key] = orjson.dumps({**orjson.loads(raw), "next_seq": None})
    return {name: {p: per_partition[p][name] for p in range(partitions)} for name in Store.NAMES}


async def write_changelogs(bootstrap: str, app_id: str, maps: dict[str, dict[int, dict[str, bytes]]],
                           partitions: int) -> int:
    from aiokafka import AIOKafkaProducer

    from streams.kafka.topics import Topics, create_topics
    from streams.worker.app import Worker
    from streams.worker.settings import WorkerSettings

    # The worker's own tables give the changelog topic names and key bytes.
    worker = Worker(WorkerSettings(bootstrap_servers=bootstrap, app_id=app_id, partitions=partitions,
                                   topics=Topics(findings=f"{app_id}.findings"), metrics_address=None))
    changelog = {name: worker.tables[name].table for name in Store.NAMES}
    names = [t.changelog_topic.get_topic_name() for t in changelog.values()]
    await create_topics(bootstrap, dict.fromkeys(names, partitions), {"cleanup.policy": "compact"})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    sent = 0
    try:
        pending = []
        for name, by_partition in maps.items():
            table = changelog[name]
            topic = table.changelog_topic
            for p, entries in by_partition.items():
                for key, value in entries.items():
                    key_bytes, _ = topic.prepare_key(key, table.key_serializer)
                    pending.append(await producer.send(topic.get_topic_name(), value, key=key_bytes,
                                                       partition=p))
                    sent += 1
                    if len(pending) >= 50_000:
                        await asyncio.gather(*pending)
                        pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def new_finding(name: str) -> bytes:
    f = copy.deepcopy(Findings().base)
    f["Id"] = f"arn:aws:securityhub:ap-northeast-1:123456789012:security-control/RDS.45/finding/{name}"
    f["Resources"][0]["Id"] = f"arn:aws:rds:ap-northeast-1:123456789012:cluster:{name}"
    f["Compliance"]["Status"] = "FAILED"
    f["CreatedAt"] = f["UpdatedAt"] = _iso(int(time.time() * 1000) - 60_000)
    return orjson.dumps(f)


#: (label, store, data folder): memory; RocksDB restored from the changelog into an
#: empty folder; RocksDB restarted on the folder the previous run left.
RUNS = (("memory://", "memory://", "memory"), ("rocksdb:// cold", "rocksdb://", "rocksdb"),
        ("rocksdb:// warm", "rocksdb://", "rocksdb"))


def restarts(bootstrap: str, keys: int, partitions: int, workdir: Path) -> list[dict[str, Any]]:
    """Build the state of `keys` findings into the changelogs of one app, then start a
    worker of that app once per `RUNS`, each time timing its start until the decision of
    one new finding."""
    from tests.test_notify_kafka import produce

    from streams.kafka.topics import create_topics_sync
    from tests.kafka_io import WorkerRun, read_until, values

    app_id = f"bench-memory-{keys}-{uuid.uuid4().hex[:6]}"
    maps = state_maps(keys, partitions)
    records = asyncio.run(write_changelogs(bootstrap, app_id, maps, partitions))
    del maps
    gc.collect()
    rows = []
    for n, (label, store, folder) in enumerate(RUNS):
        run = WorkerRun(bootstrap, app_id, workdir / folder, partitions=partitions,
                        extra=["--hold", "0s", "--store", store])
        run.workdir.mkdir(parents=True, exist_ok=True)
        t = run.topics
        if n == 0:
            run.create_source(partitions=1)
            create_topics_sync(bootstrap, {t["decisions"]: partitions})
        name = f"new-{n}"

        def decided(got: dict[str, list[Any]], name: str = name, topic: str = t["decisions"]) -> bool:
            return any(d["finding_id"].endswith(f"/{name}") for d in values(got[topic]))

        started = time.monotonic()
        run.start()
        try:
            # The finding goes in once the worker is ready: one sent before may be
            # dropped by faust-streaming's consumer at its post-recovery seek, and is
            # then read only when a later record on its partition reveals the gap.
            log = run.workdir / f"worker-{run.starts}.log"
            while "[^Worker]: Ready" not in log.read_text(errors="replace"):
                run.assert_alive()
                time.sleep(0.1)
            ready = time.monotonic() - started
            produce(bootstrap, t["findings"], [new_finding(name)], [None])
            read_until(bootstrap, [t["decisions"]], decided, timeout=600, alive=run.assert_alive)
            seconds = time.monotonic() - started
            assert run.proc is not None
            rss = rss_bytes(run.proc.pid)
        finally:
            run.stop()
        disk = sum(p.stat().st_size for p in (run.workdir / "data").rglob("*") if p.is_file())
        rows.append({"label": label, "keys": keys, "records": records, "ready": ready, "seconds": seconds,
                     "rss": rss, "disk": disk})
    return rows


def recovery(bootstrap: str | None, keys: int, partitions: int) -> None:
    from streams.demo.brokers import KafkaBroker

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        broker = None
        if bootstrap is None:
            broker = KafkaBroker(heap="1g").start()
            bootstrap = broker.bootstrap_servers
        try:
            empty = restarts(bootstrap, 0, partitions, Path(tmp) / "empty")
            full = restarts(bootstrap, keys, partitions, Path(tmp) / "full")
        finally:
            if broker is not None:
                broker.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"worker restart, {keys:,} findings of state ({full[0]['records']:,} changelog records), "
          f"{partitions} partitions, Apache Kafka on this machine; start to ready, to the decision of "
          "one new finding sent then, and the worker's RSS then (in brackets: with no state):")
    for base, r in zip(empty, full, strict=True):
        grown = r["rss"] - base["rss"]
        line = (f"  {r['label']:16} ready {r['ready']:6.1f} s ({base['ready']:.1f} s), decided "
                f"{r['seconds']:6.1f} s ({base['seconds']:.1f} s); "
                f"RSS {r['rss'] / 2**20:5.0f} MiB ({base['rss'] / 2**20:.0f} MiB) "
                f"= {grown / keys:,.0f} bytes per tracked finding")
        if r["disk"]:
            line += f"; {r['disk'] / 2**20:.0f} MiB on disk"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("core", "recovery"), default="core")
    parser.add_argument("--findings", type=int, default=1_000_000, help="core: tracked findings")
    parser.add_argument("--stores", default="memory,bytes,rocksdb", help="core: stores to measure")
    parser.add_argument("--keys", type=int, default=200_000, help="recovery: findings of state")
    parser.add_argument("--partitions", type=int, default=8, help="recovery: keyed partitions")
    parser.add_argument("--bootstrap", help="recovery: a broker to use instead of a local one")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(orjson.dumps(core_child(args.child, args.findings, args.folder)).decode())
        return 0
    if args.mode == "core":
        core(args.findings, args.stores.split(","))
    else:
        recovery(args.bootstrap, args.keys, args.partitions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
