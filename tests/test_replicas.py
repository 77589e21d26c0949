"""Replicated mode (undertow/replica.py, operators/replicas.py, docs/scaling.md): replicas serve
and never learn, the trainer learns exactly what the exact model step learns, every prediction
names the models that made it, and the dataflow serves every event once on one or two workers."""

from __future__ import annotations

import pickle

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from benchmarks.e2e import kafka_records
from connectors.settings import ConfigError, load_settings
from dataflows.stream import build_flow, make_learner, shipped
from harness.generate import OTHER_STREAMS, MemorySink, run, run_records
from harness.workload import WorkloadConfig, generate
from undertow.features import SpecState
from undertow.replica import ModelUpdate, Replica, UpdatePolicy, pack
from undertow.schema import Event, FeaturedEvent, Label, Prediction, decode_event, decode_label

FRAUD = shipped("fraud")


def records(stream_name: str, n: int) -> list[tuple[str, object]]:
    """The stream's generated events (featured, in the order written) and labels."""
    stream = shipped(stream_name)
    sink = MemorySink()
    if stream_name == "fraud":
        run(WorkloadConfig(seed=2, n_events=n, n_cards=40), sink)
    else:
        other = OTHER_STREAMS[stream_name]
        run_records(other, *other.generate(2, n), sink)
    feats = SpecState(stream.features)
    out: list[tuple[str, object]] = []
    for kind, value, _key, _ts in sink.records:
        if kind == "event":
            ev = decode_event(value, stream.events)
            assert type(ev) is Event
            out.append(("event", FeaturedEvent(ev, feats.update(ev.fields, ev.ts))))
        else:
            lb = decode_label(value, stream.labels)
            assert type(lb) is Label
            out.append(("label", lb))
    return out


def models_bytes(models: dict) -> dict[str, bytes]:
    return {name: pickle.dumps(m) for name, m in models.items()}


