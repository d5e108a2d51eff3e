"""How configuration is written (`streams.config`): durations, sizes, environment names,
and the one-line error for an optional dependency that is not installed."""

from __future__ import annotations

import pytest

from streams.config import (
    ConfigError,
    env_name,
    format_duration,
    format_size,
    parse_duration_ms,
    parse_size,
    require_extra,
)
from streams.worker.settings import WorkerSettings


@pytest.mark.parametrize(("text", "ms"), [
    ("90s", 90_000), ("5m", 300_000), ("24h", 86_400_000), ("7d", 604_800_000), ("1w", 604_800_000),
    ("250ms", 250), ("30", 30_000), ("1.5h", 5_400_000), (" 2h ", 7_200_000),
])
def test_durations_are_read_as_operators_write_them(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "abc", "30x", "5 hours", "h", "--5h"])
def test_a_bad_duration_is_one_line_that_shows_how_to_write_it(text: str) -> None:
    with pytest.raises(ConfigError, match=r"not a duration: .* \(write it like 90s, 5m, 24h or 7d\)"):
        parse_duration_ms(text)


@pytest.mark.parametrize("text", ["-5h", " -90s", "-1"])
def test_a_negative_duration_is_said_to_be_negative(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^a duration cannot be negative: '-"):
        parse_duration_ms(text)


def test_durations_and_sizes_print_back_in_the_form_they_are_read() -> None:
    for ms in (90_000, 300_000, 86_400_000, 30 * 3_600_000):
        assert parse_duration_ms(format_duration(ms)) == ms
    for size in (1000, 512 * 1024, 4 * 1024 * 1024):
        assert parse_size(format_size(size)) == size
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("4MB")


def test_every_flag_has_its_environment_variable() -> None:
    assert env_name("--ssl-ca-file") == "FLAPGUARD_SSL_CA_FILE"
    assert env_name("--window") == "FLAPGUARD_WINDOW"


def test_a_missing_extra_names_the_extra_to_install() -> None:
    require_extra("json", "plot", "--plot")  # installed: nothing to say
    with pytest.raises(ConfigError) as raised:
        require_extra("flapguard_no_such_module", "plot", "--plot")
    assert str(raised.value) == ("--plot needs flapguard_no_such_module, which is not installed: "
                                 "pip install 'flapguard[plot]'")


def test_the_worker_refuses_an_unknown_store_before_it_starts() -> None:
    assert WorkerSettings(store="rocksdb://").store == "rocksdb://"  # the rocksdb extra is installed
    with pytest.raises(ConfigError, match=r"unknown --store 'redis://' \(one of memory://, rocksdb://\)"):
        WorkerSettings(store="redis://")
