"""Decode Kafka records into validated events, labels, commands and requests; bad records
become dead letters.

Both operators work on whole batches (``flat_map_batch``): one Python call per batch, one
wall-clock reading per batch for ``read_at``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from connectors import metrics
from connectors.kafka import KafkaRecord
from undertow.requests import Reply, Request, decode_request, error_reply
from undertow.schema import (
    INVALID_RECORD,
    KAFKA_ERROR,
    TOO_LARGE,
    Control,
    DeadLetter,
    Event,
    EventSchema,
    FeaturedEvent,
    Label,
    LabelSchema,
    decode_control,
    decode_event,
    decode_label,
)

T = TypeVar("T")


@dataclass(frozen=True)
class DecodeOut(Generic[T]):
    """Valid records and dead letters of one decode step."""

    oks: Stream[T]
    errs: Stream[DeadLetter]


def _kafka_error(step_id: str, r: KafkaRecord) -> DeadLetter:
    return DeadLetter.of_bytes(KAFKA_ERROR, r.error or "", r.value, key=r.key, topic=r.topic,
                               partition=r.partition, offset=r.offset, step=step_id, seq=r.seq)


def _too_large(step_id: str, r: KafkaRecord, limit: int) -> DeadLetter:
    return DeadLetter.of_bytes(TOO_LARGE, f"value of {len(r.value or b'')} bytes is over the "
                               f"limit of {limit} (UNDERTOW_MAX_RECORD_BYTES)", r.value,
                               key=r.key, topic=r.topic, partition=r.partition, offset=r.offset,
                               step=step_id, seq=r.seq)


def _decoder(
    step_id: str,
    stream: str,
    ok_type: type,
    ok_counter: Any,
    decode_one: Callable[[KafkaRecord, float], Any],
    max_record_bytes: int | None = None,
) -> Callable[[list[KafkaRecord]], list[Any]]:
    """A batch decoder: one wall-clock reading per batch, counts pushed once per batch; a value
    longer than ``max_record_bytes`` is a ``too_large`` dead letter, never parsed."""
    reads = metrics.RECORDS_READ.labels(stream=stream)
    limit = max_record_bytes

    def sized(m: KafkaRecord, now: float) -> Any:
        if limit is not None and m.value is not None and len(m.value) > limit:
            return _too_large(step_id, m, limit)
        return decode_one(m, now)

    one = decode_one if limit is None else sized

    def guarded(m: KafkaRecord, now: float) -> Any:
        try:
            return one(m, now)
        except Exception as ex:  # no input may crash the dataflow: unforeseen -> dead letter
            return DeadLetter.of_bytes(INVALID_RECORD, f"{type(ex).__name__}: {ex}"[:500],
                                       m.value, key=m.key, topic=m.topic, partition=m.partition,
                                       offset=m.offset, step=step_id, seq=m.seq)

    def decode_batch(batch: list[KafkaRecord]) -> list[Any]:
        now = time.time()
        try:
            out = [one(m, now) if m.error is None else _kafka_error(step_id, m)
                   for m in batch]
        except Exception:  # rare: redo the batch record by record to isolate the culprit
            out = [guarded(m, now) if m.error is None else _kafka_error(step_id, m)
                   for m in batch]
        # Dead letters are counted once, by the tap before the dead-letter sink.
        reads.inc(len(out))
        ok_counter.inc(sum(1 for x in out if type(x) is ok_type))
        return out

    return decode_batch


@operator
def decode_events(
    step_id: str, up: Stream[KafkaRecord], *, schema: EventSchema,
    max_record_bytes: int | None = None,
) -> DecodeOut[Event]:
    """Decode event records with ``schema``; invalid ones go to ``errs`` with their raw bytes,
    and so do values longer than ``max_record_bytes`` (reason ``too_large``).

    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("decode_eg")
    >>> raw = [KafkaRecord(b"c1", b"{oops", "events", 0, 7)]
    >>> out = decode_events("dec", op.input("in", flow, TestingSource(raw)), schema=EventSchema())
    >>> errs = []
    >>> op.output("errs", out.errs, TestingSink(errs))
    >>> run_main(flow)
    >>> [(e.reason, e.raw, e.topic, e.offset) for e in errs]
    [('bad_json', b'{oops', 'events', 7)]
    """
    metrics.declare_reasons(step_id)

    def decode_one(m: KafkaRecord, now: float) -> Event | DeadLetter:
        return decode_event(
            m.value, schema, read_at=now, key=m.key, topic=m.topic, partition=m.partition,
            offset=m.offset, step=step_id, seq=m.seq,
        )

    decode_batch = _decoder(step_id, "events", Event, metrics.EVENTS, decode_one,
                            max_record_bytes)
    decoded = op.flat_map_batch("decode", up, decode_batch)
    split = op.branch("split", decoded, lambda x: type(x) is Event)
    return DecodeOut(split.trues, split.falses)  # type: ignore[arg-type]


@operator
def decode_labels(
    step_id: str,
    up: Stream[KafkaRecord],
    *,
    schema: LabelSchema,
    max_record_bytes: int | None = None,
) -> DecodeOut[Label]:
    """Decode label records (id, key, time and the target's value, as ``schema`` names them)."""
    metrics.declare_reasons(step_id)

    def decode_one(m: KafkaRecord, now: float) -> Label | DeadLetter:
        return decode_label(
            m.value, schema, read_at=now, key=m.key,
            topic=m.topic, partition=m.partition, offset=m.offset, step=step_id, seq=m.seq,
        )

    decode_batch = _decoder(step_id, "labels", Label, metrics.LABELS, decode_one,
                            max_record_bytes)
    decoded = op.flat_map_batch("decode", up, decode_batch)
    split = op.branch("split", decoded, lambda x: type(x) is Label)
    return DecodeOut(split.trues, split.falses)  # type: ignore[arg-type]


@operator
def decode_controls(
    step_id: str, up: Stream[KafkaRecord], *, max_record_bytes: int | None = None
) -> DecodeOut[Control]:
    """Decode control-topic commands for the model step (:func:`undertow.schema.decode_control`)."""
    metrics.declare_reasons(step_id)

    def decode_one(m: KafkaRecord, now: float) -> Control | DeadLetter:
        return decode_control(
            m.value, topic=m.topic, partition=m.partition, offset=m.offset, step=step_id
        )

    decode_batch = _decoder(step_id, "control", Control, metrics.CONTROLS_READ, decode_one,
                            max_record_bytes)
    decoded = op.flat_map_batch("decode", up, decode_batch)
    split = op.branch("split", decoded, lambda x: type(x) is Control)
    return DecodeOut(split.trues, split.falses)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RequestsOut:
    """Decoded requests: ``predict`` ones to featurize, ``describe`` ones for the model step,
    replies already known (errors, expired) and the dead letters of malformed requests."""

    featured: Stream[FeaturedEvent]
    describes: Stream[Request]
    replies: Stream[Reply]
    errs: Stream[DeadLetter]


@operator
def decode_requests(
    step_id: str,
    up: Stream[KafkaRecord],
    *,
    schema: EventSchema,
    own_topics: tuple[str, ...] = (),
    max_record_bytes: int | None = None,
    reply_extra: dict[str, Any] | None = None,
) -> RequestsOut:
    """Decode request records (:func:`undertow.requests.decode_request`): a malformed request
    gets an error reply and, with its raw bytes, a dead letter; an expired one a reply alone."""
    metrics.declare_reasons(step_id)
    extra = reply_extra or {}
    reads = metrics.RECORDS_READ.labels(stream="requests")

    def decode_batch(batch: list[KafkaRecord]) -> list[Any]:
        now = time.time()
        now_ms = int(now * 1000)
        out: list[Any] = []
        for m in batch:
            if m.error is not None:
                out.append(_kafka_error(step_id, m))
                continue
            if max_record_bytes is not None and m.value is not None \
                    and len(m.value) > max_record_bytes:
                dead = _too_large(step_id, m, max_record_bytes)
                if m.key:
                    out.append(error_reply(m.key.decode("utf-8", "replace"), None, TOO_LARGE,
                                           dead.detail, now, **extra))
                out.append(dead)
                continue
            try:
                out.extend(decode_request(
                    m.value, schema, own_topics=own_topics, read_at=now, now_ms=now_ms,
                    key=m.key, topic=m.topic, partition=m.partition, offset=m.offset,
                    step=step_id, **extra))
            except Exception as ex:  # no input may crash the dataflow: unforeseen -> dead letter
                out.append(DeadLetter.of_bytes(
                    INVALID_RECORD, f"{type(ex).__name__}: {ex}"[:500], m.value, key=m.key,
                    topic=m.topic, partition=m.partition, offset=m.offset, step=step_id))
        reads.inc(len(batch))
        return out

    decoded = op.flat_map_batch("decode", up, decode_batch)
    featured = op.branch("split_featured", decoded, lambda x: type(x) is FeaturedEvent)
    describes = op.branch("split_describes", featured.falses, lambda x: type(x) is Request)
    replies = op.branch("split_replies", describes.falses, lambda x: type(x) is Reply)
    return RequestsOut(featured.trues, describes.trues,  # type: ignore[arg-type]
                       replies.trues, replies.falses)  # type: ignore[arg-type]
