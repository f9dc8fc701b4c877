"""Classification of retransmissions: one trace per kernel rule.

Each trace is what tcpdump on the sender's host would show; the expected kind is the Linux
function that would have sent the segment (see analyze/sender.py).
"""

from __future__ import annotations

import pandas as pd
from packet_builder import Trace

from retranscope.analyze.classify import rtt_estimator
from retranscope.analyze.pipeline import classify_capture
from retranscope.analyze.table import to_pandas

MSS = 1448
RTT = 10.0  # ms


def classified(packets: dict) -> pd.DataFrame:
    """What production classifies (pipeline.classify_capture), as a DataFrame to read."""
    _, _, table = classify_capture(packets)
    return to_pandas(table)


def run(tr: Trace) -> pd.DataFrame:
    return classified(tr.packets())


def warm(c, t: float, seq: int = 1, n: int = 5, size: int = 100, rtt: float = RTT):
    """Request/ACK exchanges so the sender has an SRTT of ``rtt``; returns (t, next seq)."""
    for _ in range(n):
        c.send(t, seq, size)
        c.ack(t + rtt, seq + size)
        seq += size
        t += 2 * rtt
    return t, seq


def start(**kw):
    tr = Trace()
    c = tr.conn(**kw)
    t = c.handshake(0, RTT)
    t, seq = warm(c, t + 5)
    return tr, c, t, seq


# --- tail loss probe -------------------------------------------------------------------


def test_tlp_after_two_srtt_of_silence_resends_the_tail():
    tr, c, t, seq = start()
    c.send(t, seq, 100)
    c.send(t + 0.1, seq + 100, 100)
    c.send(t + 0.2, seq + 200, 100)
    probe = c.send(t + 0.2 + 22.5, seq + 200, 100)  # PTO = 2*SRTT + 2 ms
    c.ack(t + 0.2 + 32.5, seq + 300)
    r = run(tr)
    assert len(r) == 1
    row = r.iloc[0]
    assert row["frame"] == tr.frame_of(probe)
    assert row["kind_pcap"] == "tlp" and row["family"] == "tlp"
    assert row["position"] == "tail" and row["clock"] == "timer"
    assert row["srtt_us"] == 10_000
    assert row["expected_pto_ns"] == 22_000_000
    assert row["since_last_send_ns"] == 22_500_000
    assert not row["spurious"]


def test_a_sack_block_covering_no_whole_segment_leaves_the_probe_armed():
    # The receiver SACKs only the flight's last byte. tcp_match_skb_to_sack tags whole skbs
    # (or MSS pieces of them) only: nothing is SACKed, sacked_out stays 0, the socket stays
    # Open, and tcp_send_loss_probe resends the tail when the PTO (2*SRTT + 2 ms after the
    # last send) expires: a probe, not fast recovery (issue 7 item 5).
    tr, c, t, seq = start()
    last, nxt = c.burst(t, seq, 4, size=MSS)
    c.ack(t + RTT, seq, sack=((nxt - 1, nxt),))
    probe = c.send(last + 22.5, nxt - MSS, MSS)
    c.ack(last + 32.5, nxt)
    r = run(tr)
    assert r["frame"].tolist() == [tr.frame_of(probe)]
    assert r["kind_pcap"].tolist() == ["tlp"]
    assert r["ca_state"].tolist() == ["Open"]


def test_a_sack_block_covering_a_segment_moves_to_recovery():
    # The same flight with the last segment SACKed whole: tagged, the hole below it is
    # lost by RACK once the reorder window passes, and its resend is fast recovery.
    tr, c, t, seq = start()
    last, nxt = c.burst(t, seq, 4, size=MSS)
    sack = c.ack(t + RTT, seq, sack=((nxt - MSS, nxt),))
    fast = c.send(t + RTT + 0.02, seq, MSS)
    c.ack(t + 2 * RTT, nxt)
    r = run(tr)
    assert r["frame"].tolist() == [tr.frame_of(fast)]
    assert r["kind_pcap"].tolist() == ["fast"]
    assert r["trigger_frame"].tolist() == [tr.frame_of(sack)]


def test_spurious_tlp_reported_by_dsack():
    # docs/kernel-notes.md: small requests, a slow server whose delayed ACK outlasts the PTO; the
    # probe duplicates the last request and the server answers with a D-SACK.
    tr, c, t, seq = start()
    for i in range(3):
        c.send(t + 0.05 * i, seq + 100 * i, 100)
    c.send(t + 0.1 + 22.5, seq + 200, 100)
    c.ack(t + 0.1 + 30, seq + 300)  # the delayed ACK of the originals
    c.ack(t + 0.1 + 32.5, seq + 300, sack=((seq + 200, seq + 300),))  # D-SACK: below ack
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp"]
    assert bool(r["spurious"].iloc[0]) and r["spurious_by"].iloc[0] == "dsack"


