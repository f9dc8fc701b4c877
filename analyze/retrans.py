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

from retranscope.analyze.flows import AT_SENDER_TRIP_NS, sequence_space
from retranscope.analyze.table import (
    NO_VALUE,
    GroupedSearch,
    Table,
    by_group,
    by_value_in_group,
    capture_order,
    gather,
    group_numbers,
    group_sort,
    group_starts,
    nullable,
    pair_search,
    seg_cummax,
    sided_cummax_before,
    take,
)
from retranscope.schemas.packets import TCP_FIN, TCP_RST, TCP_SYN

RETRANS_COLUMNS = (
    "pkt",
    "frame",
    "ts_ns",
    "flow_id",
    "seq",
    "end_seq",
    "seq_abs",
    "end_abs",
    "payload_len",
    "flags",
    "snd_nxt_abs",
    "orig_frame",
    "orig_ts_ns",
    "tx_index",
    "since_original_ns",
    "probe",
    "out_of_order",
    "duplicate",
)

_NONE = NO_VALUE  # "nothing sent yet": the floor of seg_cummax


def conn_order(packets: dict[str, np.ndarray], flow_id: np.ndarray, flows) -> np.ndarray:
    """Permutation putting packets in (connection, capture order)."""
    conn = flows["conn_id"][flow_id]
    cap = capture_order(packets["frame"])
    if cap is None:
        return group_sort(conn)
    return cap[group_sort(conn[cap])]


