"""`flapguard notify`: deliver the alerts topic to Slack, PagerDuty, SNS and stdout.

Each sink drains on its own: a lane per sink (and one for the Security Hub write-back),
each with its own consumer group `<group-id>.<sink>`, whose committed offsets are exactly
what that sink delivered or dead-lettered, and whose lag is that sink's backlog. A slow
or failing sink holds back only itself. Within a lane a partition's records go in order,
one at a time; records that fail for good go to the notification dead-letter topic with
the error in headers before their offsets are committed.

At least once: a notifier killed (SIGKILL) re-delivers what it had not committed, at
most about a second's deliveries per sink; a repeat carries the same `dedup_key`
(PagerDuty folds it into the same incident). Asked to stop (SIGTERM, SIGINT), it starts
nothing new, gives an attempt already in flight a few seconds, abandons rate-limit
waits and retry pauses, and commits exactly what was delivered or dead-lettered.

Secrets (webhook URLs, routing keys) never reach a log line, an error or a header:
errors are written from status codes and exception types, and the secret values are
scrubbed from anything else that is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

import orjson

from streams.config import ConfigError
from streams.core.records import HEADER_REASON
from streams.kafka.producer import ProducerSettings
from streams.kafka.security import BrokerSecurity
from streams.kafka.topics import create_topics
from streams.notify import metrics as notify_metrics
from streams.notify.deliveries import Origin, Outcome, delivery_record
from streams.notify.grouping import GROUPED_SINKS, GroupKey, Groups, group_key
from streams.notify.ledger import METADATA_LIMIT, CommitPoint, Ledger
from streams.notify.routing import Routes
from streams.notify.sinks import (
    Alert,
    AlertError,
    Kind,
    pagerduty_event,
    parse_alert,
    slack_group_message,
    slack_message,
    sns_group_message,
    sns_message,
    stdout_line,
)
from streams.notify.writeback import (
    WriteBackError,
    WriteBackItem,
    alerted_item,
    id_filters,
    predecessor_ids,
    suppressed_item,
    update_requests,
)

log = logging.getLogger("flapguard.notify")

HEADER_SINK = "flapguard-sink"
HEADER_ERROR = "flapguard-error"
HEADER_ATTEMPTS = "flapguard-attempts"
HEADER_ORIGIN = "flapguard-origin"
DEADLETTER_REASON = b"notify_failed"
# Longest honoured Retry-After: a broken or hostile endpoint must not park the notifier.
RETRY_AFTER_CAP_S = 900.0

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """`1/s`, `20/s`, `30/m` -> messages per second."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"not a rate: {text!r} (write it like 1/s or 30/m)")
    return float(match.group(1)) / _PER[match.group(2)]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Full jitter on an exponential ceiling; never sooner than the server asked."""
        ceiling = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        jittered = rng.uniform(ceiling / 2, ceiling)
        if retry_after is None:
            return jittered
        return max(min(retry_after, RETRY_AFTER_CAP_S), jittered)


class DeliveryError(Exception):
    """One failed attempt. The message never contains a secret."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After`: seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def http_error(status: int, retry_after: str | None) -> DeliveryError | None:
    if 200 <= status < 300:
        return None
    retryable = status in (408, 425, 429) or status >= 500
    return DeliveryError(f"HTTP {status}", retryable=retryable,
                         retry_after=retry_after_seconds(retry_after))


class Sender(Protocol):
    name: str
    # Waited on before each attempt (nothing is sent while waiting); None: no limit.
    limiter: RateLimiter | None

    async def send(self, alert: Alert) -> None: ...

    async def send_group(self, labels: str, alerts: list[Alert]) -> None:
        """One message listing `alerts` (a group that `labels` describes)."""


# ------------------------------------------------------------------------ stopping

# How long an attempt already in flight when the notifier is asked to stop may still take:
# it may have reached the sink, so it is waited for (briefly) rather than abandoned.
STOP_GRACE_S = 5.0

T = TypeVar("T")


class Interrupted(Exception):
    """Asked to stop before a delivery had an outcome: it is neither committed nor
    dead-lettered, and a restarted notifier delivers it."""


async def pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep, unless asked to stop first (then Interrupted)."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
    raise Interrupted


async def finish_or_stop(work: Awaitable[T], stop: asyncio.Event | None,
                         grace_s: float = STOP_GRACE_S) -> T:
    """`work`'s result; once asked to stop, `work` gets `grace_s` more, then Interrupted."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace_s)
        if task.done():
            return task.result()
        raise Interrupted
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class RateLimiter:
    """At most `rate` sends per second, first come first served (asyncio.Lock is FIFO):
    alerts queue here, none is dropped. A 429 pushes the next slot back for everyone."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = 0.0
        self.lock = asyncio.Lock()

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Wait for this sender's next slot (Interrupted, slot unused, when asked to stop)."""
        async with self.lock:
            now = time.monotonic()
            if self.next_at > now:
                await pause(self.next_at - now, stop)
            self.next_at = max(time.monotonic(), self.next_at) + self.interval

    def defer(self, seconds: float) -> None:
        self.next_at = max(self.next_at, time.monotonic() + seconds)


