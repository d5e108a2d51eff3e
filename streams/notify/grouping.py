"""Grouping bursts, as Alertmanager does: which alerts form a group, and when a group is
due. Pure: no I/O, no clock of its own (every call is given `now`, in seconds).

A route that groups (`group_by`, `group_wait`, `group_interval` in the routes file) puts
each alert it sends to Slack or SNS into the group of its route and its `group_by`
values. The first alert of a group waits `group_wait`; then one message lists every
alert the group holds. Alerts that join the group later go out together, at most every
`group_interval` after the group's last message. A group with nothing to send for a
whole `group_interval` is forgotten: the next alert starts a new one (and waits
`group_wait` again). PagerDuty and stdout are never grouped.

Held alerts are not committed (`streams.notify.ledger`): a notifier stopped while it
holds a group leaves the group's records for the next one to read and send.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from streams.notify.sinks import Alert

# What `group_by` may name, and how each is read from an alert.
GROUP_LABELS: dict[str, Callable[[Alert], str]] = {
    "account": lambda a: a.account,
    "region": lambda a: a.region,
    "control": lambda a: a.control_id,
    "severity": lambda a: a.severity.name,
    "kind": lambda a: a.kind_label,
    "resource_type": lambda a: a.resource_type,
}
# Sinks whose messages can list many alerts; the others get one event per alert.
GROUPED_SINKS = ("slack", "sns")
# `group_by = ["..."]`: every alert alone, at once (Alertmanager's way to turn it off).
NO_GROUPING = "..."


@dataclass(frozen=True, slots=True)
class Grouping:
    """A route's grouping settings (Alertmanager's defaults for the times)."""

    by: tuple[str, ...] = ("account", "control")
    wait_s: float = 30.0
    interval_s: float = 300.0


@dataclass(frozen=True, slots=True)
class GroupKey:
    """The route and the values of its `group_by` labels, e.g. ("prod", (("account",
    "111111111111"), ("control", "RDS.45")))."""

    route: str
    labels: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return ", ".join(f"{name} {value or '-'}" for name, value in self.labels) or "all alerts"


def group_key(route: str, grouping: Grouping, alert: Alert) -> GroupKey:
    return GroupKey(route, tuple((name, GROUP_LABELS[name](alert)) for name in grouping.by))


T = TypeVar("T")


@dataclass(slots=True)
class Group(Generic[T]):
    key: GroupKey
    grouping: Grouping
    pending: list[T] = field(default_factory=list)
    due_at: float = 0.0
    sent_at: float | None = None  # when its last message was taken to be sent


@dataclass(slots=True)
class Groups(Generic[T]):
    """The groups of one sink: alerts (any item) held until their group is due."""

    groups: dict[GroupKey, Group[T]] = field(default_factory=dict)

    def add(self, key: GroupKey, grouping: Grouping, item: T, now: float) -> None:
        group = self.groups.get(key)
        if group is None or self._forgotten(group, now):
            group = self.groups[key] = Group(key, grouping, due_at=now + grouping.wait_s)
        elif not group.pending and group.sent_at is not None:
            # Sent before: the next message goes out a group_interval after the last one.
            group.due_at = group.sent_at + group.grouping.interval_s
        group.pending.append(item)

    def take_due(self, now: float) -> list[tuple[GroupKey, list[T]]]:
        """The groups due now, each with the alerts to list in its message (taken out),
        in the order they became due."""
        due = sorted((g for g in self.groups.values() if g.pending and g.due_at <= now),
                     key=lambda g: g.due_at)
        out = []
        for group in due:
            out.append((group.key, group.pending))
            group.pending = []
            group.sent_at = now
            group.due_at = now + group.grouping.interval_s
        for key in [k for k, g in self.groups.items() if self._forgotten(g, now)]:
            del self.groups[key]
        return out

    def take_all(self, now: float) -> list[tuple[GroupKey, list[T]]]:
        """Every group that holds alerts, due or not (nothing more will come)."""
        for group in self.groups.values():
            group.due_at = min(group.due_at, now)
        return self.take_due(now)

    def take_holding(self, wanted: Callable[[T], bool], now: float) -> list[tuple[GroupKey, list[T]]]:
        """The groups holding an alert `wanted` picks, due or not (a group held so long
        that the progress it keeps uncommitted would no longer fit in a commit)."""
        for group in self.groups.values():
            if any(wanted(item) for item in group.pending):
                group.due_at = min(group.due_at, now)
        return self.take_due(now)

    def drop(self, unwanted: Callable[[T], bool]) -> None:
        """Forget held alerts (of partitions another notifier delivers now)."""
        for group in self.groups.values():
            group.pending = [item for item in group.pending if not unwanted(item)]

    def next_due(self) -> float | None:
        """When the next group is due; None when nothing is held."""
        return min((g.due_at for g in self.groups.values() if g.pending), default=None)

    def held(self) -> int:
        return sum(len(g.pending) for g in self.groups.values())

    @staticmethod
    def _forgotten(group: Group[T], now: float) -> bool:
        return (not group.pending and group.sent_at is not None
                and now >= group.sent_at + group.grouping.interval_s)
