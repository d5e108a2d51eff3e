"""The backtest report as text."""

from __future__ import annotations

from typing import Any

from streams.config import format_duration


def render_report(summary: dict[str, Any]) -> str:
    """A backtest's summary (its report's JSON, with the sweep and gaps) as printed."""
    lines = [
        f"findings {summary['findings']}  alerts {summary['alerts']}  suppressed "
        f"{summary['suppressed']}  resolved {summary['resolved']}  dead letters "
        f"{summary['dead_letters']}  (naive notifier: {summary['naive_alerts']} alerts)",
    ]
    source = summary.get("source")
    if source:
        lines.append(_source_text(source))
    for label, count in summary["by_reason"].items():
        lines.append(f"  {label:<42} {count}")
    for reason, count in summary.get("closed", {}).items():
        lines.append(f"  {'incidents closed: ' + reason:<42} {count}")
    labels = summary.get("labels")
    if labels:
        lines.append(
            f"labels: missed true alerts {labels['missed_true_alerts']} of {labels['true_alerts']}, "
            f"false alerts {labels['false_alerts']}, suppression precision "
            f"{_share_text(labels['suppression_precision'])}, recall "
            f"{_share_text(labels['suppression_recall'])}, flap re-creations suppressed "
            f"{labels['flap_recreations_suppressed']} of {labels['flap_recreations']}")
        deleted = labels.get("deleted_resources")
        if deleted and deleted["incidents"]:
            closed = ", ".join(f"{reason} {n}" for reason, n in deleted["closed"].items()) or "none"
            lines.append(
                f"deleted resources: {deleted['incidents']} incidents open at deletion, closed: "
                f"{closed}; continued by a successor: {deleted.get('continued', 0)}; "
                f"still open: {deleted['open_within_window']} within window + "
                f"first-sight age of the end, {deleted['open_overdue']} overdue")
    if summary.get("sweep"):
        lines.append(f"  {'window':>8} {'alerts':>8} {'suppressed':>11} {'missed':>7} {'false':>7}")
        for row in summary["sweep"]:
            window = format_duration(int(row["window_seconds"] * 1000))
            lines.append(f"  {window:>8} {row['alerts']:>8} {row['suppressed']:>11} "
                         f"{_blank(row['missed']):>7} {_blank(row['false']):>7}")
    rate = summary["findings_per_second"]
    if rate:
        lines.append(f"{rate:,.0f} findings/s")
    return "\n".join(lines)


def _source_text(source: dict[str, Any]) -> str:
    """Where a topic backtest read, and how much warm-up its state had."""
    span = f"{source['topic']}: {source['records']} records"
    if source["since"]:
        span += f" from {source['since']}"
    if source["until"]:
        span += f" until {source['until']}"
    if source.get("processes", 1) > 1:
        span += f" (read by {source['processes']} processes)"
    warm = source["warm_up"]
    if not source["since"]:
        return f"{span}; no warm-up (from the earliest record kept)"
    had, wanted = warm["seconds"] / 3600, warm["wanted_seconds"] / 3600
    text = (f"{span}; warm-up {warm['findings']} findings over {had:.1f} h (wanted {wanted:.1f} h: "
            "window + first-sight age)")
    if not warm["complete"]:
        text += ", from the earliest record kept: archives before it are unknown"
    return text


def _share_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _blank(value: int | None) -> str:
    return "-" if value is None else str(value)
