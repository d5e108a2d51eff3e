"""What every producer writes with (`streams.kafka.producer`): one codec and one request
limit, checked before anything starts."""

from __future__ import annotations

import pytest

from streams.config import ConfigError
from streams.kafka.producer import CODECS, REQUEST_OVERHEAD, ProducerSettings


def test_the_default_writes_lz4_in_requests_a_default_broker_takes() -> None:
    d = ProducerSettings()
    assert d.aiokafka_kwargs() == {"compression_type": "lz4", "max_request_size": 1024 * 1024}
    assert d.faust_settings() == {"producer_compression_type": "lz4",
                                  "producer_max_request_size": 1024 * 1024}
    assert d.record_limit == 1024 * 1024 - REQUEST_OVERHEAD


@pytest.mark.parametrize("codec", CODECS)
def test_every_kafka_codec_can_be_written(codec: str) -> None:
    expected = None if codec == "none" else codec
    assert ProducerSettings(compression=codec).aiokafka_kwargs()["compression_type"] == expected


def test_a_bad_codec_or_a_tiny_request_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"unknown --compression 'brotli' \(one of none, gzip"):
        ProducerSettings(compression="brotli")
    with pytest.raises(ConfigError, match=r"--max-request-size must be at least 256KiB"):
        ProducerSettings(max_request_size=1000)


def test_every_codec_round_trips_through_aiokafka() -> None:
    """The codecs are installed (cramjam): a batch of each is written and read back."""
    from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    for codec in ("gzip", "snappy", "lz4", "zstd"):
        attributes = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=attributes, is_transactional=False,
                                            producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                            batch_size=1 << 20)
        builder.append(0, timestamp=None, key=None, value=b'{"a": 1}' * 100, headers=[])
        batch = DefaultRecordBatch(bytes(builder.build()))
        assert [r.value for r in batch] == [b'{"a": 1}' * 100], codec
