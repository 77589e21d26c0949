"""The fraud job as a naive Bytewax dataflow: what a user writes with Bytewax's own operators.

Run by ``benchmarks/speed.py`` (settings: the ``PEER_*`` variables, see
:class:`benchmarks.peers.PeerConfig`)::

    PEER_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python -m bytewax.run \\
        benchmarks.peers.naive_bytewax:flow

Bytewax's ``KafkaSource`` reads both topics from the beginning to their end (``tail=False``); a
``map`` decodes each record with orjson and stamps ``read_at``; the events go through one
``stateful_map`` keyed by card (the card's rolling features, a
:class:`undertow.features.GroupState` of the card group per card) and one keyed by merchant
(likewise, with a day of allowed lateness: see ``LATENESS_MS``); then events and labels meet in
one ``stateful_map`` with the single key ``"model"`` holding :class:`benchmarks.peers.Learner`,
which scores the events and learns the labels; the predictions go out through Bytewax's
``KafkaSink``. The fetch wait and the producer's linger are the live dataflow's (20 ms, 5 ms).
Importing it reads the environment only (and registers
:func:`benchmarks.peers.stamp_done_at_exit`).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import bytewax.connectors.kafka.operators as kop
import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Dataflow
from confluent_kafka import OFFSET_BEGINNING

from benchmarks.peers import Learner, PeerConfig, prediction_json, stamp_done_at_exit
from undertow.features import GroupState, load_spec
from undertow.features.state import finish
from undertow.reference import FRAUD_SPEC

CFG = PeerConfig.from_env()
stamp_done_at_exit()  # the benchmark's only hook: when the run was done
SPEC = load_spec(FRAUD_SPEC)
TRANSFORMS = SPEC.transforms()
#: Bytewax's keyed operators take each batch grouped by key, so the merchant step sees a
#: partition's records out of order by up to a batch or more of event time; with the stream's 5
#: minutes of lateness it drops 13 % of the events as late (643 of 5,000). A day admits them all.
LATENESS_MS = 86_400_000
CARD, MERCHANT = (next(g for g in SPEC.groups() if g.key == (k,)) for k in ("card_id",
                                                                            "merchant_id"))


class Rec(NamedTuple):
    is_label: bool
    partition: int
    read_at: float
    fields: dict[str, Any]
    features: dict[str, float]


def decode(msg: Any) -> Rec:
    return Rec(msg.topic == CFG.labels_topic, msg.partition, time.time(),
               orjson.loads(msg.value), {})


def rolling(group: Any) -> Any:
    """A ``stateful_map`` mapper: one entity's rolling features of ``group``, added to the
    record's (None for a late record)."""
    def mapper(state: GroupState | None, r: Rec) -> tuple[GroupState, Rec | None]:
        if state is None:
            state = GroupState(group, allowed_lateness_ms=LATENESS_MS, idle_ms=SPEC.idle_ms)
        feats = state.update(r.fields, r.fields["ts"], r.partition, [])
        return state, None if feats is None else r._replace(features={**r.features, **feats})
    return mapper


def model_step(state: Learner | None, r: Rec) -> tuple[Learner, KafkaSinkMessage | None]:
    learner = state if state is not None else Learner(CFG.model)
    if r.is_label:
        learner.label(r.fields)
        return learner, None
    feats = finish(SPEC, r.features, r.fields, TRANSFORMS)
    score = learner.score(r.fields["event_id"], feats)
    value = prediction_json(r.fields, score, CFG.model, r.read_at)
    return learner, KafkaSinkMessage(r.fields["card_id"].encode(), value)


flow = Dataflow("naive_bytewax")
inp = kop.input("kafka_in", flow, brokers=[CFG.bootstrap],
                topics=[CFG.events_topic, CFG.labels_topic], tail=False,
                starting_offset=OFFSET_BEGINNING, add_config={"fetch.wait.max.ms": "20"})
recs = op.map("decode", inp.oks, decode)
split = op.branch("split", recs, lambda r: r.is_label)
by_card = op.key_on("by_card", split.falses, lambda r: r.fields["card_id"])
carded = op.key_rm("card_done", op.stateful_map("card_features", by_card, rolling(CARD)))
by_merchant = op.key_on("by_merchant", op.filter("card_late", carded, lambda r: r is not None),
                        lambda r: r.fields["merchant_id"])
featured = op.key_rm("merchant_done",
                     op.stateful_map("merchant_features", by_merchant, rolling(MERCHANT)))
both = op.merge("events_and_labels", op.filter("merchant_late", featured,
                                               lambda r: r is not None), split.trues)
scored = op.stateful_map("model", op.key_on("one_model", both, lambda _: "model"), model_step)
out = op.filter_map("predictions", scored, lambda kv: kv[1])
kop.output("kafka_out", out, brokers=[CFG.bootstrap], topic=CFG.predictions_topic,
           add_config={"linger.ms": "5"})
