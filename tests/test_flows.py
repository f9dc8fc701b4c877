"""Flow assignment and the unwrapped sequence space."""

from __future__ import annotations

import numpy as np
from packet_builder import Trace

from retranscope.analyze.flows import sack_blocks, sequence_space
from retranscope.analyze.pipeline import classify_capture
from retranscope.schemas.packets import empty_packets


def _flows(tr: Trace):
    """Packets, flow ids and flows as production assigns them (pipeline.classify_capture)."""
    pk = tr.packets()
    fid, flows, _ = classify_capture(pk)
    return pk, fid, flows


def test_two_directions_reverse_ids_and_handshake_options():
    tr = Trace()
    c = tr.conn(mss=1400, wscale=9)
    t = c.handshake(0, rtt_ms=5)
    c.send(t, 1, 100)
    c.ack(t + 5, 101)
    pk, fid, flows = _flows(tr)
    assert fid.tolist() == [0, 1, 0, 0, 1]
    assert flows["rev_flow_id"].tolist() == [1, 0]
    assert flows["saddr"].tolist() == ["10.0.0.1", "10.0.0.2"]
    assert flows["sport"].tolist() == [40000, 5001]
    assert flows["mss"].tolist() == [1400, 1400]
    assert flows["wscale"].tolist() == [9, 9]
    assert flows["sack_ok"].all() and flows["ts_ok"].all() and flows["handshake_seen"].all()
    assert flows["isn"].tolist() == [1_000_000, 3_000_000_000]
    assert flows["synack_seen"].tolist() == [False, True]


def test_sack_needs_both_syns():
    tr = Trace()
    c = tr.conn()
    c.syn(0)
    c.sack = False  # the server does not offer SACK-permitted
    c.synack(1)
    _, _, flows = _flows(tr)
    assert not flows["sack_ok"].any()
    assert flows["sack_perm"].tolist() == [True, False]


def test_sequence_unwraps_across_32_bit_wrap():
    tr = Trace()
    c = tr.conn(isn_c=0xFFFFFFFF - 2000)
    t = c.handshake(0, 1)
    for i in range(4):  # crosses 2**32 during the second segment
        c.send(t + i, 1 + 1000 * i, 1000)
    c.ack(t + 10, 4001)
    pk, fid, flows = _flows(tr)
    sp = sequence_space(pk, fid, flows)
    data = np.flatnonzero((fid == 0) & (pk["payload_len"] > 0))
    assert sp["seq_abs"][data].tolist() == [1, 1001, 2001, 3001]
    assert sp["end_abs"][data].tolist() == [1001, 2001, 3001, 4001]
    assert pk["seq"][data][2] < pk["seq"][data][1]  # the raw numbers did wrap
    last_ack = np.flatnonzero(fid == 1)[-1]
    assert sp["ack_abs"][last_ack] == 4001


def test_reused_four_tuple_after_close_is_a_new_connection():
    tr = Trace()
    c1 = tr.conn(isn_c=1000, isn_s=5000)
    t = c1.handshake(0, 1)
    c1.send(t, 1, 10)
    c1.fin(t + 1, 11)
    c1.fin(t + 2, 1, by="s", ack=12)
    c1.ack(t + 3, 2, by="c", seq=12)
    c2 = tr.conn(isn_c=777_777, isn_s=99)  # same addresses and ports, new ISNs
    t2 = c2.handshake(100, 1)
    c2.send(t2, 1, 10)
    pk, fid, flows = _flows(tr)
    assert len(flows["flow_id"]) == 4
    assert set(flows["conn_id"].tolist()) == {0, 1}
    assert flows["isn"].tolist() == [1000, 5000, 777_777, 99]
    sp = sequence_space(pk, fid, flows)
    last = len(fid) - 1
    assert fid[last] == 2 and sp["seq_abs"][last] == 1


def test_retransmitted_syn_stays_in_its_connection():
    tr = Trace()
    c = tr.conn()
    c.syn(0)
    c.syn(1000)  # same ISN: a retransmission, not a new connection
    c.synack(1001)
    _, fid, flows = _flows(tr)
    assert len(flows["flow_id"]) == 2 and fid.tolist() == [0, 0, 1]


def test_capture_started_mid_connection():
    tr = Trace()
    c = tr.conn()
    c.send(0, 5001, 1000)  # no handshake seen
    c.ack(1, 6001, sack=((7001, 8001),))
    pk, fid, flows = _flows(tr)
    assert not flows["handshake_seen"].any()
    assert flows["isn"].tolist() == [-1, -1]
    assert flows["sack_ok"].all()  # a SACK block proves SACK was negotiated
    sp = sequence_space(pk, fid, flows)
    assert sp["seq_abs"][0] == 0
    assert sp["ack_abs"][1] == 1000
    L, R = sack_blocks(sp, np.array([1]))
    assert L[0, 0] == 2000 and R[0, 0] == 3000


def test_ipv6_flows():
    tr = Trace()
    c = tr.conn(client="fd00::1", server="fd00::2")
    t = c.handshake(0, 1)
    c.send(t, 1, 100)
    pk, fid, flows = _flows(tr)
    assert flows["family"].tolist() == [6, 6]
    assert flows["saddr"].tolist() == ["fd00::1", "fd00::2"]
    assert flows["daddr"].tolist() == ["fd00::2", "fd00::1"]


def test_interleaved_connections_numbered_by_first_appearance():
    tr = Trace()
    a = tr.conn(cport=41000)
    b = tr.conn(cport=42000)
    b.syn(0)
    a.syn(1)
    b.synack(2)
    a.synack(3)
    pk, fid, flows = _flows(tr)
    assert fid.tolist() == [0, 1, 2, 3]
    assert flows["sport"].tolist() == [42000, 41000, 5001, 5001]
    assert flows["rev_flow_id"].tolist() == [2, 3, 0, 1]


def test_empty_capture():
    fid, flows, classified = classify_capture(empty_packets())
    assert len(fid) == 0 and len(flows["flow_id"]) == 0 and len(classified["pkt"]) == 0


def test_sack_refuted_by_plain_duplicate_acks_mid_connection():
    tr = Trace()
    c = tr.conn()
    for i in range(4):
        c.send(i * 0.01, 1 + 1000 * i, 1000)
    for i in range(4):  # an ACK, then three duplicates without SACK blocks: no SACK here
        c.ack(10 + i, 1001)
    _, _, flows = _flows(tr)
    assert not flows["sack_ok"].any()
