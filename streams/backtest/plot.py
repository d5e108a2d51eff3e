"""The backtest's picture: the window sweep and the archive -> re-create gaps (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from streams.backtest.run import GAP_BIN_S, SweepRow
from streams.config import ConfigError, format_duration, require_extra

HOUR_MS = 3_600_000


def _hours(ms: int) -> str:
    """`24h` rather than `1d`: operators compare windows with gaps in hours."""
    return f"{ms // HOUR_MS}h" if ms % HOUR_MS == 0 else format_duration(ms)


def check_plot_path(path: Path) -> None:
    """Refuse, in one line and before any work, a picture that could not be written."""
    require_extra("matplotlib", "plot", "--plot")
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ConfigError(f"--plot {path}: not a picture format matplotlib writes "
                          f"(give a file ending in one of .{', .'.join(sorted(formats))})")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot {path}: no such folder: {path.parent}")


def plot_backtest(path: Path, rows: Sequence[SweepRow], gaps_by_minute: Mapping[int, int], *,
                  window_ms: int, title: str = "") -> None:
    """Two panels: alerts, suppressions, missed and false alerts per window (when there
    is a sweep), and the histogram of paired gaps with the window marked."""
    require_extra("matplotlib", "plot", "--plot")
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    panels = 2 if rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), dpi=90, squeeze=False)
    if rows:
        ax = axes[0][0]
        x = range(len(rows))
        ax.plot(x, [r.alerts for r in rows], "o-", label="alerts")
        ax.plot(x, [r.suppressed for r in rows], "s-", label="suppressed")
        if rows[0].missed is not None:
            ax.plot(x, [r.missed for r in rows], "v-", label="missed true alerts")
            ax.plot(x, [r.false_alerts for r in rows], "^-", label="false alerts")
        ax.set_xticks(list(x), [_hours(r.window_ms) for r in rows])
        ax.set_xlabel("window")
        ax.set_ylabel("findings")
        ax.set_title("window sweep")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[0][panels - 1]
    hours = [m * GAP_BIN_S / 3600 for m in gaps_by_minute]
    if hours:
        ax.hist(hours, bins=min(60, max(10, int(max(hours)) + 1)), weights=list(gaps_by_minute.values()))
    ax.axvline(window_ms / 3_600_000, color="red", linestyle="--", label=f"window {_hours(window_ms)}")
    ax.set_xlim(0, max([window_ms / 3_600_000, *hours]) + 2)
    ax.set_xlabel("archive -> re-create gap (hours)")
    ax.set_ylabel("pairs")
    ax.set_title("paired gaps")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
