"""In-process backtest: the worker's decision code over files, in event time.

Findings are assigned to `partitions` partitions with the worker's murmur2 hash and
each partition runs its own `PartitionEngine`, so the backtest reproduces the worker
decision for decision. Memory is bounded by state and the hold, not by input size:
decisions are written in input order as soon as every earlier one is known.

The report counts decisions per decision, reason, control and account, the seed's
naive notifier beside flapguard, archive -> re-create gaps per control, and, when the
input has ground-truth labels (`flapguard generate` writes them beside the feed),
missed and false alerts and the precision and recall of suppressions.
"""

from __future__ import annotations

import gc
import gzip
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from streams.backtest.generate import labels_path
from streams.core.decide import Decision, Outcome, Reason, closing_deadline, rejected_outcome
from streams.core.engine import PartitionEngine
from streams.core.files import numbered_units
from streams.core.findings import Finding, Rejected, envelope_finding, parse_message
from streams.core.keys import Placements
from streams.core.policy import Policy
from streams.core.state import Origin, Store

NAIVE_WORKFLOW = "NEW"
GAP_BIN_S = 60  # archive -> re-create gaps are counted to the minute
PERCENTILES = (50, 90, 99)
EXAMPLES = 20
READ_BUFFER = 1 << 20


class LabelError(Exception):
    """Labels that do not line up with their input: one line for the user."""


@dataclass(slots=True)
class Occurrence:
    """One finding occurrence of the input, in input order."""

    seq: int
    origin: Origin
    parsed: Finding | Rejected


# A backtest keeps most of what it allocates (state, held findings, the report), so
# CPython's cyclic collector, run every 700 net allocations by default, finds little
# and cost it 6-8 % of its CPU time (docs/performance.md, the topic backtest's speed).
BATCH_GC_THRESHOLD = 50_000


@contextmanager
def batch_gc() -> Iterator[None]:
    """The cyclic collector's first threshold raised to `BATCH_GC_THRESHOLD` for a
    backtest, as it was after."""
    before = gc.get_threshold()
    gc.set_threshold(max(BATCH_GC_THRESHOLD, before[0]), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


class Progress:
    """A one-line progress bar on stderr, only when it is a terminal."""

    def __init__(self, total_bytes: int, *, enabled: bool | None = None) -> None:
        self.total = max(total_bytes, 1)
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.findings = 0
        self.started = time.perf_counter()
        self.shown = 0.0

    def at(self, done: int, lines: int) -> None:
        """`done` bytes and `lines` lines read so far, over every file."""
        self.done = done
        self.findings = lines
        if self.enabled:
            now = time.perf_counter()
            if now - self.shown >= 0.5:
                self.shown = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * 30)
        rate = self.findings / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r[{bar:<30}] {share:6.1%} {self.findings:>12,} lines {rate:>9,.0f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")


# `--input -`: standard input, read once.
STDIN = Path("-")


def open_input(path: Path) -> IO[bytes]:
    """A findings file (`-`: standard input); `.gz` is read through gzip."""
    if path == STDIN:
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=READ_BUFFER)
    if path.name.endswith(".gz"):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    # A buffer of many lines: the default 8 KiB is refilled every few ~2 KiB findings,
    # which showed as a third of the cost of reading.
    return path.open("rb", buffering=READ_BUFFER)


def _position(handle: IO[bytes]) -> Callable[[], int]:
    """How far into its file a handle has read: the byte offset, or for gzip the
    position in the compressed file (the progress total is the files' sizes)."""
    raw = getattr(handle, "fileobj", None)
    if raw is None and not handle.seekable():
        return lambda: 0  # standard input or a pipe: no position, no total
    return raw.tell if raw is not None else handle.tell


def input_size(path: Path) -> int:
    """Bytes of a regular file; 0 (unknown) for standard input and pipes."""
    return path.stat().st_size if path != STDIN and path.is_file() else 0


def read_occurrences(
    paths: Iterable[Path], *, policy: Policy, now_ms: int, progress: Progress | None = None
) -> Iterator[Occurrence]:
    for seq, origin, parsed in _read(paths, policy=policy, now_ms=now_ms, progress=progress):
        yield Occurrence(seq, origin, parsed)


