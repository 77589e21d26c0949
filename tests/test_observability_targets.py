"""Observability of every target, proved on a real Prometheus: iris (multi-class) and approval
(regression) run live and scraped.

Each stream runs as a user runs it (``UNDERTOW_STREAM=streams/NAME.toml python -m bytewax.run
dataflows.stream:flow``) on the embedded broker, a real Prometheus with the shipped
``dashboards/prometheus.yml`` and ``alerts.yml`` scraping it, while a few thousand generated
records are fed at a paced rate. Then every panel query of the target's model dashboard returns
data, the scraped quality gauges of every model equal the same measures computed with River's
metrics over the predictions read back from the predictions and shadow topics (the window is the
last ``UNDERTOW_QUALITY_WINDOW`` labels learned, in the order the model step learns them), and no
alert fires, nor is pending, at any time of the run.

The events and labels topics have one partition each, so the model step sees the events in time
order and learns the labels in label-time order (labels of one time in the order written): which
labels are learned, and in which order, then follows from the data alone; the test checks it
(no label came before its event, the labels learned and the labels still waiting for their time
add up).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import metrics as river_metrics

from dashboards import build
from dataflows.stream import shipped
from harness.dataflow import start_dataflow
from harness.generate import OTHER_STREAMS, KafkaSink, run_records
from harness.kafka import EmbeddedKafka, free_port, read_topic
from harness.prometheus import PrometheusServer, ensure_installed
from harness.process import ChildProcess
from tests.test_observability import grafana_expr

ROOT = Path(__file__).resolve().parents[1]
PROM_CONFIG = ROOT / "dashboards" / "prometheus.yml"
RATE = 600.0
#: Depends on the machine's load, not on the target (as in test_observability).
MACHINE_BOUND = {"UndertowLatencySLO"}


@dataclass(frozen=True)
class Run:
    stream: str
    target: str
    n_events: int
    #: UNDERTOW_QUALITY_WINDOW: under half the labels learned, so the window slides.
    window: int

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the stream file serves or scores: its models, and its ensemble."""
        f = shipped(self.stream)
        assert f.labels.target == self.target
        return (*(m.name for m in f.models), *([f.ensemble.name] if f.ensemble else []))


#: Approval runs 800 days, within the first pass over TrumpApproval's 1001: from day 896 on,
#: ADWIN sees the served error of its models rise (the series moves, then starts over), and
#: the concept-drift alert rightly fires; these runs are the ones where nothing should.
RUNS = {
    "iris": Run("iris", "multiclass", 3000, 500),
    "approval": Run("approval", "regression", 800, 300),
}


@pytest.fixture(scope="module")
def prometheus_bins() -> tuple[str, str]:
    return ensure_installed()


def _total(r: list[dict[str, Any]]) -> float | None:
    return float(r[0]["value"][1]) if r else None


