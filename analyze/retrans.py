"""Find retransmitted segments in bulk.

A segment that occupies sequence space (payload, SYN or FIN) and starts below the highest
sequence number already known to have been sent in its flow is a retransmission. "Known
to have been sent" is the running maximum of the flow's own segment ends *and* of what the
receiver has acknowledged or SACKed (it cannot acknowledge bytes never sent): so when a
capture starts late, the first segments seen may already be recognised as retransmissions
whose original was never captured (``orig_frame = -1``).

One row per retransmitted wire segment. A retransmission may cover several original
segments or part of one (TSO/GSO re-segmentation); ``orig_frame`` is the first transmission
of its first byte and ``tx_index`` counts the transmissions of that byte (2 = first
retransmission). Keep-alives and zero-window probes (a byte at or just below snd_nxt that
carries no data the receiver lacks) are kept but flagged in ``probe``: they are not
retransmissions of lost data (RFC 9293 §3.8.4, §3.8.6.1).
"""

from __future__ import annotations

import numpy as np

from retranscope.analyze.flows import sequence_space
from retranscope.analyze.table import (
    NO_VALUE,
    Table,
    by_group,
    capture_order,
    group_numbers,
    group_rank,
    group_sort,
    nullable,
    pair_search,
    seg_cummax,
    seg_cummax_before,
    take,
)
from retranscope.schemas.packets import TCP_FIN, TCP_RST, TCP_SYN

RETRANS_COLUMNS = (
    "pkt", "frame", "ts_ns", "flow_id", "seq", "end_seq", "seq_abs", "end_abs",
    "payload_len", "flags", "snd_nxt_abs", "orig_frame", "orig_ts_ns", "tx_index",
    "since_original_ns", "probe",
)

_NONE = NO_VALUE  # "nothing sent yet": the floor of seg_cummax


def conn_order(packets: dict[str, np.ndarray], flow_id: np.ndarray, flows) -> np.ndarray:
    """Permutation putting packets in (connection, capture order)."""
    conn = flows["conn_id"][flow_id]
    cap = capture_order(packets["frame"])
    if cap is None:
        return group_sort(conn)
    return cap[group_sort(conn[cap])]


