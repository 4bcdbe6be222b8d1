"""The house stays as ARCHITECTURE.md draws it: import contracts hold, and no room or function outgrows its job."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
SOURCES = sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "stages").glob("*.py"))


def lint_imports() -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([command], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_or_function_outgrows_its_job(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {text.count(chr(10))} lines; split it by job"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}: {node.name} is {length} lines"


def test_stages_stay_thin():
    for path in (REPO / "stages").glob("*.py"):
        assert path.read_text().count("\n") <= 60, f"{path.name}: a stage is an entry point; move logic to petseg"
