"""Which sinks hear of which alert: routes from one TOML file, Alertmanager-style. Pure
except `load_routes`, which reads the file.

Routes are tried in order. The first route whose matchers all hold decides the sinks,
unless it says `continue = true`: then the next matching routes add theirs too. An
alert no route matches goes to `default_sinks` (every configured sink when unset).
A `resolved` alert notifies only where `notify_resolved` (per route, else the file's
top-level value, default true) allows it. A route may group what it sends to Slack and
SNS (`group_by`, `group_wait`, `group_interval`; the top-level values are the defaults
of routes that give none, and apply to alerts no route matches): see
`streams.notify.grouping`. See `streams/data/routes.example.toml`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from streams.config import ConfigError, parse_duration_ms
from streams.core.policy import Severity
from streams.notify.grouping import GROUP_LABELS, GROUPED_SINKS, NO_GROUPING, Grouping
from streams.notify.sinks import Alert, Kind, ResolveReason

SINK_NAMES = ("stdout", "slack", "pagerduty", "sns")


class RoutingError(ConfigError):
    """A routes file that cannot be used; one line naming the file and the route."""


@dataclass(frozen=True, slots=True)
class Match:
    min_severity: Severity = Severity.INFORMATIONAL
    max_severity: Severity = Severity.CRITICAL
    accounts: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    # Shell-style patterns: "RDS.*" matches every RDS control, also a legacy finding's
    # `.../RDS.45` GeneratorId; a pattern may also match the record's control as written.
    controls: tuple[str, ...] = ()
    kinds: tuple[Kind, ...] = ()
    # Why a `resolved` alert closed its incident; an alert of another kind never matches.
    reasons: tuple[ResolveReason, ...] = ()

    def holds(self, alert: Alert) -> bool:
        return (
            self.min_severity <= alert.severity <= self.max_severity
            and (not self.accounts or alert.account in self.accounts)
            and (not self.regions or alert.region in self.regions)
            and (not self.controls or any(fnmatchcase(c, p) for p in self.controls
                                          for c in (alert.control_id, alert.record_control_id)))
            and (not self.kinds or alert.kind in self.kinds)
            and (not self.reasons or alert.reason in self.reasons)
        )


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: Match
    sinks: tuple[str, ...]
    notify_resolved: bool = True
    continue_: bool = False
    # None: every alert alone, at once (today's behaviour, and the default).
    grouping: Grouping | None = None


# The name of the "route" of alerts that no route matches (grouped by the top level).
DEFAULT_ROUTE = "(default)"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One sink an alert goes to, and how: grouped by the first route that sent it there
    (None: alone, at once)."""

    sink: str
    route: str
    grouping: Grouping | None = None


@dataclass(frozen=True, slots=True)
class Routes:
    routes: tuple[Route, ...] = ()
    default_sinks: tuple[str, ...] | None = None
    notify_resolved: bool = True
    grouping: Grouping | None = None  # for alerts no route matches

    def sinks_for(self, alert: Alert, configured: Sequence[str]) -> list[str]:
        """The sinks this alert goes to, in configuration order, each once."""
        return [d.sink for d in self.deliveries_for(alert, configured)]

    def deliveries_for(self, alert: Alert, configured: Sequence[str]) -> list[Delivery]:
        """Where this alert goes, each sink once, grouped as the first route sending it
        there says (PagerDuty and stdout never: one event per alert, at once)."""
        chosen: list[Delivery] = []
        matched = False
        for route in self.routes:
            if not route.match.holds(alert):
                continue
            matched = True
            if not alert.resolved or route.notify_resolved:
                chosen.extend(Delivery(s, route.name, route.grouping) for s in route.sinks)
            if not route.continue_:
                break
        if not matched:
            if alert.resolved and not self.notify_resolved:
                return []
            sinks = configured if self.default_sinks is None else self.default_sinks
            chosen = [Delivery(s, DEFAULT_ROUTE, self.grouping) for s in sinks]
        first: dict[str, Delivery] = {}
        for delivery in chosen:
            if delivery.sink in configured and delivery.sink not in first:
                grouped = delivery.grouping if delivery.sink in GROUPED_SINKS else None
                first[delivery.sink] = Delivery(delivery.sink, delivery.route, grouped)
        return list(first.values())

    def groups_any(self) -> bool:
        return self.grouping is not None or any(r.grouping is not None for r in self.routes)

    def sinks_named(self) -> set[str]:
        named = {s for r in self.routes for s in r.sinks}
        return named | set(self.default_sinks or ())


