"""The layout keeps its rules: every import of every module is checked.

The rules are the table in the docstring of :mod:`plait.kernel`; this test
reads them from there, so the rules written and the rules checked are the
same text.  Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import plait
import plait.kernel

PACKAGE = Path(plait.__file__).resolve().parent


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a plait module, or a third-party top-level package
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import in the module, resolved to plait modules or top-level packages."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, _known(a.name, modules), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                full = f"{origin}.{alias.name}"
                target = full if full in modules else origin
                found.append(Import(name, _known(target, modules), node.lineno))
    return found


def _known(target: str, modules: dict[str, Path]) -> str:
    """A plait module (the deepest that exists), or a third-party top-level name."""
    if target.split(".")[0] != "plait":
        return target.split(".")[0]
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


@dataclass(frozen=True)
class Rule:
    area: str
    allowed: tuple[str, ...]  # plait packages or modules
    forbidden: tuple[str, ...]  # packages or modules, third-party or of plait


def read_rules() -> list[Rule]:
    """The table of :mod:`plait.kernel`'s docstring, under 'area  may import'."""
    doc = plait.kernel.__doc__ or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s+area\s+may import", line))
    rules = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        area, *entries = line.split()
        rules.append(Rule(
            area=area,
            allowed=tuple(e for e in entries if e.startswith("plait")),
            forbidden=tuple(e[1:] for e in entries if e.startswith("!")),
        ))
    return rules


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def area_of(name: str, rules: list[Rule]) -> Rule:
    """The most specific rule whose area holds ``name`` (the row ``plait``
    holds the package's ``__init__`` only)."""
    matching = [r for r in rules if within(name, r.area) and (r.area != "plait" or name == "plait")]
    assert matching, f"{name} is in no area of the table: give it a row"
    return max(matching, key=lambda r: len(r.area))


def violations(rules: list[Rule], modules: dict[str, Path]) -> list[str]:
    out = []
    for name, path in modules.items():
        rule = area_of(name, rules)
        for imp in imports_of(name, path, modules):
            where = f"{name}, line {imp.line}"
            refused = f"{where}: {name} ({rule.area}) may not import {imp.target}"
            if any(within(imp.target, banned) for banned in rule.forbidden):
                out.append(refused)
            elif not imp.target.startswith("plait"):
                continue
            elif area_of(imp.target, rules) is rule:
                continue
            elif not any(within(imp.target, allowed) for allowed in rule.allowed):
                out.append(refused)
    return out


