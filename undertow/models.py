"""The River models a dataflow can serve, by name.

>>> [type(step).__name__ for step in make_model("logreg").steps.values()]
['StandardScaler', 'LogisticRegression']
>>> type(make_model("hat")).__name__
'HoeffdingAdaptiveTreeClassifier'
"""

from __future__ import annotations

from typing import Any

from river import forest, linear_model, naive_bayes, preprocessing, tree

MODELS = ("logreg", "hat", "arf", "nb")


def make_model(name: str, *, seed: int = 42) -> Any:
    """A fresh, untrained model: ``logreg`` (scaled logistic regression), ``hat`` (Hoeffding
    adaptive tree), ``arf`` (adaptive random forest of 10 trees) or ``nb`` (Gaussian naive
    Bayes)."""
    if name == "logreg":
        return preprocessing.StandardScaler() | linear_model.LogisticRegression()
    if name == "hat":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    if name == "arf":
        return forest.ARFClassifier(n_models=10, seed=seed)
    if name == "nb":
        return naive_bayes.GaussianNB()
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
