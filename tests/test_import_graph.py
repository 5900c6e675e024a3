"""The package's import graph has no cycle, counting imports inside functions and the implicit import
of every parent package (``import a.b.c`` runs ``a/b/__init__.py``), and the layers hold: importing
the bundle format, routing or the runtime's ONNX Runtime path loads no torch-side code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dlsa_prod"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _module_level(tree):
    """Import statements that run when the module is imported (not inside a function)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def import_graph(function_level: bool = True) -> dict[str, set[str]]:
    """Module -> the package modules it imports (with FUNCTION_LEVEL, also inside functions)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        for node in (ast.walk(tree) if function_level else _module_level(tree)):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg
                    for _ in range(node.level - 1):
                        base = base.rsplit(".", 1)[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t not in mods or t == m:
                    continue
                edges[m].add(t)
                parts = t.split(".")
                for k in range(2, len(parts)):  # importing a.b.c imports a.b first
                    parent = ".".join(parts[:k])
                    if parent in mods and parent != m and not m.startswith(parent + "."):
                        edges[m].add(parent)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def reachable(edges, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in edges[v]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers():
    """What importing a low layer loads (module-level imports): no torch-side package code."""
    edges = import_graph(function_level=False)
    torch_side = {"dlsa_prod.training", "dlsa_prod.models", "dlsa_prod.export", "dlsa_prod.ops", "dlsa_prod.pipeline"}
    for low in ("dlsa_prod.bundle_spec", "dlsa_prod.routing", "dlsa_prod.array_ops", "dlsa_prod.backends.ort",
                "dlsa_prod.runtime"):
        bad = sorted(m for m in reachable(edges, low) if any(m == t or m.startswith(t + ".") for t in torch_side))
        assert not bad, f"{low} reaches {bad}"
    assert "dlsa_prod.export" not in {m.rsplit(".", 1)[0] for m in reachable(edges, "dlsa_prod.backends.torch_backend")}
