"""The stream file: every shipped stream loads; every kind of mistake is one line naming the file,
the section and the field; once a file passes, no event can crash the feature steps."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from undertow.errors import StreamError
from undertow.features import SpecState, finish
from undertow.models import make_model
from undertow.schema import DeadLetter, Event, decode_event
from undertow.stream import load_stream, stream_from_dict

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "streams").glob("*.toml"))

#: The stream file of the issue, verbatim in its keys, with one feature of each section.
PAYMENTS = """\
name = "payments"
[events]
id = "event_id"
key = "card_id"
time = "ts"
[events.fields]
merchant_id = "string"
amount = { type = "number", min = 0 }
channel = { type = "category", values = ["web", "pos", "app"] }
[labels]
id = "event_id"
key = "card_id"
time = "ts"
value = "is_fraud"
target = "binary"
[[models]]
name = "lr"
model = "preprocessing.StandardScaler() | linear_model.LogisticRegression()"
[[models]]
name = "tree"
model = "tree.HoeffdingTreeClassifier(grace_period=50)"
[[rolling]]
name = "card_amount_sum_1h"
key = "card_id"
agg = "sum"
field = "amount"
window = "1h"
transform = "log1p"
[[rolling]]
name = "merchant_count_10m"
key = "merchant_id"
agg = "count"
window = "10m"
[[windowed]]
name = "merchant_amount_1h"
key = "merchant_id"
agg = "sum"
field = "amount"
size = "1h"
[[passthrough]]
name = "amount"
[[onehot]]
field = "channel"
values = ["web", "pos", "app"]
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_the_issue_example_loads_with_everything_it_declares(tmp_path):
    s = load_stream(write(tmp_path, PAYMENTS))
    assert (s.name, s.events.id_field, s.events.key_field, s.events.ts_field) == (
        "payments", "event_id", "card_id", "ts")
    assert [(r.name, r.type, r.min, r.values) for r in s.events.fields] == [
        ("merchant_id", "string", None, ()), ("amount", "number", 0, ()),
        ("channel", "category", None, ("web", "pos", "app"))]
    assert (s.labels.value_field, s.labels.target, s.labels.key_field) == (
        "is_fraud", "binary", "card_id")
    assert [(m.name, m.model) for m in s.models] == [
        ("lr", "preprocessing.StandardScaler() | linear_model.LogisticRegression()"),
        ("tree", "tree.HoeffdingTreeClassifier(grace_period=50)")]
    assert [f.name for f in s.features.rolling] == ["card_amount_sum_1h", "merchant_count_10m"]
    assert [w.name for w in s.features.windowed] == ["merchant_amount_1h"]


def test_defaults_of_the_events_and_labels_fields(tmp_path):
    s = load_stream(write(tmp_path, 'name = "d"\n[labels]\nvalue = "y"\n'
                                    '[[models]]\nname = "m"\nmodel = "nb"\n'))
    assert (s.events.id_field, s.events.key_field, s.events.ts_field) == (
        "event_id", "card_id", "ts")
    assert (s.labels.id_field, s.labels.key_field, s.labels.ts_field, s.labels.target) == (
        "event_id", "card_id", "ts", "binary")


def test_the_label_ttl_is_the_stream_files(tmp_path):
    assert load_stream(write(tmp_path, PAYMENTS)).label_ttl_ms == 86_400_000
    two_h = PAYMENTS.replace('target = "binary"', 'target = "binary"\nttl = "2h"')
    assert load_stream(write(tmp_path, two_h)).label_ttl_ms == 7_200_000
    with pytest.raises(StreamError, match=r"\[labels\] ttl: 'soon' is not a duration"):
        load_stream(write(tmp_path, PAYMENTS.replace('target = "binary"',
                                                     'target = "binary"\nttl = "soon"')))


