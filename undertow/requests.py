"""Requests and replies: records to score and answer, never to learn from (docs/requests.md).

A request's value is an envelope, ``{"correlation_id", "kind", "event", "reply_to",
"deadline_ms"}``; its record key is the correlation id when the envelope has none.
:func:`decode_request` turns one into what the dataflow routes: a :class:`~undertow.schema
.FeaturedEvent` with its :class:`Request` (``predict``: through the feature steps to the model
step), a bare :class:`Request` (``describe``: straight to the model step), or an error
:class:`Reply` (with a :class:`~undertow.schema.DeadLetter` of its raw bytes when the record is
malformed). Nothing here raises on bad input.

>>> from undertow.schema import EventSchema, FieldRule
>>> schema = EventSchema(key_field="card_id", fields=(FieldRule("amount", "number", min=0),))
>>> out = decode_request(b'{"correlation_id": "r1", "event": {"event_id": "e1", '
...                      b'"card_id": "c1", "amount": 5, "ts": 1000}}', schema)
>>> [type(x).__name__ for x in out], out[0].request.correlation_id, out[0].event.key
(['FeaturedEvent'], 'r1', 'c1')
>>> reply, dead = decode_request(b'{"event": {"event_id": "e1"}}', schema, key=b"r2")
>>> reply.correlation_id, reply.body["error"], dead.reason
('r2', 'missing_field', 'missing_field')
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

import orjson

from undertow.schema import (
    DeadLetter,
    Event,
    EventSchema,
    FeaturedEvent,
    Prediction,
    event_of,
    json_object,
)

PREDICT = "predict"
DESCRIBE = "describe"
KINDS = (PREDICT, DESCRIBE)

#: Reasons only a request can be answered with (the others are the dead-letter reasons).
BAD_REQUEST = "bad_request"
EXPIRED = "expired"
REQUEST_ERRORS = (BAD_REQUEST, EXPIRED)

_ENVELOPE = frozenset({"correlation_id", "kind", "event", "reply_to", "deadline_ms"})
#: Kafka's limit on a topic name, and its characters.
_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class Request(NamedTuple):
    """What a request asks, beside its event: who to answer, where, and until when.

    ``error`` is set by a step that cannot score it ((reason, detail)): the model step then
    answers that error instead of a prediction.
    """

    correlation_id: str
    kind: str
    reply_to: str | None
    deadline_ms: int | None
    read_at: float
    error: tuple[str, str] | None = None


class Reply(NamedTuple):
    """The answer to one request: ``body`` is the reply's JSON object (docs/requests.md)."""

    correlation_id: str
    reply_to: str | None
    body: dict[str, Any]
    read_at: float
    kind: str = PREDICT

    @property
    def ok(self) -> bool:
        return bool(self.body.get("ok"))

    @property
    def outcome(self) -> str:
        """``ok``, or the error's reason: the ``outcome`` label of the requests' metrics."""
        return "ok" if self.ok else str(self.body.get("error"))

    def to_json(self) -> bytes:
        return orjson.dumps(self.body, option=orjson.OPT_NON_STR_KEYS)


def error_reply(cid: str, reply_to: str | None, reason: str, detail: str, read_at: float,
                **extra: Any) -> Reply:
    """A request that could not be answered with a prediction."""
    body = {"correlation_id": cid, "ok": False, "error": reason, "detail": detail[:1000],
            **extra}
    return Reply(cid, reply_to, body, read_at)


def answer(request: Request, prediction: Prediction, features: dict[str, float],
           **extra: Any) -> Reply:
    """A scored request: the prediction's wire fields and the features it was scored on."""
    wire = prediction.wire()
    del wire["served"]
    body = {"correlation_id": request.correlation_id, "ok": True, **extra, **wire,
            "features": features}
    return Reply(request.correlation_id, request.reply_to, body, request.read_at)


def described(request: Request, info: dict[str, Any]) -> Reply:
    """The answer to a ``describe`` request."""
    body = {"correlation_id": request.correlation_id, "ok": True, **info}
    return Reply(request.correlation_id, request.reply_to, body, request.read_at, DESCRIBE)


