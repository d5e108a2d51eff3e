"""`backtest --from-topic` on two cores: the topic read, its records parsed and their
findings placed in a process of their own, while this one decides (docs/backtest.md,
"From a topic"; figures in docs/performance.md).

Reading (aiokafka's fetch and decoding, the merge) and parsing cost about as much per
record as the decisions do, so the two stages run side by side: the reader process
hands on each chunk of findings, parsed and placed, as one msgpack message over a
pipe, and reads the next chunk while this process decides the last one. The reader
runs the same functions in the same order as a run in one process
(`from_topic.read_findings`), so the decisions are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

import msgspec

from streams.backtest.from_topic import (
    CHUNK,
    Found,
    Plan,
    TopicError,
    WarmUp,
    _chunks,
    merged_records,
    plain_consumer,
    read_findings,
)
from streams.core.policy import Policy
from streams.kafka.availability import start_client
from streams.kafka.security import BrokerSecurity

# Below this many records a run stays in one process: starting the reader (a Python
# interpreter importing aiokafka and numpy) costs about what it saves on 20,000 records.
PROCESS_FROM = 50_000

# Messages from the reader: a tag byte, then the body.
_CHUNK, _DONE, _FAILED = b"C", b"D", b"E"
_AHEAD = 4  # chunks received and not yet decided


class Chunk(msgspec.Struct, array_like=True, gc=False):
    """One chunk of records, read and parsed: how many records, the earliest warm-up
    record's timestamp among them, the finding occurrences and their keyed partitions."""

    records: int
    warm_first_ms: int | None
    found: list[Found]
    places: list[int] | None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Chunk).decode


@dataclass(frozen=True, slots=True)
class ReadJob:
    """What the reader process reads, and how it parses and places the findings."""

    topic: str
    bootstrap: str
    security: BrokerSecurity
    plan: Plan
    policy: Policy  # its input limits
    partitions: int  # keyed partitions
    now_ms: int


def use_process(plan: Plan, reader: str) -> bool:
    """`reader`: "process", "inline", or "auto" (a process for a long run, given a
    second core)."""
    if reader != "auto":
        return reader == "process"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores > 1 and plan.total >= PROCESS_FROM


class ProcessReader:
    """The reader process, and the chunks it sends (`chunks`), decoded; `close` stops
    it (at the end, or when the run stops early)."""

    def __init__(self, job: ReadJob) -> None:
        context = multiprocessing.get_context("spawn")  # a clean interpreter: no loop, no sockets
        receiving, sending = context.Pipe(duplex=False)
        self._process = context.Process(target=_reader_main, args=(sending, job), daemon=True,
                                        name="flapguard-topic-reader")
        self._process.start()
        sending.close()
        self._connection = receiving
        # A thread takes the messages off the pipe meanwhile (it waits without the GIL),
        # so that the reader is never held up by a full pipe while a chunk is decided.
        self._received: queue.Queue[bytes | None] = queue.Queue(_AHEAD)
        self._thread = threading.Thread(target=self._receive, name="flapguard-topic-receive",
                                        daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        try:
            while True:
                message = self._connection.recv_bytes()
                self._received.put(message)
                if message[:1] != _CHUNK:
                    return
        except (EOFError, OSError):
            self._received.put(None)

    def chunks(self) -> Iterator[Chunk]:
        while True:
            message = self._received.get()
            if message is None:
                self._process.join(5)
                raise TopicError(f"the topic reader stopped (exit status {self._process.exitcode})")
            tag = message[:1]
            if tag == _DONE:
                return
            if tag == _FAILED:
                raise TopicError(message[1:].decode(errors="replace"))
            yield _decode(memoryview(message)[1:])

    def close(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._connection.close()


def _reader_main(connection: Connection, job: ReadJob) -> None:
    """The reader process: every chunk of the plan, then `_DONE`; or `_FAILED` with one
    line saying why."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's own process handles Ctrl-C
    try:
        asyncio.run(_read(connection, job))
        connection.send_bytes(_DONE)
    except Exception as exc:  # any failure ends the run, with its one line
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with contextlib.suppress(OSError):  # the run has gone
            connection.send_bytes(_FAILED + f"reading {job.topic}: {text}".encode())
    finally:
        connection.close()


async def _read(connection: Connection, job: ReadJob) -> None:
    consumer = plain_consumer(job.bootstrap, job.security, bare=True)
    await start_client(consumer, job.bootstrap, job.security)
    loop = asyncio.get_running_loop()
    warm = WarmUp(0, job.plan.since_ms, job.plan.warm_short)
    counted = job.plan.counted_from
    sending: asyncio.Future[None] | None = None
    try:
        async for batch in merged_records(consumer, job.plan):
            for chunk, count in _chunks(batch, CHUNK):
                found, places = read_findings(chunk, counted, warm, topic=job.topic, policy=job.policy,
                                              partitions=job.partitions, now_ms=job.now_ms)
                occurrences = list(found)  # parsed now: the warm-up's first record noted
                message = _CHUNK + _encode(Chunk(count, warm.first_ms, occurrences, places))
                if sending is not None:
                    await sending
                # Sent from a thread: the pipe is written without the GIL while the next
                # chunk is parsed and aiokafka's next fetch is taken in.
                sending = loop.run_in_executor(None, connection.send_bytes, message)
        if sending is not None:
            await sending
    finally:
        await consumer.stop()