def test_the_requests_topics_are_the_stream_files_unless_the_variables_are_set(tmp_path):
    from connectors.replies import with_stream_topics
    from connectors.settings import load_settings

    text = PAYMENTS + '\n[requests]\ntopic = "pay-requests"\nreplies = "pay-replies"\n'
    s = load_stream(write(tmp_path, text))
    assert (s.requests_topic, s.replies_topic) == ("pay-requests", "pay-replies")
    got = with_stream_topics(load_settings({}), s)
    assert (got.requests_topic, got.replies_topic) == ("pay-requests", "pay-replies")
    got = with_stream_topics(load_settings({"UNDERTOW_REQUESTS_TOPIC": "mine"}), s)
    assert (got.requests_topic, got.replies_topic) == ("mine", "pay-replies")
    assert load_stream(write(tmp_path, PAYMENTS)).requests_topic == ""
    for bad, message in (('topic = "a b"', "[requests] topic: must be a Kafka topic name, got "
                                           "'a b'"),
                         ('topik = "x"', "[requests] topik: unknown key; expected one of "
                                         "['topic', 'replies']")):
        with pytest.raises(StreamError, match=re.escape(message)):
            load_stream(write(tmp_path, PAYMENTS + f"\n[requests]\n{bad}\n"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_stream_loads(name):
    s = load_stream(ROOT / "streams" / f"{name}.toml")
    assert s.name == name and s.models and s.features.rolling


def test_the_digest_follows_what_a_model_was_served_not_the_layout(tmp_path):
    a = load_stream(write(tmp_path, PAYMENTS, "a.toml"))
    relaid = PAYMENTS.replace('name = "tree"', 'name = "forest"').replace("# ", "")
    assert load_stream(write(tmp_path, "# a comment\n" + relaid, "b.toml")).digest == a.digest
    wider = PAYMENTS.replace('window = "1h"', 'window = "2h"')
    assert load_stream(write(tmp_path, wider, "c.toml")).digest != a.digest
    retyped = PAYMENTS.replace('{ type = "number", min = 0 }', '{ type = "number", min = 1 }')
    assert load_stream(write(tmp_path, retyped, "d.toml")).digest != a.digest


MISTAKES = [
    # (what is changed in PAYMENTS, the one line after the file name)
    (('merchant_id = "string"\n', ""),
     "[[rolling]] 'merchant_count_10m': field 'merchant_id' is not declared in [events.fields]"),
    (('merchant_id = "string"', 'merchant_id = "str"'),
     "[events.fields] merchant_id: unknown field type 'str'; one of "
     "['string', 'number', 'integer', 'boolean', 'category']"),
    (('amount = { type = "number", min = 0 }', 'amount = "string"'),
     "[[rolling]] 'card_amount_sum_1h': field 'amount' is declared 'string'; this feature needs "
     "number or integer"),
    (('agg = "count"', 'agg = "cnt"'),
     "[[rolling]] 'merchant_count_10m': unknown rolling agg 'cnt'"),
    (('name = "merchant_count_10m"', 'name = "card_amount_sum_1h"'),
     "[[rolling]] 'card_amount_sum_1h': feature name 'card_amount_sum_1h' used twice"),
    (('name = "tree"', 'name = "lr"'), "[[models]] 'lr': name used twice"),
    (('model = "tree.HoeffdingTreeClassifier(grace_period=50)"',
      'model = "tree.HoeffdingTreeClassifer()"'),
     "[[models]] 'tree': model 'tree.HoeffdingTreeClassifer()':"),
    (('model = "tree.HoeffdingTreeClassifier(grace_period=50)"', 'model = "__import__(\'os\')"'),
     "[[models]] 'tree': model \"__import__('os')\":"),
    (('target = "binary"', 'target = "ordinal"'),
     "[labels] target: unknown target 'ordinal'; one of ['binary', 'multiclass', 'regression']"),
    (('value = "is_fraud"\n', ""),
     "[labels] value: missing: the field that holds the label's truth"),
    (('amount = { type = "number", min = 0 }', 'amount = { type = "number" }'),
     "[[rolling]] 'card_amount_sum_1h': transform 'log1p' needs field 'amount' declared with "
     "min >= 0"),
    (('field = "channel"\nvalues = ["web", "pos", "app"]', 'field = "channel"\nvalues = ["web", "fax"]'),
     "[[onehot]] 'channel': value 'fax' is not among the field's declared values"),
    (('[labels]', '[label]\nx = 1\n[labels]'),
     "unknown section or key 'label'"),
    (('time = "ts"\n[events.fields]', 'time = "ts"\nkye = "x"\n[events.fields]'),
     "[events] kye: unknown key; expected one of ['id', 'key', 'time', 'fields']"),
    (('amount = { type = "number", min = 0 }', 'amount = { type = "number", minimum = 0 }'),
     "[events.fields] amount: unknown key 'minimum'; expected type, min, max, values"),
    (('channel = { type = "category", values = ["web", "pos", "app"] }',
      'channel = { type = "category" }'),
     "[events.fields] channel: a category needs values = [non-empty strings]"),
    (('name = "payments"', 'name = "pay ments"'),
     "name: must be a name of letters, digits, '_', '.', '-', got 'pay ments'"),
    (('[[models]]\nname = "lr"\nmodel = "preprocessing.StandardScaler() | '
      'linear_model.LogisticRegression()"\n[[models]]\nname = "tree"\n'
      'model = "tree.HoeffdingTreeClassifier(grace_period=50)"\n', ""),
     "[[models]] missing: at least one model (the first is the champion)"),
    (('window = "10m"', 'window = "10 minutes"'),
     "'10 minutes' is not a duration like 500ms, 30s, 10m, 1h, 7d"),
    (('[[passthrough]]\nname = "amount"', '[[passthrough]]\nname = "amount"\nfield = "amt"'),
     "[[passthrough]] 'amount': field 'amt' is not declared in [events.fields]"),
]


@pytest.mark.parametrize(("change", "message"), MISTAKES, ids=[m for _, m in MISTAKES])
def test_each_mistake_is_one_line_naming_the_file_the_section_and_the_field(
    tmp_path, change, message
):
    old, new = change
    assert old in PAYMENTS, old
    path = write(tmp_path, PAYMENTS.replace(old, new, 1))
    with pytest.raises(StreamError) as ei:
        load_stream(path)
    text = str(ei.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert message in text, text


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(StreamError, match=r"nope\.toml: no such stream file$"):
        load_stream(tmp_path / "nope.toml")
    with pytest.raises(StreamError, match=r"bad\.toml: not valid TOML: "):
        load_stream(write(tmp_path, "name = \n", "bad.toml"))


def test_a_feature_spec_file_can_replace_the_feature_sections(tmp_path):
    spec = write(tmp_path, textwrap.dedent("""\
        name = "ignored"
        [[rolling]]
        name = "card_count_1d"
        key = "card_id"
        agg = "count"
        window = "1d"
    """), "features.toml")
    s = load_stream(write(tmp_path, PAYMENTS), features_from=spec)
    assert [f.name for f in s.features.rolling] == ["card_count_1d"]
    assert s.features.name == "payments" and not s.features.passthrough


# -- no event can crash a feature step --------------------------------------------------------------

def _values(rule_type: str) -> st.SearchStrategy:
    anything = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5)
                | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2),
                                                                        st.integers(), max_size=2))
    good = {
        "string": st.text(min_size=1, max_size=4),
        "number": st.floats(-1e6, 1e6) | st.integers(-10**6, 10**6),
        "integer": st.integers(-10**6, 10**6),
        "boolean": st.booleans(),
        "category": st.sampled_from(["pos", "online", "atm", "home", "mobile", "Private"]),
    }[rule_type]
    return good | good | anything


