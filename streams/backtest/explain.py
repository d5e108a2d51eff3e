"""`flapguard explain`: why a finding was (or was not) alerted, as a timeline of its
decisions (docs/backtest.md, "Why was this finding not alerted?").

The decisions come from a decisions file (`--decisions-out`), the decisions topic, or
are made again from the findings topic by the topic backtest. A query names a finding
id, a resource id or a partition key; a finding's timeline also shows the decisions of
the findings that paired with it. Under each alert, what the notifier did with it on
each sink (delivered, dead-lettered, skipped), from its deliveries topic or a file of
its records (`streams.notify.deliveries`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.core.decide import Outcome
from streams.core.findings import parse_timestamp
from streams.core.records import kafka_decision_record
from streams.kafka.security import PLAINTEXT, BrokerSecurity

SHORT = 12  # a finding id is shown by its last characters where the timeline is long


@dataclass(frozen=True, slots=True)
class Query:
    """A finding id, a resource id (`Resources[0].Id`) or a partition key."""

    text: str

    @property
    def raw(self) -> bytes:
        return self.text.encode()

    def matches(self, record: dict[str, Any]) -> bool:
        q = self.text
        if q in (record.get("finding_id"), record.get("paired_finding_id"), record.get("key")):
            return True
        if q in (record.get("late_pairs") or ()):
            return True
        if any(c.get("finding_id") == q for c in record.get("closes") or ()):
            return True
        return resource_of(record.get("key")) == q

    def matches_outcome(self, outcome: Outcome) -> bool:
        """`matches` on a decision before it is a record (the backtest's many)."""
        q = self.text
        f = outcome.finding
        if f is not None and q in (f.id, f.resource_id, f.partition_key):
            return True
        if outcome.pairing is not None and outcome.pairing.paired_finding_id == q:
            return True
        if any(p.finding_id == q for p in outcome.late_pairs):
            return True
        if any(c.finding_id == q for c in outcome.closes):
            return True
        return outcome.rejected is not None and outcome.rejected.finding_id == q


def resource_of(key: str | None) -> str | None:
    """The resource id of a partition key (account | region | control | resource)."""
    if not key:
        return None
    parts = key.split("|", 3)
    return parts[3] if len(parts) == 4 else None


# -- the sources ----------------------------------------------------------------------


def from_file(path: Path, query: Query) -> list[dict[str, Any]]:
    """The matching lines of a decisions file (`--decisions-out`; `.gz` read through
    gzip), in file order."""
    from streams.backtest.run import open_input

    raw = query.raw
    out = []
    with open_input(path) as handle:
        for line in handle:
            if raw in line:  # most lines are not about it: no parsing
                record = orjson.loads(line)
                if query.matches(record):
                    out.append(record)
    return out


def from_topic(topic: str, query: Query, *, bootstrap: str,
               security: BrokerSecurity = PLAINTEXT) -> list[dict[str, Any]]:
    """The matching records of a decisions topic, everything it holds, read directly
    (no group). A decision written again after a worker's restart is counted once: the
    last one written for an occurrence wins."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    raw = query.raw

    def take(value: bytes) -> None:
        if raw in value:  # most records are not about it: no parsing
            record = orjson.loads(value)
            if query.matches(record):
                where = occurrence(record)
                found.pop(where, None)  # the last written, in its place
                found[where] = record

    topic_values(topic, take, bootstrap=bootstrap, security=security)
    return list(found.values())


def occurrence(record: dict[str, Any]) -> tuple[Any, ...]:
    """The finding occurrence a decision is about: its Kafka record and index where it
    names one (the decisions topic, `backtest --from-topic`), else its file, line and
    index."""
    if record.get("topic") is not None:
        return ("record", record["topic"], record.get("partition"), record.get("offset"),
                record.get("index"))
    return ("file", record.get("input"), record.get("line"), record.get("index"))


def topic_values(topic: str, take: Callable[[bytes], None], *, bootstrap: str,
                 security: BrokerSecurity = PLAINTEXT) -> None:
    """Hand every value a topic holds (up to where it ends now) to `take`, read with a
    plain consumer: no group, no commits, read_committed."""
    asyncio.run(_topic_values(topic, take, bootstrap, security))


async def _topic_values(topic: str, take: Callable[[bytes], None], bootstrap: str,
                        security: BrokerSecurity) -> None:
    from streams.backtest.from_topic import merged_records, plain_consumer, plan_read
    from streams.core.policy import Policy
    from streams.kafka.availability import start_client

    consumer = plain_consumer(bootstrap, security, bare=True)  # values alone are read
    await start_client(consumer, bootstrap, security)
    try:
        plan = await plan_read(consumer, topic, policy=Policy(), since_ms=None, until_ms=None)
        async for batch in merged_records(consumer, plan):
            for _, records in batch:
                for r in records:
                    if r.value:
                        take(r.value)
    finally:
        await consumer.stop()


def recorded(outcomes: Iterable[Outcome], query: Query) -> Iterator[dict[str, Any]]:
    """The matching decisions of a backtest, as decisions-topic records."""
    for outcome in outcomes:
        if query.matches_outcome(outcome):
            yield kafka_decision_record(outcome)


# -- what the notifier delivered ------------------------------------------------------


def delivery_wanted(query: Query, keys: set[str]) -> Callable[[dict[str, Any]], bool]:
    """Whether a delivery record belongs to the timeline: one of its alerts' dedup_keys,
    or the finding or resource asked about."""
    def wanted(record: dict[str, Any]) -> bool:
        return (record.get("dedup_key") in keys
                or query.text in (record.get("finding_id"), record.get("resource_id")))
    return wanted


def alert_keys(records: list[dict[str, Any]]) -> set[str]:
    """The dedup_keys of the timeline's alerts, and of the incidents its decisions close."""
    return {key for r in records for key, _ in written_alerts(r)}


def written_alerts(decision: dict[str, Any]) -> list[tuple[str, bool]]:
    """The alerts-topic records a decision wrote, as (dedup_key, resolved): its own alert
    or resolve, and the `resolved` of each incident it closed (`closes`)."""
    out = []
    if decision.get("decision") in ("alert", "resolved") and decision.get("dedup_key"):
        out.append((str(decision["dedup_key"]), decision.get("decision") == "resolved"))
    for closed in decision.get("closes") or ():
        if isinstance(closed, dict) and closed.get("dedup_key"):
            out.append((str(closed["dedup_key"]), True))
    return out


def deliveries_from_file(path: Path, query: Query, keys: set[str]) -> list[dict[str, Any]]:
    """The matching records of a file of delivery records (JSON lines; `.gz` read through gzip)."""
    from streams.backtest.run import open_input

    wanted = delivery_wanted(query, keys)
    out = []
    with open_input(path) as handle:
        for line in handle:
            if line.strip():
                record = orjson.loads(line)
                if isinstance(record, dict) and wanted(record):
                    out.append(record)
    return out


def deliveries_from_topic(topic: str, query: Query, keys: set[str], *, bootstrap: str,
                          security: BrokerSecurity = PLAINTEXT) -> list[dict[str, Any]]:
    """The matching records of the notifier's deliveries topic, read whole (no group)."""
    wanted = delivery_wanted(query, keys)
    needles = [k.encode() for k in keys] + [query.raw]
    out: list[dict[str, Any]] = []

    def take(value: bytes) -> None:
        if any(n in value for n in needles):  # most records are not about it: no parsing
            record = orjson.loads(value)
            if isinstance(record, dict) and wanted(record):
                out.append(record)

    topic_values(topic, take, bootstrap=bootstrap, security=security)
    return out


def topic_exists(topic: str, *, bootstrap: str, security: BrokerSecurity = PLAINTEXT) -> bool:
    async def run() -> bool:
        from streams.kafka.topics import admin_client

        async with admin_client(bootstrap, security, timeout=30) as admin:
            return topic in set(await admin.list_topics())

    return asyncio.run(run())


def deliveries_of(decision: dict[str, Any], deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the notifier did with the alerts a decision wrote (a `resolved` and the alert it
    closes share a dedup_key; the kind tells them apart), by sink, each sink's in time order."""
    wanted = set(written_alerts(decision))
    found = [d for d in deliveries
             if (str(d.get("dedup_key") or ""), d.get("kind") == "resolved") in wanted]
    return sorted(found, key=lambda d: (str(d.get("sink")), str(d.get("at") or "")))


def delivery_line(d: dict[str, Any]) -> str:
    """`-> slack      delivered      2026-... in a message of 12 alerts (account ..., control ...)`."""
    parts = [f"-> {d.get('sink')!s:<10}", f"{d.get('outcome')!s:<14}", str(d.get("at") or "-")]
    if d.get("group_size"):
        parts.append(f"in a message of {d['group_size']} alert(s) ({d.get('group')})")
    if d.get("error"):
        parts.append(f"{d['error']} after {d.get('attempts')} attempt(s)")
    if d.get("why"):
        parts.append(str(d["why"]))
    if d.get("route"):
        parts.append(f"route {d['route']}")
    if d.get("redelivered"):
        parts.append("(notify redeliver)")
    return "  ".join(parts)


# -- the timeline ---------------------------------------------------------------------


def timeline(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records in event time (`UpdatedAt`), those without one (dead letters) last,
    in the order they came otherwise."""
    def when(item: tuple[int, dict[str, Any]]) -> tuple[int, int, int]:
        n, record = item
        text = record.get("updated_at")
        if not text:
            return (1, 0, n)
        try:
            return (0, parse_timestamp(text), n)
        except ValueError:
            return (1, 0, n)

    return [record for _, record in sorted(enumerate(records), key=when)]


def short(finding_id: str | None) -> str:
    if not finding_id:
        return "-"
    return finding_id if len(finding_id) <= SHORT + 1 else "…" + finding_id[-SHORT:]


def where(record: dict[str, Any]) -> str:
    """The input line, or the record, a decision was made for."""
    if record.get("topic") and record.get("input") == record.get("topic"):
        place = f"{record['topic']}[{record.get('partition')}]@{record.get('offset')}"
    else:
        place = f"{record.get('input')}:{record.get('line')}"
    index = record.get("index") or 0
    return f"{place}#{index}" if index else place


def render(query: Query, records: list[dict[str, Any]],
           deliveries: list[dict[str, Any]] | None = None) -> str:
    """The timeline as printed: one line per decision, and under an alert what the
    notifier delivered where (when `deliveries` were read)."""
    ordered = timeline(records)
    findings = {r.get("finding_id") for r in ordered if r.get("finding_id")}
    own = [r for r in ordered if r.get("finding_id") == query.text]
    if own:
        head = f"finding {query.text}: {len(own)} decisions"
        others = len(ordered) - len(own)
        if others:
            head += f", and {others} of the findings paired with it"
    else:
        head = f"{query.text}: {len(ordered)} decisions of {len(findings)} findings"
    keys = sorted({r["key"] for r in ordered if r.get("key")})
    lines = [head]
    if len(keys) == 1:
        lines.append(f"  key {keys[0]}")
    for r in ordered:
        lines.append("  " + _line(r))
        if deliveries is not None and written_alerts(r):
            done = deliveries_of(r, deliveries)
            lines.extend("      " + delivery_line(d) for d in done)
            if not done:
                lines.append("      -> no delivery recorded")
    return "\n".join(lines)


def _line(r: dict[str, Any]) -> str:
    label = r.get("kind") or r.get("reason") or ""
    parts = [f"{r.get('updated_at') or '-':<24}", f"{r['decision']:<10}", f"{label:<26}",
             f"{r.get('control_id') or '-':<10}", f"{short(r.get('finding_id')):<14}"]
    if r.get("paired_finding_id"):
        gap = r.get("gap_seconds")
        after = f", {gap / 3600:.2f} h after its archive" if gap is not None else ""
        parts.append(f"paired with {short(r['paired_finding_id'])}{after}")
    if r.get("late_pairs"):
        parts.append("late pair of " + ", ".join(short(f) for f in r["late_pairs"]))
    for c in r.get("closes") or ():
        parts.append(f"closed the incident of {short(c.get('finding_id'))} ({c.get('reason')}, "
                     f"dedup_key {c.get('dedup_key')})")
    if r.get("dedup_key"):
        parts.append(f"dedup_key {r['dedup_key']}")
    parts.append(f"at {where(r)}")
    return "  ".join(parts)
