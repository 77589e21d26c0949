"""Every Prometheus metric undertow exports, declared in one place.

Metrics live in prometheus-client's default registry, which Bytewax's API server serves at
``http://HOST:$BYTEWAX_DATAFLOW_API_PORT/metrics`` (default 3030) when the dataflow runs with
``BYTEWAX_DATAFLOW_API_ENABLED=true``; Bytewax's own step metrics and its Kafka consumer lag gauge
are served there too. Names follow ``undertow_<noun>_<unit>``; labels are ``model``, ``step``,
``reason`` (never an entity key).

Histograms on the hot path use :class:`BatchHistogram`: the dataflow observes a whole batch of
values with plain list arithmetic and the registry reads the buckets at scrape time, which costs
about a fifth of ``prometheus_client.Histogram.observe`` per value (measured in
``tests/test_metrics.py``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from undertow.schema import DEAD_LETTER_REASONS

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                   30.0)
LAG_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0)
DELAY_BUCKETS = (1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 2 * 3600.0, 6 * 3600.0,
                 86400.0, 3 * 86400.0)


class BatchHistogram(Collector):
    """A labelled histogram that takes many observations per call, cheaply.

    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> h = BatchHistogram("demo_seconds", "Demo.", ["model"], (1.0, 5.0), registry=reg)
    >>> h.observe_many([0.5, 2.0, 9.0], "m")
    >>> reg.get_sample_value("demo_seconds_bucket", {"model": "m", "le": "5.0"})
    2.0
    >>> reg.get_sample_value("demo_seconds_sum", {"model": "m"})
    11.5
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: object = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}  # counts per bucket, then the sum
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)  # type: ignore[attr-defined]

    def series(self, *labelvalues: str) -> list[float]:
        """The raw counters of one label set (created at zero), for repeated fast updates."""
        s = self._series.get(labelvalues)
        if s is None:
            with self._lock:
                s = self._series.setdefault(labelvalues, [0.0] * (len(self.bounds) + 2))
        return s

    def observe_many(self, values: Iterable[float], *labelvalues: str) -> None:
        s = self.series(*labelvalues)
        bounds = self.bounds
        total = 0.0
        for v in values:
            s[bisect_left(bounds, v)] += 1
            total += v
        s[-1] += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labelvalues, s in list(self._series.items()):
            snap = list(s)
            cumulative = 0.0
            buckets = []
            for bound, count in zip(self.bounds, snap, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            cumulative += snap[len(self.bounds)]
            buckets.append(("+Inf", cumulative))
            fam.add_metric(list(labelvalues), buckets, snap[-1])
        yield fam

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]


class StateSizes(Collector):
    """Gauges of live state, summed over the shards of each step in this process.

    Each shard's logic reports its own sizes with :meth:`set`; a shard that is dropped reports
    zeros. Scrapes sum per step, so several workers in one process add up correctly.
    """

    def __init__(self, registry: object = REGISTRY) -> None:
        self._sizes: dict[tuple[str, str], tuple[int, int, int]] = {}
        if registry is not None:
            registry.register(self)  # type: ignore[attr-defined]

    def set(self, step: str, shard: str, entities: int, records: int, windows: int = 0) -> None:
        self._sizes[(step, shard)] = (entities, records, windows)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ent = GaugeMetricFamily(
            "undertow_feature_entities", "Entities with live window state.", labels=["step"]
        )
        rec = GaugeMetricFamily(
            "undertow_feature_records", "Records kept in window state.", labels=["step"]
        )
        win = GaugeMetricFamily(
            "undertow_feature_open_windows", "Tumbling/hopping windows not closed yet.",
            labels=["step"],
        )
        totals: dict[str, list[int]] = {}
        for (step, _), (e, r, w) in list(self._sizes.items()):
            t = totals.setdefault(step, [0, 0, 0])
            t[0] += e
            t[1] += r
            t[2] += w
        for step, (e, r, w) in sorted(totals.items()):
            ent.add_metric([step], e)
            rec.add_metric([step], r)
            win.add_metric([step], w)
        yield ent
        yield rec
        yield win

    def describe(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("undertow_feature_entities", "", labels=["step"]),
            GaugeMetricFamily("undertow_feature_records", "", labels=["step"]),
            GaugeMetricFamily("undertow_feature_open_windows", "", labels=["step"]),
        ]


