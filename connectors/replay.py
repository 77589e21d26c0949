"""Replay: the events and labels of history, merged into one input in the order they happened.

A :class:`ReplaySource` reads every partition of the events and labels topics (or two JSON Lines
files, one partition each) and emits one stream of :class:`~connectors.kafka.KafkaRecord` values
in *merge order*, each numbered by ``seq`` (0, 1, 2, … over everything emitted):

* a k-way merge of the partitions by the record's event time ``ts`` (each partition is read in
  offset order, the smallest head goes next);
* ties broken by ``(ts, label before event, topic, partition, offset)``: at equal times a label
  comes first, the tie rule of ``river.stream.simulate_qa`` that the model step also applies;
* a record whose ``ts`` cannot be read (malformed) keeps its place in its partition: it takes the
  time of the record before it there (0 at the start), and still flows, so the decoder
  dead-letters it with its raw bytes;
* a record never waits for the records after it in its partition: its *merge time* is the least
  ``ts`` of itself and the next ``lookahead`` (1000) records of its partition. So one record
  stamped far in the future (a bad clock, a malformed record) cannot hold its whole partition
  back; it goes out in its place. The output is exactly time-ordered when each partition is in
  time order to within ``lookahead`` records; a record later than that comes where it is, late,
  as it did live.

The dataflow's model step runs in *ordered* mode over this input (:mod:`operators.learning`): it
processes records strictly in ``seq`` order, so what the models see depends on the data alone,
not on how Bytewax batched the work or on the machine's speed.

**Bounds.** ``start_ms``: on Kafka each partition is positioned with ``offsets_for_times`` (the
first offset whose *Kafka timestamp* is >= start), then records whose ``ts`` is before the start
are skipped, which is also the fallback where the broker answers wrongly: Tansu answers offset 0
for every time, so the replay scans from the beginning and skips, and says so in the log.
``end_ms``: records after it are not emitted; each partition is read to its end (partition EOF,
which is exact on Kafka and Tansu alike, unlike Tansu's reported high watermark).

Recovery state is the next offset of every partition and the next ``seq``: a resumed replay goes
on where its last snapshot was.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.kafka import KafkaRecord
from connectors.settings import ConfigError

log = logging.getLogger("undertow.replay")

LABEL, EVENT = 0, 1
PART = "replay"


@dataclass(frozen=True)
class KafkaInput:
    """All partitions of one topic."""

    topic: str
    kind: int  # LABEL or EVENT
    brokers: str
    options: tuple[tuple[str, str], ...] = ()
    time_field: str = "ts"  # the records' event-time field (the stream file's)


@dataclass(frozen=True)
class FileInput:
    """One JSON Lines file: one partition, offset = line number."""

    path: str
    kind: int
    name: str
    time_field: str = "ts"  # the records' event-time field (the stream file's)

    @property
    def topic(self) -> str:
        return f"file:{self.name}"


def record_ts(value: bytes | None, default: int, field: str = "ts") -> int:
    """The time ``field`` of a JSON record, or ``default`` if it cannot be read.

    >>> record_ts(b'{"ts": 5, "x": 1}', 0), record_ts(b"{oops", 7), record_ts(b'{"ts": "a"}', 3)
    (5, 7, 3)
    >>> record_ts(b'{"at": 9}', 0, "at")
    9
    """
    if not value:
        return default
    try:
        ts = orjson.loads(value).get(field)
    except (orjson.JSONDecodeError, AttributeError):
        return default
    return ts if type(ts) is int else default


class _Reader:
    """One partition, read in offset order.

    ``buf`` holds records read but not yet looked at, as (offset, key, value, error); ``win``
    holds the head and up to ``LOOKAHEAD`` records after it, with their ``ts``; ``mins`` is a
    monotone queue giving the least ``ts`` in ``win``: the head's merge time.
    """

    topic: str
    partition: int
    kind: int
    time_field: str = "ts"

    def __init__(self) -> None:
        self.buf: deque[tuple[int, bytes | None, bytes | None, str | None]] = deque()
        self.win: deque[tuple[int, int, bytes | None, bytes | None, str | None, int]] = deque()
        self.mins: deque[tuple[int, int]] = deque()
        self.eof = False
        self.last_ts = 0
        self.skipped = 0
        self.next_offset = 0
        self._n = 0

    def fill(self) -> None:
        raise NotImplementedError

    def head(self, lookahead: int) -> tuple[tuple[int, int, Any, Any, Any, int], int] | None:
        """The next record and its merge time, or None at the end of the partition."""
        win, mins = self.win, self.mins
        while len(win) <= lookahead:
            if not self.buf:
                if self.eof:
                    break
                self.fill()
                continue
            off, key, value, err = self.buf.popleft()
            ts = record_ts(value, self.last_ts, self.time_field) if err is None else self.last_ts
            self.last_ts = ts
            idx = self._n
            self._n += 1
            win.append((ts, off, key, value, err, idx))
            while mins and mins[-1][0] >= ts:
                mins.pop()
            mins.append((ts, idx))
        if not win:
            return None
        return win[0], mins[0][0]

    def pop(self) -> tuple[int, int, Any, Any, Any, int]:
        rec = self.win.popleft()
        if self.mins[0][1] == rec[5]:
            self.mins.popleft()
        self.next_offset = rec[1] + 1
        return rec

    def first_unemitted(self) -> int:
        if self.win:
            return self.win[0][1]
        if self.buf:
            return self.buf[0][0]
        return self.next_offset

    def progress(self) -> tuple[int, int]:
        """(done, total) of this partition's range, in offsets or bytes: for the log only."""
        return (1, 1) if self.eof and not self.win and not self.buf else (0, 1)

    def close(self) -> None:
        pass


