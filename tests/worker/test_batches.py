"""The agent's batches (`streams.worker.batches.take_batches`) against a stand-in for Faust's
stream that delivers events the way Faust does: each through the stream's processors,
one at a time, on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from streams.worker.batches import take_batches


class Channel:
    """Stands for the stream's channel, which the batch reads passively."""

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration


class Stream:
    """What `take_batches` uses of a Faust stream."""

    def __init__(self) -> None:
        self.processors: list[Callable[[Any], Awaitable[Any]]] = []
        self.current_event: Any = None
        self.enable_acks = True
        self.acked: list[Any] = []
        self.should_stop = False
        self.log = None
        self._active_agens: set[Any] = set()

    @property
    def _processors(self) -> list[Callable[[Any], Awaitable[Any]]]:
        return self.processors

    def add_processor(self, processor: Callable[[Any], Awaitable[Any]]) -> None:
        self.processors.append(processor)

    def _enable_passive(self, channel: Any) -> None:
        pass

    channel = Channel()

    async def ack(self, event: Any) -> None:
        self.acked.append(event)

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def deliver(self, events: list[Any]) -> None:
        for event in events:
            self.current_event = event
            for processor in self.processors:
                await processor(event)
            await asyncio.sleep(0)


def run(body: Callable[[Stream], Awaitable[None]]) -> Stream:
    stream = Stream()
    asyncio.run(body(stream))
    return stream


def test_a_burst_closes_its_batch_once_quiet_not_at_the_longest_wait() -> None:
    async def body(stream: Stream) -> None:
        batches = take_batches(stream, max_records=100, within=5.0, quiet=0.01)
        feeder = asyncio.ensure_future(stream.deliver(list(range(5))))
        started = time.monotonic()
        batch = await anext(batches)
        assert batch == [0, 1, 2, 3, 4]
        assert time.monotonic() - started < 2.0  # `within` is 5 s
        await feeder
        await batches.aclose()

    run(body)


def test_a_full_batch_closes_at_once_and_the_rest_waits_for_the_next() -> None:
    async def body(stream: Stream) -> None:
        batches = take_batches(stream, max_records=3, within=5.0, quiet=0.05)
        feeder = asyncio.ensure_future(stream.deliver(list(range(5))))
        first = await anext(batches)
        assert first == [0, 1, 2]
        assert stream.acked == []  # not before the agent is done with the batch
        second = await anext(batches)
        assert stream.acked == [0, 1, 2]
        assert second == [3, 4]
        await feeder
        await batches.aclose()
        assert stream.acked == [0, 1, 2, 3, 4]
        assert stream.enable_acks and stream.processors == []  # restored on close

    run(body)


def test_records_delivered_while_a_batch_is_processed_go_to_the_next_batch() -> None:
    async def body(stream: Stream) -> None:
        batches = take_batches(stream, max_records=100, within=0.05, quiet=0.01)
        taking = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)  # the batch is waiting for records
        await stream.deliver(["a"])
        first = await taking
        late = asyncio.ensure_future(stream.deliver(["b", "c"]))
        await asyncio.sleep(0.05)  # the agent works on `first`; "b" waits for it
        assert first == ["a"]
        second = await anext(batches)
        assert second == ["b", "c"]
        await late
        await batches.aclose()
        assert stream.acked == ["a", "b", "c"]

    run(body)
