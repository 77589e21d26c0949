"""Kafka sources and sinks of the dataflows (confluent-kafka underneath).

The source follows Bytewax's own ``KafkaSource`` (one Bytewax partition per Kafka partition,
offsets kept by Bytewax recovery, no consumer group) with a leaner record type; consumer errors
become values, so they reach the dead-letter topic instead of crashing the dataflow.

Sinks encode records once and flush once per batch, so a batch is on the broker before Bytewax
can close the epoch that produced it (at-least-once; keys make duplicates harmless).

Faults with an answer (docs/broker.md, Faults): an unreachable broker, refused TLS or SASL, data
lost under the consumers' offsets and records a sink cannot deliver each raise a
:class:`KafkaFault`: one line for the user naming the broker and the setting, an exit status,
and a count in ``undertow_kafka_errors_total{kind,topic}``. librdkafka's own log lines go to the
``undertow.librdkafka`` logger at debug level, never to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, NoReturn, TypeVar

from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from connectors import metrics, summary
from connectors.alignment import EVENTS, LABELS, AlignedPartition, SourceAlignment, record_time
from connectors.settings import ConfigError, Settings
from undertow.errors import UndertowError
from undertow.schema import DeadLetter, Prediction

X = TypeVar("X")

Encoded = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


_CONSUMER_DEFAULTS = {
    # How long a fetch that finds nothing waits (docs/latency.md). Kafka answers a waiting fetch
    # as soon as a record arrives (librdkafka's default, 500, costs it no latency); Tansu looks
    # again at 1/2, 3/4 ... of the wait, and every look that finds records lists all the
    # partition's batches: 20 ms cost 2.5 s of broker CPU per 1,000 events at 300 events/s, and
    # fell behind at 600; 100 cost 35-40 % less, with read -> written p99 of 13 ms at 300/s, and
    # a record waits at most about 50 ms to be read. Overridable like any option
    # (UNDERTOW_KAFKA_OPT_FETCH_WAIT_MAX_MS=500 on Kafka, or on Tansu for the least broker CPU).
    "fetch.wait.max.ms": "100",
}


# -- faults ---------------------------------------------------------------------------------------

#: Exit statuses of the faults (2 is a bad setting, as everywhere in undertow).
EXIT_BAD_SETTING = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_DATA_LOSS = 5

#: How long start-up waits for the brokers' first answer before it names the fault.
CONNECT_TIMEOUT_S = 5.0
#: librdkafka's ``message.timeout.ms`` for our sinks (librdkafka's own default is 300 s): how
#: long a record may wait for an unreachable broker before the sink fails; a source fails after
#: all brokers have been down this long too. ``UNDERTOW_KAFKA_OPT_MESSAGE_TIMEOUT_MS`` sets it.
MESSAGE_TIMEOUT_MS = 30_000

BOOTSTRAP_SETTING = "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS"
PROTOCOL_SETTING = "UNDERTOW_KAFKA_OPT_SECURITY_PROTOCOL"
MECHANISM_SETTING = "UNDERTOW_KAFKA_OPT_SASL_MECHANISM"
TIMEOUT_SETTING = "UNDERTOW_KAFKA_OPT_MESSAGE_TIMEOUT_MS"
DATA_LOSS_SETTING = "UNDERTOW_ON_DATA_LOSS"

_LIBRDKAFKA_LOG = logging.getLogger("undertow.librdkafka")


class KafkaFault(UndertowError):
    """A Kafka fault with an answer: ``line`` is what the user reads (one line naming the broker
    and the setting), ``status`` the exit status, ``kind`` the ``kind`` label of
    ``undertow_kafka_errors_total`` (counted when the fault is made)."""

    def __init__(self, kind: str, line: str, status: int, topic: str = "") -> None:
        super().__init__(line)
        self.kind = kind
        self.line = line
        self.status = status
        metrics.KAFKA_ERRORS.labels(kind=kind, topic=topic).inc()


class DeliveryFault(KafkaFault, KafkaException):
    """A sink's records not delivered in time: a :class:`KafkaFault`, and a ``KafkaException``
    like every other failed write of a sink."""


class _DebugLog:
    """librdkafka's log lines (confluent-kafka's ``logger`` option calls ``log(level, ...)``),
    re-logged at debug level: a broker that is down is one fault line, not a line every 50 ms."""

    def log(self, level: int, msg: str, *args: object) -> None:
        _LIBRDKAFKA_LOG.debug(msg, *args)


def quiet(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with librdkafka's logs sent to the ``undertow.librdkafka`` debug logger."""
    return {**config, "logger": _DebugLog()}


