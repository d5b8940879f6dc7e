"""The layering rule, read from the AST of the installed packages: the core imports no analysis, the two analysis
packages import each other's code only where one analysis builds on another's public API, and no import circle is
left (module-level and function-level imports alike)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOTS = ("workbench", "probes", "circuits")
FACES = ("workbench.ui",)
# the circuit families' common types (graph, node grammar), discovery loop and figures
SHARED = ("circuits.discovery", "circuits.head_figures", "circuits.frozen")
# (importer family, imported family): an analysis that builds on another one's public API
ALLOWED = {("circuits.transcoder_paths", "circuits.dictionaries"), ("circuits.cdt", "circuits.patching"),
           ("circuits.benchmark", "circuits.edges"), ("circuits.benchmark", "circuits.patching"),
           ("circuits.benchmark", "circuits.cdt"), ("circuits.attribution", "circuits.dictionaries"),
           ("circuits.vision", "circuits.paths"),  # the ViT's frozen run goes through the paths' DP, no second one
           ("circuits.vision", "probes"),  # the ViT's lazy-neuron counts are probes.sparsity's counters
           # the benchmark scores transcoder paths and attribution graphs over transcoders it trains
           ("circuits.benchmark", "circuits.transcoder_paths"), ("circuits.benchmark", "circuits.attribution"),
           ("circuits.benchmark", "circuits.dictionaries")}


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        folder = Path(importlib.util.find_spec(root).origin).parent
        for file in folder.rglob("*.py"):
            parts = (root, *file.relative_to(folder).with_suffix("").parts)
            name = ".".join(parts).removesuffix(".__init__")
            out[name] = file
    return out


def _imports(name: str, file: Path) -> set[str]:
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ROOTS}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: {m for m in _imports(n, f) if m in mods and m != n} for n, f in mods.items()}


def _family(module: str) -> str:
    """``probes`` is one family (its modules are flat); each ``circuits.X`` is one."""
    return "probes" if module.startswith("probes") else ".".join(module.split(".")[:2])


def test_the_core_imports_no_analysis():
    bad = {n: sorted(m for m in deps if m.split(".")[0] in ("probes", "circuits"))
           for n, deps in _graph().items() if n.startswith("workbench") and not n.startswith(FACES)}
    assert not {n: d for n, d in bad.items() if d}


def test_analysis_packages_import_each_other_only_where_allowed():
    bad = []
    for n, deps in _graph().items():
        if n.split(".")[0] not in ("probes", "circuits"):
            continue
        for m in deps:
            if m.startswith(FACES):
                bad.append((n, m))
            elif m.split(".")[0] in ("probes", "circuits") and _family(m) != _family(n):
                if not (m.startswith(SHARED) or (_family(n), _family(m)) in ALLOWED
                        or n == "circuits"):  # the package root's own docstring module
                    bad.append((n, m))
    assert not bad


def test_no_import_circle():
    graph = _graph()
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:  # Tarjan's strongly connected components, iteratively deep enough here
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    # a package's __init__ naming its own submodules is not a circle
    circles = [c for c in circles if not all(any(o.startswith(x + ".") or x.startswith(o + ".") for o in c if o != x)
                                             for x in c)]
    assert not circles


def test_the_checker_sees_a_planted_violation(tmp_path, monkeypatch):
    """The walk itself works: a core module importing an analysis, and a circle, are both found."""
    core = tmp_path / "bad_core.py"
    core.write_text("from circuits.cdt import discovery\n")
    assert "circuits.cdt" in _imports("workbench.bad_core", core)
    rel = tmp_path / "rel.py"
    rel.write_text("from .weights import x\nfrom . import clean\n")
    assert {"circuits.cdt.weights", "circuits.cdt.clean"} <= _imports("circuits.cdt.rel", rel)
