"""A third stream, like the Adult census-income data: survey answers and whether income > 50K.

The real Adult data set cannot be downloaded here, so this module generates a stream like it,
deterministically. It is a survey panel: a **latent person** enters the panel (some before the
generated span starts), is interviewed about once a year (365 days, give or take three weeks)
until they leave it (15 % a year) or pass 90, and each interview inside the four generated years
is one event. So a person appears a few times (about 2.5 events on average, up to 5), ageing a
year between visits; per-person rolling features (surveys so far, mean hours, last capital gain)
and per-occupation or per-country rolling means make sense on it.

**The person.** Sex (67 % male), native country (the dozen most frequent in Adult, the rest
``"Other"``; 91 % ``United-States``) and race (given the country) are drawn once; so are a latent
*wealth* ``w ~ N(0, 1)``, the education the person will reach (Adult's frequencies of the 16
levels), and the person's usual weekly hours. At each interview:

* ``age`` is a year more than at the last one; ``education`` is the person's final level capped
  by what the age allows (a 19-year-old headed for a Bachelors answers ``Some-college``), and
  ``education_num`` its Adult code (1 ``Preschool`` .. 16 ``Doctorate``);
* ``occupation`` is drawn (with a uniform fixed per person, so it changes only when its odds do)
  from Adult's frequencies tilted by education (professionals and managers have more of it,
  labourers less), by sex and by youth; ``workclass`` from Adult's, tilted by occupation;
* ``marital_status`` evolves from an age-dependent start by yearly transitions (marriage,
  separation, divorce, widowhood, remarriage); ``relationship`` follows from it, sex and age
  (``Husband``/``Wife`` when married, ``Own-child`` for the young never-married, ...);
* ``hours_per_week``: 40 for many, else around the person's usual hours (more for managers,
  farmers, the self-employed and the wealthy; fewer for the young, the old and in service jobs);
* ``capital_gain`` is 0 for most (about 92 %); the odds of a gain rise with wealth, education and
  age, and wealthy people's gains are the large amounts of Adult (5 000 to 99 999), others' the
  small ones; ``capital_loss`` likewise (about 5 %, 1 000 to 2 600), never with a gain.

**The label**, ``high_income`` (income above 50K that year), is drawn per interview from a
logistic model: log-odds rise with age up to about 50 (and fall after), 0.4 per education level,
with the occupation (managers +0.9 .. private household service -2.5), 0.04 per weekly hour above
40, +2.3 when married (Adult's strongest signal, through ``relationship`` too), +4.5 for a capital
gain of 5 000 or more (+0.3 for a smaller one), +0.7 for a capital loss, smaller effects of
workclass, sex, race and country, and 0.4 per unit of the latent wealth, which the features see
only through its consequences. The base rate is about 24 %, as in Adult. The true probabilities
rank the labels with a ROC AUC of 0.90; a scaled logistic regression learning progressively from
the delayed labels, on the event's own numbers and one-hot categories (no occupation, linear in
age), reaches about 0.85, a constant model 0.5; the rolling features of
:file:`streams/income.toml` add what a person's history, occupation and country say.

**Labels** arrive after their interview: the delay is log-normal (median 2 hours; 90 % within
12 hours, about 4 % after a day), at least 2 minutes and at most 3 days (a dataflow whose label
TTL is shorter, such as the default day, expires those events before their labels come:
``UNDERTOW_LABEL_TTL_S=259200`` learns them all). 3 % of interviews are never labelled. Events
are in time order with ids in that order; labels come in their events' order (not in label-time
order).

>>> evs, lbs = generate_income(seed=1, n_events=50)
>>> len(evs), sorted(evs[0]) == sorted(EVENT_FIELDS)
(50, True)
>>> all(lb["ts"] > ev["ts"] for ev in evs for lb in lbs if lb["event_id"] == ev["event_id"])
True
>>> generate_income(seed=1, n_events=50) == (evs, lbs)
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
SPAN_MS = 4 * YEAR_MS  # the generated span: events have START_MS <= ts < START_MS + SPAN_MS
MAX_AGE = 90
MIN_AGE = 17
UNLABELLED = 0.03
MIN_DELAY_MS = 2 * 60_000
MAX_DELAY_MS = 3 * DAY_MS

EVENT_FIELDS = ("event_id", "person_id", "ts", "age", "workclass", "education", "education_num",
                "marital_status", "occupation", "relationship", "race", "sex", "capital_gain",
                "capital_loss", "hours_per_week", "native_country")
LABEL_FIELDS = ("event_id", "person_id", "ts", "high_income")

# Frequencies: Adult's counts (adult.data, rows with "?" left out), except the workclass and
# occupation weights, which the tilts below distort: those were calibrated (by generating 60 000
# events and rescaling, five times) so that the generated frequencies are within a point of
# Adult's.
_WORKCLASS = {"Private": 24304, "Self-emp-not-inc": 2114, "Self-emp-inc": 856,
              "Federal-gov": 853, "Local-gov": 1764, "State-gov": 1160, "Without-pay": 17,
              "Never-worked": 4}
#: (level, Adult's education-num, count)
_EDUCATION = (("Preschool", 1, 51), ("1st-4th", 2, 168), ("5th-6th", 3, 333),
              ("7th-8th", 4, 646), ("9th", 5, 514), ("10th", 6, 933), ("11th", 7, 1175),
              ("12th", 8, 433), ("HS-grad", 9, 10501), ("Some-college", 10, 7291),
              ("Assoc-voc", 11, 1382), ("Assoc-acdm", 12, 1067), ("Bachelors", 13, 5355),
              ("Masters", 14, 1723), ("Prof-school", 15, 576), ("Doctorate", 16, 413))
_MARITAL = ("Married-civ-spouse", "Never-married", "Divorced", "Separated", "Widowed",
            "Married-spouse-absent", "Married-AF-spouse")
#: occupation: (weight, tilt per education level above 10, weight if female, weight if under 23,
#: usual hours above 40, income log-odds)
_OCCUPATION = {
    "Prof-specialty": (2624, 0.55, 1.0, 0.3, 2, 0.6),
    "Craft-repair": (7218, -0.25, 0.1, 0.9, 2, 0.0),
    "Exec-managerial": (4158, 0.35, 0.8, 0.3, 6, 0.9),
    "Adm-clerical": (2941, 0.0, 2.5, 1.3, -2, -0.3),
    "Sales": (4529, 0.05, 1.0, 1.6, 3, 0.3),
    "Other-service": (2468, -0.3, 1.8, 2.5, -5, -1.2),
    "Machine-op-inspct": (2273, -0.3, 0.8, 1.0, 0, -0.4),
    "Transport-moving": (2677, -0.3, 0.1, 0.9, 5, -0.1),
    "Handlers-cleaners": (1719, -0.35, 0.3, 2.0, -3, -0.9),
    "Farming-fishing": (1421, -0.35, 0.2, 1.2, 8, -0.9),
    "Tech-support": (1087, 0.2, 1.0, 0.8, 0, 0.5),
    "Protective-serv": (1150, -0.05, 0.3, 0.7, 3, 0.4),
    "Priv-house-serv": (37, -0.4, 8.0, 1.5, -7, -2.5),
    "Armed-Forces": (21, 0.0, 0.2, 2.0, 3, 0.0),
}
_RELATIONSHIP = ("Husband", "Not-in-family", "Own-child", "Unmarried", "Wife", "Other-relative")
_RACE = ("White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other")
_SEX = ("Male", "Female")
_COUNTRY = {"United-States": 29170, "Mexico": 643, "Philippines": 198, "Germany": 137,
            "Canada": 121, "Puerto-Rico": 114, "El-Salvador": 106, "India": 100, "Cuba": 95,
            "England": 90, "Jamaica": 81, "China": 75, "Other": 1048}

WORKCLASSES = tuple(_WORKCLASS)
EDUCATIONS = tuple(e for e, _, _ in _EDUCATION)
EDUCATION_NUM = {e: n for e, n, _ in _EDUCATION}
MARITAL_STATUSES = _MARITAL
OCCUPATIONS = tuple(_OCCUPATION)
RELATIONSHIPS = _RELATIONSHIP
RACES = _RACE
SEXES = _SEX
NATIVE_COUNTRIES = tuple(_COUNTRY)
#: The categorical fields and their values (``streams/income.toml`` declares exactly these).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "workclass": WORKCLASSES, "education": EDUCATIONS, "marital_status": MARITAL_STATUSES,
    "occupation": OCCUPATIONS, "relationship": RELATIONSHIPS, "race": RACES, "sex": SEXES,
    "native_country": NATIVE_COUNTRIES,
}

# Adult's capital amounts: the large gains are high earners', the small ones everyone's.
_GAIN_LARGE = ((7688, 284), (7298, 246), (15024, 347), (99999, 159), (5178, 97), (5013, 69),
               (10520, 43), (14084, 41), (8614, 55), (13550, 27), (27828, 34), (20051, 37),
               (6418, 9), (9386, 22), (25236, 11))
_GAIN_SMALL = ((2174, 48), (594, 34), (3103, 97), (2597, 20), (3325, 81), (2407, 19),
               (4650, 41), (3411, 24), (2829, 31), (1055, 25), (2202, 16), (4064, 42),
               (3674, 14), (2176, 23), (3137, 37), (4386, 70), (3908, 32), (114, 6))
_LOSS_HIGH = ((1902, 202), (1977, 168), (1887, 159), (1848, 51), (2415, 49), (2392, 9),
              (2559, 12), (2444, 12), (1564, 25))
_LOSS_LOW = ((1602, 47), (1590, 40), (1672, 34), (1740, 42), (1876, 39), (1485, 51),
             (2001, 24), (2258, 25), (1721, 18), (2339, 17), (1980, 23), (2205, 16),
             (1408, 21), (1092, 7), (2051, 21), (1504, 18))

_RACE_BY_COUNTRY: dict[str, tuple[float, ...]] = {  # weights in _RACE order
    "United-States": (0.857, 0.105, 0.015, 0.011, 0.012),
    "Mexico": (0.88, 0.01, 0.0, 0.02, 0.09), "Puerto-Rico": (0.80, 0.10, 0.0, 0.0, 0.10),
    "El-Salvador": (0.90, 0.0, 0.0, 0.0, 0.10), "Cuba": (0.90, 0.07, 0.0, 0.0, 0.03),
    "Philippines": (0.05, 0.0, 0.95, 0.0, 0.0), "India": (0.15, 0.0, 0.85, 0.0, 0.0),
    "China": (0.03, 0.0, 0.97, 0.0, 0.0), "Jamaica": (0.07, 0.93, 0.0, 0.0, 0.0),
    "Germany": (0.95, 0.03, 0.02, 0.0, 0.0), "Canada": (0.96, 0.0, 0.02, 0.02, 0.0),
    "England": (0.88, 0.08, 0.04, 0.0, 0.0), "Other": (0.38, 0.14, 0.38, 0.0, 0.10),
}
_COUNTRY_LOGIT = {"United-States": 0.0, "Mexico": -0.8, "Puerto-Rico": -0.5,
                  "El-Salvador": -0.8, "Cuba": -0.1, "Philippines": 0.0, "India": 0.3,
                  "China": 0.1, "Jamaica": -0.3, "Germany": 0.1, "Canada": 0.1, "England": 0.1,
                  "Other": -0.2}
_RACE_LOGIT = {"White": 0.0, "Black": -0.25, "Asian-Pac-Islander": 0.0,
               "Amer-Indian-Eskimo": -0.4, "Other": -0.4}
_WORKCLASS_LOGIT = {"Private": 0.0, "Self-emp-not-inc": -0.3, "Self-emp-inc": 0.6,
                    "Federal-gov": 0.5, "Local-gov": 0.0, "State-gov": -0.1,
                    "Without-pay": -3.0, "Never-worked": -3.0}
#: Workclass tilts per occupation (a factor on Adult's frequencies).
_WORKCLASS_TILT = {
    "Armed-Forces": {"Federal-gov": 500.0},
    "Protective-serv": {"Local-gov": 6.0, "State-gov": 3.0, "Federal-gov": 2.0},
    "Prof-specialty": {"Local-gov": 2.0, "State-gov": 2.5, "Self-emp-not-inc": 1.3},
    "Adm-clerical": {"Federal-gov": 2.5, "State-gov": 1.5, "Local-gov": 1.3},
    "Tech-support": {"Federal-gov": 2.0},
    "Farming-fishing": {"Self-emp-not-inc": 6.0, "Self-emp-inc": 1.5},
    "Craft-repair": {"Self-emp-not-inc": 1.8},
    "Exec-managerial": {"Self-emp-inc": 3.0},
    "Sales": {"Self-emp-inc": 2.0, "Self-emp-not-inc": 1.3},
    "Priv-house-serv": {"Private": 1000.0},
}
#: The highest education-num reachable at an age (17 -> 11th, 18 -> HS-grad, ...).
_MAX_EDUCATION_AT = {17: 7, 18: 9, 19: 10, 20: 10, 21: 12, 22: 13, 23: 13, 24: 14, 25: 14,
                     26: 15}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _pick(items: Sequence[str], weights: Sequence[float], u: float) -> str:
    """The item at quantile ``u`` of the weights: a fixed ``u`` gives the same answer as long as
    the weights do not change, so a person's occupation does not flicker between interviews."""
    total = sum(weights)
    acc = 0.0
    for item, w in zip(items, weights, strict=True):
        acc += w
        if u * total < acc:
            return item
    return items[-1]


