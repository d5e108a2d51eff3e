"""Routes: which alerts reach which sinks (TOML, Alertmanager-like first match/continue)."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from streams.notify.routing import Routes, RoutingError, check_configured, load_routes, parse_routes
from streams.notify.sinks import alert_from_record
from tests.notify.test_sinks import record

ALL = ["stdout", "slack", "pagerduty", "sns"]


def routes(text: str) -> Routes:
    return parse_routes(tomllib.loads(text))


def sinks(r: Routes, configured: list[str] = ALL, **overrides: Any) -> list[str]:
    return r.sinks_for(alert_from_record(record(**overrides)), configured)


def test_no_routes_send_everything_to_every_configured_sink() -> None:
    assert sinks(Routes(), ["slack", "sns"]) == ["slack", "sns"]
    assert sinks(Routes(), ["slack"], kind="resolved") == ["slack"]


def test_first_matching_route_wins() -> None:
    r = routes("""
[[route]]
match = { min_severity = "HIGH" }
sinks = ["pagerduty"]
[[route]]
match = {}
sinks = ["slack"]
""")
    assert sinks(r, severity="CRITICAL") == ["pagerduty"]
    assert sinks(r, severity="MEDIUM") == ["slack"]


def test_continue_adds_the_sinks_of_later_matching_routes() -> None:
    r = routes("""
[[route]]
match = { accounts = ["123456789012"] }
sinks = ["pagerduty"]
continue = true
[[route]]
match = { controls = ["IAM.*"] }
sinks = ["sns"]
[[route]]
match = { controls = ["RDS.*"] }
sinks = ["slack", "pagerduty"]
[[route]]
match = {}
sinks = ["stdout"]
""")
    assert sinks(r) == ["pagerduty", "slack"]
    assert sinks(r, account="999999999999") == ["slack", "pagerduty"]
    assert sinks(r, account="999999999999", control_id="EC2.1") == ["stdout"]


def test_unmatched_alerts_go_to_default_sinks() -> None:
    r = routes("""
default_sinks = ["sns"]
[[route]]
match = { regions = ["eu-west-1"] }
sinks = ["slack"]
""")
    assert sinks(r, region="eu-west-1") == ["slack"]
    assert sinks(r) == ["sns"]


@pytest.mark.parametrize(("match", "hit", "miss"), [
    ('{ min_severity = "HIGH" }', {"severity": "HIGH"}, {"severity": "MEDIUM"}),
    ('{ max_severity = "LOW" }', {"severity": "LOW"}, {"severity": "MEDIUM"}),
    ('{ accounts = ["111111111111"] }', {"account": "111111111111"}, {}),
    ('{ regions = ["eu-west-1", "us-east-1"] }', {"region": "us-east-1"}, {}),
    ('{ controls = ["RDS.4?"] }', {}, {"control_id": "RDS.4"}),
    ('{ kinds = ["regression", "reactivated"] }', {"kind": "regression"}, {}),
])
def test_each_matcher(match: str, hit: dict[str, Any], miss: dict[str, Any]) -> None:
    r = routes(f'default_sinks = []\n[[route]]\nmatch = {match}\nsinks = ["slack"]\n')
    assert sinks(r, **hit) == ["slack"]
    assert sinks(r, **miss) == []


def test_resolved_notifies_only_where_allowed() -> None:
    r = routes("""