def decode_request(
    raw: bytes | None,
    schema: EventSchema,
    *,
    own_topics: Collection[str] = (),
    read_at: float = 0.0,
    now_ms: int | None = None,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    step: str = "",
    **extra: Any,
) -> list[Any]:
    """One request record -> ``[FeaturedEvent]`` (predict), ``[Request]`` (describe), ``[Reply]``
    (expired), or ``[Reply, DeadLetter]`` (malformed; ``[DeadLetter]`` alone when it has no
    correlation id to answer). ``own_topics`` may not be replied to (the dataflow's own);
    ``now_ms`` is compared with ``deadline_ms``; ``extra`` goes into every reply's body."""

    def dead(reason: str, detail: str) -> DeadLetter:
        return DeadLetter.of_bytes(reason, detail, raw, key=key, topic=topic,
                                   partition=partition, offset=offset, step=step)

    cid = None
    if key:
        cid = key.decode("utf-8", "replace")
    obj = json_object(raw)
    if isinstance(obj, tuple):
        reason, detail = obj
        if cid is None:
            return [dead(reason, detail + "; no correlation id (record key) to answer")]
        return [error_reply(cid, None, reason, detail, read_at, **extra), dead(reason, detail)]
    given = obj.get("correlation_id")
    if type(given) is str and given:
        cid = given
    reply_to = obj.get("reply_to")
    problem = _envelope_problem(obj, own_topics)
    if cid is None:
        return [dead(BAD_REQUEST, (problem or "the request is well formed")
                     + "; no correlation id (field 'correlation_id' or the record key)")]
    if problem is not None:
        ok_topic = type(reply_to) is str and _topic_problem(reply_to, own_topics) is None
        return [error_reply(cid, reply_to if ok_topic else None, BAD_REQUEST, problem, read_at,
                            **extra), dead(BAD_REQUEST, problem)]
    deadline = obj.get("deadline_ms")
    kind = obj.get("kind", PREDICT)
    if deadline is not None and now_ms is not None and now_ms > deadline:
        return [error_reply(cid, reply_to, "expired",
                            f"read at {now_ms}, after its deadline_ms {deadline}", read_at,
                            **extra)]
    request = Request(cid, kind, reply_to, deadline, read_at)
    if kind == DESCRIBE:
        return [request]
    ev = event_of(obj["event"], schema, read_at=read_at, raw=raw, key=key, topic=topic,
                  partition=partition, offset=offset, step=step)
    if type(ev) is not Event:
        return [error_reply(cid, reply_to, ev.reason, ev.detail, read_at, **extra), ev]
    return [FeaturedEvent(ev, {}, "", request)]


def _envelope_problem(obj: dict[str, Any], own_topics: Collection[str]) -> str | None:
    unknown = sorted(set(obj) - _ENVELOPE)
    if unknown:
        return (f"unknown field {unknown[0][:100]!r} in the request; expected some of "
                f"{sorted(_ENVELOPE)} (the event goes in 'event')")
    cid = obj.get("correlation_id")
    if cid is not None and (type(cid) is not str or not cid):
        return "field 'correlation_id' must be a non-empty string"
    kind = obj.get("kind", PREDICT)
    if kind not in KINDS:
        return f"field 'kind' must be one of {list(KINDS)}, got {str(kind)[:100]!r}"
    if kind == PREDICT and "event" not in obj:
        return "field 'event' is missing: a predict request scores one event"
    deadline = obj.get("deadline_ms")
    if deadline is not None and type(deadline) is not int:
        return "field 'deadline_ms' must be an integer epoch-ms time"
    reply_to = obj.get("reply_to")
    if reply_to is not None:
        return _topic_problem(reply_to, own_topics)
    return None


def _topic_problem(reply_to: Any, own_topics: Collection[str]) -> str | None:
    if type(reply_to) is not str or not reply_to or len(reply_to) > 249 or not set(
            reply_to) <= _TOPIC_CHARS or reply_to in (".", ".."):
        return f"field 'reply_to' must be a Kafka topic name, got {str(reply_to)[:100]!r}"
    if reply_to in own_topics:
        return f"field 'reply_to' names the dataflow's own topic {reply_to!r}"
    return None
