#!/usr/bin/env python3
"""Checks that the modules of each crate import each other in one direction:
no cycle among the `crate::module` imports of a crate's top-level modules
(unit-test modules aside). The crates themselves are layered by Cargo: a
crate cannot import one that is not its dependency.

    python3 scripts/layers.py          # prints each module's imports; exit 1 on a cycle
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = [ROOT / "src"] + sorted(p / "src" for p in (ROOT / "crates").iterdir() if (p / "src").is_dir())
IMPORT = re.compile(r"crate::([a-z_][a-z0-9_]*)")


def imports(src):
    graph = {}
    for f in src.rglob("*.rs"):
        top = f.relative_to(src).parts[0].removesuffix(".rs")
        if top in ("main", "lib"):
            continue
        text = f.read_text()
        cut = text.find("#[cfg(test)]\nmod tests")
        text = text if cut < 0 else text[:cut]
        graph.setdefault(top, set()).update(d for d in IMPORT.findall(text) if d != top)
    return graph


def cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def main():
    failed = False
    for src in CRATES:
        graph = imports(src)
        name = src.parent.name if src.parent != ROOT else "hexwatch"
        found = cycle(graph)
        print(f"{name}: {len(graph)} modules, " + ("cycle: " + " -> ".join(found) if found else "no cycle"))
        failed |= found is not None
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
