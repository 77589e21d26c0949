"""The oracle for every target: multi-class and regression streams through a real Bytewax dataflow
reproduce ``river.evaluate.iter_progressive_val_score(..., moment=, delay=)`` prediction for
prediction, live and in an ordered replay, with a constant and a per-record delay.

As ``tests/test_learning_flow.py`` does for binary labels: records are JSON bytes decoded by the
dataflow's own decoders (labels of the stream's target: classes, numbers), features pass through,
and the model-step operator serves and learns. Multi-class: ``synth.Waveform`` and ``synth.LED``
with ``SoftmaxRegression`` and ``HoeffdingTreeClassifier`` (the served probabilities equal River's
``predict_proba_one``, the decision is their arg max); regression: ``synth.Friedman`` and
``datasets.TrumpApproval`` with a scaled ``LinearRegression`` and ``HoeffdingTreeRegressor``.
"""

from __future__ import annotations

import itertools

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from river import datasets, evaluate, linear_model, metrics, preprocessing, stream, tree
from river.datasets import synth

from connectors.kafka import KafkaRecord
from operators.decode import decode_events, decode_labels
from operators.learning import serve_and_learn
from undertow.learning import LearnerConfig, OnlineLearner
from undertow.schema import EventSchema, FeaturedEvent, FieldRule, LabelSchema
from undertow.targets import target

N = 400

STREAMS = {
    "multiclass": {
        "waveform": lambda: synth.Waveform(seed=7).take(N),
        "led": lambda: synth.LED(seed=7, noise_percentage=0.1).take(N),
    },
    "regression": {
        "friedman": lambda: synth.Friedman(seed=7).take(N),
        "trump": lambda: itertools.islice(datasets.TrumpApproval(), N),
    },
}
MODELS = {
    "multiclass": {
        "softmax": lambda: linear_model.SoftmaxRegression(),
        "hoeffding": lambda: tree.HoeffdingTreeClassifier(grace_period=50),
    },
    "regression": {
        "linear": lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "hoeffding": lambda: tree.HoeffdingTreeRegressor(grace_period=50),
    },
}
#: A constant delay (ms of the "t" moment) and one that depends on the record.
DELAYS = {
    "constant": lambda: 7_500,
    "per_record": lambda: (lambda x, y: 1_000 + (int(abs(sum(x.values())) * 997) % 20) * 1_000),
}
ORACLE_METRIC = {"multiclass": metrics.CrossEntropy, "regression": metrics.MAE}


def encoded(kind: str, stream_name: str, delay_name: str):
    rows = [({f"x{k}": float(v) for k, v in x.items()} | {"t": i * 1000}, y)
            for i, (x, y) in enumerate(STREAMS[kind][stream_name]())]
    delay_fn = DELAYS[delay_name]()
    delays = ([delay_fn] * len(rows) if isinstance(delay_fn, int)
              else [delay_fn({k: v for k, v in x.items() if k != "t"}, y) for x, y in rows])
    events = [(x["t"], 1, i, orjson.dumps({"event_id": f"e{i}", "key": "k", "ts": x["t"], **x}))
              for i, (x, _) in enumerate(rows)]
    labels = [(x["t"] + d, 0, i, orjson.dumps({"event_id": f"e{i}", "key": "k",
                                              "ts": x["t"] + d, "y": y}))
              for i, ((x, y), d) in enumerate(zip(rows, delays, strict=True))]
    return rows, delays, events, labels


def oracle(kind: str, model_name: str, rows, delays):
    """River's own progressive validation: the served value of each event, in the order the
    labels are learned (simulate_qa's), and the final metric."""
    it = iter(delays)
    delay = delays[0] if len(set(delays)) == 1 else (lambda x, y: next(it))
    metric = ORACLE_METRIC[kind]()  # CrossEntropy wants probabilities; MAE predict_one
    served = [r["Prediction"] for r in evaluate.iter_progressive_val_score(
        [(x, y) for x, y in rows], MODELS[kind][model_name](), metric, moment="t",
        delay=delay, yield_predictions=True)]
    it = iter(delays)
    order = [i for i, _, y in stream.simulate_qa(rows, moment="t", delay=delay) if y is not None]
    return served, order, metric.get()


