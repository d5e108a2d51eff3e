"""The library internals `streams.worker.workarounds` relies on, pinned: each test fails
if faust-streaming or aiokafka changes what the workaround reaches into. (What the
workarounds achieve is tested on the real broker: tests/worker/test_worker_survival.py.)"""

from __future__ import annotations

import inspect

import aiokafka
from faust.transport.drivers import aiokafka as driver

from streams.worker import workarounds


def test_faust_creates_its_consumer_read_uncommitted_unless_exactly_once() -> None:
    # Faust's own, whether or not an earlier test's worker has installed the patch.
    source = inspect.getsource(inspect.unwrap(driver.AIOKafkaConsumerThread._create_worker_consumer))
    assert 'isolation_level: str = "read_uncommitted"' in source
    assert "isolation_level=isolation_level" in source


def test_aiokafka_hands_the_consumers_isolation_level_to_its_fetcher_at_start() -> None:
    assert "self._isolation_level = isolation_level" in inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    assert "isolation_level=self._isolation_level" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)


def test_the_patch_makes_faust_s_consumer_read_committed_and_is_installed_once() -> None:
    workarounds.read_committed_consumer()
    first = driver.AIOKafkaConsumerThread._create_worker_consumer
    workarounds.read_committed_consumer()
    assert driver.AIOKafkaConsumerThread._create_worker_consumer is first
    assert first.flapguard_read_committed is True
    assert inspect.unwrap(first) is not first  # Faust's own is kept, and called


def test_the_last_stable_offset_is_where_the_workaround_reads_it() -> None:
    assert callable(aiokafka.AIOKafkaConsumer.last_stable_offset)
    assert "_ensure_consumer" in vars(driver.AIOKafkaConsumerThread)
    assert "self._thread" in inspect.getsource(driver.Consumer.highwater)
