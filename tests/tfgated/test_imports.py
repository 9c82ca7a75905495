"""The mechanism's modules import each other without loops (issue 19: the old loops were
complexity -> graph -> complexity and graph -> exits -> early_exit -> complexity).

Every import counts, lazy ones inside functions too. Importing ``a.b.c`` runs ``a.b`` first,
so a module importing a sibling of another package also depends on that package's
``__init__``; a module's own parent packages are not counted (they import their children).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _modules():
    found = {}
    for path in sorted((ROOT / "tfgated").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name, path, known):
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            stem = node.module or ""
            if node.level:
                stem = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names.add(stem)
            names.update(f"{stem}.{alias.name}" for alias in node.names)
    edges = set()
    for imported in names:
        parts = imported.split(".")
        for end in range(2, len(parts) + 1):
            module = ".".join(parts[:end])
            if module in known and module != name and not (name + ".").startswith(module + "."):
                edges.add(module)
    return edges


def _cycle(graph):
    """One import cycle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return stack[stack.index(other):] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_mechanism_has_no_import_loops():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert not any(m.startswith("tfgated.exits") for m in graph["tfgated.graph"])
    assert "tfgated.graph" not in graph["tfgated.exits.layers"]
    assert _cycle(graph) is None, f"import loop: {' -> '.join(_cycle(graph))}"


def test_the_loop_finder_finds_a_loop():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
