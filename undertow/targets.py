"""What a label is, and everything that follows from it: how a model is asked, what is served,
what the error is, how quality is measured and how a prediction is written.

Three targets, chosen by ``target`` in the stream file's ``[labels]``:

``binary``
    The label is a boolean. The served value is ``P(True)`` (``predict_proba_one``), written as
    ``"score"``; the decision ``"predicted"`` is ``score > threshold``: *strictly* above, so a
    fresh model, which scores exactly 0.5, decides nothing positive until it has learned
    (``score >= 0.5`` would flag every event of a cold start: a fraud system declining every
    payment). The error is ``|y - score|``.
``multiclass``
    The label is a string or an integer; the classes are learned as they come, or listed
    (``classes``) so that an unknown one is a dead letter. The served value is the probability of
    each class (``"proba"``), the decision the most probable one (River's own tie rule:
    ``max(proba, key=proba.get)``; no decision, ``None``, before the model knows a class). The
    error is 0/1.
``regression``
    The label is a number; the served value is ``predict_one``, written as ``"predicted"``
    (``null`` from a model that predicts nothing before it has learned, such as
    ``forest.AMFRegressor``: then, as in River's progressive validation, it is not measured and,
    in an ensemble, not combined). The error is ``|y - predicted|``.

>>> t = target("multiclass")
>>> t.decide({"a": 0.2, "b": 0.7, "c": 0.1}), t.error({"a": 0.2, "b": 0.7}, "a")
('b', 1.0)
>>> target("binary").decide(0.5), target("binary").decide(0.51)
(False, True)
>>> target("regression").error(2.5, 4.0)
1.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from undertow.quality import BinaryQuality, MulticlassQuality, RegressionQuality

TARGETS = ("binary", "multiclass", "regression")


class Target:
    """The behaviour of one kind of label (a stateless singleton per kind, or with a threshold).

    ``metrics`` names the rolling quality measures, ``lower_is_better`` those a promotion rule
    minimises; ``quality(window)`` makes the rolling quality of one model.
    """

    name: str = ""
    metrics: tuple[str, ...] = ()
    lower_is_better: frozenset[str] = frozenset()

    def serve(self, model: Any, x: dict[str, Any]) -> Any:
        """What the model serves for ``x`` (a number, or a class -> probability dict)."""
        raise NotImplementedError

    def decide(self, served: Any) -> Any:
        """The decision of a served value (a boolean, a class, a number)."""
        raise NotImplementedError

    def error(self, served: Any, y: Any) -> float:
        """The served error against the truth: what concept drift watches."""
        raise NotImplementedError

    def signal(self, served: Any) -> float:
        """One number per served value for the score-drift detector."""
        raise NotImplementedError

    def true_score(self, served: Any, y: Any) -> float:
        """One number per learned label for an :class:`~undertow.schema.Outcome`'s ``score``:
        ``P(True)`` (binary), the probability given to the true class (multi-class), the
        prediction (regression)."""
        raise NotImplementedError

    def quality(self, window: int) -> Any:
        raise NotImplementedError

    def serve_many(self, model: Any, frame: Any, n: int) -> list[Any] | None:
        """Served values of a batch (a pandas frame) with the model's mini-batch method, or None
        where it has none (bulk scoring then asks row by row)."""
        return None


class Binary(Target):
    name = "binary"
    metrics = ("accuracy", "log_loss", "roc_auc")
    lower_is_better = frozenset({"log_loss"})

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def serve(self, model: Any, x: dict[str, Any]) -> float:
        return float(model.predict_proba_one(x).get(True, 0.0))

    def decide(self, served: float) -> bool:
        return served > self.threshold

    def error(self, served: float, y: bool) -> float:
        return abs(float(y) - served)

    def signal(self, served: float) -> float:
        return served

    def true_score(self, served: float, y: bool) -> float:
        return served

    def quality(self, window: int) -> BinaryQuality:
        return BinaryQuality(window, self.threshold)

    def serve_many(self, model: Any, frame: Any, n: int) -> list[Any] | None:
        many = getattr(model, "predict_proba_many", None)
        if many is None:
            return None
        probs = many(frame)
        return [float(v) for v in probs[True].tolist()] if True in probs else [0.0] * n


class Multiclass(Target):
    name = "multiclass"
    metrics = ("accuracy", "macro_f1", "log_loss")
    lower_is_better = frozenset({"log_loss"})

    def __init__(self, classes: Sequence[Any] = ()) -> None:
        self.classes = tuple(classes)

    def serve(self, model: Any, x: dict[str, Any]) -> dict[Any, float]:
        return {c: float(p) for c, p in model.predict_proba_one(x).items()}

    def decide(self, served: dict[Any, float]) -> Any:
        return max(served, key=served.get) if served else None  # type: ignore[arg-type]

    def error(self, served: dict[Any, float], y: Any) -> float:
        return 0.0 if self.decide(served) == y else 1.0

    def signal(self, served: dict[Any, float]) -> float:
        return max(served.values()) if served else 0.0

    def true_score(self, served: dict[Any, float], y: Any) -> float:
        return served.get(y, 0.0)

    def quality(self, window: int) -> MulticlassQuality:
        return MulticlassQuality(window)

    def serve_many(self, model: Any, frame: Any, n: int) -> list[Any] | None:
        many = getattr(model, "predict_proba_many", None)
        if many is None:
            return None
        probs = many(frame)
        cols = list(probs.columns)
        return [{c: float(v) for c, v in zip(cols, row, strict=True) if not math.isnan(v)}
                for row in probs.itertuples(index=False, name=None)]


class Regression(Target):
    name = "regression"
    metrics = ("mae", "rmse", "r2")
    lower_is_better = frozenset({"mae", "rmse"})

    def serve(self, model: Any, x: dict[str, Any]) -> float | None:
        y = model.predict_one(x)  # None: a model that predicts nothing before it has learned
        return None if y is None else float(y)

    def decide(self, served: float) -> float:
        return served

    def error(self, served: float, y: float) -> float:
        return abs(y - served)

    def signal(self, served: float) -> float:
        return served

    def true_score(self, served: float, y: float) -> float:
        return served

    def quality(self, window: int) -> RegressionQuality:
        return RegressionQuality(window)

    def serve_many(self, model: Any, frame: Any, n: int) -> list[Any] | None:
        many = getattr(model, "predict_many", None)
        if many is None:
            return None
        return [float(v) for v in many(frame).tolist()]


def target(name: str, *, threshold: float = 0.5, classes: Sequence[Any] = ()) -> Target:
    """The target called ``name`` (``binary``, ``multiclass`` or ``regression``)."""
    if name == "binary":
        return Binary(threshold)
    if name == "multiclass":
        return Multiclass(classes)
    if name == "regression":
        return Regression()
    raise ValueError(f"unknown target {name!r}; one of {TARGETS}")
