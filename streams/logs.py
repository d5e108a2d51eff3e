"""How flapguard's long-running commands log: one format for the whole process (plain
lines, or one JSON object a line for a log pipeline), no terminal escape codes, the
libraries' chatter held back to warnings, and no ERROR for a normal start-up."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

FORMATS = ("plain", "json")
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Their INFO lines are many and terse; flapguard says what matters in its own words.
LIBRARIES = ("faust", "mode", "aiokafka", "kafka", "botocore", "boto3", "urllib3")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


# What aiokafka logs at ERROR or WARNING while the metadata catches up with topics just
# created (Faust's changelogs at every first start, a replay's topic): retried by
# aiokafka, and no error.
STARTUP_NOISE = (("aiokafka.cluster", "not found in cluster metadata"),
                 ("aiokafka.consumer.fetcher", "NotLeaderForPartitionError"),
                 ("aiokafka.producer.sender", "NotLeaderForPartitionError"))


class StartupNoise(logging.Filter):
    """Keeps aiokafka's start-up noise (`STARTUP_NOISE`) as DEBUG: an ERROR-based log
    alert would fire at every deployment."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(record.name == name and text in record.getMessage() for name, text in STARTUP_NOISE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def setup(level: str, log_format: str = "plain") -> None:
    """Log to stderr at `level` (the libraries at WARNING unless it is DEBUG)."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (one of {', '.join(FORMATS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN))
    handler.addFilter(StartupNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    libraries = logging.DEBUG if root.level <= logging.DEBUG else max(root.level, logging.WARNING)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(libraries)
