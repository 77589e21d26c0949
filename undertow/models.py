"""The River models a dataflow can serve, by name.

>>> make_model("logreg")
Pipeline (
  StandardScaler (
    with_std=True
  ),
  LogisticRegression (
    optimizer=SGD (
      lr=Constant (
        learning_rate=0.01
      )
    )
    loss=Log (
      weight_pos=1.
      weight_neg=1.
    )
    l2=0.
    l1=0.
    intercept_init=0.
    intercept_lr=Constant (
      learning_rate=0.01
    )
    clip_gradient=1e+12
    initializer=Zeros ()
  )
)
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
