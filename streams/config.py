"""Configuration in one typed place: durations, the decision policy, worker settings.

Pure: no I/O. The CLI maps `--some-name` flags and `FLAPGUARD_SOME_NAME` variables
onto these dataclasses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.kafka_auth import BrokerSecurity


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


ENV_PREFIX = "FLAPGUARD_"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line for the user."""


def env_name(flag: str) -> str:
    """`--ssl-ca-file` -> `FLAPGUARD_SSL_CA_FILE`: every flag's environment variable."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def plaintext() -> BrokerSecurity:
    """No TLS, no SASL: the default broker security (imported only when used)."""
    from streams.kafka_auth import PLAINTEXT

    return PLAINTEXT


def parse_duration_ms(text: str) -> int:
    """`90s`, `5m`, `24h`, `7d` (a bare number means seconds) -> milliseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"not a duration: {text!r} (write it like 90s, 5m, 24h or 7d)")
    number, unit = match.groups()
    return round(float(number) * _UNIT_MS[unit or "s"])


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNIT_BYTES = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(text: str) -> int:
    """`4MiB`, `512KiB`, `1000` (bytes) -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"not a size: {text!r} (write it like 4MiB, 512KiB or 1000)")
    number, unit = match.groups()
    return int(number) * _UNIT_BYTES[unit or "B"]


def format_size(size: int) -> str:
    """The shortest exact form: 4194304 -> `4MiB`."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _UNIT_BYTES[unit] == 0:
            return f"{size // _UNIT_BYTES[unit]}{unit}"
    return str(size)


def format_duration(ms: int) -> str:
    """The shortest exact form: 108000000 -> `30h`."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


class Severity(IntEnum):
    """ASFF `Severity.Label`, ordered so that comparisons mean 'more severe'."""

    INFORMATIONAL = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.name for s in cls)
            raise ConfigError(f"unknown severity {text!r} (one of {names})") from None


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the decision core needs to know; all durations in milliseconds."""

    window_ms: int = 30 * _UNIT_MS["h"]
    hold_ms: int = 5 * _UNIT_MS["m"]
    min_severity: Severity = Severity.LOW
    first_sight_age_ms: int = 24 * _UNIT_MS["h"]
    state_ttl_ms: int = 90 * _UNIT_MS["d"]
    # Width of the tumbling buckets that hold archived predecessors. Pairing is exact
    # whatever this is; it only sets how many buckets a look-up reads.
    bucket_ms: int = 24 * _UNIT_MS["h"]
    # A finding updated later than the wall clock plus this is a forged clock.
    future_tolerance_ms: int = 1 * _UNIT_MS["h"]
    # How often, in event time, expired state is swept.
    sweep_every_ms: int = 1 * _UNIT_MS["h"]
    # Input limits (DESIGN §2, issue 8). Over any of them: dead letter, never a crash.
    max_message_bytes: int = 4 * 1024 * 1024
    max_findings_per_message: int = 1000
    # Nesting of one finding (the finding object is level 1). Real ASFF stays under 10.
    max_depth: int = 32
    # Characters of any one string (key or value) of a finding. ASFF's longest
    # documented fields are 1024 characters; embedded policy documents run longer.
    max_string_length: int = 32 * 1024

    def __post_init__(self) -> None:
        for name in ("window_ms", "hold_ms", "first_sight_age_ms", "state_ttl_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.removesuffix('_ms').replace('_', '-')} must not be negative")
        if self.bucket_ms <= 0 or self.sweep_every_ms <= 0:
            raise ConfigError("bucket and sweep durations must be positive")
        for name in ("max_message_bytes", "max_findings_per_message", "max_depth", "max_string_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")


@dataclass(frozen=True, slots=True)
class Topics:
    findings: str = "securityhub.findings"
    alerts: str = "securityhub.alerts"
    suppressed: str = "securityhub.suppressed"
    deadletter: str = "securityhub.deadletter"
    decisions: str | None = None


# A batch holding records closes once this long passes with no new one (see
# `streams.batches`): Faust hands over a fetch response's records within microseconds
# of each other, and the next response comes tens of milliseconds later.
BATCH_QUIET_S = 0.002


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The Faust worker's edges: broker, topics, app identity and store."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security: BrokerSecurity = field(default_factory=plaintext)
    app_id: str = "flapguard"
    topics: Topics = field(default_factory=Topics)
    policy: Policy = field(default_factory=Policy)
    partitions: int = 8
    store: str = "memory://"
    data_dir: str = ".flapguard-data"
    # Wall-clock idle time after which a partition releases its reorder buffer.
    idle_flush_ms: int = 5 * _UNIT_MS["m"]
    # Records taken per agent batch, and the longest wait to fill one: the broker's
    # acknowledgements are awaited once per batch, not per record.
    batch_size: int = 500
    batch_wait_ms: int = 50
    session_timeout_s: float = 30.0
    heartbeat_interval_s: float = 3.0
    log_level: str = "WARNING"
    # Prometheus endpoint `host:port` (port 0: any free port); None: no endpoint.
    metrics_address: str | None = "127.0.0.1:9464"
    # Label decisions by AWS account too (one series per account and decision).
    metrics_account_label: bool = False