Arriving = tuple[int, Origin, Finding | Rejected]  # an `Occurrence`, as a plain tuple


def _read(
    paths: Iterable[Path], *, policy: Policy, now_ms: int, progress: Progress | None = None
) -> Iterator[Arriving]:
    """`read_occurrences` as tuples: the backtest's own loop, where every object per
    finding shows in its rate."""
    seq = 0
    for path in paths:
        source = str(path)
        with open_input(path) as handle:
            # The bar is moved every 1024 units from the file position, not per line:
            # a layer per line cost more than a tenth of the whole backtest.
            where = _position(handle) if progress is not None else None
            start = progress.done if progress is not None else 0
            lines = progress.findings if progress is not None else 0
            line = 0
            for line, data in numbered_units(handle):
                if where is not None and line & 1023 == 0:
                    progress.at(start + where(), lines + line)  # type: ignore[union-attr]
                fast = envelope_finding(data, policy, now_ms)
                if fast is not None:
                    yield seq, Origin(source, line, 0), fast
                    seq += 1
                    continue
                for index, parsed in enumerate(parse_message(data, policy=policy, now_ms=now_ms)):
                    yield seq, Origin(source, line, index), parsed
                    seq += 1
            if progress is not None and where is not None:
                progress.at(start + where(), lines + line)


# -- ground truth ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Truth:
    """One label line: should a notifier alert on this occurrence?"""

    line: int
    index: int
    alert: bool
    truth: str
    suppress: bool


def find_labels(paths: Iterable[Path]) -> list[Path] | None:
    """The labels file beside every input (`labels_path`), or None if one lacks it."""
    found = [labels_path(p) for p in paths]
    return found if all(p.is_file() for p in found) else None


def read_labels(paths: Iterable[Path]) -> Iterator[Truth]:
    for path in paths:
        with open_input(path) as handle:
            for raw in handle:
                if raw.strip():
                    row = orjson.loads(raw)
                    yield Truth(row["line"], row["index"], bool(row["alert"]), str(row["truth"]),
                                bool(row.get("suppress", False)))


