"""A recorder SIGKILLed in the middle of a storm, at its default settings, loses at most
the last second: every retransmission the kernel made more than 1 s before the kill is on
disk and readable (`analyze --events` reads the directory, which ends in a journal).

The reference is independent of the recorder: a second BPF program on the same
tracepoint counts the storm's retransmissions per millisecond, with nothing to lose
(tests/bpf/retrans_timeline.bpf.c). Both see the same hits: a hit the kernel runs no
program for is skipped for every program on the tracepoint alike."""

from __future__ import annotations

import ctypes as ct
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.root

PORT = 5001
HERE = Path(__file__).resolve().parent
BUCKETS = 65536


class Timeline:
    """The storm's retransmissions per millisecond, in one network namespace."""

    def __init__(self, netns: str) -> None:
        import os

        from bcc import BPF

        from retranscope.record.btf import BTF, kernel_offsets
        from retranscope.record.probe import ensure_tracefs

        ensure_tracefs()
        offsets, _ = kernel_offsets(BTF.load())
        ino = os.stat(f"/run/netns/{netns}").st_ino
        self.bpf = BPF(
            src_file=str(HERE / "bpf" / "retrans_timeline.bpf.c").encode(),
            cflags=[
                f"-DTIMELINE_PORT={PORT}",
                f"-DTIMELINE_NETNS={ino}",
                f"-DRTS_OFF_SK_NET={offsets['RTS_OFF_SK_NET']}",
                f"-DRTS_OFF_NET_INUM={offsets['RTS_OFF_NET_INUM']}",
            ],
        )

    def counts(self, first_ms: int, last_ms: int) -> np.ndarray:
        """Retransmissions made in each millisecond first_ms..last_ms (inclusive)."""
        assert last_ms - first_ms < BUCKETS
        table = self.bpf[b"per_ms"]
        return np.array(
            [
                sum(int(v) for v in table[ct.c_int(ms % BUCKETS)])
                for ms in range(first_ms, last_ms + 1)
            ],
            dtype=np.int64,
        )

    def close(self) -> None:
        self.bpf.cleanup()


def test_sigkill_mid_storm_loses_at_most_the_last_second(tmp_path):
    from retranscope.analyze.events import read_events
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import RecorderProcess, start_bulk, start_server

    out = tmp_path / "rec"
    with Lab(ipv6=False, tso=False) as lab:
        timeline = Timeline(lab.sender_ns)
        try:
            lab.add_rule(f"tcp dport {PORT} numgen random mod 100 < 15 drop")
            rec = RecorderProcess(lab, lab.sender_ns, ["--out", str(out), "--quiet"])
            ready_ms = time.monotonic_ns() // 1_000_000
            start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", "30")
            client = start_bulk(lab, PORT, 10**11, conns=8, timeout_s=20)
            time.sleep(4.0)  # mid-storm: past several flushes, before the first rotation (10 s)
            kill_ns = time.monotonic_ns()
            rec.proc.send_signal(signal.SIGKILL)
            rec.proc.wait()
            time.sleep(0.1)
            client.kill()
            made = timeline.counts(ready_ms, kill_ns // 1_000_000)
        finally:
            timeline.close()

    ev = read_events(out)
    assert any("journal" in w for w in ev.warnings), ev.warnings
    assert json.loads((out / "run.json").read_text())["complete"] is False
    frame = ev.frame()
    ts_ms = frame.loc[frame["dport"] == PORT, "ts_mono_ns"].to_numpy() // 1_000_000
    kept = np.bincount(ts_ms - ready_ms, minlength=len(made))[: len(made)]
    assert made.sum() > 20_000, "the storm was too weak to judge"
    # Every event made more than 1 s before the kill, from 1 ms after the recorder said
    # it was ready, is on disk. The two programs read the clock a moment apart, so an
    # event can fall on either side of a millisecond's edge: 1 ms of slack at each end.
    cut = (kill_ns - 1_000_000_000) // 1_000_000 - ready_ms
    assert kept[1:cut].sum() >= made[2 : cut - 1].sum(), (
        kept[1:cut].sum(),
        made[2 : cut - 1].sum(),
    )
    # ...and nothing twice: no more than the kernel made in the same span.
    assert kept[1:cut].sum() <= made[: cut + 1].sum()
    # The window the crash lost (printed for the report): from the newest event on disk
    # to the kill; every millisecond before it is complete.
    newest_ms = int(ts_ms.max())
    lost_window_ms = kill_ns / 1e6 - newest_ms
    complete_to = newest_ms - 1 - ready_ms
    assert kept[1:complete_to].sum() >= made[2 : complete_to - 1].sum()
    print(
        f"\ncrash at {made.sum()} events made since start: the last {lost_window_ms:.0f} ms "
        f"before the SIGKILL were lost ({made[complete_to:].sum()} events), everything "
        f"older is on disk ({kept.sum()} events read)"
    )
    assert lost_window_ms < 1000


def test_a_restarted_recorder_recovers_what_the_killed_one_left(tmp_path):
    """A service restarted on the same --out: the journal the killed recorder left becomes
    Parquet with every row it held, the new run's files come after it, and run.json
    keeps a word on the run before."""
    from retranscope.analyze.events import read_events
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import RecorderProcess, start_bulk, start_server

    out = tmp_path / "rec"
    with Lab(ipv6=False, tso=False) as lab:
        lab.add_rule(f"tcp dport {PORT} numgen random mod 100 < 10 drop")
        start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", "60")
        client = start_bulk(lab, PORT, 10**11, conns=4, timeout_s=40)
        first = RecorderProcess(lab, lab.sender_ns, ["--out", str(out), "--quiet"])
        time.sleep(2.0)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        left = read_events(out).frame()
        journals = sorted((out / "events").glob("*.arrows"))
        assert len(journals) == 1 and len(left) > 1000
        second = RecorderProcess(lab, lab.sender_ns, ["--out", str(out), "--quiet"])
        time.sleep(1.5)
        assert second.stop() == 0, second.stderr_lines[-3:]
        client.kill()
    meta = json.loads((out / "run.json").read_text())
    assert meta["complete"] and [p["complete"] for p in meta["previous_runs"]] == [False]
    assert meta["recovered_journals"] == [
        {
            **meta["recovered_journals"][0],
            "name": journals[0].with_suffix(".parquet").name,
            "rows": len(left),
        }
    ]
    names = sorted(p.name for p in (out / "events").iterdir())
    assert names[0] == journals[0].with_suffix(".parquet").name and len(names) >= 2
    assert all(n.endswith(".parquet") for n in names)
    both = read_events(out).frame()
    key = ["skaddr", "ts_mono_ns"]
    before = left[key].merge(both[key], how="left", indicator=True)
    assert (before["_merge"] == "both").all()  # every row the killed run left is kept
    assert len(both) == len(left) + meta["events_written"]
