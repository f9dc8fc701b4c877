"""The judge (lab/judge.py) on small hand-made cases, and its frame matching on the real
corpus.

Each case is a few frames (tests/packet_builder.py), the kernel events a recorder would
have written for them, and what an analyzer reported; the judge must count right and
wrong kinds, invented and missed retransmissions, and leave alone what it cannot judge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from packet_builder import T0_NS, Trace

from retranscope.lab.judge import (
    Setting,
    counts,
    events_frame,
    failed,
    judge,
    load_setting,
    match_frames,
)
from retranscope.schemas.packets import addr_from_str

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
#: The events' CLOCK_MONOTONIC at the trace's start: any value, the TCP clock follows it.
MONO0_NS = 5_000_000_000_000
SENDER = Setting(name="case", recorded_addrs=frozenset({CLIENT}))


def event(
    conn, t_ms: float, seq: int, length: int, reason: str, *, by: str = "c", err: int = 0
) -> dict:
    """A kernel event as the recorder writes it, for ``conn``'s side ``by`` at ``t_ms``."""
    me, peer = (conn.c, conn.s) if by == "c" else (conn.s, conn.c)
    start = (me.isn + seq) & 0xFFFFFFFF
    return {
        "ts_wall_ns": T0_NS + int(t_ms * 1e6),
        "ts_mono_ns": MONO0_NS + int(t_ms * 1e6),
        "saddr": me.addr,
        "sport": me.port,
        "daddr": peer.addr,
        "dport": peer.port,
        "seq": start,
        "end_seq": (start + length) & 0xFFFFFFFF,
        "reason": reason,
        "err": err,
        # the numeric halves analyze/events.py adds beside the text
        **dict(zip(("saddr_hi", "saddr_lo"), addr_from_str(me.addr)[:2])),
        **dict(zip(("daddr_hi", "daddr_lo"), addr_from_str(peer.addr)[:2])),
    }


def reported(tr: Trace, rows: list[tuple[dict, str]]) -> pd.DataFrame:
    return pd.DataFrame({"frame": [tr.frame_of(r) for r, _ in rows], "kind": [k for _, k in rows]})


def outcomes(j) -> dict[str, int]:
    return j.rows["outcome"].value_counts().to_dict()


def one_loss(tap_ms: float = 0.0, late_ms: float = 0.0):
    """Client data 1..4 segments; segment 2 lost and fast-retransmitted at 30 ms. Seen at a
    tap ``tap_ms`` from the client (its frames later by that), ``late_ms`` of queueing on
    the retransmission (and the original)."""
    tr = Trace()
    c = tr.conn()
    t = c.handshake(0, rtt_ms=10)
    seg = 1448
    frames = [c.send(t + tap_ms + late_ms + i, 1 + i * seg, seg) for i in range(4)]
    # The retransmission: sent at 30 ms (TSval says so), reaches the tap later.
    rtx = c.send(30 + tap_ms + late_ms, 1 + seg, seg, tsval=c.c.ts_offset + 30)
    ev = pd.DataFrame([event(c, 30, 1 + seg, seg, "fast")])
    return tr, c, frames, rtx, ev


def test_right_kind_family_and_wrong_family() -> None:
    tr, _, _, rtx, ev = one_loss()
    packets = tr.packets()
    for kind, want in (("fast", "right_kind"), ("tlp", "wrong_family")):
        j = judge(packets, reported(tr, [(rtx, kind)]), ev, SENDER)
        assert outcomes(j) == {want: 1}
    ev_rec = ev.assign(reason="rto_recovery")
    j = judge(packets, reported(tr, [(rtx, "rto")]), ev_rec, SENDER)
    assert outcomes(j) == {"right_family": 1}
    table = counts([j])
    assert table.loc["case", "right_family"] == 1 and table.loc["case", "wrong_kind"] == 1
    assert table.loc["case", "right_kind"] == 0


def test_invented_and_missed() -> None:
    tr, _, frames, rtx, ev = one_loss()
    packets = tr.packets()
    # The analyzer calls an original a retransmission and does not report the real one.
    j = judge(packets, reported(tr, [(frames[3], "fast")]), ev, SENDER)
    assert outcomes(j) == {"invented": 1, "missed": 1}
    missed = j.rows[j.rows["outcome"] == "missed"].iloc[0]
    assert missed["frame"] == tr.frame_of(rtx) and missed["reason"] == "fast"
    assert not missed["first_copy"]  # the capture holds the original too
    table = counts([j])
    assert table.loc["case", "kernel"] == 1 and table.loc["case", "invented"] == 1
    assert table.loc["case", "family_score"] == 0.0


