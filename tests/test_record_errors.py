"""The recorder's environment problems each give one line that says what to do, and
exit 1, through the real CLI. (The machine has all of it, so each problem is simulated
at the boundary where the recorder looks for it.)"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retranscope.cli import app
from retranscope.record import probe

runner = CliRunner()


def _one_line(result) -> str:
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_no_kernel_headers(monkeypatch, tmp_path, as_root):
    real_exists = Path.exists

    def exists(self):
        return False if str(self).startswith("/lib/modules/") else real_exists(self)

    monkeypatch.setattr(Path, "exists", exists)
    r = runner.invoke(app, ["record", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    line = _one_line(r)
    assert "no kernel headers" in line and "./setup.sh" in line


def test_no_bcc(monkeypatch, tmp_path, as_root):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "bcc" or name.startswith("bcc."):
            raise ImportError("No module named 'bcc'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(probe, "check_environment", lambda **_: None)
    monkeypatch.setattr(probe, "ensure_tracefs", lambda: None)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    r = runner.invoke(app, ["record", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    line = _one_line(r)
    assert "bcc" in line and "./setup.sh" in line


def test_tracefs_cannot_be_mounted(monkeypatch, tmp_path, as_root):
    monkeypatch.setattr(probe, "check_environment", lambda **_: None)
    monkeypatch.setattr(probe, "TRACEFS", tmp_path / "no-tracefs")

    def fail(*a, **k):
        raise OSError("mount: permission denied")

    monkeypatch.setattr(probe.subprocess, "run", fail)
    r = runner.invoke(app, ["record", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    line = _one_line(r)
    assert "mount -t tracefs nodev" in line


def test_bad_arguments_exit_2(tmp_path):
    r = runner.invoke(app, ["record", "-4", "-6"])
    assert r.exit_code == 2 and "exclude each other" in _one_line(r)
    r = runner.invoke(app, ["record", "--port", "70000"])
    assert r.exit_code == 2 and "not a TCP port" in _one_line(r)