@st.composite
def records(draw: st.DrawFn, name: str) -> bytes:
    s = load_stream(ROOT / "streams" / f"{name}.toml")
    obj: dict = {}
    for r in (*s.events.fields,):
        if draw(st.integers(0, 30)) == 0:
            continue  # missing
        v = draw(_values(r.type))
        if r.type == "category" and draw(st.booleans()):
            v = draw(st.sampled_from(r.values))
        obj[r.name] = v
    obj[s.events.id_field] = draw(st.text(max_size=3) | st.integers())
    obj[s.events.key_field] = draw(st.text(min_size=1, max_size=3) | st.sampled_from(["k1", "k2"]))
    obj[s.events.ts_field] = draw(st.integers(0, 10**7) | st.integers(-5, 5) | st.floats())
    # The stdlib writes what orjson would refuse too: NaN, huge integers.
    return json.dumps(obj).encode()


@pytest.mark.parametrize("name", SHIPPED)
def test_no_event_a_shipped_stream_accepts_can_crash_its_features(name):
    s = load_stream(ROOT / "streams" / f"{name}.toml")
    transforms = s.features.transforms()

    @settings(max_examples=300, deadline=None)
    @given(st.lists(records(name), min_size=1, max_size=30))
    def check(raws: list[bytes]) -> None:
        state = SpecState(s.features)
        for raw in raws:
            ev = decode_event(raw, s.events)
            assert isinstance(ev, Event | DeadLetter)
            if isinstance(ev, Event):
                feats = state.update(ev.fields, ev.ts)
                if feats is not None:
                    finish(s.features, feats, ev.fields, transforms)

    check()


# -- every command answers a bad stream file with one line -----------------------------------------

