"""Models by expression (undertow/models.py): River expressions built from their syntax tree,
``package.module:factory``, the four aliases, one-line errors, and the settings that take them."""

from __future__ import annotations

import itertools
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river import (
    bandit,
    compose,
    datasets,
    forest,
    imblearn,
    linear_model,
    metrics,
    model_selection,
    multiclass,
    naive_bayes,
    optim,
    preprocessing,
    tree,
)

from connectors.settings import ConfigError, load_settings, parse_challengers
from undertow.errors import ConfigError as BaseConfigError
from undertow.errors import ModelError
from undertow.models import MODELS, check_model, make_model

# -- the examples build the right objects ---------------------------------------------------------


def test_scaled_logistic_regression_with_l2():
    model = make_model(
        "preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=0.001)")
    assert type(model) is compose.Pipeline
    assert [type(s) for s in model.steps.values()] == [preprocessing.StandardScaler,
                                                       linear_model.LogisticRegression]
    assert model["LogisticRegression"].l2 == 0.001
    assert model["LogisticRegression"].l1 == 0.0  # the rest are River's defaults
    assert model["StandardScaler"].with_std is True


def test_hoeffding_tree_with_keyword_arguments():
    model = make_model("tree.HoeffdingTreeClassifier(grace_period=50, max_depth=8)")
    assert type(model) is tree.HoeffdingTreeClassifier
    assert (model.grace_period, model.max_depth) == (50, 8)
    assert model.delta == tree.HoeffdingTreeClassifier().delta


def test_adaptive_random_forest_with_seed():
    model = make_model("forest.ARFClassifier(n_models=5, seed=1)")
    assert type(model) is forest.ARFClassifier
    assert (model.n_models, model.seed) == (5, 1)


def test_select_with_positional_strings_and_a_nested_optimizer():
    model = make_model(
        "compose.Select('a', 'b') | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))")
    assert [type(s) for s in model.steps.values()] == [compose.Select,
                                                       linear_model.LogisticRegression]
    assert model["Select"].keys == {"a", "b"}
    sgd = model["LogisticRegression"].optimizer
    assert type(sgd) is optim.SGD and sgd.learning_rate == 0.05


def test_one_vs_rest_around_a_logistic_regression():
    model = make_model("preprocessing.StandardScaler() | "
                       "multiclass.OneVsRestClassifier(linear_model.LogisticRegression())")
    ovr = model["OneVsRestClassifier"]
    assert type(ovr) is multiclass.OneVsRestClassifier
    assert type(ovr.classifier) is linear_model.LogisticRegression


def test_bandit_classifier_in_river_0_26_1_takes_metric_and_policy():
    # river 0.26.1: BanditClassifier(models, metric, policy); there is no ``bandit=`` keyword.
    model = make_model(
        "model_selection.BanditClassifier([linear_model.LogisticRegression(), "
        "tree.HoeffdingTreeClassifier()], metric=metrics.Accuracy(), "
        "policy=bandit.EpsilonGreedy(0.1, seed=1))")
    assert type(model) is model_selection.BanditClassifier
    assert [type(m) for m in model.models] == [linear_model.LogisticRegression,
                                               tree.HoeffdingTreeClassifier]
    assert type(model.metric) is metrics.Accuracy
    assert type(model.policy) is bandit.EpsilonGreedy
    assert (model.policy.epsilon, model.policy.seed) == (0.1, 1)
    with pytest.raises(ModelError) as err:
        check_model("model_selection.BanditClassifier([linear_model.LogisticRegression(), "
                    "tree.HoeffdingTreeClassifier()], bandit=bandit.EpsilonGreedy(0.1, seed=1))")
    assert str(err.value).endswith(
        ": BanditClassifier() got an unexpected keyword argument 'bandit'")


