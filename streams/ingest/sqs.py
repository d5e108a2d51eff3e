"""`flapguard forward sqs`: the EventBridge rule -> SQS -> Kafka path.

get (SQS long polling, 10 messages a batch) -> transform (`message_records`, pure) ->
load (Kafka, acks=all) -> delete the batch's messages, only once Kafka acknowledged
every record made from them. A message that is not Security Hub input goes to the
dead-letter topic with its reason and is then deleted: nothing blocks the queue, and
nothing is lost. A crash between the acks and the delete redelivers the message: a
duplicate, which the core already treats as one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from streams.core.findings import Rejected, finding_items, parse_message
from streams.core.policy import Policy
from streams.core.records import HEADER_REASON
from streams.ingest import metrics as forward_metrics
from streams.ingest.aws import check_credentials, is_aws_error, make_client
from streams.ingest.forward import (
    HEADER_MESSAGE_ID,
    ForwardError,
    KafkaSink,
    OutRecord,
    Progress,
    Route,
    deadletter_record,
    finding_records,
    one_line,
)
from streams.kafka.producer import ProducerSettings
from streams.kafka.security import BrokerSecurity

log = logging.getLogger(__name__)
BATCH = 10  # SQS's maximum per ReceiveMessage


@dataclass(frozen=True, slots=True)
class SqsSettings:
    bootstrap: str
    topic: str
    deadletter_topic: str
    queue_url: str
    region: str
    endpoint_url: str | None = None
    partitions: int = 8
    once: bool = False
    wait_time_s: int = 20
    max_attempts: int = 10
    security: BrokerSecurity = field(default_factory=BrokerSecurity)
    writes: ProducerSettings = field(default_factory=ProducerSettings)


def message_records(body: bytes, *, source: str, message_id: str, policy: Policy,
                    now_ms: int) -> list[OutRecord]:
    """One queue message -> its findings' records, or one dead letter."""
    parsed = parse_message(body, policy=policy, now_ms=now_ms)
    whole = len(parsed) == 1 and isinstance(parsed[0], Rejected) and parsed[0].raw is body
    if whole:
        reason = parsed[0].reason if isinstance(parsed[0], Rejected) else "not_a_finding"
        return [deadletter_record(body, reason, source=source,
                                  extra=((HEADER_MESSAGE_ID, message_id.encode()),))]
    import orjson

    items = finding_items(orjson.loads(body)) or []
    extra = ((HEADER_MESSAGE_ID, message_id.encode()),)
    return [OutRecord(r.route, r.key, r.value, r.headers + extra, r.updated_at)
            for r in finding_records(items, parsed, source=source)]


async def drain(settings: SqsSettings, client: Any, sink: KafkaSink, stop: asyncio.Event,
                progress: Progress) -> int:
    policy = Policy()
    source = f"sqs:{settings.queue_url}"
    forwarded = 0
    answered, backoff = False, 1.0
    while not stop.is_set():
        try:
            response = await asyncio.to_thread(
                client.receive_message, QueueUrl=settings.queue_url, MaxNumberOfMessages=BATCH,
                WaitTimeSeconds=settings.wait_time_s)
        except Exception as exc:
            # Fail fast on bad configuration; once the queue has answered, a continuous
            # consumer rides out outages instead of exiting.
            if settings.once or not answered or not is_aws_error(exc):
                raise
            log.warning("receive failed: %s; again in %.0f s", one_line(exc), backoff)
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, 60.0)
            continue
        answered, backoff = True, 1.0
        forward_metrics.polled("sqs")
        messages = response.get("Messages", [])
        forward_metrics.SQS_RECEIVED.inc(len(messages))
        if not messages:
            if settings.once:
                break
            continue
        now_ms = int(time.time() * 1000)
        records = [r for m in messages
                   for r in message_records(m["Body"].encode(), source=source,
                                            message_id=m["MessageId"], policy=policy, now_ms=now_ms)]
        await sink.send_all(records)
        result = await asyncio.to_thread(
            client.delete_message_batch, QueueUrl=settings.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
        failures = result.get("Failed", [])
        for failed in failures:
            # Redelivered later: a duplicate downstream, never a loss.
            log.warning("could not delete message %s: %s", failed.get("Id"), failed.get("Message"))
        found = sum(1 for r in records if r.route is Route.FINDINGS)
        forward_metrics.forwarded("sqs", found, [dead_letter_reason(r) for r in records
                                                 if r.route is Route.DEADLETTER])
        forward_metrics.SQS_DELETED.inc(len(messages) - len(failures))
        forward_metrics.SQS_DELETE_FAILED.inc(len(failures))
        forwarded += found
        progress.add(found, None)
    return forwarded


def dead_letter_reason(record: OutRecord) -> str:
    return dict(record.headers).get(HEADER_REASON, b"").decode(errors="replace")


async def run_sqs(settings: SqsSettings) -> int:

    await asyncio.to_thread(check_credentials)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sink = KafkaSink(settings.bootstrap, {Route.FINDINGS: settings.topic,
                                          Route.DEADLETTER: settings.deadletter_topic},
                     settings.partitions, security=settings.security, writes=settings.writes)
    progress = Progress()
    try:
        await sink.start()
        client = make_client("sqs", settings.region, endpoint_url=settings.endpoint_url,
                             max_attempts=settings.max_attempts)
        try:
            return await drain(settings, client, sink, stop, progress)
        except Exception as exc:
            if is_aws_error(exc):
                raise ForwardError(f"SQS queue {settings.queue_url}: {one_line(exc)}") from None
            raise
    finally:
        progress.close()
        await sink.stop()
