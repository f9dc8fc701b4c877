"""Tooling kept on: ruff over the whole tree, mypy over the pure modules (STYLE.md §10)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MYPY_MODULES = ["analyze", "schemas", "report", "fleet", "record/decode.py", "record/reasons.py",
                "record/btf.py", "lab/judge.py", "lab/capture.py", "retranscope/accounting.py",
                "retranscope/fileio.py"]


def _tool(name: str) -> str:
    exe = BIN / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (pip install -e '.[dev]')")
    return found


def test_ruff_clean():
    r = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]


def test_mypy_clean_on_pure_modules():
    r = subprocess.run([_tool("mypy"), *MYPY_MODULES], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