def circles(modules: dict[str, Path]) -> list[list[str]]:
    """The import circles (strongly connected components of two or more modules,
    or a module importing itself), by Tarjan's algorithm."""
    graph = {
        name: sorted({i.target for i in imports_of(name, path, modules) if i.target in modules})
        for name, path in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


# -- the tests --------------------------------------------------------------------------
def test_the_table_is_read_and_names_real_places():
    rules = read_rules()
    modules = all_modules()
    areas = [r.area for r in rules]
    assert "plait.wire" in areas and "plait.kernel.client" in areas and "plait" in areas
    assert len(areas) == len(set(areas)), "an area appears twice in the table"
    for rule in rules:
        for name in (rule.area, *rule.allowed, *(f for f in rule.forbidden if "." in f)):
            assert name in modules, f"the table names {name}, which is not a module or package"
    for name in modules:
        area_of(name, rules)  # every module has a row


def test_no_import_goes_against_the_layer_rules():
    assert violations(read_rules(), all_modules()) == []


def test_there_is_no_import_circle():
    assert circles(all_modules()) == []


def test_the_checker_sees_a_forbidden_arrow_and_a_circle(tmp_path):
    """The checks themselves work: a wire module importing the client, a service
    importing foolscap, and two modules importing each other are all reported."""
    rules = read_rules()
    fake = {
        "plait.wire.x": tmp_path / "x.py",
        "plait.kernel.client.y": tmp_path / "y.py",
        "plait.kernel.controller.z": tmp_path / "z.py",
        "plait.wire.channel": tmp_path / "channel.py",
    }
    fake["plait.wire.x"].write_text("def f():\n    from plait.kernel.client import y\n")
    fake["plait.kernel.client.y"].write_text("import plait.wire.x\n")
    fake["plait.kernel.controller.z"].write_text(
        "from foolscap.api import Referenceable\nfrom plait.wire.channel import open_channel\n")
    fake["plait.wire.channel"].write_text("")
    found = violations(rules, fake)
    assert any("plait.wire.x (plait.wire) may not import plait.kernel.client.y" in v
               for v in found), found
    assert any("may not import foolscap" in v for v in found), found
    assert any("may not import plait.wire.channel" in v for v in found), found
    assert circles(fake) == [["plait.kernel.client.y", "plait.wire.x"]]
    with pytest.raises(AssertionError, match="plait.newthing is in no area"):
        area_of("plait.newthing", rules)


def test_every_exception_is_defined_in_the_errors_module():
    """Exceptions live in one module: no other module of plait defines one."""
    import importlib
    import inspect

    elsewhere = []
    for name in all_modules():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated shims
            module = importlib.import_module(name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == name and name != "plait.wire.errors"):
                elsewhere.append(f"{name}.{obj.__name__}")
    assert elsewhere == []


def test_an_engine_running_a_map_chunk_loads_no_client_code(tmp_path):
    """The case that mattered: a chunk of ``tc.map`` (a task calling the shipped
    ``map_chunk`` with a pickled function) runs on an engine that loads no
    client or controller module."""
    import subprocess
    import sys

    from plait.kernel.engine.shipped import map_chunk
    from plait.wire.serialize import serialize
    from plait.wire.serialized import Serialized
    from plait.wire.task import EngineTask, TaskBatch

    task = EngineTask("map", None, map_chunk, (Serialized.of(abs), (-1, -2, -3)), {}, {}, (),
                      False, False)
    (tmp_path / "batch").write_bytes(TaskBatch((serialize(task),)).payload())
    code = (
        "import pathlib, sys\n"
        "from plait.kernel.engine.interpreter import Interpreter\n"
        "from plait.wire.serialize import deserialize\n"
        f"batch = deserialize(pathlib.Path({str(tmp_path / 'batch')!r}).read_bytes())\n"
        "[(ok, payload, seconds, stash, meta)] = Interpreter().run_task(batch)\n"
        "print(ok, deserialize(payload))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('plait.kernel.client', "
        "'plait.kernel.controller', 'plait.adapters'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["True [1, 2, 3]", "[]"]


@pytest.mark.parametrize("module", ["plait.kernel.engine.shipped", "plait.kernel.engine.taskrun",
                                    "plait.kernel.engine.interpreter", "plait.kernel.engine.process"])
def test_an_engine_loads_no_client_or_controller_code(module):
    """An engine (running a map, a task, any command) loads no module of the
    client or of the controller, whatever the client sent it."""
    import subprocess
    import sys

    code = (f"import sys, {module}\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('plait.kernel.client', "
            "'plait.kernel.controller')))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_architecture_page_shows_the_same_rules_and_real_paths():
    """docs/architecture.md repeats the table (it must not drift) and names
    files and folders of plait that exist."""
    from support import ROOT

    page = (ROOT / "docs" / "architecture.md").read_text()
    doc = plait.kernel.__doc__ or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s+area\s+may import", line))
    for line in lines[start:]:
        if not line.strip():
            break
        assert line.strip() in page, f"docs/architecture.md lacks the rule: {line.strip()}"
    for path in re.findall(r"`((?:plait|tests)/[\w/.]+)`", page):
        assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"
    for path in re.findall(r"`(kernel/[\w/.]+\.py)`", page):
        assert (ROOT / "plait" / path).exists(), f"docs/architecture.md names {path}"
