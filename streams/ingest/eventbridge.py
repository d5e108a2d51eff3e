"""The EventBridge rule that routes Security Hub findings to the SQS queue (or Lambda)
the forwarder reads, and a small matcher for its patterns. Pure.

The rule takes `Security Hub Findings - Imported` only: adding the v2 detail-type
(`Findings Imported V2`) would deliver every finding twice. moto's EventBridge cannot
match on `detail.findings[]`, so the pattern is checked here, against the public
sample envelopes, with the subset of EventBridge's matching rules it and operators'
variants use: value lists, nested objects, arrays matched by any element, `prefix`,
`anything-but`, `exists`.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

RULE_FILE = "eventbridge-rule.json"


def rule_pattern() -> dict[str, Any]:
    """The shipped event pattern (`streams/data/eventbridge-rule.json`)."""
    data = resources.files("streams").joinpath("data", RULE_FILE).read_bytes()
    pattern: dict[str, Any] = orjson.loads(data)
    return pattern


def matches(pattern: dict[str, Any], event: Any) -> bool:
    """Whether EventBridge would deliver `event` to a rule with `pattern`."""
    if not isinstance(event, dict):
        return False
    return all(_field_matches(condition, event.get(name), name in event)
               for name, condition in pattern.items())


def _field_matches(condition: Any, value: Any, present: bool) -> bool:
    if isinstance(condition, dict):
        # A nested pattern: arrays of objects match when any element does.
        candidates = value if isinstance(value, list) else [value]
        return any(matches(condition, item) for item in candidates)
    if not isinstance(condition, list):
        raise ValueError(f"pattern values must be lists or objects, got {condition!r}")
    values = value if isinstance(value, list) else [value]
    return any(_rule_matches(rule, values, present) for rule in condition)


def _rule_matches(rule: Any, values: list[Any], present: bool) -> bool:
    if not isinstance(rule, dict):
        return present and rule in values
    if "exists" in rule:
        return bool(rule["exists"]) == present
    if not present:
        return False
    if "prefix" in rule:
        return any(isinstance(v, str) and v.startswith(rule["prefix"]) for v in values)
    if "anything-but" in rule:
        excluded = rule["anything-but"]
        excluded = excluded if isinstance(excluded, list) else [excluded]
        return all(v not in excluded for v in values)
    raise ValueError(f"unsupported pattern operator {rule!r}")
