"""AWS Lambda handler for the EventBridge rule -> Lambda -> Kafka route.

The same transform as `flapguard forward sqs` (`sqs.message_records`): each finding of
the event keyed by its partition key, anything else to the dead-letter topic. The
handler returns only after the broker acknowledged every record; an exception makes
Lambda retry the event (a duplicate downstream, which the core treats as one).
Configure with FLAPGUARD_BOOTSTRAP_SERVERS, FLAPGUARD_TOPIC, FLAPGUARD_DEADLETTER_TOPIC,
and for broker security the same variables as the command line (FLAPGUARD_SECURITY_PROTOCOL,
FLAPGUARD_MSK_IAM_REGION for MSK IAM with the function's role, ...).
Handler: `streams.ingest.lambda_handler.handler`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

from streams.core.policy import Policy
from streams.ingest.forward import KafkaSink, Route
from streams.ingest.sqs import message_records
from streams.kafka.security import PLAINTEXT, BrokerSecurity
from streams.kafka.topics import Topics


def settings_from_env(env: dict[str, str]) -> tuple[str, str, str]:
    bootstrap = env.get("FLAPGUARD_BOOTSTRAP_SERVERS") or env.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        raise RuntimeError("set FLAPGUARD_BOOTSTRAP_SERVERS")
    return (bootstrap, env.get("FLAPGUARD_TOPIC") or Topics().findings,
            env.get("FLAPGUARD_DEADLETTER_TOPIC") or Topics().deadletter)


async def forward_event(event: Any, *, bootstrap: str, topic: str, deadletter_topic: str,
                        request_id: str, security: BrokerSecurity = PLAINTEXT) -> dict[str, int]:
    records = message_records(orjson.dumps(event), source="lambda", message_id=request_id,
                              policy=Policy(), now_ms=int(time.time() * 1000))
    sink = KafkaSink(bootstrap, {Route.FINDINGS: topic, Route.DEADLETTER: deadletter_topic},
                     security=security)
    await sink.start()
    try:
        await sink.send_all(records)
    finally:
        await sink.stop()
    findings = sum(1 for r in records if r.route is Route.FINDINGS)
    return {"findings": findings, "dead_letters": len(records) - findings}


def handler(event: Any, context: Any) -> dict[str, int]:
    bootstrap, topic, deadletter_topic = settings_from_env(dict(os.environ))
    security = BrokerSecurity.from_env(os.environ)
    request_id = str(getattr(context, "aws_request_id", "") or "")
    return asyncio.run(forward_event(event, bootstrap=bootstrap, topic=topic,
                                     deadletter_topic=deadletter_topic, request_id=request_id,
                                     security=security))
