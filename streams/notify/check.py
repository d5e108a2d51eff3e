"""`flapguard notify --check`: is each configured sink usable? Nothing is sent, unless a test
message is asked for (`--test-message`): then each sink gets one.

Without a test message the checks are requests no sink acts on:
- Slack and PagerDuty: an empty JSON object is POSTed. A working webhook or endpoint
  refuses it as a message (HTTP 400) and posts nothing; a revoked or mistyped webhook
  answers 403, 404 or 410; an unreachable one does not answer.
- SNS: GetTopicAttributes of the topic (it exists, the credentials may read it).
- Write-back: GetFindings of one finding (Security Hub is enabled, the credentials may read).
- stdout: always usable.

A problem names the sink and says what is wrong, never a webhook URL or routing key.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from streams.notify.service import (
    HttpSender,
    NotifySettings,
    PagerDutySender,
    Sender,
    SnsSender,
    aws_error,
    scrub,
)

TEST_TEXT = "flapguard notify --check: a test message. Security Hub alerts will arrive here."
# An answer to the empty probe that shows a live webhook or endpoint: it refused the probe
# as a message (or a stand-in accepted it).
PROBE_REFUSED_AS_A_MESSAGE = (400, 422)


@dataclass(frozen=True, slots=True)
class SinkCheck:
    sink: str
    problem: str | None = None  # None: usable

    def line(self) -> str:
        return f"sink {self.sink}: {self.problem or 'ok'}"


async def check_sinks(senders: dict[str, Sender], securityhub: Any = None,
                      *, test_message: bool = False) -> list[SinkCheck]:
    """One check per configured sink (and the write-back), side by side."""
    checks: list[tuple[str, Callable[[], Awaitable[str | None]]]] = []
    for name, sender in senders.items():
        checks.append((name, _check_for(sender, test_message)))
    if securityhub is not None:
        checks.append(("securityhub", lambda: _aws_call(securityhub.get_findings, MaxResults=1)))
    problems = await asyncio.gather(*(check() for _, check in checks))
    return [SinkCheck(name, problem) for (name, _), problem in zip(checks, problems, strict=True)]


def _check_for(sender: Sender, test_message: bool) -> Callable[[], Awaitable[str | None]]:
    if isinstance(sender, PagerDutySender):
        return lambda: _pagerduty(sender, sender.routing_key, test_message)
    if isinstance(sender, HttpSender):
        return lambda: _post(sender, {"text": TEST_TEXT} if test_message else {}, test_message)
    if isinstance(sender, SnsSender):
        if test_message:
            return lambda: _aws_call(sender.client.publish, TopicArn=sender.topic_arn,
                                     Subject="flapguard test message", Message=TEST_TEXT)
        return lambda: _aws_call(sender.client.get_topic_attributes, TopicArn=sender.topic_arn)
    return lambda: _stdout(test_message)


async def _pagerduty(sender: HttpSender, routing_key: str, test_message: bool) -> str | None:
    if not test_message:
        return await _post(sender, {}, False)
    # A test event that closes itself: trigger, then resolve the same dedup_key.
    key = f"flapguard-test-{uuid.uuid4().hex}"
    trigger = {"routing_key": routing_key, "event_action": "trigger", "dedup_key": key,
               "payload": {"summary": TEST_TEXT, "source": "flapguard", "severity": "info"}}
    problem = await _post(sender, trigger, True)
    if problem is not None:
        return problem
    return await _post(sender, {"routing_key": routing_key, "event_action": "resolve",
                                "dedup_key": key}, True)


async def _post(sender: HttpSender, body: dict[str, Any], must_be_accepted: bool) -> str | None:
    import aiohttp

    try:
        async with sender.session.post(
            sender.url, data=orjson.dumps(body), headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=sender.timeout_s), allow_redirects=False,
        ) as response:
            await response.read()
            status = response.status
    except TimeoutError:
        return f"unreachable: no answer within {sender.timeout_s:g}s"
    except aiohttp.ClientError as exc:
        return "unreachable: " + scrub(f"{type(exc).__name__}: {exc}", sender.secrets)
    if 200 <= status < 300 or (not must_be_accepted and status in PROBE_REFUSED_AS_A_MESSAGE):
        return None
    if status in (401, 403, 404, 410):
        return f"refused: HTTP {status} (a revoked or mistyped webhook URL or routing key?)"
    if status == 429 or status >= 500:
        return f"unavailable: HTTP {status}"
    return f"refused: HTTP {status}"


async def _aws_call(call: Callable[..., Any], **kwargs: Any) -> str | None:
    try:
        await asyncio.to_thread(call, **kwargs)
    except Exception as exc:
        return str(aws_error(exc))
    return None


async def _stdout(test_message: bool) -> str | None:
    if test_message:
        sys.stdout.buffer.write(orjson.dumps({"flapguard": TEST_TEXT}) + b"\n")
        sys.stdout.buffer.flush()
    return None


def check(settings: NotifySettings, *, test_message: bool) -> list[SinkCheck]:
    from streams.notify.service import aws_client, open_senders

    securityhub = aws_client("securityhub", settings) if settings.write_back else None

    async def run() -> list[SinkCheck]:
        async with open_senders(settings) as senders:
            return await check_sinks(senders, securityhub, test_message=test_message)

    return asyncio.run(run())