def test_single_outstanding_segment_probe_waits_for_the_rto_then_rto_backs_off():
    # Every RTT sample is 10 ms, so (tcp_rtt_estimator, tcp_set_rto) SRTT = 10 ms and
    # rttvar = max(mdev, TCP_RTO_MIN) = 200 ms: RTO = 210 ms. packets_out == 1: PTO =
    # 2*SRTT + TCP_RTO_MIN = 220 ms, clamped to the RTO (tcp_schedule_loss_probe): 210 ms.
    # The probe goes first, then the RTO re-armed from it (210 ms), then tcp_retransmit_timer
    # doubles icsk_rto on each timeout: 420 ms, 840 ms.
    tr, c, t, seq = start()
    c.send(t, seq, 100)
    c.send(t + 210, seq, 100)
    c.send(t + 420, seq, 100)
    c.send(t + 840, seq, 100)
    c.send(t + 1680, seq, 100)
    c.ack(t + 1690, seq + 100)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp", "rto", "rto", "rto"]
    assert r["backoff"].tolist()[1:] == [0, 1, 2]
    assert r["srtt_us"].tolist() == [10_000] * 4
    assert r["expected_pto_ns"].iloc[0] == 210_000_000
    assert r["expected_rto_ns"].tolist() == [210_000_000, 210_000_000, 420_000_000, 840_000_000]
    assert r["ca_state"].tolist() == ["Open", "Loss", "Loss", "Loss"]


def test_only_one_probe_per_flight():
    # After a TLP, the next timer-driven retransmission is the RTO of the head, even when
    # the head is also the tail (tlp_high_seq still set, tcp_send_loss_probe).
    tr, c, t, seq = start()
    c.send(t, seq, 100)
    c.send(t + 0.1, seq + 100, 100)
    c.send(t + 22.1, seq + 100, 100)  # TLP of the tail
    c.ack(t + 32, seq + 100)  # the head arrives, the tail and its probe don't
    c.send(t + 242, seq + 100, 100)  # the RTO of what is now head and tail
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp", "rto"]


def test_probe_not_cleared_by_an_ack_exactly_at_tlp_high_seq():
    # The probe repaired a tail loss: the ACK is exactly tlp_high_seq and advances snd_una,
    # which leaves tlp_high_seq set (tcp_process_tlp_ack). The next flight's tail loss is
    # therefore an RTO, not another probe.
    tr, c, t, seq = start()
    c.send(t, seq, 100)
    c.send(t + 0.1, seq + 100, 100)
    c.send(t + 22.1, seq + 100, 100)  # TLP, repairs the lost tail
    c.ack(t + 32.1, seq + 200)
    c.send(t + 50, seq + 200, 100)
    c.send(t + 50.1, seq + 300, 100)
    c.send(t + 50.1 + 210, seq + 200, 100)  # timer, head: RTO (probe refused)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp", "rto"]


def test_no_tlp_without_sack():
    tr, c, t, seq = start(sack=False)
    c.send(t, seq, 100)
    c.send(t + 0.1, seq + 100, 100)
    c.send(t + 210, seq, 100)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["rto"]
    assert r["position"].tolist() == ["head"]


# --- RTO --------------------------------------------------------------------------------


