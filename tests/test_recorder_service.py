"""deploy/retranscope.service: it verifies (systemd-analyze verify, with its pcap
drop-in), its command line is one the recorder accepts, and the recorder runs under the
unit's own restrictions as far as they can be applied without systemd as PID 1: as an
ordinary user with exactly the unit's ambient capabilities, no new privileges, no
writable-executable memory (PR_SET_MDWE, what MemoryDenyWriteExecute= does) and the
unit's umask."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INSTALLED = "/opt/retranscope/.venv/bin/retranscope"
HERE_BIN = str(Path(sys.executable).with_name("retranscope"))


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _install(tmp_path: Path) -> Path:
    """The unit and its drop-in, pointing at this checkout's recorder."""
    unit = tmp_path / "retranscope.service"
    unit.write_text((DEPLOY / "retranscope.service").read_text().replace(INSTALLED, HERE_BIN))
    dropin = tmp_path / "retranscope.service.d"
    dropin.mkdir()
    (dropin / "pcap.conf").write_text(
        (DEPLOY / "retranscope-pcap.conf").read_text().replace(INSTALLED, HERE_BIN)
    )
    return unit


def test_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (./setup.sh installs systemd)")
    unit = _install(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", unit.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    # verify exits 0 even for settings it ignores: any word from it is a problem.
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # ...which this check would notice:
    (tmp_path / "bad.service").write_text(
        unit.read_text().replace("ProtectHome=yes", "ProtectHome=maybe")
    )
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "bad.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "ProtectHome" in r.stderr or "protect home" in r.stderr


def test_units_command_lines_are_the_recorders(tmp_path):
    from typer.main import get_command

    from retranscope.cli import app

    record = get_command(app).commands["record"]
    for name in ("retranscope.service", "retranscope-pcap.conf"):
        settings = unit_settings((DEPLOY / name).read_text())
        argv = shlex.split([v for v in settings["ExecStart"] if v][-1].replace("%b", "BOOT"))
        assert argv[:2] == [INSTALLED, "record"]
        ctx = record.make_context("record", argv[2:])  # raises on an unknown option
        assert str(ctx.params["out"]) == "/var/lib/retranscope/BOOT"
        caps = settings["AmbientCapabilities"][-1].split()
        assert caps == settings["CapabilityBoundingSet"][-1].split()
        assert ("CAP_NET_RAW" in caps) == (ctx.params["pcap"] is not None)


@pytest.mark.root
def test_recorder_runs_under_the_units_restrictions(tmp_path):
    """The capabilities of the unit, as user nobody, with no-new-privs and MDWE."""
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import RecorderProcess, start_bulk, start_server

    caps = unit_settings((DEPLOY / "retranscope.service").read_text())["AmbientCapabilities"]
    names = ",".join("+" + c.lower().removeprefix("cap_") for c in caps[-1].split())
    shared = Path("/tmp") / f"rts-unit-{os.getpid()}"
    shared.mkdir(mode=0o755)
    os.chown(shared, 65534, 65534)
    # PR_SET_MDWE (65) with PR_MDWE_REFUSE_EXEC_GAIN: inherited across execve.
    mdwe = (
        "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
        "assert libc.prctl(65, 1, 0, 0, 0) == 0, 'PR_SET_MDWE'; os.umask(0o027); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    try:
        with Lab(ipv6=False, tso=False) as lab:
            ino = os.stat(f"/run/netns/{lab.sender_ns}").st_ino
            lab.add_rule("tcp dport 5001 numgen random mod 100 < 5 drop")
            start_server(lab, "--port", 5001, "--mode", "sink", "--timeout-s", "60")
            argv = [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--no-new-privs",
                f"--inh-caps={names}",
                f"--ambient-caps={names}",
                sys.executable,
                "-c",
                mdwe,
                HERE_BIN,
                "record",
                "--quiet",
                "--out",
                str(shared / "rec"),
                "--netns",
                str(ino),
                "--duration",
                "8",
            ]
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            # Compiled and attached (seconds on a loaded machine; a fixed sleep raced with
            # it, and a transfer over before the recorder attached leaves no event).
            rec = RecorderProcess.attach(proc)
            start_bulk(lab, 5001, 5_000_000, timeout_s=20).wait(timeout=30)
            code = rec.wait(timeout_s=60)  # --duration ends it
        assert code == 0, rec.stderr_lines
        meta = json.loads((shared / "rec" / "run.json").read_text())
        assert meta["process"]["euid"] == 65534
        assert meta["process"]["capabilities"] == sorted(caps[-1].split())
        assert meta["events_written"] == meta["events_in_kernel"] > 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)
