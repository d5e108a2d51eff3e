"""The decision policy: severities, window, hold, first-sight age, state TTL and the
input limits (docs/design.md §2, §3). Pure."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from fnmatch import fnmatchcase
from typing import Any

from streams.config import UNIT_MS, ConfigError, format_duration, parse_duration_ms


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


class Archives(StrEnum):
    """Which archives of a control may be a predecessor (docs/design.md §3, pairing policy)."""

    ANY = "any"  # every archive of a failing control finding
    # Only Security Hub's NOT_AVAILABLE archive of the seed incident: AWS Config answered
    # NOT_APPLICABLE (`CONFIG_RETURNS_NOT_APPLICABLE`). An archive of a finding still
    # FAILED (not updated for days: typically a deleted resource) is continued by no
    # re-creation of its standard; a consolidation switch still continues it.
    NOT_APPLICABLE = "not_applicable"


NOT_APPLICABLE_REASON = "CONFIG_RETURNS_NOT_APPLICABLE"


@dataclass(frozen=True, slots=True)
class PairingRule:
    """How the findings of some controls pair: their window and which of their archives
    may be a predecessor. The first rule whose patterns match a control applies."""

    name: str
    controls: tuple[str, ...]  # shell-style patterns on the control id: "Lambda.*"
    window_ms: int | None = None  # None: `--window`
    archives: Archives = Archives.ANY

    def matches(self, control_id: str) -> bool:
        return any(fnmatchcase(control_id, pattern) for pattern in self.controls)


def pairing_rules(data: dict[str, Any], source: str) -> tuple[PairingRule, ...]:
    """The `[[pairing]]` tables of a pairing policy file (TOML, read by the caller)."""
    unknown = sorted(set(data) - {"pairing"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (only [[pairing]] tables)")
    tables = data.get("pairing", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: pairing must be a list of [[pairing]] tables")
    rules = []
    for i, table in enumerate(tables, start=1):
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: pairing {i} is not a table")
        name = str(table.get("name") or f"pairing {i}")
        where = f"{source}: {name}"
        extra = sorted(set(table) - {"name", "controls", "window", "archives"})
        if extra:
            raise ConfigError(f"{where}: unknown key {extra[0]!r}")
        controls = table.get("controls")
        if (not isinstance(controls, list) or not controls
                or not all(isinstance(c, str) and c for c in controls)):
            raise ConfigError(f"{where}: controls must be a non-empty list of patterns")
        window = table.get("window")
        if window is not None and not isinstance(window, str):
            raise ConfigError(f"{where}: window must be a duration such as \"2h\"")
        try:
            window_ms = None if window is None else parse_duration_ms(window)
            archives = Archives(table.get("archives", "any"))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except ValueError:
            choices = ", ".join(a.value for a in Archives)
            raise ConfigError(f"{where}: archives must be one of {choices}") from None
        rules.append(PairingRule(name, tuple(controls), window_ms, archives))
    return tuple(rules)


def pairing_toml(rules: tuple[PairingRule, ...]) -> str:
    """`rules` as a pairing policy file that `pairing_rules` reads back."""
    lines = []
    for rule in rules:
        lines += ["[[pairing]]", f"name = {_toml_string(rule.name)}",
                  "controls = [" + ", ".join(_toml_string(c) for c in rule.controls) + "]"]
        if rule.window_ms is not None:
            lines.append(f"window = {_toml_string(format_duration(rule.window_ms))}")
        lines += [f"archives = {_toml_string(rule.archives.value)}", ""]
    return "\n".join(lines)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=4096)
def _rule_for(rules: tuple[PairingRule, ...], control_id: str) -> PairingRule | None:
    return next((rule for rule in rules if rule.matches(control_id)), None)


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
    # Per-control pairing (docs/design.md §3, pairing policy); none: `window_ms` and any
    # archive for every control.
    pairing: tuple[PairingRule, ...] = ()
    # Characters of any one string (key or value) of a finding. ASFF's longest
    # documented fields are 1024 characters; embedded policy documents run longer.
    max_string_length: int = 32 * 1024

    def window_for(self, control_id: str) -> int:
        """The pairing window of a control."""
        if not self.pairing:
            return self.window_ms
        rule = _rule_for(self.pairing, control_id)
        return self.window_ms if rule is None or rule.window_ms is None else rule.window_ms

    def archive_may_precede(self, control_id: str, compliance_status: str | None,
                            reason_codes: tuple[str, ...]) -> bool:
        """Whether an archive of a failing control finding with this signature may be
        continued by a re-creation of its own standard under the control's pairing rule
        (a consolidation switch continues any)."""
        if not self.pairing:
            return True
        rule = _rule_for(self.pairing, control_id)
        if rule is None or rule.archives is Archives.ANY:
            return True
        return compliance_status == "NOT_AVAILABLE" and NOT_APPLICABLE_REASON in reason_codes

    @property
    def widest_window_ms(self) -> int:
        """The longest window of any control: what expiry must keep archives for."""
        return max([self.window_ms, *(r.window_ms for r in self.pairing if r.window_ms is not None)])

    def __post_init__(self) -> None:
        for name in ("window_ms", "hold_ms", "first_sight_age_ms", "state_ttl_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.removesuffix('_ms').replace('_', '-')} must not be negative")
        if self.bucket_ms <= 0 or self.sweep_every_ms <= 0:
            raise ConfigError("bucket and sweep durations must be positive")
        for name in ("max_message_bytes", "max_findings_per_message", "max_depth", "max_string_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
