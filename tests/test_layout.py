"""The codebase's own rules, checked on every run: import layers (import-linter), no import cycles,
no imports of our own modules inside functions, size limits, no block written twice, ruff clean.

These are the habits the README's layout section promises; a change that breaks one fails here with
the place named, not in a review.
"""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import grimp
import pytest

from tests.helpers import REPO

PACKAGES = ("nas", "search_spaces", "rewards")
OURS = re.compile(r"^(nas|search_spaces|rewards)(\.|$)")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
DUPLICATE_LINES = 6
SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_import_layers_hold():
    """pyproject.toml's import-linter contract: each stage imports only the stages below it."""
    p = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    # A package's __init__ re-exporting its modules is not a cycle of logic: look at modules only.
    for m in list(graph.modules):
        if graph.find_children(m):
            for imported in list(graph.find_modules_directly_imported_by(m)):
                if imported.startswith(m + "."):
                    graph.remove_import(importer=m, imported=imported)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _function_imports(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    yield inner, [a.name for a in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.level == 0:
                    yield inner, [inner.module or ""]


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_imports_inside_functions_are_only_heavy_or_optional_ones_with_their_reason(path):
    """Our own modules are imported at the top, so the import graph the layers contract checks is the
    real one; a third-party import inside a function (ray, onnx, matplotlib, ...) says why."""
    lines = path.read_text().splitlines()
    bad = []
    for node, names in _function_imports(_tree(path)):
        where = f"{_rel(path)}:{node.lineno}"
        if any(OURS.match(n) for n in names):
            bad.append(f"{where}: imports our own {names} inside a function")
        elif "#" not in lines[node.lineno - 1] and not lines[node.lineno - 2].strip().startswith("#"):
            bad.append(f"{where}: imports {names} inside a function without a comment saying why")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    n = text.count("\n")
    assert n <= MAX_MODULE_LINES, f"{_rel(path)} has {n} lines (at most {MAX_MODULE_LINES})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(_tree(path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {_rel(path)}: {', '.join(long)}"


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that carry code: no blank lines, comments, docstrings or
    function signatures."""
    doc_lines: set[int] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # A signature, however the formatter lays it out, is not a block: an override repeats it.
            doc_lines.update(range(node.lineno, node.body[0].lineno))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            v = body[0].value
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith("#") and i not in doc_lines:
            out.append((i, s))
    return out


def test_no_block_of_six_lines_is_written_twice_in_nas():
    """Six consecutive code lines that appear twice inside nas/ are one helper written twice."""
    seen: dict[str, tuple[str, int]] = {}
    dupes = defaultdict(set)
    for path in sorted((REPO / "nas").rglob("*.py")):
        lines = _code_lines(path)
        for k in range(len(lines) - DUPLICATE_LINES + 1):
            window = [s for _, s in lines[k : k + DUPLICATE_LINES]]
            if sum(len(s) > 12 for s in window) < DUPLICATE_LINES - 1:
                continue  # closing brackets and one-word lines are shared by every file
            key = hashlib.sha1("\n".join(window).encode()).hexdigest()
            here = (_rel(path), lines[k][0])
            if (key in seen and seen[key][0] != here[0]) or (key in seen and here[1] - seen[key][1] >= DUPLICATE_LINES):
                dupes[key].update({f"{seen[key][0]}:{seen[key][1]}", f"{here[0]}:{here[1]}"})
            else:
                seen.setdefault(key, here)
    found = sorted(" = ".join(sorted(v)) for v in dupes.values())
    assert not found, "blocks written twice:\n" + "\n".join(found)


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(args):
    p = subprocess.run([sys.executable, "-m", "ruff", *args, "."], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
