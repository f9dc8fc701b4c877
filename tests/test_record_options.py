"""The recorder's tcpretrans-compatible options (-s -l -c -4 -6) and its own (--port,
--pid, --perf-buffer), each against the real kernel: a lab with random loss carrying an
IPv4 flow and an IPv6 flow on different ports at the same time."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from retranscope.lab.netns import Lab
from retranscope.lab.recorded import RecorderProcess, start_bulk, start_client, start_server

pytestmark = pytest.mark.root

PORT4, PORT6 = 5001, 5002


def _traffic(lab: Lab, seconds_bytes: int = 3_000_000):
    """One bulk flow per family through 5% loss; returns the client processes' pids."""
    lab.add_rule(f"tcp dport {{ {PORT4}, {PORT6} }} numgen random mod 100 < 5 drop")
    servers, clients = [], []
    for fam, port in ((4, PORT4), (6, PORT6)):
        s = start_server(
            lab, "--port", port, "--family", fam, "--mode", "sink", "--timeout-s", "30"
        )
        servers.append(s)
    for fam, port in ((4, PORT4), (6, PORT6)):
        clients.append(start_bulk(lab, port, seconds_bytes, family=fam, timeout_s=20))
    return servers, clients


def _record(tmp_path, args: list[str], slow_clients: bool = False):
    with Lab(ipv6=True, tso=False) as lab:
        out = tmp_path / "rec"
        rec = RecorderProcess(lab, lab.sender_ns, ["--out", str(out), *args])
        servers, clients = _traffic(lab)
        for c in clients:
            c.wait(timeout=40)
        time.sleep(0.3)
        rec.stop()
        live = rec.stderr_lines
    ev = (
        pd.concat(
            [pq.read_table(f).to_pandas() for f in sorted((out / "events").glob("*.parquet"))]
        )
        if list((out / "events").glob("*.parquet"))
        else pd.DataFrame()
    )
    return out, ev, live


def test_family_filters(tmp_path):
    _, ev4, _ = _record(tmp_path / "a", ["-4", "-q"])
    assert len(ev4) and set(ev4["family"]) == {4} and set(ev4["dport"]) == {PORT4}
    _, ev6, _ = _record(tmp_path / "b", ["-6", "-q"])
    assert len(ev6) and set(ev6["family"]) == {6} and set(ev6["dport"]) == {PORT6}


def test_port_filter_and_perf_buffer(tmp_path):
    out, ev, _ = _record(tmp_path, ["--port", str(PORT6), "--perf-buffer", "-q"])
    import json

    meta = json.loads((out / "run.json").read_text())
    assert meta["probe"]["transport"] == "perf"
    assert len(ev) and set(ev["dport"]) == {PORT6}
    assert meta["events_in_kernel"] == len(ev) and meta["events_lost_in_kernel"] == 0


def test_count_mode_matches_events(tmp_path):
    out, ev, _ = _record(tmp_path, ["-c"])
    counts = pd.read_parquet(out / "counts.parquet")
    per_flow = ev.groupby(["saddr", "sport", "daddr", "dport"]).size()
    got = counts.set_index(["saddr", "sport", "daddr", "dport"])["retransmits"]
    assert len(got) == 2
    assert (got.sort_index() == per_flow.sort_index()).all()


