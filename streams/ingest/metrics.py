"""Prometheus metrics of `flapguard forward securityhub|sqs` (`flapguard_forward_*`).

A registry of its own (see `notify_metrics`). The only labels are the source kind
(`securityhub`, `sqs`) and dead-letter reasons from the core's bounded set: Regions,
role ARNs, queue URLs and finding ids never become labels. With several Regions or
roles, the cursor gauge shows the oldest cursor: the one that is behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from streams.ingest.aws import THROTTLING
from streams.worker.metrics import DEAD_LETTER_REASONS, reason_label

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

SOURCES = ("securityhub", "sqs")

FINDINGS = Counter(
    "flapguard_forward_findings", "Findings produced to the findings topic (acknowledged by "
    "the broker)", ["source"], registry=REGISTRY)
DEAD_LETTERS = Counter(
    "flapguard_forward_dead_letters", "Messages produced to the dead-letter topic (not "
    "Security Hub input), by reason", ["source", "reason"], registry=REGISTRY)
GETFINDINGS_REQUESTS = Counter(
    "flapguard_forward_getfindings_requests", "GetFindings HTTP requests, botocore's retries "
    "included", registry=REGISTRY)
GETFINDINGS_PAGES = Counter(
    "flapguard_forward_getfindings_pages", "GetFindings pages received", registry=REGISTRY)
GETFINDINGS_THROTTLED = Counter(
    "flapguard_forward_getfindings_throttled", "GetFindings requests answered with throttling "
    "(each one retried, by botocore or by a restarted sweep)", registry=REGISTRY)
SWEEP_RETRIES = Counter(
    "flapguard_forward_sweep_retries", "Sweeps restarted from the cursor after botocore gave "
    "up (throttling, or an outage of a poller that had worked)", registry=REGISTRY)
SQS_RECEIVED = Counter(
    "flapguard_forward_sqs_messages_received", "SQS messages received", registry=REGISTRY)
SQS_DELETED = Counter(
    "flapguard_forward_sqs_messages_deleted", "SQS messages deleted after their records were "
    "acknowledged", registry=REGISTRY)
SQS_DELETE_FAILED = Counter(
    "flapguard_forward_sqs_delete_failures", "SQS messages whose delete failed (they come back: "
    "a duplicate downstream, never a loss)", registry=REGISTRY)
CURSOR = Gauge(
    "flapguard_forward_cursor_timestamp_seconds", "UpdatedAt the Security Hub cursor stands at "
    "(event time; the oldest of the polled Regions and roles)", registry=REGISTRY)
LAST_POLL = Gauge(
    "flapguard_forward_last_poll_success_timestamp_seconds", "Wall-clock time of the last "
    "complete GetFindings sweep or answered SQS receive", ["source"], registry=REGISTRY)

for _source in SOURCES:
    FINDINGS.labels(source=_source)
for _reason in DEAD_LETTER_REASONS:
    DEAD_LETTERS.labels(source="sqs", reason=_reason)

_cursors: dict[str, int] = {}
_lock = threading.Lock()


def forwarded(source: str, findings: int, dead_letters: Sequence[str] = ()) -> None:
    """Records the broker acknowledged: `findings` findings, and dead letters by reason."""
    FINDINGS.labels(source=source).inc(findings)
    for reason in dead_letters:
        DEAD_LETTERS.labels(source=source, reason=reason_label(reason)).inc()


def cursor_moved(key: str, updated_at_ms: int) -> None:
    with _lock:
        _cursors[key] = updated_at_ms
        CURSOR.set(min(_cursors.values()) / 1000)


def polled(source: str) -> None:
    LAST_POLL.labels(source=source).set(time.time())


def count_getfindings(client: Any) -> None:
    """Count every GetFindings HTTP exchange of `client`, retries included (botocore
    retries inside one call, where the poller cannot see them)."""
    client.meta.events.register("response-received.securityhub.GetFindings", _getfindings_response)


def _getfindings_response(response_dict: Any = None, parsed_response: Any = None,
                          **_: Any) -> None:
    GETFINDINGS_REQUESTS.inc()
    status = (response_dict or {}).get("status_code")
    code = ((parsed_response or {}).get("Error") or {}).get("Code")
    if status == 429 or code in THROTTLING:
        GETFINDINGS_THROTTLED.inc()
