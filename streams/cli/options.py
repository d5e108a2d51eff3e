"""What every command shares: its errors and exit codes, the parser, options backed by
environment variables, typed values, the decision policy, the broker and its security,
and the metrics address.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from streams.config import ConfigError, env_name, format_duration, format_size, parse_duration_ms, parse_size
from streams.core.policy import PairingRule, Policy, Severity, pairing_rules
from streams.kafka.producer import CODECS, ProducerSettings
from streams.kafka.security import BrokerSecurity
from streams.kafka.topics import Replication

EXIT_USAGE = 2
EXIT_FAILURE = 1

# What `add_subparsers()` returns: each command's `add(sub)` registers its parser on it.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


class CliError(Exception):
    """An error for the user: printed as one line, exit non-zero."""


class Parser(argparse.ArgumentParser):
    """A usage error is one line and exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # `--window -5h` is a value (refused for being negative), not an unknown option.
        self._negative_number_matcher = re.compile(r"^-\d+(\.\d+)?[a-zA-Z]*$")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class EnvValueError(Exception):
    """A `FLAPGUARD_*` variable that does not convert. Every command that has the option
    reads the variable when the parsers are built; only the command that runs reports it
    (`raise_env_errors`), under its own name."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


def raise_env_errors(args: argparse.Namespace) -> None:
    """Report, as a usage error of the command that runs, a bad environment value it
    would use (a flag on the command line replaces it)."""
    for value in vars(args).values():
        if isinstance(value, EnvValueError):
            value.parser.error(str(value))


def option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: str | None,
    help: str,
    convert: Callable[[str], Any] = str,
    env_fallbacks: Sequence[str] = (),
    **kwargs: Any,
) -> None:
    """An option whose default comes from its environment variable, then `default`."""
    names = [env_name(flag), *env_fallbacks]
    found = next((n for n in names if os.environ.get(n)), None)
    raw = os.environ[found] if found is not None else default
    where = " or ".join(names)
    shown = f" (default {default})" if default is not None else ""
    value: Any
    try:
        value = None if raw is None else _typed(convert)(raw)
    except argparse.ArgumentTypeError as exc:
        if found is None:
            raise  # a default of the code's own that does not convert: a bug, not input
        value = EnvValueError(parser, f"{found}: {exc}")
    parser.add_argument(
        flag,
        type=_typed(convert),
        default=value,
        help=f"{help}{shown}; env {where}",
        **kwargs,
    )


def _typed(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert` with its errors as argparse's: "argument --window: not a duration: ..."."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except (ConfigError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def switch(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A switch that `FLAPGUARD_SOME_NAME=1` also turns on."""
    on = os.environ.get(env_name(flag), "").lower() not in ("", "0", "false", "no")
    parser.add_argument(flag, action="store_true", default=on, help=f"{help}; env {env_name(flag)}")


def env_flag(flag: str) -> bool:
    """Whether `FLAPGUARD_SOME_NAME` is 1, true, yes or on."""
    return os.environ.get(env_name(flag), "").strip().lower() in ("1", "true", "yes", "on")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be positive, got {text}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {text}")
    return value


def durations(text: str) -> list[int]:
    values = [parse_duration_ms(part) for part in text.split(",") if part.strip()]
    if not values or min(values) <= 0:
        raise ValueError(f"need positive durations separated by commas, got {text!r}")
    return sorted(set(values))


def date_ms(text: str) -> int:
    from datetime import UTC, datetime

    try:
        day = datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (write it like 2025-09-01)") from None
    return int(day.timestamp() * 1000)


