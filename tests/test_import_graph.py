"""The import graph of the package, read from the source with ast (every import statement, those inside functions
and under `if TYPE_CHECKING:` included: a circle of types is a circle of dependencies too): no circle anywhere, and
none inside the pipeline. Circles that other parts of the code still have are listed in KNOWN_CIRCLES by name, so
the list can only shrink: a circle not on it fails, and so does a listed one that is gone (take it off the list)."""
import ast
import os

from _util import REPO

PACKAGE = "wizardcoder"
# each a strongly connected set of modules (every one reaches every other through imports)
KNOWN_CIRCLES: set[frozenset[str]] = set()


def modules() -> dict[str, str]:
    """module name -> file, for every .py file of the package."""
    out = {}
    root = os.path.join(REPO, PACKAGE)
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), REPO)[:-3].split(os.sep)
                out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, f)
    return out


def imports(name: str, path: str, known: dict[str, str]) -> set[str]:
    """The package's modules that `name` imports: `from a import b` is a.b when that is a module, else a."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                out.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def circles(g: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected sets of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_right():
    """The reader against imports written out by hand: relative, absolute, `from . import module`, lazy."""
    g = graph()
    assert "wizardcoder.pipeline.stages" in g["wizardcoder.pipeline.run"]  # from .stages import ...
    assert "wizardcoder.settings" in g["wizardcoder.pipeline.stages"]  # from .. import settings
    assert "wizardcoder.report" in g["wizardcoder.pipeline.run"]  # inside a function
    assert "wizardcoder.errors" in g["wizardcoder.cli"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert circles({"a": {"b"}, "b": set()}) == set()


def test_no_import_circle_in_the_pipeline():
    g = graph()
    pipeline = {m: {d for d in deps if d.startswith(f"{PACKAGE}.pipeline")} for m, deps in g.items()
                if m.startswith(f"{PACKAGE}.pipeline")}
    assert circles(pipeline) == set()
    # and nothing in the pipeline imports the verb module (run.py) back
    assert not [m for m, deps in pipeline.items() if f"{PACKAGE}.pipeline.run" in deps]


def test_no_import_circle_but_the_known_ones():
    found = circles(graph())
    assert found <= KNOWN_CIRCLES, f"new import circles: {[sorted(c) for c in found - KNOWN_CIRCLES]}"
    assert found == KNOWN_CIRCLES, f"gone (take them off KNOWN_CIRCLES): {[sorted(c) for c in KNOWN_CIRCLES - found]}"
