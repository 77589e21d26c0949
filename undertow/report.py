"""A backtest's report: per-model quality over event time, drift, label delays (JSON and HTML).

Everything here is computed from the model step's own records of a replay: one
:class:`~undertow.schema.Outcome` per learned label per model (the score that was *served* for
its event, and the label), and one :class:`~undertow.schema.ModelSummary` per model at the end.
So the report is leak-free by construction: it scores exactly what was served, before each label
was learned.

* **Final metrics** over all outcomes of a model: accuracy, log loss (probabilities clipped to
  [1e-15, 1 - 1e-15], as River does) and the exact ROC AUC (the Mann-Whitney statistic, ties
  counted one half; River's ``ROCAUC`` approximates with thresholds).
* **Rolling metrics over event time**: the outcomes are bucketed by their *event* time into
  ``buckets`` equal spans; each bucket gets the same three metrics (``null`` where a bucket has
  no outcomes, or one class only for ROC AUC).
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

from undertow.schema import ModelSummary, Outcome

_EPS = 1e-15
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
) -> dict[str, Any]:
    """The JSON report of a backtest (deterministic: no wall-clock values)."""
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
        rolling = []
        for b in range(buckets if outs else 0):
            lo = t0 + b * width
            part = [o for o in outs if lo <= o.event_ts < lo + width]
            rolling.append({"from_ms": lo, "to_ms": lo + width, "from": iso(lo),
                            **metrics_of(part)})
        models.append({
            "model": s.model,
            "champion": s.champion,
            "version": s.version,
            "events": s.counts["events"],
            "labels": s.counts["labels"],
            "learned": s.labels_learned,
            "counts": s.counts,
            "final": metrics_of(outs),
            "rolling_window_quality_at_end": s.quality,
            "rolling": rolling,
            "drift": [{"ts_ms": ts, "ts": iso(ts), "stream": stream, "detector": det,
                       "direction": direction} for ts, stream, det, direction in s.drift],
            "label_delay": delay_stats([(o.label_ts - o.event_ts) / 1000 for o in outs]),
            "feature_drift": {k: {"psi": v[0], "ks": v[1]} for k, v in s.feature_drift.items()},
        })
    return {"meta": meta or {}, "event_time": {"from": iso(t0), "to": iso(t1),
                                               "from_ms": t0, "to_ms": t1}, "models": models}


# -- HTML ----------------------------------------------------------------------------------------

def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _plots(report: dict[str, Any], mark_ms: int | None) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("svg")
    matplotlib.rcParams["svg.hashsalt"] = "undertow"
    matplotlib.rcParams["svg.fonttype"] = "none"
    from matplotlib import pyplot as plt

    out = []
    models = report["models"]
    t0 = report["event_time"]["from_ms"]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for m in models:
        pts = [((r["from_ms"] - t0) / 3.6e6, r) for r in m["rolling"]]
        color = None
        for ax, key in zip(axes, ("roc_auc", "accuracy"), strict=True):
            xs = [x for x, r in pts if r[key] is not None]
            ys = [r[key] for _, r in pts if r[key] is not None]
            name = f"{m['model']}{' (champion)' if m['champion'] else ''}"
            (line,) = ax.plot(xs, ys, marker=".", label=name, color=color)
            color = line.get_color()
        for d in m["drift"]:
            if d["stream"] == "error" and d["direction"] == "up":
                adwin = d["detector"] == "adwin"
                for ax in axes:
                    ax.axvline((d["ts_ms"] - t0) / 3.6e6, color=color,
                               linestyle="-" if adwin else ":", alpha=0.8, linewidth=1.5)
    if mark_ms is not None:
        for ax in axes:
            ax.axvline((mark_ms - t0) / 3.6e6, color="black", linestyle="--", linewidth=1)
    axes[0].set_ylabel("ROC AUC")
    axes[1].set_ylabel("accuracy")
    axes[1].set_xlabel(f"event time (hours since {iso(t0)}); vertical lines: a model's error-up "
                       "drift detections (solid ADWIN, dotted Page-Hinkley)"
                       + ("; dashed black: marked time" if mark_ms is not None else ""))
    axes[0].legend(loc="lower left", fontsize=8)
    out.append(("Rolling quality over event time", _svg(fig)))
    plt.close(fig)

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


def render_html(report: dict[str, Any], *, title: str = "undertow backtest",
                mark_ms: int | None = None) -> str:
    """A self-contained HTML page of the report (no script, no external resource)."""
    e = html.escape
    rows = []
    for m in report["models"]:
        f = m["final"]
        d = m["label_delay"]
        ups = sum(1 for x in m["drift"] if x["stream"] == "error" and x["direction"] == "up")

        def fmt(v: Any) -> str:
            return "–" if v is None else f"{v:.4f}"

        rows.append(
            f"<tr><td>{e(m['model'])}{' ★' if m['champion'] else ''}</td><td>{m['events']}</td>"
            f"<td>{m['learned']}</td><td>{fmt(f['accuracy'])}</td><td>{fmt(f['log_loss'])}</td>"
            f"<td>{fmt(f['roc_auc'])}</td><td>{ups}</td>"
            f"<td>{fmt(d.get('p50_s'))}</td><td>{fmt(d.get('p99_s'))}</td></tr>"
        )
    drift_rows = "".join(
        f"<tr><td>{e(m['model'])}</td><td>{e(x['ts'])}</td><td>{e(x['stream'])}</td>"
        f"<td>{e(x['detector'])}</td><td>{e(x['direction'])}</td></tr>"
        for m in report["models"] for x in m["drift"]
    )
    plots = "".join(f"<h2>{e(t)}</h2><div class='plot'>{svg}</div>"
                    for t, svg in _plots(report, mark_ms))
    et = report["event_time"]
    meta = "".join(f"<li>{e(str(k))}: {e(str(v))}</li>" for k, v in sorted(report["meta"].items()))
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
<p>Event time {e(et['from'])} to {e(et['to'])}. Every metric scores what was served for an
event, before its label was learned.</p>
<ul>{meta}</ul>
<table><tr><th>model</th><th>events</th><th>labels learned</th><th>accuracy</th><th>log loss</th>
<th>ROC AUC</th><th>error drifts up</th><th>label delay p50 (s)</th><th>p99 (s)</th></tr>
{''.join(rows)}</table>
{plots}
<h2>Drift detections</h2>
<table><tr><th>model</th><th>event time</th><th>stream</th><th>detector</th><th>direction</th></tr>
{drift_rows}</table>
</body></html>
"""
