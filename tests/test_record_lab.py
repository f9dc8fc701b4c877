"""The recorder against the real kernel: real loss from nftables drops in network
namespaces, the recorder running inside the retransmitting namespace, tcpdump beside it.

For every scenario: every retransmission the kernel made was recorded once (the kernel's
own per-namespace counters agree), with the right flow, seq/end_seq found in the capture,
and the reason the scenario produces."""

from __future__ import annotations

import json
import signal
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retranscope.analyze.events import events_table, read_event_files
from retranscope.analyze.join import join_events
from retranscope.schemas.events import JOURNAL_SUFFIX
from retranscope.schemas.packets import addr_to_str

pytestmark = pytest.mark.root

SCENARIOS = [
    "fast_nth",
    "fast_nth_v6",
    "fast_nth_notso",
    "fast_nth_v6_notso",
    "tail_drop_tlp",
    "tail_drop_tlp_v6",
    "blackhole_rto",
    "syn_drop",
    "synack_drop",
    "slow_server_tlp",
    "random_loss",
    "random_loss_rtt",
]
RTO_FAMILY = {"rto", "rto_recovery", "syn", "synack"}


def _capture(run):
    from retranscope.analyze.capture import read_capture

    return read_capture(run.capture)


def _mss(packets) -> int:
    """The sender's effective MSS: the peer's MSS option minus the timestamp option."""
    syn = (packets["flags"] & 0x02) != 0
    opt = packets["opt_mss"][syn & (packets["opt_mss"] > 0)]
    ts = bool(packets["opt_ts"][syn].any())
    return int(opt.min()) - (12 if ts else 0)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_kernel_retransmission_recorded_once_with_reason(recorded, name):
    run = recorded(name)
    assert run.recorder_returncode == 0, run.recorder_stderr[-3:]
    meta = run.run_meta
    assert meta["complete"] and meta["events_lost_in_kernel"] == 0
    ev = pd.read_parquet(run.out_dir / "events").sort_values("ts_mono_ns", kind="stable")
    ev = ev.reset_index(drop=True)  # the order analyze/events.py gives the events
    # The kernel-side count (after filters) equals what reached the files.
    assert meta["events_in_kernel"] == meta["events_written"] == len(ev)
    counters = meta["counters_delta"]
    reasons = ev["reason"].value_counts().to_dict()

    # Reasons: the scenario makes what it is built for (a loaded machine may add a real
    # probe or two, so extra reasons are judged by the counters below, not by the scenario).
    sc = run.scenario
    must = set(sc.expected)
    if sc.traffic.client == "bulk":
        must.discard("tlp")  # with unsent data queued the probe may be new data (RFC 8985 §7.3)
    assert must <= set(reasons), (reasons, counters)
    # The kernel sometimes runs no BPF program for a tracepoint hit (retranscope/
    # accounting.py): the recorder cannot see those, but must count them. The segments it
    # missed, from the files alone: the namespace's RetransSegs less the events' segments
    # (a SYN-ACK resent from a request socket is one segment; failed attempts count too,
    # the kernel adds to RetransSegs before it transmits). The recorder's own accounting
    # must say exactly that, and its per-socket count (each socket's tp->total_retrans
    # between its events) can only see less.
    acct = meta["accounting"]
    ev_segs = np.where(ev["event_type"] == "synack", 1, ev["segs"].fillna(0)).astype(np.int64)
    hidden = counters["Tcp:RetransSegs"] - int(ev_segs.sum())
    assert hidden >= 0, (counters["Tcp:RetransSegs"], int(ev_segs.sum()))
    assert acct["event_segments"] == int(ev_segs.sum())
    assert acct["namespace_counter_gap"] == acct["unreported_segments"] == hidden, acct
    assert acct["unreported_between_events"] + acct["before_first_event"] <= hidden, acct
    unseen = hidden

    # Per-reason kernel counters (per network namespace, include/uapi/linux/snmp.h), each
    # against the events of that reason: TCPFastRetrans and TCPSlowStartRetrans add the
    # segments of each retransmission that went out from tcp_xmit_retransmit_queue (in
    # Recovery, in Loss); TCPTimeouts counts each RTO expiry (SYN and SYN-ACK timers
    # included), which resends one segment; TCPLossProbes each probe that went out, also
    # those that sent new data instead (no retransmit event then: bulk senders);
    # TCPSynRetrans each SYN or SYN-ACK resent. What the kernel hid shows as a shortfall
    # of the events against a counter: none may be negative, and together they must fit
    # in the hidden segments (each hidden retransmission is in one counter at most, with
    # at least as many segments), exactly zero when nothing was hidden.
    sent = ev["err"].fillna(0).to_numpy() == 0
    reason = ev["reason"].to_numpy()
    seg = ev["segs"].fillna(0).to_numpy(np.int64)

    def count(*kinds: str, segments: bool = False, only_sent: bool = False) -> int:
        mask = np.isin(reason, kinds) & (sent if only_sent else True)
        return int(seg[mask].sum()) if segments else int(mask.sum())

    short = {
        "TCPFastRetrans": counters["TcpExt:TCPFastRetrans"]
        - count("fast", segments=True, only_sent=True),
        "TCPSlowStartRetrans": counters["TcpExt:TCPSlowStartRetrans"]
        - count("rto_recovery", segments=True, only_sent=True),
        "TCPTimeouts": counters["TcpExt:TCPTimeouts"] - count("rto", "syn", "synack"),
    }
    probes_are_retransmits = "tlp" in sc.expected and sc.traffic.client != "bulk"
    tlp_short = counters["TcpExt:TCPLossProbes"] - count("tlp", only_sent=True)
    if probes_are_retransmits:
        short["TCPLossProbes"] = tlp_short
    syn_short = counters["TcpExt:TCPSynRetrans"] - count("syn", "synack")
    assert min(short.values()) >= 0 and tlp_short >= 0 and syn_short >= 0, (short, reasons)
    assert sum(short.values()) <= hidden and syn_short <= hidden, (short, hidden, reasons)
    if hidden == 0:
        assert set(short.values()) == {0} and syn_short == 0, (short, reasons)

    cap = _capture(run)
    pk = cap.packets
    sent = ev["err"].fillna(0) == 0
    # Each event's segs (read from skb_shinfo) is ceil(len / mss) of its range, the
    # segments RetransSegs adds (tcp_skb_pcount).
    if "synack" not in reasons:
        mss = _mss(pk)
        length = (ev["end_seq"].astype(np.int64) - ev["seq"].astype(np.int64)) % (1 << 32)
        from_len = np.maximum(1, -(-length.to_numpy() // mss))
        assert (ev["segs"].to_numpy() == from_len).all(), (mss, ev[["segs", "seq", "end_seq"]])
        assert int(ev["segs"].sum()) == acct["event_segments"]

    # Retransmitted data segments in the capture, by an independent check (per-flow
    # highest sequence sent so far); every one belongs to some event.
    df = pd.DataFrame(
        {
            k: pk[k]
            for k in (
                "saddr_hi",
                "saddr_lo",
                "daddr_hi",
                "daddr_lo",
                "sport",
                "dport",
                "seq",
                "payload_len",
                "flags",
                "family",
                "ts_ns",
            )
        }
    )
    df["len"] = df["payload_len"].astype(np.int64) + ((df["flags"] & 0x03) != 0)
    src = ev[["saddr", "sport"]].drop_duplicates()
    wanted = set(zip(src["saddr"], src["sport"]))
    own = np.array(
        [
            (addr_to_str(h, lo, f), p) in wanted
            for h, lo, f, p in zip(df["saddr_hi"], df["saddr_lo"], df["family"], df["sport"])
        ]
    )
    d = df[own & (df["len"] > 0)].copy()
    d["row"] = d.index
    retrans_rows = []
    for _, g in d.groupby(["saddr_hi", "saddr_lo", "sport", "daddr_hi", "daddr_lo", "dport"]):
        seq = g["seq"].to_numpy(np.int64)
        seq = np.concatenate(
            [[seq[0]], seq[0] + np.cumsum(((np.diff(seq) + (1 << 31)) % (1 << 32)) - (1 << 31))]
        )
        end = seq + g["len"].to_numpy()
        prev_max = np.maximum.accumulate(np.concatenate([[seq[0]], end[:-1]]))
        retrans_rows += list(g["row"].to_numpy()[seq < prev_max])
    # Flow and sequence numbers: every sent event has its resent frames in the capture
    # (only resent frames: an original overlapping the range must not stand in for it).
    eligible = np.zeros(len(pk["ts_ns"]), dtype=bool)
    eligible[retrans_rows] = True
    table = events_table(pa.Table.from_pandas(ev, preserve_index=False))
    event_of_row, frames = join_events(table, pk, eligible=eligible)
    missing = ev.loc[sent & (frames == 0)]
    assert missing.empty, missing[["reason", "saddr", "sport", "seq", "end_seq"]].to_string()
    unmatched = [r for r in retrans_rows if event_of_row[r] < 0]
    # Each hidden segment is at most one retransmitted frame without an event.
    assert len(unmatched) <= unseen, f"{len(unmatched)} retransmitted frames with no event"


def test_flow_and_addresses_v6(recorded):
    run = recorded("fast_nth_v6")
    ev = pd.read_parquet(run.out_dir / "events")
    assert (ev["family"] == 6).all() and ev["saddr"].str.contains(":").all()
    assert (ev["dport"] == run.scenario.port).all()


def test_metadata_has_clocks_counters_and_capture_stats(recorded):
    run = recorded("fast_nth")
    meta = json.loads((run.out_dir / "run.json").read_text())
    for key in (
        "boot_id",
        "kernel_release",
        "clock_offsets",
        "counters_start",
        "counters_end",
        "events_lost_in_kernel",
        "files",
    ):
        assert key in meta, key
    assert meta["pcap"]["tcpdump"]["dropped_by_kernel"] == 0
    assert meta["netns_ino"] == meta["filters"]["netns_ino"]  # inside a namespace: its own
    md = pq.read_schema(run.out_dir / "events" / "events-00001.parquet").metadata
    assert md[b"run_id"].decode() == meta["run_id"]


def test_sigkill_leaves_only_readable_files(tmp_path):
    """A SIGKILLed recorder: every file left behind is complete and readable, and the
    closed files hold every event but those of the last rotation interval."""
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import RecorderProcess, start_bulk, start_server

    with Lab(ipv6=False) as lab:
        lab.add_rule("tcp dport 5001 numgen random mod 100 < 5 drop")
        out = tmp_path / "rec"
        rec = RecorderProcess(
            lab, lab.sender_ns, ["--out", str(out), "--quiet", "--rotate-seconds", "0.5"]
        )
        start_server(lab, "--port", "5001", "--mode", "sink", "--timeout-s", "30")
        client = start_bulk(lab, "5001", "400000000", timeout_s=20)
        time.sleep(3.0)
        rec.proc.send_signal(signal.SIGKILL)
        rec.proc.wait()
        client.kill()
    files = sorted((out / "events").glob("*"))
    closed = [f for f in files if f.suffix == ".parquet"]
    assert closed, "no file was closed in 3 s at 0.5 s rotation"
    # Closed Parquet files, and at most one journal (the open file a SIGKILL leaves,
    # readable up to its last complete batch: record/writer.py).
    assert all(f.name.startswith("events-") for f in files), files
    assert [f.suffix for f in files if f not in closed] in ([], [JOURNAL_SUFFIX]), files
    rows = sum(pq.read_table(f).num_rows for f in closed)
    tables, _, _ = read_event_files(out)
    assert sum(t.num_rows for t in tables) >= rows
    meta = json.loads((out / "run.json").read_text())
    assert meta["complete"] is False
    # run.json (rewritten at each rotation) accounts for every closed file.
    assert rows >= sum(f["rows"] for f in meta["files"]) > 0


def test_no_root_is_one_clear_line(tmp_path):
    """Without root and without capabilities: one line naming what is missing."""
    import subprocess

    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "retranscope",
            "record",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "retranscope: error: retranscope record needs CAP_BPF, CAP_PERFMON"
    ), lines
    assert "missing here: CAP_BPF, CAP_PERFMON" in lines[0]
