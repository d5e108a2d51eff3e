"""Waiting for the broker: backoff at start-up, and the lost/back lines while running."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAuthorizationFailedError

from streams.kafka.availability import BrokerWatch, is_unavailable, retry_while_unavailable


def test_unavailable_means_unreachable_not_refused() -> None:
    assert is_unavailable(KafkaConnectionError("Unable to bootstrap"))
    assert is_unavailable(KafkaError("Unable to get cluster metadata over all known brokers"))
    assert is_unavailable(ConnectionRefusedError())
    assert not is_unavailable(TopicAuthorizationFailedError())
    assert not is_unavailable(ssl.SSLCertVerificationError())
    assert not is_unavailable(ValueError("bad option"))


def test_start_up_retries_with_growing_capped_delays_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    failures = 7
    calls: list[int] = []
    slept: list[float] = []

    async def action() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise KafkaConnectionError("Unable to bootstrap")
        return "topics"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    caplog.set_level(logging.WARNING, "flapguard.broker")
    result = asyncio.run(retry_while_unavailable(action, servers="b:9092", what="creating topics",
                                                 first_delay_s=0.5, max_delay_s=8.0, sleep=sleep,
                                                 jitter=lambda: 0.0))
    assert result == "topics"
    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == failures + 1
    assert lines[0].startswith(
        "Kafka broker at b:9092 unavailable (KafkaConnectionError: Unable to bootstrap)")
    assert "attempt 1 failed, next in 0.5 s" in lines[0]
    assert "available after" in lines[-1] and "8 attempts" in lines[-1]


def test_start_up_raises_at_once_what_waiting_cannot_fix() -> None:
    slept: list[float] = []

    async def action() -> None:
        raise TopicAuthorizationFailedError()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(retry_while_unavailable(action, servers="b:9092", what="x", sleep=sleep))
    assert slept == []


def test_watch_says_lost_once_reminds_then_says_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    up = [True]

    async def probe() -> None:
        if not up[0]:
            raise KafkaError("Unable to get cluster metadata over all known brokers")

    watch = BrokerWatch("b:9092", probe, remind_every_s=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "flapguard.broker")

    def check_at(t: float) -> bool:
        now[0] = t
        return asyncio.run(watch.check())

    assert check_at(0)
    up[0] = False
    assert [check_at(t) for t in (2, 4, 30, 62, 64)] == [False] * 5
    up[0] = True
    assert check_at(70)
    assert check_at(72)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("Kafka broker at b:9092 unreachable (KafkaError: Unable to get cluster")
    assert "nothing is dropped" in lines[0]
    assert "still unreachable after 60 s" in lines[1]
    assert "reachable again after 68 s" in lines[2]
    assert watch.outages == 1


def test_watch_counts_a_probe_that_hangs_as_lost() -> None:
    async def probe() -> None:
        await asyncio.sleep(10)

    watch = BrokerWatch("b:9092", probe, timeout_s=0.01)
    assert asyncio.run(watch.check()) is False
    assert watch.lost_since is not None
