"""The coverage-guided fuzzer (bench/fuzz_capture.py), run for a bounded time: any
exception that is not a RetranscopeError, or an input that takes longer than its time
limit, fails the test (libFuzzer stops and keeps the input under fuzz-artifacts/)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "bench" / "fuzz_capture.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("atheris") is None,
        reason="atheris is not installed (pip install -e '.[dev]')",
    ),
]


def _fuzz(target: str, seconds: int, tmp_path: Path) -> tuple[int, str]:
    artifacts = tmp_path / "artifacts"
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ),
            "--target",
            target,
            "--seconds",
            str(seconds),
            "--timeout",
            "10",
            "--artifacts",
            str(artifacts),
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 240,
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    found = sorted(p.name for p in artifacts.glob("*")) if artifacts.exists() else []
    tried = re.search(r"stat::number_of_executed_units: *(\d+)", out)
    print(f"{target}: {tried.group(0) if tried else 'no count'}; artifacts {found}")
    assert proc.returncode == 0 and not found, out[-3000:]
    return int(tried.group(1)) if tried else 0, out


def test_fuzzing_the_reader_finds_nothing(tmp_path):
    tried, _ = _fuzz("reader", 35, tmp_path)
    assert tried > 100  # it did run: the seeds alone are ~60 inputs


def test_fuzzing_the_whole_analysis_finds_nothing(tmp_path):
    _fuzz("analysis", 25, tmp_path)
