"""Join kernel events to the capture's frames: by flow, sequence range and time.

One event (one tcp_retransmit_skb call) covers [seq, end_seq) of one skb, which can be
several wire segments (GSO/TSO; docs/kernel-notes.md), and the same range can be resent many
times (an RTO chain), so the time decides between events of the same range: each frame
goes to the overlapping event nearest to it in time. Both clocks are the recording
host's CLOCK_REALTIME (events: CLOCK_MONOTONIC + the offset saved in run.json).

Pure functions over DataFrames; vectorised (candidate frames are first narrowed to those
near some event in time, then merged on the flow key).
"""

from __future__ import annotations

import numpy as np

from retranscope.analyze.table import Table, filled
from retranscope.schemas.packets import TCP_FIN, TCP_SYN

#: The flow key, numeric in both tables: the packet table's address halves and ports;
#: events carry the same halves (analyze/events.py parses their text once).
FLOW_KEY = ("saddr_hi", "saddr_lo", "daddr_hi", "daddr_lo", "sport", "dport")
# The tracepoint fires in __tcp_retransmit_skb right after the skb is handed to the
# device; tcpdump stamps it at the tap, microseconds apart on the same host. Queueing in
# a qdisc can add milliseconds. A frame farther than this from every event of its range
# is not that event's.
DEFAULT_TOLERANCE_NS = 500_000_000


def segment_len(packets: dict[str, np.ndarray]) -> np.ndarray:
    """Sequence space a segment occupies: payload plus one for SYN and one for FIN."""
    flags = packets["flags"]
    return (
        packets["payload_len"].astype(np.int64)
        + ((flags & TCP_SYN) != 0)
        + ((flags & TCP_FIN) != 0)
    )


def eligible_rows(
    n_rows: int, retrans_rows: np.ndarray, flow_id: np.ndarray, syn_seen: np.ndarray
) -> np.ndarray:
    """Which frames may carry a kernel retransmission: those the capture found resent, and
    any frame of a flow whose handshake it missed (its original may predate the capture).
    A first transmission of a fully captured flow never does, however close in time and
    range to an event: without this, an event whose resent frame the capture lost would
    still "match" its original."""
    ok = np.zeros(n_rows, dtype=bool)
    ok[retrans_rows] = True
    if len(flow_id):
        ok |= ~np.asarray(syn_seen, dtype=bool)[flow_id]
    return ok


