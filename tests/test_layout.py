"""The package's shape: imports run one way (no cycles), and modules stay readable in a sitting."""
from __future__ import annotations

from pathlib import Path

from dhnn.pipeline.deps import PACKAGE, _name_of, imports_of

MAX_LINES = 420


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _name_of(path)
        graph[name] = imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", strings=False) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_dhnn_has_no_import_cycle() -> None:
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_import_only_layers_above_them() -> None:
    """The order in dhnn/__init__'s docstring: a module never imports one from a later layer."""
    order = ["paths", "io", "console", "params_base", "params_fetch", "params_models", "params", "taxonomy", "data", "decoding", "models", "evaluation", "tasks",
             "training", "report", "serving", "pipeline"]
    rank = {name: i for i, name in enumerate(order)}

    def layer(module: str) -> int:
        parts = module.split(".")
        return rank[parts[1]] if len(parts) > 1 else -1

    wrong = [(m, d) for m, deps in _graph().items() for d in deps if layer(d) > layer(m) >= 0]
    assert wrong == []


def test_modules_stay_short() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
