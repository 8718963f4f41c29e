"""The layout rules of issue 19, kept: no import cycle between modules at import time, no module far over
400 lines, and no command that edits sys.path (the venv has an editable install)."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 420  # "none over ~400"


def module_graph() -> dict[str, set[str]]:
    """Module -> the imgtrain/shards modules it imports at module level (not inside functions, not under
    `if TYPE_CHECKING:`)."""
    mods = {}
    for f in [*ROOT.glob("imgtrain/**/*.py"), *ROOT.glob("shards/**/*.py")]:
        rel = f.relative_to(ROOT).with_suffix("")
        mods[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f

    def targets(node, cur: str, is_pkg: bool) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            parts = cur.split(".") if is_pkg else cur.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]

    graph = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.parse(f.read_text()).body:
            nodes = node.body if isinstance(node, ast.Try) else [node]
            for n in nodes:
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    for d in targets(n, name, f.name == "__init__.py"):
                        while d and d not in mods:
                            d = d.rpartition(".")[0]
                        if d and d != name:
                            deps.add(d)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = module_graph()
    assert len(graph) > 100 and "imgtrain.engine.trainer" in graph
    assert "imgtrain.runs" in graph["imgtrain.engine.cli"]  # the graph sees imports
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_far_over_400_lines():
    long = {str(f.relative_to(ROOT)): n for f in [*ROOT.glob("imgtrain/**/*.py"), *ROOT.glob("shards/**/*.py"),
                                                  *ROOT.glob("jobs/*.py")]
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_sys_path_edits_outside_tests():
    edits = [str(f.relative_to(ROOT)) for d in ("imgtrain", "shards", "jobs", "benchmarks")
             for f in (ROOT / d).rglob("*.py") if re.search(r"sys\.path\.(insert|append)", f.read_text())]
    assert edits == []