def fault_excepthook(previous: Callable[..., Any]) -> Callable[..., Any]:
    """A ``sys.excepthook`` that answers an uncaught :class:`KafkaFault` (raised in a source or
    a sink, then wrapped by Bytewax's runtime errors) with its one line and its exit status;
    anything else goes to ``previous``. It exits at once (``os._exit``): the clients' threads
    may still be retrying a broker that is gone, and must not hold the process."""

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        ex: BaseException | None = value
        seen: set[int] = set()
        while ex is not None and id(ex) not in seen:
            if isinstance(ex, KafkaFault):
                print(ex.line, file=sys.stderr, flush=True)
                os._exit(ex.status)
            seen.add(id(ex))
            ex = ex.__cause__ or ex.__context__
        previous(kind, value, tb)

    return hook


_ANSWER_IN_PLACE = [False]


def install_fault_hook() -> None:
    """Answer the run's Kafka faults with one line and a status: where they happen (so that
    Bytewax's worker does not panic with a Rust backtrace on the way out), and in
    ``sys.excepthook`` for one that escapes (see :func:`fault_excepthook`). For the
    ``python -m bytewax.run`` process only; in-process runs (``run_main``) get the exception."""
    _ANSWER_IN_PLACE[0] = True
    if not getattr(sys.excepthook, "undertow_faults", False):
        hook = fault_excepthook(sys.excepthook)
        hook.undertow_faults = True  # type: ignore[attr-defined]
        sys.excepthook = hook


def fail(fault: KafkaFault) -> NoReturn:
    """Raise ``fault``, or, in a ``bytewax.run`` process with :func:`install_fault_hook`, print
    its line and exit with its status at once."""
    if _ANSWER_IN_PLACE[0]:
        print(fault.line, file=sys.stderr, flush=True)
        os._exit(fault.status)
    raise fault


def _tcp_probe(address: str) -> str | None:
    """None if ``host:port`` accepts a TCP connection within a second, else why not."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} is not host:port"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return None
    except socket.gaierror:
        return f"cannot resolve the host {host!r}"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as ex:
        return ex.strerror or type(ex).__name__


def _short(err: KafkaError) -> str:
    """librdkafka's error text without its trailing '(after N ms in state X)'."""
    text = err.str()
    cut = text.rfind(" (after ")
    return text[:cut] if cut > 0 else text


def _security(config: dict[str, Any]) -> tuple[str, str]:
    return (str(config.get("security.protocol", "plaintext")).upper(),
            str(config.get("sasl.mechanism", "GSSAPI")).upper())


def bad_option(ex: KafkaException) -> KafkaFault:
    """librdkafka refused to create a client from the options (a mechanism it was not built
    with, a misspelt option): a bad setting, status 2."""
    err = ex.args[0] if ex.args else None
    text = err.str() if isinstance(err, KafkaError) else str(ex)
    setting = MECHANISM_SETTING if "SASL" in text else "UNDERTOW_KAFKA_OPT_*"
    return KafkaFault("bad_option", f"undertow: bad setting: {setting}: librdkafka refused the "
                      f"options: {text}", EXIT_BAD_SETTING)


def _refused(bootstrap: str, config: dict[str, Any], why: str, *, tls: bool = False) -> KafkaFault:
    protocol, mechanism = _security(config)
    if "SASL" in protocol and not tls:
        line = (f"undertow: kafka: the broker at {bootstrap} refused SASL {mechanism} "
                f"({PROTOCOL_SETTING}={protocol}, {MECHANISM_SETTING}): {why}")
    else:
        line = (f"undertow: kafka: the broker at {bootstrap} refused TLS "
                f"({PROTOCOL_SETTING}={protocol}): {why}")
    return KafkaFault("refused", line, EXIT_REFUSED)


def _unanswered(brokers: list[str], config: dict[str, Any], timeout: float) -> KafkaFault:
    """The fault when no broker answered in ``timeout`` s: unreachable, or (a port that
    accepts TCP but never answers) a security protocol the listener does not speak."""
    bootstrap = ",".join(brokers)
    probes = [_tcp_probe(b) for b in brokers]
    if all(p is not None for p in probes):
        return KafkaFault("unreachable", f"undertow: kafka: cannot reach the broker at "
                          f"{bootstrap} ({BOOTSTRAP_SETTING}): {probes[0]}", EXIT_UNREACHABLE)
    protocol, _ = _security(config)
    if "SSL" in protocol:
        return _refused(bootstrap, config, f"no TLS handshake within {timeout:g} s; is the "
                        "listener TLS?", tls=True)
    if "SASL" in protocol:
        return _refused(bootstrap, config, f"no SASL handshake within {timeout:g} s")
    return KafkaFault("unreachable", f"undertow: kafka: the port at {bootstrap} "
                      f"({BOOTSTRAP_SETTING}) accepts connections but gave no Kafka answer "
                      f"within {timeout:g} s", EXIT_UNREACHABLE)


