"""Prometheus metrics of the worker (`flapguard_*`) and its `/metrics` endpoint.

The worker calls the small functions below; they only touch counters, so they are
cheap and safe before (or without) `serve`. Label values are bounded: decisions,
reasons, kinds, severities and control ids come from small fixed sets (anything
else, and any value beyond `MAX_LABEL_VALUES` distinct ones, becomes `other`);
partitions are bounded by the partition count; the account appears only in
`flapguard_decisions_by_account_total`, and only when the operator opts in. Resource
and finding ids never become labels.

Faust's own Prometheus sensor (`flapguard_faust_*`: messages, rebalances, commit and
end offsets for consumer lag) writes into the same registry; Faust's web server stays
off and `serve` exposes the registry on its own HTTP server.
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from streams import __version__
from streams.config import ConfigError
from streams.core.decide import AlertKind, Decision, Outcome, Reason
from streams.core.engine import PartitionEngine
from streams.core.findings import Finding, Rejected

log = logging.getLogger("flapguard.metrics")

# `*_created` series double the output and no panel uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

MAX_LABEL_VALUES = 500
OTHER = "other"

SUPPRESSION_REASONS = (Reason.RECREATED_AFTER_ARCHIVE, Reason.REACTIVATED_AFTER_ARCHIVE,
                       Reason.CONSOLIDATION_SWITCH)

_HOUR = 3600.0
# Archive -> re-creation gaps: RDS.45's was 12.5 h; the default window is 30 h.
GAP_BUCKETS = (60, 300, 900, 1800, _HOUR, 2 * _HOUR, 4 * _HOUR, 8 * _HOUR, 12 * _HOUR,
               18 * _HOUR, 24 * _HOUR, 30 * _HOUR, 48 * _HOUR, 72 * _HOUR, 7 * 24 * _HOUR)
# Wall clock minus UpdatedAt on arrival: seconds for EventBridge, days for a replay.
LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, _HOUR, 3 * _HOUR, 6 * _HOUR, 12 * _HOUR,
               24 * _HOUR, 3 * 24 * _HOUR, 7 * 24 * _HOUR, 30 * 24 * _HOUR)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

FINDINGS_CONSUMED = Counter(
    "flapguard_findings_consumed", "Finding occurrences parsed from the findings topic "
    "(dead-lettered ones included)", registry=REGISTRY)
DECISIONS = Counter(
    "flapguard_decisions", "Decisions, by decision and kind (alerts) or reason (others)",
    ["decision", "reason"], registry=REGISTRY)
DECISIONS_BY_ACCOUNT = Counter(
    "flapguard_decisions_by_account", "Decisions by AWS account (only with "
    "--metrics-account-label)", ["account", "decision"], registry=REGISTRY)
ALERTS = Counter(
    "flapguard_alerts", "Records written to the alerts topic (alerts and resolutions)",
    ["kind", "severity", "control_id"], registry=REGISTRY)
CLOSED = Counter(
    "flapguard_incidents_closed", "Incidents closed without their finding passing: archived "
    "(nothing continued it in time) or superseded (a successor opened its own)", ["reason"],
    registry=REGISTRY)
SUPPRESSIONS = Counter(
    "flapguard_suppressions", "Suppressed re-creations, by reason and control",
    ["reason", "control_id"], registry=REGISTRY)
LATE_PAIRS = Counter(
    "flapguard_late_pairs", "Archives that arrived after their re-creation had alerted",
    ["control_id"], registry=REGISTRY)
DEAD_LETTERS = Counter(
    "flapguard_dead_letters", "Records written to the dead-letter topic, by reason",
    ["reason"], registry=REGISTRY)
REFUSED = Counter(
    "flapguard_records_refused", "Records the producer or the broker refused as too large for "
    "their topic, skipped (logged with their origin)", ["topic"], registry=REGISTRY)
RECREATE_GAP = Histogram(
    "flapguard_recreate_gap_seconds", "Event time from a predecessor's archive to the "
    "re-creation paired with it", ["reason"], buckets=GAP_BUCKETS, registry=REGISTRY)
EVENT_TIME_LAG = Histogram(
    "flapguard_event_time_lag_seconds", "Wall clock minus the finding's UpdatedAt when the "
    "worker reads it", buckets=LAG_BUCKETS, registry=REGISTRY)
PROCESSING = Histogram(
    "flapguard_processing_seconds", "Wall-clock time to process one record before its batch's "
    "outputs are sent (ingest: a findings record parsed, its findings decided or forwarded; "
    "decide: a keyed record held and decided)", ["stage"],
    buckets=LATENCY_BUCKETS, registry=REGISTRY)
PENDING_HOLDS = Gauge(
    "flapguard_pending_holds", "Findings held in the reorder buffer", ["partition"],
    registry=REGISTRY)
WATERMARK = Gauge(
    "flapguard_watermark_timestamp_seconds", "Watermark of a keyed partition (event time: "
    "the highest UpdatedAt of Security Hub findings, other products' less the future "
    "tolerance)", ["partition"], registry=REGISTRY)
LATE = Counter(
    "flapguard_late_events", "Findings that arrived after the watermark had passed their "
    "UpdatedAt + hold: decided on arrival, not reordered", ["partition"], registry=REGISTRY)
LAST_RECEIVED = Gauge(
    "flapguard_last_finding_received_timestamp_seconds", "Wall-clock time a keyed partition "
    "last received a finding", ["partition"], registry=REGISTRY)
STATE_ENTRIES = Gauge(
    "flapguard_state_entries", "Entries in this worker's state tables (active partitions)",
    ["table"], registry=REGISTRY)
UNSTABLE = Gauge(
    "flapguard_source_unstable_offsets", "Offsets of a findings partition past its last stable "
    "offset: records of a transaction still open, not read until it commits or aborts",
    ["partition"], registry=REGISTRY)
ASSIGNED = Gauge(
    "flapguard_assigned_partitions", "Keyed partitions this worker decides", registry=REGISTRY)
BUILD_INFO = Gauge(
    "flapguard_build_info", "Always 1; the version as a label", ["version"], registry=REGISTRY)
BUILD_INFO.labels(version=__version__).set(1)


# Counters start at 0 for every label set known up front: Prometheus sees the first
# event of a kind as an increase (a series born at 1 shows none to `increase()`).
_DECISION_REASONS: dict[Decision, tuple[str, ...]] = {
    Decision.ALERT: tuple(k.value for k in AlertKind if k is not AlertKind.RESOLVED),
    Decision.RESOLVED: (AlertKind.RESOLVED.value,),
    Decision.SUPPRESSED: tuple(r.value for r in SUPPRESSION_REASONS),
    Decision.SILENT: tuple(r.value for r in Reason
                           if r not in SUPPRESSION_REASONS and r is not Reason.LATE_PAIR),
}
# Dead-letter reasons without a field name; `missing_field:X` and the like start at 1.
DEAD_LETTER_REASONS = ("unparseable", "not_a_finding", "malformed_envelope", "empty_envelope",
                       "too_many_findings", "oversized", "future_timestamp", "bad_timestamps",
                       "bad_keyed_record")
for _decision, _reasons in _DECISION_REASONS.items():
    for _reason in _reasons:
        DECISIONS.labels(decision=_decision.value, reason=_reason)
for _reason in DEAD_LETTER_REASONS:
    DEAD_LETTERS.labels(reason=_reason)
    DECISIONS.labels(decision=Decision.DEAD_LETTER.value, reason=_reason)
for _stage in ("ingest", "decide"):
    PROCESSING.labels(stage=_stage)

_CONTROL = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,31}\.[0-9]{1,4}[a-z]?$")
_ACCOUNT = re.compile(r"^[0-9]{12}$")
_REASON = re.compile(r"^[a-z_]{1,40}(:[A-Za-z0-9_.]{1,60})?$")


class BoundedLabel:
    """Admits values matching `pattern` until `limit` distinct ones are seen; the rest
    become `other` (a forged feed must not explode the series count)."""

    def __init__(self, pattern: re.Pattern[str], limit: int = MAX_LABEL_VALUES) -> None:
        self.pattern = pattern
        self.limit = limit
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value or not self.pattern.match(value):
            return OTHER
        if value in self.seen:
            return value
        with self._lock:
            if len(self.seen) >= self.limit:
                return OTHER
            self.seen.add(value)
        return value


control_label = BoundedLabel(_CONTROL)
account_label = BoundedLabel(_ACCOUNT)
reason_label = BoundedLabel(_REASON)


def control_of(finding: Finding | None) -> str:
    """The security control id (`RDS.45`), also from a per-standard GeneratorId
    (`aws-foundational-security-best-practices/v/1.0.0/RDS.45`); else `other`."""
    if finding is None:
        return OTHER
    return control_label(finding.control_id.rsplit("/", 1)[-1])


@dataclass
class _Options:
    account_label: bool = False


OPTIONS = _Options()


# -- called by the worker ----------------------------------------------------------------


def consumed(item: Finding | Rejected) -> None:
    """A finding occurrence read from the findings topic (a rejected one is counted
    as a dead letter by `dead_lettered` as well)."""
    consumed_all([item])


def consumed_all(items: Sequence[Finding | Rejected]) -> None:
    """`consumed` for every occurrence of one record, counted together."""
    FINDINGS_CONSUMED.inc(len(items))
    now = time.time()
    observe_all(EVENT_TIME_LAG, [max(0.0, now - item.updated_at / 1000) for item in items
                                 if isinstance(item, Finding)])
    if OPTIONS.account_label:
        for item in items:
            if isinstance(item, Finding):
                # Bounded: past `MAX_LABEL_VALUES` accounts (or a malformed one), `other`.
                ACCOUNTS_LAST_SEEN.seen[account_label(item.account)] = now


class AccountsLastSeen:
    """`flapguard_account_last_finding_timestamp_seconds{account}`: when the worker last
    read a finding of each account (wall clock), so that one account out of hundreds
    going silent shows (alert rule FlapguardAccountSilent). Only with the account
    label; a dictionary write per finding, the gauge built when scraped."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "flapguard_account_last_finding_timestamp_seconds",
            "When a finding of the account was last read (only with --metrics-account-label)",
            labels=["account"])
        for account, seen in list(self.seen.items()):
            family.add_metric([account], seen)
        yield family


