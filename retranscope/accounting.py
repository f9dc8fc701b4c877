"""Retransmissions the kernel made but no event reported, from the sockets' own counts.

Every retransmit event carries ``segs`` (tcp_skb_pcount of the skb) and ``total_retrans``
(tp->total_retrans, read where tcp:tcp_retransmit_skb fires, at the end of
__tcp_retransmit_skb, so this retransmission's segments are already in it). Between two
events of one socket the total grows by exactly the later event's segs; anything more was
retransmitted without reaching the recorder. That happens: the kernel does not run BPF
programs for a tracepoint hit in some contexts (seen here: softirq work on top of another
process's thread, while ftrace saw the hit), and says nothing. A loss before a socket's
first event (or before the recording began) shows as that event's total exceeding its segs.

Pure numpy over the event columns; the recorder uses it at the end of a run, the analyzer
on any events it reads.
"""

from __future__ import annotations

import numpy as np


def _socket_gaps(
    sk: np.ndarray, seg: np.ndarray, tot: np.ndarray, carried: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one rule, over events sorted by (socket, time): per event, is it a new socket
    (its first event, or its address reused: the total dropped), and how many segments
    were resent since the socket's previous event without one. ``carried``: per socket
    run, its total before this batch (-1 if unknown). Returns (starts, new_sock, gap)."""
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]]) if len(sk) else np.zeros(0, int)
    prev = np.r_[0, tot[:-1]]
    prev[starts] = carried
    new_sock = (prev < 0) | (tot < prev)
    gap = np.where(new_sock, 0, np.maximum(tot - prev - seg, 0))
    return starts, new_sock, gap


def unreported_segments(
    skaddr: np.ndarray, ts_ns: np.ndarray, segs: np.ndarray, total: np.ndarray, valid: np.ndarray
) -> dict[str, int]:
    """Segments resent without an event, over one whole set of events.

    ``valid`` marks the retransmit events whose segs and total_retrans were read. A
    socket address reused by a new socket restarts its total (it drops): a new socket.

    Returns ``between_events`` (gaps between two reported retransmissions of a socket:
    unreported for certain), ``before_first_event`` (resent before a socket's first event:
    before the recording began, or unreported), ``sockets_with_gaps``.
    """
    g = GapTracker()
    g.update(skaddr, ts_ns, segs, total, valid)
    s = g.summary()
    return {
        "between_events": s["unreported_between_events"],
        "before_first_event": s["before_first_event"],
        "sockets_with_gaps": s["sockets_with_gaps"],
    }


class GapTracker:
    """unreported_segments, batch by batch, for a recorder that sees events as they come."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}  # socket address -> its latest total_retrans
        self.between_events = 0
        self.before_first_event = 0
        self.segs = 0  # segments the events reported
        self._gapped: set[int] = set()

    def update(
        self,
        skaddr: np.ndarray,
        ts_ns: np.ndarray,
        segs: np.ndarray,
        total: np.ndarray,
        valid: np.ndarray,
        other_segments: int = 0,
    ) -> None:
        """One batch. ``other_segments``: segments of events without a socket total (a
        SYN-ACK resent: one). A retransmission that failed in the device still counts: the
        kernel adds to RetransSegs and total_retrans before it transmits."""
        self.segs += int(segs[valid].sum()) + other_segments
        idx = np.flatnonzero(valid)
        if not len(idx):
            return
        order = idx[np.lexsort((ts_ns[idx], skaddr[idx]))]
        sk = skaddr[order].astype(np.int64)
        seg = segs[order].astype(np.int64)
        tot = total[order].astype(np.int64)
        runs = sk[np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])]
        carried = np.array([self._last.get(int(s), -1) for s in runs], dtype=np.int64)
        starts, new_sock, gap = _socket_gaps(sk, seg, tot, carried)
        self.between_events += int(gap.sum())
        self.before_first_event += int(np.where(new_sock, np.maximum(tot - seg, 0), 0).sum())
        self._gapped.update(int(s) for s in np.unique(sk[gap > 0]))
        ends = np.r_[starts[1:], len(sk)] - 1
        self._last.update(zip(sk[ends].tolist(), tot[ends].tolist()))

    def summary(self) -> dict[str, int]:
        return {
            "event_segments": self.segs,
            "unreported_between_events": self.between_events,
            "before_first_event": self.before_first_event,
            "sockets_with_gaps": len(self._gapped),
        }


def gap_intervals(events) -> dict[str, np.ndarray]:
    """Where each socket's total grew by more than its next event's segs: one row per gap,
    with the flow (numeric address halves and ports, as analyze/events.py gives them), the
    wall-clock interval (previous event, event] the missing retransmissions fell in, and
    how many segments are missing. ``events``: a table of columns (analyze/table.py)."""
    key = ("saddr_hi", "saddr_lo", "daddr_hi", "daddr_lo", "sport", "dport")
    n = len(events["ts_wall_ns"]) if events else 0
    empty = {k: np.zeros(0, dtype=np.int64) for k in key + ("from_ns", "to_ns", "segments")}
    if not n or "segs" not in events or "total_retrans" not in events:
        return empty
    segs, tot = events["segs"], events["total_retrans"]
    ok = (np.asarray(events["event_type"]) == "retransmit") & _valid(segs) & _valid(tot)
    idx = np.flatnonzero(ok)
    sk_all = np.asarray(events["skaddr"], dtype=np.uint64)
    ts_all = np.asarray(events["ts_wall_ns"], dtype=np.int64)
    idx = idx[np.lexsort((ts_all[idx], sk_all[idx]))]
    sk = sk_all[idx].astype(np.int64)
    seg = _values(segs)[idx].astype(np.int64)
    tot_v = _values(tot)[idx].astype(np.int64)
    n_runs = int(np.count_nonzero(np.r_[True, sk[1:] != sk[:-1]])) if len(sk) else 0
    _, _, missing = _socket_gaps(sk, seg, tot_v, np.full(n_runs, -1, dtype=np.int64))
    hit = np.flatnonzero(missing > 0)
    ts = ts_all[idx]
    out = {k: np.asarray(events[k])[idx[hit]] for k in key}
    out["from_ns"] = ts[hit - 1] if len(hit) else np.zeros(0, np.int64)
    out["to_ns"] = ts[hit]
    out["segments"] = missing[hit]
    return out


def _valid(col) -> np.ndarray:
    valid = getattr(col, "valid", None)
    return np.ones(len(col), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)


def _values(col) -> np.ndarray:
    return np.asarray(getattr(col, "values", col))
