"""Which sinks hear of which alert: routes from one TOML file, Alertmanager-style. Pure
except `load_routes`, which reads the file.

Routes are tried in order. The first route whose matchers all hold decides the sinks,
unless it says `continue = true`: then the next matching routes add theirs too. An
alert no route matches goes to `default_sinks` (every configured sink when unset).
A `resolved` alert notifies only where `notify_resolved` (per route, else the file's
top-level value, default true) allows it. See `streams/data/routes.example.toml`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from streams.config import ConfigError
from streams.core.policy import Severity
from streams.notify.sinks import Alert, Kind

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

    def holds(self, alert: Alert) -> bool:
        return (
            self.min_severity <= alert.severity <= self.max_severity
            and (not self.accounts or alert.account in self.accounts)
            and (not self.regions or alert.region in self.regions)
            and (not self.controls or any(fnmatchcase(c, p) for p in self.controls
                                          for c in (alert.control_id, alert.record_control_id)))
            and (not self.kinds or alert.kind in self.kinds)
        )


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: Match
    sinks: tuple[str, ...]
    notify_resolved: bool = True
    continue_: bool = False


@dataclass(frozen=True, slots=True)
class Routes:
    routes: tuple[Route, ...] = ()
    default_sinks: tuple[str, ...] | None = None
    notify_resolved: bool = True

    def sinks_for(self, alert: Alert, configured: Sequence[str]) -> list[str]:
        """The sinks this alert goes to, in configuration order, each once."""
        chosen: list[str] = []
        matched = False
        for route in self.routes:
            if not route.match.holds(alert):
                continue
            matched = True
            if not alert.resolved or route.notify_resolved:
                chosen.extend(route.sinks)
            if not route.continue_:
                break
        if not matched:
            if alert.resolved and not self.notify_resolved:
                return []
            chosen = list(configured if self.default_sinks is None else self.default_sinks)
        return [s for s in dict.fromkeys(chosen) if s in configured]

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


def parse_routes(data: dict[str, Any], where: str = "routes") -> Routes:
    _known(data, {"default_sinks", "notify_resolved", "route"}, where)
    raw_routes = data.get("route", [])
    if not isinstance(raw_routes, list):
        raise RoutingError(f"{where}: `route` must be an array of tables ([[route]])")
    routes = tuple(_route(r, i, where) for i, r in enumerate(raw_routes))
    default = data.get("default_sinks")
    return Routes(
        routes=routes,
        default_sinks=None if default is None else _sinks(default, f"{where}: default_sinks"),
        notify_resolved=_bool(data.get("notify_resolved", True), f"{where}: notify_resolved"),
    )


def _route(raw: Any, index: int, where: str) -> Route:
    if not isinstance(raw, dict):
        raise RoutingError(f"{where}: route #{index + 1} must be a table")
    name = str(raw.get("name") or f"#{index + 1}")
    here = f"{where}: route {name}"
    _known(raw, {"name", "match", "sinks", "notify_resolved", "continue"}, here)
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
    )


def _match(raw: dict[str, Any], where: str) -> Match:
    keys = {"min_severity", "max_severity", "accounts", "regions", "controls", "kinds"}
    _known(raw, keys, f"{where}: match")
    try:
        severity = Severity.parse(str(raw.get("min_severity", "INFORMATIONAL")))
        ceiling = Severity.parse(str(raw.get("max_severity", "CRITICAL")))
        kinds = tuple(Kind(k) for k in _strings(raw.get("kinds", []), f"{where}: kinds"))
    except ValueError as exc:
        raise RoutingError(f"{where}: {exc}") from None
    return Match(
        min_severity=severity,
        max_severity=ceiling,
        accounts=_strings(raw.get("accounts", []), f"{where}: accounts"),
        regions=_strings(raw.get("regions", []), f"{where}: regions"),
        controls=_strings(raw.get("controls", []), f"{where}: controls"),
        kinds=kinds,
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