def sender_context(
    packets: dict[str, np.ndarray],
    flow_id: np.ndarray,
    flows,
    space: dict[str, np.ndarray],
    order: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per packet, what its sender knew just before sending it (all vectorised), kept only
    where it tells more than the packet itself (read it with sparse_at).

    ``sent_hi``: highest sequence known sent in the packet's flow (own segments, plus the
    reverse flow's ACK/SACK). ``snd_nxt``: the highest own segment end only. Both are the
    packet's own ``seq_abs`` on most rows (a segment continuing its flow), so they are given
    at ``rows`` only (increasing), the rows where either differs: there, and seq_abs
    elsewhere.
    ``last_rev``, at ``rev_rows`` (increasing): index of the last packet of the reverse
    direction before it, for the packets that can be probes (at most one byte of payload)
    and those that start below data known sent; -1 (absent) for the others and where there
    is none.
    ``order``: conn_order(packets, flow_id, flows), when the caller has it.
    """
    if order is None:
        order = conn_order(packets, flow_id, flows)
    # Everything below is in connection order.
    f_o = flow_id[order]
    starts = group_starts(flows["conn_id"][f_o])  # the row begins a connection
    d1 = flows["dir"][f_o] != 0  # the packet is of direction 1
    del f_o
    is_rst = (packets["flags"] & TCP_RST) != 0
    own_end = space["end_abs"][order]
    own_end[is_rst[order]] = _NONE
    # What the peer acknowledged or SACKed: evidence for the reverse flow (built in capture
    # order, where the SACK rows are).
    fb = space["ack_abs"].copy()
    np.copyto(fb, _NONE, where=~space["ack_flag"] | is_rst)
    rows = space["sack_rows"]
    if len(rows):
        fb[rows] = np.where(is_rst[rows], _NONE, np.maximum(fb[rows], _sack_tops(packets, space)))
    fb = fb[order]

    # Evidence for the flow of each direction: its own segment ends and the other
    # direction's acknowledgements (which are in this flow's sequence space).
    sent_hi = sided_cummax_before(own_end, fb, starts, d1)
    del fb
    snd_nxt = sided_cummax_before(own_end, _NONE, starts, d1)
    del own_end
    seq = space["seq_abs"][order]
    at = np.flatnonzero((sent_hi != seq) | (snd_nxt != seq))
    # (the rows that can be probes, and those that start below data known sent: the
    # cumulative ACK they follow says whether the receiver already had them)
    want = (packets["payload_len"] <= 1)[order]
    want[at[(space["seg_len"][order[at]] > 0) & (seq[at] < sent_hi[at])]] = True
    del seq
    by_row = np.argsort(order[at])
    context = {
        "rows": order[at][by_row],
        "sent_hi": sent_hi[at][by_row],
        "snd_nxt": snd_nxt[at][by_row],
    }
    del sent_hi, snd_nxt
    context["rev_rows"], context["last_rev"] = _last_reverse(order, starts, d1, want)
    return context


def _last_reverse(order, starts, d1, want) -> tuple[np.ndarray, np.ndarray]:
    """For the packets at the connection-order positions where ``want``, the last packet
    of the other direction before it in the same connection, those that have one: (their
    rows, its rows), by row. Binary searches among the positions of each direction's
    packets."""
    p = np.flatnonzero(want)
    mine = d1[p]
    lr = np.empty(len(p), dtype=np.int64)
    for side in (True, False):
        other = np.flatnonzero(d1 != side)
        q = mine == side
        k = np.searchsorted(other, p[q]) - 1
        lr[q] = gather(other, k, k >= 0, -1)  # a one-way capture: no other direction
        del other
    first_of_conn = np.flatnonzero(starts)
    conn_start = first_of_conn[np.searchsorted(first_of_conn, p, side="right") - 1]
    same = (lr >= 0) & (lr >= conn_start)
    rows, last = order[p[same]], order[lr[same]]
    by_row = np.argsort(rows)
    return rows[by_row], last[by_row]


def sparse_at(rows: np.ndarray, values: np.ndarray, at: np.ndarray, fill) -> np.ndarray:
    """``values`` (given at ``rows``, increasing) at rows ``at``; ``fill`` (one value or one
    per row of ``at``) where not given."""
    i = np.searchsorted(rows, at)
    hit = i < len(rows)
    hit[hit] = rows[i[hit]] == at[hit]
    return np.where(hit, gather(values, i, hit, 0), fill)


def _sack_tops(packets: dict[str, np.ndarray], space: dict[str, np.ndarray]) -> np.ndarray:
    """Per row of ``space["sack_rows"]``, the highest right edge among its SACK blocks."""
    sn = packets["sack_n"][space["sack_rows"]]
    top = space["sack_r_abs"][:, 0].copy()
    for b in range(1, 4):
        top = np.where(sn > b, np.maximum(top, space["sack_r_abs"][:, b]), top)
    return top


def retransmission_table(
    packets: dict[str, np.ndarray],
    flow_id: np.ndarray,
    flows,
    space: dict[str, np.ndarray] | None = None,
    context: dict[str, np.ndarray] | None = None,
    carried: int = 0,
) -> Table:
    """One row per retransmitted wire segment, per keep-alive / window probe, per
    out-of-order original and per packet the capture holds twice (``duplicate``), in frame
    order (RETRANS_COLUMNS; the optional columns are Nullable). Only the rows with none of
    ``probe``, ``out_of_order``, ``duplicate`` are retransmissions. ``carried``: as
    resent_or_reordered's."""
    space = sequence_space(packets, flow_id, flows) if space is None else space
    context = sender_context(packets, flow_id, flows, space) if context is None else context
    flags = packets["flags"]
    seq_abs, end_abs, seg_len = space["seq_abs"], space["end_abs"], space["seg_len"]
    is_rst = (flags & TCP_RST) != 0
    ctl = (flags & (TCP_SYN | TCP_FIN | TCP_RST)) != 0
    payload = packets["payload_len"]

    # The segments that start below data known sent (sent_hi is given where it differs
    # from seq_abs).
    at, sent_hi = context["rows"], context["sent_hi"]
    under = (seg_len[at] > 0) & ~is_rst[at] & (seq_abs[at] < sent_hi)
    at, sent_hi = at[under], sent_hi[under]
    # One that runs past all of that data carries new data: no retransmission does
    # (tcp_retransmit_skb resends within the skbs already sent, tcp_retrans_try_collapse
    # merges only those), so it is the sender's next new data, re-cut (a stack
    # repacketizing, or a capture merging overlaps).
    below = np.zeros(len(flow_id), dtype=bool)
    below[at[end_abs[at] <= sent_hi]] = True
    # Except where it starts exactly where an earlier segment of the flow started: an skb
    # resent from its own start (tcp_retransmit_skb), collapsed with the skbs after it
    # (tcp_retrans_try_collapse), whose later bytes the capture never saw (lost before a
    # receiver's or mid-path capture point).
    past = at[end_abs[at] > sent_hi]
    if len(past):
        like = _starts_like_earlier(flow_id, seq_abs, packets["frame"], seg_len > 0)
        below[past[like[past]]] = True
    # The segments sent in order, by flow then sequence (capture order but for a re-cut
    # segment, begun below the end of the one before: the searches need sequence order).
    in_order = np.flatnonzero((seg_len > 0) & ~is_rst & ~below)
    in_order = by_group(in_order, flow_id[in_order])
    in_order = by_value_in_group(in_order, flow_id, seq_abs)
    is_rtx, reordered, duplicate = resent_or_reordered(
        packets, flow_id, flows, space, context, below, in_order, carried
    )

    # Keep-alive (RFC 9293 §3.8.4; Linux tcp_xmit_probe_skb): seq = snd_una - 1 with 0 or 1
    # byte, sent when everything is acknowledged. Zero-window probe (§3.8.6.1): 0/1 byte
    # while the receiver advertises a zero window.
    # Only the packets with a last packet of the other direction (context["rev_rows"]) can be
    # either (without one, the ACK it answers is unknown).
    rr, lr = context["rev_rows"], context["last_rev"]
    rev_ack = np.where(space["ack_flag"][lr], space["ack_abs"][lr], _NONE)
    rev_win0 = packets["win"][lr] == 0
    r_seq, r_payload = seq_abs[rr], payload[rr]
    ka_form = (r_payload <= 1) & ~ctl[rr] & (r_seq == rev_ack - 1)
    keepalive = np.zeros(len(flow_id), dtype=bool)
    keepalive[rr[ka_form & ~rev_win0]] = True
    zwp = np.zeros(len(flow_id), dtype=bool)
    zwp[rr[rev_win0 & (ka_form | ((r_payload == 1) & is_rtx[rr] & (r_seq == rev_ack)))]] = True
    probe_mask = keepalive | zwp
    reordered &= ~probe_mask
    rows = np.flatnonzero(is_rtx | probe_mask | reordered | duplicate)

    fid = flow_id[rows]
    # Originals: first transmissions (out-of-order ones included), by flow then sequence.
    orig = in_order
    if reordered.any():
        orig = np.r_[in_order, np.flatnonzero(reordered)]
        orig = orig[np.lexsort((seq_abs[orig], flow_id[orig]))]
    orig_frame = np.full(len(rows), -1, dtype=np.int64)
    orig_ts = np.full(len(rows), _NONE, dtype=np.int64)
    if len(orig) and len(rows):
        o_flow = flow_id[orig]
        pos = GroupedSearch(o_flow, seq_abs[orig])(fid, seq_abs[rows], "right") - 1
        ok = pos >= 0
        pc = np.clip(pos, 0, None)
        cand = orig[pc]
        ok &= (
            (o_flow[pc] == fid)
            & (seq_abs[cand] <= seq_abs[rows])
            & (end_abs[cand] > seq_abs[rows])
            & (packets["frame"][cand] < packets["frame"][rows])
        )
        ok &= ~reordered[rows]
        orig_frame[ok] = packets["frame"][cand[ok]]
        orig_ts[ok] = packets["ts_ns"][cand[ok]]

    tx_index = 2 + _earlier_covering(fid, seq_abs[rows], end_abs[rows], packets["frame"][rows])

    probe = np.full(len(rows), None, dtype=object)
    probe[keepalive[rows]] = "keepalive"
    probe[zwp[rows]] = "zero_window"
    ts = packets["ts_ns"][rows]
    has_orig = orig_frame >= 0
    snd_nxt = sparse_at(context["rows"], context["snd_nxt"], rows, seq_abs[rows])
    table = {
        "pkt": rows.astype(np.int64),
        "frame": packets["frame"][rows],
        "ts_ns": ts,
        "flow_id": fid,
        "seq": packets["seq"][rows],
        "end_seq": ((packets["seq"][rows].astype(np.int64) + seg_len[rows]) & 0xFFFFFFFF).astype(
            np.uint32
        ),
        "seq_abs": seq_abs[rows],
        "end_abs": end_abs[rows],
        "payload_len": packets["payload_len"][rows],
        "flags": packets["flags"][rows],
        "snd_nxt_abs": nullable(snd_nxt, snd_nxt > _NONE),
        "orig_frame": orig_frame,
        "orig_ts_ns": nullable(orig_ts, has_orig),
        "tx_index": np.where(reordered[rows], 1, tx_index).astype(np.int64),
        "since_original_ns": nullable(ts - orig_ts, has_orig),
        "probe": probe,
        "out_of_order": reordered[rows],
        "duplicate": duplicate[rows],
    }
    fr = table["frame"]
    if len(fr) > 1 and not bool(np.all(fr[1:] >= fr[:-1])):
        table = take(table, np.argsort(fr, kind="stable"))
    return table


#: A re-send answers feedback that took at least one round trip (below): at this share of
#: the round trip estimated from the capture, a segment is taken for one. The estimates
#: are minima of delays that can only exceed the path's (queues, delayed ACKs), so a
#: margin keeps a late original's successor from being missed for a few microseconds.
RTT_FLOOR_SHARE = 0.8

#: Without any round trip in the capture (no handshake, no ACK of new data): Wireshark's
#: own threshold between out-of-order and retransmitted (packet-tcp.c, 3 ms unless the
#: handshake gave the RTT).
UNKNOWN_RTT_FLOOR_NS = int(3_000_000 / RTT_FLOOR_SHARE)


def _starts_like_earlier(flow_id, seq_abs, frame, data) -> np.ndarray:
    """Per packet: does an earlier data segment (by frame) of its flow start at its
    sequence number?"""
    out = np.zeros(len(flow_id), dtype=bool)
    rows = np.flatnonzero(data)
    o = rows[np.lexsort((frame[rows], seq_abs[rows], flow_id[rows]))]
    same = (flow_id[o][1:] == flow_id[o][:-1]) & (seq_abs[o][1:] == seq_abs[o][:-1])
    out[o[1:][same]] = True
    return out


def resent_or_reordered(
    packets, flow_id, flows, space, context, below, in_order, carried: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which segments below data already known sent (``below``; ``in_order``: the others
    that carry data, by flow then sequence) were sent again, which
    are first transmissions that arrived out of order, and which are a packet the capture
    holds twice (_same_packet). Returns (resent, reordered, duplicate).

    A segment is a retransmission only when the capture shows its bytes were sent before:

    * an earlier segment of the capture carries its first byte, or the receiver had
      already acknowledged it (the cumulative ACK covers it): its bytes passed before;
    * otherwise it is the first copy the capture shows of bytes below data seen sent
      before it (a hole filled). New data leaves in sequence order, so its first
      transmission left before any data above it; the question is whether this is that
      transmission, overtaken on the way to the capture point (reordering, RFC 4737), or
      a re-send after the original was lost before the capture point. The sender's own
      count or clock decides when it shows: an IPv4 identification above that of the data
      above it seen first (where the flow's identifications count its segments), or a
      TSval above it, says it left later, so it was resent; a lower one, that it left
      first (RFC 7323 §5.3: TSval never decreases). Else time: a re-send answers feedback about that
      hole (a SACK or duplicate ACK from the receiver, a timer armed by the missing
      ACK), and no feedback can reach the sender before the data above the hole has gone
      from the capture point to the receiver and its ACK back to the sender: a re-send
      reaches the capture point at least one round trip after the first data above the
      hole passed it, wherever that point lies (the sender's host, the receiver's, or
      between them). A segment that follows sooner is an out-of-order original.

    Evidence that is not in the capture (the frames it dropped, a cut start) makes no
    retransmission: a gap in new data, or an ACK of bytes never seen, may be frames the
    capture missed as well as data sent before it began.

    ``carried``: the first rows are carried into a window of a longer shard from before it
    (analyze/windows.py): a hole among them is a re-send of bytes sent before them.
    """
    n = len(flow_id)
    resent = np.zeros(n, dtype=bool)
    reordered = np.zeros(n, dtype=bool)
    duplicate = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(below)
    if not len(rows):
        return resent, reordered, duplicate
    seq_abs, end_abs = space["seq_abs"], space["end_abs"]
    frame = packets["frame"]
    is_rst = (packets["flags"] & TCP_RST) != 0
    fid = flow_id[rows]
    seq = seq_abs[rows]
    # The receiver had its first byte: the last ACK of the other direction before it
    # (cumulative ACKs only grow but for the odd reordered one) covers it.
    lr = sparse_at(context["rev_rows"], context["last_rev"], rows, -1)
    lrc = np.clip(lr, 0, None)
    seen = (lr >= 0) & space["ack_flag"][lrc] & ~is_rst[lrc] & (seq < space["ack_abs"][lrc])
    # An earlier copy: among the segments sent in order (``in_order``: by flow, then
    # sequence)...
    copy = np.zeros(len(rows), dtype=bool)
    if len(in_order):
        o_flow = flow_id[in_order]
        pos = GroupedSearch(o_flow, seq_abs[in_order])(fid, seq, "right") - 1
        pc = np.clip(pos, 0, None)
        o = in_order[pc]
        found = (pos >= 0) & (o_flow[pc] == fid) & (end_abs[o] > seq) & (frame[o] < frame[rows])
        seen |= found
        copy = found & _same_packet(packets, o, rows)
    # ...or among the others.
    seen |= _earlier_covering(fid, seq, end_abs[rows], frame[rows]) > 0
    resent[rows[seen & ~copy]] = True
    duplicate[rows[copy]] = True
    hole = rows[~seen]
    resent[hole[hole < carried]] = True  # ``carried``: retransmission_table's
    hole = hole[hole >= carried]
    if not len(hole):
        return resent, reordered, duplicate
    verdict = _hole_verdict(packets, flow_id, flows, space, context, below, hole)
    resent[hole[verdict > 0]] = True
    reordered[hole[verdict <= 0]] = True
    return resent, reordered, duplicate


def _same_packet(packets, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Are rows ``a`` and ``b`` the same IPv4 packet captured twice (a span port or a
    bridge duplicating frames, capture files merged), not sent twice: the same
    identification (a sender gives every packet it sends a new one: RFC 6864 §4.1 for
    ones that may be fragmented, Linux and Windows for all), sequence number, length,
    flags and TSval? IPv6 has no identification to tell."""
    same = (packets["family"][b] == 4) & (packets["ip_id"][b] != 0)
    for k in ("ip_id", "seq", "payload_len", "flags", "tsval"):
        same &= packets[k][a] == packets[k][b]
    return same


def _first_reaching(grp, cummax, q_grp, q_val) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the first row (rows grouped, each group's ``cummax`` nondecreasing) of
    its group whose running maximum exceeds q_val: (found, index)."""
    i = pair_search(grp, cummax, q_grp, q_val, side="right")
    ic = np.clip(i, 0, max(len(grp) - 1, 0))
    ok = (i < len(grp)) & (gather(grp, ic, i < len(grp), -1) == q_grp)
    return ok, ic


def _hole_verdict(packets, flow_id, flows, space, context, below, hole) -> np.ndarray:
    """For each hole-filling segment (rows ``hole``): 1 resent, -1 an out-of-order original
    (resent_or_reordered explains the evidence)."""
    seq_abs, end_abs, seg_len = space["seq_abs"], space["end_abs"], space["seg_len"]
    frame, ts = packets["frame"], packets["ts_ns"]
    is_rst = (packets["flags"] & TCP_RST) != 0
    n_flows = len(flows["flow_id"])
    hf = flow_id[hole]
    hseq = seq_abs[hole]
    want = np.zeros(n_flows, dtype=bool)
    want[hf] = True
    # The first data segment above the hole's start that the capture showed.
    data = np.flatnonzero((seg_len > 0) & ~is_rst & want[flow_id])
    data = by_group(data, flow_id[data])
    dflow = flow_id[data]
    ok_a, ia = _first_reaching(dflow, seg_cummax(end_abs[data], group_numbers(dflow)), hf, hseq)
    a = data[ia]
    ok_a &= frame[a] < frame[hole]
    t_above = np.where(ok_a, ts[a], np.iinfo(np.int64).max)
    # The first ACK or SACK of the other direction above it.
    rev = flows["rev_flow_id"]
    has_rev = np.zeros(n_flows, dtype=bool)
    has_rev[rev[want & (rev >= 0)]] = True
    fb_rows = np.flatnonzero(space["ack_flag"] & ~is_rst & has_rev[flow_id])
    if len(fb_rows):
        fb_rows = by_group(fb_rows, rev[flow_id[fb_rows]])
        fb = space["ack_abs"][fb_rows]
        sr = space["sack_rows"]
        if len(sr):
            at = np.searchsorted(sr, fb_rows)
            atc = np.clip(at, 0, len(sr) - 1)
            hit = sr[atc] == fb_rows
            tops = _sack_tops(packets, space)
            fb = np.where(hit, np.maximum(fb, tops[atc]), fb)
        g = rev[flow_id[fb_rows]]
        ok_b, ib = _first_reaching(g, seg_cummax(fb, group_numbers(g)), hf, hseq)
        b = fb_rows[ib]
        ok_b &= frame[b] < frame[hole]
        t_above = np.minimum(t_above, np.where(ok_b, ts[b], np.iinfo(np.int64).max))
    verdict = np.zeros(len(hole), dtype=np.int64)
    # The sender's own count: IPv4's identification, where the flow's show a counter
    # (Linux: per socket, ip_select_ident_segs; Windows: per host). Random ones (BSD,
    # macOS) say nothing.
    counted = ok_a & ip_id_counts(packets, flow_id, flows, space, want)[hf]
    d_id = (packets["ip_id"][hole].astype(np.int64) - packets["ip_id"][a].astype(np.int64)) & 0xFFFF
    verdict[counted & (d_id != 0) & (d_id < (1 << 15))] = 1
    verdict[counted & (d_id >= (1 << 15))] = -1
    # The sender's clock: TSval (RFC 7323) of the hole's segment against the data above.
    has_ts = packets["opt_ts"].astype(bool)
    both = (verdict == 0) & ok_a & has_ts[hole] & has_ts[a]
    d = (
        packets["tsval"][hole].astype(np.int64) - packets["tsval"][a].astype(np.int64)
    ) & 0xFFFFFFFF
    later = both & (d != 0) & (d < (1 << 31))
    earlier = both & (d >= (1 << 31))
    verdict[later] = 1
    verdict[earlier] = -1
    # Captured at the sender's own host: nothing between it and the capture point to
    # reorder segments.
    trips = sender_trip_ns(packets, flow_id, flows, want)
    at_sender = (trips >= 0) & (trips <= AT_SENDER_TRIP_NS)
    verdict[(verdict == 0) & at_sender[hf]] = 1
    # Time: at least a round trip after the data above passed.
    floor = rtt_floor_ns(packets, flow_id, flows, space, below, want, trips)[hf]
    undecided = verdict == 0
    gap_ok = (floor >= 0) & (ts[hole] - t_above >= RTT_FLOOR_SHARE * floor)
    verdict[undecided] = np.where(gap_ok[undecided], 1, -1)
    return verdict


#: Share of a flow's consecutive first transmissions whose IPv4 identification goes up
#: by 1 to IP_ID_STEP_MAX for the identifications to be read as the sender's order.
IP_ID_COUNTER_SHARE = 0.9
IP_ID_STEP_MAX = 256


def ip_id_counts(packets, flow_id, flows, space, want) -> np.ndarray:
    """Per flow (those in ``want``): do its IPv4 identifications count its segments (each
    next new-data segment's a little above the last: RFC 6864 leaves atomic datagrams'
    IDs free, Linux counts them per socket, Windows per host), so that a higher one was
    sent later?"""
    n_flows = len(flows["flow_id"])
    out = np.zeros(n_flows, dtype=bool)
    v4 = (flows["family"] == 4) & want
    rows = np.flatnonzero(v4[flow_id] & (space["seg_len"] > 0))
    if len(rows) < 2:
        return out
    rows = by_group(rows, flow_id[rows])
    f = flow_id[rows]
    same = f[1:] == f[:-1]
    step = (
        packets["ip_id"][rows][1:].astype(np.int64) - packets["ip_id"][rows][:-1].astype(np.int64)
    ) & 0xFFFF
    up = same & (step >= 1) & (step <= IP_ID_STEP_MAX)
    pairs = np.bincount(f[1:][same], minlength=n_flows)
    ups = np.bincount(f[1:][up], minlength=n_flows)
    return v4 & (pairs >= 8) & (ups >= IP_ID_COUNTER_SHARE * pairs)


def sender_trip_ns(packets, flow_id, flows, want, echo_alone: bool = True) -> np.ndarray:
    """Per flow in ``want``: the round trip from the capture point to the flow's sender
    and back (ns, -1: unknown): the smaller of the handshake's (flows.trip_ns, one sample:
    a SYN-ACK held up on the path lengthens it) and the least time from a packet of the
    other direction to the first segment echoing its TSval (_echo_trip_ns); both only
    ever exceed it. ``echo_alone``: also the echo's where the handshake is missing (an
    application that waits before answering lengthens that one instead)."""
    trip = flows.get("trip_ns")
    n_flows = len(flows["flow_id"])
    hs = (
        np.full(n_flows, -1, dtype=np.int64)
        if trip is None
        else np.where(trip.valid, trip.values, -1).astype(np.int64)
    )
    # A handshake trip already at the sender's host is not lowered (and is the common
    # case: spare the echo's work there).
    need = want & ((hs > AT_SENDER_TRIP_NS) | ((hs < 0) & echo_alone))
    echo = (
        _echo_trip_ns(packets, flow_id, flows, need)
        if need.any()
        else np.full(n_flows, -1, dtype=np.int64)
    )
    both = (hs >= 0) & (echo >= 0)
    return np.where(
        both, np.minimum(hs, echo), np.where(hs >= 0, hs, echo if echo_alone else -1)
    ).astype(np.int64)


def rtt_floor_ns(packets, flow_id, flows, space, below, want, trips) -> np.ndarray:
    """Per flow (those in ``want``), the round trip of the path as the capture shows it, in
    ns: the handshake's SYN -> ACK (flows.hs_rtt_ns), or the sum of the two round trips
    seen from the capture point: to the receiver and back (new data -> the first ACK
    covering it) and to the sender and back (``trips``: sender_trip_ns; 0 unknown). Each
    is a minimum over delays that queues and delayed ACKs only lengthen, so none is below
    the path's; the smaller of the two is taken. UNKNOWN_RTT_FLOOR_NS where the capture
    shows neither."""
    n_flows = len(flows["flow_id"])
    hs = flows.get("hs_rtt_ns")
    floor = np.full(n_flows, -1, dtype=np.int64)
    if hs is not None:
        floor = np.where(hs.valid, hs.values, -1).astype(np.int64)
    d_rcv = receiver_trip_ns(packets, flow_id, flows, space, below, want)
    est = np.where(d_rcv >= 0, d_rcv + np.maximum(trips, 0), -1)
    floor = np.where((floor >= 0) & (est >= 0), np.minimum(floor, est), np.maximum(floor, est))
    return np.where(floor >= 0, floor, UNKNOWN_RTT_FLOOR_NS)


def receiver_trip_ns(packets, flow_id, flows, space, below, want) -> np.ndarray:
    """Per flow in ``want``: the least time from a segment of new data to the first ACK
    that covers it (-1: none)."""
    n_flows = len(flows["flow_id"])
    out = np.full(n_flows, -1, dtype=np.int64)
    rev = flows["rev_flow_id"]
    is_rst = (packets["flags"] & TCP_RST) != 0
    new = np.flatnonzero((space["seg_len"] > 0) & ~is_rst & ~below & want[flow_id])
    has_rev = np.zeros(n_flows, dtype=bool)
    has_rev[rev[want & (rev >= 0)]] = True
    acks = np.flatnonzero(space["ack_flag"] & ~is_rst & has_rev[flow_id])
    if not len(new) or not len(acks):
        return out
    acks = by_group(acks, rev[flow_id[acks]])
    g = rev[flow_id[acks]]
    cm = seg_cummax(space["ack_abs"][acks], group_numbers(g))
    i = pair_search(g, cm, flow_id[new], space["end_abs"][new], side="left")
    ic = np.clip(i, 0, len(acks) - 1)
    ok = (i < len(acks)) & (g[ic] == flow_id[new])
    delay = packets["ts_ns"][acks[ic]] - packets["ts_ns"][new]
    ok &= delay >= 0
    best = np.full(n_flows, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, flow_id[new][ok], delay[ok])
    return np.where(best < np.iinfo(np.int64).max, best, -1)


def _echo_trip_ns(packets, flow_id, flows, want) -> np.ndarray:
    """Per flow in ``want``: the least time from the first packet of the other direction
    carrying a TSval to the first segment of this flow echoing it (-1: none)."""
    n_flows = len(flows["flow_id"])
    out = np.full(n_flows, -1, dtype=np.int64)
    rev = flows["rev_flow_id"]
    has_ts = packets["opt_ts"].astype(bool)
    mine = np.flatnonzero(has_ts & want[flow_id] & (packets["tsecr"] != 0) & (rev[flow_id] >= 0))
    peer = np.zeros(n_flows, dtype=bool)
    peer[rev[want & (rev >= 0)]] = True
    theirs = np.flatnonzero(has_ts & peer[flow_id])
    if not len(mine) or not len(theirs):
        return out
    key_t = flow_id[theirs].astype(np.int64) * (1 << 32) + packets["tsval"][theirs]
    uniq, first = np.unique(key_t, return_index=True)  # rows are in capture order
    key_m = rev[flow_id[mine]].astype(np.int64) * (1 << 32) + packets["tsecr"][mine]
    j = np.searchsorted(uniq, key_m)
    jc = np.clip(j, 0, len(uniq) - 1)
    ok = (j < len(uniq)) & (uniq[jc] == key_m)
    delay = packets["ts_ns"][mine] - packets["ts_ns"][theirs[first[jc]]]
    ok &= delay >= 0
    best = np.full(n_flows, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, flow_id[mine][ok], delay[ok])
    return np.where(best < np.iinfo(np.int64).max, best, -1)


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


def capture_gaps(
    packets: dict[str, np.ndarray],
    flow_id: np.ndarray,
    flows,
    space: dict[str, np.ndarray],
    context: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Per flow, the data its sender sent that the capture never shows: ranges above the
    flow's first captured byte that no captured segment covers (new data leaves at
    snd_nxt, in order, so a segment starting above everything before it leaves such a range
    unless a later one fills it). ``ranges``, ``bytes`` (int64 per flow) and ``acked``
    (ranges the receiver's cumulative ACK later covered: the receiver had them, so the
    capture missed them; in a one-way capture nothing tells, and every range counts).
    A range lost before the capture point is resent, and the resend fills it. Also
    ``hole_rows``: the packet rows that begin such a range."""
    n_flows = len(flows["flow_id"])
    out = {k: np.zeros(n_flows, dtype=np.int64) for k in ("ranges", "bytes", "acked")}
    out["hole_rows"] = np.zeros(0, dtype=np.int64)
    seq, end, seg_len = space["seq_abs"], space["end_abs"], space["seg_len"]
    data = (seg_len > 0) & ((packets["flags"] & TCP_RST) == 0)
    at, before = context["rows"], context["snd_nxt"]  # elsewhere snd_nxt is seq_abs
    up = data[at] & (before > _NONE) & (seq[at] > before)
    jump = at[up]
    if not len(jump):
        return out
    jf, ja, jb = flow_id[jump], before[up], seq[jump]
    # Later segments below data seen before them (retransmissions, out-of-order originals)
    # fill ranges: their union per flow, as sorted disjoint intervals.
    fill = at[data[at] & (seq[at] < context["sent_hi"])]
    covered = np.zeros(len(jump), dtype=np.int64)
    if len(fill):
        o = np.lexsort((seq[fill], flow_id[fill]))
        ff, fs, fe = flow_id[fill][o], seq[fill][o], end[fill][o]
        top = seg_cummax(fe, group_numbers(ff), exclusive=True)
        new = (np.r_[True, ff[1:] != ff[:-1]]) | (fs > top)
        r_f, r_s = ff[new], fs[new]
        r_e = np.maximum.reduceat(fe, np.flatnonzero(new))
        covered = _overlap(r_f, r_s, r_e, jf, ja, jb)
    missing = (jb - ja) - covered
    hole = missing > 0
    out["hole_rows"] = jump[hole]
    np.add.at(out["ranges"], jf[hole], 1)
    np.add.at(out["bytes"], jf[hole], missing[hole])
    rev = flows["rev_flow_id"]
    final_ack = np.full(n_flows, _NONE, dtype=np.int64)
    acks = np.flatnonzero(space["ack_flag"] & ((packets["flags"] & TCP_RST) == 0))
    if len(acks):
        np.maximum.at(final_ack, rev[flow_id[acks]], space["ack_abs"][acks])
    np.add.at(out["acked"], jf[hole & (final_ack[jf] >= jb)], 1)
    return out


def _overlap(r_f, r_s, r_e, q_f, q_a, q_b) -> np.ndarray:
    """Bytes of each query [q_a, q_b) of flow q_f inside the union of the disjoint sorted
    intervals [r_s, r_e) of flow r_f (prefix sums of their lengths, clipped at both
    ends)."""
    length = r_e - r_s
    csum = np.r_[0, np.cumsum(length)]

    def upto(x):
        """Covered bytes of flow q_f below x."""
        i = pair_search(r_f, r_s, q_f, x, side="left")  # intervals starting below x
        first = pair_search(r_f, r_s, q_f, np.full(len(x), -(1 << 40)), side="left")
        full = csum[i] - csum[first]
        last = i - 1
        lc = np.clip(last, 0, max(len(r_e) - 1, 0))
        has = (last >= first) & (last >= 0)
        over = np.where(has, np.maximum(gather(r_e, lc, has, 0) - x, 0), 0)
        return full - over

    return upto(q_b) - upto(q_a)
