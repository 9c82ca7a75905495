"""The four rooms and their arrows (docs/layout.md: mechanism, zoo, export, face), and the size rules.

import-linter cannot check this layout: it finds a package's modules by walking the
package's folder, and ``tfgated.zoo`` / ``tfgated.export`` live in the top-level folders
``zoo/`` and ``export/`` (setuptools ``package_dir``), so it never sees them. This AST
test reads every ``.py`` file of the four rooms instead. A lazy import inside a function
is still an import, and so is ``importlib.import_module("tfgated.zoo")``.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# room -> (folder, rooms it may not import)
ROOMS = {
    "mechanism": ("tfgated", ("zoo", "export", "face")),
    "face": ("tfgated/cli", ()),
    "zoo": ("zoo", ("export", "face")),
    "export": ("export", ("zoo", "face")),
}
PREFIXES = {"zoo": "tfgated.zoo", "export": "tfgated.export", "face": "tfgated.cli"}

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
MAX_PUBLIC_PARAMETERS = 12


def _room_of(path):
    """The room of a file; the ``__main__.py`` entry points (``python -m tfgated``,
    ``python -m tfgated.export``, ``python -m tfgated.zoo``) belong to the face."""
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith("tfgated/cli/") or path.name == "__main__.py":
        return "face"
    return {"tfgated": "mechanism", "zoo": "zoo", "export": "export"}[rel.split("/")[0]]


def _files(room=None):
    files = []
    for folder in ("tfgated", "zoo", "export"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if room is None or _room_of(f) == room]


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("zoo", "export"):
        parts = ["tfgated"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_names(source, module, is_package=False):
    """Every module name ``source`` imports: import statements (at any depth, relative
    ones resolved against ``module``) and string arguments of ``import_module``/``__import__``."""
    names = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names.append(stem)
            names += [f"{stem}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.append(arg.value)
    return names


def forbidden_imports(source, module, room, is_package=False):
    """The imports in ``source`` that break the arrows for a module of ``room``."""
    bad = []
    for name in imported_names(source, module, is_package):
        for other in ROOMS[room][1]:
            prefix = PREFIXES[other]
            if name == prefix or name.startswith(prefix + "."):
                bad.append(name)
        if name == "tfgated.zoo.export" or name == "tfgated.export.zoo":
            bad.append(name)
    return sorted(set(bad))


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_arrows_go_one_way(room):
    broken = {}
    for path in _files(room):
        found = forbidden_imports(path.read_text(), _module_name(path), room, path.name == "__init__.py")
        if found:
            broken[path.relative_to(ROOT).as_posix()] = found
    assert broken == {}, f"{room} imports rooms it may not: {broken}"


# The forms the mechanism used to import the zoo and export with (search.py, train.py,
# pipeline.py, demo.py, micronet.py): each must be caught.
_BROKEN_FORMS = [
    ("def f():\n    from tfgated.zoo.sipa import build_sipa\n", "tfgated.search"),
    ("def f():\n    from tfgated.zoo import registry\n", "tfgated.search"),
    ("def f():\n    import tfgated.zoo\n", "tfgated.search"),
    ("def f():\n    from tfgated import zoo\n", "tfgated.train"),
    ("def f():\n    from tfgated.export import export\n", "tfgated.pipeline"),
    ("import importlib\ndef f():\n    importlib.import_module('tfgated.zoo')\n", "tfgated.micronet"),
    ("from ..zoo import load\n", "tfgated.exits.layers"),
    ("from tfgated import export as e\n", "tfgated.pipeline"),
]


@pytest.mark.parametrize("source,module", _BROKEN_FORMS)
def test_checker_catches_every_import_form(source, module):
    assert forbidden_imports(source, module, "mechanism") != []


def test_checker_allows_the_arrows():
    assert forbidden_imports("from tfgated.zoo import load\nimport tfgated.export\n", "tfgated.cli.run", "face") == []
    assert forbidden_imports("from tfgated.graph import trace\n", "tfgated.zoo.resnet", "zoo") == []
    assert forbidden_imports("from tfgated.export import fold\n", "tfgated.zoo.resnet", "zoo") == ["tfgated.export",
                                                                                                 "tfgated.export.fold"]


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameter_count(node):
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def test_modules_are_small():
    long = {p.relative_to(ROOT).as_posix(): n for p in _files() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_are_short_and_take_few_parameters():
    long, wide = {}, {}
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        for node in _functions(ast.parse(path.read_text())):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long[f"{rel}:{node.name}"] = lines
            if not node.name.startswith("_") and _parameter_count(node) > MAX_PUBLIC_PARAMETERS:
                wide[f"{rel}:{node.name}"] = _parameter_count(node)
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
    assert wide == {}, f"public functions with over {MAX_PUBLIC_PARAMETERS} parameters: {wide}"