def run_flow(kind: str, model_name: str, names: list[str], events, labels, *, ordered: bool):
    flow = Dataflow("targets_oracle")
    schema = EventSchema(id_field="event_id", key_field="key", ts_field="ts",
                         fields=tuple(FieldRule(n, "number") for n in names))
    if ordered:
        merged = sorted(events + labels, key=lambda r: r[:3])  # time, labels first, index
        recs = [KafkaRecord(b"k", v, "events" if k else "labels", 0, i, seq=n)
                for n, (_, k, i, v) in enumerate(merged)]
        split = op.branch("split", op.input("replay", flow, TestingSource(recs, batch_size=97)),
                          lambda r: r.topic == "events")
        raw_events, raw_labels = split.trues, split.falses
    else:
        raw_events = op.input("events", flow, TestingSource(
            [KafkaRecord(b"k", v, "events", 0, i) for _, _, i, v in events], batch_size=64))
        raw_labels = op.input("labels", flow, TestingSource(  # every label first: the worst case
            [KafkaRecord(b"k", v, "labels", 0, i) for _, _, i, v in labels],
            batch_size=len(labels)))
    evs = decode_events("decode_events", raw_events, schema=schema)
    lbs = decode_labels("decode_labels", raw_labels,
                        schema=LabelSchema(key_field="key", value_field="y", target=kind))
    featured = op.map("pass_through", evs.oks,
                      lambda e: FeaturedEvent(e, {n: e.fields[n] for n in names}))
    out = serve_and_learn(
        "model", featured, lbs.oks, model_name="m", ordered=ordered,
        gaps=op.merge("gaps", evs.errs, lbs.errs) if ordered else None,
        make_learner=lambda: OnlineLearner(
            "m", MODELS[kind][model_name](),
            LearnerConfig(label_ttl_ms=10**12, early_label_ttl_ms=0, target=target(kind)),
            wall_clock=None),
    )
    preds: list = []
    summaries: list = []
    errs: list = []
    op.output("p", out.predictions, TestingSink(preds))
    op.output("s", out.summaries, TestingSink(summaries))
    op.output("e", op.merge("all_errs", evs.errs, lbs.errs, out.errs), TestingSink(errs))
    run_main(flow)
    assert errs == []
    return preds, summaries


CASES = [(kind, s, m) for kind in STREAMS for s in sorted(STREAMS[kind])
         for m in sorted(MODELS[kind])]


@pytest.mark.parametrize("mode", ["live", "replay"])
@pytest.mark.parametrize("delay_name", sorted(DELAYS))
@pytest.mark.parametrize(("kind", "stream_name", "model_name"), CASES)
def test_every_target_reproduces_progressive_val_score(kind, stream_name, model_name,
                                                        delay_name, mode):
    rows, delays, events, labels = encoded(kind, stream_name, delay_name)
    served, order, oracle_value = oracle(kind, model_name, rows, delays)
    names = [k for k in rows[0][0] if k != "t"] + ["t"]  # the dict's order: sums depend on it
    preds, summaries = run_flow(kind, model_name, names, events, labels,
                                ordered=mode == "replay")
    by_id = {p.event_id: p for p in preds}
    assert len(by_id) == len(rows)
    got = [by_id[f"e{i}"] for i in order]
    if kind == "multiclass":
        assert [p.proba for p in got] == served
        assert [p.predicted for p in got] == [max(s, key=s.get) if s else None for s in served]
        assert all(p.score is None for p in got)
        ours = metrics.CrossEntropy()
        for i, p in zip(order, got, strict=True):
            if p.proba:  # as River's progressive validation: no class known, no update
                ours.update(rows[i][1], p.proba)
    else:
        assert [p.predicted for p in got] == served
        assert all(p.score is None and p.proba is None for p in got)
        ours = metrics.MAE()
        for i, p in zip(order, got, strict=True):
            ours.update(rows[i][1], p.predicted)
    assert ours.get() == oracle_value
    (summary,) = summaries
    assert summary.labels_learned == len(rows)
    # The wire form of each target (the predictions topic and a backtest's predictions.jsonl).
    wire = orjson.loads(got[-1].to_json())
    common = {"event_id", "key", "model", "model_version", "labels_learned", "event_ts",
              "processed_at", "served"}
    assert set(wire) == common | ({"predicted", "proba"} if kind == "multiclass"
                                  else {"predicted"})
