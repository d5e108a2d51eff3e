"""In-process backtest: the worker's decision code over files, in event time.

Findings are assigned to `partitions` partitions with the worker's murmur2 hash and
each partition runs its own `PartitionEngine`, so the backtest reproduces the worker
decision for decision. Memory is bounded by state and the hold, not by input size:
decisions are written in input order as soon as every earlier one is known.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.config import Policy
from streams.decide import Decision, Outcome, rejected_outcome
from streams.engine import PartitionEngine
from streams.findings import Finding, Rejected, parse_message, split_lines
from streams.keys import partition_for
from streams.state import Origin, Store

NAIVE_WORKFLOW = "NEW"


@dataclass(slots=True)
class Occurrence:
    """One finding occurrence of the input, in input order."""

    seq: int
    origin: Origin
    parsed: Finding | Rejected


def read_occurrences(
    paths: Iterable[Path], *, policy: Policy, now_ms: int
) -> Iterator[Occurrence]:
    seq = 0
    for path in paths:
        with path.open("rb") as handle:
            for unit in split_lines(handle):
                for index, parsed in enumerate(parse_message(unit.data, policy=policy,
                                                             now_ms=now_ms)):
                    yield Occurrence(seq, Origin(str(path), unit.line, index), parsed)
                    seq += 1


@dataclass(slots=True)
class Report:
    findings: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    naive_alerts: int = 0
    late_pairs: int = 0
    seconds: float = 0.0
    partitions: int = 1
    policy: Policy = field(default_factory=Policy)

    def add(self, outcome: Outcome) -> None:
        self.findings += 1
        self.decisions[outcome.decision.value] += 1
        label = outcome.kind_or_reason or ""
        self.reasons[f"{outcome.decision.value}:{label}"] += 1
        self.late_pairs += len(outcome.late_pairs)

    def to_json(self) -> dict[str, Any]:
        return {
            "findings": self.findings,
            "decisions": dict(sorted(self.decisions.items())),
            "by_reason": dict(sorted(self.reasons.items())),
            "naive_alerts": self.naive_alerts,
            "alerts": self.decisions.get(Decision.ALERT.value, 0),
            "suppressed": self.decisions.get(Decision.SUPPRESSED.value, 0),
            "resolved": self.decisions.get(Decision.RESOLVED.value, 0),
            "dead_letters": self.decisions.get(Decision.DEAD_LETTER.value, 0),
            "late_pairs": self.late_pairs,
            "partitions": self.partitions,
            "window_seconds": self.policy.window_ms / 1000,
            "hold_seconds": self.policy.hold_ms / 1000,
            "seconds": round(self.seconds, 3),
            "findings_per_second": round(self.findings / self.seconds, 1) if self.seconds else None,
        }


class _InOrder:
    """Hands decisions on in input order, holding only those decided early."""

    def __init__(self, sink: Callable[[Outcome], None]) -> None:
        self.sink = sink
        self.next = 0
        self.waiting: dict[int, Outcome] = {}

    def put(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            self.waiting[outcome.seq] = outcome
        while self.next in self.waiting:
            self.sink(self.waiting.pop(self.next))
            self.next += 1


def naive_alerts(finding: Finding, seen: set[str]) -> bool:
    """The seed incident's notifier: alert on each new finding id ACTIVE, FAILED, NEW."""
    if finding.id in seen:
        return False
    seen.add(finding.id)
    return (finding.record_state == "ACTIVE" and finding.compliance_status == "FAILED"
            and finding.workflow_status == NAIVE_WORKFLOW)


def run_backtest(
    occurrences: Iterable[Occurrence],
    *,
    policy: Policy,
    partitions: int = 1,
    on_decision: Callable[[Outcome], None] | None = None,
) -> Report:
    report = Report(partitions=partitions, policy=policy)

    def sink(outcome: Outcome) -> None:
        report.add(outcome)
        if on_decision is not None:
            on_decision(outcome)

    ordered = _InOrder(sink)
    engines = [PartitionEngine(Store.in_memory(), policy, p) for p in range(partitions)]
    naive_seen: set[str] = set()
    started = time.perf_counter()
    for occ in occurrences:
        if isinstance(occ.parsed, Rejected):
            ordered.put([rejected_outcome(occ.parsed, occ.origin, occ.seq)])
            continue
        finding = occ.parsed
        report.naive_alerts += naive_alerts(finding, naive_seen)
        engine = engines[partition_for(finding.partition_key, partitions) if partitions > 1 else 0]
        ordered.put(engine.accept(finding, occ.origin, occ.seq))
    for engine in engines:
        ordered.put(engine.flush())
    report.seconds = time.perf_counter() - started
    return report