def _amount(rng: random.Random, table: Sequence[tuple[int, int]]) -> int:
    return rng.choices([a for a, _ in table], [c for _, c in table])[0]


def _start_marital(rng: random.Random, age: int, female: bool) -> str:
    # Adult's women are far less often married than its men (15 % against 61 %) and more
    # often divorced or never married: the weights differ by sex.
    never = max(0.06, 0.97 * math.exp(-max(0, age - 19) / 10))
    if female:
        never = max(0.2, 0.97 * math.exp(-max(0, age - 19) / 14))
    rest = 1.0 - never
    later = min(1.0, max(0.0, (age - 20) / 25))
    widowed = max(0.0, (age - 45) / 40) * (0.6 if female else 0.1)
    w = {"Married-civ-spouse": 0.25 if female else 0.75,
         "Divorced": (0.45 if female else 0.17) * later, "Separated": 0.08 * later,
         "Widowed": widowed, "Married-spouse-absent": 0.02, "Married-AF-spouse": 0.0015}
    total = sum(w.values())
    weights = [never if m == "Never-married" else rest * w[m] / total for m in _MARITAL]
    return rng.choices(_MARITAL, weights)[0]


def _next_marital(rng: random.Random, status: str, age: int, female: bool) -> str:
    """One year of marriages, separations, divorces and deaths."""
    u = rng.random()
    if status == "Never-married":
        marry = (0.06 if 21 <= age <= 45 else 0.02) * (0.4 if female else 1.0)
        return "Married-civ-spouse" if u < marry else status
    if status in ("Married-civ-spouse", "Married-AF-spouse"):
        widow = (0.002 + 0.012 * max(0, age - 60) / 10) * (2.0 if female else 1.0)
        if u < widow:
            return "Widowed"
        if u < widow + 0.015:
            return "Divorced"
        if u < widow + 0.025:
            return "Separated"
        return status
    if status == "Separated":
        return "Divorced" if u < 0.35 else ("Married-civ-spouse" if u < 0.45 else status)
    if status == "Married-spouse-absent":
        return "Married-civ-spouse" if u < 0.3 else status
    remarry = (0.07 if age < 60 else 0.02) * (0.4 if female else 1.0)  # Divorced, Widowed
    return "Married-civ-spouse" if u < remarry else status