def test_a_retransmission_the_capture_cannot_show_is_no_error() -> None:
    tr, c, frames, rtx, ev = one_loss()
    # A second event whose frame never reached the capture, and one that failed in the
    # kernel (err < 0: never sent).
    ev = pd.concat(
        [ev, pd.DataFrame([event(c, 60, 1, 1448, "rto"), event(c, 61, 1, 1448, "rto", err=-16)])],
        ignore_index=True,
    )
    j = judge(tr.packets(), reported(tr, [(rtx, "fast")]), ev, SENDER)
    assert outcomes(j) == {"right_kind": 1}
    assert j.events["visible"].tolist() == [True, False]  # the err event is left out
    table = counts([j])
    assert table.loc["case", "not_visible"] == 1 and table.loc["case", "missed"] == 0
    assert table.loc["case", "family_score"] == 1.0


def test_path_delay_to_a_receiver_tap() -> None:
    """At a tap 25 ms from the sender every frame arrives 25 ms after the event that sent
    it; without the delay the retransmission would match nothing."""
    tr, _, _, rtx, ev = one_loss(tap_ms=25.0)
    rep = reported(tr, [(rtx, "fast")])
    at_rcv = Setting(
        name="case",
        capture_point="receiver",
        recorded_addrs=frozenset({CLIENT}),
        tap_delay_ns={CLIENT: 25_000_000},
    )
    assert outcomes(judge(tr.packets(), rep, ev, at_rcv)) == {"right_kind": 1}
    # Told the wrong delay, and without timestamps to go by, it cannot pair them.
    no_ts = Trace()
    c = no_ts.conn(ts=False)
    t = c.handshake(0, rtt_ms=10)
    c.send(t + 25, 1, 1448)
    late = c.send(30 + 25, 1, 1448)
    ev2 = pd.DataFrame([event(c, 30, 1, 1448, "fast")])
    rep2 = reported(no_ts, [(late, "fast")])
    assert outcomes(judge(no_ts.packets(), rep2, ev2, SENDER)) == {"invented": 1, "missed": 1}
    at_rcv2 = Setting(
        name="case", recorded_addrs=frozenset({CLIENT}), tap_delay_ns={CLIENT: 25_000_000}
    )
    assert outcomes(judge(no_ts.packets(), rep2, ev2, at_rcv2)) == {"right_kind": 1}


def test_queueing_on_the_path_is_read_from_tsval() -> None:
    """A queue 80 ms deep delays the original and the retransmission alike: by arrival
    time the original (sent 26 ms before the event) is the nearer to where the event's
    frame was due; its TSval says it was sent before the event, the retransmission's that
    it was sent at it."""
    tr, _, frames, rtx, ev = one_loss(late_ms=80.0)
    packets = tr.packets()
    event_of_row = match_frames(packets, ev, SENDER)
    matched = packets["frame"][event_of_row >= 0].tolist()
    assert matched == [tr.frame_of(rtx)]


def test_two_copies_near_one_event_keep_the_nearer() -> None:
    """On a veth RTT the original can leave microseconds before its retransmission: both
    frames fall in the event's window; the nearer is the event's."""
    tr = Trace()
    c = tr.conn(ts=False)
    t = c.handshake(0, rtt_ms=0.05)
    orig = c.send(t + 1.0, 1, 1448)
    rtx = c.send(t + 1.3, 1, 1448)
    ev = pd.DataFrame([event(c, t + 1.31, 1, 1448, "fast")])
    j = judge(tr.packets(), reported(tr, [(orig, "fast"), (rtx, "fast")]), ev, SENDER)
    got = dict(zip(j.rows["frame"], j.rows["outcome"]))
    assert got == {tr.frame_of(orig): "invented", tr.frame_of(rtx): "right_kind"}


def test_peer_and_unreported_rows_are_not_judged() -> None:
    tr, c, frames, rtx, ev = one_loss()
    # The server resends a reply: in the capture, but no recorder ran on the server.
    c.send(40, 1, 100, by="s")
    peer_rtx = c.send(50, 1, 100, by="s")
    # The client resends segment 3 without an event (the kernel ran no probe).
    silent = c.send(55, 1 + 2 * 1448, 1448)
    rep = reported(tr, [(rtx, "fast"), (peer_rtx, "rto"), (silent, "rto")])
    packets = tr.packets()
    assert outcomes(judge(packets, rep, ev, SENDER)) == {"right_kind": 1, "peer": 1, "invented": 1}
    accounted = Setting(name="case", recorded_addrs=frozenset({CLIENT}), unreported_segments=1)
    assert outcomes(judge(packets, rep, ev, accounted)) == {
        "right_kind": 1,
        "peer": 1,
        "unreported": 1,
    }


def test_a_failed_analysis_misses_every_visible_retransmission() -> None:
    tr, _, _, _, ev = one_loss()
    j = failed(SENDER, tr.packets(), ev, "IndexError: boom")
    assert outcomes(j) == {"missed": 1} and j.error == "IndexError: boom"