@dataclass(slots=True)
class LabelScore:
    """Decisions against the ground truth."""

    labelled: int = 0
    true_alerts: int = 0
    missed: int = 0
    false_alerts: int = 0
    suppressed: int = 0
    suppressed_correctly: int = 0
    expected_suppressions: int = 0
    expected_suppressed: int = 0
    naive_false_alerts: int = 0
    naive_missed: int = 0
    by_truth: Counter[str] = field(default_factory=Counter)
    missed_examples: list[dict[str, Any]] = field(default_factory=list)
    false_examples: list[dict[str, Any]] = field(default_factory=list)
    # Deleted resources (truth `deleted`): the incidents open when their findings were
    # archived for good, and how each ended. From the alert records, in input order: an
    # alert opens its `dedup_key`; a `resolved` decision or a closing ends it; a finding
    # holds the key of its last alert or suppression.
    deleted_incidents: int = 0
    deleted_closed: Counter[str] = field(default_factory=Counter)
    # ... carried on by a suppressed successor (a resource re-created under the same ARN)
    deleted_continued: int = 0
    _keys: dict[str, str] = field(default_factory=dict)  # finding id -> its dedup_key
    _open: set[str] = field(default_factory=set)  # dedup_keys opened, not yet closed
    # dedup_key -> (closing deadline, partition) of a deleted finding's open incident
    _deleted: dict[str, tuple[int, int]] = field(default_factory=dict)
    _ends: dict[int, int] = field(default_factory=dict)  # partition -> last UpdatedAt

    def add(self, truth: Truth, decision: str, label: str, naive: bool, where: Origin) -> None:
        self.labelled += 1
        alerted = decision == "alert"
        self.by_truth[f"{truth.truth}:{decision}:{label}"] += 1
        if truth.alert:
            self.true_alerts += 1
            self.naive_missed += not naive
            if not alerted:
                self.missed += 1
                self._example(self.missed_examples, truth, decision, label, where)
        elif alerted:
            self.false_alerts += 1
            self._example(self.false_examples, truth, decision, label, where)
        if naive and not truth.alert:
            self.naive_false_alerts += 1
        if decision == "suppressed":
            self.suppressed += 1
            self.suppressed_correctly += not truth.alert
        if truth.suppress:
            self.expected_suppressions += 1
            self.expected_suppressed += decision == "suppressed"

    def track(self, truth: Truth, decision: str, finding: Finding | None, dedup_key: str | None,
              closes: Iterable[tuple[str, str]], policy: Policy, partition: int) -> None:
        """Follow the incidents of one decision (`closes`: (dedup_key, reason) of those it
        closed, before it or by it), for the deleted resources' measure."""
        for closed, reason in closes:
            self._end(closed, reason)
        if finding is None:
            return
        if self._ends.get(partition, finding.updated_at - 1) < finding.updated_at:
            self._ends[partition] = finding.updated_at
        if decision == "resolved":
            if dedup_key is not None:
                self._end(dedup_key, Reason.PASSED.value)
            self._keys.pop(finding.id, None)
        elif dedup_key is not None and decision in ("alert", "suppressed"):
            self._keys[finding.id] = dedup_key
            if decision == "alert":
                self._open.add(dedup_key)
            elif self._deleted.pop(dedup_key, None) is not None:
                self.deleted_continued += 1  # no longer the deleted finding's to close
        if truth.truth == "deleted":
            held = self._keys.get(finding.id)
            if held is not None and held in self._open and held not in self._deleted:
                self.deleted_incidents += 1
                self._deleted[held] = (closing_deadline(policy, finding.updated_at, finding.control_id),
                                      partition)

    def _end(self, key: str, reason: str) -> None:
        self._open.discard(key)
        if self._deleted.pop(key, None) is not None:
            self.deleted_closed[reason] += 1

    def deleted_resources(self) -> dict[str, Any]:
        """Incidents open when a resource was deleted: how they were closed, and those
        still open at the end of the input, apart by whether their closing moment
        (archive + window + first-sight age) had passed in event time on their partition
        (`overdue`: a bug) or not (`within_window`: the history ends too soon);
        `continued`: carried on by a suppressed successor (a re-creation under the same
        ARN paired with the deleted finding's archive)."""
        overdue = sum(1 for deadline, partition in self._deleted.values()
                      if deadline < self._ends.get(partition, deadline))
        return {"incidents": self.deleted_incidents, "closed": dict(sorted(self.deleted_closed.items())),
                "continued": self.deleted_continued,
                "open_within_window": len(self._deleted) - overdue, "open_overdue": overdue}

    @staticmethod
    def _example(into: list[dict[str, Any]], truth: Truth, decision: str, label: str,
                 where: Origin) -> None:
        if len(into) < EXAMPLES:
            into.append({"input": where.source, "line": where.line, "index": where.index,
                         "truth": truth.truth, "decision": decision, "kind_or_reason": label})

    def to_json(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 6) if b else None

        flaps = {k.split(":", 1)[1]: v for k, v in self.by_truth.items()
                 if k.startswith("flap_recreation:")}
        flap_total = sum(flaps.values())
        flap_suppressed = sum(v for k, v in flaps.items() if k.startswith("suppressed:"))
        return {
            "labelled": self.labelled,
            "true_alerts": self.true_alerts,
            "missed_true_alerts": self.missed,
            "false_alerts": self.false_alerts,
            "suppression_precision": ratio(self.suppressed_correctly, self.suppressed),
            "suppression_recall": ratio(self.expected_suppressed, self.expected_suppressions),
            "expected_suppressions": self.expected_suppressions,
            "flap_recreations": flap_total,
            "flap_recreations_suppressed": flap_suppressed,
            "flap_recreations_suppressed_share": ratio(flap_suppressed, flap_total),
            "naive_false_alerts": self.naive_false_alerts,
            "naive_missed_true_alerts": self.naive_missed,
            "by_truth": dict(sorted(self.by_truth.items())),
            "deleted_resources": self.deleted_resources(),
            "missed_examples": self.missed_examples,
            "false_alert_examples": self.false_examples,
        }