def test_river_prefix_nested_submodules_and_every_kind_of_literal():
    model = make_model(
        "river.preprocessing.StandardScaler(with_std=False) | river.imblearn.RandomUnderSampler("
        "classifier=river.linear_model.LogisticRegression(loss=optim.losses.Log(weight_pos=2.5), "
        "intercept_init=-0.5, clip_gradient=+3, initializer=optim.initializers.Constant(-1)), "
        "desired_dist={True: 0.4, False: 0.6}, seed=None)")
    scaler, sampler = model.steps.values()
    assert scaler.with_std is False
    assert type(sampler) is imblearn.RandomUnderSampler
    assert sampler.desired_dist == {True: 0.4, False: 0.6} and sampler.seed is None
    lr = sampler.classifier
    assert type(lr.loss) is optim.losses.Log and lr.loss.weight_pos == 2.5
    assert (lr.intercept_init, lr.clip_gradient) == (-0.5, 3)
    assert type(lr.initializer) is optim.initializers.Constant and lr.initializer.value == -1
    ht = make_model("tree.HoeffdingTreeClassifier(nominal_attributes=['a', 'b'], "
                    "splitter=tree.splitter.HistogramSplitter(n_bins=(5)), delta=1e-5)")
    assert ht.nominal_attributes == ["a", "b"] and ht.delta == 1e-5
    assert type(ht.splitter) is tree.splitter.HistogramSplitter and ht.splitter.n_bins == 5
    tupled = make_model("tree.HoeffdingTreeClassifier(nominal_attributes=('a',))")
    assert tupled.nominal_attributes == ("a",)
    setted = make_model("tree.HoeffdingTreeClassifier(nominal_attributes={'a', 'b'})")
    assert setted.nominal_attributes == {"a", "b"}


def test_union_and_pipeline_operators():
    model = make_model("(preprocessing.StandardScaler() + preprocessing.MinMaxScaler()) "
                       "| linear_model.LogisticRegression()")
    union, lr = model.steps.values()
    assert type(union) is compose.TransformerUnion
    assert [type(t) for t in union.transformers.values()] == [preprocessing.StandardScaler,
                                                              preprocessing.MinMaxScaler]
    assert type(lr) is linear_model.LogisticRegression
    three = make_model("preprocessing.StandardScaler() | preprocessing.MinMaxScaler() | "
                       "naive_bayes.GaussianNB()")
    assert [type(s) for s in three.steps.values()] == [preprocessing.StandardScaler,
                                                       preprocessing.MinMaxScaler,
                                                       naive_bayes.GaussianNB]


def test_every_call_is_a_new_untrained_object():
    expr = "preprocessing.StandardScaler() | linear_model.LogisticRegression()"
    a, b = make_model(expr), make_model(expr)
    assert a is not b and a["LogisticRegression"] is not b["LogisticRegression"]
    a.learn_one({"x": 1.0}, True)
    assert b["LogisticRegression"]._weights == {}
    assert b["StandardScaler"].counts == {}
    assert make_model("hat") is not make_model("hat")


def test_check_model_builds_and_returns_none_for_a_good_expression():
    assert check_model("naive_bayes.GaussianNB()") is None
    assert check_model("  tree.HoeffdingTreeClassifier(\n  grace_period=50,\n)  ") is None


# -- the aliases are today's models ---------------------------------------------------------------


def todays_model(name: str, seed: int = 42):
    """The four models as undertow/models.py made them before expressions."""
    if name == "logreg":
        return preprocessing.StandardScaler() | linear_model.LogisticRegression()
    if name == "hat":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    if name == "arf":
        return forest.ARFClassifier(n_models=10, seed=seed)
    return naive_bayes.GaussianNB()


def test_the_alias_names_are_todays():
    assert MODELS == ("logreg", "hat", "arf", "nb")


@pytest.mark.parametrize("seed", [42, 7])
@pytest.mark.parametrize("name", ["logreg", "hat", "arf", "nb"])
def test_each_alias_is_todays_model_and_predicts_the_same_after_200_records(name, seed):
    ours = make_model(name) if seed == 42 else make_model(name, seed=seed)
    theirs = todays_model(name, seed)
    assert type(ours) is type(theirs)
    assert ours._get_params() == theirs._get_params()
    if name in ("hat", "arf"):
        assert ours.seed == seed
    got, want = [], []
    for x, y in itertools.islice(datasets.Phishing(), 200):
        got.append(ours.predict_proba_one(x))
        want.append(theirs.predict_proba_one(x))
        ours.learn_one(x, y)
        theirs.learn_one(x, y)
    assert got == want
    # and the models have learned: the last scores are not the untrained ones
    assert got[-1] != got[0]
    probe = [x for x, _ in itertools.islice(datasets.Phishing(), 200, 250)]
    assert [ours.predict_one(x) for x in probe] == [theirs.predict_one(x) for x in probe]


