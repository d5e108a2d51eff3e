"""What a sink's lane may commit when it holds alerts back (grouping). Pure: no I/O.

A lane handles a partition's records in order: each is finished (delivered,
dead-lettered, or not for this sink) or held in a group. Held records are finished
later, out of order, when their group's message is sent. The lane commits the offset
of the first record it has not finished, so a restart reads every held record again;
and in the commit's metadata it says which records from there on it had already
finished (by listing the ones it still held), so the restart skips those: nothing is
lost and nothing is repeated.

Metadata: `flapguard-held:1;upto=<offset>;held=<ranges>`: `upto` is the offset after the
last record handled; `held` the held offsets, relative to the committed offset, as
`a-b` or `a` ranges. A commit with no held record has no metadata. Metadata that cannot
be read is ignored: the records are delivered again (at least once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

PREFIX = "flapguard-held:1;"
# Kafka refuses commit metadata above `offset.metadata.max.bytes` (4096 by default):
# beyond this, the lane sends the group holding the oldest record at once.
METADATA_LIMIT = 3000

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class CommitPoint:
    offset: int
    metadata: str = ""


@dataclass(slots=True)
class PartitionLedger:
    upto: int
    held: set[int] = field(default_factory=set)
    # From the commit the lane started at: records before `resume_upto` that were
    # finished already, except those in `resume_held`.
    resume_upto: int = 0
    resume_held: frozenset[int] = frozenset()

    def point(self) -> CommitPoint:
        held = set(self.held)
        upto = self.upto
        if self.resume_upto > upto:
            # Not yet read again: what the last commit said still holds beyond `upto`.
            held |= {o for o in self.resume_held if o >= upto}
            upto = self.resume_upto
        if not held:
            return CommitPoint(upto)
        base = min(held)
        return CommitPoint(base, f"{PREFIX}upto={upto};held={ranges(o - base for o in held)}")


def ranges(offsets: Iterable[int]) -> str:
    """`0-2,5,7-8` for 0, 1, 2, 5, 7, 8."""
    out: list[str] = []
    ordered = sorted(offsets)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def parse_metadata(offset: int, metadata: str) -> tuple[int, frozenset[int]] | None:
    """(upto, held offsets) from a commit's metadata; None when it says nothing usable."""
    if not metadata.startswith(PREFIX):
        return None
    try:
        fields = dict(part.split("=", 1) for part in metadata[len(PREFIX):].split(";"))
        upto = int(fields["upto"])
        held: set[int] = set()
        for item in filter(None, fields["held"].split(",")):
            first, _, last = item.partition("-")
            held.update(range(offset + int(first), offset + int(last or first) + 1))
    except (KeyError, ValueError):
        return None
    if upto < offset or len(held) > upto - offset:
        return None
    return upto, frozenset(held)


@dataclass(slots=True)
class Ledger(Generic[P]):
    """Every assigned partition's ledger (P: the partition, e.g. aiokafka's TopicPartition)."""

    parts: dict[P, PartitionLedger] = field(default_factory=dict)

    def assigned(self, tp: P, committed: int, metadata: str = "") -> None:
        part = PartitionLedger(upto=committed)
        resume = parse_metadata(committed, metadata)
        if resume is not None:
            part.resume_upto, part.resume_held = resume
        self.parts[tp] = part

    def revoked(self, tp: P) -> None:
        self.parts.pop(tp, None)

    def finished_before(self, tp: P, offset: int) -> bool:
        """Whether the commit this lane started at says the record was finished already."""
        part = self.parts.get(tp)
        return (part is not None and offset < part.resume_upto
                and offset not in part.resume_held)

    def handled(self, tp: P, offset: int) -> None:
        """The record at `offset` is finished (or skipped), in order."""
        part = self._part(tp, offset)
        part.upto = max(part.upto, offset + 1)

    def hold(self, tp: P, offset: int) -> None:
        part = self._part(tp, offset)
        part.held.add(offset)
        part.upto = max(part.upto, offset + 1)

    def release(self, tp: P, offset: int) -> None:
        """A held record is finished (its group's message was sent or dead-lettered)."""
        part = self.parts.get(tp)
        if part is not None:
            part.held.discard(offset)

    def point(self, tp: P) -> CommitPoint | None:
        part = self.parts.get(tp)
        return None if part is None else part.point()

    def oldest_held(self, tp: P) -> int | None:
        part = self.parts.get(tp)
        return min(part.held) if part is not None and part.held else None

    def held(self) -> int:
        return sum(len(p.held) for p in self.parts.values())

    def _part(self, tp: P, offset: int) -> PartitionLedger:
        part = self.parts.get(tp)
        if part is None:
            part = self.parts[tp] = PartitionLedger(upto=offset)
        return part
