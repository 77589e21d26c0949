"""The layers, checked by reading the source (ast; nothing is imported or run).

* ``undertow/`` is pure logic: it imports neither ``bytewax`` nor ``confluent_kafka``.
* Nothing on a dataflow's path (``undertow/``, ``operators/``, ``connectors/``, ``dataflows/``)
  imports the test harness (``harness/``).
* ``undertow/`` never calls back up: it imports no ``operators``, ``connectors`` or
  ``dataflows``.

Every form counts: ``import a.b``, ``from a import b``, relative imports (resolved against the
module's package), imports inside functions or ``if TYPE_CHECKING:``, and
``importlib.import_module("a.b")`` / ``__import__("a")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ON_A_DATAFLOWS_PATH = ("undertow", "operators", "connectors", "dataflows")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at ``path``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target
            if not node.module:  # "from . import x": x is a module of that package
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}".lstrip(".")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = (func.attr if isinstance(func, ast.Attribute)
                      else func.id if isinstance(func, ast.Name) else "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(
                    first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def violations(root: Path, packages: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """One line per import, in a module of ``packages``, of a ``forbidden`` top-level package."""
    banned = set(forbidden)
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for line, target in sorted(imports(path, root)):
                if target.split(".")[0] in banned:
                    found.append(f"{path.relative_to(root)}:{line} imports {target}")
    return found


def test_pure_logic_imports_neither_bytewax_nor_confluent_kafka() -> None:
    bad = violations(ROOT, ["undertow"], ["bytewax", "confluent_kafka"])
    assert not bad, "undertow/ is pure logic (no bytewax, no confluent_kafka):\n" + "\n".join(bad)


def test_nothing_on_a_dataflows_path_imports_the_test_harness() -> None:
    bad = violations(ROOT, ON_A_DATAFLOWS_PATH, ["harness"])
    assert not bad, "harness/ stands in for production; a dataflow must not need it:\n" + (
        "\n".join(bad))


def test_pure_logic_never_calls_back_up() -> None:
    bad = violations(ROOT, ["undertow"], ["operators", "connectors", "dataflows"])
    assert not bad, "undertow/ must not import the layers above it:\n" + "\n".join(bad)


def test_the_layers_checked_are_there() -> None:
    """The checks read real modules (a renamed folder would make them pass vacuously)."""
    for package in (*ON_A_DATAFLOWS_PATH, "harness"):
        assert len(list((ROOT / package).rglob("*.py"))) >= 3, package
    assert any(t == "bytewax.dataflow" for p in (ROOT / "dataflows").rglob("*.py")
               for _, t in imports(p, ROOT)), "the reader should see dataflows/ import bytewax"


# -- the checker itself, on a small tree with one import of every form ---------------------------
BAD_MODULE = '''
import os
import bytewax.operators as op
from confluent_kafka import Producer
from harness import kafka
from . import sibling
from .. import connectors
from ..dataflows.stream import build_flow
import importlib

def later():
    from operators.decode import decode_events
    importlib.import_module("harness.process")
    __import__("bytewax")

if False:
    import harnessed  # a different package: not the harness
'''


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    pkg = tmp_path / "undertow" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "undertow" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import bad\n")
    (pkg / "bad.py").write_text(BAD_MODULE)
    (pkg / "good.py").write_text("import math\nfrom undertow.sub import bad\n")
    return tmp_path


def test_the_reader_resolves_every_form_of_import(tree: Path) -> None:
    assert sorted(imports(tree / "undertow" / "sub" / "bad.py", tree)) == [
        (2, "os"),
        (3, "bytewax.operators"),
        (4, "confluent_kafka"),
        (5, "harness"),
        (6, "undertow.sub"),
        (6, "undertow.sub.sibling"),
        (7, "undertow"),
        (7, "undertow.connectors"),  # relative: inside undertow/, not the top-level package
        (8, "undertow.dataflows.stream"),
        (9, "importlib"),
        (12, "operators.decode"),
        (13, "harness.process"),
        (14, "bytewax"),
        (17, "harnessed"),
    ]
    assert list(imports(tree / "undertow" / "sub" / "__init__.py", tree)) == [
        (1, "undertow.sub"), (1, "undertow.sub.bad")]


def test_the_checker_names_the_module_the_line_and_the_import(tree: Path) -> None:
    bad = "undertow/sub/bad.py"
    assert violations(tree, ["undertow"], ["bytewax", "confluent_kafka"]) == [
        f"{bad}:3 imports bytewax.operators",
        f"{bad}:4 imports confluent_kafka",
        f"{bad}:14 imports bytewax",
    ]
    assert violations(tree, ["undertow"], ["harness"]) == [
        f"{bad}:5 imports harness",
        f"{bad}:13 imports harness.process",
    ]
    assert violations(tree, ["undertow"], ["operators", "connectors", "dataflows"]) == [
        f"{bad}:12 imports operators.decode",
    ]
