"""The package's structure: no import circle, no module reading another module's private name,
the training loop in one place, and thin estimator shells (issue 10's invariants)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import deconvnet as dn

ROOT = Path(dn.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """``(target module, imported name)`` for every ``from deconvnet... import ...`` in a module,
    at any depth (imports inside functions count)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "deconvnet":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in modules else target), alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "deconvnet":
                    yield alias.name, None


def test_no_import_circle_in_the_package():
    modules = _modules()
    graph = {m: set() for m in modules}
    for m, p in modules.items():
        for target, _ in _imports(m, p, modules):
            # a package's __init__ gathering its own submodules is not a circle
            if target in modules and target != m and not target.startswith(m + ".") and target != "deconvnet":
                graph[m].add(target)
    state: dict[str, int] = {}
    circles = []

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, circles


def test_no_module_imports_a_private_name_of_another():
    modules = _modules()
    private = [(m, target, name) for m, p in modules.items() for target, name in _imports(m, p, modules)
               if name and name.startswith("_") and name != "__version__" and f"{target}.{name}" not in modules]
    assert not private, private


def _private_reads(tree: ast.AST, own: frozenset = frozenset()):
    """``obj._name`` reads on anything but ``self``/``cls``, except names that the enclosing
    class defines itself (its own methods called on a new instance)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            defined = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            yield from _private_reads(node, own | frozenset(defined))
            continue
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls")
                and node.attr not in own):
            yield node.value.id, node.attr, node.lineno
        yield from _private_reads(node, own)


def test_no_module_reads_a_private_attribute_of_an_object_it_does_not_own():
    found = [(m, *hit) for m, p in _modules().items() for hit in _private_reads(ast.parse(p.read_text()))]
    assert not found, found


def test_the_epoch_loop_exists_once():
    """Only deconvnet.train draws an epoch's image order."""
    users = [m for m, p in _modules().items() if "randperm" in p.read_text()]
    assert users == ["deconvnet.train"], users


def _body_lines(fn) -> int:
    """Lines of a function's body, without its docstring."""
    body = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0].body
    start = body[1].lineno if inspect.getdoc(fn) and len(body) > 1 else body[0].lineno
    return body[-1].end_lineno - start + 1


def test_fit_methods_are_thin_shells():
    assert _body_lines(dn.DeconvLayer.fit) <= 40
    assert _body_lines(dn.DeconvNet.fit) <= 40


def test_allowed_values_are_declared_once():
    """METHODS, FILTER_METHODS, BOUNDARIES and PREPROCESSING are assigned in config.py only."""
    declared = {}
    for m, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id in ("METHODS", "FILTER_METHODS", "BOUNDARIES", "PREPROCESSING"):
                        declared.setdefault(t.id, []).append(m)
    assert declared == {k: ["deconvnet.config"] for k in ("METHODS", "FILTER_METHODS", "BOUNDARIES",
                                                          "PREPROCESSING")}, declared
