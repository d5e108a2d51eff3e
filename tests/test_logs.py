"""How the long-running commands log (`streams.logs`)."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from streams import logs


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.fixture(autouse=True)
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in logs.LIBRARIES}
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in levels.items():
        logging.getLogger(name).setLevel(was)


def test_aiokafkas_start_up_metadata_error_is_debug_not_error() -> None:
    logs.setup("INFO")
    noise = record("aiokafka.cluster", logging.ERROR,
                   "Topic app-meta-changelog not found in cluster metadata")
    assert logs.StartupNoise().filter(noise) is False  # the library is at WARNING: dropped
    assert noise.levelname == "DEBUG"
    other = record("aiokafka.cluster", logging.ERROR, "something else")
    assert logs.StartupNoise().filter(other) is True and other.levelname == "ERROR"
    # A producer's first write to a topic just created.
    retried = record("aiokafka.producer.sender", logging.WARNING,
                     "Got error produce response on topic-partition TopicPartition(topic='t', partition=0), "
                     "retrying. Error: <class 'aiokafka.errors.NotLeaderForPartitionError'>")
    assert logs.StartupNoise().filter(retried) is False
    logs.setup("DEBUG")
    assert logs.StartupNoise().filter(
        record("aiokafka.cluster", logging.ERROR, "Topic x not found in cluster metadata")) is True


def test_flapguard_speaks_from_info_and_the_libraries_from_warning() -> None:
    logs.setup("INFO")
    assert logging.getLogger("flapguard.worker").isEnabledFor(logging.INFO)
    assert not logging.getLogger("faust.transport").isEnabledFor(logging.INFO)
    assert logging.getLogger("aiokafka").isEnabledFor(logging.WARNING)
    logs.setup("DEBUG")
    assert logging.getLogger("aiokafka.consumer").isEnabledFor(logging.DEBUG)


def test_json_lines_carry_time_level_logger_message_and_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("flapguard.worker", logging.ERROR, __file__, 1, "cannot %s", ("go",),
                                   sys.exc_info())
    line = orjson.loads(logs.JsonFormatter().format(failed))
    assert line["level"] == "ERROR" and line["logger"] == "flapguard.worker"
    assert line["message"] == "cannot go" and "ValueError: boom" in line["exception"]
    assert line["time"].endswith("+00:00")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logs.setup("INFO", "xml")