# -- input ----------------------------------------------------------------------------------------
RECORDS_READ = Counter(
    "undertow_records_read", "Records read from Kafka, by input stream.", ["stream"]
)
EVENTS = Counter("undertow_events", "Valid events decoded.")
LABELS = Counter("undertow_labels", "Valid labels decoded.")
DEAD_LETTERS = Counter(
    "undertow_dead_letters", "Records sent to the dead-letter topic, by reason.", ["step", "reason"]
)
LATE_EVENTS = Counter(
    "undertow_late_events",
    "Events older than the allowed lateness when they reached a feature step (sent to the late "
    "side stream, not scored).",
    ["step"],
)
SINK_OVERSIZED = Counter(
    "undertow_sink_oversized",
    "Records over the producer's or the broker's size limit, by output step: written cut "
    "(action truncated: dead letters) or not written (action dropped: other outputs).",
    ["step", "action"],
)
KAFKA_ERRORS = Counter(
    "undertow_kafka_errors",
    "Kafka faults with an answer (docs/broker.md, Faults), by kind: unreachable, refused (TLS or "
    "SASL), bad_option, data_loss (an offset the broker no longer has), brokers_down (an outage "
    "began), not_delivered (a sink's records timed out); topic is empty at start-up.",
    ["kind", "topic"],
)
ENTITIES_EVICTED = Counter(
    "undertow_feature_entities_evicted", "Idle entities dropped from window state.", ["step"]
)
STATE_SIZES = StateSizes()

# -- model step -----------------------------------------------------------------------------------
PREDICTIONS = Counter("undertow_predictions", "Predictions served.", ["model"])
LABELS_LEARNED = Counter(
    "undertow_labels_learned", "Labels learned on the served features.", ["model"]
)
PENDING_EXPIRED = Counter(
    "undertow_pending_expired",
    "Served predictions whose label never came (reason: ttl or capacity).",
    ["model", "reason"],
)
EARLY_LABELS = Counter(
    "undertow_early_labels", "Labels that came before their event and were held.", ["model"]
)
EARLY_LABELS_EXPIRED = Counter(
    "undertow_early_labels_expired", "Held labels whose event never came.", ["model"]
)
DUPLICATE_EVENTS = Counter(
    "undertow_duplicate_events", "Events whose id was already scored.", ["model"]
)
PENDING = Gauge("undertow_pending_predictions", "Served predictions waiting for a label.", ["model"])
EARLY_WAITING = Gauge(
    "undertow_early_labels_waiting", "Labels held while their event has not been seen.", ["model"]
)
LABELS_WAITING = Gauge(
    "undertow_labels_waiting_for_time",
    "Labels held because the model clock has not reached their time yet.",
    ["model"],
)
ACCURACY = Gauge(
    "undertow_model_accuracy_ratio", "Rolling accuracy of served predictions.", ["model"]
)
LOG_LOSS = Gauge("undertow_model_log_loss", "Rolling log-loss of served predictions.", ["model"])
ROC_AUC = Gauge("undertow_model_roc_auc_ratio", "Rolling ROC AUC of served predictions.", ["model"])
MACRO_F1 = Gauge("undertow_model_macro_f1_ratio",
                 "Rolling macro F1 of served multi-class predictions.", ["model"])
MAE = Gauge("undertow_model_mae", "Rolling mean absolute error of served regression predictions.",
            ["model"])
RMSE = Gauge("undertow_model_rmse", "Rolling root mean squared error of served regression "
             "predictions.", ["model"])
