"""Generate undertow's Grafana dashboards and Prometheus alerting rules from code.

    python -m dashboards.build            # (re)write dashboards/grafana/*.json and alerts.yml
    python -m dashboards.build --check    # exit 1 if a committed file differs from the output

The dashboards are built with Grafana's own ``grafana-foundation-sdk`` and written as sorted,
indented JSON, so the output is byte-for-byte deterministic; the files are committed and
``tests/test_observability.py`` checks they equal what this module produces.

Every query holds when several dataflow processes are scraped: counters are ``rate``d per series
then summed by the labels shown; quantiles are ``histogram_quantile`` over
``sum by (le, ...) (rate(..._bucket[...]))``; gauges of the model step (one learner per model,
on whichever worker owns its key) are taken with ``max by (model)``, size gauges are summed.

Alerting rules: each :class:`Alert` has a ``signal`` (a query that returns data whenever the
dataflow is scraped, healthy or not) and a ``condition`` on it. The rule's ``expr`` is the
condition applied to the signal, so the test can check both on a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

HERE = Path(__file__).resolve().parent
GRAFANA_DIR = HERE / "grafana"
ALERTS_PATH = HERE / "alerts.yml"

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
M = 'model=~"$model"'
RI = "$__rate_interval"
TAGS = ["undertow"]
#: Bytewax's internal plumbing steps (keying, sharding, unkeying) hidden from the step panel.
PLUMBING = 'step_id!~".*[.](shard|unkey|key_events|key_labels)[.].*"'


# -- panels ---------------------------------------------------------------------------------------
def q(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> prometheus.Dataquery:
    t = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        t = t.legend_format(legend)
    return t.instant() if instant else t.range()


def _refs() -> Iterator[str]:
    for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        yield c


def ts(title: str, desc: str, targets: list[tuple[str, str]], *, unit: str = "short",
       w: int = 12, h: int = 8, bars: bool = False, lo: float | None = None,
       hi: float | None = None, steps: list[tuple[float | None, str]] | None = None
       ) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w)
         .height(h).legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                           .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
         .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                  .sort(cm.SortOrder.DESCENDING)))
    for ref, (expr, legend) in zip(_refs(), targets, strict=False):
        p = p.with_target(q(expr, legend, ref))
    if bars:
        p = p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80)
    else:
        p = p.fill_opacity(10).show_points(cm.VisibilityMode.NEVER)
    if lo is not None:
        p = p.min(lo)
    if hi is not None:
        p = p.max(hi)
    if steps:
        p = p.thresholds(_thresholds(steps)).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
    return p


def big(title: str, desc: str, expr: str, legend: str = "", *, unit: str = "short", w: int = 6,
        h: int = 4, steps: list[tuple[float | None, str]] | None = None) -> stat.Panel:
    p = (stat.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
         .with_target(q(expr, legend, instant=True))
         .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .graph_mode(cm.BigValueGraphMode.NONE))
    if steps:
        p = p.thresholds(_thresholds(steps)).color_mode(cm.BigValueColorMode.VALUE)
    return p


def bars(title: str, desc: str, expr: str, legend: str, *, unit: str = "short", w: int = 12,
         h: int = 8, steps: list[tuple[float | None, str]] | None = None) -> bargauge.Panel:
    p = (bargauge.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w)
         .height(h).with_target(q(expr, legend, instant=True))
         .orientation(cm.VizOrientation.HORIZONTAL).display_mode(cm.BarGaugeDisplayMode.BASIC)
         .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if steps:
        p = p.thresholds(_thresholds(steps))
    return p


def _thresholds(steps: list[tuple[float | None, str]]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


def row(title: str) -> db.Row:
    return db.Row(title)


def quantiles(metric: str, qs: tuple[float, ...], by: str = "model", sel: str = M
              ) -> list[tuple[str, str]]:
    return [
        (f"histogram_quantile({x}, sum by (le, {by}) (rate({metric}_bucket{{{sel}}}[{RI}])))",
         f"p{round(x * 100)} {{{{{by}}}}}")
        for x in qs
    ]


# -- dashboards -----------------------------------------------------------------------------------
def _base(uid: str, title: str, desc: str, *variables: db.QueryVariable,
          models_of: str = "undertow_predictions_total") -> db.Dashboard:
    """A dashboard with the ``datasource`` and ``model`` variables; ``model`` lists the models
    that export ``models_of``."""
    d = (db.Dashboard(title).uid(uid).description(desc).tags(TAGS).refresh("5s")
         .time("now-30m", "now").timezone("browser").tooltip(dm.DashboardCursorSync.CROSSHAIR)
         .readonly()
         .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
         .with_variable(
             db.QueryVariable("model").label("Model").datasource(DS)
             .query(f"label_values({models_of}, model)")
             .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
             .multi(True).include_all(True).all_value(".*")
             .current(dm.VariableOption(selected=True, text="All", value="$__all"))))
    for v in variables:
        d = d.with_variable(v)
    d = d.link(db.DashboardLink("undertow").type(dm.DashboardLinkType.DASHBOARDS).tags(TAGS)
               .as_dropdown(True).include_vars(True).keep_time(True))
    return d


def overview() -> db.Dashboard:
    d = _base("undertow-overview", "undertow / overview",
              "Throughput, latency, Kafka lag and errors of the fraud dataflow, over every "
              "scraped process.")
    d = (d.with_row(row("Now"))
         .with_panel(big("Events decoded /s", "Valid events per second, all processes.",
                         f"sum(rate(undertow_events_total[{RI}]))", unit="eps"))
         .with_panel(big("p99 processing latency", "Read → prediction written, all models.",
                         f"histogram_quantile(0.99, sum by (le) (rate("
                         f"undertow_processing_latency_seconds_bucket{{{M}}}[{RI}])))", unit="s",
                         steps=[(None, "green"), (0.5, "orange"), (1.0, "red")]))
         .with_panel(big("Kafka consumer lag", "Records behind the end of the input topics.",
                         "sum(bytewax_kafka_consumer_lag)", unit="short"))
         .with_panel(big("Processes reporting", "Dataflow processes whose metrics are scraped.",
                         "count(undertow_events_total)", unit="short")))
    d = (d.with_row(row("Throughput"))
         .with_panel(ts("Records read, by stream", "Kafka records read (valid or not) per second.",
                        [(f"sum by (stream) (rate(undertow_records_read_total[{RI}]))",
                          "{{stream}}")], unit="recps"))
         .with_panel(ts("Decoded, served and learned",
                        "Valid events and labels decoded, predictions served, labels learned.",
                        [(f"sum(rate(undertow_events_total[{RI}]))", "events decoded"),
                         (f"sum(rate(undertow_labels_total[{RI}]))", "labels decoded"),
                         (f"sum by (model) (rate(undertow_predictions_total{{{M}}}[{RI}]))",
                          "predictions {{model}}"),
                         (f"sum by (model) (rate(undertow_labels_learned_total{{{M}}}[{RI}]))",
                          "labels learned {{model}}")], unit="eps"))
         .with_panel(ts("Items out per dataflow step (Bytewax)",
                        "Bytewax's own per-step counter, summed over workers and processes; "
                        "keying and sharding steps hidden.",
                        [(f"sum by (step_id) (rate(bytewax_item_out_count_total{{{PLUMBING}}}"
                          f"[{RI}]))", "{{step_id}}")], unit="recps", w=24)))
    d = (d.with_row(row("Latency and lag"))
         .with_panel(ts("Processing latency", "Wall time from reading an event to writing its "
                        "prediction (histogram quantiles over all processes).",
                        quantiles("undertow_processing_latency_seconds", (0.5, 0.99)), unit="s",
                        steps=[(None, "green"), (1.0, "red")]))
         .with_panel(ts("Event-time lag", "Wall time at prediction minus the event's own "
                        "timestamp.", quantiles("undertow_event_lag_seconds", (0.5, 0.99)),
                        unit="s"))
         .with_panel(ts("Kafka consumer lag, by topic", "Records between the consumed offset and "
                        "the end of each input topic, summed over partitions.",
                        [("sum by (topic) (bytewax_kafka_consumer_lag)", "{{topic}}")]))
         .with_panel(ts("Bytewax step duration p99", "Time Bytewax spends in stateful steps' "
                        "on_batch per call.",
                        [(f"histogram_quantile(0.99, sum by (le, step_id) (rate("
                          f"bytewax_stateful_batch_on_batch_duration_seconds_bucket[{RI}])))",
                          "{{step_id}}")], unit="s")))
    d = (d.with_row(row("Errors"))
         .with_panel(ts("Dead letters, by reason", "Records sent to the dead-letter topic per "
                        "second.", [(f"sum by (reason) (rate(undertow_dead_letters_total[{RI}]))",
                                     "{{reason}}")], unit="recps", bars=True))
         .with_panel(bars("Dead letters in range, by reason", "Dead letters over the dashboard's "
                          "time range.", "sort_desc(sum by (reason) (increase("
                          "undertow_dead_letters_total[$__range])))", "{{reason}}"))
         .with_panel(ts("Dead-letter ratio", "Dead letters over records read (the "
                        "UndertowDeadLetterSpike alert fires above 5 %).",
                        [(f"sum(rate(undertow_dead_letters_total[{RI}])) / "
                          f"sum(rate(undertow_records_read_total[{RI}]))", "dead / read")],
                        unit="percentunit", lo=0, steps=[(None, "green"), (0.05, "red")]))
         .with_panel(ts("Late events, by step", "Events older than the allowed lateness when they "
                        "reached a window step.",
                        [(f"sum by (step) (rate(undertow_late_events_total[{RI}]))", "{{step}}")],
                        unit="eps"))
         .with_panel(ts("Oversized records at the sinks", "Records longer than a producer "
                        "accepts: dead letters written cut (truncated), other outputs dropped. "
                        "0 when none.",
                        [(f"sum by (action) (rate(undertow_sink_oversized_total[{RI}])) "
                          "or vector(0)", "{{action}}")], unit="recps"))
         .with_panel(ts("Kafka faults, by kind", "Faults with an answer (docs/broker.md): "
                        "unreachable broker, refused TLS or SASL, data lost under the offsets, "
                        "undeliverable records. 0 when none.",
                        [(f"sum by (kind) (rate(undertow_kafka_errors_total[{RI}])) "
                          "or vector(0)", "{{kind}}")], unit="short")))
    d = (d.with_row(row("Requests (docs/requests.md)"))
         .with_panel(ts("Requests answered by the dataflow, by outcome",
                        "Replies written per second: ok, or the error's reason (expired, "
                        "bad_request, late_event, a dead-letter reason...).",
                        [(f"sum by (kind, outcome) (rate(undertow_requests_total[{RI}]))",
                          "{{kind}} {{outcome}}")], unit="reqps"))
         .with_panel(ts("Request latency in the dataflow", "Wall time from reading a request "
                        "to writing its reply (histogram quantiles over all processes).",
                        quantiles("undertow_request_latency_seconds", (0.5, 0.99), by="kind",
                                  sel=""), unit="s"))
         .with_panel(ts("Gateway answers, by outcome", "HTTP requests answered per second by "
                        "the gateways (connectors.gateway): ok, error (refused by the dataflow), "
                        "timeout (no reply by the deadline), bad_request (400/404). The "
                        "UndertowRequestTimeouts alert fires above 1 % timeouts.",
                        [(f"sum by (outcome) (rate(undertow_gateway_requests_total[{RI}]))",
                          "{{outcome}}")], unit="reqps"))
         .with_panel(ts("Gateway latency", "Wall time from an HTTP request to its answer, "
                        "timeouts included (histogram quantiles over all gateways).",
                        quantiles("undertow_gateway_request_seconds", (0.5, 0.99), by="stream",
                                  sel=""), unit="s"))
         .with_panel(ts("Gateway: in flight and late replies", "Requests waiting for their "
                        "reply now, and replies that came after their caller got a timeout "
                        "(dropped) per second.",
                        [("sum(undertow_gateway_in_flight)", "in flight"),
                         (f"sum(rate(undertow_gateway_late_replies_total[{RI}]))",
                          "late replies /s")], w=24)))
    d = (d.with_row(row("Replicated mode (docs/scaling.md)"))
         .with_panel(ts("Replica staleness", "Labels the trainer's champion had learned that "
                        "the replica's copy had not, per served event (replicated mode; none in "
                        "exact mode).",
                        quantiles("undertow_replica_staleness_labels", (0.5, 0.99)),
                        w=8))
         .with_panel(ts("Model updates", "Updates the trainer published and the replicas "
                        "swapped in, per second (0 in exact mode).",
                        [(f"sum by (model) (rate(undertow_model_updates_published_total{{{M}}}"
                          f"[{RI}]))", "published {{model}}"),
                         (f"sum by (model) (rate(undertow_model_updates_applied_total{{{M}}}"
                          f"[{RI}]))", "applied {{model}}")], unit="ops", w=8))
         .with_panel(ts("Model update size", "The newest update's compressed size: the "
                        "models of every slot (0 in exact mode).",
                        [(f"max by (model) (undertow_model_update_bytes{{{M}}})", "{{model}}")],
                        unit="bytes", w=8)))
    return d


@dataclass(frozen=True)
class TargetView:
    """What the model dashboard of one target (:mod:`undertow.targets`) shows and says."""

    target: str
    uid: str
    title: str
    #: A gauge only this target's models export: the ``model`` variable lists those models.
    models_of: str
    #: The served error concept drift watches, and the score-drift detector's signal.
    error: str
    score: str
    quality_row: Callable[[db.Dashboard], db.Dashboard]


def binary_quality(d: db.Dashboard) -> db.Dashboard:
    return (d.with_row(row("Served quality (rolling window of served predictions)"))
            .with_panel(ts("Accuracy", "Rolling accuracy of served predictions.",
                           [(f"max by (model) (undertow_model_accuracy_ratio{{{M}}})",
                             "{{model}}")], unit="percentunit", w=8, lo=0, hi=1))
            .with_panel(ts("Log-loss", "Rolling log-loss of served scores.",
                           [(f"max by (model) (undertow_model_log_loss{{{M}}})", "{{model}}")],
                           w=8, lo=0))
            .with_panel(ts("ROC AUC", "Rolling ROC AUC of served scores.",
                           [(f"max by (model) (undertow_model_roc_auc_ratio{{{M}}})",
                             "{{model}}")], unit="percentunit", w=8, lo=0, hi=1))
            .with_row(row("Estimated quality (before the labels come)"))
            .with_panel(_estimated("accuracy", "accuracy"))
            .with_panel(_estimated("roc_auc", "ROC AUC")))


def _estimated(measure: str, title: str) -> timeseries.Panel:
    """The champion's estimate of its latest predictions' quality, its 95 % interval and the
    realised rolling value beside it (undertow/estimate.py)."""
    est = f"undertow_model_estimated_{measure}"
    return ts(f"Estimated {title}",
              f"The champion's {title} over its last UNDERTOW_QUALITY_WINDOW served "
              "predictions, estimated from its scores (calibrated on its labelled ones) before "
              "their labels come, with its 95 % interval; beside it the realised rolling value, "
              "of older predictions. It holds while the calibration holds: after a concept "
              "drift it stays optimistic until new labels come (docs/metrics.md).",
              [(f"max by (model) ({est}_ratio{{{M}}})", "{{model}} estimated"),
               (f"max by (model) ({est}_lower_ratio{{{M}}})", "{{model}} lower 95 %"),
               (f"max by (model) ({est}_upper_ratio{{{M}}})", "{{model}} upper 95 %"),
               (f"max by (model) (undertow_model_{measure}_ratio{{{M}}}) and on (model) "
                f"max by (model) ({est}_ratio{{{M}}})", "{{model}} realised")],
              unit="percentunit", lo=0, hi=1)


def multiclass_quality(d: db.Dashboard) -> db.Dashboard:
    labels = f"max by (model, class) (undertow_model_class_labels{{{M}}})"
    decisions = f"max by (model, class) (undertow_model_class_decisions{{{M}}})"
    return (d.with_row(row("Multi-class quality (rolling window of served predictions)"))
            .with_panel(ts("Accuracy", "Rolling accuracy of the served decisions (the most "
                           "probable class). The UndertowMulticlassQualityDrop alert fires when "
                           "it falls below 90 % of its level over the last hour.",
                           [(f"max by (model) (undertow_model_accuracy_ratio{{{M}}})",
                             "{{model}}")], unit="percentunit", w=8, lo=0, hi=1))
            .with_panel(ts("Macro F1", "Rolling macro F1: the F1 of each class seen in the "
                           "window (as a label or a decision), averaged. Falls when a class is "
                           "mistaken even if accuracy holds; alerts as accuracy does.",
                           [(f"max by (model) (undertow_model_macro_f1_ratio{{{M}}})",
                             "{{model}}")], unit="percentunit", w=8, lo=0, hi=1))
            .with_panel(ts("Cross-entropy", "Rolling multi-class log-loss: minus the log of "
                           "the probability served for the true class.",
                           [(f"max by (model) (undertow_model_log_loss{{{M}}})", "{{model}}")],
                           w=8, lo=0))
            .with_panel(ts("Class labels vs decisions", "How many of the window's labels are "
                           "each class, and how many of its decisions: a class decided far more "
                           "or less often than it is the truth is where the model errs.",
                           [(labels, "{{model}} {{class}} labels"),
                            (decisions, "{{model}} {{class}} decisions")], w=12, lo=0))
            .with_panel(bars("Decisions minus labels, by class", "Over- (positive) or "
                             "under-prediction (negative) of each class in the window now.",
                             f"{decisions} - {labels}", "{{model}} {{class}}", w=12)))


def regression_quality(d: db.Dashboard) -> db.Dashboard:
    return (d.with_row(row("Regression quality (rolling window of served predictions)"))
            .with_panel(ts("MAE", "Rolling mean absolute error |y - ŷ|. The "
                           "UndertowRegressionErrorRise alert fires when it exceeds 1.5 times "
                           "its level over the last hour.",
                           [(f"max by (model) (undertow_model_mae{{{M}}})", "{{model}}")],
                           w=8, lo=0))
            .with_panel(ts("RMSE", "Rolling root mean squared error: weighs the large errors.",
                           [(f"max by (model) (undertow_model_rmse{{{M}}})", "{{model}}")],
                           w=8, lo=0))
            .with_panel(ts("R²", "Rolling R²: 1 - squared error / variance of the window's "
                           "labels (0 while they do not vary; below 0: worse than their mean).",
                           [(f"max by (model) (undertow_model_r2_ratio{{{M}}})", "{{model}}")],
                           w=8, hi=1))
            .with_panel(ts("Error drift", "ADWIN's mean of the served |y - ŷ| (its own adaptive "
                           "window, cut at each detected change) beside the rolling MAE (the "
                           "last labels of the quality window): ADWIN 'up' means the error rose "
                           "(UndertowConceptDrift).",
                           [(f"max by (model) (undertow_concept_drift_estimate{{{M},"
                             'stream="error"})', "{{model}} ADWIN mean"),
                            (f"max by (model) (undertow_model_mae{{{M}}})", "{{model}} MAE"),
                            (f"sum by (model, direction) (increase("
                             f"undertow_concept_drift_detections_total{{{M},detector=\"adwin\","
                             f'stream="error"}}[{RI}]))', "{{model}} detections {{direction}}")],
                           w=24, lo=0)))


TARGET_VIEWS: dict[str, TargetView] = {
    "binary": TargetView("binary", "undertow-model", "undertow / model",
                         "undertow_model_roc_auc_ratio", "absolute error |y - P(True)|",
                         "scores P(True)", binary_quality),
    "multiclass": TargetView("multiclass", "undertow-model-multiclass",
                             "undertow / model (multi-class)", "undertow_model_macro_f1_ratio",
                             "error (0 if the decided class is the label, else 1)",
                             "top probabilities", multiclass_quality),
    "regression": TargetView("regression", "undertow-model-regression",
                             "undertow / model (regression)", "undertow_model_mae",
                             "absolute error |y - ŷ|", "predictions ŷ", regression_quality),
}


def model(target: str = "binary") -> db.Dashboard:
    """The model dashboard of one target: its quality row, then what every target shares."""
    v = TARGET_VIEWS[target]
    d = _base(v.uid, v.title,
              "Quality of the served predictions, concept drift, label join and model state, "
              f"per model ({v.target} target).", models_of=v.models_of)
    d = v.quality_row(d)
    d = (d.with_row(row("Concept drift"))
         .with_panel(ts("Drift detections", "ADWIN and Page-Hinkley detections on the served "
                        f"{v.error} and on the served {v.score}. ADWIN 'up' on the error means "
                        "the model got worse (UndertowConceptDrift); 'down' happens while it "
                        "learns.",
                        [(f"sum by (model, detector, stream, direction) (increase("
                          f"undertow_concept_drift_detections_total{{{M}}}[{RI}]))",
                          "{{model}} {{detector}} {{stream}} {{direction}}")], bars=True))
         .with_panel(ts("ADWIN estimates", f"ADWIN's mean of the served {v.error} and of the "
                        f"served {v.score}.",
                        [(f"max by (model, stream) (undertow_concept_drift_estimate{{{M}}})",
                          "{{model}} mean {{stream}}")], lo=0))
         .with_panel(bars("Detections in range", "Detections over the dashboard's time range.",
                          "sum by (detector, stream, direction) (increase("
                          f"undertow_concept_drift_detections_total{{{M}}}[$__range]))",
                          "{{detector}} {{stream}} {{direction}}", w=24, h=6)))
    d = (d.with_row(row("Labels"))
         .with_panel(ts("Label delay", "Label time minus event time, for learned labels.",
                        quantiles("undertow_label_delay_seconds", (0.5, 0.9, 0.99)), unit="s"))
         .with_panel(ts("Label coverage", "Labels learned over predictions served.",
                        [(f"sum by (model) (rate(undertow_labels_learned_total{{{M}}}[{RI}])) / "
                          f"sum by (model) (rate(undertow_predictions_total{{{M}}}[{RI}]))",
                          "{{model}}")], unit="percentunit", lo=0,
                        steps=[(None, "red"), (0.5, "green")]))
         .with_panel(ts("Pending predictions and held labels",
                        "Predictions waiting for their label; labels waiting for their event "
                        "(early) or for the model clock to reach their time.",
                        [(f"sum by (model) (undertow_pending_predictions{{{M}}})",
                          "pending predictions {{model}}"),
                         (f"sum by (model) (undertow_early_labels_waiting{{{M}}})",
                          "early labels {{model}}"),
                         (f"sum by (model) (undertow_labels_waiting_for_time{{{M}}})",
                          "labels waiting for time {{model}}")]))
         .with_panel(ts("Expiries, early labels and duplicates",
                        "Predictions whose label never came (ttl/capacity), labels that came "
                        "before their event, early labels that expired, duplicate events.",
                        [(f"sum by (model, reason) (rate(undertow_pending_expired_total{{{M}}}"
                          f"[{RI}]))", "expired {{reason}} {{model}}"),
                         (f"sum by (model) (rate(undertow_early_labels_total{{{M}}}[{RI}]))",
                          "early labels {{model}}"),
                         (f"sum by (model) (rate(undertow_early_labels_expired_total{{{M}}}"
                          f"[{RI}]))", "early labels expired {{model}}"),
                         (f"sum by (model) (rate(undertow_duplicate_events_total{{{M}}}[{RI}]))",
                          "duplicate events {{model}}")], unit="eps")))
    d = (d.with_row(row("Model"))
         .with_panel(big("Model version", "Version of the served model (learn_one calls).",
                         f"max by (model) (undertow_model_version{{{M}}})", "{{model}}"))
         .with_panel(big("Time since last learn", "Wall time since the model last learned.",
                         f"time() - max by (model) ("
                         f"undertow_model_last_learn_timestamp_seconds{{{M}}})", "{{model}}",
                         unit="s", steps=[(None, "green"), (300, "orange"), (3600, "red")]))
         .with_panel(big("Model clock", "Event time the model step has reached.",
                         f"max by (model) (undertow_model_clock_seconds{{{M}}}) * 1000",
                         "{{model}}", unit="dateTimeAsIso", w=12))
         .with_panel(big("Label coverage in range", "Labels learned over predictions served, "
                         "over the dashboard's time range.",
                         f"sum(increase(undertow_labels_learned_total{{{M}}}[$__range])) / "
                         f"sum(increase(undertow_predictions_total{{{M}}}[$__range]))",
                         unit="percentunit", w=24)))
    d = (d.with_row(row("Champion and challengers"))
         .with_panel(bars("Champion", "1 for the model whose predictions are served; the "
                          "challengers (0) are scored in shadow on the same events.",
                          f"max by (model) (undertow_model_champion{{{M}}})", "{{model}}", w=8))
         .with_panel(big("Promotions in range", "Champion changes, by the promotion rule or a "
                         "control command.",
                         f"sum(increase(undertow_model_promotions_total{{{M}}}[$__range]))", w=8))
         .with_panel(big("Checkpoints in range", "Model checkpoints written to the model "
                         "directory (UNDERTOW_MODEL_DIR).",
                         f"sum(increase(undertow_checkpoints_written_total{{{M}}}[$__range]))",
                         w=8))
         .with_panel(bars("Labels in the last checkpoint", "Labels each model had learned when "
                          "its last checkpoint was written.",
                          f"max by (model) (undertow_checkpoint_labels_learned{{{M}}})",
                          "{{model}}", w=8))
         .with_panel(bars("Version in the last checkpoint", "Version of each model when its "
                          "last checkpoint was written.",
                          f"max by (model) (undertow_checkpoint_version{{{M}}})",
                          "{{model}}", w=8))
         .with_panel(big("Time since last checkpoint", "Wall time since each model's last "
                         "checkpoint was written.",
                         f"time() - max by (model) ("
                         f"undertow_checkpoint_last_written_timestamp_seconds{{{M}}})",
                         "{{model}}", unit="s", w=8))
         .with_panel(big("Checkpoint failures in range", "Checkpoint writes that failed (disk "
                         "full, permissions); the dataflow goes on serving.",
                         f"sum(increase(undertow_checkpoint_failures_total{{{M}}}[$__range]))",
                         w=8, steps=[(None, "green"), (1, "red")]))
         .with_panel(big("Replay reorder buffer", "Records an ordered (replay) model step holds "
                         "until the records before them arrive; 0 live.",
                         f"sum(undertow_replay_reorder_buffer{{{M}}})", w=8))
         .with_panel(ts("Control commands", "Commands read from the control topic, and what "
                        "became of them.",
                        [("sum by (command, result) (rate(undertow_control_commands_total"
                          f"[{RI}]))", "{{command}} {{result}}"),
                         (f"sum(rate(undertow_control_records_total[{RI}]))", "decoded")],
                        unit="ops", w=24)))
    return d


def features() -> db.Dashboard:
    feature = (db.QueryVariable("feature").label("Feature").datasource(DS)
               .query('label_values(undertow_feature_drift_psi{model=~"$model"}, feature)')
               .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
               .sort(dm.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
               .all_value(".*").current(dm.VariableOption(selected=True, text="All",
                                                          value="$__all")))
    d = _base("undertow-features", "undertow / features",
              "Data drift of the served features (recent window against the reference) and the "
              "size of the window state.", feature)
    fm = f'{M},feature=~"$feature"'
    psi_steps: list[tuple[float | None, str]] = [(None, "green"), (0.1, "orange"), (0.25, "red")]
    ks_steps: list[tuple[float | None, str]] = [(None, "green"), (0.1, "orange"), (0.2, "red")]
    d = (d.with_row(row("Data drift"))
         .with_panel(ts("PSI per feature", "Population stability index, recent served vectors "
                        "against the reference window (0.1: moderate, 0.25: large shift).",
                        [(f"max by (model, feature) (undertow_feature_drift_psi{{{fm}}})",
                          "{{feature}}")], lo=0, steps=psi_steps))
         .with_panel(ts("KS statistic per feature", "Two-sample Kolmogorov-Smirnov statistic, "
                        "recent against reference.",
                        [(f"max by (model, feature) (undertow_feature_drift_ks{{{fm}}})",
                          "{{feature}}")], lo=0, hi=1, steps=ks_steps))
         .with_panel(bars("PSI now", "Latest PSI per feature, largest first.",
                          f"sort_desc(max by (feature) (undertow_feature_drift_psi{{{fm}}}))",
                          "{{feature}}", steps=psi_steps))
         .with_panel(bars("KS now", "Latest KS statistic per feature, largest first.",
                          f"sort_desc(max by (feature) (undertow_feature_drift_ks{{{fm}}}))",
                          "{{feature}}", steps=ks_steps))
         .with_panel(big("Reference refreshes in range", "Times the reference window was "
                         "replaced by the recent one (UNDERTOW_DRIFT_REFRESH_EVERY).",
                         f"sum by (model) (increase("
                         f"undertow_feature_drift_reference_refreshes_total{{{M}}}[$__range]))",
                         "{{model}}", w=24)))
    d = (d.with_row(row("Window state"))
         .with_panel(ts("Live entities, by step", "Entities with window state, summed over "
                        "shards, workers and processes.",
                        [("sum by (step) (undertow_feature_entities)", "{{step}}")], w=8))
         .with_panel(ts("Records kept, by step", "Records held in window state.",
                        [("sum by (step) (undertow_feature_records)", "{{step}}")], w=8))
         .with_panel(ts("Entities evicted, by step", "Idle entities dropped from window state "
                        "per second.",
                        [(f"sum by (step) (rate(undertow_feature_entities_evicted_total[{RI}]))",
                          "{{step}}")], unit="ops", w=8)))
    d = (d.with_row(row("Tumbling and hopping windows"))
         .with_panel(ts("Open windows, by step", "Windows not closed yet by the event-time "
                        "watermark, summed over shards, workers and processes.",
                        [("sum by (step) (undertow_feature_open_windows)", "{{step}}")], w=8))
         .with_panel(ts("Windows closed, by step", "Closed window aggregates emitted to the "
                        "features topic per second.",
                        [(f"sum by (step) (rate(undertow_feature_windows_closed_total[{RI}]))",
                          "{{step}}")], unit="ops", w=8))
         .with_panel(ts("Window misses, by step", "Records not added to a window that had "
                        "already closed (a path that started after the others).",
                        [(f"sum by (step) (rate(undertow_feature_window_misses_total[{RI}]))",
                          "{{step}}")], unit="ops", w=8)))
    return d


DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "undertow-overview.json": overview,
    "undertow-model.json": model,
    "undertow-model-multiclass.json": lambda: model("multiclass"),
    "undertow-model-regression.json": lambda: model("regression"),
    "undertow-features.json": features,
}


def _number_panels(panels: list[dict[str, Any]]) -> None:
    for i, p in enumerate(panels, start=1):
        p["id"] = i


def dashboard_json(make: Callable[[], db.Dashboard]) -> str:
    data = json.loads(json.dumps(make().build(), cls=JSONEncoder))
    _number_panels(data["panels"])
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query target in a dashboard's JSON."""
    out = []
    for p in dashboard.get("panels", []):
        for t in p.get("targets", []) or []:
            out.append((p["title"], t["expr"]))
        for inner in p.get("panels", []) or []:  # collapsed rows
            for t in inner.get("targets", []) or []:
                out.append((inner["title"], t["expr"]))
    return out


