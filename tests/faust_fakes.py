"""Stand-ins for what the worker reads of faust-streaming's consumer: records as its
stream delivers them, and its record of skipped offsets ("gaps")."""

from __future__ import annotations

from dataclasses import dataclass, field

from faust.types import TP


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes = b""
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class Gaps:
    """Faust's interval tree of offsets counted as done: what was added to it."""

    def __init__(self) -> None:
        self.added: list[tuple[int, int]] = []

    def addi(self, start: int, end: int) -> None:
        self.added.append((start, end))

    def merge_overlaps(self) -> None:
        pass
