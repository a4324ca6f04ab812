#!/usr/bin/env python3
"""Import circles between the crate's source files.

Reads every file under src/ (the library and the binary), finds the paths it
names into the crate (`use crate::...`, `use super::...`, `use self::...`, a
`use` of a submodule it declares, and `crate::`/`super::` paths written in
code), resolves each to the file that holds that module, and reports the
strongly connected groups of files: each group of two or more files is one
circle (every file in it reaches every other by imports). A module's inline
`mod tests { use super::*; }` names its own file, which is no circle.

Code compiled only for tests (`#[cfg(test)] mod tests { .. }`, or a file
declared `#[cfg(test)] mod name;`) is left out unless --with-tests: a test
may build its inputs with a module above the one it tests.

With --children it also counts a module file naming its own submodules
(`mod.rs` re-exporting `pub use child::Thing`), which is excluded by default:
a parent declaring and re-exporting its children is the tree itself, not a
circle; a child importing from its parent is kept.

Usage: scripts/import-circles.py [--children] [--with-tests] [--edges] [SRC_DIR]
Exit status: 0 when there is no circle, 1 otherwise.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blank out comments, string and char literals (keeping line structure)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 10])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            # a char literal ('a', '\n', '\u{..}'), not a lifetime ('a)
            m = re.match(r"'(\\(u\{[0-9a-fA-F]+\}|x..|.)|[^\\'])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def module_files(src):
    """Module path (tuple) -> file, for lib.rs's tree and main.rs's."""
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel == ["lib"]:
                modpath = ()
            elif rel == ["main"]:
                modpath = ("<main>",)
            elif rel[-1] == "mod":
                modpath = tuple(rel[:-1])
            else:
                modpath = tuple(rel)
            files[modpath] = path
    return files


def use_trees(body):
    """Expand a use tree (`a::{b, c::{d as e, self}}`) into paths (lists of segments)."""
    body = re.sub(r"\s+", "", body)

    def expand(prefix, text):
        paths = []
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(text):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(text[start:k])
                start = k + 1
        parts.append(text[start:])
        for part in parts:
            if not part:
                continue
            brace = part.find("{")
            if brace >= 0:
                head = [s for s in part[:brace].split("::") if s]
                paths += expand(prefix + head, part[brace + 1:part.rfind("}")])
            else:
                segs = [s for s in re.sub(r"as" + IDENT + "$", "", part).split("::") if s]
                if "as" in part and re.search(r"\bas\b", part.replace("::", " ")):
                    segs = [s for s in part.split("as")[0].split("::") if s]
                paths.append(prefix + segs)
        return paths

    return expand([], body)


def resolve(segments, current, declared, files, crate_root):
    """The module a path names, as the longest prefix that is a known module file, or None."""
    if not segments:
        return None
    head, rest = segments[0], segments[1:]
    if head == "crate":
        base = crate_root
    elif head == "super":
        base = current
        while head == "super":
            base = base[:-1]
            if not rest:
                break
            head, rest = rest[0], rest[1:]
        else:
            rest = [head] + rest
    elif head == "self":
        base = current
    elif head in declared:
        base, rest = current, segments
    else:
        return None  # another crate, or a name in scope
    target = tuple(base)
    best = target if target in files else None
    for seg in rest:
        target = target + (seg,)
        if target in files:
            best = target
        else:
            break
    return best


TEST_ATTR = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*$")


def test_only_children(text):
    """Submodules a file declares for tests only (`#[cfg(test)] mod name;`)."""
    return {m.group(1) for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*;", text) if TEST_ATTR.search(text[:m.start()])}


def imports_of(path, modpath, files, crate_root, with_tests=False):
    """The module files one source file names."""
    text = strip_comments_and_strings(open(path, encoding="utf-8").read())
    file_mod = list(modpath)
    # inline modules: `mod name {` opens a module in this file
    found = set()
    declared = set(re.findall(r"\bmod\s+(" + IDENT + r")\s*;", text))
    stack = []  # (name, brace depth at which it closes, test only)
    depth = 0
    pos = 0
    token = re.compile(r"\bmod\s+(" + IDENT + r")\s*\{|\buse\s+([^;]*);|\b((?:crate|super)(?:::" + IDENT + r")+)|[{}]")
    for m in token.finditer(text):
        pos = m.start()
        current = file_mod + [name for name, _, _ in stack]
        in_test = any(test for _, _, test in stack)
        if m.group(1):
            depth += 1
            stack.append((m.group(1), depth, bool(TEST_ATTR.search(text[:m.start()]))))
            continue
        s = m.group(0)
        if s == "{":
            depth += 1
            continue
        if s == "}":
            if stack and stack[-1][1] == depth:
                stack.pop()
            depth -= 1
            continue
        if in_test and not with_tests:
            continue
        if m.group(2) is not None:
            for segs in use_trees(m.group(2)):
                if segs and segs[0] == "":
                    segs = segs[1:]
                target = resolve(segs, current, declared if not stack else set(), files, crate_root)
                if target is not None:
                    found.add(target)
            continue
        segs = m.group(3).split("::")
        target = resolve(segs, current, set(), files, crate_root)
        if target is not None:
            found.add(target)
    return found


def strongly_connected(graph):
    index, low, on_stack, stack, groups = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            groups.append(group)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    children = "--children" in sys.argv
    with_tests = "--with-tests" in sys.argv
    show_edges = "--edges" in sys.argv
    src = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    files = module_files(src)
    test_only = set()
    if not with_tests:
        for modpath, path in files.items():
            text = strip_comments_and_strings(open(path, encoding="utf-8").read())
            for child in test_only_children(text):
                test_only.add(modpath + (child,))
    files = {m: p for m, p in files.items() if not any(m[:k] in test_only for k in range(1, len(m) + 1))}
    graph = {}
    for modpath, path in files.items():
        crate_root = () if modpath != ("<main>",) else ("<main>",)
        targets = imports_of(path, modpath, files, (), with_tests)
        edges = set()
        for t in targets:
            if t == modpath:
                continue
            if modpath == ("<main>",) and t == ():
                continue
            if not children and t[:len(modpath)] == modpath and len(t) > len(modpath):
                continue  # a parent naming its own submodule
            edges.add(t)
        graph[modpath] = edges
    name = lambda m: os.path.relpath(files[m], os.path.join(src, ".."))
    circles = [sorted(g) for g in strongly_connected(graph) if len(g) > 1]
    circles.sort(key=lambda g: name(g[0]))
    for group in circles:
        print(f"circle of {len(group)} files:")
        members = set(group)
        for m in group:
            inside = sorted(name(t) for t in graph[m] if t in members)
            print(f"  {name(m)} -> {', '.join(inside)}")
    if show_edges:
        for m in sorted(graph, key=name):
            for t in sorted(graph[m], key=name):
                print(f"edge {name(m)} -> {name(t)}")
    print(f"{len(circles)} circles, {sum(len(g) for g in circles)} files in them, {len(files)} files")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