# -- alerting rules -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    name: str
    #: A query returning data whenever the dataflow is scraped (what the condition looks at).
    signal: str
    #: The alert condition; ``{signal}`` stands for the signal.
    condition: str
    for_: str
    severity: str
    summary: str
    description: str
    #: The targets whose models the rule watches (its signal returns data for those only).
    targets: tuple[str, ...] = ("binary", "multiclass", "regression")
    #: The process whose metrics the signal reads: "dataflow", or "gateway" (connectors.gateway:
    #: its signal has data only where a gateway is scraped).
    scraped_from: str = "dataflow"

    @property
    def expr(self) -> str:
        return self.condition.format(signal=self.signal)


DRIFT_UP = 'undertow_concept_drift_detections_total{detector="adwin",stream="error",direction="up"}'
#: How far back a model's own level of a quality measure is taken.
LEVEL_RANGE = "1h"
#: Labels a model must have learned in LEVEL_RANGE before its quality is judged (a window of a
#: few labels is noise).
MIN_LABELS = 100


def relative_to_level(gauge: str) -> str:
    """A model's ``gauge`` now over its mean in the last :data:`LEVEL_RANGE`; the samples at 0
    (the quality window still empty: after a start or restart) are left out of the mean."""
    return (f"max by (job, model) ({gauge}) / max by (job, model) "
            f"(avg_over_time(({gauge} > 0)[{LEVEL_RANGE}:]))")