def test_counts_per_reason_and_scores() -> None:
    tr, c, frames, rtx, ev = one_loss()
    tlp = c.send(90, 1 + 3 * 1448, 1448, tsval=c.c.ts_offset + 90)
    ev = pd.concat([ev, pd.DataFrame([event(c, 90, 1 + 3 * 1448, 1448, "tlp")])], ignore_index=True)
    j = judge(
        tr.packets(), reported(tr, [(rtx, "fast"), (tlp, "rto"), (frames[0], "rto")]), ev, SENDER
    )
    per_reason = counts([j], by="reason")
    assert per_reason.loc["fast", "right_kind"] == 1
    assert per_reason.loc["tlp", "wrong_family"] == 1
    assert "invented" in per_reason.columns and per_reason["invented"].sum() == 0
    per_rec = counts([j])
    assert per_rec.loc["case", ["kernel", "invented", "right_family"]].tolist() == [2, 1, 1]
    assert per_rec.loc["case", "family_score"] == pytest.approx(1 / 3)


def test_setting_of_an_old_recording(tmp_path: Path) -> None:
    """Recordings made before capture points: taken on the retransmitting host, and the
    recorded host is the catalogue scenario's retransmitter."""
    old = tmp_path / "synack_drop_v6__any"
    old.mkdir()
    (old / "scenario.json").write_text(json.dumps({"name": "synack_drop_v6"}))
    (old / "run.json").write_text(json.dumps({"accounting": {"unreported_segments": 2}}))
    s = load_setting(old)
    assert (s.capture_point, s.recorded_addrs, s.unreported_segments) == (
        "sender",
        frozenset({"fd00:77::2"}),
        2,
    )
    assert s.tap_delay_ns == {}
    new = tmp_path / "reply_ack_loss_mid"
    new.mkdir()
    (new / "scenario.json").write_text(
        json.dumps(
            {
                "name": "reply_ack_loss_mid",
                "capture_point": "mid",
                "recorded_addrs": ["10.77.0.2"],
                "tap_delay_ms": {"10.77.0.1": 5.0, "10.77.0.2": 5.0},
                "tap_extra_ms": {"10.77.0.1": 0.5},
                "derived": {"from": "x", "ops": []},
            }
        )
    )
    s = load_setting(new)
    assert s.capture_point == "mid" and s.tap_delay_ns["10.77.0.2"] == 5_000_000
    assert s.tap_extra_ns == {"10.77.0.1": 500_000} and s.derived == {"from": "x", "ops": []}


# --- the matching on real recordings -----------------------------------------------------

CORPUS = Path(os.environ.get("RETRANSCOPE_CORPUS", Path(__file__).parent / "fixtures" / "corpus"))


def _uncut_sender_recordings() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    out = []
    for d in sorted(CORPUS.iterdir()):
        sc = d / "scenario.json"
        if not sc.is_file() or "__late" in d.name:
            continue
        meta = json.loads(sc.read_text())
        if meta.get("capture_point", "sender") == "sender" and not meta.get("derived"):
            out.append(d)
    return out


def test_every_sent_event_finds_its_frame_in_complete_sender_captures() -> None:
    """A capture on the retransmitting host that nothing was cut from shows every
    retransmission the kernel sent: the matching must find a frame for each event (and
    never two frames for the same bytes of one event)."""
    from retranscope.analyze.capture import read_capture
    from retranscope.analyze.events import read_events

    dirs = _uncut_sender_recordings()
    if not dirs:
        pytest.skip(f"no corpus at {CORPUS}")
    unmatched = {}
    total = 0
    for d in dirs:
        events = events_frame(read_events(d).table)
        setting = load_setting(d, events)
        packets = read_capture(d / "capture.pcap").packets
        event_of_row = match_frames(packets, events, setting)
        sent = events["err"].fillna(0).to_numpy() == 0
        shown = np.zeros(len(events), bool)
        shown[event_of_row[event_of_row >= 0]] = True
        total += int(sent.sum())
        if (sent & ~shown).any():
            unmatched[d.name] = int((sent & ~shown).sum())
    assert total > 1000
    assert unmatched == {}


def test_missed_first_copies_are_counted_apart() -> None:
    """At a receiver the original may be lost before the tap: the retransmission is then
    the only copy of its bytes in the capture, and missing it is counted apart."""
    tr = Trace()
    c = tr.conn()
    t = c.handshake(0, rtt_ms=10)
    c.send(t, 1, 1448)
    c.send(t + 0.1, 1 + 2 * 1448, 1448)  # segment 2 never reached the capture
    only = c.send(30, 1 + 1448, 1448)
    ev = pd.DataFrame([event(c, 30, 1 + 1448, 1448, "fast")])
    j = judge(tr.packets(), reported(tr, []), ev, SENDER)
    assert outcomes(j) == {"missed": 1} and bool(j.rows["first_copy"].iloc[0])
    assert j.rows["frame"].iloc[0] == tr.frame_of(only)
    table = counts([j])
    assert table.loc["case", ["missed", "missed_first_copy"]].tolist() == [1, 1]
    by_reason = counts([j], by="reason")
    assert by_reason.loc["fast", "missed_first_copy"] == 1
