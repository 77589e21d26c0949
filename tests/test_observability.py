"""Observability, proved on a real Prometheus: the shipped config, rules and dashboards.

The end-to-end proof runs the live dataflow (``python -m bytewax.run dataflows.fraud:flow``) on
the embedded broker, a real Prometheus (Debian's package) with the shipped
``dashboards/prometheus.yml`` and ``dashboards/alerts.yml`` scraping it, and feeds a workload with
a concept drift at a paced rate, so Prometheus scrapes and evaluates the rules throughout.
Then every dashboard query and every alert's signal returns data, and the concept-drift alert
fires after the drift point and never before it (checked against the model's event-time clock,
scraped at the same instants). One late event is added at the end, so the late-events panels have
something to show.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dashboards import build
from harness import prometheus as prometheus_mod
from harness.dataflow import start_dataflow
from harness.generate import KafkaSink
from harness.generate import run as write_workload
from harness.kafka import EmbeddedKafka, free_port
from harness.prometheus import (
    PrometheusServer,
    ensure_installed,
    promtool_check_config,
    promtool_check_rules,
    promtool_test_rules,
    with_targets,
)
from harness.process import ChildProcess
from harness.workload import WorkloadConfig

ROOT = Path(__file__).resolve().parents[1]
PROM_CONFIG = ROOT / "dashboards" / "prometheus.yml"
ALERTS_FILE = ROOT / "dashboards" / "alerts.yml"
ALERTS_TEST = ROOT / "dashboards" / "alerts_test.yml"

#: 60k events, drift half way (ADWIN "up" on the served error ~16 min of event time after it,
#: four "down" detections before it); at 2500 events/s the drift comes ~12 s into the feed.
WORKLOAD = WorkloadConfig(seed=1, n_events=60_000, drift_at=0.5)
RATE = 2500.0
MALFORMED = 20
#: What Grafana would put in place of its variables (all models, all features).
GRAFANA_VARS = {"$__rate_interval": "30s", "$__range": "10m", "$model": ".*", "$feature": ".*"}
DRIFT_ALERT = "UndertowConceptDrift"
#: Payments asked for over HTTP once the workload is in (the Requests row has data).
N_HTTP_REQUESTS = 20


def _http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """A real HTTP call (the standard library's client): (status, JSON body); 0 if refused."""
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as ex:
        return ex.code, orjson.loads(ex.read() or b"null")
    except (urllib.error.URLError, ConnectionError):
        return 0, None


def grafana_expr(expr: str) -> str:
    for var in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARS[var])
    assert "$" not in expr, expr
    return expr


def dashboard_files(target: str | None = None) -> list[Path]:
    """The dashboards a stream of ``target`` is watched with: the overview, the features and
    its target's model dashboard (None: every dashboard)."""
    paths = sorted(build.GRAFANA_DIR.glob("*.json"))
    if target is None:
        return paths
    model_uids = {v.uid for v in build.TARGET_VIEWS.values()} - {build.TARGET_VIEWS[target].uid}
    return [p for p in paths if json.loads(p.read_text())["uid"] not in model_uids]


def dashboard_queries(target: str | None = "binary") -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr with Grafana's variables substituted) of the
    dashboards of ``target`` (None: of every dashboard)."""
    out = []
    for path in dashboard_files(target):
        for title, expr in build.panel_queries(json.loads(path.read_text())):
            out.append((path.name, title, grafana_expr(expr)))
    return out


@pytest.fixture(scope="module")
def prometheus_bins() -> tuple[str, str]:
    """Prometheus and promtool, installed from Debian's package if missing (never skipped)."""
    return ensure_installed()


# -- static checks --------------------------------------------------------------------------------
def test_promtool_accepts_the_shipped_config_and_rules(prometheus_bins):
    out = promtool_check_config(PROM_CONFIG)
    assert "SUCCESS" in out and "1 rule files found" in out, out
    out = promtool_check_rules(ALERTS_FILE)
    assert f"SUCCESS: {len(build.ALERTS)} rules found" in out, out


def test_promtool_unit_tests_of_the_rules_pass(prometheus_bins):
    """dashboards/alerts_test.yml: each per-target rule on synthetic series (steady, cold
    start, restart, a real change) and the drift rule on a regression model's error."""
    out = promtool_test_rules(ALERTS_TEST)
    assert out.splitlines()[-1].strip() == "SUCCESS", out
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    per_target = {a.name for a in build.ALERTS if set(a.targets) != set(build.TARGET_VIEWS)}
    assert per_target and tested >= per_target | {"UndertowConceptDrift"}, tested


def test_committed_dashboards_and_rules_equal_the_generator_output():
    rendered = build.render()
    assert set(build.GRAFANA_DIR.glob("*.json")) == {
        p for p in rendered if p.suffix == ".json"}, "stray or missing dashboard files"
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path} is stale: run python -m dashboards.build"