def test_rto_resends_the_head_after_the_probe_then_doubles():
    tr, c, t, seq = start()
    t_last, nxt = c.burst(t, seq, 4, size=MSS)
    c.send(t_last + 22, nxt - MSS, MSS)  # TLP of the tail
    t_rto = t_last + 22 + 210
    h1 = c.send(t_rto, seq, MSS)  # RTO: head
    h2 = c.send(t_rto + 420, seq, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp", "rto", "rto"]
    assert r["frame"].tolist()[1:] == [tr.frame_of(h1), tr.frame_of(h2)]
    assert r["position"].tolist()[1:] == ["head", "head"]
    assert r["backoff"].tolist()[1:] == [0, 1]
    assert r["tx_index"].tolist() == [2, 2, 3]


def test_slow_start_retransmits_after_an_rto_until_high_seq_then_fast_again():
    tr, c, t, seq = start()
    t_last, nxt = c.burst(t, seq, 7, size=MSS)  # all lost
    segs = [seq + i * MSS for i in range(7)]
    c.send(t_last + 22, segs[6], MSS)  # TLP
    t1 = t_last + 22 + 210
    c.send(t1, segs[0], MSS)  # RTO
    c.ack(t1 + 10, segs[1])
    c.send(t1 + 10.02, segs[1], MSS)  # cwnd 2: slow start
    c.send(t1 + 10.03, segs[2], MSS)
    c.ack(t1 + 20, segs[3])
    for i, s in enumerate(segs[3:6]):
        c.send(t1 + 20.02 + 0.01 * i, s, MSS)
    c.ack(t1 + 30, nxt)  # snd_una passes high_seq: Loss is over
    # New data, then a hole revealed by SACK: fast retransmit in Recovery.
    t2 = t1 + 40
    c.burst(t2, nxt, 4, size=MSS)
    sack = c.ack(t2 + 10, nxt, sack=((nxt + MSS, nxt + 4 * MSS),))
    c.send(t2 + 10.02, nxt, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp", "rto"] + ["rto_recovery"] * 5 + ["fast"]
    assert r["ca_state"].tolist()[2:7] == ["Loss"] * 5
    last = r.iloc[-1]
    assert last["trigger_frame"] == tr.frame_of(sack)


def test_fast_retransmit_right_after_a_sack_showing_a_hole():
    tr, c, t, seq = start()
    t_last, nxt = c.burst(t, seq, 6, size=MSS)
    sack = c.ack(t + RTT, seq, sack=((seq + MSS, seq + 4 * MSS),))
    fr = c.send(t + RTT + 0.02, seq, MSS)
    r = run(tr)
    row = r.iloc[0]
    assert row["frame"] == tr.frame_of(fr)
    assert row["kind_pcap"] == "fast" and row["clock"] == "ack"
    assert row["trigger_frame"] == tr.frame_of(sack)
    assert row["since_trigger_ns"] == 20_000
    assert row["ca_state"] == "Recovery"


def test_rack_reorder_timer_retransmission_is_fast():
    # A SACK arrives for a later segment while the hole was sent less than reo_wnd before:
    # no immediate retransmit; the RACK reorder timer fires a few ms later
    # (tcp_rack_reo_timeout -> tcp_xmit_retransmit_queue), still a fast retransmit.
    tr, c, t, seq = start()
    c.send(t, seq, MSS)
    c.send(t + 0.5, seq + MSS, MSS)
    c.ack(t + 0.5 + RTT, seq, sack=((seq + MSS, seq + 2 * MSS),))
    c.send(t + 0.5 + RTT + 4.5, seq, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["fast"]
    assert r["clock"].tolist() == ["timer"]


def test_lost_retransmission_in_loss_moves_to_recovery():
    # In Loss, a retransmission resent on an ACK means RACK marked it lost again
    # (FLAG_LOST_RETRANS): tcp_fastretrans_alert enters Recovery, so that one is fast.
    tr, c, t, seq = start()
    t_last, nxt = c.burst(t, seq, 6, size=MSS)
    segs = [seq + i * MSS for i in range(6)]
    c.send(t_last + 22, segs[5], MSS)  # TLP
    t1 = t_last + 232
    c.send(t1, segs[0], MSS)  # RTO
    c.ack(t1 + 10, segs[1])
    c.send(t1 + 10.02, segs[1], MSS)  # slow start, this one is lost again
    c.send(t1 + 10.03, segs[2], MSS)
    c.ack(t1 + 20, segs[1], sack=((segs[2], segs[3]),))
    c.send(t1 + 20.02, segs[1], MSS)  # lost retransmit resent: fast
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp", "rto", "rto_recovery", "rto_recovery", "fast"]
    assert r["tx_index"].tolist()[-1] == 3


def test_spurious_rto_found_by_timestamp_echo_then_loss_is_undone():
    # No SACK: the first timeout is an RTO. The ACK echoes the original's TSval, not the
    # retransmission's (Eifel, RFC 3522): spurious, and tcp_try_undo_loss restores cwnd.
    # But without SACK only an F-RTO undo reopens the connection (`if (frto_undo ||
    # tcp_is_sack(tp))`, tcp_input.c since "tcp: fix early ETIMEDOUT after spurious
    # non-SACK RTO", 2022): the sender stays in Loss, and the later retransmission on the
    # duplicate ACKs is a slow-start retransmit (TCPSlowStartRetrans), not fast.
    tr, c, t, seq = start(sack=False)
    o = c.send(t, seq, MSS)
    c.send(t + 0.01, seq + MSS, MSS)
    c.send(t + 0.02, seq + 2 * MSS, MSS)
    c.send(t + 0.03, seq + 3 * MSS, MSS)
    c.send(t + 210, seq, MSS)  # RTO
    c.ack(t + 215, seq + MSS, tsecr=o["tsval"])  # delayed ACK of the original
    for i in range(3):  # three duplicate ACKs: NewReno fast retransmit
        c.ack(t + 220 + i, seq + MSS, tsecr=o["tsval"])
    c.send(t + 222.02, seq + MSS, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["rto", "rto_recovery"]
    assert bool(r["spurious"].iloc[0]) and r["spurious_by"].iloc[0] == "ts_echo"
    assert not r["spurious"].iloc[1]


def _reno_timeout_then_cumulative_ack(first_ack_covers_head_only: bool):
    """No SACK, Open, eight segments out; the head is lost, the RTO resends it (F-RTO armed:
    tcp_enter_loss from Open). Returns the trace and the seqs of the flight."""
    tr, c, t, seq = start(sack=False)
    segs = [seq + i * MSS for i in range(8)]
    c.burst(t, seq, 8, size=MSS)
    c.send(t + 210, seq, MSS)  # RTO
    if first_ack_covers_head_only:
        c.ack(t + 220, segs[1])  # the resent head alone (F-RTO step 2)
        c.send(t + 220.02, segs[8 - 1] + MSS, MSS)  # new data (step 2.b)
        c.ack(t + 221, segs[6])  # never-resent data alone: spurious (step 3.b)
    else:
        c.ack(t + 220, segs[5])  # the resent head *and* never-resent data
    return tr, c, t, segs


def test_reno_ack_covering_the_resent_head_does_not_undo_frto():
    # Without SACK a cumulative ACK that also covers a resent segment cannot show that the
    # originals arrived: tcp_clean_rtx_queue clears FLAG_ORIG_SACK_ACKED on
    # FLAG_RETRANS_DATA_ACKED for Reno ("tcp: prevent bogus FRTO undos with non-SACK
    # flows"), so the sender stays in Loss and resends the rest in slow start.
    tr, c, t, segs = _reno_timeout_then_cumulative_ack(False)
    c.send(t + 220.02, segs[5], MSS)
    c.send(t + 220.03, segs[6], MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["rto", "rto_recovery", "rto_recovery"]


def test_reno_ack_of_never_resent_data_alone_undoes_frto():
    # The same timeout, but the first ACK covers only the resent head and the next one only
    # never-resent data: F-RTO proves the timeout spurious and reopens (tcp_try_undo_loss
    # with frto_undo). Three duplicate ACKs then start NewReno fast recovery.
    tr, c, t, segs = _reno_timeout_then_cumulative_ack(True)
    for i in range(3):
        c.ack(t + 230 + i, segs[6])
    c.send(t + 232.02, segs[6], MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["rto", "fast"]


# --- handshake --------------------------------------------------------------------------


def test_syn_resent_after_one_second():
    # tcp_retransmit_timer in SYN_SENT (Linux 6.5+): while tp->total_rto is at most
    # tcp_syn_linear_timeouts (4), neither icsk_backoff nor icsk_rto grows: five resends
    # 1 s apart with backoff 0, then the timer doubles (2 s, backoff 1).
    tr = Trace()
    c = tr.conn()
    c.syn(0)
    resent = [c.syn(1000 * i) for i in range(1, 6)] + [c.syn(7000)]
    c.synack(7010)
    r = run(tr)
    assert r["frame"].tolist() == [tr.frame_of(s) for s in resent]
    assert r["kind_pcap"].tolist() == ["syn"] * 6
    assert r["family"].tolist() == ["rto"] * 6
    assert r["backoff"].tolist() == [0, 0, 0, 0, 0, 1]
    assert r["expected_rto_ns"].tolist() == [1_000_000_000] * 5 + [2_000_000_000]
    assert r["since_original_ns"].tolist()[:2] == [1_000_000_000, 2_000_000_000]


def test_synack_resent():
    tr = Trace()
    c = tr.conn()
    c.syn(0)
    c.synack(0.1)
    c.synack(1000.1)
    c.packet(1010, "c", seq=1, ack=1, flags=0)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["synack"]


def test_a_resent_syn_does_not_hold_back_the_first_episodes_undo():
    # The SYN was resent. Later a fast retransmit of a late (not lost) head is reported
    # duplicate by a D-SACK before snd_una reaches high_seq: tcp_try_undo_dsack undoes
    # the episode and the socket is Open again, so the lost tail then goes by the probe
    # timer. The SYN's retransmission is not part of that episode's undo count: its ACK
    # cleared retrans_stamp and tcp_init_undo started undo_retrans from the
    # retransmissions in flight. Counting it kept the episode from ever being undone,
    # and the tail was called an RTO (the replay before this test).
    def trace(resent_syn: bool) -> Trace:
        tr = Trace()
        c = tr.conn(ts=False)
        c.syn(0)
        t0 = 1000.0 if resent_syn else 0.0
        if resent_syn:
            c.syn(t0)
        c.synack(t0 + RTT)
        c.packet(t0 + RTT + 0.01, "c", seq=1, ack=1, flags=0)
        t, seq = warm(c, t0 + RTT + 5)
        c.burst(t, seq, 10, size=MSS)
        segs = [seq + i * MSS for i in range(10)]
        ta = t + RTT
        for j in range(3):
            c.ack(ta + 0.01 * j, seq, sack=((segs[1], segs[2 + j]),))
        c.send(ta + 0.03, seq, MSS)  # fast retransmit of the head
        c.ack(ta + 1, segs[4])  # the original head arrived after all
        c.ack(ta + 2, segs[4], sack=((seq, seq + MSS),))  # D-SACK of the retransmission
        c.ack(ta + 3, segs[9])  # all but the tail
        c.send(ta + 3 + 22.5, segs[9], MSS)  # the tail, a PTO later
        return tr

    plain = run(trace(False))
    assert plain["kind_pcap"].tolist() == ["fast", "tlp"]
    after_syn = run(trace(True))
    assert after_syn["kind_pcap"].tolist() == ["syn", "fast", "tlp"]
    assert after_syn["spurious_by"].tolist()[1] == "dsack"


# --- not retransmissions / odd captures ----------------------------------------------------


def test_keepalive_is_not_an_rto():
    tr, c, t, seq = start()
    c.send(t + 7_200_000, seq - 1, 0)  # keep-alive after two hours idle
    r = run(tr)
    assert r["probe"].tolist() == ["keepalive"]
    assert r["kind_pcap"].tolist() == ["unknown"]
    assert not r["spurious"].iloc[0]


def test_capture_started_late_still_classified():
    tr = Trace()
    c = tr.conn()
    sack = c.ack(0, 5001, sack=((6449, 20001),))
    c.send(0.02, 5001, MSS)  # ACK-clocked right after the SACK: fast
    r = run(tr)
    assert r["orig_frame"].tolist() == [-1]
    assert r["kind_pcap"].tolist() == ["fast"]
    assert r["trigger_frame"].tolist() == [tr.frame_of(sack)]


def test_sequence_wraparound_does_not_disturb_classification():
    tr = Trace()
    c = tr.conn(isn_c=0xFFFFFFFF - 700)
    t = c.handshake(0, RTT)
    t, seq = warm(c, t + 5)
    c.send(t, seq, 600)  # wraps here
    c.send(t + 0.1, seq + 600, 600)
    c.send(t + 22.1, seq + 600, 600)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp"]
    assert r["seq_abs"].tolist() == [seq + 600]


def test_ipv6_fast_retransmit():
    tr, c, t, seq = start(client="2001:db8::1", server="2001:db8::2")
    c.burst(t, seq, 5, size=MSS)
    c.ack(t + RTT, seq, sack=((seq + MSS, seq + 4 * MSS),))
    c.send(t + RTT + 0.02, seq, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["fast"]


def test_reused_tuple_keeps_state_apart():
    # The second connection on the same 4-tuple starts Open, whatever the first ended in.
    tr, c, t, seq = start(isn_c=500, isn_s=900)
    c.send(t, seq, 100)
    c.send(t + 210, seq, 100)  # a probe (the flight's first timeout) ...
    c.send(t + 420, seq, 100)  # ... then an RTO: the first connection ends in Loss
    c.rst(t + 500, seq + 100)
    c2 = tr.conn(isn_c=777_777, isn_s=12345)
    t2 = c2.handshake(t + 1000, RTT)
    t2, seq2 = warm(c2, t2 + 5)
    c2.send(t2, seq2, 100)
    c2.send(t2 + 0.1, seq2 + 100, 100)
    c2.send(t2 + 22.1, seq2 + 100, 100)
    r = run(tr)
    assert r["flow_id"].nunique() == 2
    assert r["kind_pcap"].tolist()[-1] == "tlp"


# --- the estimator -------------------------------------------------------------------------


def test_rtt_estimator_matches_the_kernels_integer_arithmetic():
    # Expected values worked by hand through tcp_rtt_estimator and tcp_set_rto
    # (net/ipv4/tcp_input.c; srtt_us holds 8*SRTT, mdev_us the mean deviation scaled so
    # that RTO = SRTT + rttvar), not through the formula the code uses.
    import numpy as np

    # 100, 100, 180 ms. First sample: srtt_us = 8*100000, mdev_us = 2*100000, rttvar_us =
    # max(mdev_us, tcp_rto_min_us) = 200000: RTO 300 ms. Second: error 0, mdev_us -=
    # mdev_us/4 -> 150000. Third: error +80000, srtt_us = 880000 (SRTT 110 ms), mdev_us =
    # 150000 + 80000 - 37500 = 192500, under the floor: RTO = 110000 + 200000.
    srtt, rto = rtt_estimator(np.zeros(3, dtype=np.int64), np.array([100_000, 100_000, 180_000]))
    assert srtt.tolist() == [100_000, 100_000, 110_000]
    assert rto.tolist() == [300_000, 300_000, 310_000]
    # 400 then 100 ms: error -300000, srtt_us = 3200000 - 300000 (SRTT 362.5 ms). The sample
    # is below SRTT, so m = 300000 - 800000/4 = 100000 is cut to m >> 3 = 12500 (the "Eifel
    # finding" gain), mdev_us = 812500 > mdev_max_us: rttvar_us = 812500, RTO 1175 ms.
    # (Plain RFC 6298 would raise RTTVAR to 900000: RTO 1262.5 ms.)
    srtt, rto = rtt_estimator(np.zeros(2, dtype=np.int64), np.array([400_000, 100_000]))
    assert srtt.tolist() == [400_000, 362_500]
    assert rto.tolist() == [1_200_000, 1_175_000]
    # A 100 s sample: 300 s by the formula, bounded to TCP_RTO_MAX (tcp_bound_rto).
    _, rto = rtt_estimator(np.zeros(1, dtype=np.int64), np.array([100_000_000]))
    assert rto.tolist() == [120_000_000]
    # Two flows' samples do not mix.
    srtt2, _ = rtt_estimator(np.array([0, 1]), np.array([5_000, 50_000]))
    assert srtt2.tolist() == [5_000, 50_000]


def test_rtt_estimator_gives_a_flow_the_same_bits_whatever_flows_stand_beside_it():
    # A flow's SRTT and RTO come from its own samples alone, to the last bit: a shard of
    # the capture (analyze/shards.py) holds other flows than the whole does. Blocks of the
    # scan laid over all flows together changed the last bits of ~half of these values
    # with the number of samples before the flow.
    import numpy as np

    rng = np.random.default_rng(1)
    m = rng.integers(1_000, 400_000, 20_000)
    alone = rtt_estimator(np.zeros(len(m), dtype=np.int64), m)
    for k in (1, 7, 100, 1_234, 30_000):
        group = np.r_[np.zeros(k, dtype=np.int64), np.ones(len(m), dtype=np.int64)]
        beside = rtt_estimator(group, np.r_[rng.integers(1_000, 400_000, k), m])
        for x, y in zip(alone, beside):
            assert np.array_equal(x, y[k:]), k
    # and the blocked scan is the recurrence, run row by row
    srtt = alone[0]
    y = float(m[0])
    for i in range(1, 200):
        y = 7.0 / 8.0 * y + m[i] / 8.0
        assert abs(srtt[i] - y) <= 1e-6 * y


def test_acks_lost_after_the_capture_are_judged_alike_in_any_shard():
    # _received_acks cuts times to µs; from the capture's first packet, which every shard
    # holds, not from the earliest ACK it looks at, which other flows in a shard move:
    # with nanosecond times, an ACK 300 ns after the moment it had to reach the sender
    # by was judged lost or not by the flows beside it.
    import numpy as np

    from retranscope.analyze.classify import ACK_RACE_NS, _received_acks

    arrive_by = 7_000_000_000
    t_cap0 = arrive_by - 5_000_100  # arrive_by is 100 ns into a µs from here
    # flow 0's data is ACKed by flow 1, flow 2's by flow 3; row 0: flow 1's ACK up to
    # byte 1000, 300 ns late; row 1: an earlier ACK of flow 2, at an odd nanosecond
    packets = {"ts_ns": np.array([arrive_by + 300, t_cap0 + 777], dtype=np.int64)}
    space = {"ack_abs": np.array([1_000, 50], dtype=np.int64)}
    flows = {"rev_flow_id": np.array([1, 0, 3, 2])}
    flow_id = np.array([1, 3])
    rtx = {  # flow 0 resends byte 0, below that ACK
        "flow_id": np.array([0]),
        "seq_abs": np.array([0], dtype=np.int64),
        "ts_ns": np.array([arrive_by + ACK_RACE_NS], dtype=np.int64),
    }
    real, shift_us = np.array([True]), np.zeros(4, dtype=np.int64)
    verdicts = [
        len(_received_acks(packets, space, flows, flow_id, sel, rtx, real, shift_us, t_cap0)[1])
        for sel in (np.array([0]), np.array([0, 1]))
    ]
    assert verdicts[0] == verdicts[1] == 1  # the same µs as arrive_by: lost


def test_peer_sent_flow_is_judged_in_the_senders_time():
    # Captured on the client; the *server* retransmits. Our SACK reaches it half an RTT
    # after we see it leave, and its fast retransmit reaches us half an RTT later: one path
    # RTT (20 ms, from the handshake) after the SACK, yet ACK-clocked at the server.
    tr = Trace()
    c = tr.conn()
    c.syn(0)
    c.synack(20)  # SYN-ACK after the path RTT: we are the client
    c.packet(20.02, "c", seq=1, ack=1, flags=0)
    t, seq = 40.0, 1
    for _ in range(5):  # server data, our immediate ACKs
        c.send(t, seq, 1000, by="s")
        c.ack(t + 0.05, seq + 1000, by="c")
        seq += 1000
        t += 40
    for i in range(5):
        c.send(t + 0.01 * i, seq + 1000 * i, 1000, by="s")
    c.ack(t + 0.05, seq, by="c", sack=((seq + 1000, seq + 5000),))
    c.send(t + 20.1, seq, 1000, by="s")  # arrives one RTT after our SACK
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["fast"]
    assert r["clock"].tolist() == ["ack"]
    assert r["since_last_ack_ns"].iloc[0] < 1_000_000


def test_ack_processed_late_still_clocks_the_retransmission():
    # No SACK: three duplicate ACKs, and the stack (socket owned by the writer: backlog)
    # sends the NewReno fast retransmit 1.6 ms later. No timer can be due that soon after
    # the ACKs (the RTO runs from the head's send, RFC 6298 §5), so the ACK clocked it.
    tr, c, t, seq = start(sack=False)
    c.burst(t, seq, 6, size=MSS)
    for i in range(3):
        c.ack(t + RTT + 0.01 * i, seq)
    c.send(t + RTT + 1.62, seq, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["fast"]
    assert r["clock"].tolist() == ["ack"]


def test_capture_started_in_a_timeout_chain_then_slow_start():
    # The capture opens on the third RTO of a blackhole (its earlier copies unseen). The
    # capture cannot show that first segment was resent (the data above it may be frames it
    # dropped), so it is not reported; but it went out at the head with data outstanding
    # beyond, before any ACK: the replay starts in the Loss state that timeout entered
    # (classify._capture_start_timeout), and the ACK-clocked resends that follow are its
    # slow start (tcp_process_loss), not fast recovery.
    tr = Trace()
    c = tr.conn()
    c.send(0, 1, MSS)  # RTO (head), original long before the capture
    c.ack(10, 1 + MSS)
    c.send(10.02, 80_001, MSS)  # F-RTO: new data first (RFC 5682 step 2b)
    c.send(10.03, 80_001 + MSS, MSS)
    c.ack(20, 1 + MSS, sack=((80_001, 80_001 + MSS),))
    c.send(20.02, 1 + MSS, MSS)  # the loss was real: slow-start retransmits
    c.send(20.03, 1 + 2 * MSS, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["rto_recovery", "rto_recovery"]
    assert r["frame"].tolist()[0] == 6


def test_multi_segment_timer_burst_is_not_a_timeout():
    # tcp_retransmit_timer and tcp_send_loss_probe resend a single MSS: two segments
    # released together by a timer come from the RACK reorder timer's queue walk.
    tr, c, t, seq = start()
    c.burst(t, seq, 6, size=MSS)
    c.ack(t + RTT, seq, sack=((seq + 3 * MSS, seq + 6 * MSS),))
    c.send(t + RTT + 40, seq, MSS)  # late for the reorder timer, early for an RTO
    c.send(t + RTT + 40.01, seq + MSS, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["fast", "fast"]


def test_capture_start_head_send_with_data_held_beyond_starts_in_loss():
    # No ACK seen before the first segment: a capture that starts at a random moment far
    # more often opens in the silence before a timeout than in the microseconds between an
    # ACK and a fast retransmit. The receiver's next ACK shows that segment was at the head
    # while it held data beyond: the timeout's Loss state, whose slow start resends the
    # rest. The first segment itself is not reported (the capture cannot show it was
    # resent).
    tr = Trace()
    c = tr.conn()
    c.send(0, 1, MSS)
    c.ack(10, 1 + MSS, sack=((1 + 5 * MSS, 1 + 20 * MSS),))
    c.send(10.02, 1 + MSS, MSS)
    c.send(10.03, 1 + 2 * MSS, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["rto_recovery", "rto_recovery"]
    assert r["orig_frame"].tolist() == [-1, -1]


def test_capture_start_send_above_the_head_leaves_the_state_open():
    # The same opening, but the receiver's next ACK does not move past the first segment (a
    # hole below it remains): not the head, so not a timeout's resend. The next resend, of
    # the hole at the head right after that ACK, is fast recovery.
    tr = Trace()
    c = tr.conn()
    c.send(0, 1 + 2 * MSS, MSS)
    c.ack(10, 1, sack=((1 + 2 * MSS, 1 + 20 * MSS),))
    c.send(10.02, 1, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["fast"]


def test_capture_start_reno_slow_start_walk_is_loss():
    # No SACK, capture opened on the timeout's resend of the head: F-RTO sends new data
    # (RFC 5682 step 2b), a duplicate ACK proves the loss real, and each ACK then releases
    # several segments. NewReno recovery resends only the segment at snd_una, one MSS per
    # partial ACK (tcp_newreno_mark_lost), so these are the Loss state's slow start, which
    # a Reno sender keeps until snd_una passes high_seq.
    tr = Trace()
    c = tr.conn(sack=False)
    c.send(0, 1, MSS)
    c.ack(10, 1 + MSS)
    c.send(10.02, 1 + 40 * MSS, MSS)
    c.ack(20, 1 + MSS)
    c.send(20.02, 1 + MSS, MSS)
    c.send(20.03, 1 + 2 * MSS, MSS)
    c.ack(30, 1 + 3 * MSS)
    c.send(30.02, 1 + 3 * MSS, MSS)
    c.send(30.03, 1 + 4 * MSS, MSS)
    c.send(30.04, 1 + 5 * MSS, MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["rto_recovery"] * 5


def test_mid_connection_capture_assumes_sack_until_refuted():
    # No handshake and no SACK block seen: SACK is still assumed (every current stack
    # offers it), so the timer-driven tail resend is a probe.
    tr = Trace()
    c = tr.conn()
    for i in range(5):
        c.send(20 * i, 1 + 100 * i, 100)
        c.ack(20 * i + RTT, 101 + 100 * i)
    c.send(100, 501, 100)
    c.send(100.1, 601, 100)
    c.send(122.1, 601, 100)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp"]


def test_frto_spurious_timeout_undone_without_timestamps():
    # A delay spike, no timestamps (so no Eifel): after the probe and the RTO, the late ACK
    # covers data that was never retransmitted. F-RTO (RFC 5682 §3.1 step 3.b,
    # FLAG_ORIG_SACK_ACKED) calls the timeout spurious and leaves Loss; a hole later in
    # that window is then repaired by fast recovery, not by slow-start retransmits.
    tr, c, t, seq = start(ts=False)
    t_last, nxt = c.burst(t, seq, 8, size=MSS)
    segs = [seq + i * MSS for i in range(8)]
    c.send(t_last + 22, segs[7], MSS)  # TLP
    t1 = t_last + 232
    c.send(t1, segs[0], MSS)  # RTO
    c.ack(t1 + 5, segs[3])  # the delayed ACK: segs 1-2 never resent
    c.ack(t1 + 6, segs[3], sack=((segs[4], nxt),))
    c.send(t1 + 6.02, segs[3], MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp", "rto", "fast"]


def test_after_undo_a_resent_head_keeps_disorder_so_the_timer_is_an_rto():
    # A spurious RTO is undone by the D-SACK of its retransmission, but the segment now at
    # snd_una is the one the probe resent: tcp_try_keep_open leaves the socket in Disorder
    # (tcp_any_retrans_done), where no probe is scheduled. Its next timeout is an RTO.
    tr, c, t, seq = start()
    c.send(t, seq, MSS)
    c.send(t + 0.01, seq + MSS, 400)
    c.send(t + 22, seq + MSS, 400)  # TLP of the tail
    c.send(t + 250, seq, MSS)  # RTO of the head (spurious)
    c.ack(t + 260, seq + MSS, sack=((seq, seq + MSS),))  # D-SACK: it had arrived
    c.send(t + 700, seq + MSS, 400)  # head and tail now: RTO
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["tlp", "rto", "rto"]
    assert r["spurious_by"].tolist()[1] == "dsack"


def test_recovery_ends_and_reopens_at_once_while_a_resent_segment_is_missing():
    # Recovery for seg0; new data seg10-13 goes out during it, seg10 and seg13 are lost;
    # RACK resends seg10 within the episode. The ACK that takes snd_una to high_seq
    # (seg10) ends the episode (tcp_fastretrans_alert step D), but seg10 is marked lost
    # and still missing: lost_out, so step E opens Recovery again at once, high_seq = snd_nxt
    # (tcp_time_to_recover, tcp_enter_recovery). The next ACK, without SACK blocks, is a
    # partial ACK in Recovery, and seg13 goes at once: a fast retransmit (RACK), not a
    # probe. The sweep's loss10_rtt20 showed it (the kernel said fast, the replay TLP).
    tr, c, t, seq = start()
    s = [seq + i * MSS for i in range(15)]
    c.burst(t, seq, 10, size=MSS)  # seg0..seg9; seg0 lost
    ta = t + RTT
    for j in range(3):
        c.ack(ta + 0.01 * j, s[0], sack=((s[1], s[2 + j]),))
    c.send(ta + 0.03, s[0], MSS)  # fast retransmit: Recovery, high_seq = s[10]
    for i in range(10, 14):
        c.send(ta + 0.05 + 0.01 * (i - 10), s[i], MSS)  # seg10 and seg13 lost
    tb = ta + 0.05 + RTT
    c.ack(tb, s[0], sack=((s[1], s[10]), (s[11], s[12])))
    c.ack(tb + 0.01, s[0], sack=((s[1], s[10]), (s[11], s[13])))
    c.send(tb + 5, s[10], MSS)  # RACK resends seg10, in the episode
    c.ack(tb + 6, s[10], sack=((s[11], s[13]),))  # snd_una reaches high_seq
    c.ack(tb + 5 + RTT, s[13])  # seg10 arrived; no SACK block left
    c.send(tb + 5 + RTT + 0.02, s[13], MSS)
    r = run(tr)
    assert r["kind_pcap"].tolist() == ["fast", "fast", "fast"]
    assert "in Recovery again since an ACK" in r["cause_text"].iloc[2]


def test_row_order_does_not_matter():
    import numpy as np

    tr, c, t, seq = start()
    t_last, nxt = c.burst(t, seq, 5, size=MSS)
    c.send(t_last + 22, nxt - MSS, MSS)  # TLP
    c.send(t_last + 232, seq, MSS)  # RTO
    c.ack(t_last + 242, seq + MSS)
    c.send(t_last + 242.02, seq + MSS, MSS)
    pk = tr.packets()
    perm = np.random.default_rng(7).permutation(len(pk["frame"]))
    shuffled = {k: v[perm] for k, v in pk.items()}
    r = classified(shuffled)
    assert (
        r.sort_values("frame")["kind_pcap"].tolist()
        == run(tr)["kind_pcap"].tolist()
        == ["tlp", "rto", "rto_recovery"]
    )
