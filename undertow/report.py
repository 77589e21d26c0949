"""A backtest's report: per-model quality over event time, drift, label delays (JSON and HTML).

Everything here is computed from the model step's own records of a replay: one
:class:`~undertow.schema.Outcome` per learned label per model (what was *served* for its event,
and the label), and one :class:`~undertow.schema.ModelSummary` per model at the end. So the
report is leak-free by construction: it scores exactly what was served, before each label was
learned. The measures are those of the stream's target (``target``, the stream file's
``[labels] target``):

* **binary**: accuracy, log loss (probabilities clipped to [1e-15, 1 - 1e-15], as River does)
  and the exact ROC AUC (the Mann-Whitney statistic, ties counted one half; River's ``ROCAUC``
  approximates with thresholds).
* **multiclass**: accuracy, macro F1 and cross-entropy (``log_loss``), River's ``Accuracy``,
  ``MacroF1`` and ``CrossEntropy`` of the decided class and of the probability served for the
  true class (the Outcome's ``score``; a true class the model did not serve counts as
  probability 0, clipped: River's ``CrossEntropy`` of the whole served dict would charge it
  nothing). An outcome served before the model knew any class (no decision, ``predicted`` None)
  updates none of the three, as River's progressive validation skips an empty prediction; it is
  counted (``no_prediction``) and has its column in the **confusion matrix** (true class x
  decided class, every learned label once), and the per-class counts of labels, decisions,
  correct decisions and F1.
* **regression**: MAE, RMSE and R² (River's ``MAE``, ``RMSE``, ``R2``; R² is ``null`` where it is
  undefined, fewer than two labels or labels all equal, where River says 0.0) and the mean
  residual (label minus prediction), with an evenly spaced sample of (event time, label,
  prediction) for the plots of predictions against truth and residuals over event time.

Multi-class and regression measures run River's own metric objects over the outcomes in event
time order (macro F1 sums the classes' F1 in sorted class order, exactly rounded, where River's
order follows a set); so they equal River's metrics fed the same outcomes.

* **Final metrics** over all outcomes of a model.
* **Rolling metrics over event time**: the outcomes are bucketed by their *event* time into
  ``buckets`` equal spans; each bucket gets the same metrics (``null`` where a bucket has no
  outcomes, or one class only for ROC AUC).
* **Drift detections** with their event time, per model (ADWIN and Page-Hinkley on the served
  error and score streams), and the feature drift (PSI/KS) the model step computed.
* **Label delays** (label time minus event time): count, mean, p50/p90/p99 (nearest rank), max
  and a histogram.

The HTML page is self-contained: the plots are SVG from matplotlib, inlined, with no script and
no external URL. matplotlib (pinned) is the standard Python plotting library; its SVG backend
is deterministic once the hash salt and the date metadata are fixed, which they are here, so two
runs of the same backtest give byte-identical pages.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from river import metrics as river_metrics

from undertow.schema import ModelSummary, Outcome
from undertow.targets import TARGETS

_EPS = 1e-15
#: At most this many (event time, label, prediction) points per regression model for the plots.
SAMPLE_POINTS = 1000
DELAY_EDGES_S = (0, 1, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400, 259200)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def roc_auc(labels: list[bool], scores: list[float]) -> float | None:
    """Exact ROC AUC: the probability that a random positive outscores a random negative.

    >>> roc_auc([True, False, True, False], [0.9, 0.1, 0.4, 0.4])
    0.875
    >>> roc_auc([True, True], [0.5, 0.6]) is None
    True
    """
    pos = sum(labels)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(1 for k in order[i:j + 1] if labels[k])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def metrics_of(outcomes: list[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    if n == 0:
        return {"n": 0, "accuracy": None, "log_loss": None, "roc_auc": None}
    correct = sum(o.predicted == o.label for o in outcomes)
    loss = math.fsum(
        -math.log(min(max(o.score, _EPS), 1 - _EPS)) if o.label
        else -math.log(1 - min(max(o.score, _EPS), 1 - _EPS))
        for o in outcomes
    )
    return {
        "n": n,
        "accuracy": correct / n,
        "log_loss": loss / n,
        "roc_auc": roc_auc([o.label for o in outcomes], [o.score for o in outcomes]),
    }


def class_order(classes: Iterable[Any]) -> list[Any]:
    """Classes in a stable order: grouped by type, then by value (integers numerically).

    >>> class_order(["b", 10, "a", 2])
    [2, 10, 'a', 'b']
    """
    return sorted(set(classes), key=lambda c: (type(c).__name__, c))


def multiclass_metrics_of(outcomes: list[Outcome]) -> dict[str, Any]:
    """Accuracy, macro F1 and cross-entropy of multi-class outcomes, River's definitions; an
    outcome with no decision (the model knew no class yet) is skipped, as River's progressive
    validation skips an empty prediction, and counted in ``no_prediction``.

    >>> o = lambda y, p, c: Outcome("m", 1, "e", 0, 0, y, p, c)
    >>> multiclass_metrics_of([o("a", 0.0, None), o("a", 0.8, "a"), o("b", 0.4, "a")])
    {'n': 3, 'no_prediction': 1, 'accuracy': 0.5, 'macro_f1': 0.3333333333333333, \
'log_loss': 0.5697171415941824}
    """
    scored = [o for o in outcomes if o.predicted is not None]
    out: dict[str, Any] = {"n": len(outcomes), "no_prediction": len(outcomes) - len(scored),
                           "accuracy": None, "macro_f1": None, "log_loss": None}
    if not scored:
        return out
    accuracy = river_metrics.Accuracy()
    cross_entropy = river_metrics.CrossEntropy()
    for o in scored:
        accuracy.update(o.label, o.predicted)
        cross_entropy.update(o.label, {o.label: o.score})
    out.update(accuracy=accuracy.get(), macro_f1=_macro_f1(scored), log_loss=cross_entropy.get())
    return out


def _class_tallies(outcomes: list[Outcome]) -> dict[Any, list[int]]:
    """class -> [labels, decisions, correct decisions, labels with no decision] of outcomes."""
    t: dict[Any, list[int]] = {}
    for o in outcomes:
        t.setdefault(o.label, [0, 0, 0, 0])[0] += 1
        if o.predicted is None:
            t[o.label][3] += 1
            continue
        t.setdefault(o.predicted, [0, 0, 0, 0])[1] += 1
        if o.predicted == o.label:
            t[o.label][2] += 1
    return t


def _f1(labels: int, decisions: int, correct: int) -> float:
    """River's per-class F1 (``MacroFBeta`` with beta 1): 0 where precision or recall is 0/0."""
    p = correct / decisions if decisions else 0
    r = correct / labels if labels else 0
    return 2 * p * r / (p + r) if p + r else 0.0


