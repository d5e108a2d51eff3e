"""Prometheus metrics of `flapguard notify` (`flapguard_notify_*`).

A registry of its own: the notifier's /metrics shows what the notifier does, not the
worker's counters at zero. Labels are bounded: sinks, outcomes, alert kinds and
severities come from fixed sets (anything else is `other`); webhook URLs, routing keys,
topic names and finding ids never become labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from streams.core.policy import Severity
from streams.notify.sinks import Alert, Kind

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

OTHER = "other"
# Delivery sinks, and the two "sinks" a dead letter can also name: a record that is not
# an alert (`parse`) and the Security Hub write-back.
SINKS = ("stdout", "slack", "pagerduty", "sns", "securityhub", "parse")
DELIVERY_SINKS = SINKS[:4]
# One final outcome per (alert, sink): first attempt, after retries, or given up.
OUTCOMES = ("delivered", "retried", "dead_lettered")
# From a fast stdout write to a Slack queue at 1/s behind retries with Retry-After.
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

ALERTS_CONSUMED = Counter(
    "flapguard_notify_alerts_consumed", "Alerts-topic records read, by alert kind and severity "
    "(`other`: not an alert, dead-lettered)", ["kind", "severity"], registry=REGISTRY)
DELIVERIES = Counter(
    "flapguard_notify_deliveries", "Alert deliveries to one sink, by final outcome: delivered "
    "at the first attempt, delivered after retries (retried), or dead-lettered",
    ["sink", "outcome"], registry=REGISTRY)
ATTEMPTS = Counter(
    "flapguard_notify_delivery_attempts", "Delivery attempts (HTTP requests, SNS publishes, "
    "stdout writes), retries included", ["sink"], registry=REGISTRY)
DELIVERY_SECONDS = Histogram(
    "flapguard_notify_delivery_seconds", "From the first attempt to the final outcome of one "
    "alert's delivery to one sink (rate limiting and retry pauses included)", ["sink"],
    buckets=DELIVERY_BUCKETS, registry=REGISTRY)
DEAD_LETTERS = Counter(
    "flapguard_notify_dead_letters", "Records written to the notification dead-letter topic, by "
    "the sink that failed", ["sink"], registry=REGISTRY)
WRITTEN_BACK = Counter(
    "flapguard_notify_written_back", "Findings set to NOTIFIED in Security Hub (--write-back)",
    registry=REGISTRY)
# From seconds (a page) to hours (a Slack backlog at one message a second).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
ALERT_LATENCY = Histogram(
    "flapguard_notify_alert_latency_seconds", "From the alert record's Kafka timestamp (when the "
    "worker wrote it) to its delivery to one sink: queueing behind the sink's backlog, rate "
    "limiting and retries included", ["sink"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
BACKLOG = Gauge(
    "flapguard_notify_backlog", "Alerts-topic records a sink has not yet delivered or "
    "dead-lettered, on the partitions this notifier holds: those not handled yet, and those "
    "held in groups (`securityhub`: the write-back)", ["sink"], registry=REGISTRY)
LAST_COMMIT = Gauge(
    "flapguard_notify_last_commit_timestamp_seconds", "Wall-clock time the notifier last "
    "committed a delivered batch", registry=REGISTRY)

# Counters start at 0 (a series born at 1 shows no `increase()` for its first event).
for _kind in dict.fromkeys([*(k.value for k in Kind), OTHER]):
    for _severity in [*(s.name for s in Severity), OTHER]:
        ALERTS_CONSUMED.labels(kind=_kind, severity=_severity)
for _sink in DELIVERY_SINKS:
    ALERT_LATENCY.labels(sink=_sink)
    ATTEMPTS.labels(sink=_sink)
    DELIVERY_SECONDS.labels(sink=_sink)
    for _outcome in OUTCOMES:
        DELIVERIES.labels(sink=_sink, outcome=_outcome)
for _sink in SINKS:
    DEAD_LETTERS.labels(sink=_sink)


def sink_label(name: str) -> str:
    return name if name in SINKS else OTHER


def consumed(alert: Alert | None) -> None:
    """One alerts-topic record; None when it is not an alert."""
    if alert is None:
        ALERTS_CONSUMED.labels(kind=OTHER, severity=OTHER).inc()
    else:
        ALERTS_CONSUMED.labels(kind=alert.kind.value, severity=alert.severity.name).inc()


def attempted(sink: str) -> None:
    ATTEMPTS.labels(sink=sink_label(sink)).inc()


def delivery_done(sink: str, *, delivered: bool, attempts: int, seconds: float) -> None:
    """The final outcome of one alert's delivery to `sink`."""
    outcome = "dead_lettered" if not delivered else "delivered" if attempts <= 1 else "retried"
    label = sink_label(sink)
    DELIVERIES.labels(sink=label, outcome=outcome).inc()
    DELIVERY_SECONDS.labels(sink=label).observe(seconds)


def dead_lettered(sink: str) -> None:
    DEAD_LETTERS.labels(sink=sink_label(sink)).inc()


def written_back(count: int) -> None:
    WRITTEN_BACK.inc(count)


def committed(now: float) -> None:
    LAST_COMMIT.set(now)


def alert_delivered(sink: str, seconds: float) -> None:
    """An alert reached `sink`, `seconds` after the worker wrote it."""
    ALERT_LATENCY.labels(sink=sink_label(sink)).observe(max(0.0, seconds))


def backlog(sink: str, records: int) -> None:
    BACKLOG.labels(sink=sink_label(sink)).set(records)


HELD = Gauge(
    "flapguard_notify_held_alerts", "Alerts a sink holds in groups, waiting for group_wait or "
    "group_interval (not committed until their group's message is sent)", ["sink"], registry=REGISTRY)
GROUPED_MESSAGES = Counter(
    "flapguard_notify_grouped_messages", "Messages that listed a group of alerts (each alert is "
    "also counted in deliveries_total)", ["sink"], registry=REGISTRY)
for _sink in DELIVERY_SINKS:
    GROUPED_MESSAGES.labels(sink=_sink)
for _sink in (*DELIVERY_SINKS, "securityhub"):  # every lane's, for the backlog alert rule
    HELD.labels(sink=_sink)


def held(sink: str, alerts: int) -> None:
    HELD.labels(sink=sink_label(sink)).set(alerts)


def grouped_message(sink: str) -> None:
    GROUPED_MESSAGES.labels(sink=sink_label(sink)).inc()
