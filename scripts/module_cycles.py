#!/usr/bin/env python3
"""Lists import cycles between the modules of each crate of the workspace.

A module is a source file (`a/b.rs` or `a/b/mod.rs` is `a::b`); module A depends on B when
A's code (comments and `#[cfg(test)] mod tests` blocks aside) names a path through B
(`crate::b::...`, `super::b::...`). A parent naming its child, or a child its parent, is
not counted: that is how one module is split across files. Test modules are skipped.
Prints each cycle (a strongly connected group of modules) with the references that close
it; exits 1 when there is one.

    python3 scripts/module_cycles.py [ROOT]
"""
import collections
import os
import re
import sys

CRATES = ["core/src", "proxy/src", "backfill/src", "reconciler/src", "tests/src"]


def module_of(base, path):
    parts = os.path.relpath(path, base)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def graph_of(base):
    modules = {}
    for d, _, files in os.walk(base):
        for f in files:
            if f.endswith(".rs"):
                modules[module_of(base, os.path.join(d, f))] = os.path.join(d, f)
    edges = collections.Counter()
    for m, path in modules.items():
        if m and m[-1].endswith("tests"):
            continue
        src = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
        cut = src.find("#[cfg(test)]\nmod tests {")
        if cut >= 0:
            src = src[:cut]
        refs = [(r.group(1), r.group(2).split("::")[1:])
                for r in re.finditer(r"\b(crate|super)((?:::\w+)+)", src)]
        # `use crate::{a::X, b}`: each item of the group, one level deep.
        for group in re.finditer(r"\b(crate|super)((?:::\w+)*)::\{([^;]*?)\}\s*;", src):
            prefix = group.group(2).split("::")[1:]
            for item in re.split(r",(?![^{]*\})", group.group(3)):
                path = re.match(r"\s*(\w+(?:::\w+)*)", item)
                if path and path.group(1) != "self":
                    refs.append((group.group(1), prefix + path.group(1).split("::")))
        for kind, parts in refs:
            if kind == "super":
                here = list(m[:-1])
                while parts and parts[0] == "super":
                    here, parts = here[:-1], parts[1:]
                parts = here + parts
            target = next((tuple(parts[:k]) for k in range(len(parts), 0, -1)
                           if tuple(parts[:k]) in modules), None)
            if target is None or m[:len(target)] == target or target[:len(m)] == m:
                continue
            edges[(m, target)] += 1
    return modules, edges


def cycles(modules, edges):
    succ = collections.defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in modules:
        if v not in index:
            visit(v)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    total = 0
    name = lambda m: "::".join(m) or "(crate root)"
    for crate in CRATES:
        modules, edges = graph_of(os.path.join(root, crate))
        for group in cycles(modules, edges):
            total += 1
            members = set(group)
            print(f"{crate}: " + " <-> ".join(name(m) for m in group))
            for (a, b), count in sorted(edges.items()):
                if a in members and b in members:
                    print(f"    {name(a)} -> {name(b)} ({count})")
    print(f"import cycles between modules: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
