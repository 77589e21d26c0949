"""The champion and its challengers on their own: slots, the four commands, the promotion rule."""

from __future__ import annotations

import pickle

import pytest

from undertow.champions import KEEP_PREVIOUS, Champions, Promotion, PromotionRule


def feed(c: Champions, name: str, outcomes: list[tuple[bool, float]]) -> None:
    """Give slot ``name`` these (label, score) outcomes, as the learner does on each label."""
    slot = c.slots[name]
    for y, score in outcomes:
        slot.quality.update(y, score, score >= 0.5)
        slot.labels_learned += 1
        slot.since_swap += 1


GOOD = [(True, 0.9), (False, 0.1)] * 2  # ROC AUC 1, accuracy 1
BAD = [(True, 0.1), (False, 0.9)] * 2  # ROC AUC 0, accuracy 0


def test_swap_keeps_previous_models_for_rollback_newest_first():
    c = Champions("m", "v1")
    for i in range(2, 7):
        assert c.swap("m", f"v{i}") == f"swapped model 'm' to version {i}"
    slot = c.slots["m"]
    assert (slot.model, slot.version) == ("v6", 6)
    assert slot.previous == [(f"v{i}", i) for i in range(6 - KEEP_PREVIOUS, 6)]
    assert c.swap("m", "v99", 99) == "swapped model 'm' to version 99"
    assert [c.rollback("m") for _ in range(KEEP_PREVIOUS)] == [
        "rolled model 'm' back to version 6", "rolled model 'm' back to version 5",
        "rolled model 'm' back to version 4",
    ]
    assert (slot.model, slot.version, slot.since_swap) == ("v4", 4, 0)
    with pytest.raises(ValueError, match="'m' has no previous version"):
        c.rollback("m")


def test_swap_into_a_new_name_adds_a_challenger_with_its_own_state():
    c = Champions("m", "a", quality_window=4)
    assert c.swap("c", "b") == "added challenger 'c'"
    assert c.swap("d", "e", 7) == "added challenger 'd'"
    assert [(s.name, s.model, s.version) for s in c.slots.values()] == [
        ("m", "a", 1), ("c", "b", 1), ("d", "e", 7)]
    assert c.slots["c"].quality is not c.slots["m"].quality
    assert c.slots["c"].quality.window == 4 and c.champion == "m"


def test_promote_records_both_values_and_remove_keeps_the_champion():
    c = Champions("m", "a", challengers={"c": "b"}, quality_window=4)
    feed(c, "m", BAD)
    feed(c, "c", GOOD)
    assert c.promote("c", ts=1234) == "promoted 'c' over 'm' (command)"
    assert list(c.promotions) == [Promotion(1234, "m", "c", "command", 0.0, 1.0)]
    assert c.promote("c", ts=2000) == "model 'c' is already the champion"
    assert c.champion == "c" and c.served is c.slots["c"] and c.promoted == 1
    with pytest.raises(ValueError, match="'c' is the champion; promote another one first"):
        c.remove("c")
    assert c.remove("m") == "removed challenger 'm'"
    for command in (c.rollback, c.remove):
        with pytest.raises(ValueError, match="no model named 'm'"):
            command("m")
    with pytest.raises(ValueError, match="no model named 'x'"):
        c.promote("x", ts=0)


def test_a_challenger_may_not_take_the_champions_name():
    with pytest.raises(ValueError, match="challenger 'm' has the champion's name"):
        Champions("m", "a", challengers={"m": "b"})


def test_rule_promotes_a_challenger_better_by_the_margin_once_both_windows_are_full():
    rule = PromotionRule("accuracy", margin=0.5, min_labels=4, every=2)
    c = Champions("m", "a", challengers={"c": "b", "d": "e"}, quality_window=4, rule=rule)
    feed(c, "m", BAD[:2])
    feed(c, "c", GOOD[:2])
    feed(c, "d", GOOD[:2])
    assert c.check(ts=10) is None  # windows not full, min_labels not reached
    feed(c, "m", BAD[2:3])
    feed(c, "c", GOOD[2:3])
    assert c.check(ts=20) is None  # the champion has learned 3 labels: not a check (every 2)
    feed(c, "m", BAD[3:])
    feed(c, "c", GOOD[3:])
    c.slots["d"].since_swap = 3  # swapped in recently: not eligible
    promo = c.check(ts=30)
    assert promo == Promotion(30, "m", "c", "accuracy better by 1.0000 > 0.5", 0.0, 1.0)
    assert c.champion == "c" and list(c.promotions) == [promo]


