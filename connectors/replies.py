"""The replies sink: each reply to the topic its request named, counted and timed once written."""

from __future__ import annotations

import time

from connectors import metrics
from connectors.kafka import Encoded, ProducerSink
from connectors.settings import (  # noqa: F401 (with_stream_topics: re-exported)
    Settings,
    replies_topic,
    with_stream_topics,
)
from undertow.requests import DESCRIBE, PREDICT, Reply


def encode_reply(r: Reply) -> Encoded:
    """Keyed by the correlation id, so a client can read the replies of its own partition."""
    return r.correlation_id.encode("utf-8", "replace"), r.to_json(), None


def observe_replies(replies: list[Reply]) -> None:
    """Count each reply by kind and outcome and time it from read to written, once written."""
    now = time.time()
    by_kind: dict[str, list[float]] = {}
    for r in replies:
        metrics.REQUESTS_READ.labels(kind=r.kind, outcome=r.outcome).inc()
        by_kind.setdefault(r.kind, []).append(now - r.read_at)
    for kind, values in by_kind.items():
        metrics.REQUEST_LATENCY.observe_many(values, kind)


def reply_sink(settings: Settings) -> ProducerSink[Reply]:
    """Replies, to the request's ``reply_to`` or else ``UNDERTOW_REPLIES_TOPIC``."""
    for kind in (PREDICT, DESCRIBE):  # series at zero from the start
        metrics.REQUESTS_READ.labels(kind=kind, outcome="ok")
        metrics.REQUEST_LATENCY.series(kind)
    return ProducerSink(settings, replies_topic(settings), encode_reply, observe_replies,
                        topic_of=lambda r: r.reply_to)
