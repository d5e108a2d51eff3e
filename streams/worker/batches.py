"""The agent's batches: Faust's `Stream.take_events`, closing a batch also when the
consumer has delivered everything it had.

`take_events(max_, within)` closes a batch when it holds `max_` records or when `within`
has passed. Records arrive in bursts, one per fetch response (a few MiB: 50-70 pages of
100 findings); a batch that has taken a whole burst and waits out `within` for records
not yet fetched only idles, while the next fetch is in flight anyway. Here a batch also
closes once `quiet` passes with no new record. Acknowledgements are as in
`take_events`: the events of a batch are acked only after the agent's body for it
returns (at-least-once: the worker acknowledges what it has written).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from mode.utils.futures import notify

from streams.kafka.workarounds import read_passively, remove_processor


def take_batches(stream: Any, max_records: int, within: float, quiet: float
                 ) -> AsyncGenerator[list[Any], None]:
    """Lists of events: up to `max_records`, closed after `within` seconds, or after
    `quiet` seconds with no new event (whichever comes first)."""
    batches = _take_batches(stream, max_records, within, quiet)
    # As Faust does for its own buffering generators: the stream closes it when it stops.
    active = getattr(stream, "_active_agens", None)
    if active is not None:
        active.add(batches)
    return batches


async def _take_batches(stream: Any, max_records: int, within: float, quiet: float
                        ) -> AsyncGenerator[list[Any], None]:
    events: list[Any] = []
    last_added = time.monotonic()
    full = asyncio.Event()
    arrived = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None

    async def add(value: Any) -> Any:
        # A processor of the stream, which Faust runs for every record it delivers.
        nonlocal consuming, last_added
        try:
            if consuming is not None:  # the agent is working on the last batch
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("a batch found no current event")
            events.append(event)
            last_added = time.monotonic()
            if len(events) == 1:
                arrived.set()  # from here on the batch's wait polls every `quiet`
            if len(events) >= max_records:
                full.set()
                consumed.clear()
                await stream.wait(consumed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to a batch: %r", exc)
            await stream.crash(exc)
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acked here, once the agent is done with them
    stream.add_processor(add)
    read_passively(stream)
    try:
        while not stream.should_stop:
            await _wait_for_batch(stream, events, full, arrived, within, quiet, lambda: last_added)
            if not events:
                continue
            consuming = asyncio.get_running_loop().create_future()
            batch = list(events)
            try:
                yield batch
            finally:
                events.clear()
                for event in batch:
                    await stream.ack(event)
                notify(consuming)
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = acks
        remove_processor(stream, add)


async def _wait_for_batch(stream: Any, events: list[Any], full: asyncio.Event,
                          arrived: asyncio.Event, within: float, quiet: float,
                          last_added: Callable[[], float]) -> None:
    """Until the batch is full, `within` has passed, or it holds events and none has
    come for `quiet`. `arrived` is set by the batch's first event."""
    started = time.monotonic()
    while not full.is_set() and not stream.should_stop:
        now = time.monotonic()
        left = within - (now - started)
        if events:
            left = min(left, quiet - (now - last_added()))
        if left <= 0:
            return
        arrived.clear()
        await stream.wait_for_stopped(full if events else arrived, timeout=left)
