"""The River models a dataflow can serve, by name.

>>> [type(step).__name__ for step in make_model("logreg").steps.values()]
['StandardScaler', 'LogisticRegression']
>>> type(make_model("hat")).__name__
'HoeffdingAdaptiveTreeClassifier'
"""

from __future__ import annotations

from typing import Any

from river import linear_model, preprocessing, tree

MODELS = ("logreg", "hat")


def make_model(name: str, *, seed: int = 42) -> Any:
    """A fresh, untrained model: ``logreg`` or ``hat`` (Hoeffding adaptive tree)."""
    if name == "logreg":
        return preprocessing.StandardScaler() | linear_model.LogisticRegression()
    if name == "hat":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
