"""Living with an unavailable Kafka broker.

- :class:`BrokerError`, :class:`BrokerRefused` and :func:`connection_error`: why no
  client connects, in one line, and whether waiting can fix it.

- :func:`retry_while_unavailable`: at start-up, run an action (the worker declares its
  topics) until the broker answers, with capped exponential backoff and one clear log
  line per attempt, instead of exiting (a supervisor would restart it in a loop).
  Errors that waiting cannot fix (authorisation, TLS, bad arguments) are raised.
- :class:`BrokerWatch`: while running, probe the broker every few seconds and say
  plainly when it is lost and when it is back. The Kafka client reconnects by itself
  and its own error lines are many and terse; these are the lines to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from streams.kafka.security import BrokerSecurity


class BrokerError(RuntimeError):
    """A local broker could not be prepared, started or reached."""


class BrokerRefused(BrokerError):
    """A broker answered but refused this client (credentials, TLS): waiting will not
    change that."""


@contextlib.contextmanager
def quiet_bootstrap() -> Iterator[None]:
    """aiokafka logs each failed bootstrap connection before it raises; the caller
    reports the failure once, as one line."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": "is --ssl-ca-file the CA that signed the brokers' certificates?",
    "SaslAuthenticationFailed": "check --sasl-username and --sasl-password",
    "UnsupportedSaslMechanism": "the brokers do not enable this --sasl-mechanism",
}


async def connection_error(bootstrap: str, security: BrokerSecurity | None,
                           timeout: float = 10.0) -> BrokerError | None:
    """Why no client connects to ``bootstrap`` with ``security``: one line, with a hint
    where the cause is a usual one; :class:`BrokerRefused` when a broker answered but
    refused this client (credentials, TLS), which waiting will not fix. None if a
    connection succeeds now. Never a secret: brokers do not echo credentials, and
    neither does this."""
    import ssl

    from aiokafka import errors
    from aiokafka.conn import collect_hosts, create_conn

    refusals = (ssl.SSLError, errors.AuthenticationFailedError,
                errors.AuthenticationMethodNotSupported, errors.SaslAuthenticationFailed,
                errors.UnsupportedSaslMechanismError, errors.IllegalSaslStateError)
    auth = security.aiokafka_kwargs() if security is not None else {}
    first: tuple[str, bool] | None = None
    for host, port, _ in collect_hosts(bootstrap, randomize=False):
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=int(timeout * 1000), **auth), timeout)
        except TimeoutError:
            first = first or (f"{host}:{port}: no answer within {timeout:.0f} s", False)
            continue
        except (OSError, errors.KafkaError) as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            first = first or (f"{host}:{port}: {text}", isinstance(exc, refusals))
            continue
        conn.close()
        return None
    if first is None:
        return None
    why, refused = first
    hint = next((text for marker, text in _HINTS.items() if marker in why), None)
    if hint is None and security is not None and security.protocol == "SSL" \
            and security.cert_file is None and "closed" in why:
        hint = "does the broker require a client certificate (--ssl-cert-file)?"
    how = f" ({security.describe()})" if security is not None else ""
    message = f"cannot connect{how}: {why}" + (f" ({hint})" if hint else "")
    return BrokerRefused(message) if refused else BrokerError(message)


log = logging.getLogger("flapguard.broker")


T = TypeVar("T")


async def start_client(client: Any, bootstrap: str, security: BrokerSecurity | None) -> None:
    """Start an aiokafka consumer or producer; a failed bootstrap says why in one line
    (aiokafka says only "Unable to bootstrap"), :class:`BrokerRefused` when waiting
    will not help."""
    from aiokafka.errors import KafkaConnectionError

    try:
        with quiet_bootstrap():
            await client.start()
    except KafkaConnectionError:
        with contextlib.suppress(Exception):
            await client.stop()  # else it is reported unclosed when collected
        error = await connection_error(bootstrap, security)
        if error is None:
            raise
        raise error from None


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the broker cannot be reached (yet), not that it refused us."""
    from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    from streams.kafka.availability import BrokerError, BrokerRefused

    if isinstance(exc, ssl.SSLError | BrokerRefused):
        return False  # a TLS set-up error, refused credentials: waiting will not fix it
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, OSError, TimeoutError, BrokerError)):
        return True
    if isinstance(exc, KafkaError):
        # aiokafka raises a bare KafkaError when no known broker answers a metadata request.
        return bool(exc.retriable) or type(exc) is KafkaError
    return False


def describe(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc).strip()
    if text.startswith(name):  # aiokafka's errors name themselves
        return text
    return f"{name}: {text}" if text else name


async def retry_while_unavailable(
    action: Callable[[], Awaitable[T]],
    *,
    servers: str,
    what: str,
    first_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """`await action()` until it succeeds, waiting `first_delay_s`, then twice as long
    each time up to `max_delay_s` (plus up to 10 % jitter), while the broker is
    unavailable; any other error is raised at once."""
    began = time.monotonic()
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            result = await action()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            wait = delay * (1 + 0.1 * jitter())
            log.warning("Kafka broker at %s unavailable (%s): waiting for it before %s; "
                        "attempt %s failed, next in %.1f s", servers, describe(exc), what,
                        attempt, wait)
            await sleep(wait)
            delay = min(delay * 2, max_delay_s)
            continue
        if attempt > 1:
            log.warning("Kafka broker at %s available after %.1f s and %s attempts: %s",
                        servers, time.monotonic() - began, attempt, what)
        return result


class BrokerWatch:
    """Logs when the broker stops answering and when it answers again.

    `probe` is an awaitable that raises when the broker does not answer (the worker
    asks for cluster metadata with its own producer's client, so TLS and SASL settings
    apply). Call :meth:`check` every few seconds."""

    def __init__(
        self,
        servers: str,
        probe: Callable[[], Awaitable[object]],
        *,
        timeout_s: float = 5.0,
        remind_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = servers
        self.probe = probe
        self.timeout_s = timeout_s
        self.remind_every_s = remind_every_s
        self.clock = clock
        self.lost_since: float | None = None
        self.reminded_at = 0.0
        self.outages = 0

    async def check(self) -> bool:
        """Probe once; True when the broker answered."""
        try:
            await asyncio.wait_for(self.probe(), self.timeout_s)
        except Exception as exc:
            self._lost(exc)
            return False
        if self.lost_since is not None:
            log.warning("Kafka broker at %s reachable again after %.0f s: processing resumes "
                        "from where it stopped", self.servers, self.clock() - self.lost_since)
            self.lost_since = None
        return True

    def _lost(self, exc: BaseException) -> None:
        now = self.clock()
        if self.lost_since is None:
            self.lost_since = self.reminded_at = now
            self.outages += 1
            log.warning("Kafka broker at %s unreachable (%s): waiting for it; outputs and "
                        "offset commits wait, nothing is dropped; the Kafka client retries "
                        "by itself", self.servers, describe(exc))
        elif now - self.reminded_at >= self.remind_every_s:
            self.reminded_at = now
            log.warning("Kafka broker at %s still unreachable after %.0f s (%s)", self.servers,
                        now - self.lost_since, describe(exc))