def test_count_mode_prints_like_tcpretrans(tmp_path):
    with Lab(ipv6=True, tso=False) as lab:
        proc = lab.popen(
            lab.sender_ns,
            [sys.executable, "-m", "retranscope", "record", "-c"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_ready(proc)
        _, clients = _traffic(lab, 1_500_000)
        out = _stop_after(proc, clients)
    lines = out.strip().splitlines()
    assert lines[0].split() == ["LADDR:LPORT", "RADDR:RPORT", "RETRANSMITS"]
    assert any(f":{PORT4}" in ln and "<->" in ln for ln in lines[1:]), out


def test_live_lines_with_sequence(tmp_path):
    with Lab(ipv6=False, tso=False) as lab:
        lab.add_rule(f"tcp dport {PORT4} numgen random mod 100 < 5 drop")
        proc = lab.popen(
            lab.sender_ns,
            [sys.executable, "-m", "retranscope", "record", "-s"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_ready(proc)  # compiled and attached (seconds on a loaded machine)
        start_server(lab, "--port", PORT4, "--mode", "sink", "--timeout-s", "20")
        out = _stop_after(proc, [start_bulk(lab, PORT4, "1500000", timeout_s=15)])
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["TIME", "PID", "IP", "LADDR:LPORT"] and "SEQ" in lines[0]
    # Retransmissions of the transfer itself (those after its close read FIN_WAIT1).
    body = [ln.split() for ln in lines[1:] if f":{PORT4}" in ln and " ESTABLISHED " in ln]
    assert body, out
    for fields in body:
        assert fields[4] == "R>" and fields[7].isdigit()
        assert fields[8] in {"fast", "tlp", "rto", "rto_recovery"}


def _stop_after(proc, clients) -> str:
    """Ctrl-C the recorder once the clients are done (as a tcpretrans user would), and
    return what it printed. Not --duration: a fixed span raced with starting the servers
    and clients, seconds on a loaded machine."""
    for c in clients:
        c.wait(timeout=40)
    time.sleep(0.3)  # the transfers' last retransmissions (a FIN's probe) land
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _wait_ready(proc, timeout_s: float = 60.0) -> None:
    from retranscope.lab.recorded import READY_MARK
    from retranscope.lines import LineReader, MarkerNotSeen

    lines = LineReader(proc.stderr.fileno())
    try:
        lines.until(READY_MARK, timeout_s, alive=lambda: proc.poll() is None)
    except MarkerNotSeen as missed:
        what = "exited before it was ready" if missed.exited else "was not ready in time"
        raise AssertionError(f"the recorder {what}: {missed}") from None


def test_pid_filter_keeps_only_that_process(tmp_path):
    with Lab(ipv6=True, tso=False) as lab:
        out = tmp_path / "rec"
        lab.add_rule(f"tcp dport {{ {PORT4}, {PORT6} }} numgen random mod 100 < 5 drop")
        start_server(
            lab,
            "--port",
            PORT4,
            "--family",
            "4",
            "--mode",
            "echo-slow",
            "--think-ms",
            "0",
            "--timeout-s",
            "40",
        )
        start_server(lab, "--port", PORT6, "--family", "6", "--mode", "sink", "--timeout-s", "40")
        # The process to follow: request/response for several seconds (probes and RTOs).
        c4 = start_client(
            lab,
            "requests",
            "--host",
            lab.receiver_addr(4),
            "--port",
            PORT4,
            "--count",
            "400",
            "--burst",
            "3",
            "--size",
            "3000",
            "--gap-ms",
            "10",
            "--timeout-s",
            "30",
        )
        rec = RecorderProcess(lab, lab.sender_ns, ["--out", str(out), "-q", "--pid", str(c4.pid)])
        c6 = start_bulk(lab, PORT6, "20000000", family=6, timeout_s=30)
        c6.wait(timeout=40)
        c4.wait(timeout=40)
        rec.stop()
    import json

    meta = json.loads((out / "run.json").read_text())
    ev = pd.read_parquet(out / "events")
    assert len(ev) and set(ev["dport"]) == {PORT4}, ev["dport"].value_counts()
    assert meta["events_filtered_pid"] > 0  # the IPv6 bulk flow's retransmissions


def test_lossprobe_flag_says_plainly_when_kprobes_are_missing(tmp_path):
    with Lab(ipv6=False) as lab:
        rec = RecorderProcess(lab, lab.sender_ns, ["--out", str(tmp_path / "r"), "-q", "-l"])
        rec.stop()
    text = "\n".join(rec.stderr_lines)
    from pathlib import Path

    if Path("/sys/kernel/tracing/kprobe_events").exists():
        assert "kprobe:tcp_send_loss_probe" in text or "notice" in text
    else:
        notes = [ln for ln in rec.stderr_lines if "tcp_send_loss_probe" in ln]
        assert len(notes) == 1 and notes[0].startswith("retranscope: notice: kprobe on ")
        assert "reason=tlp" in notes[0]


def test_other_namespace_storm_is_neither_recorded_nor_counted_lost(tmp_path):
    """The recorder in a quiet namespace while another namespace storms: its filter runs
    before any buffer slot is taken, so nothing is recorded and nothing counts as lost
    (even with a small buffer)."""
    import json

    with Lab(ipv6=False, tso=False) as quiet, Lab(ipv6=False, tso=False) as busy:
        out = tmp_path / "rec"
        rec = RecorderProcess(quiet, quiet.sender_ns, ["--out", str(out), "-q", "--buffer-mb", "1"])
        busy.add_rule(f"tcp dport {PORT4} numgen random mod 100 < 15 drop")
        start_server(busy, "--port", PORT4, "--mode", "sink", "--timeout-s", "20")
        c = start_bulk(busy, PORT4, 10**11, conns=4, timeout_s=10)
        time.sleep(3)
        made = busy.tcp_counters(busy.sender_ns).get("TcpRetransSegs", 0)
        c.kill()
        rec.stop()
    meta = json.loads((out / "run.json").read_text())
    assert made > 1000  # the storm was real
    assert meta["events_in_kernel"] == 0 and meta["events_lost_in_kernel"] == 0
    assert meta["events_written"] == 0