def test_seeded_aliases_differ_by_seed():
    a, b = make_model("arf", seed=1), make_model("arf", seed=2)
    scores = {1: [], 2: []}
    for x, y in itertools.islice(datasets.Phishing(), 200):
        scores[1].append(a.predict_proba_one(x))
        scores[2].append(b.predict_proba_one(x))
        a.learn_one(x, y)
        b.learn_one(x, y)
    assert scores[1] != scores[2]


# -- rejected forms, with the exact line ----------------------------------------------------------

REJECTED = [
    ("linear_model.LogisticRegresion()",
     "river.linear_model has no 'LogisticRegresion' (did you mean 'LogisticRegression'?)"),
    ('os.system("x")', "'os' is not a river module"),
    ("tree.HoeffdingTreeClassifier(grace=5)",
     "HoeffdingTreeClassifier() got an unexpected keyword argument 'grace'"),
    ("tree.HoeffdingTreeClassifier(grace_perod=5)",
     "HoeffdingTreeClassifier() got an unexpected keyword argument 'grace_perod' "
     "(did you mean 'grace_period'?)"),
    ("tree.HoeffdingTreeClassifier(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)",
     "HoeffdingTreeClassifier() too many positional arguments"),
    ("model_selection.BanditClassifier([linear_model.LogisticRegression()])",
     "BanditClassifier() missing a required argument: 'metric'"),
    ("linear_modl.LogisticRegression()",
     "'linear_modl' is not a river module (did you mean 'linear_model'?)"),
    ("linear_model.LogisticRegression(",
     "not a valid expression (column 32: '(' was never closed)"),
    ("linear_model.LogisticRegression() linear_model.LogisticRegression()",
     "not a valid expression (column 35: invalid syntax)"),
    ("", "empty; expected a River expression, package.module:factory or one of "
         "logreg, hat, arf, nb"),
    ("__import__('os').system('true')",
     "only river classes and functions can be called, not __import__('os').system"),
    ("__import__('os')", "'__import__' is not a river module"),
    ("eval('1')", "'eval' is not a river module"),
    ("linear_model.__dict__", "river.linear_model.__dict__ is private"),
    ("linear_model._private()", "river.linear_model._private is private"),
    ("river._river_rust.x()", "river._river_rust is private"),
    ("linear_model.LogisticRegression().__class__",
     "'linear_model.LogisticRegression().__class__' is not a river name"),
    ("linear_model.LogisticRegression.__init__()",
     "river.linear_model.LogisticRegression.__init__ is private"),
    ("linear_model.LogisticRegression.clone()", "river.linear_model.LogisticRegression is not a "
                                                "module, so "
                                                "river.linear_model.LogisticRegression.clone is "
                                                "not allowed"),
    ("().__class__.__bases__[0].__subclasses__()",
     "only river classes and functions can be called, not "
     "().__class__.__bases__[0].__subclasses__"),
    ("tree.HoeffdingTreeClassifier(nominal_attributes=['a'][0])",
     "a subscript is not allowed (['a'][0])"),
    ("lambda: linear_model.LogisticRegression()",
     "a model is a call of a river class, got a lambda"),
    ("[naive_bayes.GaussianNB()]", "a model is a call of a river class, got a list"),
    ("tree.HoeffdingTreeClassifier(grace_period=(lambda: 5)())",
     "only river classes and functions can be called, not lambda: 5"),
    ("compose.Select(*[x for x in 'ab'])", "'*' unpacking is not allowed"),
    ("compose.Select([x for x in 'ab'])", "a comprehension is not allowed ([x for x in 'ab'])"),
    ("linear_model.LogisticRegression(**{'l2': 1})", "'**' unpacking is not allowed"),
    ("tree.HoeffdingTreeClassifier(nominal_attributes=f'{1}')",
     "an f-string is not allowed (f'{1}')"),
    ("linear_model.LogisticRegression(l2=x)", "'x' is not a river module"),
    ("linear_model.LogisticRegression(l2=1 if 1 else 2)",
     "a conditional expression is not allowed (1 if 1 else 2)"),
    ("linear_model.LogisticRegression(l2=(y := 1))", "an assignment is not allowed ((y := 1))"),
    ("linear_model.LogisticRegression(l2=2 ** 10)",
     "operator '**' is not allowed (only | and +)"),
    ("linear_model.LogisticRegression(l2=-x)", "a sign applies to a number only (-x)"),
    ("linear_model.LogisticRegression(l2=-(-1))", "a sign applies to a number only (--1)"),
    ("linear_model.LogisticRegression(l2=-True)", "a sign applies to a number only (-True)"),
    ("linear_model.LogisticRegression(l2=b'x')", "bytes literals are not allowed (b'x')"),
    ("linear_model.LogisticRegression(l2=...)", "ellipsis literals are not allowed (...)"),
    ("linear_model.LogisticRegression() * tree.HoeffdingTreeClassifier()",
     "operator '*' is not allowed (only | and +)"),
    ("linear_model.LogisticRegression() + tree.HoeffdingTreeClassifier()",
     "LogisticRegression + HoeffdingTreeClassifier: unsupported operand type(s) for +: "
     "'LogisticRegression' and 'HoeffdingTreeClassifier'"),
    ("preprocessing.StandardScaler() | 3", "'|' joins River estimators; its right side is an int"),
    ("'x' | linear_model.LogisticRegression()",
     "'|' joins River estimators; its left side is a str"),
    ("linear_model.LogisticRegression", "linear_model.LogisticRegression is not called "
                                        "(write linear_model.LogisticRegression(...))"),
    ("linear_model", "river.linear_model is a module, not a model"),
    ("river()", "river is a module, not a class or function"),
    ("42", "a model is a call of a river class, got the literal 42"),
    ("optim.SGD(0.1)", "SGD is not a model (it has no learn_one)"),
    ("-linear_model.LogisticRegression()",
     "a model is a call of a river class, got a unary operator"),
    ("preprocessing.StandardScaler()",
     "StandardScaler is not a model (it has no predict_one or predict_proba_one)"),
    ("preprocessing.StandardScaler() | preprocessing.MinMaxScaler()",
     "Pipeline is not a model (its last step MinMaxScaler has no predict_one or "
     "predict_proba_one)"),
    ("compose.Pipeline()", "Pipeline is not a model (the pipeline is empty)"),
    ("base.Classifier()", "Classifier(): Can't instantiate abstract class Classifier with "
                          "abstract method learn_one"),
    ("utils.math.sigmoid(1)", "a float is not a model (it has no learn_one)"),
    ("compose.FuncTransformer(utils.math.sigmoid) | linear_model.LogisticRegression()",
     "utils.math.sigmoid is not called (write utils.math.sigmoid(...))"),
    ("datasets.Phishing()",
     "river.datasets cannot be used in a model (it downloads and reads data sets)"),
    ("river.stream.iter_csv('/etc/passwd')",
     "river.stream cannot be used in a model (it reads and writes files)"),
    ("bandit.datasets.NewsArticles()",
     "river.bandit.datasets cannot be used in a model (it downloads and reads data sets)"),
    ("evaluate.progressive_val_score([], linear_model.LogisticRegression(), metrics.Accuracy())",
     "river.evaluate cannot be used in a model (it runs models, it does not make one)"),
    ("linear_model.log_reg.typing.cast(1, 2)",
     "river.linear_model.log_reg.typing is not a river module"),
    ("linear_model.log_reg.annotations()",
     "river.linear_model.log_reg.annotations is not defined in river"),
    ("linear_model.LogisticRegression(l2={[1]: 2})", "dict key [1]: unhashable type: 'list'"),
    ("compose.Select({[1]})", "a set of {[1]}: unhashable type: 'list'"),
    ("linear_model.LogisticRegression(1j)", "complex literals are not allowed (1j)"),
    ("\x00", "not a valid expression (source code string cannot contain null bytes)"),
    ("x" * 10_001, None),  # message checked below
]