def connect(brokers: list[str], config: dict[str, Any],
            timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """The cluster's metadata (all topics), or the :class:`KafkaFault` that names why the
    brokers did not answer within ``timeout`` s: refused SASL or TLS as soon as librdkafka
    reports it, otherwise at the deadline."""
    errors: list[KafkaError] = []
    try:
        admin = AdminClient(quiet({**config, "error_cb": errors.append}))
    except KafkaException as ex:
        fail(bad_option(ex))
    deadline = time.monotonic() + timeout
    while True:
        try:
            # All topics: a metadata request naming a topic can create it.
            return admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException:
            pass
        admin.poll(0)  # serves error_cb
        refused = [e for e in errors
                   if e.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL)]
        if refused:
            fail(_refused(",".join(brokers), config, _short(refused[0])))
        if time.monotonic() >= deadline:
            fail(_unanswered(brokers, config, timeout))


_outage_said = [0.0]


def _say_once(line: str, every_s: float = 60.0) -> None:
    """Print ``line`` to stderr unless a line was said less than ``every_s`` s ago (each
    partition has its own consumer: an outage is one line, not one per partition)."""
    now = time.monotonic()
    if now - _outage_said[0] >= every_s or _outage_said[0] == 0.0:
        _outage_said[0] = now
        print(line, file=sys.stderr, flush=True)