class _FileReader(_Reader):
    def __init__(self, src: FileInput, start_line: int, batch: int) -> None:
        super().__init__()
        self.topic, self.partition, self.kind = src.topic, 0, src.kind
        self.time_field = src.time_field
        self._f = Path(src.path).open("rb")
        self._line = 0
        self._batch = batch
        while self._line < start_line and self._f.readline():
            self._line += 1
        self.next_offset = self._line
        self._from = self._f.tell()
        self._size = os.fstat(self._f.fileno()).st_size

    def progress(self) -> tuple[int, int]:
        return self._f.tell() - self._from, max(self._size - self._from, 1)

    def fill(self) -> None:
        readline = self._f.readline
        for _ in range(self._batch):
            line = readline()
            if not line:
                self.eof = True
                return
            n = self._line
            self._line += 1
            body = line.rstrip(b"\r\n")
            if body.strip():
                self.buf.append((n, None, body, None))

    def close(self) -> None:
        self._f.close()


class _KafkaReader(_Reader):
    def __init__(self, consumer: Any, topic: str, partition: int, kind: int, batch: int) -> None:
        super().__init__()
        self.topic, self.partition, self.kind = topic, partition, kind
        self._consumer = consumer
        self._batch = batch
        self.first = 0
        self.high = 0  # the reported high watermark: a lower bound on Tansu, so progress only

    def progress(self) -> tuple[int, int]:
        if self.eof and not self.win and not self.buf:
            return 1, 1
        total = max(self.high - self.first, 1)
        return min(max(self.next_offset - self.first, 0), total - 1), total

    def fill(self) -> None:
        # consume() returns when it has the whole batch or at its timeout, even when the
        # partition's EOF is among what it got: a short timeout keeps a partition's last, partial
        # batch from waiting (head() calls again while nothing came and the partition is not done).
        for msg in self._consumer.consume(self._batch, 0.05):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.eof = True
                    return
                off = msg.offset()
                self.buf.append((-1 if off is None else off, msg.key(), msg.value(), str(err)))
                continue
            self.buf.append((msg.offset(), msg.key(), msg.value(), None))

    def close(self) -> None:
        self._consumer.close()


