"""The test suite's own rules: helpers live in helper modules, never in test modules."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

TESTS: Final = Path(__file__).parent


def test_no_test_module_imports_another() -> None:
    """test_*.py import shared code from helpers.py, conftest.py and the *proc.py modules."""
    offenders = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""] if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {name}" for name in names
                          if name.startswith("tests.test_")]
    assert not offenders, offenders
