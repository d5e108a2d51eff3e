"""What every writer of flapguard shares: the compression it writes with, the size of its
largest request, and the replication of the topics it creates. One setting for the
worker, the forwarders, replay, the notifier and the poller's cursor, so that a record
one of them writes fits the others' limits (docs/operations.md, "Kafka client settings,
and why")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.config import ConfigError, format_size
from streams.kafka.topics import Replication

# Every codec a Kafka producer may use. Reading them needs no setting: the consumer
# decodes whatever a batch says (snappy, lz4 and zstd through cramjam, a dependency).
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")

# lz4: every Kafka client and broker version since 0.10 reads it, it costs the least CPU
# of the codecs (the worker shares its cores with the consumer thread), and JSON alerts
# and decisions shrink to about a third.
DEFAULT_COMPRESSION = "lz4"

# Kafka's own default `message.max.bytes` is 1 MiB + 12 bytes: a request of 1 MiB fits
# a broker and a topic left at their defaults.
DEFAULT_MAX_REQUEST_SIZE = 1024 * 1024

# Room that one record needs in a request beside its key, value and headers: the
# produce request's header, the record batch's header (61 bytes) and the record's own
# framing. Generous, so that a record of `record_limit` always fits.
REQUEST_OVERHEAD = 16 * 1024

# Below this, a GetFindings page of one finding (Security Hub allows 240 KB) might not fit.
MIN_REQUEST_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    compression: str = DEFAULT_COMPRESSION
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    replication: Replication = field(default_factory=Replication)

    def __post_init__(self) -> None:
        if self.compression not in CODECS:
            raise ConfigError(f"unknown --compression {self.compression!r} (one of {', '.join(CODECS)})")
        if self.max_request_size < MIN_REQUEST_SIZE:
            raise ConfigError(f"--max-request-size must be at least {format_size(MIN_REQUEST_SIZE)}")

    @property
    def record_limit(self) -> int:
        """The most bytes of key, value and headers one record may carry."""
        return self.max_request_size - REQUEST_OVERHEAD

    @property
    def compression_type(self) -> str | None:
        return None if self.compression == "none" else self.compression

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `AIOKafkaProducer`."""
        return {"compression_type": self.compression_type, "max_request_size": self.max_request_size}

    def faust_settings(self) -> dict[str, Any]:
        """Keyword arguments of `faust.App`: its producer writes the outputs, the keyed
        topic and the changelogs."""
        return {"producer_compression_type": self.compression_type,
                "producer_max_request_size": self.max_request_size}


DEFAULT_PRODUCER = ProducerSettings()