class _ReplayPartition(StatefulSourcePartition[KafkaRecord, dict[str, Any]]):
    def __init__(self, source: ReplaySource, resume: dict[str, Any] | None) -> None:
        self.source = source
        self.seq = 0 if resume is None else int(resume["seq"])
        offsets: dict[str, int] = {} if resume is None else dict(resume["offsets"])
        self.readers = source._open(offsets)
        self.heap: list[tuple[int, int, str, int, int, int]] = []  # merge keys + reader index
        self.emitted = 0
        self.skipped_early = 0
        self.dropped_late = 0
        self._t0 = time.monotonic()
        self._next_log = source.progress_every
        for i in range(len(self.readers)):
            self._refill(i)

    def _refill(self, i: int) -> None:
        """Put reader ``i``'s next in-range record on the heap (reading more if needed)."""
        r = self.readers[i]
        src = self.source
        while True:
            h = r.head(src.lookahead)
            if h is None:
                return
            (ts, off, *_), merge_ts = h
            if src.start_ms is not None and ts < src.start_ms:
                r.pop()
                r.skipped += 1
                self.skipped_early += 1
                continue
            if src.end_ms is not None and ts > src.end_ms:
                r.pop()
                self.dropped_late += 1
                continue
            heapq.heappush(self.heap, (merge_ts, r.kind, r.topic, r.partition, off, i))
            return

    def next_batch(self) -> list[KafkaRecord]:
        heap = self.heap
        if not heap:
            self._finish_log()
            raise StopIteration
        out: list[KafkaRecord] = []
        readers = self.readers
        pop, seq = heapq.heappop, self.seq
        ts = 0
        while heap and len(out) < self.source.batch_size:
            ts, _, topic, partition, off, i = pop(heap)
            _, _, key, value, err, _ = readers[i].pop()
            out.append(KafkaRecord(key, value, topic, partition, off, err, seq))
            seq += 1
            self._refill(i)
        self.seq = seq
        self.emitted += len(out)
        if self.emitted >= self._next_log:
            self._next_log += self.source.progress_every
            clock = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts / 1000))
            rate = self.emitted / max(time.monotonic() - self._t0, 1e-9)
            log.info("replay: %d records emitted, replay clock %s, %.1f%% of the inputs read, "
                     "%.0f records/s", self.emitted, clock, 100 * self.fraction_read(), rate)
        return out

    def fraction_read(self) -> float:
        """The mean over partitions of the share of each one's range read (offsets, or bytes
        for a file): a progress estimate, not part of the output."""
        shares = [d / t for d, t in (r.progress() for r in self.readers)]
        return sum(shares) / len(shares) if shares else 1.0

    def _finish_log(self) -> None:
        for r in self.readers:
            if r.skipped and isinstance(r, _KafkaReader):
                log.warning(
                    "replay: %s[%d]: skipped %d records before the start time after seeking with "
                    "offsets_for_times: the broker's answer was too early (Tansu answers 0), so "
                    "the replay scanned and skipped them", r.topic, r.partition, r.skipped)
        log.info("replay: done: %d records emitted, %d before the start skipped, %d after the "
                 "end dropped", self.emitted, self.skipped_early, self.dropped_late)

    def snapshot(self) -> dict[str, Any]:
        # Records on the heap or in buffers were read but not emitted: resume at the first of
        # them, so nothing is emitted twice or lost.
        offsets = {f"{r.topic}|{r.partition}": r.first_unemitted() for r in self.readers}
        return {"offsets": offsets, "seq": self.seq}

    def close(self) -> None:
        for r in self.readers:
            r.close()


