"""Shared pytest fixtures: one embedded Kafka broker (Tansu) per test session."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from harness.kafka import EmbeddedKafka

#: ``topics("events", "labels", partitions=3)`` -> ``{"events": "events-<test>-<id>", ...}``
TopicFactory = Callable[..., dict[str, str]]


@pytest.fixture(scope="session")
def kafka() -> Iterator[EmbeddedKafka]:
    """A started embedded broker, shared by the whole session and stopped at its end."""
    broker = EmbeddedKafka().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topics(kafka: EmbeddedKafka, request: pytest.FixtureRequest) -> TopicFactory:
    """Factory creating uniquely named topics on ``kafka`` for one test.

    ``topics("events", "labels", partitions=3)`` creates both with 3 partitions and
    returns the mapping logical name -> real topic name.
    """
    test_slug = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:60]

    def create(*names: str, partitions: int = 1) -> dict[str, str]:
        unique = {name: f"{name}-{test_slug}-{uuid.uuid4().hex[:8]}" for name in names}
        kafka.create_topics(list(unique.values()), partitions=partitions)
        return unique

    return create