R2 = Gauge("undertow_model_r2_ratio", "Rolling R² of served regression predictions.", ["model"])
#: Each target's rolling measures (undertow.targets.Target.metrics) -> its gauge.
QUALITY_GAUGES = {"accuracy": ACCURACY, "log_loss": LOG_LOSS, "roc_auc": ROC_AUC,
                  "macro_f1": MACRO_F1, "mae": MAE, "rmse": RMSE, "r2": R2}
#: The binary champion's estimated quality of its latest served predictions, labels pending
#: (undertow/estimate.py), and its 95 % interval: Estimate.values() name -> gauge.
ESTIMATE_GAUGES = {
    f"{measure}{part}": Gauge(
        f"undertow_model_estimated_{measure}{part}_ratio",
        f"{what} {title} of the champion's last UNDERTOW_QUALITY_WINDOW served predictions, "
        "estimated from its calibrated scores before their labels come.",
        ["model"],
    )
    for measure, title in (("accuracy", "accuracy"), ("roc_auc", "ROC AUC"))
    for part, what in (("", "Estimated"), ("_lower", "Lower 95 % bound of the estimated"),
                       ("_upper", "Upper 95 % bound of the estimated"))
}
#: Multi-class: classes exported per model (the classes are the stream's, listed or learned;
#: beyond this many, the rest are not exported, so the label set stays bounded).
MAX_CLASSES_EXPORTED = 50
CLASS_LABELS = Gauge("undertow_model_class_labels",
                     "Labels of each class in the rolling quality window (multi-class).",
                     ["model", "class"])
CLASS_DECISIONS = Gauge("undertow_model_class_decisions",
                        "Decisions of each class in the rolling quality window (multi-class).",
                        ["model", "class"])
LAST_LEARN = Gauge(
    "undertow_model_last_learn_timestamp_seconds",
    "Wall time of the model's latest learn_one (epoch s).",
    ["model"],
)
CONCEPT_DRIFT_DETECTIONS = Counter(
    "undertow_concept_drift_detections",
    "Drift detections on a served stream (error: |label - score|, score: the scores); "
    "direction up = the stream's mean rose.",
    ["model", "detector", "stream", "direction"],
)
CONCEPT_DRIFT_ESTIMATE = Gauge(
    "undertow_concept_drift_estimate",
    "ADWIN's estimate of the mean of a served stream.",
    ["model", "detector", "stream"],
)
FEATURE_PSI = Gauge(
    "undertow_feature_drift_psi",
    "Population stability index of a feature, recent window against the reference.",
    ["model", "feature"],
)
FEATURE_KS = Gauge(
    "undertow_feature_drift_ks",
    "Two-sample Kolmogorov-Smirnov statistic of a feature, recent window against the reference.",
    ["model", "feature"],
)
FEATURE_REFERENCE_REFRESHES = Counter(
    "undertow_feature_drift_reference_refreshes",
    "Times the data-drift reference window was replaced by the recent window.",
    ["model"],
)
MODEL_VERSION = Gauge("undertow_model_version", "Version of the served model.", ["model"])
MODEL_CLOCK = Gauge(
    "undertow_model_clock_seconds", "Event time the model step has reached (epoch s).", ["model"]
)

# -- latency --------------------------------------------------------------------------------------
PROCESSING_LATENCY = BatchHistogram(
    "undertow_processing_latency_seconds",
    "Wall time from reading an event to writing its prediction.",
    ["model"],
    LATENCY_BUCKETS,
)
EVENT_LAG = BatchHistogram(
    "undertow_event_lag_seconds",
    "Wall time at prediction minus the event's own time.",
    ["model"],
    LAG_BUCKETS,
)
LABEL_DELAY = BatchHistogram(
    "undertow_label_delay_seconds",
    "Label time minus event time, for learned labels.",
    ["model"],
    DELAY_BUCKETS,
)


