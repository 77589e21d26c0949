"""Load a JSON Lines file into a Kafka topic, and read a topic back as JSON Lines.

    python -m connectors.topics load --topic events --file events.jsonl --key-field card_id
    python -m connectors.topics load --topic events --file events.jsonl --create --partitions 3
    python -m connectors.topics read --topic predictions --out predictions.jsonl
    python -m connectors.topics read --topic deadletter --with-meta --max 10

The brokers and librdkafka options are the dataflow's own settings
(``UNDERTOW_KAFKA_BOOTSTRAP_SERVERS``, ``UNDERTOW_KAFKA_OPT_*``, ``UNDERTOW_KAFKA_OPTIONS``);
``--brokers`` overrides the first.

``load`` sends each line's bytes as the record's value, untouched (the line ending is not part of
it; blank lines are skipped). With ``--key-field FIELD`` the key is the line's ``FIELD`` value (a
string as it is, a number or boolean as its JSON text), so an entity's records stay in one
partition. The whole file is checked before anything is sent: a line that is not a JSON object
with that field (a string, number or boolean) refuses the file with one line naming the file and
the line number, and nothing is written. To load malformed records on purpose (to watch the
dead-letter topic), load them without ``--key-field``: every line is then sent as it is, keyless.
The topic must exist, or ``--create --partitions N`` creates it (an existing topic with another
partition count is refused).

``read`` reads every partition from the beginning (no consumer group, nothing committed) until
every partition has been at its end for ``--timeout`` seconds with nothing new (``0``: stop at
the end), or ``--max`` records, and writes one line per record
to stdout or ``--out``: the value as it is, if it is one line of text (a value spanning several
lines is written as one: re-encoded if it is JSON, else as a JSON string; a null value as
``null``). ``--with-meta`` writes each record as::

    {"topic", "partition", "offset", "key", "timestamp", "headers": {name: str},
     "value": <the JSON value, or the raw text if it is not JSON>}

``key`` and header values are text (invalid UTF-8 replaced), ``timestamp`` is epoch milliseconds
(null if the broker has none); a header name that repeats keeps its last value. This is how the
dead-letter topic reads: the raw record as the value, the reason in the ``undertow.error.*``
headers.

Bad arguments, a missing file or topic and unreachable brokers stop it with one line on stderr
and exit status 2 (librdkafka's own connection log is kept off the terminal); failed deliveries
exit with status 1. A summary line goes to stderr at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.settings import ConfigError, Settings, load_settings

__all__ = ["BadLine", "load_file", "main", "read_topic", "record_json", "scan_file"]

#: Seconds to wait for the brokers' metadata before calling them unreachable.
CONNECT_TIMEOUT_S = 5.0
#: Seconds ``read`` waits for a partition that neither sends records nor reaches its end.
STALL_TIMEOUT_S = 30.0


class _Quiet:
    """A logger for librdkafka that drops its lines: the one error line is ours."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    debug = info = warning = error = critical = exception = log


_QUIET = _Quiet()


class BadLine(ConfigError):
    """A line of the file that cannot be keyed; the message names the file and the line."""

    def __init__(self, path: str, line: int, why: str) -> None:
        super().__init__(f"{path}:{line}: {why}")
        self.path = path
        self.line = line
        self.why = why


def _client_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, **settings.librdkafka(),
            "logger": _QUIET}


def _partitions(settings: Settings, topic: str) -> int | None:
    """The partition count of ``topic`` (None if it does not exist); a ConfigError if the
    brokers cannot be reached. Lists every topic: naming one in a metadata request can create
    it."""
    admin = AdminClient(_client_config(settings))
    try:
        md = admin.list_topics(timeout=CONNECT_TIMEOUT_S)
    except KafkaException as ex:
        err = ex.args[0] if ex.args else ex
        why = err.str() if isinstance(err, KafkaError) else str(err)
        raise ConfigError(f"cannot reach the brokers {settings.kafka_bootstrap_servers}: "
                          f"{why}") from None
    t = md.topics.get(topic)
    if t is None:
        return None
    if t.error is not None:
        raise ConfigError(f"topic {topic!r}: {t.error.str()}")
    return len(t.partitions)


def _create(settings: Settings, topic: str, partitions: int) -> None:
    admin = AdminClient(_client_config(settings))
    fut = admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                        replication_factor=1)])[topic]
    try:
        fut.result(timeout=30)
    except KafkaException as ex:
        err = ex.args[0]
        if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise ConfigError(f"cannot create topic {topic!r}: {err.str()}") from None
    deadline = time.monotonic() + 30
    while _partitions(settings, topic) != partitions:  # metadata catches up
        if time.monotonic() > deadline:
            raise ConfigError(f"topic {topic!r} not visible after creating it")
        time.sleep(0.05)