ACCOUNTS_LAST_SEEN = AccountsLastSeen()
REGISTRY.register(ACCOUNTS_LAST_SEEN)


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for each value, with one increment per bucket and one of
    the sum: the worker observes every finding, and `observe` costs microseconds."""
    if not values:
        return
    # prometheus_client's own fields: `observe` puts a value in the first bucket whose
    # upper bound is at least the value, as `bisect_left` finds it.
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(sum(values))


def dead_lettered(reason: str) -> None:
    """A record (or one finding of it) sent to the dead-letter topic; also a decision."""
    label = reason_label(reason)
    DEAD_LETTERS.labels(reason=label).inc()
    DECISIONS.labels(decision=Decision.DEAD_LETTER.value, reason=label).inc()


def unstable_offsets(partition: int, count: int) -> None:
    UNSTABLE.labels(partition=str(partition)).set(count)


def refused(topic: str) -> None:
    """A record refused as too large for its topic, and skipped."""
    REFUSED.labels(topic=topic).inc()


def decided(outcome: Outcome) -> None:
    """One decision of the worker and the records it wrote."""
    decided_all([outcome])


def decided_all(outcomes: Iterable[Outcome]) -> None:
    """`decided` for a batch of decisions: the decision counters are incremented once
    per decision and reason, the rarer series per decision."""
    tally: dict[tuple[str, str], int] = {}
    by_account = OPTIONS.account_label
    for outcome in outcomes:
        label = (outcome.decision.value, outcome.kind_or_reason or "none")
        tally[label] = tally.get(label, 0) + 1
        f = outcome.finding
        if by_account and f is not None:
            _child(DECISIONS_BY_ACCOUNT, account_label(f.account), label[0]).inc()
        if outcome.decision in (Decision.ALERT, Decision.RESOLVED) and f is not None:
            _child(ALERTS, outcome.kind_or_reason or OTHER, f.severity.name, control_of(f)).inc()
        if outcome.pairing is not None:
            reason = outcome.pairing.reason.value
            _child(SUPPRESSIONS, reason, control_of(f)).inc()
            _gap(reason, outcome.pairing.gap_seconds)
        for pairing in outcome.late_pairs:
            _child(LATE_PAIRS, control_of(f)).inc()
            _gap(pairing.reason.value, pairing.gap_seconds)
        for closure in outcome.closes:
            _child(CLOSED, closure.reason.value).inc()
            shown = closure.finding
            if shown is not None:
                _child(ALERTS, Decision.RESOLVED.value, shown.severity.name, control_of(shown)).inc()
    for (decision, reason), count in tally.items():
        _child(DECISIONS, decision, reason_label(reason)).inc(count)


@functools.lru_cache(maxsize=8192)
def _child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, remembered: `labels()` costs microseconds per call, and
    bounded labels keep this cache small."""
    return metric.labels(*values)