def sender_context(packets: dict[str, np.ndarray], flow_id: np.ndarray, flows,
                   space: dict[str, np.ndarray],
                   order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per packet, what its sender knew just before sending it (all vectorised).

    ``sent_hi``: highest sequence known sent in the packet's flow (own segments, plus the
    reverse flow's ACK/SACK). ``snd_nxt``: the highest own segment end only. ``last_rev``:
    index of the last packet of the reverse direction before it (-1 if none), for the
    packets that can be probes (at most one byte of payload); -1 for the others.
    ``order``: conn_order(packets, flow_id, flows), when the caller has it.
    """
    n = len(flow_id)
    if order is None:
        order = conn_order(packets, flow_id, flows)
    # Everything below is in connection order; arrays are filled in place where they can
    # be (each new 1.3M-row array costs its page faults).
    f_o = flow_id[order]
    gno = group_numbers(flows["conn_id"][f_o])
    d1 = flows["dir"][f_o] != 0          # the packet is of direction 1
    del f_o
    pos_of = np.empty(n, dtype=np.int64)      # position of each packet in that order
    pos_of[order] = np.arange(n)
    not_rst = (packets["flags"] & TCP_RST) == 0
    rst_o = ~not_rst[order]
    own_end = space["end_abs"][order]
    own_end[rst_o] = _NONE
    # What the peer acknowledged or SACKed: evidence for the reverse flow.
    fb = space["ack_abs"][order]
    np.copyto(fb, _NONE, where=~space["ack_flag"][order] | rst_o)
    rows = space["sack_rows"]
    if len(rows):
        at = pos_of[rows]
        fb[at] = np.where(not_rst[rows], np.maximum(fb[at], _sack_tops(packets, space)), _NONE)

    # Evidence for the flow of each direction: its own segment ends and the other
    # direction's acknowledgements (which are in this flow's sequence space).
    sent_hi = np.empty(n, dtype=np.int64)
    snd_nxt = np.empty(n, dtype=np.int64)
    for out, (v0, v1) in ((sent_hi, ((fb, own_end), (own_end, fb))),
                          (snd_nxt, ((_NONE, own_end), (own_end, _NONE)))):
        m0, m1 = seg_cummax_before([v0, v1], gno, where=d1)
        np.copyto(m0, m1, where=d1)
        out[order] = m0
        del m0, m1

    # Last packet of the other direction, in the same connection: binary searches among
    # the positions (in connection order) of each direction's packets.
    last_rev = np.full(n, -1, dtype=np.int64)
    rows = np.flatnonzero(packets["payload_len"] <= 1)
    if len(rows):
        p = pos_of[rows]
        mine = d1[p]
        lr = np.empty(len(rows), dtype=np.int64)
        for side, other in ((True, np.flatnonzero(~d1)), (False, np.flatnonzero(d1))):
            q = mine == side
            k = np.searchsorted(other, p[q]) - 1
            lr[q] = np.where(k >= 0, other[np.clip(k, 0, None)], -1)
        first_of_conn = np.flatnonzero(np.r_[True, gno[1:] != gno[:-1]])
        same = (lr >= 0) & (lr >= first_of_conn[gno[p]])
        last_rev[rows] = np.where(same, order[np.clip(lr, 0, None)], -1)
    return {"sent_hi": sent_hi, "snd_nxt": snd_nxt, "last_rev": last_rev}


def _sack_tops(packets: dict[str, np.ndarray], space: dict[str, np.ndarray]) -> np.ndarray:
    """Per row of ``space["sack_rows"]``, the highest right edge among its SACK blocks."""
    sn = packets["sack_n"][space["sack_rows"]]
    top = space["sack_r_abs"][:, 0].copy()
    for b in range(1, 4):
        top = np.where(sn > b, np.maximum(top, space["sack_r_abs"][:, b]), top)
    return top


def retransmission_table(packets: dict[str, np.ndarray], flow_id: np.ndarray, flows,
                         space: dict[str, np.ndarray] | None = None,
                         context: dict[str, np.ndarray] | None = None) -> Table:
    """One row per retransmitted wire segment (and per keep-alive / window probe), in
    frame order (RETRANS_COLUMNS; the optional columns are Nullable)."""
    if space is None:
        space = sequence_space(packets, flow_id, flows)
    if context is None:
        context = sender_context(packets, flow_id, flows, space)
    flags = packets["flags"].astype(np.int64)
    seq_abs, end_abs, seg_len = space["seq_abs"], space["end_abs"], space["seg_len"]
    sent_hi, last_rev = context["sent_hi"], context["last_rev"]
    is_rst = (flags & TCP_RST) != 0
    ctl = (flags & (TCP_SYN | TCP_FIN | TCP_RST)) != 0
    payload = packets["payload_len"].astype(np.int64)

    is_rtx = (seg_len > 0) & ~is_rst & (seq_abs < sent_hi)
    is_rtx |= _before_first_gap(packets, flow_id, flows, seq_abs, seg_len, sent_hi, is_rtx,
                                is_rst)
    is_rtx |= _before_early_evidence(packets, flow_id, flows, space, seg_len, is_rst)

    # Keep-alive (RFC 9293 §3.8.4; Linux tcp_xmit_probe_skb): seq = snd_una - 1 with 0 or 1
    # byte, sent when everything is acknowledged. Zero-window probe (§3.8.6.1): 0/1 byte
    # while the receiver advertises a zero window.
    lr = np.clip(last_rev, 0, None)
    has_rev = last_rev >= 0
    rev_ack = np.where(has_rev & space["ack_flag"][lr], space["ack_abs"][lr], _NONE)
    rev_win0 = has_rev & (packets["win"][lr] == 0)
    small = (payload <= 1) & ~ctl
    ka_form = small & (seq_abs == rev_ack - 1)
    keepalive = ka_form & ~rev_win0
    zwp = rev_win0 & (ka_form | ((payload == 1) & is_rtx & (seq_abs == rev_ack)))
    probe_mask = keepalive | zwp
    rows = np.flatnonzero(is_rtx | probe_mask)

    fid = flow_id[rows]
    # Originals: first transmissions, in increasing sequence order within a flow.
    orig = np.flatnonzero((seg_len > 0) & ~is_rst & ~is_rtx)
    # In capture order a flow's first transmissions have increasing sequence numbers
    # (each starts at or above everything sent before it), so grouping by flow sorts them.
    orig = by_group(orig, flow_id[orig])
    orig_frame = np.full(len(rows), -1, dtype=np.int64)
    orig_ts = np.full(len(rows), _NONE, dtype=np.int64)
    if len(orig) and len(rows):
        o_flow = flow_id[orig]
        pos = pair_search(o_flow, seq_abs[orig], fid, seq_abs[rows], side="right") - 1
        ok = pos >= 0
        pc = np.clip(pos, 0, None)
        cand = orig[pc]
        ok &= (o_flow[pc] == fid) & (seq_abs[cand] <= seq_abs[rows]) & \
              (end_abs[cand] > seq_abs[rows]) & (packets["frame"][cand] < packets["frame"][rows])
        orig_frame[ok] = packets["frame"][cand[ok]]
        orig_ts[ok] = packets["ts_ns"][cand[ok]]

    tx_index = 2 + _earlier_covering(fid, seq_abs[rows], end_abs[rows],
                                     packets["frame"][rows])

    probe = np.full(len(rows), None, dtype=object)
    probe[keepalive[rows]] = "keepalive"
    probe[zwp[rows]] = "zero_window"
    ts = packets["ts_ns"][rows]
    has_orig = orig_frame >= 0
    snd_nxt = context["snd_nxt"][rows]
    table = {
        "pkt": rows.astype(np.int64),
        "frame": packets["frame"][rows],
        "ts_ns": ts,
        "flow_id": fid,
        "seq": packets["seq"][rows],
        "end_seq": ((packets["seq"][rows].astype(np.int64) + seg_len[rows]) & 0xFFFFFFFF
                    ).astype(np.uint32),
        "seq_abs": seq_abs[rows],
        "end_abs": end_abs[rows],
        "payload_len": packets["payload_len"][rows],
        "flags": packets["flags"][rows],
        "snd_nxt_abs": nullable(snd_nxt, snd_nxt > _NONE),
        "orig_frame": orig_frame,
        "orig_ts_ns": nullable(orig_ts, has_orig),
        "tx_index": tx_index.astype(np.int64),
        "since_original_ns": nullable(ts - orig_ts, has_orig),
        "probe": probe,
    }
    fr = table["frame"]
    if len(fr) > 1 and not bool(np.all(fr[1:] >= fr[:-1])):
        table = take(table, np.argsort(fr, kind="stable"))
    return table


def _before_first_gap(packets, flow_id, flows, seq_abs, seg_len, sent_hi, is_rtx,
                      is_rst) -> np.ndarray:
    """Capture started mid-connection: segments sent before the first gap in new data.

    New data always leaves at snd_nxt, contiguously. When a flow's first transmission
    after the capture began starts beyond everything seen so far, the bytes in between
    were sent before the capture began, so the segments seen before it (below it) were
    sent while snd_nxt was already past them: they were retransmissions (an RTO or probe
    caught mid-chain, say). Only for flows whose SYN was not captured.
    """
    out = np.zeros(len(flow_id), dtype=bool)
    late = ~flows["syn_seen"].astype(bool)
    data = np.flatnonzero((seg_len > 0) & ~is_rst & late[flow_id])
    if len(data) < 2:
        return out
    data = by_group(data, flow_id[data])
    f = flow_id[data]
    first_of_flow = np.r_[True, f[1:] != f[:-1]]
    gap = ~is_rtx[data] & (seq_abs[data] > sent_hi[data]) & ~first_of_flow
    gaps = data[gap]
    if not len(gaps):
        return out
    gf = flow_id[gaps]
    keep = np.r_[True, gf[1:] != gf[:-1]]           # the first gap of each flow
    n_flows = len(flows["flow_id"])
    first_gap_seq = np.full(n_flows, _NONE, dtype=np.int64)
    first_gap_frame = np.full(n_flows, -1, dtype=np.int64)
    first_gap_seq[gf[keep]] = seq_abs[gaps[keep]]
    first_gap_frame[gf[keep]] = packets["frame"][gaps[keep]]
    fr = packets["frame"][data]
    hit = (fr < first_gap_frame[f]) & (seq_abs[data] < first_gap_seq[f])
    out[data[hit]] = True
    return out


#: How many of a late flow's first reverse packets may show data sent before the capture.
EARLY_EVIDENCE_ACKS = 4


def _before_early_evidence(packets, flow_id, flows, space, seg_len, is_rst) -> np.ndarray:
    """Capture started mid-connection: segments resent before the receiver's first ACKs.

    When one of the first ACKs of a flow whose SYN was not captured acknowledges or SACKs
    bytes beyond everything the capture has shown sent so far, those bytes left before the
    capture began; new data leaves in order, so every segment seen before that ACK lies
    below the sender's snd_nxt at the capture start: it was resent (typically the RTO that
    ends a silence the capture started in). Only the first EARLY_EVIDENCE_ACKS reverse
    packets count, so a frame the capture itself dropped later on cannot turn a flow's
    earlier segments into retransmissions.
    """
    n = len(flow_id)
    out = np.zeros(n, dtype=bool)
    late = ~flows["syn_seen"].astype(bool)
    if not late.any():
        return out
    rev = flows["rev_flow_id"]
    frame = packets["frame"]
    # Evidence per reverse packet, in the sequence space of the flow it acknowledges.
    fb = np.where(space["ack_flag"] & ~is_rst, space["ack_abs"], _NONE)
    rows = space["sack_rows"]
    if len(rows):
        fb[rows] = np.where(is_rst[rows], _NONE, np.maximum(fb[rows], _sack_tops(packets, space)))
    acked = rev[flow_id]                       # the flow each packet's ACK speaks for
    cand = np.flatnonzero((fb > _NONE) & (acked >= 0))
    cand = cand[late[acked[cand]]]
    if not len(cand):
        return out
    cand = by_group(cand, acked[cand])         # per acknowledged flow, in capture order
    g = acked[cand]
    rank = group_rank(g)
    cand, g = cand[rank < EARLY_EVIDENCE_ACKS], g[rank < EARLY_EVIDENCE_ACKS]
    data = np.flatnonzero((seg_len > 0) & ~is_rst & late[flow_id])
    if not len(data):
        return out
    data = by_group(data, flow_id[data])       # per flow, in capture order
    df = flow_id[data]
    end = space["end_abs"][data]
    # Highest end sent by the flow before each candidate ACK: a prefix maximum per flow.
    run_max = seg_cummax(end, group_numbers(df))
    pos = pair_search(df, frame[data], g, frame[cand], side="left") - 1
    pc = np.clip(pos, 0, None)
    has = (pos >= 0) & (df[pc] == g)
    own_hi = np.where(has, run_max[pc], _NONE)
    beyond = fb[cand] > own_hi
    if not beyond.any():
        return out
    n_flows = len(rev)
    upto = np.full(n_flows, -1, dtype=np.int64)
    np.maximum.at(upto, g[beyond], frame[cand[beyond]])
    out[data[frame[data] < upto[df]]] = True
    return out


def _earlier_covering(fid, seq, end, frame) -> np.ndarray:
    """For each interval, how many earlier intervals of its flow contain its first byte.

    Pairs are only formed inside a window of one maximum segment length per flow, so the
    work stays proportional to the retransmissions that actually overlap.
    """
    m = len(fid)
    out = np.zeros(m, dtype=np.int64)
    if m == 0:
        return out
    o = np.lexsort((seq, fid))
    sf, ss, se, sfr = fid[o], seq[o], end[o], frame[o]
    span = se - ss
    top = np.zeros(int(sf.max()) + 1, dtype=np.int64)
    np.maximum.at(top, sf, span)
    maxlen = top[sf]
    lo = pair_search(sf, ss, sf, ss - maxlen, side="left")
    hi = pair_search(sf, ss, sf, ss, side="right")
    cnt = hi - lo
    total = int(cnt.sum())
    if total == 0:
        return out
    qi = np.repeat(np.arange(m), cnt)
    start = np.repeat(lo - np.concatenate(([0], np.cumsum(cnt)[:-1])), cnt)
    cj = np.arange(total) + start
    hit = (cj != qi) & (ss[cj] <= ss[qi]) & (se[cj] > ss[qi]) & (sfr[cj] < sfr[qi])
    counts = np.bincount(qi[hit], minlength=m)
    out[o] = counts
    return out