@pytest.mark.parametrize(("expr", "why"), REJECTED, ids=[e[:40] for e, _ in REJECTED])
def test_rejected_with_one_exact_line(expr, why):
    with pytest.raises(ModelError) as err:
        check_model(expr)
    msg = str(err.value)
    if why is None:
        assert msg == f"model {expr[:40]!r}...: longer than 10000 characters"
    else:
        assert msg == f"model {expr!r}: {why}"
    assert "\n" not in msg
    # make_model raises the very same error, and it is a configuration error (exit status 2)
    with pytest.raises(ModelError) as again:
        make_model(expr)
    assert str(again.value) == msg
    assert isinstance(err.value, BaseConfigError) and isinstance(err.value, ValueError)


def test_nothing_is_run_while_reading_an_expression(tmp_path):
    marker = tmp_path / "ran"
    attacks = [
        f"__import__('os').system('touch {marker}')",
        f"linear_model.LogisticRegression(l2=__import__('os').system('touch {marker}'))",
        f"[__import__('os').system('touch {marker}') for _ in 'a'][0]",
        f"linear_model.LogisticRegression(l2=open('{marker}', 'w'))",
        f"river.stream.Cache().__init__('{marker}')",
        f"compose.FuncTransformer(lambda x: __import__('os').system('touch {marker}'))",
    ]
    for expr in attacks:
        with pytest.raises(ModelError):
            check_model(expr)
    assert not marker.exists()


