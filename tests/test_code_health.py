"""Rules of the codebase's shape (issue 14): no import cycle inside interp/ (lazy imports
inside functions included), and no function over 60 lines unless its docstring says why."""
import ast
from pathlib import Path

import networkx as nx

from interp.models.zoo import REPO_ROOT

MAX_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for p in (REPO_ROOT / "interp").rglob("*.py"):
        name = ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def test_no_import_cycle_in_interp():
    mods = _modules()
    g = nx.DiGraph()
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("interp"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in mods else node.module
                    if target in mods and target != name:
                        g.add_edge(name, target)
    cycles = [c for c in nx.simple_cycles(g) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_long_functions_say_why():
    long = []
    for folder in ("interp", "apps"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    why = "lines" in (ast.get_docstring(node) or "")
                    if n > MAX_LINES and not why:
                        long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} "
                                    f"{node.name} ({n} lines)")
    assert not long, "functions over 60 lines without a reason in their docstring:\n" + \
        "\n".join(long)
