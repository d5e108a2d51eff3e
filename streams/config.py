"""How configuration is written: `--some-name` flags and `FLAPGUARD_SOME_NAME` variables,
durations (`90s`, `5m`, `24h`), sizes (`4MiB`), and the one error for a bad value.

Pure: no I/O. The settings themselves live with what they configure: the decision
policy in `streams.core.policy`, the worker's in `streams.worker.settings`.
"""

from __future__ import annotations

import importlib.util
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


ENV_PREFIX = "FLAPGUARD_"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line for the user."""


def require_extra(module: str, extra: str, what: str) -> None:
    """Fail with one line when `what` needs an optional dependency that is not installed
    (a plain `pip install flapguard` is a lean worker; see pyproject's extras)."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{what} needs {module}, which is not installed: "
                          f"pip install 'flapguard[{extra}]'")


def env_name(flag: str) -> str:
    """`--ssl-ca-file` -> `FLAPGUARD_SSL_CA_FILE`: every flag's environment variable."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_duration_ms(text: str) -> int:
    """`90s`, `5m`, `24h`, `7d` (a bare number means seconds) -> milliseconds."""
    match = _DURATION.match(text)
    if not match:
        if text.strip().startswith("-") and _DURATION.match(text.strip()[1:]):
            raise ConfigError(f"a duration cannot be negative: {text.strip()!r}")
        raise ConfigError(f"not a duration: {text!r} (write it like 90s, 5m, 24h or 7d)")
    number, unit = match.groups()
    return round(float(number) * UNIT_MS[unit or "s"])


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")


_UNIT_BYTES = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(text: str) -> int:
    """`4MiB`, `512KiB`, `1000` (bytes) -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"not a size: {text!r} (write it like 4MiB, 512KiB or 1000)")
    number, unit = match.groups()
    return int(number) * _UNIT_BYTES[unit or "B"]


def format_size(size: int) -> str:
    """The shortest exact form: 4194304 -> `4MiB`."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _UNIT_BYTES[unit] == 0:
            return f"{size // _UNIT_BYTES[unit]}{unit}"
    return str(size)


def format_duration(ms: int) -> str:
    """The shortest exact form: 108000000 -> `30h`."""
    for unit in ("w", "d", "h", "m", "s"):
        size = UNIT_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
