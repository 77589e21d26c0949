"""The oracle through a real Bytewax dataflow: River's progressive validation, reproduced.

Records are JSON bytes, decoded by the dataflow's own decoders, with pass-through features (the
record's own fields), and served and learned by the model-step operator. Two deliveries are
checked against ``river.evaluate.iter_progressive_val_score(..., moment=, delay=)``:

* *live*: events and labels on two inputs, every label delivered before any event (the worst
  case: the model step must hold each label until its time);
* *replay*: one merged input in time order with ``seq`` positions, the model step in ordered
  mode, and the inputs split and re-batched by Bytewax on the way.
"""

from __future__ import annotations

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from river import evaluate, metrics, stream

from connectors.kafka import KafkaRecord
from operators.decode import decode_events, decode_labels
from operators.learning import serve_and_learn
from tests.test_learning import DELAYS, STREAMS, _model
from undertow.learning import LearnerConfig, OnlineLearner
from undertow.schema import EventSchema, FeaturedEvent, FieldRule, LabelSchema


def encoded(stream_name: str, delay_name: str):
    data = STREAMS[stream_name]()
    # JSON keys are strings (SEA names its features 0, 1, 2)
    rows = [({**{f"x{k}" if not isinstance(k, str) else k: v for k, v in x.items()},
              "t": i * 1000}, y) for i, (x, y) in enumerate(data)]
    delay_fn = DELAYS[delay_name]()
    delays = ([delay_fn] * len(rows) if isinstance(delay_fn, int)
              else [delay_fn(x, y) for x, y in rows])
    events = [
        (x["t"], 1, i, orjson.dumps({"event_id": f"e{i}", "key": "k", "ts": x["t"], **x}))
        for i, (x, _) in enumerate(rows)
    ]
    labels = [
        (x["t"] + d, 0, i, orjson.dumps({"event_id": f"e{i}", "key": "k", "ts": x["t"] + d,
                                         "y": y}))
        for i, ((x, y), d) in enumerate(zip(rows, delays, strict=True))
    ]
    it = iter(delays)
    river_delay = delay_fn if isinstance(delay_fn, int) else (lambda x, y: next(it))
    oracle_metric = metrics.ROCAUC()
    oracle = [
        r["Prediction"].get(True, 0.0)
        for r in evaluate.iter_progressive_val_score(
            rows, _model(), oracle_metric, moment="t", delay=river_delay, yield_predictions=True
        )
    ]
    it = iter(delays)
    order = [i for i, x, y in stream.simulate_qa(rows, moment="t", delay=river_delay)
             if y is not None]
    return rows, events, labels, oracle, oracle_metric.get(), order


def flow_for(names: list[str], events_in, labels_in, *, ordered: bool, gaps=None) -> tuple:
    flow = Dataflow("oracle_flow")
    schema = EventSchema(id_field="event_id", key_field="key", ts_field="ts",
                         fields=tuple(FieldRule(n, "number") for n in names))
    if ordered:
        merged = op.input("replay", flow, events_in)
        split = op.branch("split", merged, lambda r: r.topic == "events")
        raw_events, raw_labels = split.trues, split.falses
    else:
        raw_events = op.input("events", flow, events_in)
        raw_labels = op.input("labels", flow, labels_in)
    evs = decode_events("decode_events", raw_events, schema=schema)
    lbs = decode_labels("decode_labels", raw_labels,
                        schema=LabelSchema(key_field="key", value_field="y"))
    featured = op.map("pass_through", evs.oks,
                      lambda e: FeaturedEvent(e, {n: e.fields[n] for n in names}))
    out = serve_and_learn(
        "model", featured, lbs.oks, model_name="m", ordered=ordered,
        gaps=op.merge("gaps", evs.errs, lbs.errs) if ordered else None,
        make_learner=lambda: OnlineLearner(
            "m", _model(), LearnerConfig(label_ttl_ms=10**12, early_label_ttl_ms=0),
            wall_clock=None),
    )
    preds: list = []
    summaries: list = []
    op.output("p", out.predictions, TestingSink(preds))
    op.output("s", out.summaries, TestingSink(summaries))
    run_main(flow)
    return preds, summaries


@pytest.mark.parametrize("mode", ["live", "replay"])
@pytest.mark.parametrize("delay_name", sorted(DELAYS))
@pytest.mark.parametrize("stream_name", sorted(STREAMS))
def test_dataflow_reproduces_progressive_val_score(stream_name, delay_name, mode):
    rows, events, labels, oracle, oracle_auc, order = encoded(stream_name, delay_name)
    names = list(rows[0][0])  # the order of the dict: float sums depend on it
    if mode == "live":
        ev_in = TestingSource([KafkaRecord(b"k", v, "events", 0, i)
                               for _, _, i, v in events], batch_size=64)
        lb_in = TestingSource([KafkaRecord(b"k", v, "labels", 0, i)
                               for _, _, i, v in labels], batch_size=len(labels))
        preds, summaries = flow_for(names, ev_in, lb_in, ordered=False)
    else:
        merged = sorted(events + labels, key=lambda r: r[:3])  # time, labels first, index
        recs = [KafkaRecord(b"k", v, "events" if kind else "labels", 0, i, seq=n)
                for n, (_, kind, i, v) in enumerate(merged)]
        preds, summaries = flow_for(names, TestingSource(recs, batch_size=97), None,
                                    ordered=True)
    got = {p.event_id: p.score for p in preds}
    assert len(got) == len(rows)
    assert [got[f"e{i}"] for i in order] == oracle
    ours = metrics.ROCAUC()
    for i in order:
        ours.update(rows[i][1], got[f"e{i}"])
    assert ours.get() == oracle_auc
    (summary,) = summaries
    assert summary.labels_learned == len(rows)