class HttpSender:
    """POST a JSON body; 2xx is delivered. `secret` is scrubbed from every error."""

    def __init__(self, name: str, url: str, session: Any, timeout_s: float,
                 limiter: RateLimiter | None = None, secrets: Sequence[str] = ()) -> None:
        self.name = name
        self.url = url
        self.session = session
        self.timeout_s = timeout_s
        self.limiter = limiter
        self.secrets = [s for s in (url, *secrets) if s]

    def body(self, alert: Alert) -> dict[str, Any]:
        raise NotImplementedError

    def group_body(self, labels: str, alerts: list[Alert]) -> dict[str, Any]:
        raise NotImplementedError(f"{self.name} messages are never grouped")

    async def send(self, alert: Alert) -> None:
        await self.post(self.body(alert))

    async def send_group(self, labels: str, alerts: list[Alert]) -> None:
        await self.post(self.group_body(labels, alerts))

    async def post(self, body: dict[str, Any]) -> None:
        import aiohttp

        payload = orjson.dumps(body)
        try:
            async with self.session.post(
                self.url, data=payload, headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), allow_redirects=False,
            ) as response:
                await response.read()
                error = http_error(response.status, response.headers.get("Retry-After"))
        except TimeoutError:
            raise DeliveryError(f"timed out after {self.timeout_s:g}s", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(scrub(f"{type(exc).__name__}: {exc}", self.secrets),
                                retryable=True) from None
        if error is not None:
            if error.retry_after is not None and self.limiter is not None:
                self.limiter.defer(error.retry_after)
            raise error


class SlackSender(HttpSender):
    def body(self, alert: Alert) -> dict[str, Any]:
        return slack_message(alert)

    def group_body(self, labels: str, alerts: list[Alert]) -> dict[str, Any]:
        return slack_group_message(labels, alerts)


class PagerDutySender(HttpSender):
    def __init__(self, url: str, routing_key: str, session: Any, timeout_s: float) -> None:
        super().__init__("pagerduty", url, session, timeout_s, secrets=[routing_key])
        self.routing_key = routing_key

    def body(self, alert: Alert) -> dict[str, Any]:
        return pagerduty_event(alert, self.routing_key)


class SnsSender:
    name = "sns"
    limiter: RateLimiter | None = None

    def __init__(self, topic_arn: str, client: Any) -> None:
        self.topic_arn = topic_arn
        self.client = client

    async def send(self, alert: Alert) -> None:
        await self.publish(sns_message(alert))

    async def send_group(self, labels: str, alerts: list[Alert]) -> None:
        await self.publish(sns_group_message(labels, alerts))

    async def publish(self, message: Any) -> None:
        try:
            await asyncio.to_thread(
                self.client.publish, TopicArn=self.topic_arn, Subject=message.subject,
                Message=message.message, MessageAttributes=message.attributes,
            )
        except Exception as exc:
            raise aws_error(exc) from None


class StdoutSender:
    name = "stdout"
    limiter: RateLimiter | None = None

    async def send(self, alert: Alert) -> None:
        sys.stdout.buffer.write(stdout_line(alert))
        sys.stdout.buffer.flush()

    async def send_group(self, labels: str, alerts: list[Alert]) -> None:
        for alert in alerts:  # never grouped: one line per alert
            await self.send(alert)


def aws_error(exc: Exception) -> DeliveryError:
    """botocore errors: throttling, 5xx and connection trouble are worth a retry."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(error.get("Code", "?"))
        retryable = status >= 500 or status == 429 or "Throttl" in code or code in (
            "RequestLimitExceeded", "TooManyRequestsException", "LimitExceededException")
        return DeliveryError(f"{code} (HTTP {status}): {str(error.get('Message', ''))[:300]}",
                             retryable=retryable)
    if isinstance(exc, BotoCoreError):
        return DeliveryError(type(exc).__name__, retryable=True)
    return DeliveryError(f"{type(exc).__name__}: {str(exc)[:300]}", retryable=False)


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


async def with_retries(
    attempt_once: Callable[[], Awaitable[None]], policy: RetryPolicy, rng: random.Random, what: str,
    stop: asyncio.Event | None = None,
) -> tuple[str | None, int]:
    """None when delivered, else the last error; and the attempts made. Interrupted when
    asked to stop during a pause between attempts."""
    for attempt in range(1, policy.attempts + 1):
        try:
            await attempt_once()
            return None, attempt
        except DeliveryError as exc:
            if not exc.retryable or attempt == policy.attempts:
                log.warning("%s failed for good after %d attempt(s): %s", what, attempt, exc)
                return str(exc), attempt
            delay = policy.delay(attempt, exc.retry_after, rng)
            log.info("%s failed (attempt %d/%d, retry in %.2fs): %s",
                     what, attempt, policy.attempts, delay, exc)
            await pause(delay, stop)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------- the loop

@dataclass(frozen=True, slots=True)
class NotifySettings:
    bootstrap_servers: str
    security: BrokerSecurity = field(default_factory=BrokerSecurity)
    writes: ProducerSettings = field(default_factory=ProducerSettings)
    alerts_topic: str = "securityhub.alerts"
    suppressed_topic: str = "securityhub.suppressed"
    deadletter_topic: str = "securityhub.notify-deadletter"
    group_id: str = "flapguard-notify"
    routes: Routes = field(default_factory=Routes)
    stdout: bool = False
    slack_webhook_url: str | None = None
    slack_rate: float = 1.0
    pagerduty_routing_key: str | None = None
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    sns_topic_arn: str | None = None
    # Where each delivery is recorded, for `flapguard explain` (None: nowhere).
    deliveries_topic: str | None = "securityhub.deliveries"
    write_back: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    http_timeout_s: float = 10.0
    batch_size: int = 100
    exit_when_idle: bool = False
    session_timeout_ms: int = 10_000

    def configured_sinks(self) -> list[str]:
        sinks = []
        if self.stdout:
            sinks.append("stdout")
        if self.slack_webhook_url:
            sinks.append("slack")
        if self.pagerduty_routing_key:
            sinks.append("pagerduty")
        if self.sns_topic_arn:
            sinks.append("sns")
        return sinks

    def lane_group(self, lane: str) -> str:
        """The consumer group of one sink: its committed offsets are that sink's progress."""
        return f"{self.group_id}.{lane}"


@dataclass(slots=True)
class Failure:
    """A record that goes to the notification dead-letter topic."""

    record: Any
    sink: str
    error: str
    attempts: int


@dataclass(slots=True)
class Counts:
    records: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    written_back: int = 0
    dead_lettered_by_sink: dict[str, int] = field(default_factory=dict)


def deadletter_headers(failure: Failure) -> list[tuple[str, bytes]]:
    r = failure.record
    return [
        (HEADER_REASON, DEADLETTER_REASON),
        (HEADER_SINK, failure.sink.encode()),
        (HEADER_ERROR, failure.error[:1000].encode()),
        (HEADER_ATTEMPTS, str(failure.attempts).encode()),
        (HEADER_ORIGIN, origin_of(r).text().encode()),
    ]


# A batch of fetched records by partition (aiokafka's TopicPartition, or any key), and
# where a lane writes what it gives up on (acknowledged before the lane reports it done).
Batch = dict[Any, list[Any]]
DeadLetter = Callable[[list[Failure]], Awaitable[None]]


@dataclass(slots=True)
class BatchProgress:
    """How far a lane got with a batch, read while it runs: per partition, the offset after
    the last record delivered or dead-lettered (what may be committed); and the partitions
    revoked meanwhile, which another member delivers now (the lane stops on them)."""

    done: dict[Any, int] = field(default_factory=dict)
    revoked: set[Any] = field(default_factory=set)


class Lane(Protocol):
    """One sink's share of the work: what it reads, and how it delivers a batch. Its progress
    is, per partition, the offset after the last record it delivered or dead-lettered:
    exactly what may be committed."""

    name: str
    topics: list[str]
    # Per partition, what is finished and what is held: what may be committed.
    ledger: Ledger[Any]
    # Send every held group now, due or not (caught up with --exit-when-idle).
    flush_everything: bool

    async def deliver(self, batch: Batch, dead_letter: DeadLetter, progress: BatchProgress) -> None:
        """Deliver `batch`, moving `progress.done` and the ledger as each record is
        delivered, dead-lettered or held (progress is committed as it is made)."""

    async def run_groups(self, dead_letter: DeadLetter) -> None:
        """Send held groups as they fall due, until asked to stop (returns at once for a
        lane that never holds)."""

    def holding(self) -> bool:
        """Whether alerts are held (not sent, not committed)."""

    def drop(self, revoked: set[Any]) -> None:
        """Forget what is held of partitions revoked from this member."""


# Where a lane writes its delivery records (acknowledged before it reports them done).
RecordDeliveries = Callable[[list[dict[str, Any]]], Awaitable[None]]


async def no_records(records: list[dict[str, Any]]) -> None:
    return None


async def no_wait() -> None:
    return None


@dataclass(slots=True)
class LaneContext:
    """What every lane of one notifier shares."""

    settings: NotifySettings
    counts: Counts
    rng: random.Random
    stop: asyncio.Event | None
    configured: list[str]
    record: RecordDeliveries = no_records

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()


@dataclass(frozen=True, slots=True)
class Held:
    """An alert held in a group: its record (and partition), and the route that grouped it."""

    tp: Any
    record: Any
    alert: Alert
    route: str


# How often a lane holding groups looks for a group that is due.
GROUP_TICK_S = 0.1
# The most alerts one lane holds: beyond, the group holding the oldest goes out at once
# (memory, and the commit that has to say which held records it leaves uncommitted).
HELD_LIMIT = 10_000


def origin_of(record: Any) -> Origin:
    return Origin(record.topic, record.partition, record.offset)


def now_ms() -> int:
    return int(time.time() * 1000)


def _is_at(tp: Any, offset: int, held: Held) -> bool:
    return bool(held.tp == tp and held.record.offset == offset)


class SinkLane:
    """Delivers to one sink. A partition's records go in order, one at a time (a `resolved`
    never overtakes its trigger, and a stop leaves nothing delivered beyond what is
    committed); partitions go side by side. The primary lane also counts the records and
    dead-letters those that are not alerts (once, whichever sinks there are).

    An alert its route groups (Slack, SNS) is held in its group instead, and `run_groups`
    sends each group's message when it is due; the ledger keeps a held alert's offset
    uncommitted until then."""

    def __init__(self, sender: Sender, context: LaneContext, *, primary: bool) -> None:
        self.sender = sender
        self.name = sender.name
        self.context = context
        self.primary = primary
        self.topics = [context.settings.alerts_topic]
        self.ledger: Ledger[Any] = Ledger()
        self.groups: Groups[Held] = Groups()
        # Send every held group now, due or not (caught up with --exit-when-idle).
        self.flush_everything = False

    async def deliver(self, batch: Batch, dead_letter: DeadLetter, progress: BatchProgress) -> None:
        async def partition(key: Any, records: list[Any]) -> None:
            for record in records:
                if self.context.stopping() or key in progress.revoked:
                    return
                if self.ledger.finished_before(key, record.offset):
                    # Finished before a restart (or a rebalance), after a record still held then.
                    self.ledger.handled(key, record.offset)
                    progress.done[key] = record.offset + 1
                    continue
                try:
                    failures, held = await self.deliver_one(key, record)
                except Interrupted:
                    return
                if failures:
                    await dead_letter(failures)
                if not held:
                    self.ledger.handled(key, record.offset)
                progress.done[key] = record.offset + 1

        await asyncio.gather(*(partition(key, records) for key, records in batch.items() if records))

    async def deliver_one(self, key: Any, record: Any) -> tuple[list[Failure], bool]:
        """What failed for good, and whether the alert is held in a group."""
        try:
            alert = parse_alert(record.value or b"")
        except AlertError as exc:
            if not self.primary:
                return [], False
            self.context.counts.records += 1
            notify_metrics.consumed(None)
            return [Failure(record, "parse", str(exc), 0)], False
        if self.primary:
            self.context.counts.records += 1
            notify_metrics.consumed(alert)
        routes = self.context.settings.routes
        delivery = next((d for d in routes.deliveries_for(alert, self.context.configured)
                         if d.sink == self.name), None)
        if delivery is None:
            why = ("notify_resolved is off for its route" if alert.resolved
                   and self._routed_unless_resolved(alert) else "not routed to this sink")
            await self.context.record([delivery_record(
                self.name, Outcome.SKIPPED, alert, origin_of(record), now_ms(), why=why)])
            return [], False
        if delivery.grouping is not None:
            self.groups.add(group_key(delivery.route, delivery.grouping, alert), delivery.grouping,
                            Held(key, record, alert, delivery.route), time.monotonic())
            self.ledger.hold(key, record.offset)
            notify_metrics.held(self.name, self.groups.held())
            return [], True
        error, attempts = await self._send(alert)
        if error is not None:
            await self.context.record([delivery_record(
                self.name, Outcome.DEAD_LETTERED, alert, origin_of(record), now_ms(),
                route=delivery.route, error=error, attempts=attempts)])
            return [Failure(record, self.name, error, attempts)], False
        self.context.counts.delivered += 1
        # From the alert record's Kafka timestamp (when the worker wrote it) to delivery.
        notify_metrics.alert_delivered(self.name, time.time() - record.timestamp / 1000)
        await self.context.record([delivery_record(
            self.name, Outcome.DELIVERED, alert, origin_of(record), now_ms(), route=delivery.route,
            attempts=attempts)])
        return [], False

    def _routed_unless_resolved(self, alert: Alert) -> bool:
        """Whether a `resolved` alert would reach this sink but for `notify_resolved`."""
        from dataclasses import replace

        trigger = replace(alert, kind=Kind.NEW, kind_name="new", reason_name="")
        return any(d.sink == self.name for d in self.context.settings.routes.deliveries_for(
            trigger, self.context.configured))

    async def _send(self, alert: Alert) -> tuple[str | None, int]:
        return await self._attempts(functools.partial(self.sender.send, alert), 1,
                                    f"{self.sender.name} delivery of {alert.dedup_key}")

    async def _attempts(self, send: Callable[[], Awaitable[None]], alerts: int,
                        what: str) -> tuple[str | None, int]:
        sender, stop = self.sender, self.context.stop

        async def attempt() -> None:
            if sender.limiter is not None:
                await sender.limiter.wait(stop)
            notify_metrics.attempted(sender.name)
            await finish_or_stop(send(), stop)

        started = time.monotonic()
        error, attempts = await with_retries(attempt, self.context.settings.retry, self.context.rng,
                                             what, stop)
        for _ in range(alerts):
            notify_metrics.delivery_done(sender.name, delivered=error is None, attempts=attempts,
                                         seconds=time.monotonic() - started)
        return error, attempts

    # -- groups

    def holding(self) -> bool:
        return self.ledger.held() > 0

    def drop(self, revoked: set[Any]) -> None:
        """Forget what is held of partitions another member delivers now."""
        self.groups.drop(lambda held: held.tp in revoked)
        notify_metrics.held(self.name, self.groups.held())

    async def run_groups(self, dead_letter: DeadLetter) -> None:
        """Send each group's message when it is due, until asked to stop. A stop leaves
        what is held (and a message cut short) uncommitted: the next notifier sends it."""
        if self.name not in GROUPED_SINKS or not self.context.settings.routes.groups_any():
            return  # never holds anything
        while not self.context.stopping():
            now = time.monotonic()
            due = self.groups.take_all(now) if self.flush_everything else self.groups.take_due(now)
            due += self._overdue(now)
            for key, members in due:
                try:
                    failures = await self.send_group(key, members)
                except Interrupted:
                    return
                if failures:
                    await dead_letter(failures)
                for held in members:
                    self.ledger.release(held.tp, held.record.offset)
                notify_metrics.held(self.name, self.groups.held())
            try:
                await pause(GROUP_TICK_S, self.context.stop)
            except Interrupted:
                return

    def _overdue(self, now: float) -> list[tuple[GroupKey, list[Held]]]:
        """Groups that must go out before they are due: the one holding a partition's
        oldest record when the commit could no longer say what is held beyond it, or when
        the lane holds too much."""
        out: list[tuple[GroupKey, list[Held]]] = []
        for tp in list(self.ledger.parts):
            point = self.ledger.point(tp)
            oldest = self.ledger.oldest_held(tp)
            if point is None or oldest is None:
                continue
            if len(point.metadata) > METADATA_LIMIT or self.groups.held() > HELD_LIMIT:
                out += self.groups.take_holding(functools.partial(_is_at, tp, oldest), now)
        return out

    async def send_group(self, key: GroupKey, members: list[Held]) -> list[Failure]:
        """One message for `members`; each alert's outcome is recorded and counted alone."""
        alerts = [held.alert for held in members]
        labels = key.describe()
        error, attempts = await self._attempts(
            functools.partial(self.sender.send_group, labels, alerts), len(alerts),
            f"{self.name} message of {len(alerts)} alert(s) ({labels})")
        outcome = Outcome.DELIVERED if error is None else Outcome.DEAD_LETTERED
        at = now_ms()
        await self.context.record([delivery_record(
            self.name, outcome, held.alert, origin_of(held.record), at, route=held.route,
            group=labels, group_size=len(alerts), error=error, attempts=attempts) for held in members])
        if error is not None:
            return [Failure(held.record, self.name, error, attempts) for held in members]
        self.context.counts.delivered += len(members)
        notify_metrics.grouped_message(self.name)
        for held in members:
            notify_metrics.alert_delivered(self.name, time.time() - held.record.timestamp / 1000)
        return []


class WriteBackLane:
    """Security Hub write-back (`--write-back`): a whole batch at a time, up to 100 findings
    per BatchUpdateFindings call. A batch interrupted by a stop is not committed; doing it
    again is harmless (the same values)."""

    name = "securityhub"

    def __init__(self, securityhub: Any, context: LaneContext, *, primary: bool) -> None:
        self.securityhub = securityhub
        self.context = context
        self.primary = primary
        settings = context.settings
        self.topics = [settings.alerts_topic, settings.suppressed_topic]
        self.ledger: Ledger[Any] = Ledger()
        self.flush_everything = False

    async def deliver(self, batch: Batch, dead_letter: DeadLetter, progress: BatchProgress) -> None:
        records = [r for rs in batch.values() for r in rs]
        try:
            failures = await self.write_back(records)
        except Interrupted:
            return
        if failures:
            await dead_letter(failures)
        progress.done.update({key: rs[-1].offset + 1 for key, rs in batch.items() if rs})
        for key, rs in batch.items():
            if rs:
                self.ledger.handled(key, rs[-1].offset)

    def holding(self) -> bool:
        return False

    def drop(self, revoked: set[Any]) -> None:
        return None

    async def run_groups(self, dead_letter: DeadLetter) -> None:
        return None

    async def write_back(self, records: list[Any]) -> list[Failure]:
        items: list[tuple[Any, WriteBackItem]] = []
        failures: list[Failure] = []
        workflows = await finish_or_stop(self._predecessor_workflows(records), self.context.stop)
        if self.primary:
            self.context.counts.records += len(records)
        for r in records:
            try:
                item = self._write_back_item(r, workflows)
            except AlertError as exc:
                if self.primary:
                    notify_metrics.consumed(None)
                    failures.append(Failure(r, "parse", str(exc), 0))
                continue
            except WriteBackError as exc:
                failures.append(Failure(r, "securityhub", str(exc), 0))
                continue
            if item is not None:
                items.append((r, item))
        settings = self.context.settings
        for request, members in update_requests(items):
            error, attempts = await with_retries(
                functools.partial(self._update, request), settings.retry, self.context.rng,
                f"BatchUpdateFindings of {len(members)} finding(s)", self.context.stop)
            if error is None:
                self.context.counts.written_back += len(members)
                notify_metrics.written_back(len(members))
            else:
                failures.extend(Failure(r, "securityhub", error, attempts) for r in members)
        return failures

    def _write_back_item(self, record: Any, workflows: dict[str, str]) -> WriteBackItem | None:
        if record.topic == self.context.settings.suppressed_topic:
            try:
                value = orjson.loads(record.value or b"")
            except orjson.JSONDecodeError as exc:
                raise WriteBackError(f"not JSON: {exc}") from None
            return suppressed_item(value, workflows)
        alert = parse_alert(record.value or b"")  # AlertError: not an alert
        if self.primary:
            notify_metrics.consumed(alert)
        return None if alert.kind is Kind.RESOLVED else alerted_item(alert)

    async def _predecessor_workflows(self, records: list[Any]) -> dict[str, str]:
        """Workflow status of the predecessors of the suppressed records, by finding id,
        from Security Hub. A predecessor it cannot tell counts as NOTIFIED: the copy
        then says "we told someone", never hides more than the predecessor did."""
        values = []
        for record in records:
            if record.topic == self.context.settings.suppressed_topic:
                with contextlib.suppress(orjson.JSONDecodeError):
                    values.append(orjson.loads(record.value or b""))
        wanted = set(predecessor_ids(values))
        found: dict[str, str] = {}
        for filters in id_filters(sorted(wanted)):
            try:
                response = await asyncio.to_thread(self.securityhub.get_findings, Filters=filters,
                                                   MaxResults=100)
            except Exception as exc:
                log.warning("write-back: cannot read predecessors' workflow status (%s); "
                            "copying NOTIFIED", aws_error(exc))
                return found
            # Filtered here too: not every endpoint applies `Filters`.
            for finding in response.get("Findings") or []:
                status = (finding.get("Workflow") or {}).get("Status")
                if finding.get("Id") in wanted and isinstance(status, str):
                    found[finding["Id"]] = status
        return found

    async def _update(self, request: dict[str, Any]) -> None:
        try:
            response = await finish_or_stop(
                asyncio.to_thread(self.securityhub.batch_update_findings, **request), self.context.stop)
        except Interrupted:
            raise
        except Exception as exc:
            raise aws_error(exc) from None
        unprocessed = response.get("UnprocessedFindings") or []
        if unprocessed:
            first = unprocessed[0]
            # Retry the whole call: BatchUpdateFindings is idempotent for the same values.
            raise DeliveryError(f"{len(unprocessed)} unprocessed: {first.get('ErrorCode')} "
                                f"{str(first.get('ErrorMessage', ''))[:200]}", retryable=True)


PRIMARY_PREFERENCE = ("stdout", "pagerduty", "sns", "slack")


class Notifier:
    """The lanes of one notifier: one per configured sink, and one for the write-back."""

    def __init__(self, settings: NotifySettings, senders: dict[str, Sender],
                 securityhub: Any = None, rng: random.Random | None = None,
                 stop: asyncio.Event | None = None, record: RecordDeliveries = no_records) -> None:
        self.settings = settings
        self.counts = Counts()
        context = LaneContext(settings, self.counts, rng or random.Random(), stop, list(senders),
                              record)
        # The primary lane counts what is read and dead-letters what is not an alert: the
        # one least likely to lag (Slack, rate-limited, only when it is the only sink).
        primary = min(senders, default=None, key=lambda name: PRIMARY_PREFERENCE.index(name)
                      if name in PRIMARY_PREFERENCE else len(PRIMARY_PREFERENCE))
        self.lanes: list[Lane] = [SinkLane(sender, context, primary=name == primary)
                                  for name, sender in senders.items()]
        if securityhub is not None:
            self.lanes.append(WriteBackLane(securityhub, context, primary=not senders))

    async def dead_letter_counted(self, failures: list[Failure]) -> None:
        self.counts.dead_lettered += len(failures)
        for failure in failures:
            by_sink = self.counts.dead_lettered_by_sink
            by_sink[failure.sink] = by_sink.get(failure.sink, 0) + 1
            notify_metrics.dead_lettered(failure.sink)

    async def deliver_batch(self, records: list[Any]) -> list[Failure]:
        """Every lane's delivery of `records`, side by side, held groups sent at once at
        the end; what failed for good."""
        failures: list[Failure] = []

        async def collect(more: list[Failure]) -> None:
            failures.extend(more)
            await self.dead_letter_counted(more)

        async def one(lane: Lane) -> None:
            batch: Batch = {}
            for r in records:
                if r.topic in lane.topics:
                    batch.setdefault((r.topic, r.partition), []).append(r)
            await lane.deliver(batch, collect, BatchProgress())
            if isinstance(lane, SinkLane):
                for key, members in lane.groups.take_all(time.monotonic()):
                    await collect(await lane.send_group(key, members))

        await asyncio.gather(*(one(lane) for lane in self.lanes))
        return failures


async def create_output_topics(settings: NotifySettings) -> None:
    """The topics the notifier and `notify redeliver` write: the notification dead
    letters and the delivery records, one partition each (kept if they exist)."""
    created = {settings.deadletter_topic: 1}
    if settings.deliveries_topic:
        created[settings.deliveries_topic] = 1
    await create_topics(settings.bootstrap_servers, created,
                        replication=settings.writes.replication, security=settings.security)


async def run_notify(settings: NotifySettings, senders: dict[str, Sender] | None = None,
                     securityhub: Any = None) -> Counts:
    """Run every lane until stopped (SIGTERM, SIGINT) or, with `exit_when_idle`, until each
    has caught up."""
    from aiokafka import AIOKafkaProducer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await create_output_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **settings.writes.aiokafka_kwargs(), **settings.security.aiokafka_kwargs())

    recording: list[asyncio.Future[Any]] = []

    async def record(deliveries: list[dict[str, Any]]) -> None:
        """Delivery records, queued: a page never waits for one (they are acknowledged
        before the deliveries they record are committed, see `acknowledged`)."""
        if settings.deliveries_topic:
            for d in deliveries:
                recording.append(await producer.send(settings.deliveries_topic, orjson.dumps(d),
                                                     key=str(d["dedup_key"]).encode()))

    async def acknowledged() -> None:
        """Every delivery record queued so far is on the broker (else this raises)."""
        waiting = list(recording)
        del recording[:len(waiting)]
        if waiting:
            await asyncio.gather(*waiting)

    async with contextlib.AsyncExitStack() as stack:
        if senders is None:
            senders = await stack.enter_async_context(open_senders(settings))
        notifier = Notifier(settings, senders, securityhub, stop=stop, record=record)
        topics = sorted({t for lane in notifier.lanes for t in lane.topics})
        known, legacy = await _topics_and_legacy_offsets(settings)
        missing = [t for t in topics if t not in known]
        if missing and settings.exit_when_idle:
            log.warning("topic %s does not exist: nothing to deliver", missing[0])
            return notifier.counts
        if missing:
            raise ConfigError(f"topic {missing[0]} does not exist (start the worker first, or "
                              "check --alerts-topic / --suppressed-topic)")
        stack.push_async_callback(producer.stop)
        await producer.start()

        async def dead_letter(failures: list[Failure]) -> None:
            await asyncio.gather(*[
                producer.send_and_wait(settings.deadletter_topic, f.record.value, key=f.record.key,
                                       headers=deadletter_headers(f)) for f in failures])
            await notifier.dead_letter_counted(failures)

        async def lane_or_stop_all(lane: Lane) -> None:
            try:
                await run_lane(lane, settings, dead_letter, stop, legacy, acknowledged)
            except BaseException:
                stop.set()  # the other lanes stop too, committing what they delivered
                raise

        results = await asyncio.gather(*(lane_or_stop_all(lane) for lane in notifier.lanes),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return notifier.counts
    raise AssertionError("unreachable")


async def _topics_and_legacy_offsets(settings: NotifySettings) -> tuple[set[str], dict[Any, int]]:
    """The broker's topics, and the offsets committed by `--group-id` itself: the one group
    every sink shared before each sink had its own. A sink's group with no offset yet starts
    there, so an upgrade neither repeats what was delivered nor skips what was not."""
    from streams.kafka.topics import admin_client

    async with admin_client(settings.bootstrap_servers, settings.security, timeout=30) as admin:
        known = set(await admin.list_topics())
        offsets = await admin.list_consumer_group_offsets(settings.group_id)
    return known, {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def run_lane(lane: Lane, settings: NotifySettings, dead_letter: DeadLetter,
                   stop: asyncio.Event, legacy: dict[Any, int],
                   before_commit: Callable[[], Awaitable[None]] = no_wait) -> None:
    """One lane's consumer group: fetch, deliver (or hold in groups), commit exactly what
    was delivered or dead-lettered; until stopped, or caught up with `exit_when_idle`."""
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    group = settings.lane_group(lane.name)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=settings.batch_size,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.session_timeout_ms // 10),
        # Slack at 1 message/s makes a batch slow; the group must not evict us meanwhile.
        max_poll_interval_ms=3_600_000, metadata_max_age_ms=5_000,
        **settings.security.aiokafka_kwargs(),
    )

    progress = LaneProgress(lane.name, before_commit=before_commit)

    class StartWhereTheSharedGroupWas(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            # Still ours until this returns: commit what was delivered on them, and stop
            # delivering them (their new owner starts after the commit, and skips what the
            # commit says was finished beyond it).
            log.debug("%s: revoked %s; done %s", lane.name, revoked, progress.batch.done)
            progress.batch.revoked.update(revoked)
            await progress.commit(consumer, lane.ledger)
            lane.drop(set(revoked))
            for tp in revoked:
                progress.committed.pop(tp, None)
                lane.ledger.revoked(tp)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            log.debug("%s: assigned %s", lane.name, sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
            for tp in assigned:
                committed = await consumer.committed(tp)
                if committed is None and tp in legacy:
                    consumer.seek(tp, legacy[tp])
                    committed = legacy[tp]
                if committed is None:
                    committed = (await consumer.beginning_offsets([tp]))[tp]
                progress.committed[tp] = CommitPoint(committed)

    await consumer.start()
    groups = asyncio.ensure_future(lane.run_groups(dead_letter))
    try:
        consumer.subscribe(lane.topics, listener=StartWhereTheSharedGroupWas())
        while not stop.is_set():
            if groups.done():
                groups.result()  # a failure (the dead-letter topic unwritable) stops the lane
            batch = await consumer.getmany(timeout_ms=500, max_records=settings.batch_size)
            if not any(batch.values()):
                await progress.commit(consumer, lane.ledger)  # groups sent meanwhile
                await progress.report_backlog(consumer, lane.ledger)
                if settings.exit_when_idle and await _caught_up(consumer):
                    if not lane.holding():
                        break
                    lane.flush_everything = True  # nothing more will come: send what is held
                continue
            # Records may arrive before the rebalance listener is done: the ledger of a new
            # partition is read here, from the commit, before any of its records is handled.
            new = [tp for tp, records in batch.items() if records and tp not in lane.ledger.parts]
            commits = await _committed(settings, group, new)
            for tp in new:
                offset, metadata = commits.get(tp, (batch[tp][0].offset, ""))
                lane.ledger.assigned(tp, offset, metadata)
            progress.batch = BatchProgress()
            delivering = asyncio.ensure_future(lane.deliver(batch, dead_letter, progress.batch))
            finished = False
            while not finished:
                # A slow sink's batch takes long: commit its progress as it goes, so that a
                # crash (SIGKILL) repeats at most the last second's deliveries. Checked
                # before the commit: the batch may finish while a commit is in flight.
                await asyncio.wait({delivering}, timeout=COMMIT_EVERY_S)
                finished = delivering.done()
                await progress.commit(consumer, lane.ledger)
                await progress.report_backlog(consumer, lane.ledger)
            delivering.result()
        stop_groups = not stop.is_set()  # caught up: nothing is held
        if stop_groups:
            groups.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await groups
        # What the groups sent last; held alerts stay uncommitted for the next notifier.
        await progress.commit(consumer, lane.ledger)
    finally:
        if not groups.done():
            groups.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await groups
        await consumer.stop()


async def _committed(settings: NotifySettings, group: str, partitions: list[Any]
                     ) -> dict[Any, tuple[int, str]]:
    """A group's committed offsets with their metadata (what a lane that held alerts had
    finished beyond the offset), for `partitions`."""
    from streams.kafka.topics import admin_client

    if not partitions:
        return {}
    async with admin_client(settings.bootstrap_servers, settings.security, timeout=30) as admin:
        offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
    return {tp: (meta.offset, meta.metadata or "") for tp, meta in offsets.items() if meta.offset >= 0}


# How often a lane commits the progress of a batch still being delivered, and reports
# its backlog.
COMMIT_EVERY_S = 1.0
BACKLOG_EVERY_S = 5.0


@dataclass(slots=True)
class LaneProgress:
    """What a lane has committed, per assigned partition, and the backlog that leaves; the
    batch it is delivering."""

    lane: str
    committed: dict[Any, CommitPoint] = field(default_factory=dict)
    batch: BatchProgress = field(default_factory=BatchProgress)
    reported_at: float = float("-inf")
    # Waited for before each commit: the delivery records of what it commits.
    before_commit: Callable[[], Awaitable[None]] = field(default=lambda: no_wait())

    async def commit(self, consumer: Any, ledger: Ledger[Any]) -> None:
        """Commit what moved: each partition's first record not finished, and in the
        metadata what is held beyond it."""
        from aiokafka import TopicPartition
        from aiokafka.errors import CommitFailedError, IllegalStateError

        # A partition revoked mid-batch is another member's now: it delivers again what
        # this one did not commit (at least once; the repeats carry the same dedup_key).
        assigned = consumer.assignment()
        points = {tp: ledger.point(tp) for tp in assigned}
        moved = {TopicPartition(tp.topic, tp.partition): point for tp, point in points.items()
                 if point is not None and self.committed.get(tp) != point}
        if not moved:
            return
        await self.before_commit()
        try:
            await consumer.commit({tp: (p.offset, p.metadata) for tp, p in moved.items()})
            log.debug("%s: committed %s", self.lane, moved)
            notify_metrics.committed(time.time())
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("%s: commit failed after a rebalance: %s", self.lane, exc)
            return
        self.committed.update(moved)

    async def report_backlog(self, consumer: Any, ledger: Ledger[Any]) -> None:
        """Alerts on the assigned partitions this lane has not delivered or dead-lettered
        yet: those not handled, and those held in groups (at most every few seconds: it
        costs a request to the broker)."""
        now = time.monotonic()
        if now - self.reported_at < BACKLOG_EVERY_S:
            return
        self.reported_at = now
        assigned = [tp for tp in consumer.assignment() if tp in self.committed]
        ends = await consumer.end_offsets(assigned) if assigned else {}
        waiting = 0
        for tp in assigned:
            part = ledger.parts.get(tp)
            handled = max(self.committed[tp].offset, part.upto if part is not None else 0)
            waiting += max(0, ends[tp] - handled) + (len(part.held) if part is not None else 0)
        notify_metrics.backlog(self.lane, waiting)


async def _caught_up(consumer: Any) -> bool:
    assigned = consumer.assignment()
    if not assigned:
        return False
    ends = await consumer.end_offsets(list(assigned))
    for tp in assigned:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


@contextlib.asynccontextmanager
async def open_senders(settings: NotifySettings) -> AsyncIterator[dict[str, Sender]]:
    import aiohttp

    senders: dict[str, Sender] = {}
    async with aiohttp.ClientSession() as session:
        if settings.stdout:
            senders["stdout"] = StdoutSender()
        if settings.slack_webhook_url:
            senders["slack"] = SlackSender("slack", settings.slack_webhook_url, session,
                                           settings.http_timeout_s, RateLimiter(settings.slack_rate))
        if settings.pagerduty_routing_key:
            senders["pagerduty"] = PagerDutySender(settings.pagerduty_url, settings.pagerduty_routing_key,
                                                   session, settings.http_timeout_s)
        if settings.sns_topic_arn:
            senders["sns"] = SnsSender(settings.sns_topic_arn, aws_client("sns", settings))
        yield senders


def aws_client(service: str, settings: NotifySettings) -> Any:
    """A boto3 client that leaves retries to our loop. Endpoints and Regions come from the
    usual AWS configuration (AWS_REGION, AWS_ENDPOINT_URL_SNS, ...)."""
    import os

    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    timeout = settings.http_timeout_s
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=timeout, read_timeout=timeout)
    try:
        return boto3.client(service, config=config, region_name=os.environ.get("AWS_REGION") or None)
    except BotoCoreError as exc:
        raise ConfigError(f"AWS {service}: {exc} (set AWS_REGION)") from None


def notify(settings: NotifySettings) -> Counts:
    securityhub = aws_client("securityhub", settings) if settings.write_back else None
    return asyncio.run(run_notify(settings, securityhub=securityhub))