class KafkaRecord(NamedTuple):
    """One record read from Kafka, or a consumer error (``error`` set, ``value`` maybe None)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    error: str | None = None
    seq: int = -1  # position in a replay's merged, time-ordered input; -1 when live


class _RecordPartition(StatefulSourcePartition[KafkaRecord, int]):
    """One Kafka partition, read in batches; its state is the next offset to read.

    Data loss: when the broker no longer has the next offset (it lost the topic, or retention
    deleted it), the partition does what ``on_data_loss`` says: ``fail`` raises a
    :class:`KafkaFault` (status 5), ``earliest`` / ``latest`` read on from the oldest / the next
    record the broker has, with one line on stderr either way. Apache Kafka answers such a fetch
    with OFFSET_OUT_OF_RANGE, which ``auto.offset.reset=error`` turns into a consumer error;
    Tansu answers it with no records and its true high watermark, so a position above the
    watermark in two statistics reports in a row, with nothing read between them, is taken as
    the same fault.

    Catch-up (``aligned``, :mod:`connectors.alignment`): a labels partition reports the newest
    time it emitted (the records' ``time_field``) and whether it is at its end (partition EOF,
    and nothing read since); an events partition also emits only the records the alignment
    allows, keeps the others in order (it reads no more until they are out) and reports the
    time of the next one. Its state is then the offset of the first record it has not emitted.
    ``stop_at_end`` (bounded runs) stops at partition EOF; a live run with alignment asks for
    EOF only to know when a partition is caught up.
    """

    def __init__(
        self, step_id: str, config: dict[str, Any], topic: str, partition: int, offset: int,
        batch_size: int, *, bootstrap: str = "", on_data_loss: str = "fail",
        outage_s: float = MESSAGE_TIMEOUT_MS / 1000, setting: str | None = None,
        aligned: AlignedPartition | None = None, time_field: str = "ts",
        stop_at_end: bool = True,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._batch_size = batch_size
        self._eof = False
        self._stop_at_end = stop_at_end
        self._aligned = aligned
        self._time_field = time_field
        self._newest: int | None = None  # the newest record time emitted (aligned only)
        # Records read and held back by the alignment (events), with their times, in order.
        self._held: deque[tuple[KafkaRecord, int | None]] = deque()
        self._bootstrap = bootstrap
        self._on_data_loss = on_data_loss
        self._outage_s = outage_s
        self._setting = setting
        self._security = {k: config[k] for k in ("security.protocol", "sasl.mechanism")
                          if k in config}
        self._above = 0  # statistics reports in a row with our offset above the watermark
        self._lost: tuple[int, int, int] | None = None  # (offset asked, low, high)
        self._down_since: float | None = None
        self._fault: KafkaFault | None = None
        self._lag = BYTEWAX_CONSUMER_LAG_GAUGE.labels(
            step_id=step_id, topic=topic, partition=partition
        )
        try:
            self._consumer = Consumer(quiet({**config, "stats_cb": self._on_stats,
                                             "error_cb": self._on_error}))
        except KafkaException as ex:
            fail(bad_option(ex))
        self._consumer.assign([TopicPartition(topic, partition, offset)])

    def _on_stats(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        if any(b.get("state") == "UP" for b in stats.get("brokers", {}).values()):
            self._down_since = None
        part = stats["topics"].get(self._topic, {}).get("partitions", {}).get(str(self._partition))
        if part is None or part["hi_offset"] < 0 or self._offset < 0:
            return
        self._lag.set(max(0, part["hi_offset"] - self._offset))
        if self._offset > part["hi_offset"] and part.get("fetch_state") == "active":
            self._above += 1
            if self._above >= 2 and self._lost is None:
                self._lost = (self._offset, max(0, part.get("lo_offset", 0)), part["hi_offset"])
        else:
            self._above = 0

    def _on_error(self, err: KafkaError) -> None:
        code = err.code()
        if code in (KafkaError._AUTHENTICATION, KafkaError._SSL) and self._fault is None:
            self._fault = _refused(self._bootstrap, self._security, _short(err))
        elif code == KafkaError._ALL_BROKERS_DOWN and self._down_since is None:
            self._down_since = time.monotonic()
            metrics.KAFKA_ERRORS.labels(kind="brokers_down", topic=self._topic).inc()
            _say_once(f"undertow: kafka: lost the broker at {self._bootstrap} "
                      f"({BOOTSTRAP_SETTING}); retrying for {self._outage_s:g} s "
                      f"({TIMEOUT_SETTING})")

    def _data_loss(self, asked: int, low: int, high: int) -> None:
        """Answer a lost offset per ``on_data_loss``: raise, or read on from ``low``/``high``."""
        held = (f"the broker holds offsets {low} to {high - 1}" if high > low
                else f"the broker holds no records (next offset {high})")
        line = (f"undertow: kafka: data lost on topic {self._topic!r} partition "
                f"{self._partition} at {self._bootstrap}: offset {asked} asked, {held} "
                f"({DATA_LOSS_SETTING}={self._on_data_loss})")
        if self._on_data_loss == "fail":
            fail(KafkaFault("data_loss", line, EXIT_DATA_LOSS, self._topic))
        metrics.KAFKA_ERRORS.labels(kind="data_loss", topic=self._topic).inc()
        start = low if self._on_data_loss == "earliest" else high
        print(f"{line}; reading on from offset {start}", file=sys.stderr, flush=True)
        self._consumer.assign([TopicPartition(self._topic, self._partition, start)])
        self._offset = start
        self._above = 0
        self._lost = None

    def next_batch(self) -> list[KafkaRecord]:
        aligned = self._aligned
        if aligned is None:
            if self._eof:
                raise StopIteration
            return self._read()
        if aligned.side == LABELS:  # labels never wait: read, then say how far they are
            if self._eof and self._stop_at_end:
                raise StopIteration
            out = self._read()
            self._newest = self._newest_of(out, self._newest)
            aligned.report(self._newest, at_end=self._eof)
            return out
        if not self._held:
            if self._eof and self._stop_at_end:
                raise StopIteration
            field = self._time_field
            self._held.extend((r, record_time(r.value, field)) for r in self._read())
        return self._release(aligned)

    def _newest_of(self, records: list[KafkaRecord], newest: int | None) -> int | None:
        field = self._time_field
        for r in records:
            ts = record_time(r.value, field)
            if ts is not None and (newest is None or ts > newest):
                newest = ts
        return newest

    def _release(self, aligned: AlignedPartition) -> list[KafkaRecord]:
        """The held records the alignment lets out now, in order (one without a readable time
        goes when it is first: the decoder dead-letters it); report where this partition is."""
        held = self._held
        out: list[KafkaRecord] = []
        limit = aligned.limit()
        newest = self._newest
        while held:
            record, ts = held[0]
            if ts is not None:
                if limit is not None and ts > limit:
                    break
                if newest is None or ts > newest:
                    newest = ts
            out.append(record)
            held.popleft()
        self._newest = newest
        if held:
            position = held[0][1] if held[0][1] is not None else newest
            aligned.report(position, at_end=False)
        else:
            aligned.report(newest, at_end=self._eof)
        return out

    def _read(self) -> list[KafkaRecord]:
        """One batch from the consumer, with the faults checked (docs/broker.md, Faults);
        partition EOF sets ``_eof`` (and a record read after it clears it)."""
        topic, partition = self._topic, self._partition
        out: list[KafkaRecord] = []
        last = None
        for msg in self._consumer.consume(self._batch_size, 0.001):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True  # emit this batch; stop at the next call (bounded)
                    if self._stop_at_end:
                        break
                    continue
                if err.code() == KafkaError._AUTO_OFFSET_RESET:  # Kafka: out of range
                    low, high = self._consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=CONNECT_TIMEOUT_S)
                    self._lost = (self._offset, low, high)
                    break
                off = msg.offset()
                out.append(KafkaRecord(msg.key(), msg.value(), topic, partition,
                                       -1 if off is None else off, str(err)))
                continue
            last = msg.offset()
            out.append(KafkaRecord(msg.key(), msg.value(), topic, partition, last))
            self._eof = False  # live: records after an EOF; caught up again at the next EOF
        if last is not None:
            self._offset = last + 1
            self._above = 0
            self._lost = None
        if self._fault is not None:
            fail(self._fault)
        if self._lost is not None:
            self._data_loss(*self._lost)
        if self._down_since is not None and time.monotonic() - self._down_since > self._outage_s:
            fail(KafkaFault("unreachable", f"undertow: kafka: the broker at {self._bootstrap} "
                            f"({BOOTSTRAP_SETTING}) has been unreachable for "
                            f"{self._outage_s:g} s ({TIMEOUT_SETTING})", EXIT_UNREACHABLE,
                            topic))
        return out

    def snapshot(self) -> int:
        # Held records are not emitted yet: a resumed partition reads them again.
        for record, _ in self._held:
            if record.offset >= 0:
                return record.offset
        return self._offset

    def close(self) -> None:
        if self._aligned is not None:
            self._aligned.leave()
        self._consumer.close()


class KafkaRecordSource(FixedPartitionedSource[KafkaRecord, int]):
    """Every partition of some topics, read in batches into lean :class:`KafkaRecord` values.

    Bytewax's own ``KafkaSource`` builds a ``KafkaSourceMessage`` (a frozen dataclass of eight
    fields, with headers, latency and timestamp calls) per record; this source reads only what the
    dataflow uses. Offsets are Bytewax recovery state, as there; no consumer group is used.
    ``tail=False`` stops at the end of each partition (partition EOF, which is exact on Kafka
    and Tansu alike, unlike Tansu's reported high watermark).

    With an ``alignment`` (:mod:`connectors.alignment`), its partitions take part as ``side``
    (events or labels), timed by the records' ``time_field``.
    """

    def __init__(
        self,
        brokers: list[str],
        topics: list[str],
        *,
        tail: bool = True,
        starting_offset: int = OFFSET_BEGINNING,
        add_config: dict[str, str] | None = None,
        batch_size: int = 1000,
        setting: str | None = None,
        on_data_loss: str = "fail",
        alignment: SourceAlignment | None = None,
        side: str = EVENTS,
        time_field: str = "ts",
    ) -> None:
        if side not in (EVENTS, LABELS):
            raise ValueError(f"KafkaRecordSource: side must be {EVENTS!r} or {LABELS!r}, "
                             f"got {side!r}")
        self._alignment = alignment
        self._side = side
        self._time_field = time_field
        self._setting = setting
        self._on_data_loss = on_data_loss
        self._brokers = brokers
        self._topics = topics
        self._tail = tail
        self._starting_offset = starting_offset
        self._add_config = dict(add_config or {})
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        config = {"bootstrap.servers": ",".join(self._brokers)}
        config.update(
            {k: v for k, v in self._add_config.items()
             if k not in _CONSUMER_DEFAULTS and k not in _FETCH_KEYS}
        )
        config.pop("message.timeout.ms", None)  # a producer's option
        md = connect(self._brokers, config)  # a fault is one line (docs/broker.md, Faults)
        parts = []
        for topic in self._topics:
            t = md.topics.get(topic)
            if t is None or t.error is not None:
                why = "it does not exist" if t is None else t.error.str()
                where = f"{self._setting}: " if self._setting else ""
                raise ConfigError(
                    f"{where}cannot read Kafka topic {topic!r} from {config['bootstrap.servers']}:"
                    f" {why}"
                )
            parts.extend(f"{i}-{topic}" for i in sorted(t.partitions))
        if self._alignment is not None:
            self._alignment.expect(self._side, len(parts))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RecordPartition:
        idx, topic = for_part.split("-", 1)
        config = {
            "group.id": "undertow-unused",  # offsets live in Bytewax recovery, not a group
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            # EOF ends a bounded run; with alignment it also says a partition is caught up.
            "enable.partition.eof": str(not self._tail or self._alignment is not None).lower(),
            "statistics.interval.ms": 1000,
            # Kafka: an offset the broker no longer has is an error, answered per
            # UNDERTOW_ON_DATA_LOSS, not librdkafka's silent reset to the end.
            "auto.offset.reset": "error",
            **self._add_config,
        }
        outage_ms = float(config.pop("message.timeout.ms", MESSAGE_TIMEOUT_MS))
        offset = self._starting_offset if resume_state is None else resume_state
        aligned = None
        if self._alignment is not None:
            aligned = self._alignment.join(self._side, f"{step_id}/{for_part}")
        return _RecordPartition(
            step_id, config, topic, int(idx), offset, self._batch_size,
            bootstrap=",".join(self._brokers), on_data_loss=self._on_data_loss,
            outage_s=outage_ms / 1000, setting=self._setting, aligned=aligned,
            time_field=self._time_field, stop_at_end=not self._tail,
        )


#: librdkafka's defaults of the fetch limits (CONFIGURATION.md).
_FETCH_MESSAGE_MAX_BYTES = 1_048_576
_FETCH_MAX_BYTES = 52_428_800
_RECEIVE_MESSAGE_MAX_BYTES = 100_000_000
_FETCH_KEYS = ("fetch.message.max.bytes", "max.partition.fetch.bytes", "fetch.max.bytes")
#: Room for a record batch's own header and a record's key and headers beside its value.
_BATCH_OVERHEAD = 65_536


def fetch_limits(max_record_bytes: int) -> dict[str, str]:
    """librdkafka's fetch limits for records up to ``max_record_bytes``.

    ``fetch.message.max.bytes`` (alias ``max.partition.fetch.bytes``) is what one partition's
    fetch asks for: at least a record of the limit plus its batch's overhead, so a record under
    the limit is one fetch. It is not a cap: a record batch larger than it is still returned
    whole (KIP-74 on Kafka >= 0.10.1 and Tansu, and librdkafka grows its request on older
    brokers until it fits), so a record over the limit is fetched and made a ``too_large`` dead
    letter by the decode step rather than blocking its partition. ``fetch.max.bytes`` (per fetch
    request, all partitions) must be at least as large, and ``receive.message.max.bytes`` must
    exceed it by 512 (librdkafka checks both at start-up); neither is lowered below its default.

    >>> fetch_limits(1_000_000)["fetch.message.max.bytes"]
    '1065536'
    >>> fetch_limits(200_000_000)["receive.message.max.bytes"]
    '200066048'
    """
    per_partition = max_record_bytes + _BATCH_OVERHEAD
    per_fetch = max(_FETCH_MAX_BYTES, per_partition)
    return {
        "fetch.message.max.bytes": str(max(_FETCH_MESSAGE_MAX_BYTES, per_partition)),
        "fetch.max.bytes": str(per_fetch),
        "receive.message.max.bytes": str(max(_RECEIVE_MESSAGE_MAX_BYTES, per_fetch + 512)),
    }


def kafka_source(
    settings: Settings, topic: str, *, alignment: SourceAlignment | None = None,
    side: str = EVENTS, time_field: str = "ts",
) -> KafkaRecordSource:
    """A bounded (``tail=False``) or live source over every partition of ``topic``, with
    librdkafka's fetch limits set for ``UNDERTOW_MAX_RECORD_BYTES`` (:func:`fetch_limits`;
    options given in ``UNDERTOW_KAFKA_OPT_*`` win); with ``alignment``, as the ``side`` it names
    (:mod:`connectors.alignment`), timed by the records' ``time_field``."""
    opts = settings.librdkafka()
    if "max.partition.fetch.bytes" in opts:  # librdkafka's alias: one of the two, not both
        opts.setdefault("fetch.message.max.bytes", opts.pop("max.partition.fetch.bytes"))
    return KafkaRecordSource(
        settings.brokers,
        [topic],
        tail=settings.tail,
        starting_offset=OFFSET_BEGINNING if settings.start_from == "earliest" else OFFSET_END,
        add_config={**_CONSUMER_DEFAULTS, **fetch_limits(settings.max_record_bytes), **opts},
        batch_size=settings.source_batch_size,
        on_data_loss=settings.on_data_loss,
        alignment=alignment,
        side=side,
        time_field=time_field,
        setting=next(
            (f"UNDERTOW_{name.upper()}"
             for name in ("events_topic", "labels_topic", "control_topic")
             if getattr(settings, name) == topic),
            None,
        ),
    )


