"""The library internals `streams.kafka.workarounds` relies on, pinned: each test fails
if faust-streaming or aiokafka changes what the workaround reaches into. (What the
workarounds achieve is tested on the real broker: tests/worker/test_worker_survival.py.)"""

from __future__ import annotations

import inspect

import aiokafka
from aiokafka.client import AIOKafkaClient
from faust.streams import Stream
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as driver

from streams.kafka import workarounds


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


def test_faust_s_consumer_keeps_committed_and_skipped_offsets_where_the_guard_reads_them() -> None:
    source = inspect.getsource(faust_consumer.Consumer.__init__)
    assert "self._committed_offset" in source and "self._gap = defaultdict(IntervalTree)" in source
    # Faust's own skipped offsets: added as intervals and merged, as the guard adds its own.
    add_gap = inspect.getsource(faust_consumer.Consumer._add_gap)
    assert "gap_for_tp.addi(" in add_gap and "gap_for_tp.merge_overlaps()" in add_gap


def test_faust_s_stream_reads_passively_and_has_no_way_to_remove_a_processor() -> None:
    assert callable(Stream._enable_passive)
    assert "self._processors" in inspect.getsource(Stream.__init__)
    assert callable(Stream.add_processor) and not hasattr(Stream, "remove_processor")
    # The worker's batches are take_events' own way of reading, with another closing rule.
    take_events = inspect.getsource(Stream.take_events)
    assert "self.add_processor(" in take_events and "self._enable_passive(" in take_events


def test_aiokafka_s_client_places_and_tracks_topics_where_the_outbox_reaches() -> None:
    assert inspect.iscoroutinefunction(AIOKafkaClient._wait_on_metadata)
    assert "self._topics" in inspect.getsource(AIOKafkaClient.__init__)
    assert callable(AIOKafkaClient.add_topic)
    # send_batch does not add its topic to the tracked ones (send does).
    assert "add_topic" not in inspect.getsource(aiokafka.AIOKafkaProducer.send_batch)


def test_faust_keeps_its_aiokafka_producer_where_the_worker_takes_it() -> None:
    assert callable(driver.Producer._ensure_producer)
    assert "self._producer" in inspect.getsource(driver.Producer._ensure_producer)


def test_faust_s_rocksdb_store_keeps_one_database_per_partition_with_encoded_keys() -> None:
    from faust.stores import rocksdb  # the test set-up installs the rocksdb extra

    for name in ("_db_for_partition", "_encode_key", "_decode_key", "set_persisted_offset"):
        assert callable(getattr(rocksdb.Store, name)), name
    assert workarounds.is_rocksdb(rocksdb.Store.__new__(rocksdb.Store))


def test_aiokafka_s_clients_keep_the_cluster_metadata_where_the_workarounds_ask_for_it() -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    assert "self._client = AIOKafkaClient(" in inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    assert "self._client = AIOKafkaClient(" in inspect.getsource(AIOKafkaAdminClient.__init__)
    assert inspect.iscoroutinefunction(AIOKafkaClient.fetch_all_metadata)
    # topics() fetches every topic's metadata and keeps only their names.
    assert "fetch_all_metadata" in inspect.getsource(aiokafka.AIOKafkaConsumer.topics)


def test_aiokafka_wraps_each_record_where_the_bare_consumer_takes_the_batch_s_own() -> None:
    from aiokafka.consumer import fetcher

    workarounds.bare_records()
    patched = fetcher.PartitionRecords._consumer_record
    workarounds.bare_records()
    assert fetcher.PartitionRecords._consumer_record is patched and patched.flapguard_bare is True
    original = inspect.unwrap(patched)
    assert original is not patched  # aiokafka's own, called for every other consumer
    # aiokafka's: one ConsumerRecord per record, from the deserializers it was given.
    source = inspect.getsource(original)
    assert "self._value_deserializer(record.value)" in source and "return ConsumerRecord(" in source
    records = fetcher.PartitionRecords
    assert "self._consumer_record(tp, record)" in inspect.getsource(records._unpack_records)
    assert "self._value_deserializer = value_deserializer" in inspect.getsource(records.__init__)
    assert "value_deserializer=self._value_deserializer" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)

    class Records:
        _value_deserializer = staticmethod(workarounds.bare_value)

    record = object()
    assert patched(Records(), None, record) is record
