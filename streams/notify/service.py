"""`flapguard notify`: deliver the alerts topic to Slack, PagerDuty, SNS and stdout.

At-least-once: a fetched batch is delivered (every record to every sink its route
names, with retries), records that still fail go to the notification dead-letter topic
with the error in headers, and only then are the batch's offsets committed. A notifier
killed mid-batch re-delivers that batch on restart; a repeat carries the same
`dedup_key` (PagerDuty folds it into the same incident).

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
from typing import Any, Protocol

import orjson

from streams.config import ConfigError
from streams.core.records import HEADER_REASON
from streams.kafka.producer import ProducerSettings
from streams.kafka.security import BrokerSecurity
from streams.kafka.topics import create_topics
from streams.notify import metrics as notify_metrics
from streams.notify.routing import Routes
from streams.notify.sinks import (
    Alert,
    AlertError,
    Kind,
    pagerduty_event,
    parse_alert,
    slack_message,
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

    async def send(self, alert: Alert) -> None: ...


class RateLimiter:
    """At most `rate` sends per second, first come first served (asyncio.Lock is FIFO):
    alerts queue here, none is dropped. A 429 pushes the next slot back for everyone."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            if self.next_at > now:
                await asyncio.sleep(self.next_at - now)
            self.next_at = max(now, self.next_at) + self.interval

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

    async def send(self, alert: Alert) -> None:
        import aiohttp

        payload = orjson.dumps(self.body(alert))
        if self.limiter is not None:
            await self.limiter.wait()
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


class PagerDutySender(HttpSender):
    def __init__(self, url: str, routing_key: str, session: Any, timeout_s: float) -> None:
        super().__init__("pagerduty", url, session, timeout_s, secrets=[routing_key])
        self.routing_key = routing_key

    def body(self, alert: Alert) -> dict[str, Any]:
        return pagerduty_event(alert, self.routing_key)


class SnsSender:
    name = "sns"

    def __init__(self, topic_arn: str, client: Any) -> None:
        self.topic_arn = topic_arn
        self.client = client

    async def send(self, alert: Alert) -> None:
        message = sns_message(alert)
        try:
            await asyncio.to_thread(
                self.client.publish, TopicArn=self.topic_arn, Subject=message.subject,
                Message=message.message, MessageAttributes=message.attributes,
            )
        except Exception as exc:
            raise aws_error(exc) from None


class StdoutSender:
    name = "stdout"

    async def send(self, alert: Alert) -> None:
        sys.stdout.buffer.write(stdout_line(alert))
        sys.stdout.buffer.flush()


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
) -> tuple[str | None, int]:
    """None when delivered, else the last error; and the attempts made."""
    for attempt in range(1, policy.attempts + 1):
        try:
            await attempt_once()
            return None, attempt
        except DeliveryError as exc:
            if not exc.retryable or attempt == policy.attempts:
                log.warning("%s failed for good after %d attempt(s): %s", what, attempt, exc)
                return str(exc), attempt
            pause = policy.delay(attempt, exc.retry_after, rng)
            log.info("%s failed (attempt %d/%d, retry in %.2fs): %s",
                     what, attempt, policy.attempts, pause, exc)
            await asyncio.sleep(pause)
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
    write_back: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    http_timeout_s: float = 10.0
    batch_size: int = 100
    concurrency: int = 16
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


def deadletter_headers(failure: Failure) -> list[tuple[str, bytes]]:
    r = failure.record
    return [
        (HEADER_REASON, DEADLETTER_REASON),
        (HEADER_SINK, failure.sink.encode()),
        (HEADER_ERROR, failure.error[:1000].encode()),
        (HEADER_ATTEMPTS, str(failure.attempts).encode()),
        (HEADER_ORIGIN, f"{r.topic}/{r.partition}/{r.offset}".encode()),
    ]