def test_dashboards_are_well_formed():
    titles = set()
    for path in sorted(build.GRAFANA_DIR.glob("*.json")):
        d = json.loads(path.read_text())
        titles.add(d["title"])
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        names = [v["name"] for v in d["templating"]["list"]]
        assert names[:2] == ["datasource", "model"], names
        for p in d["panels"]:
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"], f"{path.name}: {p['title']} has no query"
        exprs = [e for _, e in build.panel_queries(d)]
        # A per-model metric is always filtered by the $model variable.
        for e in exprs:
            if "undertow_model_" in e or "undertow_predictions_total" in e:
                assert 'model=~"$model"' in e, e
    assert titles == {"undertow / overview", "undertow / model", "undertow / features",
                      "undertow / model (multi-class)", "undertow / model (regression)"}


_SELECTOR = re.compile(r"\b(?:undertow|bytewax)_[a-z_]+")
_AGGREGATIONS = {"sum", "max", "min", "avg", "count"}


def enclosing_calls(expr: str, pos: int) -> list[tuple[str, str]]:
    """(function, by-clause) of every call around ``expr[pos]``, innermost first.

    >>> enclosing_calls("sum by (le) (rate(x[1m]))", 18)
    [('rate', ''), ('sum', 'le')]
    """
    out = []
    depth = 0
    i = pos - 1
    while i >= 0:
        c = expr[i]
        if c == ")":
            depth += 1
        elif c == "(":
            if depth:
                depth -= 1
            else:
                j = i - 1
                while j >= 0 and expr[j] == " ":
                    j -= 1
                by = ""
                if j >= 0 and expr[j] == ")":  # `agg by (labels) (`: skip the clause
                    close, d = j, 0
                    while j >= 0:
                        d += expr[j] == ")"
                        d -= expr[j] == "("
                        if d == 0:
                            break
                        j -= 1
                    by = expr[j + 1:close]
                    j -= 1
                    while j >= 0 and (expr[j].isalpha() or expr[j] == " "):
                        j -= 1
                    words = expr[j + 1:i].split()
                    out.append((words[0] if words else "", by))
                else:
                    k = j
                    while k >= 0 and (expr[k].isalnum() or expr[k] == "_"):
                        k -= 1
                    out.append((expr[k + 1:j + 1], by))
        i -= 1
    return out


def aggregation_problems(expr: str) -> list[str]:
    """Why ``expr`` would be wrong with several scraped processes (empty if it is right)."""
    problems = []
    for m in _SELECTOR.finditer(expr):
        name, calls = m.group(), enclosing_calls(expr, m.start())
        fns = [f for f, _ in calls]
        aggs = [(f, by) for f, by in calls if f in _AGGREGATIONS]
        if name.endswith("_bucket"):
            if fns[:3] != ["rate", "sum", "histogram_quantile"] or "le" not in calls[1][1]:
                problems.append(f"{name}: not histogram_quantile(sum by (le) (rate(...)))")
        elif name.endswith("_total") and fns[:1] != ["count"]:
            if fns[:1] not in (["rate"], ["increase"]) or not aggs:
                problems.append(f"{name}: a counter not summed over its rate/increase")
        elif not aggs:
            problems.append(f"{name}: not aggregated over processes")
    return problems


def test_every_query_aggregates_over_processes():
    exprs = [e for _, _, e in dashboard_queries(None)]
    exprs += [x for a in build.ALERTS for x in (a.signal, a.expr)]
    bad = {e: p for e in exprs if (p := aggregation_problems(e))}
    assert not bad, bad
    assert aggregation_problems("undertow_model_log_loss") and aggregation_problems(
        "sum(undertow_events_total)") and aggregation_problems(
        "histogram_quantile(0.9, rate(undertow_event_lag_seconds_bucket[1m]))")