def moment_ms(text: str) -> int:
    """A moment: an ISO 8601 timestamp (`2025-10-01T00:00:00Z`; no offset: UTC), or a
    duration before now (`14d`)."""
    import time
    from datetime import UTC, datetime

    try:
        return int(time.time() * 1000) - parse_duration_ms(text)
    except ConfigError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a timestamp or a duration: {text!r} (write it like "
                         "2025-10-01T00:00:00Z or 14d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def load_pairing(text: str) -> tuple[PairingRule, ...]:
    """A pairing policy file (docs/design.md §3, pairing policy), read and checked."""
    import tomllib
    from pathlib import Path

    path = Path(text)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {text}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{text}: not TOML: {exc}") from None
    return pairing_rules(data, text)


def add_policy(parser: argparse.ArgumentParser) -> None:
    d = Policy()
    option(parser, "--window", default=format_duration(d.window_ms), convert=parse_duration_ms,
           help="pair an archive and a re-creation this close in event time")
    option(parser, "--hold", default=format_duration(d.hold_ms), convert=parse_duration_ms,
           help="reorder buffer: decide an event once the watermark is this far past it "
                "(a possible re-creation: twice as far)")
    option(parser, "--min-severity", default=d.min_severity.name, convert=Severity.parse,
           help="lowest severity that alerts")
    option(parser, "--first-sight-age", default=format_duration(d.first_sight_age_ms),
           convert=parse_duration_ms,
           help="a finding first seen this long after its creation is a bootstrap, not new")
    option(parser, "--state-ttl", default=format_duration(d.state_ttl_ms),
           convert=parse_duration_ms, help="forget a finding this long after its last update")
    option(parser, "--pairing", default=None, convert=load_pairing,
           help="per-control pairing policy (TOML: [[pairing]] controls, window, archives); "
           "see streams/data/pairing.example.toml")
    option(parser, "--max-message-bytes", default=format_size(d.max_message_bytes), convert=parse_size,
           help="a larger message is a dead letter (oversized)")
    option(parser, "--max-findings-per-message", default=str(d.max_findings_per_message),
           convert=positive_int, help="a message with more findings is a dead letter (too_many_findings)")
    option(parser, "--max-depth", default=str(d.max_depth), convert=positive_int,
           help="a finding nested deeper is a dead letter (too_deep)")
    option(parser, "--max-string-length", default=str(d.max_string_length), convert=positive_int,
           help="a finding with a longer string (key or value, in characters) is a dead letter "
           "(string_too_long)")


def policy_from(args: argparse.Namespace) -> Policy:
    return Policy(
        window_ms=args.window,
        hold_ms=args.hold,
        min_severity=args.min_severity,
        first_sight_age_ms=args.first_sight_age,
        state_ttl_ms=args.state_ttl,
        max_message_bytes=args.max_message_bytes,
        max_findings_per_message=args.max_findings_per_message,
        max_depth=args.max_depth,
        max_string_length=args.max_string_length,
        pairing=args.pairing or (),
    )


def add_broker(parser: argparse.ArgumentParser, default: str | None = "127.0.0.1:9092") -> None:
    option(parser, "--bootstrap-servers", default=default, env_fallbacks=["KAFKA_BOOTSTRAP_SERVERS"],
           help="Kafka bootstrap servers, host:port[,host:port]")
    _add_security(parser)


def _add_security(parser: argparse.ArgumentParser) -> None:
    """Broker TLS, SASL and MSK IAM (streams.kafka.security checks the combination).
    Secrets: never a default shown, never echoed; their environment variables are the
    way to give them."""
    secret = " (a secret; prefer the environment variable)"
    option(parser, "--security-protocol", default="PLAINTEXT",
           help="how to talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    option(parser, "--ssl-ca-file", default=None,
           help="PEM file of the CA certificates that signed the brokers' (default: the "
           "system's)")
    option(parser, "--ssl-cert-file", default=None,
           help="PEM client certificate (chain), for brokers that require one (mutual TLS)")
    option(parser, "--ssl-key-file", default=None,
           help="PEM private key of --ssl-cert-file (unless that file holds it)")
    option(parser, "--ssl-key-password", default=None, help="password of an encrypted key" + secret)
    option(parser, "--sasl-mechanism", default=None,
           help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, or OAUTHBEARER (MSK IAM; implied by "
           "--msk-iam-region)")
    option(parser, "--sasl-username", default=None, help="SASL PLAIN/SCRAM user name")
    option(parser, "--sasl-password", default=None, help="SASL PLAIN/SCRAM password" + secret)
    option(parser, "--msk-iam-region", default=None,
           help="Amazon MSK IAM: sign SASL OAUTHBEARER tokens for this Region with the AWS "
           "credential chain (needs --security-protocol SASL_SSL)")


def security_from(args: argparse.Namespace) -> BrokerSecurity:
    """The broker security of a command's options (a ConfigError if they do not fit)."""
    return BrokerSecurity(
        protocol=args.security_protocol, ca_file=args.ssl_ca_file, cert_file=args.ssl_cert_file,
        key_file=args.ssl_key_file, key_password=args.ssl_key_password,
        sasl_mechanism=args.sasl_mechanism, sasl_username=args.sasl_username,
        sasl_password=args.sasl_password, msk_iam_region=args.msk_iam_region)


def add_metrics_address(parser: argparse.ArgumentParser, default: str | None) -> None:
    option(parser, "--metrics-address", default=default, convert=_metrics_address,
           help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free "
           "port; 'off': none); keep it on loopback unless a scraper needs it")


def _metrics_address(text: str) -> str | None:
    from streams.worker.metrics import parse_address

    if text.strip().lower() in ("off", "none", "no"):
        return None
    parse_address(text)
    return text.strip()


def serve_metrics(address: str | None, registry: Any) -> None:
    """Serve a forwarder's or the notifier's registry (a daemon thread; it ends with
    the process). A port in use is a one-line error, before any work starts."""
    if address is None:
        return
    import logging

    from streams.worker.metrics import serve

    server = serve(address, registry)
    host, port = server.server_address[:2]
    logging.getLogger("flapguard.metrics").info("metrics on http://%s:%s/metrics", host, port)


def add_producer(parser: argparse.ArgumentParser) -> None:
    """What a command writes with: the same two settings for every producer."""
    d = ProducerSettings()
    option(parser, "--compression", default=d.compression, choices=list(CODECS),
           help="codec of the records written (reading takes any)")
    option(parser, "--max-request-size", default=format_size(d.max_request_size), convert=parse_size,
           help="largest produce request; keep it at most the topics' max.message.bytes (a dead "
           "letter larger than this is written truncated, with its size and SHA-256)")
    option(parser, "--replication-factor", default=None, convert=positive_int,
           help="replicas of every topic it creates (default: the broker's "
           "default.replication.factor)")
    option(parser, "--min-insync-replicas", default=None, convert=positive_int,
           help="min.insync.replicas of every topic it creates (default: the broker's)")


def producer_from(args: argparse.Namespace) -> ProducerSettings:
    return ProducerSettings(compression=args.compression, max_request_size=args.max_request_size,
                            replication=Replication(args.replication_factor, args.min_insync_replicas))


def check_inputs(paths: list[Path], *, read_once: bool, why: str = "") -> None:
    """Inputs that can be read, said in one line when they cannot: standard input (`-`)
    and pipes (process substitution) only where each input is read once."""
    from streams.backtest.run import STDIN

    if paths.count(STDIN) > 1:
        raise CliError("--input -: standard input can be given once")
    for path in paths:
        if path == STDIN:
            if not read_once:
                raise CliError(f"--input -: standard input is read once, and {why} reads its input again")
            continue
        if path.is_dir():
            raise CliError(f"input is a directory, not a file: {path}")
        if not path.exists():
            raise CliError(f"input not found: {path}")
        if not path.is_file() and not read_once:
            raise CliError(f"input is not a regular file (a pipe?): {path}; {why} reads its input again")


def add_logging(parser: argparse.ArgumentParser, level: str = "INFO") -> None:
    from streams.logs import FORMATS

    option(parser, "--log-level", default=level,
           help="log level of flapguard's own lines (the libraries log from WARNING, or DEBUG)")
    option(parser, "--log-format", default="plain", choices=list(FORMATS),
           help="plain lines, or one JSON object a line (time, level, logger, message)")
