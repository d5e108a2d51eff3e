"""Where the worker reaches into faust-streaming's and aiokafka's internals for something
their settings do not offer. Checked against faust-streaming 0.15.3 and aiokafka 0.14.0
(pinned in pyproject.toml); tests/worker/test_workarounds.py fails if either changes
under them. (The offset guard, `streams.worker.offsets`, and the producer's topic
tracking, `Outbox._track`, answer two defects of their own; docs/operations.md lists all.)
"""

from __future__ import annotations

import functools
from typing import Any

READ_COMMITTED = "read_committed"


def read_committed_consumer() -> None:
    """faust-streaming 0.15 creates its consumer read_uncommitted unless the app is
    `exactly_once` (`AIOKafkaConsumerThread._create_worker_consumer`): the worker would
    decide the records of aborted transactions, which the offset guard's own reader
    (read_committed) never sees, so the two paths would disagree. The consumer is made
    read_committed as Faust creates it: aiokafka hands `_isolation_level` to its fetcher
    when it starts. Idempotent."""
    from faust.transport.drivers import aiokafka as driver

    cls: Any = driver.AIOKafkaConsumerThread
    original = cls._create_worker_consumer
    if getattr(original, "flapguard_read_committed", False):
        return

    @functools.wraps(original)
    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._isolation_level = READ_COMMITTED
        return consumer

    create.flapguard_read_committed = True  # type: ignore[attr-defined]
    cls._create_worker_consumer = create


def last_stable_offset(app: Any, tp: Any) -> int | None:
    """How far a read_committed consumer can read `tp` (its last stable offset): the
    records of a transaction still open lie beyond it. Faust's `highwater` gives the high
    watermark unless the app is `exactly_once`. None until a fetch has told."""
    consumer = app.consumer._thread._ensure_consumer()
    offset = consumer.last_stable_offset(tp)
    return int(offset) if offset is not None and offset >= 0 else None
