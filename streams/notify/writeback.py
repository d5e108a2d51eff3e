"""`--write-back`: what flapguard tells Security Hub (BatchUpdateFindings). Pure.

- An alerted finding becomes Workflow NOTIFIED (its Note is left alone: it may be an
  analyst's).
- A suppressed re-creation (or reactivation, or consolidation switch) takes its
  predecessor's Workflow status (SUPPRESSED if an analyst muted the predecessor, else
  NOTIFIED), with a Note naming the predecessor and the gap, so an analyst who opens it
  sees why nobody was paged.

One call carries one Workflow and one Note for up to 100 findings, so findings are
grouped by (Workflow, Note). The "Imported" events these calls cause do not change
`UpdatedAt`: the worker drops them as `duplicate_event`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from streams.config import ConfigError
from streams.notify.sinks import Alert

BATCH_LIMIT = 100
NOTE_LIMIT = 512
UPDATED_BY = "flapguard"
WORKFLOW_NOTIFIED = "NOTIFIED"
WORKFLOW_SUPPRESSED = "SUPPRESSED"
ID_FILTER_LIMIT = 20  # values per GetFindings string filter
_FINDING_ARN = re.compile(r"^arn:(?P<partition>aws[a-z-]*):securityhub:(?P<region>[a-z0-9-]+):\d{12}:")
_REASONS = {
    "recreated_after_archive": "re-created {gap} after {pred} was archived",
    "reactivated_after_archive": "active again {gap} after it was archived",
    "consolidation_switch": "consolidated control finding replacing {pred} ({gap} apart)",
}
T = TypeVar("T")


class WriteBackError(ConfigError):
    """A record that cannot become a BatchUpdateFindings entry (dead-lettered)."""


@dataclass(frozen=True, slots=True)
class WriteBackItem:
    finding_id: str
    product_arn: str
    workflow: str
    note: str | None


def alerted_item(alert: Alert) -> WriteBackItem:
    product = alert.product_arn or securityhub_product_arn(alert.finding_id)
    return WriteBackItem(alert.finding_id, product, WORKFLOW_NOTIFIED, None)


def suppressed_item(record: Any, workflows: Mapping[str, str] | None = None) -> WriteBackItem | None:
    """None for records that need no write-back (a late pair: its re-creation alerted).
    `workflows`: the Workflow status of predecessors, by finding id, where known."""
    if not isinstance(record, dict):
        raise WriteBackError("suppressed record is not a JSON object")
    reason = str(record.get("reason") or "")
    if reason not in _REASONS:
        return None
    finding_id = str(record.get("finding_id") or "")
    if not finding_id:
        raise WriteBackError("suppressed record without finding_id")
    predecessor = str(record.get("paired_finding_id") or "")
    muted = (workflows or {}).get(predecessor) == WORKFLOW_SUPPRESSED
    return WriteBackItem(finding_id, securityhub_product_arn(finding_id),
                         WORKFLOW_SUPPRESSED if muted else WORKFLOW_NOTIFIED,
                         suppression_note(record, reason))


def predecessor_ids(records: Sequence[Any]) -> list[str]:
    """The predecessors whose Workflow status a write-back of these suppressed records
    copies, in first-seen order."""
    ids: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict) and record.get("reason") in _REASONS:
            predecessor = record.get("paired_finding_id")
            if isinstance(predecessor, str) and predecessor:
                ids[predecessor] = None
    return list(ids)


def id_filters(finding_ids: Sequence[str]) -> list[dict[str, Any]]:
    """GetFindings `Filters` arguments, each for up to ID_FILTER_LIMIT finding ids."""
    return [
        {"Id": [{"Value": fid, "Comparison": "EQUALS"} for fid in finding_ids[start:start + ID_FILTER_LIMIT]]}
        for start in range(0, len(finding_ids), ID_FILTER_LIMIT)
    ]


def securityhub_product_arn(finding_id: str) -> str:
    """Only Security Hub control findings are ever suppressed by pairing; their product is
    Security Hub's own, in the finding's partition and Region."""
    match = _FINDING_ARN.match(finding_id)
    if not match:
        raise WriteBackError(f"cannot tell the product of finding {finding_id[:200]!r}")
    return f"arn:{match['partition']}:securityhub:{match['region']}::product/aws/securityhub"


def format_gap(seconds: Any) -> str:
    try:
        total = round(float(seconds))
    except (TypeError, ValueError):
        return "an unknown time"
    hours, rest = divmod(abs(total), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def suppression_note(record: dict[str, Any], reason: str) -> str:
    pred = str(record.get("paired_finding_id") or "an archived finding")
    what = _REASONS[reason].format(gap=format_gap(record.get("gap_seconds")), pred=pred)
    text = f"flapguard: not notified again ({reason}): {what}; predecessor archived at " \
           f"{record.get('archived_at') or 'unknown'}."
    return text if len(text) <= NOTE_LIMIT else text[: NOTE_LIMIT - 1] + "…"


def update_requests(items: Sequence[tuple[T, WriteBackItem]]) -> list[tuple[dict[str, Any], list[T]]]:
    """BatchUpdateFindings keyword arguments, each with the records it stands for."""
    groups: dict[tuple[str, str | None], dict[tuple[str, str], list[T]]] = {}
    for origin, item in items:
        group = groups.setdefault((item.workflow, item.note), {})
        group.setdefault((item.finding_id, item.product_arn), []).append(origin)
    requests: list[tuple[dict[str, Any], list[T]]] = []
    for (workflow, note), findings in groups.items():
        identifiers = list(findings)
        for start in range(0, len(identifiers), BATCH_LIMIT):
            chunk = identifiers[start:start + BATCH_LIMIT]
            request: dict[str, Any] = {
                "FindingIdentifiers": [{"Id": fid, "ProductArn": arn} for fid, arn in chunk],
                "Workflow": {"Status": workflow},
            }
            if note is not None:
                request["Note"] = {"Text": note, "UpdatedBy": UPDATED_BY}
            requests.append((request, [o for key in chunk for o in findings[key]]))
    return requests
