"""Finding retransmitted segments."""

from __future__ import annotations

from packet_builder import Trace

from retranscope.analyze.pipeline import classify_capture
from retranscope.analyze.table import to_pandas

MSS = 1448


def _rtx(tr: Trace):
    """The retransmitted segments production finds (pipeline.classify_capture)."""
    _, _, classified = classify_capture(tr.packets())
    return to_pandas(classified)


def test_simple_retransmission_and_its_original():
    tr = Trace()
    c = tr.conn()
    t = c.handshake(0, 10)
    first = c.send(t, 1, 1000)
    c.send(t + 1, 1001, 1000)
    again = c.send(t + 300, 1, 1000)
    r = _rtx(tr)
    assert len(r) == 1
    row = r.iloc[0]
    assert row["frame"] == tr.frame_of(again)
    assert row["orig_frame"] == tr.frame_of(first)
    assert row["since_original_ns"] == 300_000_000
    assert row["tx_index"] == 2
    assert (row["seq_abs"], row["end_abs"]) == (1, 1001)
    assert row["seq"] == 1_000_001 and row["end_seq"] == 1_001_001
    assert row["snd_nxt_abs"] == 2001
    assert row["probe"] is None


def test_second_retransmission_counts_tx_index_3():
    tr = Trace()
    c = tr.conn()
    t = c.handshake(0, 10)
    c.send(t, 1, 1000)
    c.send(t + 200, 1, 1000)
    c.send(t + 600, 1, 1000)
    r = _rtx(tr)
    assert r["tx_index"].tolist() == [2, 3]


def test_partial_overlap_gso_resegmentation():
    tr = Trace()
    c = tr.conn()
    t = c.handshake(0, 10)
    o1 = c.send(t, 1, MSS)
    c.send(t + 0.01, 1 + MSS, MSS)
    c.send(t + 0.02, 1 + 2 * MSS, MSS)
    # One retransmission covering the first two originals (a coalesced skb) ...
    c.send(t + 300, 1, 2 * MSS)
    # ... and one covering the second half of the third only.
    c.send(t + 301, 1 + 2 * MSS + 700, MSS - 700)
    # ... and a later one starting inside the coalesced retransmission.
    c.send(t + 900, 1 + MSS, MSS)
    r = _rtx(tr)
    assert r["orig_frame"].tolist()[0] == tr.frame_of(o1)
    assert r["payload_len"].tolist() == [2 * MSS, MSS - 700, MSS]
    assert r["tx_index"].tolist() == [2, 2, 3]  # its first byte was also in the coalesced one


def test_pure_acks_and_new_data_are_not_retransmissions():
    tr = Trace()
    c = tr.conn()
    t = c.handshake(0, 10)
    c.send(t, 1, 100)
    c.send(t + 1, 1, 200, by="s", ack=101)  # the server answers with data
    c.ack(t + 2, 201, by="c", seq=101)  # the client acks it (seq = snd_nxt)
    c.send(t + 3, 101, 100)
    assert len(_rtx(tr)) == 0


def test_keepalive_flagged_not_a_data_retransmission():
    tr = Trace()
    c = tr.conn()
    t = c.handshake(0, 10)
    c.send(t, 1, 100)
    c.ack(t + 10, 101)
    ka = c.send(t + 75_000, 100, 0)  # Linux: seq = snd_una - 1, no payload
    ka1 = c.send(t + 150_000, 100, 1)  # other stacks: one garbage byte
    r = _rtx(tr)
    assert r["frame"].tolist() == [tr.frame_of(ka), tr.frame_of(ka1)]
    assert r["probe"].tolist() == ["keepalive", "keepalive"]


def test_zero_window_probe_flagged():
    tr = Trace()
    c = tr.conn()
    t = c.handshake(0, 10)
    c.send(t, 1, 1000)
    c.ack(t + 10, 1001, win=0)
    c.send(t + 210, 1001, 1)  # one byte beyond the closed window (new data)
    c.ack(t + 220, 1001, win=0)
    p2 = c.send(t + 620, 1001, 1)  # the same byte again: a probe, not lost data
    p0 = c.send(t + 1020, 1000, 0)  # Linux's probe: seq = snd_una - 1, no payload
    r = _rtx(tr)
    assert r["frame"].tolist() == [tr.frame_of(p2), tr.frame_of(p0)]
    assert r["probe"].tolist() == ["zero_window", "zero_window"]


