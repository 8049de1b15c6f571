#!/usr/bin/env python3
"""Fail if the modules of conure/ import each other in a cycle.

Every ``import`` / ``from ... import`` of a conure module counts, at module level or inside a function (a lazy
import hides a cycle, it does not remove it). ``from conure.pkg import name`` is an edge to ``conure.pkg.name`` when
that is a module, else to ``conure.pkg``. The implicit import of a module's parent packages is not an edge (every
module would otherwise be in a cycle with ``conure/__init__.py``).

    python tools/check_imports.py            # prints the cycles (strongly connected components), exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "conure"


def modules(root: Path) -> Dict[str, Path]:
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def edges(name: str, path: Path, known: Set[str]) -> Set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not (mod == PACKAGE or mod.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.add(sub if sub in known else mod)
    out.discard(name)
    return {m for m in out if m in known}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    mods = modules(ROOT)
    graph = {name: edges(name, path, set(mods)) for name, path in mods.items()}
    found = cycles(graph)
    for comp in found:
        inside = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
        print(f"import cycle among {len(comp)} modules: " + "; ".join(inside))
    n_edges = sum(len(v) for v in graph.values())
    print(f"{len(mods)} modules, {n_edges} import edges, {len(found)} cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
