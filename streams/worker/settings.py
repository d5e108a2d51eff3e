"""The worker's settings: broker, topics, app identity, store, batching, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streams.config import UNIT_MS, ConfigError, require_extra
from streams.core.policy import Policy
from streams.kafka.producer import ProducerSettings
from streams.kafka.topics import Topics
from streams.logs import FORMATS

if TYPE_CHECKING:
    from streams.kafka.security import BrokerSecurity


def plaintext() -> BrokerSecurity:
    """No TLS, no SASL: the default broker security (imported only when used)."""
    from streams.kafka.security import PLAINTEXT

    return PLAINTEXT


# A batch holding records closes once this long passes with no new one (see
# `streams.worker.batches`): Faust hands over a fetch response's records within microseconds
# of each other, and the next response comes tens of milliseconds later.
BATCH_QUIET_S = 0.002

# Faust's table stores flapguard supports.
STORES = ("memory://", "rocksdb://")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The Faust worker's edges: broker, topics, app identity and store."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security: BrokerSecurity = field(default_factory=plaintext)
    app_id: str = "flapguard"
    topics: Topics = field(default_factory=Topics)
    policy: Policy = field(default_factory=Policy)
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    partitions: int = 8
    store: str = "memory://"
    data_dir: str = ".flapguard-data"
    # Wall-clock idle time after which a partition releases its reorder buffer.
    idle_flush_ms: int = 5 * UNIT_MS["m"]
    # Records taken per agent batch, and the longest wait to fill one: the broker's
    # acknowledgements are awaited once per batch, not per record.
    batch_size: int = 500
    batch_wait_ms: int = 50
    session_timeout_s: float = 30.0
    heartbeat_interval_s: float = 3.0
    # flapguard's own lines from INFO (ready, stopped, recoveries); the libraries' from WARNING.
    log_level: str = "INFO"
    log_format: str = "plain"
    # Prometheus endpoint `host:port` (port 0: any free port); None: no endpoint.
    metrics_address: str | None = "127.0.0.1:9464"
    # Label decisions by AWS account too (one series per account and decision).
    metrics_account_label: bool = False
    # Write to output topics another app id writes (docs/operations.md).
    allow_shared_outputs: bool = False

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise ConfigError(f"unknown --store {self.store!r} (one of {', '.join(STORES)})")
        if self.log_format not in FORMATS:
            raise ConfigError(f"unknown --log-format {self.log_format!r} (one of {', '.join(FORMATS)})")
        if self.store == "rocksdb://":
            require_extra("rocksdict", "rocksdb", "--store rocksdb://")
