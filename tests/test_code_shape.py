"""Code shape: no function in ``src/seglab`` is longer than 80 lines, its docstring included.

A long function hides several steps behind one name; split it into named steps (data tables
belong in module constants, not in functions). :data:`PENDING` lists the functions that other
work in progress is splitting; the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "seglab"
MAX_LINES = 80

# (file relative to src/seglab, qualified function name): being split by work in progress
PENDING: set[tuple[str, str]] = set()


def function_lengths() -> dict[tuple[str, str], int]:
    """``(file, qualified name) -> lines`` for every function and method under ``src/seglab``."""
    lengths: dict[tuple[str, str], int] = {}

    def walk(node: ast.AST, prefix: str, file: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                lengths[(file, name)] = child.end_lineno - child.lineno + 1
                walk(child, name + ".", file)
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".", file)
            else:
                walk(child, prefix, file)

    for path in sorted(SRC.rglob("*.py")):
        file = path.relative_to(SRC).as_posix()
        walk(ast.parse(path.read_text()), "", file)
    return lengths


def test_lengths_are_measured() -> None:
    lengths = function_lengths()
    assert lengths[("models/registry.py", "create_model")] > 10
    assert ("models/base.py", "SegmentationModel.forward") in lengths


def test_no_function_longer_than_80_lines() -> None:
    long = {k: n for k, n in function_lengths().items() if n > MAX_LINES and k not in PENDING}
    assert not long, "split these functions (lines): " + ", ".join(
        f"{f} {name} ({n})" for (f, name), n in long.items()
    )


def test_pending_entries_exist() -> None:
    lengths = function_lengths()
    missing = sorted(k for k in PENDING if k not in lengths)
    assert not missing, f"PENDING names functions that do not exist (remove them): {missing}"
