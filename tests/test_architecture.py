"""The layout's rules, checked on the source (docs/architecture.md): every module lives in a room, rooms depend on
each other one way only, peft's internals are known in `tuner/` only, every family's module names in `towers/` only,
modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peft_skip"

# Room -> the rooms its modules may import at module level: data flows from the left of this table to the right.
ROOMS = {
    "towers": set(),
    "data": set(),
    "tuner": {"towers"},
    "offline": {"data"},
    "training": {"data", "towers", "tuner"},
    "protocols": {"data", "offline", "towers", "training", "tuner"},
    "commands": {"data", "offline", "protocols", "towers", "training", "tuner"},
}
# peft's tuner machinery, its registry and enum, transformers' adapter integration: the method's implementation
# details. peft's public API (get_peft_model, PeftModel, the state-dict helpers) may be used anywhere.
PEFT_INTERNALS = ("peft.tuners", "BaseTuner", "register_peft_method", "PeftType", "transformers.integrations")
FAMILY_NAMES = ("vision_model", "text_model", "get_text_features", "get_image_features", "pooler_output")


def _modules() -> dict[str, Path]:
    """Dotted name (relative to the package; a sub-package by its own name, the package itself as "") -> file."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if "metrics" in parts:  # `evaluate` metric scripts are loaded by file, not imported
            continue
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, module_level: bool = True) -> set[str]:
    """Modules of the package that `name` imports (at module level only, or anywhere)."""
    package = [p for p in name.split(".") if p]
    package = package if path.name == "__init__.py" else package[:-1]
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body if module_level else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found & set(_modules()) - {name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (a package's own sub-modules excluded)."""
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    return {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}


def _room(name: str) -> str:
    return name.split(".")[0]


def test_every_module_lives_in_a_room_with_its_own_docstring():
    top_level = {name for name in _modules() if "." not in name and name and name not in ROOMS}
    assert top_level == set(), f"modules outside the rooms {sorted(ROOMS)}: {sorted(top_level)}"
    for room in ROOMS:
        assert ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text())), room


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


def test_rooms_depend_on_each_other_one_way():
    """Also imports inside functions: a lazy import is still a dependency."""
    wrong = {
        (name, dep)
        for name, path in _modules().items()
        if name
        for dep in _imports(name, path, module_level=False)
        if dep and _room(dep) != _room(name) and _room(dep) not in ROOMS[_room(name)]
    }
    assert wrong == set(), f"imports against the table in test_architecture.ROOMS: {sorted(wrong)}"


def test_only_the_tuner_knows_peft_internals():
    users = {name for name, path in _modules().items() if any(n in path.read_text() for n in PEFT_INTERNALS)}
    assert users and {_room(name) for name in users} == {"tuner"}, users


def test_only_towers_knows_module_names_and_feature_outputs():
    users = {name for name, path in _modules().items() if any(n in path.read_text() for n in FAMILY_NAMES)}
    assert users and {_room(name) for name in users} == {"towers"}, users


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: lines for name, lines in sizes.items() if lines > 320} == {}


def test_the_caches_and_the_fingerprint_know_no_tuner_names():
    """`training/cache/` keys its states by a generic fingerprint; neither reaches the tuner's modules, even
    indirectly."""
    graph = import_graph()

    def reached(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        return seen

    caches = [name for name in graph if name.startswith("training.cache")]
    for name in ["tuner.fingerprint", *caches]:
        assert not reached(name) & {"tuner.layer", "tuner.model"}, name


def test_the_public_api_is_what_users_call_not_the_steps_parts():
    import peft_skip

    step_parts = ("peft_skip.training.cache", "peft_skip.training.classes", "peft_skip.training.loss")
    assert not [name for name in peft_skip.__all__ if getattr(peft_skip, name).__module__.startswith(step_parts)]
    assert {"SkipConfig", "SkipModel", "SkipTrainer", "SkipTrainingArguments", "evaluate_protocol"} <= set(
        peft_skip.__all__
    )
