"""No import circle anywhere in flowdppo/.

The graph is read from the source (ast), not from what happens to be imported at run time: every `import`
and `from … import` counts, at module level and inside functions alike (a deferred import hides a circle,
it does not remove it).  Left out: imports under `if TYPE_CHECKING:` (they never run) and under `if __name__ == "__main__":` (they run
only when the file is the program, as module `__main__`, never when it is imported).
`from .pkg import name` is an edge to `pkg` (its __init__ provides the name) and, when `name` is a submodule,
to that submodule; `from . import sub` with only submodules is an edge to those submodules alone.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "flowdppo"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _never_on_import(node: ast.If) -> bool:
    t = node.test
    if isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__":
        return any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators)
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes outside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _never_on_import(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names]
                # `from pkg import a, b` reads pkg's __init__ unless every name is a submodule of pkg
                targets = subs if all(t in modules for t in subs) else [target] + subs
            for t in targets:
                while t and t not in modules and "." in t:   # `import a.b.c` names a.b.c; keep the deepest module
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_deferred_imports():
    g = import_graph()
    assert "flowdppo.trainer" in g["flowdppo.cli"]          # cli imports the trainer inside a function


def test_no_import_circle_in_flowdppo():
    found = cycles(import_graph())
    assert not found, "import circles (each a set of modules that import one another): " + \
        "; ".join(" ↔ ".join(c) for c in found)


def test_no_tracked_script_notebook_or_test_edits_sys_path():
    """`analysis` and `flowdppo` are installed packages (pyproject.toml): scripts, notebooks and tests import them
    as they are. The one exception loads a user's own file for the conformance suite and says so."""
    import subprocess
    repo = ROOT.parent
    files = subprocess.run(["git", "ls-files", "*.py", "*.ipynb"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.split()
    allowed = {"flowdppo/conformance/adapters.py"}
    offenders = [f for f in files if f not in allowed and (repo / f).exists()
                 and "sys.path.insert" in (repo / f).read_text(encoding="utf-8")
                 and f != "tests/test_import_graph.py"]
    assert not offenders, f"sys.path edited in {offenders}: import the installed package instead"


def package_graph() -> dict[str, set[str]]:
    """The module graph with each subpackage of flowdppo (world, rewards, policy, …) folded into one node."""
    def fold(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2])
    out: dict[str, set[str]] = {}
    for m, targets in import_graph().items():
        a = fold(m)
        out.setdefault(a, set())
        for t in targets:
            b = fold(t)
            out.setdefault(b, set())
            if b != a and b != "flowdppo" and a != "flowdppo":
                out[a].add(b)
    return out


def test_no_two_subpackages_import_each_other():
    """Layering, not only modules: e.g. the reward registry may know the embedded world's rewards, but then the
    world does not reach back into flowdppo.rewards (shared score checks live in the leaf flowdppo.scores)."""
    found = cycles(package_graph())
    assert not found, "package circles: " + "; ".join(" ↔ ".join(c) for c in found)