def join_events(
    events: Table,
    packets: dict[str, np.ndarray],
    tolerance_ns: int = DEFAULT_TOLERANCE_NS,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match frames to events.

    Returns (event_of_row, frames_per_event): for every packet-table row the index (in
    ``events``) of the event it belongs to or -1, and for every event how many frames it got.
    Events without ``seq`` (unreadable skb) match on flow and time alone. ``eligible``
    (see eligible_rows) limits the frames considered; None considers every frame.
    """
    n_rows = len(packets["ts_ns"])
    n_ev = len(events["ts_wall_ns"]) if events else 0
    event_of_row = np.full(n_rows, -1, dtype=np.int64)
    frames = np.zeros(n_ev, dtype=np.int64)
    if not n_ev or not n_rows:
        return event_of_row, frames

    seglen = segment_len(packets)
    ev_ts = np.asarray(events["ts_wall_ns"], dtype=np.int64)
    order = np.sort(ev_ts)
    ts = packets["ts_ns"]
    # Rows within the tolerance of some event: the only candidates.
    pos = np.searchsorted(order, ts)
    near_next = np.abs(order[np.clip(pos, 0, len(order) - 1)] - ts)
    near_prev = np.abs(order[np.clip(pos - 1, 0, len(order) - 1)] - ts)
    near = (seglen > 0) & (np.minimum(near_next, near_prev) <= tolerance_ns)
    if eligible is not None:
        near &= eligible
    cand = np.flatnonzero(near)
    if not len(cand):
        return event_of_row, frames

    # Pairs (frame, event) of one flow within the tolerance in time: events sorted by
    # (flow, time), and each candidate frame's window found by one search over
    # (flow, time rank) pairs. Dense ranks keep the order and ties of the times and make
    # the pair one int64 whatever the times' span.
    key_w, key_e = common_keys(
        [packets[k][cand] for k in FLOW_KEY], [np.asarray(events[k]) for k in FLOW_KEY]
    )
    t_w = ts[cand]
    times, rank = np.unique(
        np.concatenate([ev_ts, t_w - tolerance_ns, t_w + tolerance_ns]), return_inverse=True
    )
    n_c = len(cand)
    r_e, r_lo, r_hi = rank[:n_ev], rank[n_ev : n_ev + n_c], rank[n_ev + n_c :]
    width = np.int64(len(times) + 1)
    pair_e = key_e * width + r_e
    eo = np.argsort(pair_e, kind="stable")
    lo = np.searchsorted(pair_e[eo], key_w * width + r_lo, side="left")
    hi = np.searchsorted(pair_e[eo], key_w * width + r_hi, side="right")
    cnt = np.maximum(hi - lo, 0)
    total = int(cnt.sum())
    if total == 0:
        return event_of_row, frames
    wi = np.repeat(np.arange(len(cand)), cnt)
    ej = eo[np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)]
    row = cand[wi]

    has_seq = _valid(events["seq"])
    e_seq = filled(events["seq"], 0).astype(np.int64)
    e_len = (filled(events["end_seq"], 0).astype(np.int64) - e_seq) % (1 << 32)
    # Overlap of [w_seq, w_seq + w_len) and [e_seq, e_seq + e_len) in 32-bit sequence space.
    d = packets["seq"][row].astype(np.int64) - e_seq[ej]
    d = ((d + (1 << 31)) % (1 << 32)) - (1 << 31)
    overlap = (d < e_len[ej]) & (d + seglen[row] > 0)
    dt = np.abs(ts[row] - ev_ts[ej])
    ok = (overlap | ~has_seq[ej]) & (dt <= tolerance_ns)
    row, ej, dt = row[ok], ej[ok], dt[ok]
    if not len(row):
        return event_of_row, frames
    # Each frame to its nearest event in time (ties: the earlier event).
    best = np.lexsort((ej, dt, row))
    first = np.r_[True, row[best][1:] != row[best][:-1]]
    pick = best[first]
    event_of_row[row[pick]] = ej[pick]
    frames = np.bincount(ej[pick], minlength=n_ev).astype(np.int64)
    return event_of_row, frames


def _valid(col) -> np.ndarray:
    valid = getattr(col, "valid", None)
    return np.ones(len(col), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)


def common_keys(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Dense int64 ids of the rows of two tables over the same key columns: equal keys,
    equal ids, in either table."""
    n_a = len(a[0])
    cols = [np.concatenate([x.astype(np.uint64), y.astype(np.uint64)]) for x, y in zip(a, b)]
    if not len(cols[0]):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort(cols[::-1])
    new = np.zeros(len(order), dtype=bool)
    new[0] = True
    for c in cols:
        new[1:] |= c[order][1:] != c[order][:-1]
    ids = np.empty(len(order), dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids[:n_a], ids[n_a:]


def why_unmatched(
    events: Table,
    frames: np.ndarray,
    capture_first_ns: int | None,
    capture_last_ns: int | None,
    flows_in_capture: np.ndarray,
    capture_drops: int | None,
) -> np.ndarray:
    """For events with no frame, the most likely reason (object array; None if matched)."""
    out = np.full(len(frames), None, dtype=object)
    none = frames == 0
    ts = np.asarray(events["ts_wall_ns"], dtype=np.int64)
    err = filled(events["err"], 0)
    out[none] = "no_frame"
    if capture_drops:
        out[none] = "capture_dropped"
    out[none & ~flows_in_capture] = "flow_not_in_capture"
    if capture_first_ns is not None:
        out[none & (ts < capture_first_ns)] = "before_capture"
    if capture_last_ns is not None:
        out[none & (ts > capture_last_ns)] = "after_capture"
    out[none & (err != 0)] = "not_sent"  # the retransmit failed in the kernel (err < 0)
    return out
