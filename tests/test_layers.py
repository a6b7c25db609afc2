"""The package's structure: sub-packages in the order data flows, each importing only from those before it,
no import cycle, imports at the top of modules, and modules short enough to read."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lie_helpers"
LAYERS = ("engine", "data", "training", "analysis", "study", "figures", "pipeline")
MAX_LINES = 500
# Imports that stay inside a function, each for a reason: a test-only dependency.
INNER_IMPORTS = {("figures.page", "playwright.sync_api")}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def name_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path):
    """(node, absolute module inside lie_helpers or None for outside, is at module level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name_of(path).split(".")[:-1] if path.name != "__init__.py" else name_of(path).split(".")
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module.removeprefix("lie_helpers").lstrip(".") if node.module.startswith("lie_helpers") else None
                target = None if node.module and not node.module.startswith("lie_helpers") else target
            yield node, target, node.module, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                inside = alias.name.startswith("lie_helpers")
                yield node, alias.name.removeprefix("lie_helpers").lstrip(".") if inside else None, alias.name, id(node) in top


def layer_of(module: str):
    first = module.split(".")[0] if module else ""
    return LAYERS.index(first) if first in LAYERS else None


@pytest.mark.parametrize("path", modules(), ids=name_of)
def test_a_layer_imports_only_from_the_layers_before_it(path):
    own = layer_of(name_of(path))
    for node, target, _, _ in imports_of(path):
        if own is None or target is None:
            continue
        theirs = layer_of(target)
        assert theirs is None or theirs <= own, \
            f"{name_of(path)} (layer {LAYERS[own]}) imports {target} (layer {LAYERS[theirs]}), line {node.lineno}"


@pytest.mark.parametrize("path", modules(), ids=name_of)
def test_imports_are_at_the_top(path):
    for node, _, module, at_top in imports_of(path):
        if not at_top and isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(name_of(path) == m and (module or "").startswith(i) for m, i in INNER_IMPORTS):
                continue
            # `if __name__ == "__main__":` blocks and TYPE_CHECKING guards are not functions; everything else is.
            assert False, f"{name_of(path)} imports {module} inside a function or block, line {node.lineno}"


def test_the_import_graph_has_no_cycle():
    graph = {name_of(p): {t for _, t, _, top in imports_of(p) if t and top} for p in modules()}
    graph = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    state = {}

    def visit(m, trail):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(t):], t]))
            if t not in state:
                visit(t, [*trail, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("path", modules(), ids=name_of)
def test_no_module_is_longer_than_a_reader_can_hold(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name_of(path)} has {lines} lines (at most {MAX_LINES}: split it by idea)"


def test_the_rules_a_review_found_broken_hold():
    """The data layer reads no profile, and the engine imports nothing of the analysis."""
    for path in (PACKAGE / "data").glob("*.py"):
        assert all(t is None or layer_of(t) in (None, 1) for _, t, _, _ in imports_of(path)), name_of(path)
    for path in (PACKAGE / "engine").glob("*.py"):
        assert all(t is None or layer_of(t) in (None, 0) for _, t, _, _ in imports_of(path)), name_of(path)
