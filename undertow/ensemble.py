"""A served ensemble: the models' own served values combined into the one prediction served.

With ``[ensemble]`` in the stream file the models of ``[[models]]`` become the *components* of an
:class:`Ensemble`; the model step scores each component first (their predictions are shadow
ones), then the ensemble combines the values the components served for that event into its own,
which is the one served. The ensemble is a slot of the learner like a model (its own quality,
drift, version, counts); its model is the :class:`Ensemble` object, which is also what its
checkpoint holds.

Four methods, per target (:mod:`undertow.targets`), over the components that served the event
(a component that failed to score it is left out; with none, there is nothing to serve):

``mean`` / ``weighted``
    binary: the (weighted) mean of ``P(True)``; multi-class: the (weighted) mean of the
    probability dicts, a class missing from a component counting 0; regression: the (weighted)
    mean of the values. ``sum(w * v) / sum(w)`` over the components in their declared order,
    the weights of those that served (``mean`` is every weight 1).
``vote``
    binary: the majority of the decisions, a tie going to the first component's; the served
    ``P(True)`` is the mean of those of the components that voted with the majority, so the
    served score decides what the vote decided. Multi-class: the class most components decided
    (a component with no decision yet abstains), a tie broken by the mean probability, then by
    the first component; the served probabilities are the shares of the votes, the winner
    first. Regression has no vote (a configuration error).
``stack``
    an online *stacker* (a River model) serves from the components' served values, as features
    named by the component (binary: its ``P(True)``; regression: its value; multi-class:
    ``"model:class"`` -> its probability of the class). It learns from the same labels **without
    peeking**: when a label is learned it learns on the components' values *as they were served
    for that event* (the model step keeps them with the pending prediction), never on values
    recomputed after the components have learned.

>>> from undertow.targets import Binary, Multiclass
>>> e = Ensemble("ens", Binary(), "weighted", ("a", "b"), weights=(3.0, 1.0))
>>> e.combine({"a": 0.8, "b": 0.4}), e.combine({"b": 0.4}), e.combine({})
(0.7000000000000001, 0.4, None)
>>> v = Ensemble("ens", Multiclass(), "vote", ("a", "b", "c"))
>>> v.combine({"a": {"x": 0.6, "y": 0.4}, "b": {"y": 0.9, "x": 0.1}, "c": {"x": 0.7}})
{'x': 0.6666666666666666, 'y': 0.3333333333333333}

On its own (a checkpoint, bulk scoring) an :class:`Ensemble` is a River-shaped model: it scores
its component models and combines them (``predict_proba_one`` / ``predict_one``), and
``learn_one`` teaches the stacker on the components' values before they learn, then them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from undertow.models import make_model
from undertow.targets import Target

#: The ways to combine the components' served values.
METHODS = ("mean", "weighted", "vote", "stack")
#: The stacker of ``method = "stack"`` when the stream file names none, per target.
DEFAULT_STACKERS = {
    "binary": "linear_model.LogisticRegression()",
    "multiclass": "linear_model.SoftmaxRegression()",
    # Scaled: a component's values can be far from the label's scale (a tree's first leaves).
    "regression": "preprocessing.StandardScaler() | linear_model.LinearRegression()",
}
DEFAULT_NAME = "ensemble"


class NoComponentScored(RuntimeError):
    """Every component of an ensemble failed to score an event: nothing to combine."""


class Ensemble:
    """The combination of named components' served values for one ``target``.

    ``components`` are the names of the models combined, in order (the order breaks ties and
    sums); ``weights`` one per component (``weighted`` only); ``stacker`` the River model of
    ``stack``. :meth:`combine` and :meth:`learn` are what the model step calls, with the values
    the components served; ``models`` (name -> model, set by :meth:`bind`) are the component
    models themselves, for scoring on its own.
    """

    def __init__(
        self,
        name: str,
        target: Target,
        method: str,
        components: Sequence[str],
        *,
        weights: Sequence[float] | None = None,
        stacker: Any = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"ensemble method must be one of {', '.join(METHODS)}, "
                             f"got {method!r}")
        if not components or len(set(components)) != len(components):
            raise ValueError(f"an ensemble needs distinct components, got {list(components)}")
        if method == "vote" and target.name == "regression":
            raise ValueError("a regression ensemble cannot vote: use mean, weighted or stack")
        if (weights is None) != (method != "weighted"):
            raise ValueError("weights are given with the weighted method, and only with it")
        if weights is not None and (len(weights) != len(components)
                                    or not all(w > 0 for w in weights)):
            raise ValueError(f"weights must be one number > 0 per component "
                             f"({len(components)}), got {list(weights)}")
        if (stacker is None) != (method != "stack"):
            raise ValueError("a stacker is given with the stack method, and only with it")
        self.name = name
        self.target = target
        self.method = method
        self.components = tuple(components)
        self.weights = dict(zip(self.components, weights or [1.0] * len(self.components),
                                strict=True))
        self.stacker = stacker
        self.models: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"Ensemble({self.name!r}, {self.target.name}, {self.method!r}, "
                f"{list(self.components)})")

    def bind(self, models: Mapping[str, Any]) -> None:
        """The component models by name (the model step's slots): what scoring on its own asks."""
        self.models = {n: models[n] for n in self.components if n in models}

    # -- what the model step calls ------------------------------------------------------------

    def combine(self, served: Mapping[str, Any]) -> Any:
        """The ensemble's served value from the components' (name -> served value; other names
        are ignored, a missing component failed); ``None`` when no component served."""
        values = [(n, served[n]) for n in self.components if n in served]
        if not values:
            return None
        method = self.method
        if method == "stack":
            return self.target.serve(self.stacker, self.features(values))
        if method == "vote":
            return self._vote(values)
        return self._mean(values)

    def learn(self, served: Mapping[str, Any], y: Any) -> None:
        """Learn from a label on the values the components served for its event (``stack``:
        the stacker learns; the other methods have nothing to learn)."""
        if self.method != "stack":
            return
        values = [(n, served[n]) for n in self.components if n in served]
        if values:
            self.stacker.learn_one(self.features(values), y)

    def features(self, values: Sequence[tuple[str, Any]]) -> dict[str, float]:
        """The stacker's input: each component's served value, named by the component
        (multi-class: ``"model:class"`` -> its probability)."""
        if self.target.name == "multiclass":
            return {f"{n}:{c}": p for n, proba in values for c, p in proba.items()}
        return {n: v for n, v in values}

    # -- the methods ----------------------------------------------------------------------------

    def _mean(self, values: list[tuple[str, Any]]) -> Any:
        w = self.weights
        total = sum(w[n] for n, _ in values)
        if self.target.name != "multiclass":
            return sum(w[n] * v for n, v in values) / total
        classes: dict[Any, None] = {}
        for _, proba in values:
            classes.update(dict.fromkeys(proba))
        return {c: sum(w[n] * proba.get(c, 0.0) for n, proba in values) / total
                for c in classes}

    def _vote(self, values: list[tuple[str, Any]]) -> Any:
        decide = self.target.decide
        if self.target.name == "binary":
            decisions = [(decide(v), v) for _, v in values]
            yes = sum(1 for d, _ in decisions if d)
            no = len(decisions) - yes
            winner = decisions[0][0] if yes == no else yes > no
            side = [v for d, v in decisions if d == winner]
            score = sum(side) / len(side)
            # The mean of scores on one side of the threshold is on that side, but for rounding.
            return score if decide(score) == winner else side[0]
        votes: dict[Any, int] = {}
        first: dict[Any, int] = {}
        for i, (_, proba) in enumerate(values):
            c = decide(proba)
            if c is None:  # a component that knows no class yet abstains
                continue
            votes[c] = votes.get(c, 0) + 1
            first.setdefault(c, i)
        if not votes:
            return {}
        mean = self._mean(values)
        winner = max(votes, key=lambda c: (votes[c], mean.get(c, 0.0), -first[c]))
        n = sum(votes.values())
        shares = {winner: votes[winner] / n}
        shares.update((c, k / n) for c, k in votes.items() if c != winner)
        return shares

    # -- on its own: a River-shaped model --------------------------------------------------------

    def _served(self, x: dict[str, Any]) -> dict[str, Any]:
        serve = self.target.serve
        out = {}
        for n, m in self.models.items():
            try:
                out[n] = serve(m, x)
            except Exception:  # as in the model step: the ensemble serves from the others
                continue
        return out

    def _predict(self, x: dict[str, Any]) -> Any:
        served = self.combine(self._served(x))
        if served is None:
            raise NoComponentScored(f"no component of ensemble {self.name!r} scored the event")
        return served

    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]:
        if self.target.name == "regression":
            raise TypeError(f"ensemble {self.name!r} is a regression: use predict_one")
        served = self._predict(x)
        if self.target.name == "binary":
            return {False: 1.0 - served, True: served}
        return served  # type: ignore[no-any-return]

    def predict_one(self, x: dict[str, Any]) -> Any:
        return self.target.decide(self._predict(x))

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        self.learn(self._served(x), y)
        for m in self.models.values():
            m.learn_one(x, y)


