"""JSON Lines files as Bytewax inputs and outputs, in the same record shapes as Kafka.

A file is one partition: each line becomes a :class:`~connectors.kafka.KafkaRecord` whose
``topic`` is ``file:<name>`` and whose ``offset`` is the line number (from 0), so a bad line is
dead-lettered with the same coordinates a Kafka record would have. The partition's recovery state
is the next line number. Blank lines are skipped (they count as lines).

:class:`JsonlSink` appends one JSON document per record to a file, from a single worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.kafka import KafkaRecord

X = TypeVar("X")


class _LinesPartition(StatefulSourcePartition[KafkaRecord, int]):
    def __init__(self, path: Path, topic: str, start: int, batch_size: int) -> None:
        self._f = path.open("rb")
        self._topic = topic
        self._line = 0
        self._batch_size = batch_size
        while self._line < start and self._f.readline():
            self._line += 1

    def next_batch(self) -> list[KafkaRecord]:
        out: list[KafkaRecord] = []
        readline = self._f.readline
        while len(out) < self._batch_size:
            line = readline()
            if not line:
                if out:
                    return out
                raise StopIteration
            n = self._line
            self._line += 1
            body = line.rstrip(b"\r\n")
            if body.strip():
                out.append(KafkaRecord(None, body, self._topic, 0, n))
        return out

    def snapshot(self) -> int:
        return self._line

    def close(self) -> None:
        self._f.close()


class JsonlSource(FixedPartitionedSource[KafkaRecord, int]):
    """The lines of one file, as records of the topic ``file:<name>`` (name defaults to the
    file's stem). A missing or unreadable file raises ``FileNotFoundError`` / ``OSError`` at
    construction, so a command line can answer with one clear line before the dataflow starts."""

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None,
                 batch_size: int = 1000) -> None:
        self.path = Path(path)
        with self.path.open("rb"):
            pass
        self.topic = f"file:{name or self.path.stem}"
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [self.topic]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LinesPartition:
        return _LinesPartition(self.path, self.topic, resume_state or 0, self.batch_size)


class _LinesOut(StatelessSinkPartition[Any], Generic[X]):
    def __init__(self, path: Path, encode: Callable[[X], bytes]) -> None:
        self._f = path.open("ab")
        self._encode = encode

    def write_batch(self, items: list[X]) -> None:
        enc = self._encode
        self._f.write(b"".join(enc(x) + b"\n" for x in items))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class JsonlSink(DynamicSink[X], Generic[X]):
    """Append ``encode(record)`` lines to ``path`` (one worker: a file has one writer)."""

    def __init__(self, path: str | os.PathLike[str], encode: Callable[[X], bytes]) -> None:
        self.path = Path(path)
        self.encode = encode

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LinesOut[X]:
        if worker_count != 1:
            raise ValueError(f"JsonlSink {self.path}: one worker writes a file; got {worker_count}")
        return _LinesOut(self.path, self.encode)


class _ListOut(StatelessSinkPartition[Any]):
    def __init__(self, into: list[Any]) -> None:
        self._into = into

    def write_batch(self, items: list[Any]) -> None:
        self._into.extend(items)


class ListSink(DynamicSink[Any]):
    """Collect records in a list of this process (bounded runs: backtests, bulk jobs)."""

    def __init__(self, into: list[Any]) -> None:
        self.into = into

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ListOut:
        return _ListOut(self.into)


def dead_letter_json(d: Any) -> bytes:
    """One dead letter as a JSON document, its raw bytes in base64 (lossless)."""
    import base64

    import orjson

    return orjson.dumps({
        "reason": d.reason, "detail": d.detail, "step": d.step, "topic": d.topic,
        "partition": d.partition, "offset": d.offset,
        "raw_b64": base64.b64encode(d.raw).decode() if d.raw is not None else None,
    })