# -- the report -----------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    findings: int = 0
    late_pairs: int = 0
    seconds: float = 0.0
    partitions: int = 1
    policy: Policy = field(default_factory=Policy)
    # One counter for every breakdown, folded in `to_json`: a single increment per
    # decision. Key: (decision, kind or reason, control, account, naive alert). A plain
    # dict: Python 3.11 specializes its subscripts, not those of a `Counter`.
    counts: dict[tuple[str, str, str, str, bool], int] = field(default_factory=dict)
    gaps: Counter[tuple[str, int]] = field(default_factory=Counter)  # (control, minutes)
    labels: LabelScore | None = None
    naive_seen: set[str] = field(default_factory=set)
    _placements: Placements = field(init=False)  # partition key -> keyed partition
    truths: Iterator[Truth] | None = None
    # Incidents closed without their finding passing, by reason (archived, superseded).
    closed: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._placements = Placements(self.partitions)

    def add(self, outcome: Outcome) -> None:
        pairing = outcome.pairing
        kind = outcome.kind
        label = kind if kind is not None else outcome.reason or ""
        f = outcome.finding
        if (pairing is not None or outcome.late_pairs or outcome.closes or f is None
                or self.truths is not None):
            gap = pairing.gap_seconds if pairing is not None and pairing.reason in _GAP_REASONS else None
            truth = self.tally(outcome.origin, outcome.decision, label, f, gap, len(outcome.late_pairs))
            for closure in outcome.closes:
                self.closed[closure.reason.value] += 1
            if truth is not None:
                self._track(truth, outcome.decision, f, outcome.dedup_key,
                            [(c.dedup_key, c.reason.value) for c in outcome.closes])
            return
        # `tally` for the usual decision (a finding, nothing paired, no labels), inlined:
        # this runs once per finding.
        self.findings += 1
        naive = False
        seen = self.naive_seen
        if f.id not in seen:
            seen.add(f.id)
            naive = (f.record_state == "ACTIVE" and f.compliance_status == "FAILED"
                     and f.workflow_status == NAIVE_WORKFLOW)
        counts = self.counts
        key = (outcome.decision, label, f.control_id, f.account, naive)
        counts[key] = counts.get(key, 0) + 1

    def absorb(self, other: Report) -> None:
        """Add the counts of `other`, a report of other partitions under the same policy
        and without labels (`from_topic`'s processes). The naive notifier's first sights
        add up only where no finding id is in both (the caller checks)."""
        assert self.labels is None and other.labels is None
        self.findings += other.findings
        self.late_pairs += other.late_pairs
        counts = self.counts
        for key, count in other.counts.items():
            counts[key] = counts.get(key, 0) + count
        self.gaps.update(other.gaps)
        self.closed.update(other.closed)
        self.naive_seen |= other.naive_seen

    def add_record(self, record: dict[str, Any], parsed: Finding | Rejected) -> None:
        """One decision record (`--decisions-out` or the decisions topic) of the input
        occurrence `parsed`: the Kafka path reports through here."""
        label = record.get("kind", record.get("reason")) or ""
        gap = record.get("gap_seconds") if label in _GAP_REASONS else None
        origin = Origin(record["input"], record["line"], record["index"])
        finding = parsed if isinstance(parsed, Finding) else None
        truth = self.tally(origin, record["decision"], label, finding, gap,
                           len(record.get("late_pairs", ())))
        for closure in record.get("closes", ()):
            self.closed[closure["reason"]] += 1
        if truth is not None:
            self._track(truth, record["decision"], finding, record.get("dedup_key"),
                        [(c["dedup_key"], c["reason"]) for c in record.get("closes", ())])

    def _track(self, truth: Truth, decision: str, f: Finding | None, dedup_key: str | None,
               closes: list[tuple[str, str]]) -> None:
        assert self.labels is not None
        partition = self._placements.one(f.partition_key) if f and self.partitions > 1 else 0
        self.labels.track(truth, decision, f, dedup_key, closes, self.policy, partition)

    def tally(self, origin: Origin, decision: str, label: str, f: Finding | None,
              gap: float | None, late_pairs: int) -> Truth | None:
        """Count one decision; its ground truth, when the input has labels."""
        self.findings += 1
        if late_pairs:
            self.late_pairs += late_pairs
        naive = False
        if f is None:
            key = (decision, label, "", "", False)
            self.counts[key] = self.counts.get(key, 0) + 1
        else:
            seen = self.naive_seen
            if f.id not in seen:  # `naive_alerts`, inlined: this runs per decision
                seen.add(f.id)
                naive = (f.record_state == "ACTIVE" and f.compliance_status == "FAILED"
                         and f.workflow_status == NAIVE_WORKFLOW)
            key = (decision, label, f.control_id, f.account, naive)
            self.counts[key] = self.counts.get(key, 0) + 1
            if gap is not None:
                self.gaps[(f.control_id, int(gap // GAP_BIN_S))] += 1
        if self.truths is not None:
            return self._score(origin, decision, label, naive)
        return None

    def _fold(self, pick: Callable[[tuple[str, str, str, str, bool]], str | None]) -> Counter[str]:
        out: Counter[str] = Counter()
        for key, count in self.counts.items():
            name = pick(key)
            if name is not None:
                out[name] += count
        return out

    @property
    def decisions(self) -> Counter[str]:
        return self._fold(lambda k: str(k[0]))

    @property
    def reasons(self) -> Counter[str]:
        return self._fold(lambda k: f"{k[0]}:{k[1]}")

    @property
    def naive_alerts(self) -> int:
        return sum(count for key, count in self.counts.items() if key[4])

    def _breakdown(self, where: int, *, all_decisions: bool) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for key, count in self.counts.items():
            name = key[2] if where == 2 else key[3]
            if not name:
                continue
            counts = out.setdefault(name, Counter())
            if all_decisions or key[0] != "silent":
                counts[str(key[0])] += count
            if key[4]:
                counts["naive_alert"] += count
        return {name: dict(sorted(c.items())) for name, c in sorted(out.items()) if c}

    def _score(self, origin: Origin, decision: str, label: str, naive: bool) -> Truth:
        assert self.truths is not None and self.labels is not None
        truth = next(self.truths, None)
        if truth is None or (truth.line, truth.index) != (origin.line, origin.index):
            got = "nothing" if truth is None else f"line {truth.line} index {truth.index}"
            raise LabelError(f"labels do not line up with the input: {origin.source} line "
                             f"{origin.line} index {origin.index} has {got} as its label")
        self.labels.add(truth, decision, label, naive, origin)
        return truth

    def gap_summary(self) -> dict[str, dict[str, Any]]:
        """Archive -> re-create gaps (paired within the window) per control, in hours."""
        per: dict[str, Counter[int]] = {}
        for (control, minutes), count in self.gaps.items():
            per.setdefault(control, Counter())[minutes] += count
        return {control: _percentiles(counts) for control, counts in sorted(per.items())}

    def gap_histogram(self) -> dict[int, int]:
        """Every paired gap, by minute."""
        out: Counter[int] = Counter()
        for (_, minutes), count in self.gaps.items():
            out[minutes] += count
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        decisions = self.decisions
        summary: dict[str, Any] = {
            "findings": self.findings,
            "decisions": dict(sorted(decisions.items())),
            "by_reason": dict(sorted(self.reasons.items())),
            "naive_alerts": self.naive_alerts,
            "alerts": decisions.get(Decision.ALERT.value, 0),
            "suppressed": decisions.get(Decision.SUPPRESSED.value, 0),
            "resolved": decisions.get(Decision.RESOLVED.value, 0),
            "dead_letters": decisions.get(Decision.DEAD_LETTER.value, 0),
            "late_pairs": self.late_pairs,
            "closed": dict(sorted(self.closed.items())),
            "partitions": self.partitions,
            "window_seconds": self.policy.window_ms / 1000,
            "hold_seconds": self.policy.hold_ms / 1000,
            "seconds": round(self.seconds, 3),
            "findings_per_second": round(self.findings / self.seconds, 1) if self.seconds else None,
            "by_control": self._breakdown(2, all_decisions=True),
            "by_account": self._breakdown(3, all_decisions=False),
            "gaps_hours_by_control": self.gap_summary(),
        }
        if self.labels is not None:
            summary["labels"] = self.labels.to_json()
        return summary


_GAP_REASONS = frozenset({Reason.RECREATED_AFTER_ARCHIVE, Reason.REACTIVATED_AFTER_ARCHIVE})


def _percentiles(counts: Counter[int]) -> dict[str, Any]:
    """Nearest-rank percentiles of gaps counted by minute, in hours."""
    total = sum(counts.values())
    ordered = sorted(counts.items())
    out: dict[str, Any] = {"count": total}
    for pct in PERCENTILES:
        rank = max(1, -(-total * pct // 100))
        seen = 0
        for minutes, count in ordered:
            seen += count
            if seen >= rank:
                out[f"p{pct}"] = round(minutes * GAP_BIN_S / 3600, 2)
                break
    out["max"] = round(ordered[-1][0] * GAP_BIN_S / 3600, 2) if ordered else None
    return out


class _InOrder:
    """Hands decisions on in input order, holding only those decided early."""

    def __init__(self, sink: Callable[[Outcome], None]) -> None:
        self.sink = sink
        self.next = 0
        self.waiting: dict[int, Outcome] = {}

    def put(self, outcomes: Iterable[Outcome]) -> None:
        waiting = self.waiting
        sink = self.sink
        nxt = self.next
        for outcome in outcomes:
            if outcome.seq == nxt and not waiting:  # the usual case: handed on at once
                sink(outcome)
                nxt += 1
            else:
                waiting[outcome.seq] = outcome
        while nxt in waiting:
            sink(waiting.pop(nxt))
            nxt += 1
        self.next = nxt


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
    labels: Iterable[Truth] | None = None,
    on_decided: Callable[[list[Outcome]], None] | None = None,
) -> Report:
    return _run(((o.seq, o.origin, o.parsed) for o in occurrences), policy=policy,
                partitions=partitions, on_decision=on_decision, labels=labels,
                on_decided=on_decided)


def _run(
    occurrences: Iterable[Arriving],
    *,
    policy: Policy,
    partitions: int = 1,
    on_decision: Callable[[Outcome], None] | None = None,
    labels: Iterable[Truth] | None = None,
    on_decided: Callable[[list[Outcome]], None] | None = None,
) -> Report:
    """`on_decision`: every decision, in input order. `on_decided`: the same, in the order
    they are taken (per partition, the order a worker writes their outputs in)."""
    report = Report(partitions=partitions, policy=policy)
    if labels is not None:
        report.labels = LabelScore()
        report.truths = iter(labels)

    if on_decision is None:
        sink = report.add
    else:
        def sink(outcome: Outcome) -> None:
            report.add(outcome)
            on_decision(outcome)

    ordered = _InOrder(sink)
    engines = [PartitionEngine(Store.in_memory(), policy, p, durable=False) for p in range(partitions)]
    started = time.perf_counter()
    put = ordered.put
    if on_decided is not None:
        in_order = ordered.put

        def put(outcomes: Iterable[Outcome]) -> None:
            batch = list(outcomes)
            on_decided(batch)
            in_order(batch)
    accepts = [engine.accept for engine in engines]
    placements = Placements(partitions) if partitions > 1 else None
    for chunk, place in _placed(occurrences, placements):
        # One partition: `place` is None, and every finding goes to the first engine.
        accept = accepts[0]
        for seq, origin, parsed in chunk:
            if type(parsed) is not Finding:
                assert isinstance(parsed, Rejected)
                put([rejected_outcome(parsed, origin, seq)])
                continue
            if place is not None:
                accept = accepts[place()]
            released = accept(parsed, origin, seq)
            if released:  # most arrivals are held
                put(released)
    for engine in engines:
        put(engine.flush())
    report.seconds = time.perf_counter() - started
    if report.truths is not None and next(report.truths, None) is not None:
        raise LabelError("the labels file has more entries than the input has findings")
    return report


# Findings placed a block at a time: one murmur2 pass over a block's new keys, the
# block's parsed findings likely still in the core's cache when they are decided. Blocks
# of 1,000 cost a fifth more CPU time on a four-partition topic (docs/performance.md).
PLACE_CHUNK = 64


def _placed(occurrences: Iterable[Arriving], placements: Placements | None
            ) -> Iterator[tuple[Iterable[Arriving], Callable[[], int] | None]]:
    """The occurrences, and a function giving each finding's keyed partition in turn, as
    the worker places it: without `placements` (one partition), all of them as they come
    (no function); else in blocks, murmur2 over each block's new keys at once."""
    if placements is None:
        yield occurrences, None
        return
    iterator = iter(occurrences)
    while chunk := list(islice(iterator, PLACE_CHUNK)):
        # `Finding.partition_key`, inline: a property costs a Python call per finding.
        keys = [f"{f.account}|{f.region}|{f.control_id}|{f.resource_id}"
                for _, _, f in chunk if type(f) is Finding]
        yield chunk, iter(placements.of(keys)).__next__


# -- files: one run, a window sweep ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepRow:
    window_ms: int
    hold_ms: int
    alerts: int
    suppressed: int
    missed: int | None
    false_alerts: int | None
    naive_alerts: int
    # control -> {"alerts": n, "suppressed": n}: to choose a pairing policy per control.
    by_control: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, report: Report) -> SweepRow:
        score = report.labels
        decisions = report.decisions
        by_control = {control: {"alerts": counts.get("alert", 0),
                                "suppressed": counts.get("suppressed", 0)}
                      for control, counts in report._breakdown(2, all_decisions=True).items()}
        return cls(report.policy.window_ms, report.policy.hold_ms, decisions.get("alert", 0),
                   decisions.get("suppressed", 0), score.missed if score else None,
                   score.false_alerts if score else None, report.naive_alerts, by_control)

    def to_json(self) -> dict[str, Any]:
        return {"window_seconds": self.window_ms / 1000, "hold_seconds": self.hold_ms / 1000,
                "alerts": self.alerts, "suppressed": self.suppressed, "missed": self.missed,
                "false": self.false_alerts, "naive_alerts": self.naive_alerts}


def sweep_by_control(rows: list[SweepRow]) -> dict[str, list[dict[str, Any]]]:
    """Per control, each window's alerts and suppressions: the data a per-control pairing
    policy is chosen from (docs/backtest.md)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for control, counts in row.by_control.items():
            out.setdefault(control, []).append({"window_seconds": row.window_ms / 1000, **counts})
    return dict(sorted(out.items()))


LabelChoice = list[Path] | Literal["beside"] | None


def label_files(paths: list[Path], labels: LabelChoice) -> list[Path] | None:
    """The labels to score against: given files, those beside the inputs (when every
    input has one), or none."""
    if labels == "beside":
        return find_labels(paths)
    return labels


def backtest_files(
    paths: list[Path], *, policy: Policy, partitions: int = 1, now_ms: int,
    on_decision: Callable[[Outcome], None] | None = None, labels: LabelChoice = "beside",
    progress: bool | None = None, on_decided: Callable[[list[Outcome]], None] | None = None,
) -> Report:
    """One backtest over files, scored against ground-truth labels when there are any."""
    label_paths = label_files(paths, labels)
    bar = Progress(sum(input_size(p) for p in paths), enabled=progress)
    try:
        with batch_gc():
            return _run(
                _read(paths, policy=policy, now_ms=now_ms, progress=bar),
                policy=policy, partitions=partitions, on_decision=on_decision,
                labels=read_labels(label_paths) if label_paths else None, on_decided=on_decided)
    finally:
        bar.close()


def sweep(
    paths: list[Path], windows: list[int], *, policy: Policy, partitions: int, now_ms: int,
    labels: LabelChoice = "beside", progress: bool | None = None,
) -> tuple[list[SweepRow], Report | None]:
    """One backtest per window; the rows, and the report of the widest window (whose
    paired gaps are the most complete)."""
    rows: list[SweepRow] = []
    widest: Report | None = None
    for window in windows:
        report = backtest_files(paths, policy=replace(policy, window_ms=window), partitions=partitions,
                                now_ms=now_ms, labels=labels, progress=progress)
        rows.append(SweepRow.of(report))
        if widest is None or window >= widest.policy.window_ms:
            widest = report
    return rows, widest
