"""Event time for one partition: watermark, reorder buffer (the hold), state expiry.

Pure. The backtest and the Faust worker drive the same `PartitionEngine`: findings go
in with `accept`, decisions come out in (UpdatedAt, finding Id, arrival) order once
the watermark passes UpdatedAt + hold; `flush` releases everything (end of input, or
a partition idle for the hold in wall-clock time).
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush

from streams.core.decide import Decider, Outcome, pairing_horizon
from streams.core.findings import Finding
from streams.core.policy import Policy
from streams.core.state import Arrival, FindingState, Origin, PartitionMeta, Store

# A finding the worker decides straight from the findings topic arrives as (record
# offset, index in the record): one integer, above every keyed offset, so that both
# kinds of arrival share the engine's buffer and order without colliding (at equal
# UpdatedAt and Id, a keyed arrival comes first).
DIRECT_SEQ = 1 << 62


_INDEX_BITS = 20


def direct_seq(offset: int, index: int) -> int | None:
    """The arrival number of finding `index` of findings record `offset`; None when it
    does not fit (such a finding goes through the keyed topic instead)."""
    if index >> _INDEX_BITS or offset >> (61 - _INDEX_BITS):
        return None
    return DIRECT_SEQ | offset << _INDEX_BITS | index


# Without an expiry index, a sweep scans every state: at most once per day of event time.
UNINDEXED_SCAN_EVERY_MS = 24 * 3_600_000


class PartitionEngine:
    """`expiry_index`: keep, in Python memory, the finding ids by a lower bound of their
    last update, so that a sweep visits only states that may have expired (about 270
    bytes per tracked finding). Without it (a store on disk, where that index would be
    most of the RAM per finding) a sweep scans every state, once per day of event time.
    Decisions are the same either way: they treat expired state as gone themselves."""

    def __init__(self, store: Store, policy: Policy, partition: int, *,
                 expiry_index: bool = True, durable: bool = True) -> None:
        self.store = store
        # `durable`: write what a restart needs to the store as it changes (the held
        # arrivals, the partition's metadata per arrival). The in-process backtest never
        # restarts from its store: without it, the heap alone holds the arrivals.
        self.durable = durable
        self.policy = policy
        self.p = partition
        self.decider = Decider(store, policy, partition)
        self._prefix = f"{partition}:"
        self._meta_key = str(partition)
        # The held arrivals. In a durable engine the heap mirrors the buffer entries of
        # the store, and is rebuilt from them on start so that a restarted or rebalanced
        # worker carries on with what was held.
        # Entries: (UpdatedAt, Id, arrival) = `Arrival.order`, the origin, the finding.
        self._heap: list[tuple[int, str, int, Origin, Finding]] = []
        for key, arrival in store.buffer.items():
            if key.startswith(self._prefix):
                self._heap.append((*arrival.order, arrival.origin, arrival.finding))
        heapify(self._heap)
        self.meta = store.meta.get(str(partition)) or PartitionMeta()
        # Finding ids of this partition by a lower bound of their `updated_at`, so that
        # a sweep visits only states that may have expired instead of every state.
        # None until the first sweep has scanned the store once (after a restart the
        # store holds states this engine never decided).
        self._expiry: list[tuple[int, str]] | None = None
        self._tracked: set[str] = set()
        self._indexed = expiry_index
        self._scanned_at: int | None = None  # watermark of the last full scan, unindexed
        self._buckets_swept_at: int | None = None  # watermark of the last bucket scan

    @property
    def watermark(self) -> int | None:
        return self.meta.watermark

    @property
    def pending(self) -> int:
        return len(self._heap)

    def accept(self, finding: Finding, origin: Origin, seq: int) -> list[Outcome]:
        """Buffer one finding; return the decisions this arrival releases."""
        updated_at = finding.updated_at
        heap = self._heap
        meta = self.meta
        if not self.durable:
            heappush(heap, (updated_at, finding.id, seq, origin, finding))
        else:
            key = f"{self._prefix}{seq}"
            buffer = self.store.buffer
            if buffer.get(key) is None:  # a redelivered record is already held
                buffer.put(key, Arrival(self.p, seq, finding, origin))
                heappush(heap, (updated_at, finding.id, seq, origin, finding))
        watermark = meta.watermark
        if watermark is None or updated_at > watermark:
            meta.watermark = watermark = updated_at
        if self.durable:
            self.store.meta.put(self._meta_key, meta)
        up_to = watermark - self.policy.hold_ms
        if heap and heap[0][0] <= up_to:
            return self._release(up_to)
        # `_maybe_sweep`'s test, inlined: most arrivals release nothing and sweep nothing.
        swept_at = meta.swept_at
        if swept_at is None or watermark - swept_at >= self.policy.sweep_every_ms:
            self._maybe_sweep()
        return []

    @property
    def next_seq(self) -> int | None:
        """The worker's keyed record expected next; None before the first."""
        return self.meta.next_seq

    @property
    def next_source(self) -> int | None:
        """The worker's findings-topic record expected next on this partition (decided
        without the keyed topic); None before the first."""
        return self.meta.next_source

    def passed(self, seq: int) -> None:
        """Record that the worker is done with keyed record `seq` (whatever it held: a
        finding, an idle tick), so that a redelivery of it is skipped."""
        self.meta.next_seq = seq + 1
        self.store.meta.put(self._meta_key, self.meta)

    def passed_source(self, offset: int) -> None:
        """As `passed`, for a findings-topic record whose findings were accepted here."""
        self.meta.next_source = offset + 1
        self.store.meta.put(self._meta_key, self.meta)

    def flush(self) -> list[Outcome]:
        """Decide everything held, whatever the watermark."""
        return self._release(None)

    def release_arrived(self, arrived: Callable[[int], bool]) -> list[Outcome]:
        """Decide the held arrivals whose arrival number `arrived` selects, whatever the
        watermark, in (UpdatedAt, Id, arrival) order; the others stay held. An idle
        partition releases what had arrived when its release was asked for, so that a
        replay of the request releases the same arrivals (docs/design.md §2)."""
        chosen = sorted(entry for entry in self._heap if arrived(entry[2]))
        if not chosen:
            return []
        self._heap = [entry for entry in self._heap if not arrived(entry[2])]
        heapify(self._heap)
        out = [self._decide_held(entry) for entry in chosen]
        self._maybe_sweep()
        return out

    def _release(self, up_to: int | None) -> list[Outcome]:
        out: list[Outcome] = []
        heap = self._heap
        while heap and (up_to is None or heap[0][0] <= up_to):
            out.append(self._decide_held(heappop(heap)))
        self._maybe_sweep()
        return out

    def _decide_held(self, entry: tuple[int, str, int, Origin, Finding]) -> Outcome:
        """Decide one arrival taken from the heap."""
        _, _, seq, origin, finding = entry
        # A durable engine's heap and buffer hold the same arrivals: only `accept` adds
        # to both, only the releases take from both.
        if self.durable:
            self.store.buffer.delete(f"{self._prefix}{seq}")
        outcome = self.decider.decide(finding, origin)
        outcome.seq = seq
        if self._expiry is not None and finding.id not in self._tracked:
            # Its state's `updated_at` is at least this (it only grows).
            self._tracked.add(finding.id)
            heappush(self._expiry, (finding.updated_at, finding.id))
        return outcome

    def _maybe_sweep(self) -> None:
        meta = self.meta
        if meta.watermark is None:
            return
        if meta.swept_at is not None and meta.watermark - meta.swept_at < self.policy.sweep_every_ms:
            return
        meta.swept_at = meta.watermark
        self.store.meta.put(str(self.p), meta)
        # Buckets are `bucket_ms` wide (a day): scanning them more often than once per
        # bucket frees next to nothing, and a scan decodes every bucket of the table.
        buckets_due = (self._buckets_swept_at is None
                       or meta.watermark - self._buckets_swept_at >= self.policy.bucket_ms)
        if buckets_due:
            self._buckets_swept_at = meta.watermark
        self.sweep(meta.watermark, buckets=buckets_due)

    def sweep(self, watermark: int, *, buckets: bool = True) -> int:
        """Forget state that can no longer change a decision, in event time (`buckets`:
        the tumbling windows of archives too). Returns the number of entries removed."""
        policy = self.policy
        removed = 0
        # Every event still to be decided (late ones aside) has UpdatedAt >= watermark
        # - hold, and treats states and archives older than its own horizons as gone
        # (`Decider._current`, `pairing_horizon`): what is swept here is gone for all.
        finding_horizon = watermark - policy.hold_ms - policy.state_ttl_ms
        if not self._indexed:
            if self._scanned_at is None or watermark - self._scanned_at >= UNINDEXED_SCAN_EVERY_MS:
                self._scanned_at = watermark
                removed += self._scan(finding_horizon, None)
        elif self._expiry is None:
            expiry: list[tuple[int, str]] = []
            removed += self._scan(finding_horizon, expiry)
            heapify(expiry)
            self._expiry = expiry
            self._tracked = {key for _, key in expiry}
        else:
            # Entries hold a lower bound of their state's `updated_at`: every state
            # older than the horizon has its entry below it.
            expiry = self._expiry
            while expiry and expiry[0][0] < finding_horizon:
                key = heappop(expiry)[1]
                current = self.store.findings.get(key)
                if current is None or current.p != self.p:
                    self._tracked.discard(key)
                elif current.updated_at < finding_horizon:
                    self._forget(key, current)
                    self._tracked.discard(key)
                    removed += 1
                else:
                    heappush(expiry, (current.updated_at, key))
        if not buckets:
            return removed
        bucket_horizon = pairing_horizon(policy, watermark - policy.hold_ms)
        # Buckets are few (archives of the last days): a plain scan.
        for key, bucket in self.store.buckets.items():
            if bucket.p == self.p and bucket.start + policy.bucket_ms <= bucket_horizon:
                self.store.buckets.delete(key)
                removed += 1
        return removed

    def _scan(self, horizon: int, kept: list[tuple[int, str]] | None) -> int:
        """Forget every state of this partition last updated before `horizon`; list the
        others in `kept` as (updated_at, id). Returns the number forgotten."""
        removed = 0
        for key, state in self.store.findings.items():
            if state.p != self.p:
                continue
            if state.updated_at < horizon:
                self._forget(key, state)
                removed += 1
            elif kept is not None:
                kept.append((state.updated_at, key))
        return removed

    def _forget(self, key: str, state: FindingState) -> None:
        """Delete an expired finding's state and its entry in the live index."""
        if state.live:
            live = self.store.live.get(state.partition_key)
            if live is not None:
                live.members.pop(key, None)
                if live.members:
                    self.store.live.put(state.partition_key, live)
                else:
                    self.store.live.delete(state.partition_key)
        self.store.findings.delete(key)
