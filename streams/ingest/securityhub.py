"""`flapguard forward securityhub`: poll GetFindings, produce each finding to Kafka.

get (boto3 paginator, dumb) -> transform (`forward.page_records`, `cursor.Sweep`: pure)
-> load (`forward.KafkaSink`, then the cursor, only after the broker's acks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.core.policy import Policy
from streams.ingest import metrics as forward_metrics
from streams.ingest.aws import check_credentials, is_aws_error, is_throttling, make_client
from streams.ingest.cursor import CursorStore, SeenSet, Sweep
from streams.ingest.forward import ForwardError, KafkaSink, OutRecord, Progress, Route, one_line, page_records
from streams.ingest.ratelimit import TokenBucket
from streams.kafka.producer import ProducerSettings
from streams.kafka.security import BrokerSecurity

log = logging.getLogger(__name__)

# Security Hub's documented GetFindings rate: 3 requests per second, burst 6.
DEFAULT_RATE = 3.0
DEFAULT_BURST = 6


@dataclass(frozen=True, slots=True)
class Source:
    """One GetFindings view: a Region, optionally through an assumed role."""

    region: str
    role_arn: str | None = None

    @property
    def name(self) -> str:
        return f"securityhub:{self.region}" + (f":{self.role_arn}" if self.role_arn else "")


@dataclass(frozen=True, slots=True)
class PollSettings:
    bootstrap: str
    topic: str
    sources: tuple[Source, ...]
    endpoint_url: str | None = None
    partitions: int = 8
    overlap_ms: int = 15 * 60_000
    since_ms: int = 0
    once: bool = False
    poll_interval_s: float = 60.0
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    max_attempts: int = 10
    page_size: int = 100
    sts_endpoint_url: str | None = None
    # AWS sorts by UpdatedAt; a stand-in (moto) may not: then the cursor moves per sweep.
    trust_order: bool = True
    security: BrokerSecurity = field(default_factory=BrokerSecurity)
    writes: ProducerSettings = field(default_factory=ProducerSettings)
    # Per-partition pages of findings instead of one record each (`KafkaSink.pages`).
    pages: bool = False

    def cursor_key(self, source: Source) -> str:
        return f"{source.name}|{self.endpoint_url or 'aws'}"


def iso_z(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- get ----------------------------------------------------------------------------


def finding_pages(client: Any, *, since_ms: int, until_ms: int, page_size: int) -> Iterator[list[Any]]:
    """GetFindings pages, oldest `UpdatedAt` first (when the endpoint honours it)."""
    paginator = client.get_paginator("get_findings")
    pages = paginator.paginate(
        Filters={"UpdatedAt": [{"Start": iso_z(since_ms), "End": iso_z(until_ms)}]},
        SortCriteria=[{"Field": "UpdatedAt", "SortOrder": "asc"}],
        PaginationConfig={"PageSize": page_size},
    )
    for page in pages:
        yield list(page.get("Findings", []))


def aws_error(exc: BaseException, where: str) -> ForwardError:
    return ForwardError(f"{where}: {one_line(exc)}")


# -- transform ----------------------------------------------------------------------


def wanted_records(findings: list[Any], sweep: Sweep, seen: SeenSet, *, source: str,
                   policy: Policy, now_ms: int) -> list[OutRecord]:
    """Records of one page: client-side `UpdatedAt` filter, nothing this process sent."""
    out = []
    for record, item in zip(page_records(findings, source=source, policy=policy, now_ms=now_ms),
                            findings, strict=True):
        if not sweep.wanted(record.updated_at):
            continue
        if record.updated_at is not None and not seen.first_time(str(item.get("Id")), record.updated_at):
            continue
        out.append(record)
    return out


# -- load ---------------------------------------------------------------------------


@dataclass
class Poller:
    settings: PollSettings
    sink: KafkaSink
    cursor: CursorStore
    progress: Progress
    policy: Policy
    stop: asyncio.Event
    clock: Callable[[], float] = time.monotonic
    swept: set[Source] = field(default_factory=set)  # sources that answered at least once

    async def run(self) -> int:
        stored = await self.cursor.load()
        clients = {s: await asyncio.to_thread(self._client, s) for s in self.settings.sources}
        for source, client in clients.items():
            forward_metrics.count_getfindings(client)
            if (key := self.settings.cursor_key(source)) in stored:
                forward_metrics.cursor_moved(key, stored[key])
        buckets = {s: TokenBucket(self.settings.rate, self.settings.burst) for s in clients}
        seen = {s: SeenSet() for s in clients}
        total = 0
        while not self.stop.is_set():
            for source, client in clients.items():
                key = self.settings.cursor_key(source)
                sweep = Sweep(stored.get(key), self.settings.overlap_ms, self.settings.trust_order,
                              self.settings.since_ms)
                total += await self._sweep(source, client, sweep, buckets[source], seen[source])
                if sweep.stored is not None:
                    stored[key] = sweep.stored
                    seen[source].forget_before(sweep.since)
            if self.settings.once:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.settings.poll_interval_s)
        return total

    def _client(self, source: Source) -> Any:
        try:
            return make_client("securityhub", source.region, endpoint_url=self.settings.endpoint_url,
                               max_attempts=self.settings.max_attempts, role_arn=source.role_arn,
                               sts_endpoint_url=self.settings.sts_endpoint_url)
        except Exception as exc:
            raise aws_error(exc, f"Security Hub client for {source.name}") from None

    async def _sweep(self, source: Source, client: Any, sweep: Sweep, bucket: TokenBucket,
                     seen: SeenSet) -> int:
        """One pass; a throttled pass that botocore gave up on is retried from the cursor
        (what this process already sent is skipped), backing off each time."""
        backoff = 1.0
        while True:
            try:
                count = await self._pass(source, client, sweep, bucket, seen)
                self.swept.add(source)
                forward_metrics.polled("securityhub")
                return count
            except Exception as exc:
                if not is_aws_error(exc):
                    raise
                # Fail fast on bad configuration (first sweep); once it has worked, a
                # continuous poller rides out outages instead of exiting.
                transient = is_throttling(exc) or (not self.settings.once and source in self.swept)
                if not transient or self.stop.is_set():
                    where = self.settings.endpoint_url or f"Security Hub in {source.region}"
                    raise aws_error(exc, f"GetFindings at {where}") from None
                log.warning("%s: %s; again in %.0f s", source.name,
                            "throttled after retries" if is_throttling(exc) else one_line(exc), backoff)
                forward_metrics.SWEEP_RETRIES.inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                sweep.restart()

    async def _pass(self, source: Source, client: Any, sweep: Sweep, bucket: TokenBucket,
                    seen: SeenSet) -> int:
        until_ms = int(time.time() * 1000)
        pages = finding_pages(client, since_ms=sweep.since, until_ms=until_ms,
                              page_size=self.settings.page_size)
        count = 0
        while True:
            if self.stop.is_set():
                return count  # not finished: the cursor stays where the acks put it
            wait = bucket.reserve(self.clock())
            if wait > 0:
                await asyncio.sleep(wait)
            page = await asyncio.to_thread(next, pages, None)
            if page is None:
                break
            forward_metrics.GETFINDINGS_PAGES.inc()
            records = wanted_records(page, sweep, seen, source=source.name, policy=self.policy,
                                     now_ms=int(time.time() * 1000))
            sent = await self.sink.send_all(records)
            forward_metrics.forwarded("securityhub", sent)
            count += sent
            moved = sweep.page_acked([r.updated_at for r in records if r.updated_at is not None])
            if moved is not None:
                await self._save(source, moved)
            self.progress.add(len(records), sweep.newest)
        moved = sweep.finished()
        if moved is not None:
            await self._save(source, moved)
        return count

    async def _save(self, source: Source, updated_at_ms: int) -> None:
        key = self.settings.cursor_key(source)
        await self.cursor.save(key, updated_at_ms)
        forward_metrics.cursor_moved(key, updated_at_ms)


async def run_poller(settings: PollSettings, cursor: CursorStore) -> int:
    """Forward until stopped (or, with `once`, up to now); the number of findings sent."""
    await asyncio.to_thread(check_credentials)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    sink = KafkaSink(settings.bootstrap, {Route.FINDINGS: settings.topic}, settings.partitions,
                     security=settings.security, pages=settings.pages,
                     writes=settings.writes)
    progress = Progress()
    try:
        await sink.start()
        poller = Poller(settings, sink, cursor, progress, Policy(), stop)
        return await poller.run()
    finally:
        progress.close()
        await cursor.close()
        await sink.stop()