def _relationship(status: str, female: bool, age: int, u: float) -> str:
    if status in ("Married-civ-spouse", "Married-AF-spouse"):
        if u < 0.97:
            return "Wife" if female else "Husband"
        return "Other-relative" if u < 0.985 else "Not-in-family"
    if status == "Never-married":
        child = 0.75 if age < 23 else max(0.05, 0.75 - 0.05 * (age - 23))
        weights = (0.0, 0.85 - 0.75 * child, child, 0.10, 0.0, 0.05 + 0.1 * (1 - child))
    else:  # Divorced, Separated, Widowed, Married-spouse-absent
        weights = (0.0, 0.50, 0.06, 0.38 if female else 0.2, 0.0, 0.06)
    return _pick(_RELATIONSHIP, weights, u)


def _occupation_weights(edu: int, female: bool, young: bool) -> list[float]:
    return [count * math.exp(tilt * (edu - 10)) * (fem if female else 1.0)
            * (youth if young else 1.0)
            for count, tilt, fem, youth, _, _ in _OCCUPATION.values()]


def _income_logit(age: int, edu: int, occupation: str, hours: int, status: str, female: bool,
                  workclass: str, race: str, country: str, gain: int, loss: int,
                  wealth: float) -> float:
    a = age - 17
    logit = -4.8 + 0.106 * a - 0.0016 * a * a - (1.5 if age < 22 else 0.0)
    logit += 0.4 * (edu - 9) + _OCCUPATION[occupation][5] + 0.04 * (hours - 40)
    logit += 2.3 if status in ("Married-civ-spouse", "Married-AF-spouse") else 0.0
    logit -= 0.4 if status == "Never-married" else 0.0
    logit -= 0.3 if female else 0.0
    logit += _WORKCLASS_LOGIT[workclass] + _RACE_LOGIT[race] + _COUNTRY_LOGIT[country]
    logit += 4.5 if gain >= 5000 else (0.3 if gain > 0 else 0.0)
    logit += 0.7 if loss > 0 else 0.0
    return logit + 0.4 * wealth


