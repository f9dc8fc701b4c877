"""Least privilege, tested for real: the recorder as an ordinary user (nobody) holding
only the capabilities docs/recorder.md lists, as ambient capabilities (what setpriv and
systemd's AmbientCapabilities= give); a missing one named in one line; and outputs that
belong to the user behind sudo, who can then analyze them without root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

NOBODY = 65534
PORT = 5001
RECORD_CAPS = ["bpf", "perfmon", "syslog", "dac_read_search"]
PCAP_CAPS = ["net_admin", "net_raw"]
FORMAT = "/sys/kernel/tracing/events/tcp/tcp_retransmit_skb/format"


def as_nobody(caps: list[str]) -> list[str]:
    add = ",".join(f"+{c}" for c in caps) or "-all"
    return [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        f"--inh-caps={add}",
        f"--ambient-caps={add}",
    ]


@pytest.fixture
def shared_dir():
    """A directory nobody may write into (pytest's own tmp_path is root's, 0700)."""
    d = Path(tempfile.mkdtemp(prefix="rts-priv-", dir="/tmp"))
    os.chmod(d, 0o755)
    os.chown(d, NOBODY, NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _record_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "retranscope", "record", "--out", str(out), "--quiet", *extra]


def _with_traffic(lab, argv: list[str], seconds: float = 5.0) -> subprocess.CompletedProcess:
    """Run the recorder (in the root namespace) while the lab retransmits."""
    from retranscope.lab.recorded import RecorderProcess, start_bulk, start_server

    lab.add_rule(f"tcp dport {PORT} numgen random mod 100 < 5 drop")
    start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", "60")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Compiled and attached: seconds, more on a loaded machine (a fixed sleep raced with it).
    rec = RecorderProcess.attach(proc)
    client = start_bulk(lab, PORT, 10**11, conns=2, timeout_s=30)
    time.sleep(seconds)
    client.kill()
    time.sleep(0.3)
    code = rec.stop(signal.SIGINT, timeout_s=60)
    return subprocess.CompletedProcess(argv, code, "", "\n".join(rec.stderr_lines))


def _owned_by_nobody(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), p
        assert st.st_mode & 0o777 == (0o750 if p.is_dir() else 0o640), (p, oct(st.st_mode))


def test_records_as_nobody_with_only_its_capabilities(shared_dir):
    from retranscope.lab.netns import Lab

    out = shared_dir / "rec"
    with Lab(ipv6=False, tso=False) as lab:
        ino = os.stat(f"/run/netns/{lab.sender_ns}").st_ino
        r = _with_traffic(
            lab,
            as_nobody(RECORD_CAPS + PCAP_CAPS)
            + _record_cmd(out, "--netns", str(ino), "--pcap", str(out / "capture.pcap")),
        )
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["process"]["euid"] == NOBODY and meta["process"]["capabilities"] == sorted(
        f"CAP_{c.upper()}" for c in RECORD_CAPS + PCAP_CAPS
    )
    assert meta["events_written"] == meta["events_in_kernel"] > 100, meta
    assert meta["pcap"]["tcpdump"]["exit_code"] == 0
    assert "-Z" not in meta["pcap"]["argv"]  # not root: nothing to drop
    _owned_by_nobody(out)


def _hidden_from_nobody(argv: list[str]) -> bool:
    r = subprocess.run(as_nobody([]) + argv, capture_output=True, text=True)
    return r.returncode != 0 or not r.stdout.strip()


def test_missing_capabilities_are_named_in_one_line(shared_dir):
    # What this machine hides from an unprivileged user, seen independently of the recorder.
    kallsyms = subprocess.run(
        as_nobody([]) + ["head", "-1", "/proc/kallsyms"], capture_output=True, text=True
    ).stdout
    need_syslog = int(kallsyms.split()[0], 16) == 0
    need_dac = _hidden_from_nobody(["cat", FORMAT])
    hidden = {"CAP_SYSLOG"} if need_syslog else set()
    hidden |= {"CAP_DAC_READ_SEARCH"} if need_dac else set()
    cases = [
        (["bpf", "perfmon"], [], hidden),
        ([], [], {"CAP_BPF", "CAP_PERFMON"} | hidden),
        (
            RECORD_CAPS,
            ["--pcap", str(shared_dir / "x" / "c.pcap")],
            {"CAP_NET_ADMIN", "CAP_NET_RAW"},
        ),
    ]
    for caps, extra, missing in cases:
        if not missing:  # a machine that shows all of it to everyone
            continue
        r = subprocess.run(
            as_nobody(caps) + _record_cmd(shared_dir / "x", *extra),
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, (caps, r.stderr)
        named = lines[0].split("missing here: ", 1)[1].split(":")[0].split(" (")[0]
        assert set(named.split(", ")) == missing, (caps, lines[0])
        assert "docs/recorder.md" in lines[0]
        if "--pcap" in extra:
            assert "ambient" in lines[0]
    assert not (shared_dir / "x").exists()  # nothing written before the check


def test_outputs_belong_to_the_user_behind_sudo(shared_dir, monkeypatch):
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import RecorderProcess, start_bulk, start_server

    out = shared_dir / "rec"
    monkeypatch.setenv("SUDO_UID", str(NOBODY))
    monkeypatch.setenv("SUDO_GID", str(NOBODY))
    with Lab(ipv6=False, tso=False) as lab:
        lab.add_rule(f"tcp dport {PORT} numgen random mod 100 < 5 drop")
        rec = RecorderProcess(
            lab,
            lab.sender_ns,
            [
                "--out",
                str(out),
                "--quiet",
                "--pcap",
                str(out / "capture.pcap"),
                "--interface",
                lab.sender_if,
            ],
        )
        start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", "30")
        start_bulk(lab, PORT, 3_000_000, timeout_s=20).wait(timeout=30)
        time.sleep(0.3)
        assert rec.stop() == 0, rec.stderr_lines[-3:]
    meta = json.loads((out / "run.json").read_text())
    argv = meta["pcap"]["argv"]
    assert argv[argv.index("-Z") + 1] == "nobody"
    assert meta["events_written"] > 0
    _owned_by_nobody(out)
    # The user who asked analyzes without root (and without any capability).
    r = subprocess.run(
        as_nobody([])
        + [
            sys.executable,
            "-m",
            "retranscope",
            "analyze",
            "--pcap",
            str(out / "capture.pcap"),
            "--events",
            str(out),
            "--out",
            str(shared_dir / "ana"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (shared_dir / "ana" / "retransmits.parquet").exists()
