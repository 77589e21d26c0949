"""The decode operators' batch guard: an unforeseen error dead-letters one record, not the flow."""

from __future__ import annotations

from connectors import metrics
from connectors.kafka import KafkaRecord
from operators.decode import _decoder
from undertow.schema import DeadLetter


def test_unforeseen_error_dead_letters_only_that_record():
    def decode_one(m, now):
        if m.value == b"boom":
            raise ZeroDivisionError("surprise")
        return m.value

    decode = _decoder("dec", "events", bytes, metrics.EVENTS, decode_one)
    out = decode([
        KafkaRecord(None, b"a", "t", 0, 0),
        KafkaRecord(b"k", b"boom", "t", 0, 1),
        KafkaRecord(None, b"b", "t", 1, 2),
        KafkaRecord(None, None, "t", 1, 3, "broker down"),
    ])
    assert out[0] == b"a" and out[2] == b"b"
    assert out[1] == DeadLetter("invalid_record", "ZeroDivisionError: surprise", b"boom", b"k",
                                "t", 0, 1, "dec")
    assert out[3] == DeadLetter("kafka_error", "broker down", None, None, "t", 1, 3, "dec")
