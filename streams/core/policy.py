"""The decision policy: severities, window, hold, first-sight age, state TTL and the
input limits (docs/design.md §2, §3). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from streams.config import UNIT_MS, ConfigError


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

    window_ms: int = 30 * UNIT_MS["h"]
    hold_ms: int = 5 * UNIT_MS["m"]
    min_severity: Severity = Severity.LOW
    first_sight_age_ms: int = 24 * UNIT_MS["h"]
    state_ttl_ms: int = 90 * UNIT_MS["d"]
    # Width of the tumbling buckets that hold archived predecessors. Pairing is exact
    # whatever this is; it only sets how many buckets a look-up reads.
    bucket_ms: int = 24 * UNIT_MS["h"]
    # A finding updated later than the wall clock plus this is a forged clock.
    future_tolerance_ms: int = 1 * UNIT_MS["h"]
    # How often, in event time, expired state is swept.
    sweep_every_ms: int = 1 * UNIT_MS["h"]
    # Input limits (docs/design.md §2). Over any of them: dead letter, never a crash.
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