def _gap(reason: str, gap_s: float | None) -> None:
    if gap_s is not None:
        _child(RECREATE_GAP, reason).observe(abs(gap_s))


def processed(stage: str, started: float) -> None:
    """One record of `stage` done; `started` from `time.perf_counter()`."""
    _child(PROCESSING, stage).observe(time.perf_counter() - started)


def partition_done(engine: PartitionEngine, started: float, *, received: bool) -> None:
    """One keyed record decided and persisted (`received`: it held a finding, not an
    idle tick): latency, the reorder buffer and the clocks of its partition."""
    _child(PROCESSING, "decide").observe(time.perf_counter() - started)
    partition_state(engine, received=received)


def partition_state(engine: PartitionEngine, *, received: bool) -> None:
    """The reorder buffer and the clocks of a partition whose engine took a record."""
    label = str(engine.p)
    _child(PENDING_HOLDS, label).set(engine.pending)
    if engine.watermark is not None:
        _child(WATERMARK, label).set(engine.watermark / 1000)
    if engine.late:
        _child(LATE, label).inc(engine.late)
        engine.late = 0
    if received:
        _child(LAST_RECEIVED, label).set(time.time())


def state_sizes(sizes: dict[str, int], partitions: Iterable[int]) -> None:
    """Table sizes, and forget the gauges of partitions this worker no longer owns
    (after a rebalance another worker reports them)."""
    for table, size in sizes.items():
        STATE_ENTRIES.labels(table=table).set(size)
    owned = {str(p) for p in partitions}
    ASSIGNED.set(len(owned))
    for gauge in (PENDING_HOLDS, WATERMARK, LAST_RECEIVED):
        for (label,) in _label_values(gauge):
            if label not in owned:
                gauge.remove(label)
                _child.cache_clear()  # it may hold the removed child


