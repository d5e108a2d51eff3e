"""`flapguard backtest --via-kafka`: the same backtest through the real worker.

The input is replayed onto a fresh one-partition findings topic (`replay_async`), a
`flapguard worker` child process decides it under its own app id with a decisions
topic, and its decisions are read back and reported exactly like the in-process ones,
in input order. Faust's wall-clock table expiry, its consumer and the changelogged
state are all in the path: this is how the in-process backtest is held to the worker.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

import orjson

from streams.backtest.run import LabelChoice, Report, label_files, read_labels, read_occurrences
from streams.config import format_duration, format_size
from streams.core.policy import Policy, pairing_toml
from streams.kafka.security import PLAINTEXT, BrokerSecurity
from streams.kafka.topics import delete_topics
from streams.worker.process import worker_process

SESSION_TIMEOUT = "10s"
IDLE_FLUSH = "2s"


class KafkaBacktestError(Exception):
    """The Kafka path could not finish: one line for the user."""


def worker_command(bootstrap: str, app_id: str, topics: dict[str, str], *, policy: Policy,
                   partitions: int, data_dir: Path) -> list[str]:
    return [
        "--bootstrap-servers", bootstrap, "--app-id", app_id,
        "--findings-topic", topics["findings"], "--alerts-topic", topics["alerts"],
        "--suppressed-topic", topics["suppressed"], "--deadletter-topic", topics["deadletter"],
        "--decisions-topic", topics["decisions"], "--partitions", str(partitions),
        "--window", format_duration(policy.window_ms), "--hold", format_duration(policy.hold_ms),
        "--min-severity", policy.min_severity.name,
        "--first-sight-age", format_duration(policy.first_sight_age_ms),
        "--state-ttl", format_duration(policy.state_ttl_ms),
        "--max-message-bytes", format_size(policy.max_message_bytes),
        "--max-findings-per-message", str(policy.max_findings_per_message),
        "--max-depth", str(policy.max_depth), "--max-string-length", str(policy.max_string_length),
        "--idle-flush", IDLE_FLUSH, "--session-timeout", SESSION_TIMEOUT,
        "--data-dir", str(data_dir), "--metrics-address", "off",
        *pairing_args(policy, data_dir),
    ]


def pairing_args(policy: Policy, data_dir: Path) -> list[str]:
    """`--pairing FILE` for the worker: the policy's per-control rules, written out."""
    if not policy.pairing:
        return []
    path = data_dir / "pairing.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pairing_toml(policy.pairing))
    return ["--pairing", str(path)]


def _plain_inputs(paths: list[Path], workdir: Path) -> dict[str, Path]:
    """The files to replay, by the name the report uses: a `.gz` input is unpacked
    (the replay reads plain files)."""
    out: dict[str, Path] = {}
    for n, path in enumerate(paths):
        if path.name.endswith(".gz"):
            plain = workdir / f"input-{n}.jsonl"
            with gzip.open(path, "rb") as src, plain.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            out[str(path)] = plain
        else:
            out[str(path)] = path
    return out


def kafka_backtest(
    paths: list[Path], *, bootstrap: str, policy: Policy, partitions: int, now_ms: int,
    labels: LabelChoice = "beside", decisions_out: IO[bytes] | None = None,
    timeout_s: float = 1800.0, app_id: str | None = None, security: BrokerSecurity = PLAINTEXT,
) -> Report:
    from streams.backtest.replay import replay_async

    app_id = app_id or f"flapguard-backtest-{uuid.uuid4().hex[:12]}"
    topics = {role: f"{app_id}.{role}"
              for role in ("findings", "alerts", "suppressed", "deadletter", "decisions")}
    workdir = Path(tempfile.mkdtemp(prefix="flapguard-kafka-backtest-"))
    log_path = workdir / "worker.log"
    ok = False
    try:
        inputs = _plain_inputs(paths, workdir)
        expected = sum(1 for _ in read_occurrences(paths, policy=policy, now_ms=now_ms))
        asyncio.run(replay_async(list(inputs.values()), bootstrap=bootstrap,
                                 topic=topics["findings"], partitions=1, security=security))
        started = time.perf_counter()
        args = worker_command(bootstrap, app_id, topics, policy=policy, partitions=partitions,
                              data_dir=workdir / "data")
        with worker_process(args, log_path, env=security.to_env()) as proc:
            decided = asyncio.run(_read_decisions(bootstrap, topics["decisions"], expected, proc,
                                                  timeout_s, log_path, security))
        seconds = time.perf_counter() - started
        renamed = {str(plain): name for name, plain in inputs.items()}
        report = report_from_records(paths, decided, renamed, policy=policy, partitions=partitions,
                                     now_ms=now_ms, labels=labels, decisions_out=decisions_out)
        report.seconds = seconds
        ok = True
        return report
    finally:
        if ok:  # on failure both stay, for a look at what went wrong
            shutil.rmtree(workdir, ignore_errors=True)
            asyncio.run(delete_topics(bootstrap, app_id, security=security))


def report_from_records(
    paths: list[Path], decided: dict[tuple[str, int, int], dict[str, Any]],
    renamed: dict[str, str], *, policy: Policy, partitions: int, now_ms: int,
    labels: LabelChoice = "beside", decisions_out: IO[bytes] | None = None,
) -> Report:
    """The report of decision records, taken in input order."""
    report = Report(partitions=partitions, policy=policy)
    label_paths = label_files(paths, labels)
    if label_paths:
        from streams.backtest.run import LabelScore

        report.labels = LabelScore()
        report.truths = read_labels(label_paths)
    by_position = {(renamed.get(src, src), line, index): record
                   for (src, line, index), record in decided.items()}
    for occ in read_occurrences(paths, policy=policy, now_ms=now_ms):
        position = (occ.origin.source, occ.origin.line, occ.origin.index)
        record = by_position.get(position)
        if record is None:
            raise KafkaBacktestError(f"the worker wrote no decision for {position}")
        record["input"] = occ.origin.source
        report.add_record(record, occ.parsed)
        if decisions_out is not None:
            decisions_out.write(orjson.dumps(record) + b"\n")
    return report


async def _read_decisions(
    bootstrap: str, topic: str, expected: int, proc: subprocess.Popen[bytes], timeout_s: float,
    log_path: Path, security: BrokerSecurity = PLAINTEXT,
) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Every decision of the topic by input position (the last wins after a redelivery),
    until there is one for each of the `expected` occurrences."""
    from aiokafka import AIOKafkaConsumer

    from streams.kafka.topics import create_topics

    # The worker creates its topics; creating this one first lets us subscribe at once.
    await create_topics(bootstrap, {topic: 1}, security=security)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, metadata_max_age_ms=1000,
                                **security.aiokafka_kwargs())
    await consumer.start()
    got: dict[tuple[str, int, int], dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected:
            if proc.poll() is not None:
                raise KafkaBacktestError(f"the worker exited with code {proc.returncode} after "
                                         f"{len(got)} of {expected} decisions; log: {log_path}")
            if time.monotonic() > deadline:
                raise KafkaBacktestError(f"the worker decided {len(got)} of {expected} findings "
                                         f"within {timeout_s:.0f} s; log: {log_path}")
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                for r in records:
                    value = orjson.loads(r.value)
                    got[(value["input"], value["line"], value["index"])] = value
    finally:
        await consumer.stop()
    return got
