"""The River models a dataflow can serve, named by an expression that is parsed, never evaluated.

A model is written the way River's own documentation writes it:

>>> model = make_model("preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=0.001)")
>>> [type(step).__name__ for step in model.steps.values()], model["LogisticRegression"].l2
(['StandardScaler', 'LogisticRegression'], 0.001)

The expression is read with :mod:`ast` and built node by node. Allowed: dotted names that resolve
to a public class or function defined in the ``river`` package (``linear_model.LogisticRegression``
or ``river.linear_model.LogisticRegression``; nested submodules such as ``optim.losses.Log``),
calls of those with literal arguments (numbers, strings, booleans, ``None``, and lists, tuples,
dicts and sets of them) or nested allowed calls, and ``|`` (pipeline) and ``+`` (union) between
estimators. Nothing else: any other name, attribute, operator or syntax is a :class:`ModelError`.

``"package.module:factory"`` names a user's own estimator instead: ``package.module`` is imported
and ``factory()`` is called; it must return an object with ``learn_one`` and ``predict_one`` or
``predict_proba_one``.

Four short names are aliases (:data:`ALIASES`); ``hat`` and ``arf`` take their seed from
:func:`make_model`'s ``seed``:

>>> type(make_model("hat")).__name__, make_model("arf", seed=7).seed
('HoeffdingAdaptiveTreeClassifier', 7)

A bad expression is one line naming it (a :class:`~undertow.errors.ModelError`):

>>> check_model("naive_bayes.GaussianNB(k=5)")
Traceback (most recent call last):
...
undertow.errors.ModelError: model 'naive_bayes.GaussianNB(k=5)': GaussianNB() got an unexpected keyword argument 'k'
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import pkgutil
import re
import warnings
from types import ModuleType
from typing import Any

import river
from river import compose

from undertow.errors import ModelError

#: The short names of today's models, as the expressions they stand for (``{seed}`` is
#: :func:`make_model`'s ``seed``).
ALIASES: dict[str, str] = {
    "logreg": "preprocessing.StandardScaler() | linear_model.LogisticRegression()",
    "hat": "tree.HoeffdingAdaptiveTreeClassifier(seed={seed})",
    "arf": "forest.ARFClassifier(n_models=10, seed={seed})",
    "nb": "naive_bayes.GaussianNB()",
}
MODELS = tuple(ALIASES)

#: The longest expression read (a guard against pathological input, far above any real model).
MAX_LENGTH = 10_000

#: River modules a model expression may not use, and why.
_FORBIDDEN = {
    "datasets": "it downloads and reads data sets",
    "stream": "it reads and writes files",
    "evaluate": "it runs models, it does not make one",
    "checks": "it runs models, it does not make one",
}

_FACTORY = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*:\s*([A-Za-z_]\w*)\s*$")
_OPERATORS = {ast.BitOr: "|", ast.Add: "+"}


def make_model(expr: str, *, seed: int = 42) -> Any:
    """A fresh, untrained model (a new object on every call) from an alias, a River expression
    or ``package.module:factory``. ``seed`` is used by the ``hat`` and ``arf`` aliases only (an
    expression says its own seeds). Raises :class:`ModelError` as :func:`check_model` does."""
    if not isinstance(expr, str):
        raise ModelError(f"model {expr!r}: expected a string, got {type(expr).__name__}")
    text = expr.strip()
    if text in ALIASES:
        return _build(ALIASES[text].format(seed=int(seed)), expr)
    match = _FACTORY.match(text)
    if match:
        return _from_factory(match[1], match[2], expr)
    return _build(text, expr)


def check_model(expr: str) -> None:
    """Raise :class:`ModelError`, one line naming ``expr`` and what is wrong, unless ``expr``
    builds a model. The model is built once, so its arguments are checked by River itself.

    >>> check_model("forest.ARFClassifier(n_models=5, seed=1)")
    >>> check_model("optim.SDG(0.1)")
    Traceback (most recent call last):
    ...
    undertow.errors.ModelError: model 'optim.SDG(0.1)': river.optim has no 'SDG' (did you mean 'SGD'?)
    >>> check_model('os.system("x")')
    Traceback (most recent call last):
    ...
    undertow.errors.ModelError: model 'os.system("x")': 'os' is not a river module
    """
    make_model(expr)


# -- River expressions ----------------------------------------------------------------------------

def _build(text: str, expr: str) -> Any:
    if not text:
        raise ModelError(f"model {expr!r}: empty; expected a River expression, "
                         f"package.module:factory or one of {', '.join(MODELS)}")
    if len(text) > MAX_LENGTH:
        raise ModelError(f"model {expr[:40]!r}...: longer than {MAX_LENGTH} characters")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except SyntaxError as ex:
        where = f"column {ex.offset}: " if ex.offset else ""
        raise ModelError(f"model {expr!r}: not a valid expression ({where}{ex.msg})") from None
    except (ValueError, RecursionError, MemoryError) as ex:
        raise ModelError(f"model {expr!r}: not a valid expression ({_one_line(ex)})") from None
    try:
        model = _Builder(expr).value(tree.body, top=True)
    except RecursionError:
        raise ModelError(f"model {expr!r}: nested too deeply") from None
    _check_estimator(model, _describe(model), expr)
    return model


class _Builder:
    """Builds the value of one parsed expression, refusing every node it does not know."""

    def __init__(self, expr: str) -> None:
        self.expr = expr

    def fail(self, why: str) -> ModelError:
        return ModelError(f"model {self.expr!r}: {why}")

    def value(self, node: ast.expr, *, top: bool = False) -> Any:
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.BinOp):
            return self.operator(node)
        if isinstance(node, (ast.Name, ast.Attribute)):
            path = _dotted(node)
            if path is None:
                raise self.fail(f"{ast.unparse(node)!r} is not a river name")
            obj = self.resolve(path)
            if isinstance(obj, ModuleType):
                raise self.fail(f"{_river_path(path)} is a module, not a model")
            raise self.fail(f"{'.'.join(path)} is not called (write {'.'.join(path)}(...))")
        if top:
            got = (f"the literal {_short(node)}" if isinstance(node, ast.Constant)
                   else _node_kind(node))
            raise self.fail(f"a model is a call of a river class, got {got}")
        return self.literal(node)

    def literal(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            v = node.value
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
            raise self.fail(f"{type(v).__name__} literals are not allowed ({ast.unparse(node)})")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = node.operand
            if (isinstance(operand, ast.Constant) and isinstance(operand.value, (int, float))
                    and not isinstance(operand.value, bool)):
                return -operand.value if isinstance(node.op, ast.USub) else operand.value
            raise self.fail(f"a sign applies to a number only ({ast.unparse(node)})")
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self.value(e) for e in node.elts if not self.starred(e)]
            if isinstance(node, ast.List):
                return items
            if isinstance(node, ast.Tuple):
                return tuple(items)
            try:
                return set(items)
            except TypeError as ex:
                raise self.fail(f"a set of {ast.unparse(node)}: {_one_line(ex)}") from None
        if isinstance(node, ast.Dict):
            out = {}
            for k, v in zip(node.keys, node.values, strict=True):
                if k is None:
                    raise self.fail("'**' unpacking is not allowed")
                key = self.literal(k)
                try:
                    out[key] = self.value(v)
                except TypeError as ex:
                    raise self.fail(f"dict key {ast.unparse(k)}: {_one_line(ex)}") from None
            return out
        raise self.fail(f"{_node_kind(node)} is not allowed ({_short(node)})")

    def starred(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Starred):
            raise self.fail("'*' unpacking is not allowed")
        return False

    def call(self, node: ast.Call) -> Any:
        path = _dotted(node.func)
        if path is None:
            raise self.fail(f"only river classes and functions can be called, not "
                            f"{_short(node.func)}")
        target = self.resolve(path)
        name = path[-1]
        if isinstance(target, ModuleType):
            raise self.fail(f"{_river_path(path)} is a module, not a class or function")
        if not (inspect.isclass(target) or inspect.isfunction(target)):
            raise self.fail(f"{_river_path(path)} is not a class or function")
        args = [self.value(a) for a in node.args if not self.starred(a)]
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise self.fail("'**' unpacking is not allowed")
            kwargs[kw.arg] = self.value(kw.value)
        self.check_arguments(target, name, args, kwargs)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return target(*args, **kwargs)
        except Exception as ex:  # River's own check of its arguments, whatever it raises
            raise self.fail(f"{name}(): {_one_line(ex)}") from None

    def check_arguments(self, target: Any, name: str, args: list[Any],
                        kwargs: dict[str, Any]) -> None:
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return
        params = sig.parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            named = [n for n, p in params.items()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            for key in kwargs:
                if key not in named:
                    raise self.fail(f"{name}() got an unexpected keyword argument {key!r}"
                                    f"{_suggest(key, named)}")
        try:
            sig.bind(*args, **kwargs)
        except TypeError as ex:
            raise self.fail(f"{name}() {_one_line(ex)}") from None

    def operator(self, node: ast.BinOp) -> Any:
        symbol = _OPERATORS.get(type(node.op))
        if symbol is None:
            raise self.fail(f"operator {_op_symbol(node.op)!r} is not allowed (only | and +)")
        left, right = self.value(node.left), self.value(node.right)
        for side, obj in (("left", left), ("right", right)):
            if not isinstance(obj, river.base.Estimator):
                raise self.fail(f"{symbol!r} joins River estimators; its {side} side is "
                                f"{_describe(obj)}")
        try:
            return left | right if symbol == "|" else left + right
        except Exception as ex:
            raise self.fail(f"{_describe(left)} {symbol} {_describe(right)}: "
                            f"{_one_line(ex)}") from None

    def resolve(self, path: list[str]) -> Any:
        """The river object a dotted name stands for; every step but the last is a module."""
        parts = path[1:] if path[0] == "river" else path
        if not parts:
            return river
        if path[0] != "river" and not _is_submodule(river, parts[0]):
            raise self.fail(f"{parts[0]!r} is not a river module"
                            f"{_suggest(parts[0], _public_names(river, modules_only=True))}")
        obj: Any = river
        where = ["river"]
        for i, part in enumerate(parts):
            if part.startswith("_"):
                raise self.fail(f"{'.'.join(where)}.{part} is private")
            if part in _FORBIDDEN:
                raise self.fail(f"river.{'.'.join(parts[:i + 1])} cannot be used in a model "
                                f"({_FORBIDDEN[part]})")
            if not isinstance(obj, ModuleType):
                raise self.fail(f"{'.'.join(where)} is not a module, so "
                                f"{'.'.join(where)}.{part} is not allowed")
            nxt = getattr(obj, part, None)
            if nxt is None and _is_submodule(obj, part):
                try:
                    nxt = importlib.import_module(f"{obj.__name__}.{part}")
                except Exception as ex:  # an optional dependency of River is missing, say
                    raise self.fail(f"cannot import {'.'.join(where)}.{part} "
                                    f"({type(ex).__name__}: {_one_line(ex)})") from None
            if nxt is None:
                raise self.fail(f"{'.'.join(where)} has no {part!r}"
                                f"{_suggest(part, _public_names(obj))}")
            where.append(part)
            if isinstance(nxt, ModuleType):
                if not nxt.__name__.startswith("river."):
                    raise self.fail(f"{'.'.join(where)} is not a river module")
            elif not getattr(nxt, "__module__", "").startswith("river."):
                raise self.fail(f"{'.'.join(where)} is not defined in river")
            obj = nxt
        return obj


# -- package.module:factory -----------------------------------------------------------------------

def _from_factory(module_name: str, attr: str, expr: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except Exception as ex:  # the user's module: whatever its import raises is reported
        raise ModelError(f"model {expr!r}: cannot import {module_name!r} "
                         f"({type(ex).__name__}: {_one_line(ex)})") from None
    if not hasattr(module, attr):
        raise ModelError(f"model {expr!r}: module {module_name!r} has no {attr!r}"
                         f"{_suggest(attr, [n for n in dir(module) if not n.startswith('_')])}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise ModelError(f"model {expr!r}: {module_name}.{attr} is not callable "
                         f"(it is {_describe(factory)})")
    try:
        model = factory()
    except Exception as ex:
        raise ModelError(f"model {expr!r}: {attr}() failed "
                         f"({type(ex).__name__}: {_one_line(ex)})") from None
    _check_estimator(model, f"{attr}() returned {_describe(model)}, which", expr)
    return model


# -- helpers --------------------------------------------------------------------------------------

def _check_estimator(model: Any, what: str, expr: str) -> None:
    """Raise unless ``model`` learns and predicts; ``what`` is the subject of the message."""
    why = ""
    if not callable(getattr(model, "learn_one", None)):
        why = "it has no learn_one"
    elif isinstance(model, compose.Pipeline):
        if not model.steps:
            why = "the pipeline is empty"
        elif not _predicts(last := list(model.steps.values())[-1]):
            why = f"its last step {_describe(last)} has no predict_one or predict_proba_one"
    elif not _predicts(model):
        why = "it has no predict_one or predict_proba_one"
    if why:
        raise ModelError(f"model {expr!r}: {what} is not a model ({why})")


def _predicts(obj: Any) -> bool:
    return (callable(getattr(obj, "predict_one", None))
            or callable(getattr(obj, "predict_proba_one", None)))


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _is_submodule(module: ModuleType, name: str) -> bool:
    if not hasattr(module, "__path__") or name.startswith("_"):
        return False
    try:
        return importlib.util.find_spec(f"{module.__name__}.{name}") is not None
    except (ImportError, ValueError):
        return False


def _public_names(module: ModuleType, *, modules_only: bool = False) -> list[str]:
    names = {m.name for m in pkgutil.iter_modules(getattr(module, "__path__", []))}
    if not modules_only:
        names.update(dir(module))
    return sorted(n for n in names if not n.startswith("_") and n not in _FORBIDDEN)


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _river_path(path: list[str]) -> str:
    return ".".join(path if path[0] == "river" else ["river", *path])


def _describe(obj: Any) -> str:
    if isinstance(obj, river.base.Base):
        return type(obj).__name__
    if inspect.isclass(obj):
        return f"the class {obj.__name__}"
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _node_kind(node: ast.AST) -> str:
    kinds = {ast.Lambda: "a lambda", ast.Subscript: "a subscript", ast.JoinedStr: "an f-string",
             ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
             ast.DictComp: "a comprehension", ast.GeneratorExp: "a comprehension",
             ast.Compare: "a comparison", ast.BoolOp: "a boolean operator",
             ast.IfExp: "a conditional expression", ast.NamedExpr: "an assignment",
             ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
             ast.Starred: "'*' unpacking", ast.Slice: "a slice",
             ast.UnaryOp: "a unary operator", ast.Constant: "a literal", ast.List: "a list",
             ast.Tuple: "a tuple", ast.Dict: "a dict", ast.Set: "a set"}
    return kinds.get(type(node), f"a {type(node).__name__} expression")


def _op_symbol(op: ast.operator) -> str:
    return {ast.Sub: "-", ast.Mult: "*", ast.MatMult: "@", ast.Div: "/", ast.Mod: "%",
            ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitXor: "^",
            ast.BitAnd: "&", ast.FloorDiv: "//"}.get(type(op), type(op).__name__)


def _short(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(ex: BaseException) -> str:
    return " ".join(str(ex).split()) or type(ex).__name__
