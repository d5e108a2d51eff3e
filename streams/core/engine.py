"""Event time for one partition: watermark, reorder buffer (the hold), state expiry.

Pure. The backtest and the Faust worker drive the same `PartitionEngine`: findings go
in with `accept`, decisions come out in (UpdatedAt, finding Id, arrival) order once
the watermark passes UpdatedAt + hold; `flush` releases everything (end of input), and
`release_arrived` what had arrived when an idle partition asked for a release.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush

from streams.core.decide import Closure, Decider, Outcome, pairing_horizon
from streams.core.findings import ARCHIVED, SECURITY_HUB_PRODUCT_SUFFIX, Finding
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


# Security Hub's product ARNs an engine remembers (`accept`): one per Region, with room
# for ARNs forged to end like them, which only take the longer test once it is full.
_HUB_PRODUCTS_KEPT = 64


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
        # Held ARCHIVED arrivals per primary resource (most hold none), and the arrivals
        # decided ahead of their turn, still in the heap until they reach its top. By
        # resource, not partition key: `Finding.partition_key` is a Python call per use,
        # the resource a field. A resource's other controls only make
        # `_archives_before` look, and find nothing of the key.
        self._held_archives: dict[str, int] = {}
        for entry in self._heap:
            self._count_archive(entry[4], 1)
        self._taken: set[int] = set()
        # The held arrival at the head of the heap waiting its second hold, and the
        # `watermark - hold` that releases it: arrivals before then need not try.
        self._waiting: tuple[int, str, int, Origin, Finding] | None = None
        self._waiting_until = 0
        self.meta = store.meta.get(str(partition)) or PartitionMeta()
        # Finding ids of this partition by a lower bound of their `updated_at`, so that
        # a sweep visits only states that may have expired instead of every state.
        # None until the first sweep has scanned the store once (after a restart the
        # store holds states this engine never decided).
        self._expiry: list[tuple[int, str]] | None = None
        self._tracked: set[str] = set()
        self._indexed = expiry_index
        self._scanned_at: int | None = None  # watermark of the last full scan, unindexed
        self.late = 0  # late arrivals not yet reported (the worker's metrics take them)
        self._hold_ms = policy.hold_ms
        # Security Hub's product ARNs seen (one per Region): a set lookup costs about
        # half of `str.endswith`, which the watermark rule would call per finding.
        self._hub_products: set[str] = set()
        self._buckets_swept_at: int | None = None  # watermark of the last bucket scan

    @property
    def watermark(self) -> int | None:
        return self.meta.watermark

    @property
    def pending(self) -> int:
        return len(self._heap) - len(self._taken)

    def _count_archive(self, finding: Finding, step: int) -> None:
        if finding.record_state == ARCHIVED:
            key = finding.resource_id
            count = self._held_archives.get(key, 0) + step
            if count:
                self._held_archives[key] = count
            else:
                del self._held_archives[key]

    def _may_pair(self, finding: Finding) -> bool:
        """A finding that may be a re-creation (docs/design.md §2, the hold): an ACTIVE
        control finding within the first-sight age of its creation. Only these wait for
        archives stamped up to a hold after them. Pure: a function of the finding."""
        return (finding.record_state != ARCHIVED and finding.is_control_finding
                and finding.updated_at - finding.created_at <= self.policy.first_sight_age_ms)

    def accept(self, finding: Finding, origin: Origin, seq: int) -> list[Outcome]:
        """Buffer one finding; return the decisions this arrival releases."""
        updated_at = finding.updated_at
        heap = self._heap
        meta = self.meta
        if not self.durable:
            heappush(heap, (updated_at, finding.id, seq, origin, finding))
            if finding.record_state == ARCHIVED:  # `_count_archive`, inlined
                held = self._held_archives
                held[finding.resource_id] = held.get(finding.resource_id, 0) + 1
        else:
            key = f"{self._prefix}{seq}"
            buffer = self.store.buffer
            if buffer.get(key) is None:  # a redelivered record is already held
                buffer.put(key, Arrival(self.p, seq, finding, origin))
                heappush(heap, (updated_at, finding.id, seq, origin, finding))
                if finding.record_state == ARCHIVED:
                    self._count_archive(finding, 1)
        watermark = meta.watermark
        hold = self._hold_ms
        if watermark is None or updated_at > watermark:
            # The watermark rule (docs/design.md §2): Security Hub's own findings move it
            # by their `UpdatedAt` (AWS's clock); any other product's by its `UpdatedAt`
            # less the future tolerance, so that one skewed clock cannot move it ahead of
            # time. (Only a finding newer than the watermark can move it: the others skip
            # the product test.)
            product = finding.product_arn
            hub_products = self._hub_products
            if product in hub_products:
                mark = updated_at
            elif product.endswith(SECURITY_HUB_PRODUCT_SUFFIX):
                mark = updated_at
                if len(hub_products) < _HUB_PRODUCTS_KEPT:
                    hub_products.add(product)
            else:
                mark = updated_at - self.policy.future_tolerance_ms
            if watermark is None or mark > watermark:
                meta.watermark = watermark = mark
        elif updated_at < watermark - hold:
            self.late += 1  # decided on arrival, not reordered (docs/design.md §2)
        if self.durable:
            self.store.meta.put(self._meta_key, meta)
        up_to = watermark - hold
        # Unless the first in line is a possible re-creation still waiting its second hold.
        if heap and heap[0][0] <= up_to and (heap[0] is not self._waiting
                                             or up_to >= self._waiting_until):
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
        watermark, as `flush` would decide them; the others stay held. An idle
        partition releases what had arrived when its release was asked for, so that a
        replay of the request releases the same arrivals (docs/design.md §2)."""
        chosen = [entry for entry in self._heap if arrived(entry[2])]
        if not chosen:
            return []
        rest = [entry for entry in self._heap if not arrived(entry[2])]
        # `_release` over the chosen alone: what it decides ahead of its turn (archives
        # stamped just after a re-creation) must be among them too.
        heapify(chosen)
        self._heap = chosen
        try:
            return self._release(None)
        finally:
            self._heap = rest + self._heap
            heapify(self._heap)

    def _release(self, up_to: int | None) -> list[Outcome]:
        out: list[Outcome] = []
        heap = self._heap
        buffer = self.store.buffer
        decide = self.decider.decide
        expiry = self._expiry
        tracked = self._tracked
        durable = self.durable
        taken = self._taken
        held_archives = self._held_archives
        hold = self.policy.hold_ms
        first_sight = self.policy.first_sight_age_ms
        timers = self.decider.timers
        # A possible re-creation waits one hold more, so that archives stamped up to a
        # hold after it have surely arrived and can be decided first (`_archives_before`).
        waits_after = None if up_to is None else up_to - hold
        # (index in `out` of the first decision taken after them, incidents closed)
        closings: list[tuple[int, list[Closure]]] | None = None
        while heap and (up_to is None or heap[0][0] <= up_to):
            top = heap[0]
            if taken and top[2] in taken:  # decided ahead of its turn
                heappop(heap)
                taken.discard(top[2])
                continue
            finding = top[4]
            # `_may_pair`, inlined and cheapest test first: this runs once per finding.
            # (`is_control_finding` too: a property is a Python call.)
            may_pair = (finding.updated_at - finding.created_at <= first_sight
                        and finding.record_state != ARCHIVED
                        and finding.product_arn.endswith(SECURITY_HUB_PRODUCT_SUFFIX))
            if may_pair and waits_after is not None and top[0] > waits_after:
                self._waiting = top
                self._waiting_until = top[0] + hold
                break
            heappop(heap)
            # Incidents whose closing deadline is before this event: nothing stamped at or
            # before it is still to be decided (docs/design.md §3, closing).
            if timers and timers[0][0] < top[0]:
                closes = self.decider.close_due(top[0])
                if closes:  # they go out with the first decision taken after them
                    if closings is None:
                        closings = []
                    closings.append((len(out), closes))
            if held_archives:
                if may_pair:
                    if hold and finding.resource_id in held_archives:
                        out.extend(self._decide(early) for early in self._archives_before(finding))
                elif finding.record_state == ARCHIVED:  # `_count_archive`, inlined
                    count = held_archives[finding.resource_id] - 1
                    if count:
                        held_archives[finding.resource_id] = count
                    else:
                        del held_archives[finding.resource_id]
            # `_decide`, inlined: this runs once per finding.
            # A durable engine's heap and buffer hold the same arrivals: only `accept`
            # adds to both, only this takes from both.
            _, _, seq, origin, _ = top
            if durable:
                buffer.delete(f"{self._prefix}{seq}")
            outcome = decide(finding, origin)
            outcome.seq = seq
            out.append(outcome)
            if expiry is not None and finding.id not in tracked:
                # Its state's `updated_at` is at least this (it only grows).
                tracked.add(finding.id)
                heappush(expiry, (finding.updated_at, finding.id))
        if closings is not None:
            for first, closes in closings:
                out[first].closes = (*closes, *out[first].closes)
        # `_maybe_sweep`'s test, inlined: most releases sweep nothing.
        meta = self.meta
        swept_at = meta.swept_at
        if meta.watermark is not None and (
                swept_at is None or meta.watermark - swept_at >= self.policy.sweep_every_ms):
            self._maybe_sweep()
        return out

    def _decide(self, entry: tuple[int, str, int, Origin, Finding]) -> Outcome:
        """Decide one held arrival (as `_release` does inline)."""
        _, _, seq, origin, finding = entry
        if self.durable:
            self.store.buffer.delete(f"{self._prefix}{seq}")
        outcome = self.decider.decide(finding, origin)
        outcome.seq = seq
        expiry = self._expiry
        if expiry is not None and finding.id not in self._tracked:
            # Its state's `updated_at` is at least this (it only grows).
            self._tracked.add(finding.id)
            heappush(expiry, (finding.updated_at, finding.id))
        return outcome

    def _archives_before(self, finding: Finding) -> list[tuple[int, str, int, Origin, Finding]]:
        """Event-time inversion inside the hold (docs/design.md §2): the held archives of
        `finding`'s partition key, of other findings, stamped at most a hold after it,
        with the held events of their finding before them, taken out of the heap in
        their order, to be decided first: a re-creation stamped just before its
        predecessor's archive still pairs with it."""
        key = finding.partition_key
        resource = finding.resource_id
        limit = finding.updated_at + self.policy.hold_ms
        taken = self._taken
        # The resource first: a field, where the key is a Python call per entry.
        held = sorted(e for e in self._heap if e[4].resource_id == resource
                      and e[2] not in taken and e[4].partition_key == key)
        upto: dict[str, tuple[int, str, int]] = {}  # finding id -> its first such archive
        for e in held:
            if (e[4].record_state == ARCHIVED and e[1] != finding.id and e[0] <= limit
                    and e[1] not in upto):
                upto[e[1]] = e[:3]
        early = [e for e in held if e[1] in upto and e[:3] <= upto[e[1]]]
        for entry in early:
            taken.add(entry[2])
            self._count_archive(entry[4], -1)
        return early

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
        # Every event still to be decided (late ones aside) has UpdatedAt > watermark
        # - 2 holds (a possible re-creation waits a second hold), and treats states and
        # archives older than its own horizons as gone (`Decider._current`,
        # `pairing_horizon`): what is swept here is gone for all.
        settled = watermark - 2 * policy.hold_ms
        finding_horizon = settled - policy.state_ttl_ms
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
        bucket_horizon = pairing_horizon(policy, settled)
        # Buckets are few (archives of the last days): a plain scan. One that holds an
        # incident still to close stays until its timer has fired.
        for key, bucket in self.store.buckets.items():
            if (bucket.p == self.p and bucket.start + policy.bucket_ms <= bucket_horizon
                    and not any(a.opened and not a.used for a in bucket.archives)):
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