class ReplaySource(FixedPartitionedSource[KafkaRecord, dict[str, Any]]):
    """The merged, bounded, time-ordered replay of some event and label inputs."""

    def __init__(
        self,
        events: list[KafkaInput | FileInput],
        labels: list[KafkaInput | FileInput],
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        batch_size: int = 1000,
        progress_every: int = 100_000,
        lookahead: int = 1000,
        consumer_factory: Any = Consumer,
    ) -> None:
        if start_ms is not None and end_ms is not None and start_ms >= end_ms:
            raise ConfigError(f"empty range: the start ({start_ms}) is not before the end "
                              f"({end_ms})")
        self.inputs = [*events, *labels]
        self.event_topics = frozenset(i.topic for i in events)
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.batch_size = batch_size
        self.progress_every = progress_every
        self.lookahead = lookahead
        self.consumer_factory = consumer_factory
        self._partitions = self._check_inputs()

    def _check_inputs(self) -> dict[str, list[int]]:
        parts: dict[str, list[int]] = {}
        for inp in self.inputs:
            if isinstance(inp, FileInput):
                check_jsonl(inp.path)
                parts[inp.topic] = [0]
                continue
            md = AdminClient({"bootstrap.servers": inp.brokers, **dict(inp.options)}).list_topics(
                timeout=30)  # all topics: naming one in a metadata request can create it
            t = md.topics.get(inp.topic)
            if t is None or t.error is not None:
                why = "it does not exist" if t is None else t.error.str()
                raise ConfigError(f"cannot read Kafka topic {inp.topic!r} from {inp.brokers}: "
                                  f"{why}")
            parts[inp.topic] = sorted(t.partitions)
        return parts

    def list_parts(self) -> list[str]:
        return [PART]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, Any] | None
    ) -> _ReplayPartition:
        return _ReplayPartition(self, resume_state)

    def _open(self, offsets: dict[str, int]) -> list[_Reader]:
        readers: list[_Reader] = []
        for inp in self.inputs:
            if isinstance(inp, FileInput):
                readers.append(_FileReader(inp, offsets.get(f"{inp.topic}|0", 0),
                                           self.batch_size))
                continue
            for p in self._partitions[inp.topic]:
                readers.append(self._kafka_reader(inp, p, offsets.get(f"{inp.topic}|{p}")))
        return readers

    def _kafka_reader(self, inp: KafkaInput, partition: int, resume: int | None) -> _KafkaReader:
        consumer = self.consumer_factory({
            "bootstrap.servers": inp.brokers,
            "group.id": "undertow-replay-unused",  # offsets live in the replay's state
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "fetch.wait.max.ms": "20",
            **dict(inp.options),
        })
        if resume is not None:
            offset = resume
        elif self.start_ms is not None:
            (tp,) = consumer.offsets_for_times(
                [TopicPartition(inp.topic, partition, self.start_ms)], timeout=30)
            # -1 (OFFSET_END): no record at or after the time: nothing to read there.
            offset = tp.offset if tp.offset >= 0 else -1
            log.info("replay: %s[%d]: offsets_for_times(%d) answered offset %d", inp.topic,
                     partition, self.start_ms, tp.offset)
        else:
            offset = 0
        r = _KafkaReader(consumer, inp.topic, partition, inp.kind, self.batch_size)
        r.time_field = inp.time_field
        if offset == -1:
            r.eof = True
            consumer.close()
            r._consumer = _Closed()
        else:
            consumer.assign([TopicPartition(inp.topic, partition, offset)])
            r.next_offset = r.first = offset
            _, r.high = consumer.get_watermark_offsets(TopicPartition(inp.topic, partition),
                                                       timeout=30)
        return r


class _Closed:
    def close(self) -> None:
        pass


def check_jsonl(path: str) -> None:
    """A file the replay can read: it exists and its first non-blank line is a JSON object.

    A file that is not JSON Lines at all is an error; a bad record inside a good file is not (it
    is dead-lettered with its raw bytes, like a bad Kafka record).
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            for n, line in enumerate(_lines(f)):
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    obj = None
                if not isinstance(obj, dict):
                    raise ConfigError(f"{path}: line {n + 1} is not a JSON object: this is not "
                                      "a JSON Lines file of records")
                return
    except OSError as ex:
        raise ConfigError(f"cannot read {path}: {ex.strerror or ex}") from None


def _lines(f: Any) -> Iterator[bytes]:
    for line in f:
        if line.strip():
            yield line
