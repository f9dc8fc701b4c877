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
import pandas as pd

from retranscope.analyze.flows import (
    NO_VALUE,
    by_group,
    capture_order,
    group_numbers,
    seg_cummax,
    sequence_space,
)
from retranscope.schemas.packets import TCP_FIN, TCP_RST, TCP_SYN

RETRANS_COLUMNS = (
    "pkt", "frame", "ts_ns", "flow_id", "seq", "end_seq", "seq_abs", "end_abs",
    "payload_len", "flags", "snd_nxt_abs", "orig_frame", "orig_ts_ns", "tx_index",
    "since_original_ns", "probe",
)

_NONE = NO_VALUE  # "nothing sent yet": the floor of seg_cummax


def conn_order(packets: dict[str, np.ndarray], flow_id: np.ndarray,
               flows: pd.DataFrame) -> np.ndarray:
    """Permutation putting packets in (connection, capture order)."""
    conn = flows["conn_id"].to_numpy()[flow_id]
    cap = capture_order(packets["frame"])
    return cap[np.argsort(conn[cap], kind="stable")]


def _ffill_in_group(mask: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Index (into the ordered rows) of the last earlier row with ``mask`` in the group, -1."""
    m = len(mask)
    idx = np.where(mask, np.arange(m), -1)
    last = np.maximum.accumulate(idx) if m else idx
    prev = np.full(m, -1, dtype=np.int64)
    if m:
        prev[1:] = last[:-1]
        ok = prev >= 0
        ok[ok] = group[prev[ok]] == group[ok]
        prev[~ok] = -1
    return prev


def sender_context(packets: dict[str, np.ndarray], flow_id: np.ndarray, flows: pd.DataFrame,
                   space: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per packet, what its sender knew just before sending it (all vectorised).

    ``sent_hi``: highest sequence known sent in the packet's flow (own segments, plus the
    reverse flow's ACK/SACK). ``snd_nxt``: the highest own segment end only. ``last_rev``:
    index of the last packet of the reverse direction before it (-1 if none).
    """
    n = len(flow_id)
    order = conn_order(packets, flow_id, flows)
    conn = flows["conn_id"].to_numpy()[flow_id][order]
    gno = group_numbers(conn)
    d = flows["dir"].to_numpy()[flow_id][order]
    flags = packets["flags"][order]
    end = space["end_abs"][order]
    ack_ok = space["ack_flag"][order]
    fb = np.where(ack_ok, space["ack_abs"], _NONE)
    rows = space["sack_rows"]
    if len(rows):
        sn = packets["sack_n"][rows]
        top = space["sack_r_abs"][:, 0].copy()
        for b in range(1, 4):
            top = np.where(sn > b, np.maximum(top, space["sack_r_abs"][:, b]), top)
        fb[rows] = np.maximum(fb[rows], top)
    fb = fb[order]
    not_rst = (flags & TCP_RST) == 0
    own_end = np.where(not_rst, end, _NONE)

    sent_hi = np.empty(n, dtype=np.int64)
    snd_nxt = np.empty(n, dtype=np.int64)
    last_rev = np.empty(n, dtype=np.int64)
    for side in (0, 1):
        own = d == side
        # Evidence for the flow of direction `side`: its own segment ends and the other
        # direction's acknowledgements (which are in this flow's sequence space).
        ev = np.where(own, own_end, np.where(~own & not_rst, fb, _NONE))
        hi = seg_cummax(ev, gno, exclusive=True)
        nx = seg_cummax(np.where(own, own_end, _NONE), gno, exclusive=True)
        lr = _ffill_in_group(~own, conn)
        sel = order[own]
        sent_hi[sel] = hi[own]
        snd_nxt[sel] = nx[own]
        lr_own = lr[own]
        last_rev[sel] = np.where(lr_own >= 0, order[np.clip(lr_own, 0, None)], -1)
    return {"sent_hi": sent_hi, "snd_nxt": snd_nxt, "last_rev": last_rev}


def find_retransmissions(packets: dict[str, np.ndarray], flow_id: np.ndarray,
                         flows: pd.DataFrame,
                         space: dict[str, np.ndarray] | None = None,
                         context: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per retransmitted wire segment (and per keep-alive / window probe)."""
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
        pos = _search_pairs(o_flow, seq_abs[orig], fid, seq_abs[rows], side="right") - 1
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
    df = pd.DataFrame({
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
        "snd_nxt_abs": pd.array(context["snd_nxt"][rows], dtype="Int64"),
        "orig_frame": orig_frame,
        "orig_ts_ns": pd.array(np.where(has_orig, orig_ts, 0), dtype="Int64"),
        "tx_index": tx_index.astype(np.int64),
        "since_original_ns": pd.array(np.where(has_orig, ts - orig_ts, 0), dtype="Int64"),
        "probe": probe,
    })
    df.loc[~has_orig, ["orig_ts_ns", "since_original_ns"]] = pd.NA
    df.loc[df["snd_nxt_abs"] <= _NONE, "snd_nxt_abs"] = pd.NA
    return df.sort_values("frame", kind="stable").reset_index(drop=True)


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
    late = ~flows["syn_seen"].to_numpy(dtype=bool)
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
    first_gap_seq = np.full(len(flows), _NONE, dtype=np.int64)
    first_gap_frame = np.full(len(flows), -1, dtype=np.int64)
    first_gap_seq[gf[keep]] = seq_abs[gaps[keep]]
    first_gap_frame[gf[keep]] = packets["frame"][gaps[keep]]
    fr = packets["frame"][data]
    hit = (fr < first_gap_frame[f]) & (seq_abs[data] < first_gap_seq[f])
    out[data[hit]] = True
    return out


def _search_pairs(a_grp, a_val, q_grp, q_val, side="left") -> np.ndarray:
    """searchsorted over rows sorted by (group, value), for (group, value) queries."""
    # Map (group, value) to one sortable int64: values are sequence offsets (|v| < 2**40),
    # groups are flow ids; shift values to be non-negative inside a 2**41 band per group.
    band = np.int64(1) << np.int64(41)
    lim = (np.int64(1) << np.int64(40)) - 1
    ka = a_grp.astype(np.int64) * band + np.clip(a_val, -lim, lim) + (band >> 1)
    kq = q_grp.astype(np.int64) * band + np.clip(q_val, -lim, lim) + (band >> 1)
    return np.searchsorted(ka, kq, side=side)


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
    maxlen = pd.Series(se - ss).groupby(sf).transform("max").to_numpy()
    lo = _search_pairs(sf, ss, sf, ss - maxlen, side="left")
    hi = _search_pairs(sf, ss, sf, ss, side="right")
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