def _person(rng: random.Random, person_id: str, entry_ms: int) -> list[tuple[dict[str, Any],
                                                                              bool]]:
    """One person's interviews inside the span, each with its drawn label."""
    female = rng.random() >= 0.669
    country = rng.choices(NATIVE_COUNTRIES, list(_COUNTRY.values()))[0]
    race = rng.choices(_RACE, _RACE_BY_COUNTRY[country])[0]
    wealth = rng.gauss(0.0, 1.0)
    final_edu = rng.choices([n for _, n, _ in _EDUCATION], [c for _, _, c in _EDUCATION])[0]
    age = min(MAX_AGE, MIN_AGE + int(rng.gammavariate(2.3, 9.5)))
    status = _start_marital(rng, age, female)
    u_occupation, u_workclass, u_relationship = rng.random(), rng.random(), rng.random()
    usual_hours = 40.0 + rng.gauss(0.0, 4.0) + 1.5 * wealth - (4.0 if female else 0.0)
    out: list[tuple[dict[str, Any], bool]] = []
    t = entry_ms
    while t < SPAN_MS and age <= MAX_AGE:
        edu = min(final_edu, _MAX_EDUCATION_AT.get(age, 16))
        occupation = _pick(OCCUPATIONS, _occupation_weights(edu, female, age < 23), u_occupation)
        tilt = _WORKCLASS_TILT.get(occupation, {})
        wc_weights = [c * tilt.get(wc, 1.0) * (30.0 if age < 23 and wc == "Never-worked" else 1.0)
                      for wc, c in _WORKCLASS.items()]
        workclass = _pick(WORKCLASSES, wc_weights, u_workclass)
        relationship = _relationship(status, female, age, u_relationship)
        mean_hours = usual_hours + _OCCUPATION[occupation][4]
        mean_hours += 4.0 if workclass.startswith("Self-emp") else 0.0
        mean_hours -= 14.0 if age < 20 else 8.0 if age < 23 else 12.0 if age >= 65 else 0.0
        if rng.random() < 0.75 * math.exp(-abs(mean_hours - 40.0) / 10.0):
            hours = 40
        else:
            hours = min(99, max(1, round(rng.gauss(mean_hours, 10.0))))
        gain = loss = 0
        gain_odds = -2.8 + 0.9 * wealth + 0.12 * (edu - 10) + 0.03 * (min(age, 65) - 40)
        if rng.random() < _sigmoid(gain_odds):
            large = wealth + rng.gauss(0.0, 0.7) > 1.0
            gain = _amount(rng, _GAIN_LARGE if large else _GAIN_SMALL)
        elif rng.random() < _sigmoid(-3.0 + 0.5 * wealth + 0.1 * (edu - 10)):
            loss = _amount(rng, _LOSS_HIGH if wealth + rng.gauss(0.0, 0.7) > 0.8 else _LOSS_LOW)
        p = _sigmoid(_income_logit(age, edu, occupation, hours, status, female, workclass, race,
                                   country, gain, loss, wealth))
        high = rng.random() < p
        if t >= 0:
            out.append(({
                "event_id": "", "person_id": person_id, "ts": START_MS + t, "age": age,
                "workclass": workclass, "education": EDUCATIONS[edu - 1], "education_num": edu,
                "marital_status": status, "occupation": occupation,
                "relationship": relationship, "race": race, "sex": "Female" if female else "Male",
                "capital_gain": gain, "capital_loss": loss, "hours_per_week": hours,
                "native_country": country,
            }, high))
        if rng.random() < 0.15:  # leaves the panel
            break
        t += YEAR_MS + round(rng.gauss(0.0, 21 * DAY_MS))
        age += 1
        status = _next_marital(rng, status, age, female)
    return out