def test_ensure_installed_needs_root_when_missing(monkeypatch):
    monkeypatch.setattr(prometheus_mod, "find_binary", lambda name: None)
    monkeypatch.setattr(prometheus_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(prometheus_mod.PrometheusError, match="needs root"):
        prometheus_mod.ensure_installed()


def test_with_targets_replaces_the_one_static_target_list():
    text = with_targets(PROM_CONFIG.read_text(), ["127.0.0.1:1234"])
    assert '- targets: ["127.0.0.1:1234"]' in text
    assert "127.0.0.1:3030" not in text.split("scrape_configs:")[1]


# -- the live proof -------------------------------------------------------------------------------
def _stop(proc: ChildProcess | None) -> None:
    if proc is not None:
        proc.stop(20)  # its own session: the dataflow and nothing else


@pytest.fixture(scope="module")
def observed(kafka: EmbeddedKafka, prometheus_bins) -> Iterator[dict[str, Any]]:
    """The live dataflow scraped by a real Prometheus through a workload with a drift."""
    suffix = os.urandom(4).hex()
    names = {n: f"{n}-obs-{suffix}" for n in ("events", "labels", "predictions", "deadletter",
                                              "requests", "replies")}
    kafka.create_topics([names["events"], names["labels"]], partitions=3)
    kafka.create_topics([names["predictions"], names["deadletter"], names["requests"],
                         names["replies"]], partitions=1)
    port, gateway_port = free_port(), free_port()
    env = {
        **os.environ,
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "UNDERTOW_EVENTS_TOPIC": names["events"],
        "UNDERTOW_LABELS_TOPIC": names["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": names["predictions"],
        "UNDERTOW_DEADLETTER_TOPIC": names["deadletter"],
        # Requests on, answered through an HTTP gateway scraped beside the dataflow.
        "UNDERTOW_REQUESTS_TOPIC": names["requests"],
        "UNDERTOW_REPLIES_TOPIC": names["replies"],
        # Checkpoints on, so the checkpoint panels have data too.
        "UNDERTOW_MODEL_DIR": tempfile.mkdtemp(prefix="undertow-obs-models-"),
        "UNDERTOW_CHECKPOINT_EVERY_LABELS": "10000",
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
    }
    env.pop("UNDERTOW_TAIL", None)  # live: the dataflow keeps tailing the topics
    log = tempfile.NamedTemporaryFile(prefix="undertow-obs-dataflow-", suffix=".log", delete=False)
    flow: ChildProcess | None = None
    gateway = ChildProcess([sys.executable, "-m", "connectors.gateway", "--stream",
                            str(ROOT / "streams" / "fraud.toml"), "--port", str(gateway_port)],
                           env=env, cwd=ROOT, name="gateway", stop_timeout=5)
    prom = PrometheusServer(PROM_CONFIG, targets=[f"127.0.0.1:{port}",
                                                  f"127.0.0.1:{gateway_port}"])
    try:
        flow = start_dataflow("dataflows.fraud:flow", env=env, log_path=log.name)
        gateway.start()
        gateway.wait_ready(lambda: _http("GET", f"http://127.0.0.1:{gateway_port}/healthz")[0]
                           == 200, timeout=30, what="healthy")
        prom.start()
        prom.wait_for('up{job="undertow"} == 1 and on () count(undertow_events_total) > 0',
                      lambda r: len(r) == 2, 60, "the dataflow and the gateway to be scraped")
        t_start = time.time()
        sink = KafkaSink(kafka.bootstrap_servers, names["events"], names["labels"], 60.0)
        written = write_workload(WORKLOAD, sink, n_malformed=MALFORMED, rate=RATE)
        # One valid event 100 min of event time behind the stream: late at the first feature
        # step, it goes to the late side stream (the dead-letter topic), unscored.
        late = {"event_id": "late-0", "card_id": "c000001", "merchant_id": "m00001",
                "amount": 12.5, "channel": "pos", "ts": written["drift_ts"]}
        sink.event(orjson.dumps(late), b"c000001", late["ts"])
        assert sink.close() == 0, sink.first_error
        del sink
        t_fed = time.time()
        prom.wait_for("sum(undertow_predictions_total)",
                      lambda r: r and float(r[0]["value"][1]) == WORKLOAD.n_events, 60,
                  "every event to be predicted and scraped")
        # A few payments asked for over HTTP, answered from the live state.
        url = f"http://127.0.0.1:{gateway_port}/v1/streams/fraud/predict?timeout_ms=10000"
        now_ms = int(float(prom.query("max(undertow_model_clock_seconds)")[0]["value"][1]) * 1000)
        for i in range(N_HTTP_REQUESTS):
            ask = dict(late, event_id=f"ask-{i}", ts=now_ms + 1 + i)
            status, body = _http("POST", url, ask)
            assert status == 200 and body["event_id"] == f"ask-{i}", (status, body)
        prom.wait_for('sum(undertow_requests_total{outcome="ok"}) and on () '
                      'sum(undertow_gateway_requests_total{outcome="ok"})',
                      lambda r: r and float(r[0]["value"][1]) == N_HTTP_REQUESTS, 30,
                      "the requests to be answered and scraped")
        time.sleep(3.0)  # a few more scrapes and rule evaluations on the final state
        assert flow.running, "the live dataflow exited"
        yield {"prom": prom, "written": written, "t_start": t_start, "t_fed": t_fed,
               "t_end": time.time(), "names": names}
    except BaseException:
        log.flush()
        sys.stderr.write(Path(log.name).read_text(errors="replace")[-3000:])
        sys.stderr.write(prom.log_tail())
        raise
    finally:
        prom.stop()
        gateway.stop()
        _stop(flow)
        log.close()
        os.unlink(log.name)


def _series(prom: PrometheusServer, expr: str, obs: dict[str, Any]) -> dict[float, float]:
    """One series' values by evaluation time (1 s steps over the whole feed)."""
    result = prom.query_range(expr, obs["t_start"], obs["t_end"], 1)
    assert len(result) <= 1, result
    return {float(t): float(v) for t, v in result[0]["values"]} if result else {}


def test_drift_alert_fires_after_the_drift_and_never_before(observed):
    prom, drift_s = observed["prom"], observed["written"]["drift_ts"] / 1000.0
    rules = {r["name"]: r for g in prom.rules() for r in g["rules"]}
    assert set(rules) == {a.name for a in build.ALERTS}
    assert all(r["health"] == "ok" for r in rules.values()), rules
    clock = _series(prom, "max(undertow_model_clock_seconds)", observed)
    before = [t for t, c in clock.items() if c < drift_s]
    assert len(before) >= 5, "too few evaluations before the drift to prove anything"

    # Detections in the other direction happen before the drift, while the model learns ...
    down = _series(prom, 'sum(undertow_concept_drift_detections_total{detector="adwin",'
                   'stream="error",direction="down"})', observed)
    assert any(down.get(t, 0) > 0 for t in before), "no 'down' detection before the drift"

    # ... and neither the rule's expression nor the alert it drives is ever on before it.
    for what in (rules[DRIFT_ALERT]["query"],
                 f'ALERTS{{alertname="{DRIFT_ALERT}",alertstate="firing"}}'):
        on = _series(prom, f"max({what})", observed)
        assert on, f"{what} was never on"
        for t in on:
            assert t in clock and clock[t] >= drift_s, (
                f"{what} on at {t} with the model clock at {clock.get(t)} < drift {drift_s}")
    firing = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
    assert firing == {DRIFT_ALERT}, firing


def test_every_dashboard_query_returns_data(observed):
    prom = observed["prom"]
    empty = [(f, title, e) for f, title, e in dashboard_queries() if not prom.query(e)]
    assert not empty, "queries with no data:\n" + "\n".join(map(str, empty))


def test_every_alert_signal_returns_data_and_only_drift_is_on(observed):
    prom = observed["prom"]
    for a in build.ALERTS:
        if "binary" not in a.targets:
            assert not prom.query(a.expr), (a.name, "on for a binary model")
            continue
        assert prom.query(a.signal), f"{a.name}: no data for {a.signal}"
        on = prom.query(a.expr)
        if a.name == DRIFT_ALERT:
            assert on, a.expr
        elif a.name != "UndertowLatencySLO":  # p99 depends on the machine's load
            assert not on, (a.name, on)


def test_the_scraped_counters_add_up(observed):
    prom, written = observed["prom"], observed["written"]

    def value(expr: str) -> float:
        r = prom.query(expr)
        assert len(r) == 1, (expr, r)
        return float(r[0]["value"][1])

    assert value('sum(undertow_records_read_total{stream="events"})') == (
        written["events"] + 1 + written["malformed"])
    assert value("sum(undertow_events_total)") == written["events"] + 1
    assert value("sum(undertow_late_events_total)") == 1  # the late one, at the first step
    assert value('sum(undertow_dead_letters_total{reason="late_event"})') == 1
    assert value('sum(undertow_dead_letters_total{step=~".*decode_events"})') == written[
        "malformed"]
    assert value("sum(undertow_labels_total)") == written["labels"]
    # Every HTTP request answered once by the dataflow and once by the gateway, all ok.
    assert value('sum(undertow_requests_total{kind="predict",outcome="ok"})') == N_HTTP_REQUESTS
    assert value('sum(undertow_gateway_requests_total{outcome="ok"})') == N_HTTP_REQUESTS
    for failed in ('undertow_requests_total{outcome!="ok"}',
                   'undertow_gateway_requests_total{outcome!="ok"}'):
        assert not prom.query(f"{failed} > 0"), prom.query(failed)
    targets = prom.targets_health()
    assert [t["health"] for t in targets] == ["up", "up"], targets  # the dataflow, the gateway


def test_dashboards_cover_every_undertow_metric_family():
    """Every metric the dataflow exports is on some dashboard panel."""
    from prometheus_client import REGISTRY

    import connectors.metrics  # noqa: F401  (declares every family)

    families = {m.name for m in REGISTRY.collect() if m.name.startswith("undertow_")}
    text = " ".join(e for _, _, e in dashboard_queries(None))
    missing = sorted(f for f in families if not re.search(rf"\b{re.escape(f)}(_total|_bucket|\b)",
                                                          text))
    assert not missing, missing
    assert len(families) >= 30