@pytest.fixture(scope="module", params=sorted(RUNS), ids=sorted(RUNS))
def live(request, kafka: EmbeddedKafka, prometheus_bins) -> Iterator[dict[str, Any]]:
    """One stream's live dataflow scraped by a real Prometheus, fed at a paced rate."""
    run = RUNS[request.param]
    gen = OTHER_STREAMS[run.stream]
    events, labels = gen.generate(1, run.n_events)
    suffix = os.urandom(4).hex()
    names = {n: f"{n}-obs-{run.stream}-{suffix}"
             for n in ("events", "labels", "predictions", "shadow", "deadletter")}
    kafka.create_topics(list(names.values()), partitions=1)
    port = free_port()
    env = {
        **os.environ,
        "UNDERTOW_STREAM": str(ROOT / "streams" / f"{run.stream}.toml"),
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "UNDERTOW_EVENTS_TOPIC": names["events"],
        "UNDERTOW_LABELS_TOPIC": names["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": names["predictions"],
        "UNDERTOW_SHADOW_TOPIC": names["shadow"],
        "UNDERTOW_DEADLETTER_TOPIC": names["deadletter"],
        "UNDERTOW_QUALITY_WINDOW": str(run.window),
        # Checkpoints on, so the checkpoint panels have data too.
        "UNDERTOW_MODEL_DIR": tempfile.mkdtemp(prefix=f"undertow-obs-{run.stream}-models-"),
        "UNDERTOW_CHECKPOINT_EVERY_LABELS": "500",
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
    }
    for setting in ("UNDERTOW_TAIL", "UNDERTOW_MODEL", "UNDERTOW_MODEL_NAME",
                    "UNDERTOW_CHALLENGERS"):
        env.pop(setting, None)  # live, with the stream file's models
    log = tempfile.NamedTemporaryFile(prefix=f"undertow-obs-{run.stream}-", suffix=".log",
                                      delete=False)
    flow: ChildProcess | None = None
    prom = PrometheusServer(PROM_CONFIG, targets=[f"127.0.0.1:{port}"])
    try:
        flow = start_dataflow("dataflows.stream:flow", env=env, log_path=log.name)
        prom.start()
        prom.wait_for('up{job="undertow"} == 1 and on () count(undertow_events_total) > 0',
                      lambda r: len(r) == 1, 60, "the dataflow to be scraped")
        t_start = time.time()
        sink = KafkaSink(kafka.bootstrap_servers, names["events"], names["labels"], 60.0)
        run_records(gen, events, labels, sink, rate=RATE)
        assert sink.close() == 0, sink.first_error
        del sink
        # What the model step learns: the labels whose time the event clock (the newest event
        # time) has reached, in label-time order (stable: labels of one time as written).
        clock = max(ev["ts"] for ev in events)
        learned = [lb for lb in sorted(labels, key=lambda lb: lb["ts"]) if lb["ts"] <= clock]
        n_models = len(run.models)
        prom.wait_for("sum(undertow_labels_learned_total)",
                      lambda r: _total(r) == len(learned) * n_models, 60,
                  "every due label to be learned and scraped")
        prom.wait_for("sum(undertow_predictions_total)",
                      lambda r: _total(r) == len(events) * n_models, 30, "every event scored")
        time.sleep(3.0)  # a few more scrapes and rule evaluations on the final state
        assert flow.running, "the live dataflow exited"
        served: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in run.models}
        for topic in (names["predictions"], names["shadow"]):
            for msg in read_topic(kafka.bootstrap_servers, topic):
                p = orjson.loads(msg.value())
                served[p["model"]][p["event_id"]] = p
        yield {"run": run, "prom": prom, "events": events, "labels": labels,
               "learned": learned, "served": served, "t_start": t_start, "t_end": time.time()}
    except BaseException:
        log.flush()
        sys.stderr.write(Path(log.name).read_text(errors="replace")[-3000:])
        sys.stderr.write(prom.log_tail())
        raise
    finally:
        prom.stop()
        if flow is not None:
            flow.stop(20)
        log.close()
        os.unlink(log.name)


def _value(prom: PrometheusServer, expr: str) -> float:
    r = prom.query(expr)
    assert len(r) == 1, (expr, r)
    return float(r[0]["value"][1])


def _by(prom: PrometheusServer, expr: str, label: str) -> dict[str, float]:
    return {s["metric"][label]: float(s["value"][1]) for s in prom.query(expr)}


def test_every_panel_of_the_targets_model_dashboard_returns_data(live):
    prom, view = live["prom"], build.TARGET_VIEWS[live["run"].target]
    d = json.loads((build.GRAFANA_DIR / f"{view.uid}.json").read_text())
    queries = [(title, grafana_expr(e)) for title, e in build.panel_queries(d)]
    assert len(queries) >= 25
    empty = [(title, e) for title, e in queries if not prom.query(e)]
    assert not empty, "queries with no data:\n" + "\n".join(map(str, empty))
    # The model variable lists exactly this stream's models.
    listed = {s["metric"]["model"] for s in prom.query(f"group by (model) ({view.models_of})")}
    assert listed == set(live["run"].models)


def test_every_record_is_accounted_for(live):
    """What the quality comparison stands on: every event scored by every model, no label
    before its event, none lost; the labels not learned are those still waiting for their
    time."""
    prom, run = live["prom"], live["run"]
    n_events, learned = len(live["events"]), live["learned"]
    assert {m: len(p) for m, p in live["served"].items()} == {m: n_events for m in run.models}
    assert _value(prom, "sum(undertow_dead_letters_total)") == 0
    assert _value(prom, "sum(undertow_early_labels_total)") == 0
    assert _value(prom, "sum(undertow_labels_waiting_for_time)") == (
        len(live["labels"]) - len(learned))
    assert _by(prom, "sum by (model) (undertow_labels_learned_total)", "model") == {
        m: len(learned) for m in run.models}
    assert len(learned) > 2 * run.window


