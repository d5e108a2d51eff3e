"""Throughput of the forwarders, on moto (server mode) and a local Apache Kafka broker.

Prints, for N findings (several accounts and Regions, 3 KB each):
  - transform: the pure part (core parse + key + record), findings/s in-process;
  - securityhub, unthrottled (--rate 1000): end to end, findings/s and GetFindings pages/s;
  - securityhub at the documented rate (3 requests/s, burst 6): findings/s, and the
    ratio to the ceiling that rate allows (300 findings/s with pages of 100);
  - sqs: one EventBridge event of one finding per message, 10 messages a batch.
A benchmark, not a test: moto's own paging cost grows with N, figures vary with load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.core.policy import Policy  # noqa: E402
from streams.demo.brokers import KafkaBroker, default_kafka_libs, free_port  # noqa: E402
from streams.ingest.forward import page_records  # noqa: E402
from streams.kafka.topics import create_topics  # noqa: E402
from tests.aws import AWS_ENV, MOTO_SERVER, client, forwarder_env, import_findings  # noqa: E402
from tests.builders import NOW_MS, at, envelope, finding  # noqa: E402

ACCOUNTS = ("111111111111", "222222222222", "333333333333", "444444444444")


def findings(count: int) -> list[dict[str, object]]:
    return [finding(f"b{i}", account=ACCOUNTS[i % 4], region=("us-east-1", "eu-west-1")[i % 2],
                    resource=f"arn:aws:rds:us-east-1:{ACCOUNTS[i % 4]}:cluster:db-{i}",
                    updated=at(seconds=i)) for i in range(count)]


def run(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "streams", "forward", *args], capture_output=True,
                          text=True, env=forwarder_env(None))
    if done.returncode != 0:
        raise SystemExit(f"forward failed: {done.stderr.strip()}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--findings", type=int, default=3000)
    parser.add_argument("--sqs-messages", type=int, default=1000)
    opts = parser.parse_args()
    items = findings(opts.findings)

    started = time.perf_counter()
    for _ in range(3):
        page_records(items, source="bench", policy=Policy(), now_ms=NOW_MS)
    print(f"transform: {3 * len(items) / (time.perf_counter() - started):,.0f} findings/s in-process")

    port = free_port()
    moto = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with KafkaBroker(default_kafka_libs()) as broker:
            bootstrap = broker.bootstrap_servers
            for _ in range(100):
                try:
                    client("sts", endpoint).get_caller_identity()
                    break
                except Exception:
                    time.sleep(0.1)
            os.environ.update(AWS_ENV)
            import_findings(endpoint, "us-east-1", items)
            pages = -(-len(items) // 100)
            base = ["securityhub", "--endpoint-url", endpoint, "--region", "us-east-1",
                    "--bootstrap-servers", bootstrap, "--once"]
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            asyncio.run(create_topics(bootstrap, {topic: 8}))
            fast = run([*base, "--topic", topic, "--rate", "1000", "--burst", "1000"])
            print(f"securityhub unthrottled: {len(items) / fast:,.0f} findings/s, {pages / fast:.1f} pages/s "
                  f"({len(items)} findings, {pages} pages, {fast:.1f} s incl. start-up)")
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            asyncio.run(create_topics(bootstrap, {topic: 8}))
            paced = run([*base, "--topic", topic])
            ceiling = len(items) / max(0.0, (pages - 6) / 3)
            print(f"securityhub at 3 req/s burst 6: {len(items) / paced:,.0f} findings/s, "
                  f"{pages / paced:.2f} pages/s; ratio to the rate's ceiling: "
                  f"{(len(items) / paced) / ceiling:.2f}")

            sqs = client("sqs", endpoint)
            queues = [sqs.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:8]}")["QueueUrl"]
                      for _ in range(2)]
            for queue in queues:
                for start in range(0, opts.sqs_messages, 10):
                    sqs.send_message_batch(QueueUrl=queue, Entries=[
                        {"Id": str(i),
                         "MessageBody": orjson.dumps(envelope([items[(start + i) % len(items)]])).decode()}
                        for i in range(min(10, opts.sqs_messages - start))])
            # moto's SQS alone (receive 10 + delete 10, nothing else): its cost grows with
            # the queue's length and dominates; the ratio shows the forwarder's own share.
            started = time.perf_counter()
            while messages := sqs.receive_message(QueueUrl=queues[0], MaxNumberOfMessages=10,
                                                  WaitTimeSeconds=0).get("Messages"):
                sqs.delete_message_batch(QueueUrl=queues[0], Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
            alone = time.perf_counter() - started
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            asyncio.run(create_topics(bootstrap, {topic: 8, f"{topic}-dl": 1}))
            took = run(["sqs", "--endpoint-url", endpoint, "--region", "us-east-1", "--queue-url",
                        queues[1], "--bootstrap-servers", bootstrap, "--topic", topic,
                        "--deadletter-topic", f"{topic}-dl", "--once", "--wait-time", "1s"])
            print(f"sqs: {opts.sqs_messages / took:,.0f} messages/s ({opts.sqs_messages} messages, "
                  f"{took:.1f} s incl. start-up and the final 1 s empty poll); moto's SQS alone "
                  f"{opts.sqs_messages / alone:,.0f} messages/s; ratio {alone / took:.2f}")
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
