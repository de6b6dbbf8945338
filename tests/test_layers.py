"""The import graph of the library: layers point one way (cli → library → engine → core values → kernels), the
engine and kernel packages have no circles, and no library module imports the top-level ``lqs`` package.

Read from the source with ``ast`` (imports inside functions count too: a deferred import is still a dependency)."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# lower rank = lower layer; a module may import its own rank or lower ranks only
RANKS = [
    ("lqs.kernels", 0),
    ("lqs._errors", 1), ("lqs._jsonio", 1), ("lqs._version", 1), ("lqs._marginals", 1), ("lqs._theory", 1),
    ("lqs._workload", 1), ("lqs._batch", 1), ("lqs._server", 1), ("lqs._plots", 1),
    ("lqs._arrivals", 1), ("lqs._disagg", 1),
    ("lqs.engine", 2),
    ("lqs.traces", 3), ("lqs.fit", 3), ("lqs.sweep", 3), ("lqs.studies", 3), ("lqs.measured", 3),
    ("lqs.replay", 3), ("lqs._splits", 3),
    ("lqs", 4),  # the package's own __init__ (the public namespace)
    ("lqs.cli", 5), ("lqs.__main__", 5),
]


def _rank(mod: str) -> int:
    best = max((p for p, _ in RANKS if mod == p or mod.startswith(p + ".")), key=len)
    return dict(RANKS)[best]


def _modules():
    out = {}
    for top, prefix in (("lqs", "lqs"), ("kernels", "lqs.kernels")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.join(ROOT, top))[:-3].replace(os.sep, ".")
                name = prefix if rel == "__init__" else prefix + "." + rel.removesuffix(".__init__")
                out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> set[str]:
    """Modules of lqs that ``name`` imports (a ``from X import y`` of a submodule y counts as X.y)."""
    pkg = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    deps = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name == "lqs" or a.name.startswith("lqs."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "lqs" or target.startswith("lqs.")):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                deps.add(sub if sub in MODULES else target)
    deps.discard(name)
    return {d for d in deps if d in MODULES}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles(nodes: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), within ``nodes``."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v] & nodes:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def test_the_graph_was_read():
    assert {"lqs.kernels.step", "lqs.kernels.fused.kernel", "lqs.engine.run", "lqs.cli.simulate"} <= set(MODULES)
    assert "lqs.kernels.step" in GRAPH["lqs.kernels.loop"] and "lqs.engine.run" in GRAPH["lqs.engine.verdict"]


def test_no_circles_in_engine_or_kernels():
    for pkg in ("lqs.engine", "lqs.kernels"):
        nodes = {m for m in MODULES if m.startswith(pkg + ".")}  # the package's __init__ re-exports: not a knot
        assert _cycles(nodes) == [], pkg


def test_layers_point_one_way():
    up = [(m, d) for m, deps in GRAPH.items() for d in deps if _rank(d) > _rank(m)]
    assert up == [], "imports against the layer order cli → library → engine → core values → kernels"


def test_no_library_module_imports_the_lqs_package():
    """Only the CLI (a client of the library) may import ``lqs`` itself; inside the library, import the module."""
    bad = [m for m, deps in GRAPH.items() if "lqs" in deps and _rank(m) < _rank("lqs")]
    assert bad == []


def test_no_library_module_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := sum(1 for _ in open(p, encoding="utf-8"))) > 400}
    assert long == {}
