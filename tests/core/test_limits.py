"""Input limits: message size, findings per message, nesting depth and string
length. Over a limit a finding is a dead letter with its reason and its bytes; a
finding over a limit never takes the other findings of its message with it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.config import ConfigError
from streams.core.findings import (
    Finding,
    Rejected,
    item_limit_violation,
    limit_violation,
    parse_document,
    within_limits_by_size,
)
from streams.core.policy import Policy
from tests.builders import NOW_MS, dumps, envelope, finding, load_public, page, parse


def nested(levels: int) -> Any:
    """A value that adds `levels` levels of nesting: alternately objects and arrays."""
    value: Any = "leaf"
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


def deep_finding(extra_levels: int, **kwargs: Any) -> dict[str, Any]:
    """A finding whose depth is 2 (ProductFields' own level) plus `extra_levels`."""
    obj = finding(**kwargs)
    obj["ProductFields"] = {"Deep": nested(extra_levels)}
    return obj


def depth_of(value: Any) -> int:
    """The reference definition: the finding object itself is level 1."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def longest_string(value: Any) -> int:
    if isinstance(value, dict):
        return max((max(len(k), longest_string(v)) for k, v in value.items()), default=0)
    if isinstance(value, list):
        return max((longest_string(v) for v in value), default=0)
    return len(value) if isinstance(value, str) else 0


def test_defaults_are_generous_for_real_findings_and_bounded() -> None:
    policy = Policy()
    for name in ("asr-eventbridge-custom-action-cis-1.6-two-findings.json",
                 "asr-simdata-afsbp-redshift.1-cluster.json",
                 "awsdocs-2023-sample-cis140-3.7-standard-control.json"):
        document = load_public(name)
        assert limit_violation(document, policy) is None
        assert within_limits_by_size(dumps(document), policy), name
    assert (policy.max_depth, policy.max_string_length) == (32, 32 * 1024)


def test_a_finding_exactly_at_the_depth_limit_passes_and_one_level_more_is_too_deep() -> None:
    at_limit = deep_finding(10)
    limit = depth_of(at_limit)
    policy = Policy(max_depth=limit)
    [ok] = parse(at_limit, policy=policy)
    assert isinstance(ok, Finding)
    deeper = deep_finding(11)
    data = dumps(deeper)
    [bad] = parse(data, policy=policy)
    assert bad == Rejected("too_deep", data, deeper["Id"])


# Above the longest string of the sample finding (its Description).
LIMIT = longest_string(finding()) + 50


def test_a_long_title_is_string_too_long_with_the_original_bytes() -> None:
    obj = finding(title="x" * (LIMIT + 1))
    data = dumps(obj)
    [bad] = parse(data, policy=Policy(max_string_length=LIMIT))
    assert bad == Rejected("string_too_long", data, obj["Id"])
    assert isinstance(parse(finding(title="x" * LIMIT), policy=Policy(max_string_length=LIMIT))[0], Finding)


def test_a_long_key_counts_as_a_long_string() -> None:
    obj = finding()
    obj["ProductFields"] = {"k" * (LIMIT + 1): "v"}
    [bad] = parse(obj, policy=Policy(max_string_length=LIMIT))
    assert isinstance(bad, Rejected) and bad.reason == "string_too_long"


def test_string_length_counts_characters_not_bytes() -> None:
    obj = finding(title="é" * LIMIT)  # twice as many bytes of UTF-8
    assert isinstance(parse(obj, policy=Policy(max_string_length=LIMIT))[0], Finding)


def test_one_finding_over_a_limit_does_not_hide_its_neighbours() -> None:
    """Whoever imports one finding into Security Hub must not be able to drop the
    real findings batched with it by making theirs too deep or too long."""
    good_before, good_after = finding("a"), finding("c")
    hostile = deep_finding(40, name="b")
    for document in (envelope([good_before, hostile, good_after]), page([good_before, hostile, good_after])):
        out = parse(document)
        assert [type(p) for p in out] == [Finding, Rejected, Finding]
        assert isinstance(out[1], Rejected)
        assert (out[1].reason, out[1].finding_id) == ("too_deep", hostile["Id"])
        assert orjson.loads(out[1].raw) == hostile


def test_a_rejected_finding_with_a_huge_id_gets_no_candidate_id() -> None:
    obj = finding()
    obj["Id"] = "i" * 5000
    [bad] = parse(obj, policy=Policy(max_string_length=LIMIT))
    assert isinstance(bad, Rejected) and bad.reason == "string_too_long"
    assert bad.finding_id is None


def test_nesting_beyond_what_the_json_parser_accepts_is_unparseable_not_a_crash() -> None:
    data = b"[" * 100_000 + b"]" * 100_000
    [bad] = parse(data)
    assert bad == Rejected("unparseable", data)


def test_api_pages_without_bytes_are_walked() -> None:
    """Forwarders hand decoded API pages over without bytes: no size screening."""
    [bad] = parse_document(deep_finding(40), b"", policy=Policy(), now_ms=NOW_MS)
    assert isinstance(bad, Rejected) and bad.reason == "too_deep"


@pytest.mark.parametrize("name", ["max_message_bytes", "max_findings_per_message", "max_depth",
                                  "max_string_length"])
def test_a_limit_below_one_is_a_configuration_error(name: str) -> None:
    with pytest.raises(ConfigError, match=name.replace("_", "-")):
        Policy(**{name: 0})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                       max_size=4),
    max_leaves=40,
)


@given(json_values, st.integers(1, 8), st.integers(1, 12))
def test_limit_violation_agrees_with_the_recursive_definitions(value: Any, depth: int, length: int) -> None:
    policy = Policy(max_depth=depth, max_string_length=length)
    breach = limit_violation(value, policy)
    too_deep = depth_of(value) > depth
    too_long = longest_string(value) > length
    assert (breach is None) == (not too_deep and not too_long)
    if breach == "too_deep":
        assert too_deep
    if breach == "string_too_long":
        assert too_long


@given(json_values, st.integers(1, 8), st.integers(1, 40))
def test_the_size_screen_never_passes_what_the_walk_rejects(value: Any, depth: int, length: int) -> None:
    policy = Policy(max_depth=depth, max_string_length=length)
    if within_limits_by_size(orjson.dumps(value), policy):
        assert limit_violation(value, policy) is None


@given(json_values, st.integers(1, 8), st.integers(1, 40))
def test_a_finding_of_a_larger_document_is_judged_as_the_walk_judges_it(value: Any, depth: int,
                                                                        length: int) -> None:
    """Findings of pages and multi-finding envelopes are screened on their own JSON,
    and walked only when the screen cannot vouch for them: the same verdict."""
    policy = Policy(max_depth=depth, max_string_length=length)
    assert item_limit_violation(value, policy) == limit_violation(value, policy)