def test_deep_nesting_is_an_error_not_a_crash():
    deep = "|".join(["preprocessing.StandardScaler()"] * 1200) + "|naive_bayes.GaussianNB()"
    with pytest.raises(ModelError) as err:
        check_model(deep)
    assert str(err.value) == f"model {deep[:40]!r}...: longer than 10000 characters"
    nested = "compose.Select(" + "[" * 150 + "]" * 150 + ")"
    with pytest.raises(ModelError) as err:
        check_model(nested)
    assert str(err.value) == f"model {nested!r}: Select(): unhashable type: 'list'"
    too_deep = "compose.Select(" + "[" * 300 + "]" * 300 + ")"
    with pytest.raises(ModelError) as err:
        check_model(too_deep)
    assert str(err.value) == (f"model {too_deep!r}: not a valid expression "
                              "(column 215: too many nested parentheses)")
    signs = "-" * 5000 + "1"
    with pytest.raises(ModelError) as err:
        check_model(signs)
    assert str(err.value) == (f"model {signs!r}: not a valid expression "
                              "(maximum recursion depth exceeded during ast construction)")
    pipe = " | ".join(["preprocessing.StandardScaler()"] * 300) + " | naive_bayes.GaussianNB()"
    assert len(make_model(pipe).steps) == 301  # a long pipeline is fine: 300 scalers and NB


# -- package.module:factory -----------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes ``name.py`` into a directory on sys.path; forgets the module afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_factory_builds_the_users_estimator_fresh_each_call(user_module):
    mod = user_module("h5_user_models", (
        "from river import naive_bayes, preprocessing, linear_model\n"
        "calls = []\n"
        "def factory():\n"
        "    calls.append(1)\n"
        "    return preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=0.5)\n"
        "class Mine:\n"
        "    def learn_one(self, x, y): pass\n"
        "    def predict_one(self, x): return True\n"
        "def custom():\n"
        "    return Mine()\n"
    ))
    a = make_model(f"{mod}:factory")
    b = make_model(f" {mod} : factory ")
    assert a is not b and a["LogisticRegression"].l2 == 0.5
    assert sys.modules[mod].calls == [1, 1]
    check_model(f"{mod}:factory")
    assert sys.modules[mod].calls == [1, 1, 1]
    mine = make_model(f"{mod}:custom")
    assert type(mine).__name__ == "Mine" and mine.predict_one({}) is True