class Notifier:
    """Delivers one fetched batch at a time; see the module docstring."""

    def __init__(self, settings: NotifySettings, senders: dict[str, Sender],
                 securityhub: Any = None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.senders = senders
        self.securityhub = securityhub
        self.rng = rng or random.Random()
        self.gate = asyncio.Semaphore(settings.concurrency)
        self.counts = Counts()

    async def deliver_batch(self, records: list[Any]) -> list[Failure]:
        alerts = [r for r in records if r.topic == self.settings.alerts_topic]
        results = await asyncio.gather(*(self._deliver(r) for r in alerts))
        failures = [f for fs in results for f in fs]
        if self.securityhub is not None:
            failures.extend(await self._write_back(records))
        self.counts.records += len(records)
        self.counts.dead_lettered += len(failures)
        for failure in failures:
            notify_metrics.dead_lettered(failure.sink)
        return failures

    async def _deliver(self, record: Any) -> list[Failure]:
        try:
            alert = parse_alert(record.value or b"")
        except AlertError as exc:
            notify_metrics.consumed(None)
            return [Failure(record, "parse", str(exc), 0)]
        notify_metrics.consumed(alert)
        sinks = self.settings.routes.sinks_for(alert, list(self.senders))
        async with self.gate:
            outcomes = await asyncio.gather(*(self._send(self.senders[s], alert) for s in sinks))
        failures = [Failure(record, sink, error, attempts)
                    for sink, (error, attempts) in zip(sinks, outcomes, strict=True) if error is not None]
        self.counts.delivered += len(sinks) - len(failures)
        return failures

    async def _send(self, sender: Sender, alert: Alert) -> tuple[str | None, int]:
        def attempt() -> Awaitable[None]:
            notify_metrics.attempted(sender.name)
            return sender.send(alert)

        started = time.monotonic()
        error, attempts = await with_retries(attempt, self.settings.retry, self.rng,
                                             f"{sender.name} delivery of {alert.dedup_key}")
        notify_metrics.delivery_done(sender.name, delivered=error is None, attempts=attempts,
                                     seconds=time.monotonic() - started)
        return error, attempts

    async def _write_back(self, records: list[Any]) -> list[Failure]:
        items: list[tuple[Any, WriteBackItem]] = []
        failures: list[Failure] = []
        workflows = await self._predecessor_workflows(records)
        for r in records:
            try:
                item = self._write_back_item(r, workflows)
            except WriteBackError as exc:
                failures.append(Failure(r, "securityhub", str(exc), 0))
                continue
            if item is not None:
                items.append((r, item))
        for request, members in update_requests(items):
            error, attempts = await with_retries(
                functools.partial(self._update, request), self.settings.retry, self.rng,
                f"BatchUpdateFindings of {len(members)} finding(s)")
            if error is None:
                self.counts.written_back += len(members)
                notify_metrics.written_back(len(members))
            else:
                failures.extend(Failure(r, "securityhub", error, attempts) for r in members)
        return failures

    def _write_back_item(self, record: Any, workflows: dict[str, str]) -> WriteBackItem | None:
        if record.topic == self.settings.suppressed_topic:
            try:
                value = orjson.loads(record.value or b"")
            except orjson.JSONDecodeError as exc:
                raise WriteBackError(f"not JSON: {exc}") from None
            return suppressed_item(value, workflows)
        try:
            alert = parse_alert(record.value or b"")
        except AlertError:
            return None  # already dead-lettered once, by the delivery
        return None if alert.kind is Kind.RESOLVED else alerted_item(alert)

    async def _predecessor_workflows(self, records: list[Any]) -> dict[str, str]:
        """Workflow status of the predecessors of the suppressed records, by finding id,
        from Security Hub. A predecessor it cannot tell counts as NOTIFIED: the copy
        then says "we told someone", never hides more than the predecessor did."""
        values = []
        for record in records:
            if record.topic == self.settings.suppressed_topic:
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
            response = await asyncio.to_thread(self.securityhub.batch_update_findings, **request)
        except Exception as exc:
            raise aws_error(exc) from None
        unprocessed = response.get("UnprocessedFindings") or []
        if unprocessed:
            first = unprocessed[0]
            # Retry the whole call: BatchUpdateFindings is idempotent for the same values.
            raise DeliveryError(f"{len(unprocessed)} unprocessed: {first.get('ErrorCode')} "
                                f"{str(first.get('ErrorMessage', ''))[:200]}", retryable=True)


async def run_notify(settings: NotifySettings, senders: dict[str, Sender] | None = None,
                     securityhub: Any = None) -> Counts:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.errors import CommitFailedError

    auth = settings.security.aiokafka_kwargs()
    await create_topics(settings.bootstrap_servers, {settings.deadletter_topic: 1},
                        replication=settings.writes.replication, security=settings.security)
    topics = [settings.alerts_topic] + ([settings.suppressed_topic] if settings.write_back else [])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=settings.batch_size,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.session_timeout_ms // 10),
        # Slack at 1 message/s makes a batch slow; the group must not evict us meanwhile.
        max_poll_interval_ms=3_600_000, metadata_max_age_ms=5_000, **auth,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **settings.writes.aiokafka_kwargs(), **auth)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if senders is None:
            senders = await stack.enter_async_context(open_senders(settings))
        notifier = Notifier(settings, senders, securityhub)
        stack.push_async_callback(producer.stop)
        await producer.start()
        stack.push_async_callback(consumer.stop)
        await consumer.start()
        known = await consumer.topics()
        missing = [t for t in topics if t not in known]
        if missing and settings.exit_when_idle:
            log.warning("topic %s does not exist: nothing to deliver", missing[0])
            return notifier.counts
        if missing:
            raise ConfigError(f"topic {missing[0]} does not exist (start the worker first, or "
                              "check --alerts-topic / --suppressed-topic)")
        consumer.subscribe(topics)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=settings.batch_size)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                if settings.exit_when_idle and await _caught_up(consumer):
                    break
                continue
            failures = await notifier.deliver_batch(records)
            await asyncio.gather(*[
                producer.send_and_wait(settings.deadletter_topic, f.record.value, key=f.record.key,
                                       headers=deadletter_headers(f)) for f in failures])
            offsets = {TopicPartition(tp.topic, tp.partition): rs[-1].offset + 1
                       for tp, rs in batches.items() if rs}
            try:
                await consumer.commit(offsets)
                notify_metrics.committed(time.time())
            except CommitFailedError as exc:
                # Partitions moved to another member mid-batch: it re-delivers them
                # (at-least-once; the repeats carry the same dedup_key).
                log.warning("commit failed after a rebalance: %s", exc)
        return notifier.counts
    raise AssertionError("unreachable")


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
