"""The layout's rules, checked on the source: no import cycle, peft's tuner internals in two modules, every family's
module names in one, modules small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peft_skip"


def _modules() -> dict[str, Path]:
    """Dotted name (relative to the package; a sub-package by its own name, the package itself as "") -> file."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if "metrics" in parts:  # `evaluate` metric scripts are loaded by file, not imported
            continue
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _module_level_imports(name: str, path: Path) -> set[str]:
    """Modules of the package that `name` imports when it is imported (not inside functions)."""
    package = [p for p in name.split(".") if p]
    package = package if path.name == "__init__.py" else package[:-1]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found & set(_modules()) - {name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (a package's own sub-modules excluded)."""
    graph = {name: _module_level_imports(name, path) for name, path in _modules().items()}
    return {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}


def test_no_import_cycle():
    graph, done = import_graph(), set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        for dep in sorted(graph[node]):
            assert dep not in trail, f"import cycle: {' -> '.join([*trail, dep])}"
            if dep not in done:
                visit(dep, (*trail, dep))
        done.add(node)

    for name in sorted(graph):
        visit(name, (name,))


def test_only_model_and_layer_know_peft_tuner_internals():
    users = {name for name, path in _modules().items() if "peft.tuners" in path.read_text()}
    assert users == {"layer", "model"}


def test_only_towers_knows_module_names_and_feature_outputs():
    needles = ("vision_model", "text_model", "get_text_features", "get_image_features", "pooler_output")
    users = {name for name, path in _modules().items() if any(n in path.read_text() for n in needles)}
    assert users and all(name.split(".")[0] == "towers" for name in users), users


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: lines for name, lines in sizes.items() if lines > 320} == {}


def test_the_caches_and_the_fingerprint_know_no_tuner_names():
    """`cache/` keys its states by a generic fingerprint; neither reaches the tuner's modules, even indirectly."""
    graph = import_graph()

    def reached(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        return seen

    for name in ("fingerprint", "cache", "cache.image", "cache.text"):
        assert not reached(name) & {"layer", "model"}, name