def test_a_package_module_factory(user_module, tmp_path):
    pkg = tmp_path / "h5_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "models.py").write_text(
        "from river import tree\n"
        "def make():\n    return tree.HoeffdingTreeClassifier(grace_period=7)\n")
    try:
        assert make_model("h5_pkg.sub.models:make").grace_period == 7
    finally:
        for name in ("h5_pkg", "h5_pkg.sub", "h5_pkg.sub.models"):
            sys.modules.pop(name, None)


def test_factory_errors_are_one_line(user_module):
    mod = user_module("h5_bad_models", (
        "from river import preprocessing\n"
        "value = 3\n"
        "def factroy(): pass\n"
        "def boom():\n    raise RuntimeError('no GPU\\nhere')\n"
        "def scaler():\n    return preprocessing.StandardScaler()\n"
        "def nothing():\n    return None\n"
    ))
    broken = user_module("h5_broken_import", "import h5_no_such_dependency\n")
    cases = [
        ("h5_missing_module:factory",
         "cannot import 'h5_missing_module' (ModuleNotFoundError: No module named "
         "'h5_missing_module')"),
        (f"{broken}:factory",
         f"cannot import '{broken}' (ModuleNotFoundError: No module named "
         "'h5_no_such_dependency')"),
        (f"{mod}:factory", f"module '{mod}' has no 'factory' (did you mean 'factroy'?)"),
        (f"{mod}:value", f"{mod}.value is not callable (it is an int)"),
        (f"{mod}:boom", "boom() failed (RuntimeError: no GPU here)"),
        (f"{mod}:scaler", "scaler() returned StandardScaler, which is not a model (it has no "
                          "predict_one or predict_proba_one)"),
        (f"{mod}:nothing", "nothing() returned a NoneType, which is not a model (it has no "
                           "learn_one)"),
    ]
    for expr, why in cases:
        with pytest.raises(ModelError) as err:
            check_model(expr)
        assert str(err.value) == f"model {expr!r}: {why}"


# -- arbitrary text -------------------------------------------------------------------------------

NAMES = ["linear_model.LogisticRegression", "tree.HoeffdingTreeClassifier",
         "naive_bayes.GaussianNB", "preprocessing.StandardScaler", "compose.Select", "optim.SGD",
         "river.forest.ARFClassifier",
         "multiclass.OneVsRestClassifier", "linear_model.LogisticRegresion", "os.system", "x",
         "river", "linear_model", "datasets.Phishing", "base.Classifier", "__import__",
         "linear_model.__class__", "tree.splitter.HistogramSplitter", "metrics.Accuracy"]
KEYWORDS = ["l2", "grace_period", "max_depth", "n_models", "seed", "optimizer", "lr", "grace",
            "classifier", "with_std", "n_bins", "nominal_attributes"]
literals = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 60), st.floats(-2, 2, allow_nan=False),
    st.text(alphabet="abc'\" ,()", max_size=4),
).map(repr)


def _call(children):
    args = st.lists(st.one_of(literals, children), max_size=2)
    kwargs = st.lists(st.tuples(st.sampled_from(KEYWORDS), st.one_of(literals, children)),
                      max_size=2)
    return st.builds(
        lambda f, a, k: f"{f}({', '.join(a + [f'{n}={v}' for n, v in k])})",
        st.sampled_from(NAMES), args, kwargs)


expressions = st.recursive(
    st.one_of(literals, st.sampled_from(NAMES).map(lambda n: n + "()"), st.sampled_from(NAMES)),
    lambda children: st.one_of(
        _call(children),
        st.builds(lambda a, op, b: f"{a} {op} {b}", children, st.sampled_from(["|", "+", "*"]),
                  children),
        st.lists(children, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), expressions,
                 st.builds(lambda a, b: a + b, expressions, st.text(max_size=5))))