def learning(labels: int = MIN_LABELS) -> str:
    """The models that learned at least ``labels`` labels in the last LEVEL_RANGE."""
    return (f"sum by (job, model) (increase(undertow_labels_learned_total[{LEVEL_RANGE}])) "
            f">= {labels}")


MULTICLASS_MODELS = "max by (job, model) (undertow_model_macro_f1_ratio)"

ALERTS: list[Alert] = [
    Alert(
        "UndertowConceptDrift",
        f"sum by (job, model) (increase({DRIFT_UP}[10m]))",
        "{signal} > 0",
        "0s",
        "warning",
        "Concept drift: the served error of model {{ $labels.model }} went up",
        "ADWIN detected an increase of the served error in the last 10 minutes (binary: "
        "|y - P(True)|, multi-class: 0/1 for a wrong class, regression: |y - ŷ|): the model got "
        "worse on recent labels (a 'down' detection, as while it learns, does not alert). Check "
        "the model dashboard of the stream's target: its rolling quality, and feature PSI.",
    ),
    Alert(
        "UndertowMulticlassQualityDrop",
        f'label_replace({relative_to_level("undertow_model_accuracy_ratio")} and on (job, model) '
        f'{MULTICLASS_MODELS}, "measure", "accuracy", "", "") or label_replace('
        f'{relative_to_level("undertow_model_macro_f1_ratio")}, "measure", "macro_f1", "", "")',
        f"({{signal}}) < 0.9 and on (job, model) {learning()}",
        "5m",
        "warning",
        "Rolling {{ $labels.measure }} of {{ $labels.model }} fell below 90 % of its level",
        "The rolling {{ $labels.measure }} of multi-class model {{ $labels.model }} is "
        "{{ $value | humanizePercentage }} of its mean over the last hour, for 5 minutes (a "
        "model that improves, or holds steady, never alerts; a model with fewer than "
        f"{MIN_LABELS} labels in the hour is not judged). Check the multi-class model dashboard: "
        "which class is decided more or less often than it is the truth.",
        targets=("multiclass",),
    ),
    Alert(
        "UndertowRegressionErrorRise",
        relative_to_level("undertow_model_mae"),
        f"{{signal}} > 1.5 and on (job, model) {learning()}",
        "5m",
        "warning",
        "Rolling MAE of {{ $labels.model }} rose above 1.5 times its level",
        "The rolling mean absolute error of regression model {{ $labels.model }} is "
        "{{ $value | printf \"%.2f\" }} times its mean over the last hour, for 5 minutes (a "
        "model whose error falls, as while it learns, or holds steady, never alerts; a model "
        f"with fewer than {MIN_LABELS} labels in the hour is not judged). Check the regression "
        "model dashboard: MAE, RMSE and the ADWIN mean of the error.",
        targets=("regression",),
    ),
    Alert(
        "UndertowLatencySLO",
        "histogram_quantile(0.99, sum by (job, model, le) "
        "(rate(undertow_processing_latency_seconds_bucket[5m])))",
        "{signal} > 1",
        "3m",
        "warning",
        "p99 processing latency of {{ $labels.model }} above 1 s",
        "p99 of read-to-prediction latency over 5 minutes is {{ $value | humanizeDuration }} "
        "(SLO: 1 s), for 3 minutes.",
    ),
    Alert(
        "UndertowLabelJoinRateDropped",
        "sum by (job, model) (rate(undertow_labels_learned_total[10m])) / "
        "sum by (job, model) (rate(undertow_predictions_total[10m]))",
        "{signal} < 0.5",
        "5m",
        "warning",
        "Labels learned by {{ $labels.model }} fell below half of its predictions",
        "Over 10 minutes, labels learned per prediction served is {{ $value | humanizePercentage }}"
        " (0 % if labels stopped while predictions flow). Check the labels topic and the label "
        "delay; expiries and dead letters of the model step show where labels go.",
    ),
    Alert(
        "UndertowDeadLetterSpike",
        "sum by (job) (rate(undertow_dead_letters_total[5m])) / "
        "sum by (job) (rate(undertow_records_read_total[5m]))",
        "{signal} > 0.05",
        "2m",
        "warning",
        "More than 5 % of records go to the dead-letter topic",
        "{{ $value | humanizePercentage }} of the records read in the last 5 minutes were "
        "dead-lettered; the overview dashboard breaks them down by reason.",
    ),
    Alert(
        "UndertowRequestTimeouts",
        'sum by (job) (rate(undertow_gateway_requests_total{outcome="timeout"}[5m])) / '
        "sum by (job) (rate(undertow_gateway_requests_total[5m]))",
        "{signal} > 0.01",
        "2m",
        "warning",
        "More than 1 % of the gateway's requests time out",
        "{{ $value | humanizePercentage }} of the HTTP requests of the last 5 minutes got no "
        "reply by their deadline. Check that the dataflow runs and reads the requests topic, "
        "its request latency and the Kafka lag (overview dashboard, Requests row).",
        scraped_from="gateway",
    ),
    Alert(
        "UndertowNoEvents",
        'sum by (job) (increase(undertow_records_read_total{stream="events"}[5m]))',
        "{signal} == 0 and on (job) max by (job) (up) == 1",
        "1m",
        "critical",
        "No event read for 5 minutes while the dataflow is up",
        "No process of job {{ $labels.job }} read a record from the events topic in 5 minutes, "
        "though at least one of them is up and scraped. Check the producers and the topic.",
    ),
]


