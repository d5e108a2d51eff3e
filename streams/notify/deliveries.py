"""Delivery records: what the notifier did with each alert, per sink, on the deliveries
topic (`--deliveries-topic`, default `securityhub.deliveries`), where `flapguard explain`
reads them. Pure: the records and how to tell which alert one is about.

One record per alert and sink, once that sink is done with it:
- `delivered`: the sink accepted it (alone, or listed in a grouped message: `group`,
  `group_size`);
- `dead_lettered`: it failed for good and went to the notification dead-letter topic
  (`error`, `attempts`);
- `skipped`: its route does not send it to this sink (`why`).

`flapguard notify redeliver` writes one too for each dead letter it handles
(`redelivered`: true): delivered, dead-lettered again, or skipped (`why`: an incident
resolved since, the write-back not redone).

A record is acknowledged by the broker before the alert's offset is committed for that
sink, so a crash repeats a record at worst, never loses one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from streams.core.records import iso
from streams.notify.sinks import Alert


class Outcome(Enum):
    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an alert record is on the alerts topic; `text()` is how delivery records and
    the notification dead letters' origin header write it (`redeliver.parse_origin`)."""

    topic: str
    partition: int
    offset: int

    def text(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def delivery_record(
    sink: str, outcome: Outcome, alert: Alert, origin: Origin | None, at_ms: int, *,
    route: str | None = None, group: str | None = None, group_size: int | None = None,
    error: str | None = None, attempts: int | None = None, why: str | None = None,
    redelivered: bool | None = None,
) -> dict[str, Any]:
    """`origin`: None for a dead letter that did not say where its alert was."""
    record: dict[str, Any] = {
        "sink": sink,
        "outcome": outcome.value,
        "at": iso(at_ms),
        "dedup_key": alert.dedup_key,
        "finding_id": alert.finding_id,
        "kind": alert.kind_label,
        "severity": alert.severity.name,
        "control_id": alert.control_id,
        "account": alert.account,
        "resource_id": alert.resource_id,
        "origin": origin.text() if origin is not None else None,
    }
    if alert.resolved:
        record["reason"] = alert.reason_name or "passed"
    optional = {"route": route, "group": group, "group_size": group_size, "error": error,
                "attempts": attempts, "why": why, "redelivered": redelivered}
    record.update({name: value for name, value in optional.items() if value is not None})
    return record

