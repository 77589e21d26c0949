"""Every shipped stream file, with no Python of its own: generated, backtested, bulk-scored and run
live, each through the command a user types.

For each of ``streams/*.toml``: ``python -m harness.generate --stream NAME --to jsonl`` writes
events and labels; ``python -m dataflows.backtest --stream FILE`` replays them (its champion's
predictions equal the plain River loop's, :func:`undertow.reference.run_reference`, exactly)
and writes checkpoints; ``python -m dataflows.score --stream FILE`` scores the events with the
last checkpoint (equal to ``predict_proba_one`` on the same features); and ``python -m
connectors.topics load`` + ``UNDERTOW_STREAM=FILE python -m bytewax.run dataflows.stream:flow``
(a bounded run) serve every event once on the embedded broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from undertow.features import SpecState
from undertow.models import make_model
from undertow.reference import run_reference
from undertow.stream import load_stream
from undertow.targets import target

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "streams").glob("*.toml"))
N_EVENTS = 1500


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 300
        ) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    assert r.returncode == 0, (args, r.returncode, r.stderr[-3000:])
    return r


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request, tmp_path_factory):
    """A stream file and its generated events and labels (JSON Lines)."""
    name = request.param
    d = tmp_path_factory.mktemp(name)
    run(["-m", "harness.generate", "--stream", name, "--events", str(N_EVENTS), "--seed", "3",
         "--to", "jsonl", "--out-dir", str(d), "--quiet"])
    return name, ROOT / "streams" / f"{name}.toml", d


def test_backtest_then_bulk_scoring_with_no_python(shipped, tmp_path):
    name, path, d = shipped
    stream = load_stream(path)
    events, labels = read_jsonl(d / "events.jsonl"), read_jsonl(d / "labels.jsonl")
    assert len(events) == N_EVENTS and labels
    models = tmp_path / "models"
    run(["-m", "dataflows.backtest", "--stream", str(path), "--events-file",
         str(d / "events.jsonl"), "--labels-file", str(d / "labels.jsonl"),
         "--out", str(tmp_path / "bt")],
        {"UNDERTOW_MODEL_DIR": str(models), "UNDERTOW_CHECKPOINT_EVERY_LABELS": "500"})
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    assert [m["model"] for m in report["models"]] == ([m.name for m in stream.models] if not
        stream.ensemble else [stream.ensemble.name, *sorted(m.name for m in stream.models)])
    preds = read_jsonl(tmp_path / "bt" / "predictions.jsonl")
    champion = stream.models[0]
    kind = stream.labels.target
    field = {"binary": "score", "multiclass": "proba", "regression": "predicted"}[kind]
    served = {p["event_id"]: p[field] for p in preds if p["model"] == champion.name}
    # The oracle: the same features and model in a plain loop, labels learned at their time.
    ref = run_reference(events, labels, make_model(champion.model), spec=stream.features,
                        label_field=stream.labels.value_field, target=target(kind))
    assert served == ref.scores
    assert len(served) == N_EVENTS  # nothing generated is late or malformed
    for m in stream.models[1:]:
        assert sum(1 for p in preds if p["model"] == m.name) == N_EVENTS

    # Bulk scoring with the newest checkpoint of the champion: no learning, same features.
    ckpts = sorted((models / champion.name).iterdir())
    ckpt = ckpts[-1]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert (meta["stream"], meta["stream_digest"]) == (stream.name, stream.digest)
    out = tmp_path / "scores.jsonl"
    run(["-m", "dataflows.score", "--stream", str(path), "--checkpoint", str(ckpt),
         "--input", str(d / "events.jsonl"), "--output", str(out)])
    scored = {p["event_id"]: p for p in read_jsonl(out)}
    assert len(scored) == N_EVENTS
    import pickle

    model = pickle.loads((ckpt / "model.pkl").read_bytes())
    state = SpecState(stream.features)
    t = target(kind)
    for ev in events[:300]:
        feats = state.update(ev, ev[stream.events.ts_field])
        want = t.serve(model, feats)
        p = scored[ev["event_id"]]
        if kind == "multiclass":  # one at a time (no mini-batch method): exactly the same
            assert p["proba"] == want and p["predicted"] == t.decide(want)
        else:
            assert p[field] == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert (p["model"], p["model_version"]) == (champion.name, meta["version"])


def test_a_checkpoint_of_another_stream_is_refused(shipped, tmp_path):
    name, path, d = shipped
    other = next(s for s in SHIPPED if s != name)
    from connectors.checkpoint import ModelStore

    ckpt = ModelStore(tmp_path).write("m", make_model("logreg"), version=1, labels_learned=0,
                                      feature_spec=other,
                                      stream_digest=load_stream(ROOT / "streams" /
                                                                f"{other}.toml").digest)
    r = subprocess.run([sys.executable, "-m", "dataflows.score", "--stream", str(path),
                        "--checkpoint", str(ckpt), "--input", str(d / "events.jsonl"),
                        "--output", str(tmp_path / "o.jsonl")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the checkpoint was made for stream {other!r}" in lines[0]


def test_a_bounded_live_run_serves_every_event_once(shipped, kafka, topics, tmp_path):
    name, path, d = shipped
    stream = load_stream(path)
    t = topics("events", "labels", "predictions", "deadletter", partitions=3)
    env = {"UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    for kind in ("events", "labels"):
        key = stream.events.key_field if kind == "events" else stream.labels.key_field
        run(["-m", "connectors.topics", "load", "--topic", t[kind], "--file",
             str(d / f"{kind}.jsonl"), "--key-field", key], env)
    r = run(["-m", "bytewax.run", "dataflows.stream:flow"], {
        **env, "UNDERTOW_STREAM": str(path), "UNDERTOW_TAIL": "false",
        "UNDERTOW_EVENTS_TOPIC": t["events"], "UNDERTOW_LABELS_TOPIC": t["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": t["predictions"],
        "UNDERTOW_DEADLETTER_TOPIC": t["deadletter"]})
    out = tmp_path / "predictions.jsonl"
    run(["-m", "connectors.topics", "read", "--topic", t["predictions"], "--out", str(out),
         "--timeout", "2"], env)
    preds = read_jsonl(out)
    ids = [p["event_id"] for p in preds]
    assert sorted(ids) == sorted(e["event_id"] for e in read_jsonl(d / "events.jsonl"))
    assert {p["model"] for p in preds} == {(stream.ensemble or stream.models[0]).name}
    assert all(p["served"] is True for p in preds)
    kind = stream.labels.target
    if kind == "binary":
        assert all(0.0 <= p["score"] <= 1.0 and type(p["predicted"]) is bool for p in preds)
    elif kind == "multiclass":
        classes = set(stream.labels.classes)
        assert all(set(p["proba"]) <= classes and "score" not in p for p in preds)
        assert {p["predicted"] for p in preds} <= classes | {None}
    else:
        assert all(type(p["predicted"]) is float and "score" not in p for p in preds)
    # The bounded run ends with its summary (one process: its counts are the whole run's).
    summary = r.stderr.replace(",", "")
    assert "undertow: end of input; summary of process 0 of 1" in summary
    assert (f"predictions            {N_EVENTS} by {(stream.ensemble or stream.models[0]).name}"
            " (champion)") in summary
    assert "dead letters           0\n" in summary