def load_routes(path: Path) -> Routes:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutingError(f"routes file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RoutingError(f"routes file {path}: {exc}") from None
    return parse_routes(data, str(path))


GROUP_KEYS = {"group_by", "group_wait", "group_interval"}


def parse_routes(data: dict[str, Any], where: str = "routes") -> Routes:
    _known(data, {"default_sinks", "notify_resolved", "route", *GROUP_KEYS}, where)
    raw_routes = data.get("route", [])
    if not isinstance(raw_routes, list):
        raise RoutingError(f"{where}: `route` must be an array of tables ([[route]])")
    top = _grouping(data, None, where)
    routes = tuple(_route(r, i, where, top) for i, r in enumerate(raw_routes))
    default = data.get("default_sinks")
    return Routes(
        routes=routes,
        default_sinks=None if default is None else _sinks(default, f"{where}: default_sinks"),
        notify_resolved=_bool(data.get("notify_resolved", True), f"{where}: notify_resolved"),
        grouping=top,
    )


def _grouping(raw: dict[str, Any], inherited: Grouping | None, where: str) -> Grouping | None:
    """A table's grouping: off unless it (or, for a route, the top level) sets one of the
    three keys; `group_by = ["..."]` turns it off."""
    if not GROUP_KEYS & set(raw):
        return inherited
    base = inherited or Grouping()
    by = base.by
    if "group_by" in raw:
        by = _strings(raw["group_by"], f"{where}: group_by")
        if NO_GROUPING in by:
            if len(by) > 1:
                raise RoutingError(f'{where}: group_by ["{NO_GROUPING}"] turns grouping off: '
                                   "nothing else goes with it")
            return None
        for label in by:
            if label not in GROUP_LABELS:
                raise RoutingError(f"{where}: group_by: unknown label {label!r} (one of "
                                   f"{', '.join(GROUP_LABELS)}, or \"{NO_GROUPING}\" for no grouping)")
        by = tuple(dict.fromkeys(by))
    return Grouping(by=by, wait_s=_duration_s(raw, "group_wait", base.wait_s, where),
                    interval_s=_duration_s(raw, "group_interval", base.interval_s, where))


def _duration_s(raw: dict[str, Any], name: str, default: float, where: str) -> float:
    if name not in raw:
        return default
    value = raw[name]
    if not isinstance(value, str):
        raise RoutingError(f"{where}: {name}: write a duration as a string, like \"30s\" or \"5m\"")
    try:
        return parse_duration_ms(value) / 1000
    except ConfigError as exc:
        raise RoutingError(f"{where}: {name}: {exc}") from None


def _route(raw: Any, index: int, where: str, grouping: Grouping | None) -> Route:
    if not isinstance(raw, dict):
        raise RoutingError(f"{where}: route #{index + 1} must be a table")
    name = str(raw.get("name") or f"#{index + 1}")
    here = f"{where}: route {name}"
    _known(raw, {"name", "match", "sinks", "notify_resolved", "continue", *GROUP_KEYS}, here)
    if "sinks" not in raw:
        raise RoutingError(f"{here}: `sinks` is required (use [] to silence what it matches)")
    match = raw.get("match", {})
    if not isinstance(match, dict):
        raise RoutingError(f"{here}: `match` must be a table")
    return Route(
        name=name,
        match=_match(match, here),
        sinks=_sinks(raw["sinks"], f"{here}: sinks"),
        notify_resolved=_bool(raw.get("notify_resolved", True), f"{here}: notify_resolved"),
        continue_=_bool(raw.get("continue", False), f"{here}: continue"),
        grouping=_grouping(raw, grouping, here),
    )


def _match(raw: dict[str, Any], where: str) -> Match:
    keys = {"min_severity", "max_severity", "accounts", "regions", "controls", "kinds", "reasons"}
    _known(raw, keys, f"{where}: match")
    try:
        severity = Severity.parse(str(raw.get("min_severity", "INFORMATIONAL")))
        ceiling = Severity.parse(str(raw.get("max_severity", "CRITICAL")))
        kinds = tuple(Kind(k) for k in _strings(raw.get("kinds", []), f"{where}: kinds"))
        reasons = tuple(ResolveReason(r) for r in _strings(raw.get("reasons", []), f"{where}: reasons"))
    except ValueError as exc:
        raise RoutingError(f"{where}: {exc}") from None
    return Match(
        min_severity=severity,
        max_severity=ceiling,
        accounts=_strings(raw.get("accounts", []), f"{where}: accounts"),
        regions=_strings(raw.get("regions", []), f"{where}: regions"),
        controls=_strings(raw.get("controls", []), f"{where}: controls"),
        kinds=kinds,
        reasons=reasons,
    )


def _known(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RoutingError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise RoutingError(f"{where}: expected a list of strings")
    # Account ids written as TOML integers would lose leading zeros: refuse them.
    if any(isinstance(v, int) for v in value):
        raise RoutingError(f"{where}: write values as strings (\"012345678901\"), not numbers")
    return tuple(value)


def _sinks(value: Any, where: str) -> tuple[str, ...]:
    sinks = _strings(value, where)
    for sink in sinks:
        if sink not in SINK_NAMES:
            raise RoutingError(f"{where}: unknown sink {sink!r} (one of {', '.join(SINK_NAMES)})")
    return sinks


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RoutingError(f"{where}: expected true or false")
    return value


def check_configured(routes: Routes, configured: Iterable[str]) -> None:
    """A route naming a sink that has no settings is a mistake worth stopping for."""
    missing = sorted(routes.sinks_named() - set(configured))
    if missing:
        raise RoutingError(f"routes name sink {missing[0]!r}, which is not configured "
                           "(see `flapguard notify --help` for its options)")
