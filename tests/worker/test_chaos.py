"""A short chaos run (tests/chaos.py; `scripts/chaos` runs the long one): workers
SIGKILLed and restarted while plain, transactional and poison records arrive, and the
broker restarted once; nothing lost, nothing decided twice differently. Its own broker
(module scope), since it restarts it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.demo.brokers import KafkaBroker, default_kafka_libs
from tests.chaos import Plan, run_chaos

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    with KafkaBroker(default_kafka_libs()) as started:
        yield started


def test_workers_killed_at_random_and_a_broker_restart_lose_nothing(broker: KafkaBroker,
                                                                     tmp_path: Path) -> None:
    report = run_chaos(broker, tmp_path, Plan(kills=6, seed=5, accounts=3, days=40), log=lambda _: None)
    assert report.kills == 6 and report.broker_restarts == 1
    assert report.poison > 0 and report.aborted > 0 and report.expected_alerts > 20
    assert report.ok, report.figures() + f"\nlost {report.lost[:5]}\nunexpected {report.unexpected[:5]}" \
        f"\ninconsistent {report.inconsistent[:5]}\naborted decided {report.aborted_decided[:5]}" \
        f"\npoison missing {report.poison_missing[:5]}"
