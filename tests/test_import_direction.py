"""Every import points down the rooms of docs/architecture.md, even inside a function, and no
import cycle exists.

A module may import from its own room or from rooms below it, never from a room above. Imports
are read with ``ast`` from the source (module level, inside functions and methods, relative
imports resolved, ``importlib.import_module("...")`` with a literal name); only imports under
``if TYPE_CHECKING:`` are exempt, since they never run. Rooms in order rule out cycles between
rooms; inside a room, the modules imported at import time form no cycle either.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Top to bottom, as docs/architecture.md lists them. A room is a set of module prefixes; the
# most specific prefix decides (simulator.vllm.plugin is in simulator/vllm, not simulator/).
ROOMS: list[tuple[str, tuple[str, ...]]] = [
    ("simulator/cli", ("simulator.cli", "simulator.__main__")),
    ("simulator/sweep, report", ("simulator.sweep", "simulator.report")),
    ("simulator/vllm", ("simulator.vllm",)),
    ("simulator", ("simulator",)),
    ("scheduler", ("scheduler",)),
    ("traces", ("traces",)),
]
PACKAGES = ("simulator", "scheduler", "traces")
# Third-party packages a room must not import at all (architecture.md: scheduler/ is pure
# decisions; the workload room needs neither a clock nor vLLM).
FORBIDDEN = {"scheduler": ("simpy", "vllm", "torch"), "traces": ("simpy", "vllm", "torch")}


def room_of(module: str) -> int | None:
    """Index of the room holding ``module`` (0 is the top), or None outside the rooms."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(ROOMS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(source: str, module: str, is_package: bool = False,
            at_import: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import that can run, at any depth; ``at_import``:
    only those that run when the module is imported (not inside a function)."""
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if at_import and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from simulator import vllm`` imports the module simulator.vllm (a name that is
            # not a module is listed too: harmless, it is in the room of ``target``)
            found.extend((node.lineno, f"{target}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            found.append((node.lineno, node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def violations(root: Path) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            here = room_of(module)
            if here is None:
                continue
            top_room = ROOMS[here][0].split("/")[0]
            reported = set()       # one violation per import statement
            for line, target in imports(path.read_text(), module, path.name == "__init__.py"):
                there = room_of(target)
                where = f"{path.relative_to(root)}:{line}"
                if there is not None and there < here and where not in reported:
                    reported.add(where)
                    out.append(f"{where}: {module} (room {ROOMS[here][0]}) imports {target} "
                               f"(room {ROOMS[there][0]}, above it)")
                banned = FORBIDDEN.get(top_room, ())
                if target.split(".")[0] in banned:
                    out.append(f"{where}: {module} (room {ROOMS[here][0]}) imports {target}")
                if target.split(".")[0] in ("tests", "experiments"):
                    out.append(f"{where}: {module} imports {target} (not part of the package)")
    return out


def module_graph(root: Path) -> dict[str, set[str]]:
    """Each module -> the package modules it imports when it is imported."""
    paths = {module_name(p, root): p for package in PACKAGES
             for p in sorted((root / package).rglob("*.py"))}
    return {m: {t for _, t in imports(p.read_text(), m, p.name == "__init__.py", at_import=True)
                if t in paths and t != m}
            for m, p in paths.items()}


def test_no_import_cycle():
    """Within a room too: a module never needs, while it is being imported, a module that
    needs it (graphlib names the cycle)."""
    try:
        list(graphlib.TopologicalSorter(module_graph(ROOT)).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_every_import_points_down_the_rooms():
    found = violations(ROOT)
    assert not found, "imports pointing up:\n" + "\n".join(found)


def test_the_rooms_are_those_the_architecture_names():
    """The room list above is architecture.md's: a room added there is added here."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name, _ in ROOMS:
        for folder in name.split(", "):
            assert folder.split("/")[-1] in doc, f"room {folder} is not in docs/architecture.md"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_check_finds_an_import_inside_a_function_and_spares_type_checking(tmp_path):
    root = _tree(tmp_path, {
        "scheduler/__init__.py": "",
        "scheduler/fine.py": """
            from typing import TYPE_CHECKING
            from traces.request import Request
            if TYPE_CHECKING:
                from simulator.engine import Engine
            """,
        "scheduler/bad.py": """
            def fit(model):
                from simulator.cost.linear import fit_linear
                return fit_linear(model)
            """,
        "scheduler/also_bad.py": "import importlib\nimportlib.import_module('simulator.runner')\n",
        "scheduler/clock.py": "import simpy\n",
        "simulator/runner.py": "def run():\n    from . import vllm\n",
        "simulator/vllm/__init__.py": "from ..cli import main\n",
        "simulator/cli/__init__.py": "from simulator.vllm import plugin\n",
    })
    found = violations(root)
    text = "\n".join(found)
    assert "scheduler/bad.py:3" in text and "simulator.cost.linear" in text
    assert "scheduler/also_bad.py:2" in text
    assert "scheduler/clock.py:1" in text and "simpy" in text
    assert "simulator/runner.py:2" in text and "simulator.vllm" in text
    assert "simulator/vllm/__init__.py:1" in text and "simulator.cli" in text
    assert "fine.py" not in text and "simulator/cli/__init__.py" not in text
    assert len(found) == 5, text


def test_the_cycle_check_finds_a_cycle_at_import_but_not_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "traces/a.py": "from traces import b\n",
        "traces/b.py": "import traces.a\n",
        "traces/c.py": "def late():\n    import traces.d\n",
        "traces/d.py": "import traces.c\n",
    })
    graph = module_graph(root)
    assert graph["traces.a"] == {"traces.b"} and graph["traces.c"] == set()
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
    del graph["traces.a"], graph["traces.b"]
    list(graphlib.TopologicalSorter(graph).static_order())


@pytest.mark.parametrize("statement, loaded", [
    ("import scheduler.policies, scheduler.fluid; from scheduler.base import policy_names; "
     "policy_names()", ()),
    ("import simulator.vllm.plugin", ("simulator.vllm", "simulator.vllm.plugin")),
])
def test_policies_and_the_plugin_load_neither_simpy_nor_the_simulator(statement, loaded):
    """What a vLLM server process imports: the policies and the plug-in, without SimPy, vLLM
    (until the plug-in is used) or the simulator's replica loop."""
    code = (f"import sys; {statement}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('simpy', 'vllm', 'simulator')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    modules = set(ast.literal_eval(out.strip()))
    assert not {m for m in modules if m.split(".")[0] in ("simpy", "vllm")}, modules
    heavy = {"simulator.engine", "simulator.runner", "simulator.metrics", "simulator.vllm.loop"}
    assert not modules & heavy, modules
    assert set(loaded) <= modules