def test_arbitrary_text_raises_nothing_but_model_error(text):
    try:
        check_model(text)
    except ModelError as ex:
        assert str(ex).startswith("model ") and "\n" not in str(ex)


# -- settings -------------------------------------------------------------------------------------


def test_settings_take_a_model_expression_and_default_to_the_streams_first():
    assert load_settings({}).model == ""
    expr = "preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=0.001)"
    assert load_settings({"UNDERTOW_MODEL": expr}).model == expr
    assert load_settings({"UNDERTOW_MODEL": "hat"}).model == "hat"


def test_settings_name_the_variable_of_a_bad_model_in_one_line():
    with pytest.raises(ConfigError) as err:
        load_settings({"UNDERTOW_MODEL": "linear_model.LogisticRegresion()"})
    assert str(err.value) == (
        "UNDERTOW_MODEL: model 'linear_model.LogisticRegresion()': river.linear_model has no "
        "'LogisticRegresion' (did you mean 'LogisticRegression'?) "
        "(got 'linear_model.LogisticRegresion()')")


def test_challengers_split_on_top_level_commas_only():
    spec = "tree=tree.HoeffdingTreeClassifier(grace_period=50, max_depth=8),nb=nb"
    s = load_settings({"UNDERTOW_CHALLENGERS": spec, "UNDERTOW_MODEL_NAME": "champ"})
    assert s.challenger_models == {"tree": "tree.HoeffdingTreeClassifier(grace_period=50, "
                                           "max_depth=8)", "nb": "nb"}
    tricky = ("sel=compose.Select('a,b', \"c,)\") | linear_model.LogisticRegression(), "
              "imb=imblearn.RandomUnderSampler(linear_model.LogisticRegression(), "
              "{True: 0.5, False: 0.5}) , ban=model_selection.BanditClassifier("
              "[naive_bayes.GaussianNB(), tree.HoeffdingTreeClassifier()], metrics.Accuracy(), "
              "bandit.EpsilonGreedy(0.1, seed=1))")
    parsed = parse_challengers(tricky)
    assert list(parsed) == ["sel", "imb", "ban"]
    assert make_model(parsed["sel"])["Select"].keys == {"a,b", "c,)"}
    assert make_model(parsed["imb"]).desired_dist == {True: 0.5, False: 0.5}
    assert len(make_model(parsed["ban"]).models) == 2


def test_challengers_old_forms_behave_as_before():
    assert parse_challengers("tree=hat, forest=arf") == {"tree": "hat", "forest": "arf"}
    assert parse_challengers("") == {} and parse_challengers(" , ") == {}
    for bad, why in [("tree", "'tree' is not name=kind"), ("=hat", "'=hat' is not name=kind"),
                     ("tree=hat,tree=nb", "challenger 'tree' is named twice"),
                     ("tree.HoeffdingTreeClassifier(grace_period=5)",
                      "'tree.HoeffdingTreeClassifier(grace_period=5)' is not name=kind")]:
        with pytest.raises(ValueError) as err:
            parse_challengers(bad)
        assert str(err.value) == why


def test_a_bad_challenger_expression_names_the_challenger():
    with pytest.raises(ModelError) as err:
        parse_challengers("a=nb, b=tree.HoeffdingTreeClassifier(grace=5)")
    assert str(err.value) == ("challenger 'b': model 'tree.HoeffdingTreeClassifier(grace=5)': "
                              "HoeffdingTreeClassifier() got an unexpected keyword argument "
                              "'grace'")
    with pytest.raises(ModelError, match=r"^challenger 'c': model 'zzz': 'zzz' is not a river "):
        parse_challengers("c=zzz")
    with pytest.raises(ConfigError) as env_err:
        load_settings({"UNDERTOW_CHALLENGERS": "c=tree.HoeffdingTreeClassifier(max_depth=8"})
    assert str(env_err.value) == (
        "UNDERTOW_CHALLENGERS: challenger 'c': model 'tree.HoeffdingTreeClassifier(max_depth=8': "
        "not a valid expression (column 29: '(' was never closed) "
        "(got 'c=tree.HoeffdingTreeClassifier(max_depth=8')")