def partition_count(settings: Settings, topic: str, timeout: float = 10.0) -> int | None:
    """How many partitions ``topic`` has, or None if the broker does not list it.

    Lists all topics rather than naming one: naming a topic in a metadata request can create it
    (Tansu does, as does Kafka with ``auto.create.topics.enable``).
    """
    opts = settings.librdkafka()
    opts.pop("message.timeout.ms", None)  # a producer's option
    admin = AdminClient(quiet({"bootstrap.servers": settings.kafka_bootstrap_servers, **opts}))
    md = admin.list_topics(timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return len(t.partitions)


#: librdkafka's default ``message.max.bytes`` (the producer's limit on one record).
_MESSAGE_MAX_BYTES = 1_000_000
#: What librdkafka counts beside key, value and headers in a record's size, with room to spare.
_RECORD_OVERHEAD = 512
#: The header of a dead letter written with its value cut: the original value's length.
TRUNCATED_HEADER = "undertow.error.truncated"
KEY_TRUNCATED_HEADER = "undertow.error.key_truncated"

#: ``shrink(encoded, limit)``: the record cut to at most ``limit`` bytes, or None if it cannot be.
Shrink = Callable[[Encoded, int], "Encoded | None"]


def truncate_dead_letter(enc: Encoded, limit: int) -> Encoded | None:
    """A dead letter cut to fit ``limit`` bytes: its value's first bytes (and its key's, if the
    key alone is over a quarter of the limit), with headers giving the original lengths; None
    if nothing is left to cut.

    >>> key, value, headers = truncate_dead_letter((b"k", b"x" * 5000, []), 2000)
    >>> key, len(value), headers
    (b'k', 1459, [('undertow.error.truncated', b'5000')])
    """
    key, value, headers = enc
    hdrs = list(headers or [])
    names = {h for h, _ in hdrs}
    if key is not None and len(key) > limit // 4:
        if KEY_TRUNCATED_HEADER not in names:
            hdrs.append((KEY_TRUNCATED_HEADER, str(len(key)).encode()))
        key = key[: limit // 4]
    if TRUNCATED_HEADER not in names:
        hdrs.append((TRUNCATED_HEADER, str(len(value or b"")).encode()))
    room = limit - _RECORD_OVERHEAD - len(key or b"") - sum(len(h) + len(v) for h, v in hdrs)
    cut = (value or b"")[: max(0, room)]
    if len(cut) == len(value or b"") and key == enc[0]:
        return None  # nothing was cut: the headers alone are over the limit
    return key, cut, hdrs


def _too_large(ex: KafkaException) -> bool:
    err = ex.args[0] if ex.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


class _ProducerPartition(StatelessSinkPartition[X], Generic[X]):
    """One worker's producer. A record over the producer's ``message.max.bytes`` (refused by
    ``produce``) or the broker's limit (refused in its delivery report) never fails the batch:
    ``shrink`` cuts it to fit (dead letters) or, without one, it is dropped; both are counted in
    ``undertow_sink_oversized_total{step,action}``. Any other delivery error fails the batch.

    A flush is bounded: a record not delivered within ``message.timeout.ms`` (the broker is
    gone) fails the sink with a :class:`KafkaFault` (status 3) naming the broker, instead of
    librdkafka's 300 s default or an unbounded ``flush()``."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        encode: Callable[[X], Encoded],
        after_write: Callable[[list[X]], None] | None,
        on_close: Callable[[], None] | None = None,
        *,
        shrink: Shrink | None = None,
        max_bytes: int = _MESSAGE_MAX_BYTES,
        step_id: str = "",
        topic_of: Callable[[X], str | None] | None = None,
        bootstrap: str = "",
        message_timeout_ms: float = MESSAGE_TIMEOUT_MS,
    ) -> None:
        self._producer = producer
        self._bootstrap = bootstrap
        self._message_timeout_s = message_timeout_ms / 1000
        self._timed_out = 0
        self._topic = topic
        self._topic_of = topic_of
        self._encode = encode
        self._after_write = after_write
        self._on_close = on_close
        self._shrink = shrink
        self._max_bytes = max_bytes
        self._step_id = step_id
        self._errors: list[str] = []
        # Refused by the broker as too large, with their topic: cut and resent.
        self._refused: list[tuple[Encoded, str]] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            self._refused.append(((msg.key(), msg.value(), msg.headers()), msg.topic()))
        elif isinstance(err, KafkaError) and err.code() == KafkaError._MSG_TIMED_OUT:
            self._timed_out += 1
        else:
            self._errors.append(str(err))

    def _oversized(self, enc: Encoded, limit: int) -> Encoded | None:
        """``enc`` cut to ``limit`` bytes, or None (dropped); counted either way."""
        shrunk = self._shrink(enc, limit) if self._shrink is not None else None
        action = "dropped" if shrunk is None else "truncated"
        metrics.SINK_OVERSIZED.labels(step=self._step_id, action=action).inc()
        return shrunk

    def _produce(self, enc: Encoded, topic: str | None = None) -> None:
        key, value, headers = enc
        topic = topic or self._topic
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers,
                                       on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: let librdkafka drain it, then retry
                self._producer.poll(0.05)
            except KafkaException as ex:
                if not _too_large(ex):
                    raise
                shrunk = self._oversized((key, value, headers), self._max_bytes)
                if shrunk is None:
                    return
                key, value, headers = shrunk

    def _flush(self) -> None:
        """Flush, bounded: records still queued a little after ``message.timeout.ms``, or
        timed out in their delivery reports, mean the broker is gone: a :class:`KafkaFault`."""
        left = self._producer.flush(self._message_timeout_s + 5.0)
        timed_out, self._timed_out = self._timed_out + left, 0
        if timed_out:
            fail(DeliveryFault(
                "not_delivered",
                f"undertow: kafka: could not write {timed_out} records to {self._topic!r} in "
                f"{self._message_timeout_s:g} s: the broker at {self._bootstrap} does not answer "
                f"({BOOTSTRAP_SETTING}; the wait is {TIMEOUT_SETTING})",
                EXIT_UNREACHABLE, self._topic))

    def write_batch(self, items: list[X]) -> None:
        encode = self._encode
        topic_of = self._topic_of
        if topic_of is None:
            for item in items:
                self._produce(encode(item))
        else:
            for item in items:
                self._produce(encode(item), topic_of(item))
        self._flush()
        for _ in range(32):  # the broker's limit is not known here: halve until it accepts
            if not self._refused:
                break
            refused, self._refused = self._refused, []
            for enc, topic in refused:
                size = len(enc[0] or b"") + len(enc[1] or b"")
                size += sum(len(h) + len(v or b"") for h, v in enc[2] or [])
                shrunk = self._oversized(enc, min(self._max_bytes, size // 2))
                if shrunk is not None:
                    self._produce(shrunk, topic)
            self._flush()
        if self._errors or self._refused:
            errors, self._errors = self._errors, []
            errors += [f"{len(self._refused)} records refused as too large"] if self._refused \
                else []
            self._refused = []
            raise KafkaException(
                f"could not write {len(errors)} records to {self._topic!r}: {errors[0]}")
        if self._after_write is not None:
            self._after_write(items)

    def close(self) -> None:
        self._flush()
        if self._on_close is not None:  # a bounded run: the last partition prints the summary
            self._on_close()


class ProducerSink(DynamicSink[X], Generic[X]):
    """Write records to one topic through ``encode(record) -> (key, value, headers)``; with
    ``topic_of``, each record to the topic it names (None: the sink's topic)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        encode: Callable[[X], Encoded],
        after_write: Callable[[list[X]], None] | None = None,
        *,
        shrink: Shrink | None = None,
        topic_of: Callable[[X], str | None] | None = None,
    ) -> None:
        self._shrink = shrink
        self._topic_of = topic_of
        self._config = {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            # The delivery callback runs on this (the worker's) thread: only for failures.
            "delivery.report.only.error": True,
            # Bounded: a broker that is gone fails the sink in 30 s, not librdkafka's 300 s.
            "message.timeout.ms": MESSAGE_TIMEOUT_MS,
            **settings.librdkafka(),
        }
        self._topic = topic
        self._encode = encode
        self._after_write = after_write
        self._bounded = not settings.tail

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition[X]:
        on_close = (summary.END_OF_RUN.opened(step_id, worker_index, worker_count)
                    if self._bounded else None)
        max_bytes = int(self._config.get("message.max.bytes", _MESSAGE_MAX_BYTES))
        try:
            producer = Producer(quiet(self._config))
        except KafkaException as ex:
            fail(bad_option(ex))
        return _ProducerPartition(
            producer, self._topic, self._encode, self._after_write, on_close,
            shrink=self._shrink, max_bytes=max_bytes, step_id=step_id, topic_of=self._topic_of,
            bootstrap=str(self._config["bootstrap.servers"]),
            message_timeout_ms=float(self._config["message.timeout.ms"]),
        )


#: The header with a prediction's stable id (:func:`prediction_id`), for consumers that drop
#: duplicates (docs/lifecycle.md, Delivery after a crash).
PREDICTION_ID_HEADER = "undertow.prediction_id"


def prediction_id(p: Prediction) -> bytes:
    """A prediction's stable id, ``model:event_id``: the same when a restarted dataflow scores
    the event again (the model step scores an event id once per model)."""
    return f"{p.model}:{p.event_id}".encode()


def encode_prediction(p: Prediction) -> Encoded:
    """Keyed by entity, the id in the ``undertow.prediction_id`` header."""
    return p.key.encode(), p.to_json(), [(PREDICTION_ID_HEADER, prediction_id(p))]


def encode_dead_letter(d: DeadLetter) -> Encoded:
    """The raw bytes untouched as the value, the error in headers (as Kafka Connect does)."""
    return d.key, d.raw, d.headers()


def observe_processing_latency(predictions: list[Prediction]) -> None:
    """Record read -> prediction written, once the batch is on the broker."""
    now = time.time()
    by_model: dict[str, list[float]] = {}
    for p in predictions:
        by_model.setdefault(p.model, []).append(now - p.read_at)
    for model, values in by_model.items():
        metrics.PROCESSING_LATENCY.observe_many(values, model)


def prediction_sink(settings: Settings) -> ProducerSink[Prediction]:
    return ProducerSink(
        settings, settings.predictions_topic, encode_prediction, observe_processing_latency
    )


def shadow_sink(settings: Settings) -> ProducerSink[Prediction]:
    """The challengers' shadow predictions, to ``UNDERTOW_SHADOW_TOPIC``."""
    return ProducerSink(settings, settings.shadow_topic, encode_prediction)


def window_sink(settings: Settings) -> ProducerSink[Any]:
    """Closed window aggregates, to ``UNDERTOW_FEATURES_TOPIC``, keyed by entity."""
    return ProducerSink(settings, settings.features_topic,
                        lambda w: (w.key.encode(), w.to_json(), None))


def dead_letter_sink(settings: Settings) -> ProducerSink[DeadLetter]:
    """Dead letters, to ``UNDERTOW_DEADLETTER_TOPIC``; one over the producer's or the broker's
    size limit is written with its value cut (:func:`truncate_dead_letter`)."""
    return ProducerSink(settings, settings.deadletter_topic, encode_dead_letter,
                        shrink=truncate_dead_letter)
