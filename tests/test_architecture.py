"""The shape of the house (DESIGN.md): imports only point down the layer list, never up and never in a circle;
tasks do not import each other; nothing outside tasks/ tests a task's name; the CLI and serve read the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lmforge"

# top to bottom: a module may import its own layer's shared modules and anything below, never above
LAYERS = [
    ("cli", "__main__"),
    ("serve",),
    ("quickstart", "stages", "catalog", "curves"),
    ("tasks",),
    ("kb",),
    ("inference",),
    ("evaluation",),
    ("data",),
    ("training",),
    ("rundir", "models", "config"),
    ("dist", "errors"),
]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "lmforge" or len(parts) == 1:
        return None  # the package facade (lmforge/__init__.py) re-exports lazily and sits above everything
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(f"module {module} is in no layer of DESIGN.md; add it to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """Every lmforge module this file imports, at the top or lazily inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lmforge")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("lmforge"):
                known = _modules()
                for alias in node.names:
                    out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return out


GRAPH = {name: _imports(path, name) for name, path in _modules().items()}


def test_imports_only_point_down_the_layers():
    upward = []
    for module, targets in GRAPH.items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if here is not None and there is not None and there < here:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports pointing up the layer list:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node):] + [node]))
            return
        if node in done:
            return
        for target in sorted(GRAPH.get(node, ())):
            if target in GRAPH and target != node:
                visit(target, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for module in sorted(GRAPH):
        visit(module, [], done)
    # a package's __init__ importing its own submodules is not a cycle worth reporting
    cycles = [c for c in cycles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def _task_modules() -> list[str]:
    """Modules that register a task (they call ``register(``)."""
    return sorted(name for name, path in _modules().items() if name.startswith("lmforge.tasks.")
                  and "register(" in path.read_text(encoding="utf-8") and not name.endswith(".registry"))


def test_every_task_is_one_module_that_imports_no_other_task():
    tasks = _task_modules()
    assert {"lmforge.tasks.classify", "lmforge.tasks.chat", "lmforge.tasks.code", "lmforge.tasks.pretrain_clm",
            "lmforge.tasks.pretrain_mlm_nsp"} <= set(tasks)
    crossing = [f"{t} -> {target}" for t in tasks for target in GRAPH[t] if target in tasks and target != t]
    assert not crossing, "task modules importing each other:\n" + "\n".join(crossing)


def test_training_does_not_know_evaluation_and_rundir_data_do_not_know_training():
    for module, targets in GRAPH.items():
        if module.startswith("lmforge.training"):
            assert not any(t.startswith("lmforge.evaluation") for t in targets), module
        if module.startswith(("lmforge.rundir", "lmforge.data")):
            assert not any(t.startswith("lmforge.training") for t in targets), module
        if module.startswith("lmforge.evaluation"):
            assert not any(t.startswith("lmforge.tasks") for t in targets), module


@pytest.mark.parametrize("name", ["classify", "chat", "code", "clm", "mlm-nsp"])
def test_no_task_name_is_tested_outside_tasks(name):
    """No ``if task == "classify"`` chains: only tasks/ (and the web UI's display text) may spell a task's name."""
    offenders = []
    for module, path in _modules().items():
        if module.startswith("lmforge.tasks"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    if any(isinstance(v, ast.Constant) and v.value == name for v in values):
                        offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, f"task name '{name}' compared outside tasks/: {offenders}"
