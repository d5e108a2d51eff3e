"""What `flapguard notify redeliver` decides before sending: where a dead letter came
from, and whether a PagerDuty trigger's incident was resolved since."""

from __future__ import annotations

from streams.notify.deliveries import Origin
from streams.notify.redeliver import parse_origin, resolved_since
from streams.notify.sinks import alert_from_record
from tests.notify.test_sinks import record

ALERT = alert_from_record(record(dedup_key="dk-1"))
TRIGGER = Origin("securityhub.alerts", 2, 40)


def test_the_origin_header_names_topic_partition_and_offset_even_with_slashes_in_the_topic() -> None:
    assert parse_origin(b"securityhub.alerts/2/40") == TRIGGER
    assert parse_origin(b"team/a.alerts/0/7") == Origin("team/a.alerts", 0, 7)
    assert parse_origin(b"") is None
    assert parse_origin(b"no-offsets") is None


def test_a_resolution_written_after_the_trigger_closes_its_incident() -> None:
    later = Origin("securityhub.alerts", 2, 41)
    assert resolved_since(ALERT, TRIGGER, {"dk-1": [later]}) == later


def test_a_resolution_of_another_key_or_before_the_trigger_does_not() -> None:
    assert resolved_since(ALERT, TRIGGER, {"dk-2": [Origin("securityhub.alerts", 2, 41)]}) is None
    assert resolved_since(ALERT, TRIGGER, {"dk-1": [Origin("securityhub.alerts", 2, 39)]}) is None


def test_without_an_origin_any_resolution_of_the_key_counts_so_nothing_is_reopened() -> None:
    earlier = Origin("securityhub.alerts", 2, 3)
    assert resolved_since(ALERT, None, {"dk-1": [earlier]}) == earlier