def _macro_f1(scored: list[Outcome]) -> float:
    tallies = _class_tallies(scored)
    return math.fsum(_f1(*tallies[c][:3]) for c in class_order(tallies)) / len(tallies)


def confusion_of(outcomes: list[Outcome]) -> dict[str, Any]:
    """The confusion matrix of multi-class outcomes: a row per true class, a column per decided
    class and a last one for no decision (``null``); each learned label is counted once.

    >>> o = lambda y, c: Outcome("m", 1, "e", 0, 0, y, 0.5, c)
    >>> confusion_of([o("a", None), o("a", "a"), o("b", "a"), o("b", "b")])
    {'rows': ['a', 'b'], 'columns': ['a', 'b', None], 'counts': [[1, 0, 1], [1, 1, 0]]}
    """
    classes = class_order([o.label for o in outcomes]
                          + [o.predicted for o in outcomes if o.predicted is not None])
    col = {c: i for i, c in enumerate(classes)}
    counts = [[0] * (len(classes) + 1) for _ in classes]
    for o in outcomes:
        counts[col[o.label]][len(classes) if o.predicted is None else col[o.predicted]] += 1
    return {"rows": classes, "columns": [*classes, None], "counts": counts}


def per_class_of(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Per class: its labels, those of them served with no decision, the decisions for it, the
    correct ones, and its F1 as macro F1 counts it (over the decided outcomes; None for a class
    that only ever came with no decision, which macro F1 does not count).

    >>> o = lambda y, c: Outcome("m", 1, "e", 0, 0, y, 0.5, c)
    >>> rows = per_class_of([o("a", None), o("a", "a"), o("b", "a"), o("c", None)])
    >>> rows  # doctest: +NORMALIZE_WHITESPACE
    [{'class': 'a', 'labels': 2, 'no_decision': 1, 'decisions': 2, 'correct': 1,
      'f1': 0.6666666666666666},
     {'class': 'b', 'labels': 1, 'no_decision': 0, 'decisions': 0, 'correct': 0, 'f1': 0.0},
     {'class': 'c', 'labels': 1, 'no_decision': 1, 'decisions': 0, 'correct': 0, 'f1': None}]
    """
    tallies = _class_tallies(outcomes)
    return [{"class": c, "labels": t[0], "no_decision": t[3], "decisions": t[1],
             "correct": t[2], "f1": _f1(t[0] - t[3], t[1], t[2]) if t[0] > t[3] or t[1] else None}
            for c in class_order(tallies) for t in [tallies[c]]]


def regression_metrics_of(outcomes: list[Outcome]) -> dict[str, Any]:
    """MAE, RMSE and R² (River's) of regression outcomes, and the mean residual (label minus
    prediction); R² is None where it is undefined (fewer than two labels, or all equal).

    >>> o = lambda y, p: Outcome("m", 1, "e", 0, 0, y, p, p)
    >>> regression_metrics_of([o(1.0, 2.0), o(2.0, 2.0), o(4.0, 3.0)])
    {'n': 3, 'mae': 0.6666666666666666, 'rmse': 0.816496580927726, 'r2': 0.5714285714285716, \
'mean_residual': 0.0}
    """
    n = len(outcomes)
    if n == 0:
        return {"n": 0, "mae": None, "rmse": None, "r2": None, "mean_residual": None}
    mae, rmse, r2 = river_metrics.MAE(), river_metrics.RMSE(), river_metrics.R2()
    for o in outcomes:
        for m in (mae, rmse, r2):
            m.update(o.label, o.predicted)
    defined = n >= 2 and len({o.label for o in outcomes}) >= 2
    return {"n": n, "mae": mae.get(), "rmse": rmse.get(), "r2": r2.get() if defined else None,
            "mean_residual": math.fsum(o.label - o.predicted for o in outcomes) / n}


MEASURES = {"binary": metrics_of, "multiclass": multiclass_metrics_of,
            "regression": regression_metrics_of}
#: Each target's measures in a report's ``final`` and ``rolling`` entries (besides ``n``).
REPORT_METRICS = {"binary": ("accuracy", "log_loss", "roc_auc"),
                  "multiclass": ("accuracy", "macro_f1", "log_loss"),
                  "regression": ("mae", "rmse", "r2", "mean_residual")}


def _sample(outcomes: list[Outcome]) -> dict[str, Any]:
    """Every k-th (event time ms, label, prediction), k the least that keeps SAMPLE_POINTS."""
    every = max(1, math.ceil(len(outcomes) / SAMPLE_POINTS))
    return {"every": every,
            "points": [[o.event_ts, o.label, o.predicted] for o in outcomes[::every]]}


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    k = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[k]


def delay_stats(delays_s: list[float]) -> dict[str, Any]:
    if not delays_s:
        return {"count": 0}
    d = sorted(delays_s)
    hist = []
    for lo, hi in zip(DELAY_EDGES_S, (*DELAY_EDGES_S[1:], math.inf), strict=True):
        hist.append({"from_s": lo, "to_s": None if hi == math.inf else hi,
                     "count": sum(1 for x in d if lo <= x < hi)})
    return {
        "count": len(d), "mean_s": math.fsum(d) / len(d), "p50_s": _quantile(d, 0.5),
        "p90_s": _quantile(d, 0.9), "p99_s": _quantile(d, 0.99), "max_s": d[-1],
        "histogram": hist,
    }


def build_report(
    outcomes: Iterable[Outcome],
    summaries: Iterable[ModelSummary],
    *,
    buckets: int = 40,
    meta: dict[str, Any] | None = None,
    target: str = "binary",
) -> dict[str, Any]:
    """The JSON report of a backtest of a ``target`` stream (deterministic: no wall-clock
    values)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; one of {TARGETS}")
    measure = MEASURES[target]
    by_model: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_model.setdefault(o.model, []).append(o)
    sums = sorted(summaries, key=lambda s: (not s.champion, s.model))
    all_ts = [o.event_ts for os_ in by_model.values() for o in os_]
    t0, t1 = (min(all_ts), max(all_ts)) if all_ts else (0, 0)
    width = max(1, math.ceil((t1 - t0 + 1) / buckets))
    models = []
    for s in sums:
        outs = sorted(by_model.get(s.model, []), key=lambda o: (o.event_ts, o.event_id))
        parts: list[list[Outcome]] = [[] for _ in range(buckets if outs else 0)]
        for o in outs:
            parts[(o.event_ts - t0) // width].append(o)
        rolling = [{"from_ms": lo, "to_ms": lo + width, "from": iso(lo), **measure(part)}
                   for b, part in enumerate(parts) for lo in [t0 + b * width]]
        entry: dict[str, Any] = {
            "model": s.model,
            "champion": s.champion,
            "version": s.version,
            "events": s.counts["events"],
            "labels": s.counts["labels"],
            "learned": s.labels_learned,
            "counts": s.counts,
            "final": measure(outs),
            "rolling_window_quality_at_end": s.quality,
            "rolling": rolling,
            "drift": [{"ts_ms": ts, "ts": iso(ts), "stream": stream, "detector": det,
                       "direction": direction} for ts, stream, det, direction in s.drift],
            "label_delay": delay_stats([(o.label_ts - o.event_ts) / 1000 for o in outs]),
            "feature_drift": {k: {"psi": v[0], "ks": v[1]} for k, v in s.feature_drift.items()},
        }
        if target == "multiclass":
            entry["confusion"] = confusion_of(outs)
            entry["classes"] = per_class_of(outs)
        elif target == "regression":
            entry["sample"] = _sample(outs)
        models.append(entry)
    return {"meta": meta or {}, "target": target,
            "event_time": {"from": iso(t0), "to": iso(t1), "from_ms": t0, "to_ms": t1},
            "models": models}


# -- HTML ----------------------------------------------------------------------------------------

def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


#: Each target's rolling panels: (report key, axis label).
ROLLING_PANELS = {
    "binary": (("roc_auc", "ROC AUC"), ("accuracy", "accuracy")),
    "multiclass": (("accuracy", "accuracy"), ("macro_f1", "macro F1"),
                   ("log_loss", "cross-entropy")),
    "regression": (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²")),
}


def _model_name(m: dict[str, Any]) -> str:
    return f"{m['model']}{' (champion)' if m['champion'] else ''}"


def _class_text(c: Any) -> str:
    return "no decision" if c is None else str(c)


def _plots(report: dict[str, Any], mark_ms: int | None) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("svg")
    matplotlib.rcParams["svg.hashsalt"] = "undertow"
    matplotlib.rcParams["svg.fonttype"] = "none"
    from matplotlib import pyplot as plt

    out = []
    models = report["models"]
    target = report.get("target", "binary")
    panels = ROLLING_PANELS[target]
    t0 = report["event_time"]["from_ms"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3 * len(panels)), sharex=True)
    colors = {}
    for m in models:
        pts = [((r["from_ms"] - t0) / 3.6e6, r) for r in m["rolling"]]
        color = None
        for ax, (key, _) in zip(axes, panels, strict=True):
            xs = [x for x, r in pts if r[key] is not None]
            ys = [r[key] for _, r in pts if r[key] is not None]
            (line,) = ax.plot(xs, ys, marker=".", label=_model_name(m), color=color)
            color = line.get_color()
        colors[m["model"]] = color
        for d in m["drift"]:
            if d["stream"] == "error" and d["direction"] == "up":
                adwin = d["detector"] == "adwin"
                for ax in axes:
                    ax.axvline((d["ts_ms"] - t0) / 3.6e6, color=color,
                               linestyle="-" if adwin else ":", alpha=0.8, linewidth=1.5)
    if mark_ms is not None:
        for ax in axes:
            ax.axvline((mark_ms - t0) / 3.6e6, color="black", linestyle="--", linewidth=1)
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set_ylabel(label)
    axes[-1].set_xlabel(f"event time (hours since {iso(t0)}); vertical lines: a model's "
                        "error-up drift detections (solid ADWIN, dotted Page-Hinkley)"
                        + ("; dashed black: marked time" if mark_ms is not None else ""))
    axes[0].legend(loc="lower left" if target == "binary" else "best", fontsize=8)
    out.append(("Rolling quality over event time", _svg(fig)))
    plt.close(fig)

    if target == "multiclass":
        for m in models:
            out.append((f"Confusion matrix: {_model_name(m)}", _confusion_svg(plt, m)))
    elif target == "regression":
        for m in models:
            out.extend(_regression_svgs(plt, m, t0, mark_ms, colors[m["model"]]))

    fig, ax = plt.subplots(figsize=(10, 3))
    champion = models[0] if models else None
    if champion and champion["label_delay"]["count"]:
        hist = champion["label_delay"]["histogram"]
        labels = [f"<{h['to_s']}s" if h["to_s"] is not None else f">={h['from_s']}s"
                  for h in hist]
        ax.bar(range(len(hist)), [h["count"] for h in hist])
        ax.set_xticks(range(len(hist)), labels, rotation=45, fontsize=8)
    ax.set_ylabel("labels")
    out.append(("Label delay (label time minus event time)", _svg(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    if champion and champion["feature_drift"]:
        names = sorted(champion["feature_drift"])
        ax.barh(names, [champion["feature_drift"][n]["psi"] for n in names])
        ax.axvline(0.2, color="red", linestyle="--", linewidth=1)
    ax.set_xlabel("PSI, recent window against the reference (dashed: 0.2, a common alarm level)")
    out.append(("Feature drift (PSI)", _svg(fig)))
    plt.close(fig)
    return out


def _confusion_svg(plt: Any, m: dict[str, Any]) -> str:
    """A heatmap of one model's confusion matrix: each cell's count, coloured by its share of
    the row (the true class's labels), drawn as vector cells."""
    cm = m["confusion"]
    rows, cols, counts = cm["rows"], cm["columns"], cm["counts"]
    shares = [[c / max(1, sum(r)) for c in r] for r in counts]
    fig, ax = plt.subplots(figsize=(2 + 1.1 * len(cols), 1.2 + 0.6 * max(1, len(rows))))
    if rows:
        ax.pcolormesh(shares, cmap="Blues", vmin=0.0, vmax=1.0, edgecolors="white",
                      linewidth=1)
        for i, r in enumerate(counts):
            for j, c in enumerate(r):
                ax.text(j + 0.5, i + 0.5, str(c), ha="center", va="center", fontsize=9,
                        color="white" if shares[i][j] > 0.5 else "black")
        ax.set_xticks([j + 0.5 for j in range(len(cols))], [_class_text(c) for c in cols],
                      rotation=30, ha="right", fontsize=8)
        ax.set_yticks([i + 0.5 for i in range(len(rows))], [_class_text(c) for c in rows],
                      fontsize=8)
        ax.invert_yaxis()
    ax.set_xlabel("decided class (served)")
    ax.set_ylabel("true class (label)")
    text = _svg(fig)
    plt.close(fig)
    return text


def _regression_svgs(plt: Any, m: dict[str, Any], t0: int, mark_ms: int | None,
                     color: Any) -> list[tuple[str, str]]:
    """Predictions against truth (with the identity line) and residuals over event time (with
    each bucket's mean residual), from the report's sample of the model's outcomes."""
    pts = m["sample"]["points"]
    every = m["sample"]["every"]
    note = "every outcome" if every == 1 else f"one outcome in {every}"
    name = _model_name(m)
    ys = [p[1] for p in pts]
    preds = [p[2] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 6))
    if pts:
        lo, hi = min(min(ys), min(preds)), max(max(ys), max(preds))
        ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1,
                label="prediction = truth")
        ax.plot(ys, preds, linestyle="none", marker=".", markersize=3, alpha=0.5, color=color,
                label=name)
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(f"truth (label); {note}")
    ax.set_ylabel("prediction served")
    out = [(f"Predictions against truth: {name}", _svg(fig))]
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.5))
    if pts:
        ax.plot([(p[0] - t0) / 3.6e6 for p in pts], [y - yhat for y, yhat in zip(ys, preds,
                                                                                  strict=True)],
                linestyle="none", marker=".", markersize=3, alpha=0.4, color=color,
                label="label minus prediction")
        buckets = [r for r in m["rolling"] if r["mean_residual"] is not None]
        ax.plot([((r["from_ms"] + r["to_ms"]) / 2 - t0) / 3.6e6 for r in buckets],
                [r["mean_residual"] for r in buckets], color="black", linewidth=1.5,
                label="mean per bucket")
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.legend(loc="best", fontsize=8)
    if mark_ms is not None:
        ax.axvline((mark_ms - t0) / 3.6e6, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel(f"event time (hours since {iso(t0)}); {note}"
                  + ("; dashed black: marked time" if mark_ms is not None else ""))
    ax.set_ylabel("residual")
    out.append((f"Residuals over event time: {name}", _svg(fig)))
    plt.close(fig)
    return out


#: Each target's columns of the summary table: (key of ``final``, heading).
TABLE_COLUMNS = {
    "binary": (("accuracy", "accuracy"), ("log_loss", "log loss"), ("roc_auc", "ROC AUC")),
    "multiclass": (("accuracy", "accuracy"), ("macro_f1", "macro F1"),
                   ("log_loss", "cross-entropy"), ("no_prediction", "no prediction")),
    "regression": (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"),
                   ("mean_residual", "mean residual")),
}


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return str(v) if isinstance(v, int) else f"{v:.4f}"


def _class_tables(m: dict[str, Any]) -> str:
    """A multi-class model's confusion matrix and per-class counts as HTML tables."""
    e = html.escape
    cm = m["confusion"]
    head = "".join(f"<th>{e(_class_text(c))}</th>" for c in cm["columns"])
    body = "".join(
        f"<tr><th>{e(_class_text(r))}</th>{''.join(f'<td>{n}</td>' for n in row)}</tr>"
        for r, row in zip(cm["rows"], cm["counts"], strict=True))
    per_class = "".join(
        f"<tr><td>{e(_class_text(c['class']))}</td><td>{c['labels']}</td>"
        f"<td>{c['no_decision']}</td><td>{c['decisions']}</td><td>{c['correct']}</td>"
        f"<td>{_fmt(c['f1'])}</td></tr>"
        for c in m["classes"])
    return (f"<h3>{e(_model_name(m))}</h3>"
            f"<table class='confusion'><tr><th>true ↓ decided →</th>{head}</tr>{body}</table>"
            "<table><tr><th>class</th><th>labels</th><th>no decision</th><th>decisions</th>"
            f"<th>correct</th><th>F1</th></tr>{per_class}</table>")


def render_html(report: dict[str, Any], *, title: str = "undertow backtest",
                mark_ms: int | None = None) -> str:
    """A self-contained HTML page of the report (no script, no external resource)."""
    e = html.escape
    target = report.get("target", "binary")
    columns = TABLE_COLUMNS[target]
    rows = []
    for m in report["models"]:
        f = m["final"]
        d = m["label_delay"]
        ups = sum(1 for x in m["drift"] if x["stream"] == "error" and x["direction"] == "up")
        rows.append(
            f"<tr><td>{e(m['model'])}{' ★' if m['champion'] else ''}</td><td>{m['events']}</td>"
            f"<td>{m['learned']}</td>{''.join(f'<td>{_fmt(f[k])}</td>' for k, _ in columns)}"
            f"<td>{ups}</td>"
            f"<td>{_fmt(d.get('p50_s'))}</td><td>{_fmt(d.get('p99_s'))}</td></tr>"
        )
    drift_rows = "".join(
        f"<tr><td>{e(m['model'])}</td><td>{e(x['ts'])}</td><td>{e(x['stream'])}</td>"
        f"<td>{e(x['detector'])}</td><td>{e(x['direction'])}</td></tr>"
        for m in report["models"] for x in m["drift"]
    )
    classes = ""
    if target == "multiclass":
        classes = ("<h2>Confusion matrices and classes</h2><p>Rows: the true class of each "
                   "learned label; columns: the class decided when its event was served ("
                   "no decision: the model knew no class yet).</p>"
                   + "".join(_class_tables(m) for m in report["models"]))
    plots = "".join(f"<h2>{e(t)}</h2><div class='plot'>{svg}</div>"
                    for t, svg in _plots(report, mark_ms))
    et = report["event_time"]
    meta = "".join(f"<li>{e(str(k))}: {e(str(v))}</li>" for k, v in sorted(report["meta"].items()))
    heads = "".join(f"<th>{e(h)}</th>" for _, h in columns)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.plot svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>Event time {e(et['from'])} to {e(et['to'])}. Target: {e(target)}. Every metric scores what
was served for an event, before its label was learned.</p>
<ul>{meta}</ul>
<table><tr><th>model</th><th>events</th><th>labels learned</th>{heads}
<th>error drifts up</th><th>label delay p50 (s)</th><th>p99 (s)</th></tr>
{''.join(rows)}</table>
{classes}
{plots}
<h2>Drift detections</h2>
<table><tr><th>model</th><th>event time</th><th>stream</th><th>detector</th><th>direction</th></tr>
{drift_rows}</table>
</body></html>
"""