def state(x: object, seen: frozenset[int] = frozenset()) -> object:
    """A model's state as plain values, dicts compared regardless of insertion order (River's
    scaler inserts a feature's key at its first ``transform_one``, a read: the same state
    pickles in another key order on a model that never predicted)."""
    if id(x) in seen:
        return "<cycle>"
    inner = seen | {id(x)}
    if isinstance(x, dict):
        return ("dict", type(x).__name__,
                sorted((repr(k), state(v, inner)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [state(v, inner) for v in x])
    if hasattr(x, "__dict__") and not isinstance(x, type):
        return (type(x).__qualname__, state(vars(x), inner))
    return repr(x)


@pytest.mark.parametrize("stream_name,model,n", [("fraud", "logreg", 1500),
                                                 ("fraud", "hat", 800), ("iris", "", 150)])
def test_a_replica_never_learns_while_it_serves(stream_name, model, n):
    """A replica with a trained trainer's models serves hundreds of events (a scaler pipeline,
    a tree, an ensemble of three) and its models pickle to the same bytes after as before."""
    stream = shipped(stream_name)
    s = load_settings({}, model=model) if model else load_settings({})
    trainer = make_learner(s, stream, replay=True)
    recs = records(stream_name, n)
    out: list = []
    for kind, r in recs[: len(recs) // 2]:
        (trainer.on_event if kind == "event" else trainer.on_label)(r, out)
    assert trainer.labels_learned > 20
    replica = Replica.of(make_learner(s, stream, replay=True), wall_clock=None)
    replica.apply(pack(trainer, 7, 123.0))
    assert (replica.seq, replica.labels_learned) == (7, trainer.labels_learned)
    before = models_bytes({n: sl.model for n, sl in replica.slots.items()})
    served = []
    for kind, r in recs[len(recs) // 2:]:
        if kind == "event":
            served.append(replica.serve(r, []))
    assert len(served) > 50
    assert models_bytes({n: sl.model for n, sl in replica.slots.items()}) == before
    assert before == models_bytes(pack(trainer, 8, 0.0).load())  # the trainer's, as sent


@pytest.mark.parametrize("stream_name,n", [("fraud", 1200), ("iris", 150), ("clicks", 600)])
def test_the_trainer_learns_exactly_what_the_exact_step_learns(stream_name, n):
    """The same records, in the same order: an exact learner (``on_event``) and a trainer fed
    what a replica served (``on_served``), the replica given the trainer's models after every
    record. The trainer's models end in the exact learner's state (learning depends on the
    served features and the labels, not on who scored). Each replica prediction equals the
    exact one where both had learned the same labels; where they had not, the replica was
    behind by exactly the labels that event released, which is the staleness the trainer
    recorded for it."""
    stream = shipped(stream_name)
    s = load_settings({})
    exact = make_learner(s, stream, replay=True)
    trainer = make_learner(s, stream, replay=True)
    replica = Replica.of(make_learner(s, stream, replay=True), wall_clock=None)
    exact_out: list = []
    trainer_out: list = []
    replica_preds: list[Prediction] = []
    staleness: list[int] = []
    for kind, r in records(stream_name, n):
        if kind == "event":
            exact.on_event(r, exact_out)
            served = replica.serve(r, replica_preds)
            trainer.on_served(served, trainer_out)
            staleness.extend(trainer.take_report().staleness)
        else:
            exact.on_label(r, exact_out)
            trainer.on_label(r, trainer_out)
        replica.apply(pack(trainer, replica.seq + 1, 0.0))
    exact.on_end(exact_out)
    trainer.on_end(trainer_out)
    assert exact.labels_learned == trainer.labels_learned > 50
    assert {n: state(sl.model) for n, sl in trainer.slots.items()} == \
        {n: state(sl.model) for n, sl in exact.slots.items()}
    want = [p for p in exact_out if type(p) is Prediction]
    assert [(p.event_id, p.model) for p in replica_preds] == [(p.event_id, p.model) for p in want]
    champion = [p for p in replica_preds if p.served]
    assert len(staleness) == len(champion)
    behind = 0
    for got, exp, stale in zip(champion, [p for p in want if p.served], staleness, strict=True):
        assert exp.labels_learned - got.labels_learned == stale >= 0
        if stale == 0:
            assert (got.score, got.predicted, got.proba, got.labels_learned) == \
                (exp.score, exp.predicted, exp.proba, exp.labels_learned)
        else:
            behind += 1
    assert 0 < len(champion) - behind  # both cases were met


def test_the_update_policy_publishes_by_labels_or_by_time():
    p = UpdatePolicy(every_labels=100, every_ms=1000)
    assert not p.due(0, 10_000)  # nothing learned: nothing to publish
    assert not p.due(99, 999)
    assert p.due(100, 0)
    assert p.due(1, 1000)


def replicated_flow(w, preds, dead, updates_every=50, **kw):
    s = load_settings({}, model="logreg", model_mode="replicated",
                      model_update_every_labels=updates_every, **kw)
    events, labels = kafka_records(w, s)
    return build_flow(s, FRAUD, sources={"events": TestingSource(events, 100),
                                         "labels": TestingSource(labels, 100)},
                      sinks={"predictions": TestingSink(preds), "deadletter": TestingSink(dead)})


@pytest.mark.parametrize("workers", [1, 2])
def test_a_replicated_dataflow_serves_every_event_once_with_the_newest_models(workers):
    """Replicated mode on one and on two workers (the trainer on one of them, a replica on
    each): one champion prediction per event, none lost, none twice, no dead letter; the
    replicas swap in the trainer's updates as they come (the labels learned by the copy that
    served grows to most of the labels)."""
    w = generate(WorkloadConfig(seed=5, n_events=3000, n_cards=100))
    preds: list[Prediction] = []
    dead: list = []
    flow = replicated_flow(w, preds, dead)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert dead == []
    assert sorted(p.event_id for p in preds) == sorted(e["event_id"] for e in w.events)
    assert all(p.served and p.model == "fraud" and p.model_version == 1 for p in preds)
    learned = [p.labels_learned for p in preds]
    assert learned[0] == 0 and max(learned) > len(w.labels) // 2


def test_replicated_mode_refuses_exactly_once_delivery_in_one_line():
    s = load_settings({}, model_mode="replicated", delivery="exactly_once")
    with pytest.raises(ConfigError, match="UNDERTOW_MODEL_MODE: replicated mode writes "
                       "predictions from every worker; UNDERTOW_DELIVERY=exactly_once needs "
                       "exact mode"):
        build_flow(s, FRAUD, sources={"events": TestingSource([]),
                                      "labels": TestingSource([])})


def test_an_update_round_trips_through_its_encoding():
    from connectors.updates import decode_update, encode_update

    trainer = make_learner(load_settings({}), FRAUD, replay=True)
    u = pack(trainer, 3, 99.5)
    key, value, headers = encode_update(u)
    got = decode_update(value)
    assert key == b"fraud" and headers is None and isinstance(got, ModelUpdate)
    assert got._replace(models=b"") == u._replace(models=b"")
    assert {n: state(m) for n, m in got.load().items()} == \
        {n: state(s.model) for n, s in trainer.slots.items()}
    assert decode_update(b"not a pickle") is None
    assert decode_update(pickle.dumps({"not": "an update"})) is None


def test_a_backtest_is_exact_whatever_the_model_mode(tmp_path):
    """Replays always run the exact model step: a backtest with UNDERTOW_MODEL_MODE=replicated
    writes the same bytes as one without, equal to the plain River loop."""
    import orjson

    from connectors.replay import EVENT, LABEL, FileInput, ReplaySource
    from dataflows.backtest import run_backtest
    from tests.test_backtest import write_jsonl
    from undertow.models import make_model
    from undertow.reference import run_reference

    w = generate(WorkloadConfig(seed=9, n_events=1500, n_cards=80, n_merchants=20))
    events = write_jsonl(tmp_path / "events.jsonl", w.events)
    labels = write_jsonl(tmp_path / "labels.jsonl", w.labels)
    out = {}
    for mode in ("exact", "replicated"):
        replay = ReplaySource([FileInput(str(events), EVENT, "events")],
                              [FileInput(str(labels), LABEL, "labels")])
        run_backtest(replay, tmp_path / mode, models=[("lr", "logreg")],
                     env={"UNDERTOW_MODEL_MODE": mode})
        out[mode] = (tmp_path / mode / "predictions.jsonl").read_bytes()
    assert out["replicated"] == out["exact"]
    got = {p["event_id"]: p["score"] for p in map(orjson.loads, out["exact"].splitlines())}
    assert got == run_reference(w.events, w.labels, make_model("logreg")).scores