def test_capture_started_late_original_unknown():
    tr = Trace()
    c = tr.conn()
    # The capture opens on a receiver ACK that SACKs data above a hole, then, later than any
    # reordering could delay it (no RTT known: Wireshark's 3 ms), the hole's retransmission:
    # its original was sent before the capture began.
    c.ack(0, 5001, sack=((6001, 20001),))
    r1 = c.send(10, 5001, 1000)
    c.send(11, 20001, 1000)
    c.send(12, 6001, 1000)  # below data sent before it, and its TSval is later: resent
    r = _rtx(tr)
    assert r["frame"].tolist()[0] == tr.frame_of(r1)
    assert r["orig_frame"].tolist() == [-1, -1]
    assert r["orig_ts_ns"].isna().all() and r["since_original_ns"].isna().all()
    assert r["tx_index"].tolist() == [2, 2]
    assert not r["out_of_order"].any()


def test_hole_filled_sooner_than_any_resend_could_come_is_out_of_order():
    # A segment below data the receiver already SACKed, 1 ms after that SACK, with no round
    # trip known: no feedback could have made the sender resend it that soon (Wireshark:
    # out-of-order below 3 ms). It is kept, flagged, not a retransmission.
    tr = Trace()
    c = tr.conn(ts=False)
    c.ack(0, 5001, sack=((6001, 20001),))
    o = c.send(1, 5001, 1000)
    r = _rtx(tr)
    assert r["frame"].tolist() == [tr.frame_of(o)]
    assert r["out_of_order"].tolist() == [True]
    assert r["tx_index"].tolist() == [1]


def test_retransmission_across_sequence_wrap():
    tr = Trace()
    c = tr.conn(isn_c=0xFFFFFFFF - 500)
    t = c.handshake(0, 10)
    o = c.send(t, 1, 1000)  # wraps inside this segment
    c.send(t + 1, 1001, 1000)
    c.send(t + 300, 1, 1000)
    r = _rtx(tr)
    assert len(r) == 1
    assert r["orig_frame"].iloc[0] == tr.frame_of(o)
    assert r["seq_abs"].iloc[0] == 1 and r["end_seq"].iloc[0] == 500


def test_syn_and_fin_retransmissions():
    tr = Trace()
    c = tr.conn()
    c.syn(0)
    s2 = c.syn(1000)
    c.synack(1010)
    c.packet(1010.1, "c", seq=1, ack=1, flags=0)
    c.fin(1020, 1)
    f2 = c.fin(1250, 1)
    r = _rtx(tr)
    assert r["frame"].tolist() == [tr.frame_of(s2), tr.frame_of(f2)]
    assert r["seq_abs"].tolist() == [0, 1]


def test_a_gap_in_new_data_is_no_evidence_of_a_retransmission():
    # Mid-connection capture: the first segment seen, then new data far above it. The bytes
    # between were sent, but when? Before the capture began (then the first segment was a
    # resend), or after it, in frames the capture dropped: the capture cannot tell, so the
    # first segment is not reported (issue 7: never invent a retransmission).
    tr = Trace()
    c = tr.conn()
    c.send(0, 1, MSS)
    c.ack(10, 1 + MSS)
    c.send(10.02, 80_001, MSS)  # new data after a gap
    assert len(_rtx(tr)) == 0


def test_no_gap_no_guess():
    tr = Trace()
    c = tr.conn()
    c.send(0, 1, MSS)  # an ordinary mid-connection start: contiguous new data
    c.send(0.01, 1 + MSS, MSS)
    c.ack(10, 1 + 2 * MSS)
    assert len(_rtx(tr)) == 0


def test_an_ack_of_data_never_seen_is_no_evidence_either():
    # The receiver's first ACK acknowledges the first segment and SACKs data the capture
    # never showed: sent before the capture began, or dropped by it. Not reported.
    tr = Trace()
    c = tr.conn()
    c.send(0, 1, MSS)
    c.ack(10, 1 + MSS, sack=((1 + 5 * MSS, 1 + 20 * MSS),))
    assert len(_rtx(tr)) == 0


def test_frame_missing_from_the_capture_later_does_not_make_early_segments_resends():
    # Only the receiver's first ACKs count as evidence of data sent before the capture: an
    # ACK much later that covers a frame the capture dropped says nothing about the start.
    tr = Trace()
    c = tr.conn()
    seq = 1
    for i in range(6):
        c.send(20 * i, seq, MSS)
        c.ack(20 * i + 10, seq + MSS)
        seq += MSS
    c.send(130, seq, MSS)
    c.ack(140, seq + 2 * MSS)  # covers a segment the capture did not record
    assert len(_rtx(tr)) == 0