def test_rule_needs_more_than_the_margin_and_log_loss_is_lower_is_better():
    rule = PromotionRule("log_loss", margin=0.1, min_labels=4, every=4)
    c = Champions("m", "a", challengers={"c": "b"}, quality_window=4, rule=rule)
    feed(c, "m", GOOD)
    feed(c, "c", BAD)
    assert c.check(ts=1) is None  # the challenger's log-loss is higher: worse
    c2 = Champions("m", "a", challengers={"c": "b"}, quality_window=4, rule=rule)
    feed(c2, "m", BAD)
    feed(c2, "c", GOOD)
    promo = c2.check(ts=2)
    assert promo is not None and promo.new == "c" and promo.new_value < promo.old_value
    c3 = Champions("m", "a", challengers={"c": "b"}, quality_window=4,
                   rule=PromotionRule("roc_auc", margin=1.0, min_labels=4, every=4))
    feed(c3, "m", BAD)
    feed(c3, "c", GOOD)
    assert c3.check(ts=3) is None  # better by exactly the margin is not more than it


def test_no_rule_or_no_challenger_never_promotes():
    c = Champions("m", "a", quality_window=4, rule=PromotionRule(min_labels=0, every=1))
    feed(c, "m", BAD)
    assert c.check(ts=1) is None
    c = Champions("m", "a", challengers={"c": "b"}, quality_window=4)
    feed(c, "m", BAD)
    feed(c, "c", GOOD)
    assert c.check(ts=1) is None and c.champion == "m"


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "f1"}, "promotion metric must be one of roc_auc, accuracy, log_loss, "
                       "macro_f1, mae, rmse, r2, got 'f1'"),
    ({"margin": -0.1}, "promotion margin and min_labels must be >= 0, every > 0"),
    ({"every": 0}, "promotion margin and min_labels must be >= 0, every > 0"),
])
def test_promotion_rule_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromotionRule(**kwargs)


def test_champions_survive_a_pickle_round_trip():
    rule = PromotionRule("accuracy", margin=0.5, min_labels=4, every=2)
    c = Champions("m", "a", challengers={"c": "b"}, quality_window=4, rule=rule)
    feed(c, "m", BAD)
    feed(c, "c", GOOD[:3])
    c2 = pickle.loads(pickle.dumps(c))
    for x in (c, c2):
        feed(x, "c", GOOD[3:])
        x.slots["m"].labels_learned += 2  # the next check is due at 6 labels
    assert c.check(ts=5) == c2.check(ts=5) == Promotion(
        5, "m", "c", "accuracy better by 1.0000 > 0.5", 0.0, 1.0)


def test_a_regression_rule_promotes_by_mae_where_lower_is_better():
    from undertow.targets import Regression

    rule = PromotionRule("mae", margin=0.5, min_labels=4, every=4)
    c = Champions("champ", "m0", challengers={"close": "m1"}, quality_window=4, rule=rule,
                  target=Regression())
    truth = [1.0, 2.0, 3.0, 4.0]
    for name, offset in (("champ", 2.0), ("close", 0.25)):
        slot = c.slots[name]
        for y in truth:
            slot.quality.observe(y, y + offset)
            slot.labels_learned += 1
            slot.since_swap += 1
    assert (c.slots["champ"].metric("mae"), c.slots["close"].metric("mae")) == (2.0, 0.25)
    assert c.check(ts=9) == Promotion(9, "champ", "close", "mae better by 1.7500 > 0.5", 2.0,
                                      0.25)
    assert c.champion == "close"


def test_a_rule_must_measure_the_target():
    from undertow.targets import Multiclass

    with pytest.raises(ValueError, match="promotion metric 'roc_auc' is not a measure of the "
                                         "multiclass target; one of"):
        Champions("m", "v1", rule=PromotionRule("roc_auc"), target=Multiclass())