def resolve_components(name: str, declared: Sequence[str], served: Sequence[str]) -> tuple[str,
                                                                                       ...]:
    """The components of ensemble ``name``: the ``declared`` models (none: every ``served``
    model), each of which must be served; ``name`` must not be a served model's. Raises
    ValueError naming what is wrong (the stream's models may have been replaced by settings)."""
    if name in served:
        raise ValueError(f"[ensemble] name: {name!r} is also a model's name")
    components = tuple(declared) or tuple(served)
    for n in components:
        if n not in served:
            raise ValueError(f"[ensemble] models: {n!r} is not among the models served "
                             f"({', '.join(served)})")
    return components


def from_stream(decl: Any, target: Target, served: Sequence[str], *, seed: int = 42) -> Ensemble:
    """The ensemble a stream file's ``[ensemble]`` (:class:`~undertow.stream.EnsembleDecl`)
    declares, over the ``served`` models (the stream's, or those settings put in their place).
    Raises ValueError naming the key at fault: a start-up check as well as the builder."""
    components = resolve_components(decl.name, decl.models, served)
    if decl.weights is not None and len(decl.weights) != len(components):
        raise ValueError(f"[ensemble] weights: {len(decl.weights)} weights for "
                         f"{len(components)} models served ({', '.join(components)})")
    stacker = None
    if decl.method == "stack":
        stacker = make_model(decl.stacker or DEFAULT_STACKERS[target.name], seed=seed)
    return Ensemble(decl.name, target, decl.method, components, weights=decl.weights,
                    stacker=stacker)