# -- replicated mode (undertow/replica.py, docs/scaling.md) ----------------------------------------
STALENESS_BUCKETS = (0.0, 1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                     100000.0)
REPLICA_STALENESS = BatchHistogram(
    "undertow_replica_staleness_labels",
    "Per event a scoring replica served: labels the trainer's champion had learned that the "
    "replica's copy had not, when the trainer received it.",
    ["model"],
    STALENESS_BUCKETS,
)
UPDATES_PUBLISHED = Counter(
    "undertow_model_updates_published", "Model updates the trainer published.", ["model"])
UPDATE_BYTES = Gauge(
    "undertow_model_update_bytes", "Size of the newest model update (compressed).", ["model"])
UPDATES_APPLIED = Counter(
    "undertow_model_updates_applied", "Model updates swapped in by this process's replica.",
    ["model"])


def declare_replicated(model: str) -> None:
    """The replicated-mode series of a model step at zero, in either mode: a dashboard shows 0
    updates and no staleness for an exact step, and rate() sees the first count."""
    REPLICA_STALENESS.series(model)
    UPDATES_PUBLISHED.labels(model=model)
    UPDATE_BYTES.labels(model=model)
    UPDATES_APPLIED.labels(model=model)


def declare_reasons(step: str) -> None:
    """Create every dead-letter series of a step at zero, so rate() works from the start."""
    for reason in DEAD_LETTER_REASONS:
        DEAD_LETTERS.labels(step=step, reason=reason)


PROMOTIONS = Counter(
    "undertow_model_promotions",
    "Champion changes in a model step (by the promotion rule or a command); the model label "
    "names the step, undertow_model_champion names the champion.",
    ["model"],
)
CHAMPION = Gauge(
    "undertow_model_champion", "1 for the model whose predictions are served, else 0.", ["model"]
)
CONTROL_COMMANDS = Counter(
    "undertow_control_commands", "Control-topic commands applied, by result.",
    ["command", "result"],
)
REORDER_BUFFER = Gauge(
    "undertow_replay_reorder_buffer",
    "Records a replay's model step holds until the records before them arrive.",
    ["model"],
)
CONTROLS_READ = Counter("undertow_control_records", "Valid control-topic commands decoded.")
CHECKPOINTS_WRITTEN = Counter(
    "undertow_checkpoints_written", "Model checkpoints written to the model directory.", ["model"]
)
CHECKPOINT_LABELS = Gauge(
    "undertow_checkpoint_labels_learned", "Labels learned by the model in its last checkpoint.",
    ["model"],
)
CHECKPOINT_VERSION = Gauge(
    "undertow_checkpoint_version", "Version of the model in its last checkpoint.", ["model"]
)
CHECKPOINT_WRITTEN_AT = Gauge(
    "undertow_checkpoint_last_written_timestamp_seconds",
    "Wall time (Unix seconds) the model's last checkpoint was written.", ["model"],
)
CHECKPOINT_FAILURES = Counter(
    "undertow_checkpoint_failures",
    "Checkpoint writes that failed (disk full, permissions); the dataflow goes on serving.",
    ["model"],
)
WINDOWS_CLOSED = Counter(
    "undertow_feature_windows_closed",
    "Tumbling/hopping windows closed by the event-time watermark and emitted.", ["step"],
)
WINDOW_MISSES = Counter(
    "undertow_feature_window_misses",
    "Records not added to a tumbling/hopping window that had already closed (a path that "
    "started after the others).", ["step"],
)

# -- requests (docs/requests.md) ------------------------------------------------------------------
REQUESTS_READ = Counter(
    "undertow_requests", "Requests answered, by kind (predict, describe) and outcome (ok, or "
    "the error's reason: expired, bad_request, missing_field, late_event, ...).",
    ["kind", "outcome"],
)
REQUEST_LATENCY = BatchHistogram(
    "undertow_request_latency_seconds",
    "Wall time from reading a request to writing its reply.",
    ["kind"],
    LATENCY_BUCKETS,
)
