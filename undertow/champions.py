"""The champion and its challengers: named model slots, the commands that change them, and the
rule that promotes a challenger which beats the champion.

A model step serves one model (the *champion*) and scores any number of *challengers* in shadow
on the same events; all of them learn from the same labels (:mod:`undertow.learning` does the
serving and learning). :class:`Champions` keeps the slots by name and applies the four control
commands: ``swap`` a model into a slot (a new name adds a challenger), ``rollback`` a swap,
``promote`` a challenger to champion, ``remove`` a challenger. A :class:`PromotionRule` promotes
by itself a challenger that beats the champion on rolling quality.

>>> c = Champions("champ", "model-a", quality_window=10)
>>> c.swap("champ", "model-b")
"swapped model 'champ' to version 2"
>>> c.swap("shadow", "model-c")
"added challenger 'shadow'"
>>> c.promote("shadow", ts=1000)
"promoted 'shadow' over 'champ' (command)"
>>> c.champion, c.rollback("champ"), c.slots["champ"].model
('shadow', "rolled model 'champ' back to version 1", 'model-a')
>>> [(p.ts, p.old, p.new, p.reason) for p in c.promotions]
[(1000, 'champ', 'shadow', 'command')]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from undertow.drift import ERROR_PH_THRESHOLD, ConceptDrift
from undertow.targets import Binary, Target

#: Models a slot keeps for ``rollback`` (newest last), and promotions kept for read-outs.
KEEP_PREVIOUS = 3
KEEP_PROMOTIONS = 100

#: Every target's rolling measures (a rule's metric must be one of its stream's target's).
PROMOTION_METRICS = ("roc_auc", "accuracy", "log_loss", "macro_f1", "mae", "rmse", "r2")


@dataclass(slots=True)
class ModelSlot:
    """One named model of the step: the champion (served) or a challenger (shadow-scored).

    Each slot has its own quality and concept-drift state, computed on its own scores of the same
    events and labels. ``previous`` keeps the models swapped out, newest last, for ``rollback``.
    """

    name: str
    model: Any
    version: int
    quality: Any  # the target's rolling quality (undertow.quality)
    error_drift: ConceptDrift = field(
        default_factory=lambda: ConceptDrift(ph_threshold=ERROR_PH_THRESHOLD))
    score_drift: ConceptDrift = field(default_factory=ConceptDrift)
    labels_learned: int = 0
    since_swap: int = 0
    predictions: int = 0
    last_learn_at: float | None = None
    previous: list[tuple[Any, int]] = field(default_factory=list)

    def metric(self, name: str) -> float:
        """The current value of one rolling quality metric (``roc_auc``, ``accuracy``, ...)."""
        return float(getattr(self.quality, name))


@dataclass(frozen=True)
class PromotionRule:
    """Swap in a challenger that beats the champion by ``margin`` on ``metric``.

    Checked every ``every`` learned labels; a challenger is eligible once it and the champion
    have each learned ``min_labels`` labels since they were put in their slots, and both rolling
    windows are full, so both are judged on the same last ``quality_window`` labels.
    """

    metric: str = "roc_auc"
    margin: float = 0.01
    min_labels: int = 1000
    every: int = 500

    def __post_init__(self) -> None:
        if self.metric not in PROMOTION_METRICS:
            raise ValueError(f"promotion metric must be one of {', '.join(PROMOTION_METRICS)}, "
                             f"got {self.metric!r}")
        if self.margin < 0 or self.min_labels < 0 or self.every <= 0:
            raise ValueError("promotion margin and min_labels must be >= 0, every > 0")


class Promotion(NamedTuple):
    """A champion change, by rule or by command, at an event time."""

    ts: int
    old: str
    new: str
    reason: str
    old_value: float
    new_value: float


class Champions:
    """The named models of one step: the champion ``name`` and its challengers.

    ``quality_window`` is the window of every slot's rolling quality; ``rule`` (optional) is
    checked by :meth:`check` after each learned label. ``promotions`` keeps the latest
    :data:`KEEP_PROMOTIONS` champion changes; ``promoted`` counts all of them.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        *,
        version: int = 1,
        challengers: dict[str, Any] | None = None,
        quality_window: int = 1000,
        rule: PromotionRule | None = None,
        target: Target | None = None,
    ) -> None:
        self.quality_window = quality_window
        self.target = target if target is not None else Binary()
        if rule is not None and rule.metric not in self.target.metrics:
            raise ValueError(f"promotion metric {rule.metric!r} is not a measure of the "
                             f"{self.target.name} target; one of {self.target.metrics}")
        self.rule = rule
        self.slots: dict[str, ModelSlot] = {}
        self.champion = name
        self._add(name, model, version)
        for cname, cmodel in (challengers or {}).items():
            if cname in self.slots:
                raise ValueError(f"challenger {cname!r} has the champion's name")
            self._add(cname, cmodel, 1)
        self.promotions: deque[Promotion] = deque(maxlen=KEEP_PROMOTIONS)
        self.promoted = 0

    def _add(self, name: str, model: Any, version: int) -> ModelSlot:
        slot = ModelSlot(name, model, version, self.target.quality(self.quality_window))
        self.slots[name] = slot
        return slot

    @property
    def served(self) -> ModelSlot:
        """The champion's slot."""
        return self.slots[self.champion]

    # -- the four commands ----------------------------------------------------------------------

    def swap(self, name: str, model: Any, version: int | None = None) -> str:
        """Put ``model`` in slot ``name`` (a new name becomes a challenger); keep the old one for
        :meth:`rollback`. The version is ``version`` or the slot's next one."""
        slot = self.slots.get(name)
        if slot is None:
            self._add(name, model, version if version is not None else 1)
            return f"added challenger {name!r}"
        slot.previous.append((slot.model, slot.version))
        del slot.previous[:-KEEP_PREVIOUS]
        slot.model = model
        slot.version = version if version is not None else slot.version + 1
        slot.since_swap = 0
        return f"swapped model {name!r} to version {slot.version}"

    def rollback(self, name: str) -> str:
        """Restore the model that the last :meth:`swap` of ``name`` replaced, as it was then."""
        slot = self._slot(name)
        if not slot.previous:
            raise ValueError(f"model {name!r} has no previous version to roll back to")
        slot.model, slot.version = slot.previous.pop()
        slot.since_swap = 0
        return f"rolled model {name!r} back to version {slot.version}"

    def promote(self, name: str, *, ts: int, reason: str = "command") -> str:
        """Serve ``name`` from event time ``ts`` on; the old champion becomes a challenger."""
        new = self._slot(name)
        if name == self.champion:
            return f"model {name!r} is already the champion"
        old = self.champion
        metric = self.rule.metric if self.rule is not None else "roc_auc"
        self.promotions.append(
            Promotion(ts, old, name, reason, self.slots[old].metric(metric), new.metric(metric))
        )
        self.promoted += 1
        self.champion = name
        return f"promoted {name!r} over {old!r} ({reason})"

    def remove(self, name: str) -> str:
        """Drop the challenger ``name`` (never the champion)."""
        self._slot(name)
        if name == self.champion:
            raise ValueError(f"model {name!r} is the champion; promote another one first")
        del self.slots[name]
        return f"removed challenger {name!r}"

    def _slot(self, name: str) -> ModelSlot:
        slot = self.slots.get(name)
        if slot is None:
            raise ValueError(f"no model named {name!r}")
        return slot

    # -- the rule -------------------------------------------------------------------------------

    def check(self, ts: int) -> Promotion | None:
        """Apply the promotion rule after a learned label; the promotion made, if any."""
        rule = self.rule
        champ = self.slots[self.champion]
        if rule is None or len(self.slots) < 2 or champ.labels_learned % rule.every:
            return None
        window = self.quality_window
        if champ.since_swap < rule.min_labels or len(champ.quality) < window:
            return None
        # Higher is better after the sign.
        sign = -1.0 if rule.metric in self.target.lower_is_better else 1.0
        best, best_gain = None, rule.margin
        champ_value = sign * champ.metric(rule.metric)
        for slot in self.slots.values():
            if slot is champ or slot.since_swap < rule.min_labels or len(slot.quality) < window:
                continue
            gain = sign * slot.metric(rule.metric) - champ_value
            if gain > best_gain:
                best, best_gain = slot.name, gain
        if best is None:
            return None
        self.promote(best, ts=ts,
                     reason=f"{rule.metric} better by {best_gain:.4f} > {rule.margin}")
        return self.promotions[-1]