def _yaml_str(s: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are a subset of YAML's)."""
    return json.dumps(s, ensure_ascii=False)


def alerts_yaml() -> str:
    lines = [
        "# Generated by `python -m dashboards.build` from dashboards/build.py: edit that, not this.",
        "# Prometheus alerting rules for undertow; dashboards/prometheus.yml loads them.",
        "groups:",
        "  - name: undertow",
        "    rules:",
    ]
    for a in ALERTS:
        lines += [
            f"      - alert: {a.name}",
            "        expr: |-",
            f"          {a.expr}",
            f"        for: {a.for_}",
            "        labels:",
            f"          severity: {a.severity}",
            "        annotations:",
            f"          summary: {_yaml_str(a.summary)}",
            f"          description: {_yaml_str(a.description)}",
        ]
    return "\n".join(lines) + "\n"


# -- output ---------------------------------------------------------------------------------------
def render() -> dict[Path, str]:
    """Every generated file: path -> content."""
    out = {GRAFANA_DIR / name: dashboard_json(make) for name, make in DASHBOARDS.items()}
    out[ALERTS_PATH] = alerts_yaml()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a file differs from the generated one")
    args = ap.parse_args(argv)
    stale = []
    for path, text in render().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        verb = "differs" if args.check else "wrote"
        print(f"{verb}: {path.relative_to(HERE.parent)}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