def _label_values(metric: Any) -> list[tuple[str, ...]]:
    # prometheus_client keeps its children in `_metrics`; it has no public listing.
    return list(metric._metrics.keys())


# -- the endpoint --------------------------------------------------------------------------


class MetricsError(ConfigError):
    """A metrics address that cannot be served; one line for the user."""


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9464` for IPv6) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise MetricsError(f"metrics address must be host:port, got {text!r}")
    return host, int(port)


def serve(address: str, registry: CollectorRegistry = REGISTRY) -> Any:
    """Serve `registry` (the worker's by default) on http://address/metrics in a daemon
    thread."""
    host, port = parse_address(address)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
    return server


def instrument_faust(app: Any) -> None:
    """Faust's Prometheus sensor, into this registry, named `flapguard_faust_*`
    whatever the app id (dashboards must not depend on it)."""
    from faust.sensors.prometheus import setup_prometheus_sensors

    setup_prometheus_sensors(app, registry=REGISTRY, name_prefix="flapguard_faust")


STATE_REFRESH_S = 5.0


def start(worker: Any) -> None:
    """Configure, then serve the worker's metrics unless its settings say no address.
    Before the Faust app starts: it adds Faust's sensor and a timer to the app."""
    settings = worker.settings
    OPTIONS.account_label = settings.metrics_account_label
    if settings.metrics_address is None:
        return
    server = serve(settings.metrics_address)
    host, port = server.server_address[:2]
    log.info("metrics on http://%s:%s/metrics", host, port)
    instrument_faust(worker.app)

    async def refresh_state() -> None:
        keyed = worker.keyed.get_topic_name()
        assigned = [tp.partition for tp in worker.app.assignor.assigned_actives()
                    if tp.topic == keyed]
        state_sizes({name: table_size(m.table) for name, m in worker.tables.items()}, assigned)

    worker.app.timer(STATE_REFRESH_S)(refresh_state)


def table_size(table: Any) -> int:
    """Entries of a Faust table's active partitions. A memory store knows its size; a
    RocksDB store would iterate every key, so its own estimate is used instead."""
    data = table.data
    dbs = getattr(data, "_dbs_for_actives", None)
    if dbs is None:
        return len(data)
    total = 0
    for db in dbs():
        try:
            total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        except Exception:  # another RocksDB binding: no estimate, no full scan either
            return -1
    return total