notify_resolved = false
[[route]]
match = { accounts = ["123456789012"] }
sinks = ["pagerduty"]
[[route]]
match = { accounts = ["222222222222"] }
sinks = ["slack"]
notify_resolved = false
""")
    assert sinks(r, kind="resolved") == ["pagerduty"]
    assert sinks(r, kind="resolved", account="222222222222") == []
    assert sinks(r, kind="new", account="222222222222") == ["slack"]
    assert sinks(r, kind="resolved", account="333333333333") == []  # top-level false
    assert sinks(r, kind="new", account="333333333333") == ALL


def test_only_configured_sinks_are_used() -> None:
    r = routes('[[route]]\nmatch = {}\nsinks = ["slack", "sns"]\n')
    assert sinks(r, ["sns"]) == ["sns"]
    with pytest.raises(RoutingError, match="routes name sink 'slack', which is not configured"):
        check_configured(r, ["sns"])


@pytest.mark.parametrize(("text", "message"), [
    ('[[route]]\nsinks = ["email"]\n', "unknown sink 'email'"),
    ('[[route]]\nname = "x"\nmatch = {}\n', "route x: `sinks` is required"),
    ('[[route]]\nsinks = []\nmatch = { severity = "HIGH" }\n', "unknown key 'severity'"),
    ('[[route]]\nsinks = []\nmatch = { min_severity = "HUGE" }\n', "unknown severity 'HUGE'"),
    ('[[route]]\nsinks = []\nmatch = { kinds = ["archived"] }\n', "'archived' is not a valid Kind"),
    ('[[route]]\nsinks = []\nmatch = { accounts = [123456789012] }\n', "write values as strings"),
    ('[[route]]\nsinks = []\ncontinue = "yes"\n', "continue: expected true or false"),
    ('route = 3\n', "`route` must be an array"),
    ('colour = "red"\n', "unknown key 'colour'"),
])
def test_bad_routes_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(RoutingError, match=message) as info:
        routes(text)
    assert "\n" not in str(info.value)


def test_load_routes_names_the_file_on_errors(tmp_path: Path) -> None:
    broken = tmp_path / "routes.toml"
    broken.write_text("[[route]\n")
    with pytest.raises(RoutingError, match=re.escape(f"routes file {broken}")):
        load_routes(broken)
    with pytest.raises(RoutingError, match=r"routes file .*missing\.toml"):
        load_routes(tmp_path / "missing.toml")


def test_the_documented_example_file_loads_and_routes_as_its_comments_say() -> None:
    with resources.as_file(resources.files("streams") / "data" / "routes.example.toml") as path:
        r = load_routes(path)
    assert sinks(r, account="111111111111", severity="HIGH", control_id="EC2.1") == ["pagerduty", "slack"]
    assert sinks(r, account="111111111111", severity="HIGH") == ["pagerduty", "slack", "sns"]
    assert sinks(r, account="333333333333", control_id="EC2.1") == ["slack"]
    assert sinks(r, account="333333333333", control_id="EC2.1", kind="resolved") == []
    assert sinks(r, account="444444444444", control_id="EC2.1", severity="INFORMATIONAL") == []
    assert sinks(r, account="444444444444", control_id="EC2.1") == ["slack"]
    # Slack groups the production burst; the page never waits.
    prod = {d.sink: d.grouping for d in r.deliveries_for(
        alert_from_record(record(account="111111111111", severity="HIGH")), ALL)}
    assert prod["pagerduty"] is None and prod["sns"] is None
    assert prod["slack"] is not None and (prod["slack"].wait_s, prod["slack"].interval_s) == (30, 300)


LEGACY_FSBP = "aws-foundational-security-best-practices/v/1.0.0/RDS.45"
LEGACY_CIS = "cis-aws-foundations-benchmark/v/1.4.0/3.7"
DATABASES = """
[[route]]
match = { controls = ["RDS.*"] }
sinks = ["sns"]
[[route]]
match = { controls = ["*cis-aws-foundations-benchmark/*/3.*"] }
sinks = ["pagerduty"]
"""


def test_a_control_pattern_matches_a_legacy_finding_whose_control_the_standard_gives() -> None:
    r = routes(DATABASES)
    assert sinks(r, control_id=LEGACY_FSBP, generator_id=LEGACY_FSBP) == ["sns"]
    assert sinks(r, control_id="RDS.45", generator_id="security-control/RDS.45") == ["sns"]


def test_a_cis_numbered_legacy_finding_is_matched_by_its_generator_id_as_written() -> None:
    r = routes(DATABASES)
    assert sinks(r, control_id=LEGACY_CIS, generator_id=LEGACY_CIS) == ["pagerduty"]
    cis_12 = "arn:aws:securityhub:::ruleset/cis-aws-foundations-benchmark/v/1.2.0/rule/3.1"
    assert sinks(r, control_id=cis_12, generator_id=cis_12) == ["pagerduty"]
    assert sinks(r, ["slack", "sns"], control_id=LEGACY_CIS.replace("3.7", "1.10"),
                 generator_id="x") == ["slack", "sns"]


def test_a_pattern_on_the_whole_generator_id_still_matches_a_legacy_finding() -> None:
    r = routes('[[route]]\nmatch = { controls = ["aws-foundational-security-best-practices/*"] }\n'
               'sinks = ["slack"]\n')
    assert sinks(r, control_id=LEGACY_FSBP, generator_id=LEGACY_FSBP) == ["slack"]
