"""Size rules of vgen, the UI package included (issue #21): no module over 600 lines and no
function over 90 under ``vgen/``, so every file and function can be read at once; and no module
imports another's private (``_name``) name."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

VGEN = Path(__file__).resolve().parent.parent / "vgen"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 90
# Not checked yet: none (an entry here is a module still being split).
NOT_YET: tuple[str, ...] = ()


def _modules() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(VGEN.rglob("*.py")):
        rel = p.relative_to(VGEN).as_posix()
        if not any(fnmatch.fnmatch(rel, pattern) for pattern in NOT_YET):
            out.append((rel, p))
    return out


def test_no_module_is_over_600_lines():
    long = [f"{rel}: {n}" for rel, p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, "split these into modules whose names say what they hold: " + ", ".join(long)


def test_no_function_is_over_90_lines():
    long = []
    for rel, p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name}: {n}")
    assert not long, "split these into numbered steps: " + ", ".join(long)


# Private imports being made public (none now): "module.py: other._name".
PRIVATE_IMPORTS_PENDING: set[str] = set()


def test_no_module_imports_a_private_name_of_another():
    found = set()
    for rel, p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                found |= {f"{rel}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")}
    assert found <= PRIVATE_IMPORTS_PENDING, sorted(found - PRIVATE_IMPORTS_PENDING)
