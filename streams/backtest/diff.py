"""`flapguard diff`: what a candidate setting would have alerted that production did not,
and the reverse, alert by alert (docs/backtest.md, "Comparing with production").

Both sides are decisions (a decisions file, or a decisions topic read whole), matched by
finding occurrence: the Kafka record and index where both name one, else the file,
line and index. Only occurrences both sides decided are compared; the others are
counted (production decisions from before the candidate's range, a warm-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from streams.backtest.explain import occurrence, resource_of, short, topic_values
from streams.kafka.security import PLAINTEXT, BrokerSecurity

ALERT = "alert"


class Brief(NamedTuple):
    """What the comparison needs of one decision."""

    decision: str
    label: str
    finding_id: str | None
    key: str | None
    control_id: str | None
    account: str | None
    severity: str | None
    updated_at: str | None
    paired_finding_id: str | None
    gap_seconds: float | None
    dedup_key: str | None
    in_file: tuple[Any, ...]  # the occurrence by file, line and index

    @classmethod
    def of(cls, record: dict[str, Any]) -> Brief:
        return cls(record["decision"], record.get("kind") or record.get("reason") or "",
                   record.get("finding_id"), record.get("key"), record.get("control_id"),
                   record.get("account"), record.get("severity"), record.get("updated_at"),
                   record.get("paired_finding_id"), record.get("gap_seconds"), record.get("dedup_key"),
                   ("file", record.get("input"), record.get("line"), record.get("index")))

    def why(self) -> str:
        """The decision and its kind or reason, with the pair where there is one."""
        text = f"{self.decision} {self.label}"
        if self.paired_finding_id:
            text += f" (paired with {short(self.paired_finding_id)}"
            if self.gap_seconds is not None:
                text += f", {self.gap_seconds / 3600:.2f} h after its archive"
            text += ")"
        return text


Decisions = dict[tuple[Any, ...], Brief]


def read_file(path: Path) -> Decisions:
    """A decisions file (`--decisions-out`), by occurrence."""
    from streams.backtest.run import open_input

    out: Decisions = {}
    with open_input(path) as handle:
        for line in handle:
            if line.strip():
                record = orjson.loads(line)
                out[occurrence(record)] = Brief.of(record)
    return out


def read_topic(topic: str, *, bootstrap: str, security: BrokerSecurity = PLAINTEXT) -> Decisions:
    """A decisions topic, read whole, by occurrence (the last decision written for an
    occurrence wins: a worker's restart writes some again)."""
    out: Decisions = {}

    def take(value: bytes) -> None:
        record = orjson.loads(value)
        out[occurrence(record)] = Brief.of(record)

    topic_values(topic, take, bootstrap=bootstrap, security=security)
    return out


class Change(NamedTuple):
    """One alert the candidate adds (production did something else) or removes."""

    change: str  # "added" or "removed"
    alert: Brief  # the side that alerted
    other: Brief  # the side that did not

    def to_json(self) -> dict[str, Any]:
        a, o = self.alert, self.other
        return {"change": self.change, "finding_id": a.finding_id, "control_id": a.control_id,
                "resource_id": resource_of(a.key), "account": a.account, "severity": a.severity,
                "updated_at": a.updated_at, "kind": a.label, "dedup_key": a.dedup_key,
                "instead": {"decision": o.decision, "kind_or_reason": o.label,
                            "paired_finding_id": o.paired_finding_id, "gap_seconds": o.gap_seconds}}


@dataclass(slots=True)
class Diff:
    compared: int = 0
    production_only: int = 0
    candidate_only: int = 0
    production_alerts: int = 0
    candidate_alerts: int = 0
    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"compared": self.compared, "production_only": self.production_only,
                "candidate_only": self.candidate_only, "production_alerts": self.production_alerts,
                "candidate_alerts": self.candidate_alerts,
                "added": [c.to_json() for c in self.added], "removed": [c.to_json() for c in self.removed]}


def by_file(decisions: Decisions) -> Decisions:
    """Decisions by file, line and index (a replayed record names its file and line)."""
    return {brief.in_file: brief for brief in decisions.values()}


def compare(production: Decisions, candidate: Decisions) -> Diff:
    """The alerts of the occurrences both decided, side by side; changes in event time.
    Where one side names Kafka records and the other files (a file backtest against the
    decisions topic of its replay), both are matched by file and line."""
    if {k[0] for k in production} != {k[0] for k in candidate}:
        production, candidate = by_file(production), by_file(candidate)
    diff = Diff()
    for where, prod in production.items():
        cand = candidate.get(where)
        if cand is None:
            diff.production_only += 1
            continue
        diff.compared += 1
        p_alert, c_alert = prod.decision == ALERT, cand.decision == ALERT
        diff.production_alerts += p_alert
        diff.candidate_alerts += c_alert
        if c_alert and not p_alert:
            diff.added.append(Change("added", cand, prod))
        elif p_alert and not c_alert:
            diff.removed.append(Change("removed", prod, cand))
    diff.candidate_only = sum(1 for where in candidate if where not in production)
    diff.added.sort(key=_when)
    diff.removed.sort(key=_when)
    return diff


def _when(change: Change) -> tuple[str, str]:
    return (change.alert.updated_at or "", change.alert.finding_id or "")


def render(diff: Diff) -> str:
    lines = [
        f"compared {diff.compared} finding occurrences (only in production: {diff.production_only}, "
        f"only in the candidate: {diff.candidate_only})",
        f"alerts: production {diff.production_alerts}, candidate {diff.candidate_alerts}: "
        f"{len(diff.added)} added, {len(diff.removed)} removed",
    ]
    for title, changes, side in (("ADDED", diff.added, "production"), ("REMOVED", diff.removed, "candidate")):
        lines.append(f"{title} ({len(changes)})")
        for c in changes:
            a = c.alert
            lines.append(f"  {a.label:<12} {a.severity or '-':<9} {a.control_id or '-':<10} "
                         f"{resource_of(a.key) or '-'}  finding {short(a.finding_id)}  at {a.updated_at}"
                         f"  {side}: {c.other.why()}")
    return "\n".join(lines)