def _key_of(line: bytes, field: str) -> tuple[bytes | None, str | None]:
    """(key, None) or (None, why the line cannot be keyed)."""
    try:
        obj = json.loads(line)
    except ValueError as ex:
        return None, f"not JSON ({ex})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (a {type(obj).__name__})"
    if field not in obj:
        return None, f"no field {field!r}"
    v = obj[field]
    if isinstance(v, str):
        return v.encode(), None
    if isinstance(v, bool | int | float):
        return json.dumps(v).encode(), None
    what = "null" if v is None else f"a {type(v).__name__}"
    return None, f"field {field!r} is {what}, not a string, number or boolean"


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number, the line without its ending) for every non-blank line."""
    for n, raw in enumerate(data.split(b"\n"), 1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if line.strip():
            yield n, line


def scan_file(path: str, key_field: str | None) -> list[tuple[bytes | None, bytes]]:
    """Every record of a JSON Lines file as (key, value); :class:`BadLine` at the first line
    that cannot be keyed by ``key_field``. Nothing is sent."""
    try:
        data = Path(path).read_bytes()
    except OSError as ex:
        raise ConfigError(f"--file: cannot read {path}: {ex.strerror}") from None
    out: list[tuple[bytes | None, bytes]] = []
    for n, line in _lines(data):
        key = None
        if key_field is not None:
            key, why = _key_of(line, key_field)
            if why is not None:
                raise BadLine(path, n, why)
        out.append((key, line))
    return out


def load_file(
    settings: Settings, topic: str, path: str, *, key_field: str | None = None,
    create_partitions: int | None = None,
) -> dict[int, int]:
    """Send a JSON Lines file to ``topic``; return the records delivered per partition.

    Raises :class:`ConfigError` (:class:`BadLine` for a bad line) before sending anything, and
    ``KafkaException`` if a delivery failed.
    """
    records = scan_file(path, key_field)
    have = _partitions(settings, topic)
    if create_partitions is not None:
        if have is None:
            _create(settings, topic, create_partitions)
        elif have != create_partitions:
            raise ConfigError(f"--partitions: topic {topic!r} exists with {have} partitions, "
                              f"not {create_partitions}")
    elif have is None:
        raise ConfigError(f"--topic: topic {topic!r} does not exist (--create --partitions N "
                          f"creates it)")
    delivered: dict[int, int] = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err.str())
        else:
            p = msg.partition()
            delivered[p] = delivered.get(p, 0) + 1

    producer = Producer({**_client_config(settings), "linger.ms": 5})
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain it
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    if errors or left:
        first = errors[0] if errors else f"{left} records still queued after 60 s"
        raise KafkaException(f"{len(errors) + left} of {len(records)} records were not written "
                             f"to {topic!r}: {first}")
    return dict(sorted(delivered.items()))


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "replace")


def record_json(msg: Message) -> dict[str, Any]:
    """One record with its metadata (the ``--with-meta`` shape)."""
    raw = msg.value()
    value: Any = None
    if raw is not None:
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.decode("utf-8", "replace")
    kind, ts = msg.timestamp()
    return {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": _text(msg.key()),
        "timestamp": None if kind == TIMESTAMP_NOT_AVAILABLE else ts,
        "headers": {name: _text(v) for name, v in (msg.headers() or [])},
        "value": value,
    }


def _value_line(raw: bytes | None) -> bytes:
    if raw is None:
        return b"null"
    if b"\n" not in raw and b"\r" not in raw:
        return raw
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False).encode()
    except ValueError:
        return json.dumps(raw.decode("utf-8", "replace"), ensure_ascii=False).encode()


def read_topic(
    settings: Settings, topic: str, *, idle_s: float = 5.0, max_records: int | None = None,
) -> Iterator[Message]:
    """Every record of ``topic`` from the beginning, until ``max_records`` were read or every
    partition has been at its end for ``idle_s`` seconds with no new record (0: stop at the
    end). A ConfigError if the topic does not exist or the brokers cannot be reached."""
    n_parts = _partitions(settings, topic)
    if n_parts is None:
        raise ConfigError(f"--topic: topic {topic!r} does not exist")
    consumer = Consumer({
        **_client_config(settings),
        "group.id": "undertow-topics-read",  # never joined or committed: partitions are assigned
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 50,
    })
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(n_parts)])
        n = 0
        at_end: set[int] = set()
        idle_since: float | None = None  # when every partition was last seen at its end
        last_record = time.monotonic()
        while max_records is None or n < max_records:
            want = 1000 if max_records is None else min(1000, max_records - n)
            for msg in consumer.consume(want, 0.05):
                err = msg.error()
                if err is None:
                    at_end.discard(msg.partition())
                    n += 1
                    last_record = time.monotonic()
                    yield msg
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                elif err.fatal() or not err.retriable():
                    raise KafkaException(err)
            if len(at_end) < n_parts:
                idle_since = None
                if time.monotonic() - last_record > max(idle_s, STALL_TIMEOUT_S):
                    late = sorted(set(range(n_parts)) - at_end)
                    raise KafkaException(f"read {n} records from {topic!r}; partitions {late} "
                                         f"sent nothing and did not reach their end within "
                                         f"{max(idle_s, STALL_TIMEOUT_S):g} s")
            elif idle_since is None:
                idle_since = time.monotonic()
            if idle_since is not None and time.monotonic() - idle_since >= idle_s:
                return
    finally:
        consumer.close()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m connectors.topics", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default=None,
                    help="Kafka brokers (default: UNDERTOW_KAFKA_BOOTSTRAP_SERVERS)")
    sub = ap.add_subparsers(dest="command", required=True)
    ld = sub.add_parser("load", help="send a JSON Lines file to a topic")
    ld.add_argument("--topic", required=True)
    ld.add_argument("--file", required=True, help="JSON Lines, one record per line")
    ld.add_argument("--key-field", default=None,
                    help="the field whose value is the record's key (default: no key)")
    ld.add_argument("--create", action="store_true", help="create the topic if it is missing")
    ld.add_argument("--partitions", type=int, default=None, help="with --create")
    rd = sub.add_parser("read", help="write a topic's records as JSON Lines")
    rd.add_argument("--topic", required=True)
    rd.add_argument("--out", default=None, help="a file (default: stdout)")
    rd.add_argument("--max", type=int, default=None, help="stop after this many records")
    rd.add_argument("--timeout", type=float, default=5.0,
                    help="stop once every partition has been at its end this many seconds "
                    "with nothing new (default 5; 0: stop at the end)")
    rd.add_argument("--with-meta", action="store_true",
                    help="topic, partition, offset, key, timestamp and headers with each value")
    for p in (ld, rd):
        p.add_argument("--brokers", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return ap


def _read(settings: Settings, a: argparse.Namespace) -> int:
    out: IO[bytes] = open(a.out, "wb") if a.out else sys.stdout.buffer  # noqa: SIM115
    n = 0
    try:
        for msg in read_topic(settings, a.topic, idle_s=a.timeout, max_records=a.max):
            if a.with_meta:
                line = json.dumps(record_json(msg), ensure_ascii=False).encode()
            else:
                line = _value_line(msg.value())
            out.write(line + b"\n")
            n += 1
    finally:
        if a.out:
            out.close()
        else:
            out.flush()
    where = f" -> {a.out}" if a.out else ""
    print(f"read {n} records from {a.topic!r}{where}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.command == "load":
            if a.partitions is not None and not a.create:
                raise ConfigError("--partitions: only with --create")
            if a.create and (a.partitions is None or a.partitions < 1):
                raise ConfigError("--create: needs --partitions N (N >= 1)")
            if a.key_field is not None and not a.key_field:
                raise ConfigError("--key-field: must not be empty")
        elif a.max is not None and a.max < 1:
            raise ConfigError("--max: must be >= 1")
        elif a.timeout < 0:
            raise ConfigError("--timeout: must be >= 0")
        overrides = {"kafka_bootstrap_servers": a.brokers} if a.brokers else {}
        settings = load_settings(**overrides)
        if a.command == "read":
            return _read(settings, a)
        per_part = load_file(settings, a.topic, a.file, key_field=a.key_field,
                             create_partitions=a.partitions if a.create else None)
    except ConfigError as ex:
        print(f"undertow topics: {ex}", file=sys.stderr)
        return 2
    except KafkaException as ex:
        print(f"undertow topics: {ex}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `read ... | head`: the reader left
        return 0
    keyed = f"keyed by {a.key_field!r}" if a.key_field else "without keys"
    print(f"loaded {sum(per_part.values())} records from {a.file} into {a.topic!r}, {keyed}; "
          f"per partition {per_part}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