def _window(live: dict[str, Any], model: str) -> list[tuple[Any, dict[str, Any]]]:
    """(label value, prediction read back) of the model's quality window: the last labels
    learned."""
    field = OTHER_STREAMS[live["run"].stream].label_field
    served = live["served"][model]
    window = live["run"].window
    return [(lb[field], served[lb["event_id"]]) for lb in live["learned"][-window:]]


def _river(metric: Any, pairs: list[tuple[Any, Any]]) -> float:
    for y, p in pairs:
        metric.update(y, p)
    return float(metric.get())


def test_scraped_quality_equals_rivers_metrics_over_the_predictions_read_back(live):
    prom, run = live["prom"], live["run"]
    gauges = {m: {} for m in run.models}
    for measure, gauge in (("accuracy", "undertow_model_accuracy_ratio"),
                           ("macro_f1", "undertow_model_macro_f1_ratio"),
                           ("log_loss", "undertow_model_log_loss"),
                           ("mae", "undertow_model_mae"), ("rmse", "undertow_model_rmse"),
                           ("r2", "undertow_model_r2_ratio")):
        for m, v in _by(prom, f"max by (model) ({gauge})", "model").items():
            gauges[m][measure] = v
    for m in run.models:
        window = _window(live, m)
        assert len(window) == run.window
        if run.target == "multiclass":
            assert all(p["predicted"] is not None for _, p in window)  # every class known
            decided = [(y, p["predicted"]) for y, p in window]
            expected = {
                "accuracy": _river(river_metrics.Accuracy(), decided),
                "macro_f1": _river(river_metrics.MacroF1(), decided),
                "log_loss": _river(river_metrics.CrossEntropy(),
                                   [(y, p["proba"]) for y, p in window]),
            }
            got = gauges[m]
            assert set(got) == set(expected), got
            assert got["accuracy"] == expected["accuracy"]  # a count over the window: exact
            assert got["macro_f1"] == pytest.approx(expected["macro_f1"], rel=1e-12)
            assert got["log_loss"] == pytest.approx(expected["log_loss"], rel=1e-9)
            sel = f'model="{m}"'
            assert _by(prom, f"max by (class) (undertow_model_class_labels{{{sel}}})",
                       "class") == dict(Counter(y for y, _ in decided))
            assert _by(prom, f"max by (class) (undertow_model_class_decisions{{{sel}}})",
                       "class") == dict(Counter(d for _, d in decided))
            assert 0.5 < got["accuracy"] <= 1.0, got  # the models learned something
        else:
            pairs = [(y, p["predicted"]) for y, p in window]
            expected = {"mae": _river(river_metrics.MAE(), pairs),
                        "rmse": _river(river_metrics.RMSE(), pairs),
                        "r2": _river(river_metrics.R2(), pairs)}
            got = gauges[m]
            assert set(got) == set(expected), got
            for measure, v in expected.items():
                assert got[measure] == pytest.approx(v, rel=1e-9), (m, measure)
            assert math.isfinite(got["r2"]) and got["mae"] > 0, got


def test_no_alert_fires_or_is_pending_during_the_run(live):
    prom, target = live["prom"], live["run"].target
    rules = {r["name"]: r for g in prom.rules() for r in g["rules"]}
    assert set(rules) == {a.name for a in build.ALERTS}
    assert all(r["health"] == "ok" for r in rules.values()), rules
    # (no gateway runs here: its rules are proved by tests/test_observability.py)
    watched = [a for a in build.ALERTS if target in a.targets and a.name not in MACHINE_BOUND
               and a.scraped_from == "dataflow"]
    assert {a.name for a in watched} >= {"UndertowConceptDrift", build_name(target)}
    for a in watched:  # each rule looks at these models, and finds them well
        assert prom.query(a.signal), f"{a.name}: no data for {a.signal}"
        assert not prom.query(a.expr), (a.name, prom.query(a.expr))
    alerts = prom.query_range(
        "ALERTS{" + ",".join(f'alertname!="{n}"' for n in sorted(MACHINE_BOUND)) + "}",
        live["t_start"], live["t_end"], 1)
    assert alerts == [], alerts


def build_name(target: str) -> str:
    """The per-target alert of ``target``."""
    return {"multiclass": "UndertowMulticlassQualityDrop",
            "regression": "UndertowRegressionErrorRise"}[target]