def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_every_command_answers_a_bad_stream_file_with_one_line_and_status_2(tmp_path):
    bad = write(tmp_path, PAYMENTS.replace('merchant_id = "string"\n', ""), "bad.toml")
    want = (f"{bad}: [[rolling]] 'merchant_count_10m': field 'merchant_id' is not declared in "
            "[events.fields]")
    ev = write(tmp_path, "", "e.jsonl")
    runs = {
        "live": run(["-m", "bytewax.run", "dataflows.stream:flow"], {"UNDERTOW_STREAM": str(bad)}),
        "backtest": run(["-m", "dataflows.backtest", "--stream", str(bad), "--events-file",
                         str(ev), "--labels-file", str(ev), "--out", str(tmp_path / "bt")]),
        "score": run(["-m", "dataflows.score", "--stream", str(bad), "--checkpoint",
                      str(tmp_path), "--input", str(ev), "--output", str(tmp_path / "o.jsonl")]),
    }
    for what, r in runs.items():
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (what, r.returncode, r.stderr[-2000:])
        assert len(lines) == 1 and lines[0].endswith(want), (what, r.stderr[-2000:])
    missing = run(["-m", "bytewax.run", "dataflows.stream:flow"], {"UNDERTOW_STREAM": ""})
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith(
        "undertow: bad setting: UNDERTOW_STREAM: must name a stream file")


def test_importing_a_dataflow_module_builds_no_flow(tmp_path):
    """Only ``module.flow`` builds: importing the fraud module (say, for its stream) with a start
    checkpoint that only the clicks model has does not fail, and each module resolves
    ``latest`` for its own model."""
    from connectors.checkpoint import ModelStore

    clicks = load_stream(ROOT / "streams" / "clicks.toml")
    ModelStore(tmp_path).write("clicks", make_model("logreg"),
                               version=3, labels_learned=10, feature_spec="clicks",
                               stream_digest=clicks.digest)
    env = {"UNDERTOW_MODEL_DIR": str(tmp_path), "UNDERTOW_START_CHECKPOINT": "latest"}
    ok = run(["-c", "import dataflows.fraud, dataflows.stream, dataflows.clicks\n"
                    "from dataflows.clicks import flow\nprint(flow.flow_id)"], env)
    assert (ok.returncode, ok.stdout.strip()) == (0, "undertow_clicks"), ok.stderr[-2000:]
    fraud = run(["-c", "from dataflows.fraud import flow"], env)
    assert fraud.returncode == 2
    assert fraud.stderr.strip() == (
        f"undertow: bad setting: UNDERTOW_START_CHECKPOINT: no checkpoint of model 'fraud' under "
        f"{tmp_path}")


def test_targets_and_classes_in_the_stream_file(tmp_path):
    iris = load_stream(ROOT / "streams" / "iris.toml")
    assert (iris.labels.target, iris.labels.classes) == (
        "multiclass", ("setosa", "versicolor", "virginica"))
    assert load_stream(ROOT / "streams" / "approval.toml").labels.target == "regression"
    for change, message in [
        ('target = "binary"', "[labels] classes: only a multiclass target lists classes"),
        ('target = "multiclass"', "[labels] classes: must be a list of at least two classes"),
    ]:
        text = PAYMENTS.replace('target = "binary"', f'{change}\nclasses = ["a"]')
        with pytest.raises(StreamError) as ei:
            load_stream(write(tmp_path, text))
        assert message in str(ei.value)


def test_a_promotion_metric_of_another_target_stops_start_up():
    from connectors.settings import ConfigError, load_settings
    from dataflows.stream import build_flow, shipped

    with pytest.raises(ConfigError, match="^UNDERTOW_PROMOTION_METRIC: 'roc_auc' is not a "
                                          "measure of the stream's regression target; one of "
                                          "mae, rmse, r2$"):
        build_flow(load_settings({}, promotion_metric="roc_auc"), shipped("approval"),
                   sources={"events": [], "labels": []})


def test_a_misspelt_setting_and_a_file_that_is_not_json_lines_are_one_line(tmp_path):
    r = run(["-m", "bytewax.run", "dataflows.fraud:flow"], {"UNDERTOW_MODLE": "hat"})
    assert (r.returncode, r.stderr.strip()) == (
        2, "undertow: bad setting: UNDERTOW_MODLE: not a setting; did you mean UNDERTOW_MODEL?")
    from connectors.checkpoint import ModelStore

    fraud = load_stream(ROOT / "streams" / "fraud.toml")
    ckpt = ModelStore(tmp_path / "models").write("fraud", make_model("logreg"), version=1,
                                                 labels_learned=0, feature_spec="fraud",
                                                 stream_digest=fraud.digest)
    text = write(tmp_path, "event_id,card_id\ne1,c1\n", "events.csv")
    r = run(["-m", "dataflows.score", "--stream", "streams/fraud.toml", "--checkpoint",
             str(ckpt), "--input", str(text), "--output", str(tmp_path / "o.jsonl")])
    assert (r.returncode, r.stderr.strip()) == (
        2, f"undertow score: {text}: line 1 is not a JSON object: this is not a JSON Lines file "
           "of records")
