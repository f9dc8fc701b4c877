"""Bounded disk, against the real kernel and real filesystems.

A ring of files (--max-size/--max-files) for the events and for the capture (tcpdump's
own -C/-W), and a disk that fills under a storm (a small tmpfs): the recorder stops by
itself, every file it closed is readable, run.json says what was kept and what was not,
and the last word is one line and exit 1; never a traceback, never exit 0."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from filesystems import small_fs

from retranscope.analyze.events import read_events

pytestmark = pytest.mark.root

PORT = 5001


def _storm(lab, conns: int = 8):
    from retranscope.lab.recorded import start_bulk, start_server

    lab.add_rule(f"tcp dport {PORT} numgen random mod 100 < 15 drop")
    start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", "60")
    return start_bulk(lab, PORT, 10**11, conns=conns, timeout_s=50)


def _after_ready(lines: list[str]) -> list[str]:
    i = next(i for i, ln in enumerate(lines) if "retranscope: recording" in ln)
    return [ln for ln in lines[i + 1 :] if ln.strip()]


def _files_readable(events_dir: Path) -> int:
    """Rows in the closed files; each must read whole."""
    return sum(pq.read_table(f).num_rows for f in sorted(events_dir.glob("*.parquet")))


@pytest.mark.parametrize("how", ["min_free", "enospc", "enospc_with_capture"])
def test_full_disk_ends_with_one_line_and_readable_files(tmp_path, how):
    """min_free: the recorder sees the space running out and closes everything cleanly;
    enospc: a write fails (--min-free-mb 0), the journal is cut back to its last complete
    batch; with the capture, tcpdump fills the disk first."""
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import RecorderProcess

    args = {
        "min_free": ["--min-free-mb", "1.5", "--flush-seconds", "0.1"],
        "enospc": ["--min-free-mb", "0"],
        "enospc_with_capture": ["--min-free-mb", "0", "--flush-seconds", "0.1", "--pcap", "PCAP"],
    }[how]
    with small_fs(tmp_path / "small", "3m") as fs, Lab(ipv6=False, tso=False) as lab:
        out = fs / "rec"
        args = [a.replace("PCAP", str(out / "capture.pcap")) for a in args]
        rec = RecorderProcess(
            lab, lab.sender_ns, ["--out", str(out), "--quiet", "--rotate-seconds", "0.5", *args]
        )
        client = _storm(lab)
        try:
            code = rec.proc.wait(timeout=60)  # it must stop by itself
        finally:
            client.kill()
            rec.stop()
        rec._reader.join(timeout=5)
        said = _after_ready(rec.stderr_lines)
        assert not any("Traceback" in ln for ln in rec.stderr_lines), rec.stderr_lines
        assert code == 1, said
        assert len(said) == 1 and said[0].startswith(
            "retranscope: error: recording stopped: no space left on device"
        ), said
        meta = json.loads((out / "run.json").read_text())
        assert meta["complete"] is False
        assert meta["status"].startswith("failed: no space left on device")
        # What run.json says was written is exactly what is there (closed Parquet files,
        # a journal closed but not converted, the open journal up to its last complete
        # batch), and the rest is counted.
        closed = _files_readable(out / "events")
        listed = {f["name"]: f["rows"] for f in meta["files"]}
        assert closed == sum(n for name, n in listed.items() if name.endswith(".parquet"))
        journal = (meta.get("journal") or {}).get("rows", 0) + sum(
            n for name, n in listed.items() if name.endswith(".arrows")
        )
        assert meta["events_written"] == closed + journal
        assert meta["events_written"] + meta["events_not_written"] == meta["events_received"] > 0
        if meta["events_written"]:
            assert len(read_events(out).frame()) == meta["events_written"]
        else:  # the capture filled the disk before the first flush: nothing half-written
            assert not list((out / "events").iterdir())
        if how == "min_free":
            assert meta["events_not_written"] == 0 and journal == 0
        print(f"\n{how}: {said[0]}")


def test_ring_of_files_for_events_and_capture(tmp_path):
    from retranscope.analyze.capture import read_capture
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import RecorderProcess

    out = tmp_path / "rec"
    with Lab(ipv6=False, tso=False) as lab:
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
                "--max-size",
                "1",
                "--max-files",
                "3",
            ],
        )
        client = _storm(lab)
        time.sleep(6)
        client.kill()
        time.sleep(0.3)
        assert rec.stop(signal.SIGINT) == 0, rec.stderr_lines[-3:]
    meta = json.loads((out / "run.json").read_text())
    events = sorted((out / "events").iterdir())
    assert 1 <= len(events) <= 3 and all(f.suffix == ".parquet" for f in events), events
    ring = meta["ring"]
    assert ring["deleted_files"] > 0, ring
    kept = _files_readable(out / "events")
    assert kept + ring["deleted_rows"] == meta["events_written"] == meta["events_received"]
    captures = sorted(out.glob("capture.pcap*"))
    assert [c.name for c in captures] == ["capture.pcap0", "capture.pcap1", "capture.pcap2"]
    for c in captures:
        # tcpdump opens the next file once one passes 10^6 bytes: one packet over at most.
        assert c.stat().st_size <= 1_000_000 + 200
        assert len(read_capture(c).packets["ts_ns"]) > 0
    argv = meta["pcap"]["argv"]
    assert argv[argv.index("-C") : argv.index("-C") + 4] == ["-C", "1", "-W", "3"]
    assert argv[argv.index("-Z") + 1] == "root"  # no sudo user here: root owns the files