def generate_income(
    seed: int = 0, n_events: int = 10_000,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n_events`` interviews in time order, and their labels (in the events' order; 3 % of
    events have none). Persons enter the panel until there are enough interviews; the last one's
    latest interviews are dropped to make the count exact."""
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    rng = random.Random(seed)
    drawn: list[tuple[dict[str, Any], bool]] = []
    n_persons = 0
    while len(drawn) < n_events:
        entry = rng.randrange(-3 * YEAR_MS, SPAN_MS)
        drawn.extend(_person(rng, f"p{n_persons:06d}", entry))
        n_persons += 1
    del drawn[n_events:]
    drawn.sort(key=lambda d: d[0]["ts"])  # stable: a tie keeps the order persons were drawn in
    events: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for i, (event, high) in enumerate(drawn):
        event["event_id"] = f"i{i:08d}"  # ids in time order
        events.append(event)
        if rng.random() < UNLABELLED:
            continue
        delay = round(2 * 3_600_000 * math.exp(rng.gauss(0.0, 1.4)))
        delay = min(MAX_DELAY_MS, max(MIN_DELAY_MS, delay))
        labels.append({"event_id": event["event_id"], "person_id": event["person_id"],
                       "ts": event["ts"] + delay, "high_income": high})
    return events, labels
