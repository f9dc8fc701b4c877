"""Why was each segment retransmitted? The evidence, in bulk, for the sender's replay.

analyze/sender.py replays the Linux sender's loss recovery burst by burst and names the
kernel function that resent each one (its module docstring is the specification). This
module computes, vectorised over the whole capture, what that replay reads: the receiver's
ACKs per data flow (cumulative ACK, SACK news, D-SACKs, timestamps echoed), the RTT samples
and the SRTT/RTO they give (tcp_rtt_estimator), each retransmission's clock (time since the
last ACK, in the sender's own time), snd_nxt and packets_out when it left, its bursts, and
whether a D-SACK or a timestamp echo (Eifel) showed it spurious. The replay then walks only
the bursts, with binary searches over each flow's cumulative-ACK array between them.
"""

from __future__ import annotations

import numpy as np

from retranscope.analyze.causes import cause_columns
from retranscope.analyze.flows import AT_SENDER_TRIP_NS, sack_blocks, sequence_space
from retranscope.analyze.retrans import receiver_trip_ns, sender_trip_ns
from retranscope.analyze.sender import (
    ACK_CLOCK_NS,
    BURST_GAP_NS,
    NEVER,
    TCP_RTO_MAX_US,
    TCP_RTO_MIN_US,
    TCP_TIMEOUT_INIT_US,
    replay,
)
from retranscope.analyze.table import (
    NO_VALUE,
    VALUE_BITS,
    GroupedSearch,
    Nullable,
    Side,
    Table,
    by_group,
    count_where,
    filled,
    gather,
    group_bounds,
    group_numbers,
    last_where,
    nullable,
    ordered_in_groups,
    pair_search,
    present,
    seg_cummax,
)
from retranscope.schemas.packets import TCP_ACK, TCP_RST, TCP_SYN
from retranscope.schemas.vocabulary import CA_STATES, FAMILY_OF_KIND

_NONE = NO_VALUE  # "no value": the floor of seg_cummax
_INF = NEVER
_VMAX = (1 << VALUE_BITS) - 1  # table.pair_key clips values to +-_VMAX
_BLOCK_ROWS = 1 << 16  # rows scanned at a time where a few rows are looked for

CLASSIFY_COLUMNS = (
    "kind_pcap",
    "family",
    "spurious",
    "spurious_by",
    "since_last_send_ns",
    "since_last_ack_ns",
    "srtt_us",
    "expected_pto_ns",
    "expected_rto_ns",
    "backoff",
    "trigger_frame",
    "since_trigger_ns",
    "ca_state",
    "clock",
    "position",
    "burst",
    "cause",
    "cause_text",
    "pmtu_mtu",
    "ack_delay_ns",
    "evidence",
)


# --- bulk helpers ------------------------------------------------------------------------


#: rows of an _affine_scan block: the blocks of each level are this wide
SCAN_BLOCK = 16
#: the level of _affine_scan run row by row: blocks of SCAN_BLOCK rows, side by side; then
#: their ends (every SCAN_BLOCK-th row of a group) one after another
SCAN_LEVELS = 1


def _affine_scan(
    a: np.ndarray,
    b: np.ndarray,
    restart: np.ndarray | None = None,
    carry0: np.ndarray | None = None,
    level: int = 0,
    carry_in: np.ndarray | None = None,
) -> np.ndarray:
    """y[i] = a[i] * y[i-1] + b[i]. A group of rows begins at each ``restart`` row (None:
    where a = 0, and row 0) from y = ``carry0`` there (None: 0); |a| <= 1 keeps it
    numerically stable.

    Blocked: within blocks of SCAN_BLOCK rows, each block as if it started from y = 0,
    with the product of its a; the same over the blocks' last values (the carry into each
    block), SCAN_LEVELS deep; above that, the blocks' ends one after another
    (_sequential_scan). The blocks are counted from each group's first row, at
    every level, so a group's values (to the last bit) come from its own rows alone,
    whatever other groups stand beside it: a flow gets the same SRTT in a shard of the
    capture as in the whole (analyze/shards.py). And a group that begins at a row that
    is the start of a top block of a longer one (a multiple of SCAN_BLOCK**SCAN_LEVELS
    rows in), from that one's y just before it, gets that one's values to the last bit:
    how a window of a connection carries on its SRTT (analyze/windows.py). (Blocks of
    sqrt(n) rows of all the groups together, until stop 21, changed the last bits of half
    of one flow's values with the number of samples of the flows before it; a recursion
    to any depth, until stop 22, could not be carried on.) ``carry_in``: filled at each
    block's first row with the y carried into the block (what a group carrying this one
    on starts from there; it may differ in the last bits from y at the row before).
    """
    n = len(a)
    if n == 0:
        return np.zeros(0)
    if restart is None:
        restart = a == 0
        restart[0] = True
    if carry0 is None:
        carry0 = np.zeros(n)
    if level == SCAN_LEVELS:
        return _sequential_scan(a, b, restart, carry0)
    row = np.arange(n)
    col = row - np.maximum.accumulate(np.where(restart, row, 0))  # row within its group
    col %= SCAN_BLOCK  # ... within its block
    first = np.flatnonzero(col == 0)  # each block's first row
    # the blocks side by side, a block a column (padded with y = 1*y + 0): block k's row c
    # at [c, k], so each step below is one contiguous row of every block
    at = col * len(first) + np.cumsum(col == 0) - 1
    del row, col
    A = np.ones((SCAN_BLOCK, len(first)))
    B = np.zeros((SCAN_BLOCK, len(first)))
    A.ravel()[at] = a
    B.ravel()[at] = b
    # a block's own scan, as if it started from y = 0, and the product of its a so far
    for c in range(1, SCAN_BLOCK):
        B[c] += A[c] * B[c - 1]
        A[c] *= A[c - 1]
    starts = restart[first]
    if len(first) == int(restart.sum()):  # every group fits in one block
        carry = np.where(starts, carry0[first], 0.0)
    else:
        # y at each block's end, over the blocks: the same recurrence, a group's first
        # block starting from the group's carry0
        y_end = _affine_scan(A[-1], B[-1], starts, carry0[first], level + 1)
        carry = np.zeros(len(first))  # y just before each block
        carry[1:] = y_end[:-1]
        carry[starts] = carry0[first][starts]
    if carry_in is not None:
        carry_in[first] = carry
    B += A * carry
    return B.ravel()[at]


def _sequential_scan(a, b, restart, carry0) -> np.ndarray:
    """_affine_scan's top level: y[i] = a[i] * y[i-1] + b[i] row after row (from carry0 at
    a group's first row). In Python floats, IEEE doubles as numpy's: a long flow's block
    ends are a chain that no array step shortens, and a step here costs ~0.1 us."""
    y = []
    prev = 0.0
    for ai, bi, r, c in zip(a.tolist(), b.tolist(), restart.tolist(), carry0.tolist()):
        prev = ai * (c if r else prev) + bi
        y.append(prev)
    return np.array(y, dtype=np.float64)


def rtt_estimator(group: np.ndarray, rtt_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SRTT and RTO after each RTT sample, per group, as Linux computes them.

    tcp_rtt_estimator (net/ipv4/tcp_input.c, after RFC 6298 §2 and Jacobson '88):
    srtt += (m - srtt)/8; mdev (4 x mean deviation) += (|m - srtt| - mdev/4), with the gain
    cut to 1/32 when the sample is below srtt (the Eifel-like damping); the first sample
    sets srtt = m, mdev = 2m. tcp_set_rto: RTO = srtt + rttvar, where rttvar never drops
    below TCP_RTO_MIN (mdev_max is reset to tcp_rto_min_us each RTT), bounded by TCP_RTO_MAX.
    ``group`` must be sorted (samples of a group contiguous, in time order).
    """
    n = len(rtt_us)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    m = rtt_us.astype(np.float64)
    start = np.ones(n, dtype=bool)
    start[1:] = group[1:] != group[:-1]
    srtt = _affine_scan(np.where(start, 0.0, 7.0 / 8.0), np.where(start, m, m / 8.0))
    aerr = np.abs(m - _before(srtt, start, None))
    # mdev <= max(2*m0, 4*max|err|): when that stays under TCP_RTO_MIN, rttvar is the
    # floor itself and the two mdev passes can be skipped (the common short-RTT case).
    if (
        max(float((2.0 * m[start]).max()), float(4.0 * aerr[~start].max(initial=0.0)))
        < TCP_RTO_MIN_US
    ):
        return srtt, np.minimum(srtt + TCP_RTO_MIN_US, TCP_RTO_MAX_US)
    return srtt, rtt_state(group, rtt_us, srtt=srtt)["rto"]


def _before(values: np.ndarray, start: np.ndarray, seed: np.ndarray | None) -> np.ndarray:
    """Each row's previous value in its group: 0 (or the group's seed) at its first."""
    prev = np.zeros(len(values))
    prev[1:] = values[:-1]
    prev[start] = 0.0 if seed is None else seed[start]
    return prev


def rtt_state(
    group: np.ndarray,
    rtt_us: np.ndarray,
    seed: dict[str, np.ndarray] | None = None,
    srtt: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """rtt_estimator's SRTT and RTO, with the two mdev passes (``mdev1``, ``mdev2``) always
    run, and for each of the three scans the y carried into each block (``cin_`` + name,
    _affine_scan's carry_in). ``srtt``: the SRTT scan's values where the caller has them
    (rtt_estimator; its carries are then not given). ``seed``: where ``seed["on"]`` at a
    group's first sample, the group carries on a longer one from the top block of
    _affine_scan's that it begins there: the scans from the longer one's carry into it
    (``srtt``, ``mdev1``, ``mdev2``), the error and the damping from its values at the
    sample before (``srtt_prev``, ``mdev1_prev``); the group's values are then the longer
    one's, to the last bit (analyze/windows.py)."""
    m = rtt_us.astype(np.float64)
    n = len(m)
    first = np.ones(n, dtype=bool)
    first[1:] = group[1:] != group[:-1]
    on = np.zeros(n, dtype=bool) if seed is None else seed["on"] & first
    start = first & ~on  # the flow's first sample: srtt = m, mdev = 2m
    out: dict[str, np.ndarray] = {}

    def scan(a, b, name):
        carry = None if seed is None else np.where(on, seed[name], 0.0)
        out["cin_" + name] = np.full(n, np.nan)
        a = np.where(start, 0.0, a)
        return _affine_scan(a, np.where(start, b[0], b[1]), first, carry, 0, out["cin_" + name])

    def before(values, name):
        return _before(values, first, None if seed is None else np.where(on, seed[name], 0.0))

    out["srtt"] = srtt = scan(7.0 / 8.0, (m, m / 8.0), "srtt") if srtt is None else srtt
    err = m - before(srtt, "srtt_prev")
    aerr = np.abs(err)
    # mdev: linearise the branch (which depends on mdev itself) with one refinement pass.
    out["mdev1"] = mdev1 = scan(0.75, (2.0 * m, aerr), "mdev1")
    damp = (err < 0) & (aerr > before(mdev1, "mdev1_prev") / 4.0) & ~start
    b2 = (2.0 * m, np.where(damp, aerr / 8.0, aerr))
    out["mdev2"] = mdev2 = scan(np.where(damp, 31.0 / 32.0, 0.75), b2, "mdev2")
    out["rto"] = np.minimum(srtt + np.maximum(mdev2, TCP_RTO_MIN_US), TCP_RTO_MAX_US)
    return out


class _FlowSearch:
    """GroupedSearch over rows kept grouped by flow, the groups given by their bounds
    (``start[f]``, ``end[f]``: the rows of flow f) instead of a flow number per row: 8 bytes
    a row less over every data segment. ``val`` (sorted within each flow) may be int32
    (packet row numbers: a capture stays below 2**31 rows); queries are cast to its dtype,
    so searching a flow's slice copies none of it. With many flows queried, one search
    over band keys (a GroupedSearch, int64), built on first use."""

    def __init__(self, start: np.ndarray, end: np.ndarray, val: np.ndarray):
        self.start, self.end, self.val = start, end, val
        self._wide: GroupedSearch | None = None

    def __call__(self, q_flow: np.ndarray, q_val: np.ndarray, side: Side) -> np.ndarray:
        groups = np.flatnonzero(np.bincount(q_flow)) if len(q_flow) else q_flow
        if len(groups) > GroupedSearch.MAX_SLICES:
            if self._wide is None:
                grp = np.repeat(np.arange(len(self.start)), self.end - self.start)
                self._wide = GroupedSearch(grp, self.val.astype(np.int64, copy=False))
            return self._wide(q_flow, q_val.astype(np.int64, copy=False), side)
        out = np.empty(len(q_flow), dtype=np.int64)
        for g in groups.tolist():
            a, b = int(self.start[g]), int(self.end[g])
            q = np.flatnonzero(q_flow == g) if len(groups) > 1 else slice(None)
            v = np.clip(q_val[q], -_VMAX, _VMAX).astype(self.val.dtype)  # as pair_key clips
            out[q] = a + np.searchsorted(self.val[a:b], v, side=side)
        return out

    def holds(self, p: np.ndarray, f: np.ndarray) -> np.ndarray:
        """Is row p one of flow f's?"""
        return (p >= self.start[f]) & (p < self.end[f])


def _bounds(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's rows [start, end) of rows grouped in group order, from its row count."""
    end = np.cumsum(counts)
    return end - counts, end


def _kept(sel, start, end, keep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``sel`` (grouped by flow: ``start``, ``end``) where ``keep``, and their
    bounds."""
    before = np.zeros(len(keep) + 1, dtype=np.int32)  # kept rows before each one (< 2**31)
    np.cumsum(keep, out=before[1:])
    return sel[keep], *_bounds(before[end] - before[start])


def _ordered_in_bounds(val: np.ndarray, start: np.ndarray) -> bool:
    """Does ``val`` never decrease inside a group (groups given by their first rows,
    ``start``)? table.ordered_in_groups, for rows whose group numbers are not built."""
    down = np.flatnonzero(val[1:] < val[:-1]) + 1  # rows below the one before: few
    # each where a group starts (``start`` is sorted: searched, not np.isin, whose
    # np.unique imports numpy.ma, ~15 ms in every forked worker)
    at = np.minimum(np.searchsorted(start, down), max(len(start) - 1, 0))
    return not len(down) or bool(len(start) and (start[at] == down).all())


class _Originals:
    """First transmissions of the data flows: by flow then sequence (``sel``, ``seq``;
    ``by_seq`` searches by sequence, ``seq_at``, ``end_at``, ``ts_at`` read them), and
    those sent in order (new data at snd_nxt: all but the out-of-order ones) by flow then
    capture order (``f_sel``; ``by_frame`` searches by :meth:`frame_key`).

    Only the packet rows (int32) and the sequence numbers searched are held (per data
    segment, 12 bytes, 16 with out-of-order ones): the rest is read off the packet table
    at the rows a query finds. In a capture in frame order (``sorted_cap``) the row number
    orders as the frame does, so the rows themselves are the frame keys."""

    def __init__(self, packets, space, tx: tuple, is_rtx_pkt, is_ooo_pkt, sorted_cap: bool):
        self._ts, self._seq, self._end = packets["ts_ns"], space["seq_abs"], space["end_abs"]
        self._frame = None if sorted_cap else packets["frame"]
        tx_sel, tx_start, tx_end = tx
        sel, start, end = _kept(tx_sel, tx_start, tx_end, ~is_rtx_pkt[tx_sel])
        seq = self._seq[sel]
        in_order = ~is_ooo_pkt[sel]
        if in_order.all() and _ordered_in_bounds(seq, start):
            # capture order is sequence order (no out-of-order original, and no re-cut
            # segment that begins below the one before it ended): one set serves both
            self.sel, self.seq, self.f_sel, f_start, f_end = sel, seq, sel, start, end
        else:
            flow = np.repeat(np.arange(len(start), dtype=np.int32), end - start)
            o = np.lexsort((seq, flow))
            del flow
            self.sel, self.seq = sel[o], seq[o]
            del o, seq
            self.f_sel, f_start, f_end = _kept(sel, start, end, in_order)
        self.by_seq = _FlowSearch(start, end, self.seq)
        self.by_frame = _FlowSearch(f_start, f_end, self.frame_key(self.f_sel))

    def frame_key(self, rows: np.ndarray) -> np.ndarray:
        """What ``by_frame`` searches for packet ``rows``: their frames, or the rows."""
        return rows if self._frame is None else self._frame[rows]

    @staticmethod
    def _at(col, sel, p, ok, fill) -> np.ndarray:
        """col (a packet column) at the rows sel[p] where ``ok``, ``fill`` elsewhere."""
        if not len(sel):
            return np.full(len(p), fill)
        return np.where(ok, col[sel[np.clip(p, 0, len(sel) - 1)]], fill)

    def seq_at(self, p, ok, fill) -> np.ndarray:
        return gather(self.seq, p, ok, fill)

    def end_at(self, p, ok, fill) -> np.ndarray:
        return self._at(self._end, self.sel, p, ok, fill)

    def ts_at(self, p, ok, fill) -> np.ndarray:
        return self._at(self._ts, self.sel, p, ok, fill)

    def f_at(self, col, nx, ok, fill) -> np.ndarray:
        """col (a packet column) of the in-order first transmission at ``f_sel`` index nx."""
        return self._at(col, self.f_sel, nx, ok, fill)

    def f_seq_at(self, nx, ok, fill) -> np.ndarray:
        return self.f_at(self._seq, nx, ok, fill)

    def f_end_at(self, nx, ok, fill) -> np.ndarray:
        return self.f_at(self._end, nx, ok, fill)

    def segments(self, mss: np.ndarray) -> np.ndarray:
        """Running count, over the rows of ``sel``, of their segments in MSS units
        (tcp_skb_pcount: ceil(length / mss), at least 1), computed in place."""
        pc = self._end[self.sel]
        pc -= self.seq
        start, end = self.by_seq.start, self.by_seq.end
        m = np.repeat(mss[: len(start)].astype(np.int32), end - start)  # an MSS < 2**16
        np.negative(pc, out=pc)
        np.floor_divide(pc, m, out=pc)
        del m
        np.negative(pc, out=pc)
        np.maximum(pc, 1, out=pc)
        return np.cumsum(pc, out=pc)

    @property
    def ts(self) -> np.ndarray:
        """Send time of every first transmission (built on each read: analyze/causes.py
        reads it once)."""
        return self._ts[self.sel]

    def next_sent(self, f: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, index in ``f_sel``) of flow f's first in-order transmission after
        packet ``rows``."""
        nx = self.by_frame(f, self.frame_key(rows), "right")
        return self.by_frame.holds(nx, f), nx

    def containing(self, f: np.ndarray, byte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, index) of the first transmission of flow f holding sequence ``byte``."""
        p = self.by_seq(f, byte, "right") - 1
        ok = self.by_seq.holds(p, f)
        ok &= (self.seq_at(p, ok, 0) <= byte) & (self.end_at(p, ok, _NONE) > byte)
        return ok, np.clip(p, 0, None)


# --- the classifier ----------------------------------------------------------------------


def classify_table(
    packets: dict[str, np.ndarray],
    flow_id: np.ndarray,
    flows: Table,
    retrans: Table,
    *,
    space: dict[str, np.ndarray] | None = None,
    notes: dict | None = None,
    too_big: list[dict] | None = None,
    seam=None,
) -> Table:
    """``retrans`` (a retransmission_table) plus the kernel reason and the evidence for it
    (CLASSIFY_COLUMNS; the optional ones Nullable). ``notes``, when given, receives what
    the capture showed beside the rows (``acks_lost_after_capture``). ``too_big``: the
    capture's ICMP too-big messages (CaptureMeta.icmp_too_big). ``seam``: the packets are
    a window of a longer shard (analyze/windows.Seam), whose flows' SRTT it carries on."""
    out = dict(retrans)
    if len(out["pkt"]) == 0 and seam is None:
        return _no_rows(out)
    if space is None:
        space = sequence_space(packets, flow_id, flows)
    n_flows = len(flows["flow_id"])
    r_pkt, r_flow, r_ts, r_frame = out["pkt"], out["flow_id"], out["ts_ns"], out["frame"]
    r_probe = present(out["probe"])
    # Out-of-order originals (retrans.resent_or_reordered) are first transmissions.
    r_ooo, r_dup = _row_mask(out, "out_of_order"), _row_mask(out, "duplicate")
    r_skip = r_probe | r_ooo | r_dup
    data_flows = _data_flows(packets, flow_id, r_flow, n_flows, seam)
    frame = packets["frame"]
    sorted_cap = len(frame) < 2 or bool(np.all(frame[1:] > frame[:-1]))

    # The receiver's ACKs of the flows with retransmissions, and their first transmissions.
    not_rst = (packets["flags"] & TCP_RST) == 0
    ack_sel = _ack_rows(packets, space, flow_id, flows, data_flows, sorted_cap, not_rst)
    want = np.zeros(n_flows, dtype=bool)
    want[data_flows] = True
    shift_us = _remote_shift_us(packets, flow_id, flows, want, space, r_pkt)
    t_cap0 = int(packets["ts_ns"].min())  # the capture's first packet: every shard has it
    ack_sel, lost_rows, lost_at = _received_acks(
        packets, space, flows, flow_id, ack_sel, out, ~r_skip, shift_us, t_cap0
    )
    if notes is not None:  # lost_acks: what analyze/windows.py counts and checks
        notes.update(acks_lost_after_capture=len(lost_rows), lost_acks=(lost_rows, lost_at))
    a_flow = flows["rev_flow_id"][flow_id[ack_sel]]
    una_init = _first_seq(space, flow_id, flows, frame, sorted_cap)
    A = _ack_table(packets, space, ack_sel, a_flow, una_init)
    tx = _tx_rows(packets, space, flow_id, n_flows, data_flows, sorted_cap, not_rst)
    is_rtx_pkt, is_ooo_pkt = (_marked(len(flow_id), r_pkt[m]) for m in (~r_ooo, r_ooo))
    origs = _Originals(packets, space, tx, is_rtx_pkt, is_ooo_pkt, sorted_cap)
    del is_ooo_pkt
    mss = _flow_mss(packets, flows, tx)
    if notes is not None:  # what analyze/windows.py checks alike in every window
        notes["flow_facts"] = {"mss": mss, "shift_us": shift_us, "want": want}
    _sack_tags(A, a_flow, origs, mss)
    _ack_news(A, a_flow, origs, frame)

    # RTT samples -> SRTT / RTO (tcp_ack_update_rtt); those in force at each retransmission.
    acks = (A, a_flow, origs, out)
    s_ok, srtt_us, rto_us = _rtt_at_rows(
        packets, space, flow_id, flows, acks, (r_ooo | r_dup, una_init, shift_us), seam
    )
    if not len(r_pkt):  # a window with no retransmission took its RTT samples: done
        return _no_rows(out)

    # Per retransmission: its clock, bursts, spuriousness, snd_nxt and packets_out.
    since_last_send, prev_tx_frame = _since_last_send(packets, tx, sorted_cap, out)
    a_start, a_end = group_bounds(a_flow, n_flows)
    flows_in = _flow_inputs(
        packets, space, flows, flow_id, tx, is_rtx_pkt, A, a_start, a_end, origs
    )
    del tx, is_rtx_pkt
    k_last, k_ok, since_last_ack = _last_ack(A, a_flow, shift_us, r_flow, r_frame, r_ts, t_cap0)
    order_r, burst_of = _bursts(r_flow, r_frame, k_last, since_last_send, prev_tx_frame, r_skip)
    dsack_ts = _dsack_times(A, a_flow, out)
    ts_echo = _ts_echo_spurious(packets, A, a_flow, out, flows["ts_ok"].astype(bool))
    snd_nxt_r = _snd_nxt_at(out, origs, ~flows["syn_seen"].astype(bool))
    una_at = np.where(k_ok, gather(A["una"], k_last, k_ok, 0), una_init[r_flow])
    pkts_out = _packets_out(origs, mss, r_flow, una_at, snd_nxt_r)
    # When the segment at snd_una last left (its first transmission here; the replay adds
    # its retransmissions): the RTO runs from it or from the last ACK that advanced.
    p_ok, p = origs.containing(r_flow, una_at)

    rows_in = {
        "seq": out["seq_abs"],
        "end": out["end_abs"],
        "ts": r_ts,
        "flags": packets["flags"][r_pkt].astype(np.int64),
        "snd_nxt": snd_nxt_r,
        "tsval": packets["tsval"][r_pkt].astype(np.int64),
        "has_ts": packets["opt_ts"][r_pkt].astype(bool),
        "k": k_last,
        "sla": since_last_ack,
        "srtt": srtt_us,
        "rto": rto_us,
        "probe": r_skip,
        "dsack": dsack_ts,
        "pkts_out": pkts_out,
        "head_ts": origs.ts_at(p, p_ok, _NONE),
        "sls": since_last_send,
        "cut": _cut_short(out, origs),
        "orig_ts": filled(out["orig_ts_ns"], _NONE),
        "gap_below": _unseen_below(origs, r_flow, una_at, out["seq_abs"], p_ok),
        "spans": _spans_originals(origs, r_flow, out["seq_abs"], out["end_abs"]),
    }
    flows_in.update(mss=mss, una0=una_init, trip_ns=shift_us * 1000)
    bursts = (rows_in, flows_in, order_r, burst_of, r_flow, r_frame)
    res = _replayed(bursts, (A, a_flow, shift_us, t_cap0), (flows, too_big, flow_id, space, seam))

    _verdict_columns(out, res, ts_echo, dsack_ts, r_skip)
    out["since_last_send_ns"] = nullable(since_last_send, since_last_send != _NONE)
    out["since_last_ack_ns"] = nullable(since_last_ack, k_ok)
    out["srtt_us"] = nullable(np.round(srtt_us).astype(np.int64), s_ok)
    ctx = dict(burst_of=burst_of, A=A, a_flow=a_flow, mss=mss, origs=origs, lost_at=lost_at)
    ctx.update(pkt_frame=frame, pkt_ts=packets["ts_ns"], family=flows["family"])
    _replay_columns(out, res, A, r_ts, r_skip, {**ctx, "shift_ns": shift_us * 1000})
    out["burst"] = burst_of
    # A flow with no ACK in the capture was replayed by timing alone (sender.py).
    out["evidence"] = np.where(a_start[r_flow] >= a_end[r_flow], "timing_only", "acks").astype(
        object
    )
    return out


def _marked(n: int, rows: np.ndarray) -> np.ndarray:
    """A mask of ``n`` rows, True at ``rows``."""
    out = np.zeros(n, dtype=bool)
    out[rows] = True
    return out


def _replayed(bursts: tuple, acks: tuple, shard: tuple) -> dict[str, list]:
    """sender.replay of the bursts, and in a window (``seam``) its state at the cuts,
    by flow key, into Seam.at_cut (windows.py compares them)."""
    rows_in, flows_in, order_r, burst_of, r_flow, r_frame = bursts
    A, a_flow, _, t_cap0 = acks
    flows, too_big, flow_id, space, seam = shard
    A["sample_ff"] = last_where(A["rtt_sample"], a_flow)
    adv_ff, too_big_f = last_where(A["adv"], a_flow), _too_big_by_flow(flows, too_big or [])
    cuts = _cuts(seam, flow_id, flows["rev_flow_id"], space, acks)
    res = replay(
        rows_in, flows_in, A, adv_ff, order_r, burst_of, r_flow, t_cap0, too_big_f, cuts, r_frame
    )
    if cuts:
        key = flows["first_frame"].tolist()
        seam.at_cut = [{key[f]: v for f, v in c.items()} for c in res["at_cut"]]
    return res


def _cuts(seam, flow_id, rev_flow_id, space, acks) -> list[tuple[int, list, list, list]]:
    """The cuts at which a window's replay gives its state (Seam.cuts: each one's frame,
    time, and the rows of the table before which what a flow sent was sent before the
    later window), with each flow's most data sent in those rows, its last ACK before the
    cut that every burst after it has applied (by frame, and for a sender away from the
    capture point also by when the ACKs reached it: _last_ack, no later than the frame's
    ACK), and whether it or its reverse flow has rows in the later window."""
    if seam is None or not seam.cuts:
        return []
    A, a_flow, shift_us, t_cap0 = acks
    n_flows = len(shift_us)
    fl = np.arange(n_flows)
    rev = np.clip(rev_flow_id, 0, None)
    out = []
    for frame, ts_ns, before in seam.cuts:
        sent = np.full(n_flows, _NONE, dtype=np.int64)
        np.maximum.at(sent, flow_id[:before], space["end_abs"][:before])
        at, ts = np.full(n_flows, frame, dtype=np.int64), np.full(n_flows, ts_ns)
        k, _, _ = _last_ack(A, a_flow, np.zeros_like(shift_us), fl, at, ts, t_cap0)  # by frame
        k_time, _, _ = _last_ack(A, a_flow, shift_us, fl, at, ts, t_cap0)
        # a flow with no row in the later window (nor its reverse flow) has no future
        later = np.zeros(n_flows, dtype=bool)
        later[flow_id[before:]] = True
        later |= (rev_flow_id >= 0) & later[rev]
        out.append((frame, sent.tolist(), np.minimum(k, k_time).tolist(), later.tolist()))
    return out


def _flow_inputs(
    packets: dict[str, np.ndarray],
    space: dict[str, np.ndarray],
    flows: Table,
    flow_id: np.ndarray,
    tx: tuple[np.ndarray, np.ndarray, np.ndarray],
    is_rtx_pkt: np.ndarray,
    A: dict[str, np.ndarray],
    a_start: np.ndarray,
    a_end: np.ndarray,
    origs: _Originals,
) -> dict[str, np.ndarray]:
    """The replay's per-flow inputs but the MSS and the initial snd_una: SACK and MSS
    from the handshake, each flow's ACK rows, the capture-start timeout and the path."""
    return {
        "sack_ok": flows["sack_ok"].astype(bool),
        "mss_known": flows["handshake_seen"].astype(bool),
        "a_start": a_start,
        "a_end": a_end,
        **_capture_start_timeout(packets, space, flows, tx, is_rtx_pkt, A, a_start, a_end, origs),
        **_path_facts(packets, space, flows, flow_id),
    }


def _verdict_columns(
    out: Table,
    res: dict[str, list],
    ts_echo: np.ndarray,
    dsack_ts: np.ndarray,
    r_skip: np.ndarray,
) -> None:
    """kind_pcap, family and spuriousness (D-SACK before the timestamp echo: RFC 2883 is
    the stronger evidence) into ``out``; probes and first transmissions are never spurious."""
    r_pkt = out["pkt"]
    out["kind_pcap"] = np.array(res["kind"], dtype=object)
    out["family"] = np.array([FAMILY_OF_KIND[k] for k in res["kind"]], dtype=object)
    spurious_by = np.full(len(r_pkt), None, dtype=object)
    spurious_by[ts_echo] = "ts_echo"
    spurious_by[dsack_ts < _INF] = "dsack"
    spurious_by[r_skip] = None
    out["spurious"] = Nullable(spurious_by != None, np.ones(len(r_pkt), dtype=bool))  # noqa: E711
    out["spurious_by"] = spurious_by


def _row_mask(out: Table, column: str) -> np.ndarray:
    """A boolean column of the retransmission table, all False when it is absent."""
    if column in out:
        return np.asarray(out[column], dtype=bool)
    return np.zeros(len(out["pkt"]), dtype=bool)


def _no_rows(out: Table) -> Table:
    """classify_table's columns for a table of no rows."""
    for c in CLASSIFY_COLUMNS:
        out[c] = np.zeros(0, dtype=object)
    return out


def _data_flows(packets, flow_id, r_flow, n_flows: int, seam) -> np.ndarray:
    """The flows with retransmissions (whose ACKs, first transmissions and RTT samples
    classify_table looks at); in a window of a longer shard (``seam``), every flow that
    sends data, retransmissions here or not, so that the next window can carry its SRTT
    on (analyze/windows.Seam)."""
    has = np.bincount(r_flow, minlength=n_flows) > 0
    if seam is not None:
        has |= count_where(flow_id, packets["payload_len"] > 0, n_flows) > 0
    return np.flatnonzero(has)


def _rtt_at_rows(
    packets: dict[str, np.ndarray],
    space: dict[str, np.ndarray],
    flow_id: np.ndarray,
    flows: Table,
    acks: tuple,
    more: tuple[np.ndarray, np.ndarray, np.ndarray],
    seam=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The SRTT and RTO in force at each retransmission (tcp_ack_update_rtt's samples up
    to its frame): (has a sample, srtt_us, rto_us). ``acks``: (A, a_flow, origs, out) as
    classify_table has them; ``more``: (not_resent, una_init, shift_us); ``not_resent``:
    rows that are not re-sends (out of order, duplicates), left out of the ranges Karn's
    rule keeps from sampling (RFC 6298 §3). ``seam``: as classify_table's."""
    A, a_flow, origs, out = acks
    not_resent, una_init, shift_us = more
    if seam is not None:
        seam.flow_keys = flows["first_frame"]
    r_flow, r_frame = out["flow_id"], out["frame"]
    resent = (
        out
        if not not_resent.any()
        else {k: out[k][~not_resent] for k in ("flow_id", "seq_abs", "end_abs")}
    )
    s_flow, s_frame, s_srtt, s_rto = _rtt_samples(
        packets,
        space,
        A,
        a_flow,
        origs,
        resent,
        flow_id,
        flows["ts_ok"].astype(bool),
        una_init,
        shift_us,
        seam,
    )
    s_pos = pair_search(s_flow, s_frame, r_flow, r_frame, side="left") - 1
    s_ok = (s_pos >= 0) & (gather(s_flow, s_pos, s_pos >= 0, -1) == r_flow)
    if seam is not None:
        seam.check_rows(r_flow, r_frame, s_pos, s_ok)
    srtt_us = gather(s_srtt, s_pos, s_ok, 0.0).astype(np.float64)
    # Before the first sample: TCP_TIMEOUT_INIT from the handshake (RFC 6298 §2.1); a flow
    # the capture joined mid-connection had its samples before, and an RTO of at least
    # TCP_RTO_MIN (tcp_set_rto's floor), which is taken.
    rto0 = np.where(flows["syn_seen"].astype(bool), TCP_TIMEOUT_INIT_US, TCP_RTO_MIN_US)
    rto_us = np.where(s_ok, gather(s_rto, s_pos, s_ok, 0.0), rto0[r_flow]).astype(np.float64)
    return s_ok, srtt_us, rto_us


def _replay_columns(
    out: Table,
    res: dict[str, list],
    A: dict[str, np.ndarray],
    r_ts: np.ndarray,
    r_probe: np.ndarray,
    cause_ctx: dict,
) -> None:
    """The replay's verdicts (sender.replay) as output columns, and the cause of each
    retransmission in words (analyze/causes.py: the Verdicts' evidence and ``cause_ctx``,
    the bulk evidence it cites)."""
    out["expected_pto_ns"] = nullable(np.array(res["pto_ns"], dtype=np.int64), ~r_probe)
    out["expected_rto_ns"] = nullable(np.array(res["rto_ns"], dtype=np.int64), ~r_probe)
    bo = np.array(res["backoff"], dtype=np.int64)
    out["backoff"] = nullable(bo, bo >= 0)
    trig = np.array(res["trigger"], dtype=np.int64)
    out["trigger_frame"] = nullable(gather(A["frame"], trig, trig >= 0, 0), trig >= 0)
    out["since_trigger_ns"] = nullable(r_ts - gather(A["ts"], trig, trig >= 0, 0), trig >= 0)
    mtu = np.array(res["mtu"], dtype=np.int64)
    out["pmtu_mtu"] = nullable(mtu, mtu > 0)
    out["ca_state"] = np.array([CA_STATES.get(s) for s in res["ca"]], dtype=object)
    out["clock"] = np.array(res["clock"], dtype=object)
    out["position"] = np.array(res["position"], dtype=object)
    out.update(cause_columns(out, res["verdicts"], cause_ctx))


#: An ACK this close before a retransmission, in the sender's time, may have raced the
#: timer that sent it, or waited in the socket's backlog: not taken as lost.
ACK_RACE_NS = 2 * ACK_CLOCK_NS


def _received_acks(
    packets,
    space,
    flows,
    flow_id,
    ack_sel,
    rtx: Table,
    real: np.ndarray,
    shift_us: np.ndarray,
    t_cap0: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ACKs of ``ack_sel`` (grouped by the flow they acknowledge, capture order) that
    reached the sender, and those that did not.

    The capture point may lie before the sender on the ACKs' way (the receiver's host, a
    tap on the path, or the sender's host before its firewall): an ACK seen there may
    never arrive. A sender resends only bytes at or above snd_una (tcp_retransmit_skb
    trims what is acknowledged), so a retransmission starting below the cumulative ACK of
    an ACK that should have reached the sender before it left says that ACK, and every ACK
    since that covered those bytes, did not arrive (lost after the capture point). The
    replay then runs without them. ``real``: the rows of ``rtx`` that are retransmissions
    (not probes: a keep-alive sits below snd_una by design). Also per row of ``rtx``, the
    packet row of the first lost ACK that covered it (-1: none): the cause it cites.
    ``t_cap0``: the capture's first packet's time, which every shard has (from it the
    times are cut to µs, as the shift is: the same cut in any shard)."""
    n = len(ack_sel)
    lost_at = np.full(len(real), -1, dtype=np.int64)
    if not n or not real.any():
        return ack_sel, ack_sel[:0], lost_at
    a_flow = flows["rev_flow_id"][flow_id[ack_sel]]
    cum = seg_cummax(space["ack_abs"][ack_sel], group_numbers(a_flow))
    r_flow, r_seq, r_ts = rtx["flow_id"][real], rtx["seq_abs"][real], rtx["ts_ns"][real]
    # In the sender's time, the ACK arrived a trip after it passed here, and the
    # retransmission left a trip before it passes here (classify._remote_shift_us).
    arrive_by = r_ts - shift_us[r_flow] * 1000 - ACK_RACE_NS
    hi = (
        GroupedSearch(a_flow, _running_us(packets["ts_ns"][ack_sel], a_flow, t_cap0))(
            r_flow, (arrive_by - t_cap0) // 1000, "right"
        )
        - 1
    )
    lo = GroupedSearch(a_flow, cum)(r_flow, r_seq, "right")
    ok = (hi >= lo) & (lo < n) & (gather(a_flow, lo, lo < n, -1) == r_flow)
    if not ok.any():
        return ack_sel, ack_sel[:0], lost_at
    lost_at[np.flatnonzero(real)[ok]] = ack_sel[lo[ok]]
    edges = np.zeros(n + 1, dtype=np.int64)
    np.add.at(edges, lo[ok], 1)
    np.add.at(edges, hi[ok] + 1, -1)
    lost = np.cumsum(edges[:-1]) > 0
    return ack_sel[~lost], ack_sel[lost], lost_at


def _cut_short(rtx: Table, origs: _Originals) -> np.ndarray:
    """Per retransmission: does it start where the first transmission of its first byte
    started, and end before that one ended (resent at a smaller MSS)?"""
    ok, p = origs.containing(rtx["flow_id"], rtx["seq_abs"])
    return (
        ok
        & (origs.seq_at(p, ok, _NONE) == rtx["seq_abs"])
        & (origs.end_at(p, ok, _NONE) > rtx["end_abs"])
    )


def _too_big_by_flow(flows: Table, messages: list[dict]) -> dict[int, list[tuple[int, int, int]]]:
    """The ICMP too-big messages by the flow whose segment each quotes (its sender is the
    quoted source; on a 4-tuple reused, the connection whose packets surround the
    message, else the last before it): {flow: [(ts_ns, mtu, frame), ...]} in time order."""
    if not messages:
        return {}
    key = ("saddr_hi", "saddr_lo", "daddr_hi", "daddr_lo", "sport", "dport")
    by_tuple: dict[tuple, list[int]] = {}
    cols = [flows[k].tolist() for k in key]
    first, last = flows["first_ts_ns"].tolist(), flows["last_ts_ns"].tolist()
    for f, t in enumerate(zip(*cols)):
        by_tuple.setdefault(t, []).append(f)
    out: dict[int, list[tuple[int, int, int]]] = {}
    for m in messages:
        cands = by_tuple.get(tuple(int(m[k]) for k in key), [])
        before = [f for f in cands if first[f] <= m["ts_ns"]]
        if not before:
            continue
        inside = [f for f in before if m["ts_ns"] <= last[f]]
        f = (inside or before)[-1]
        out.setdefault(f, []).append((int(m["ts_ns"]), int(m["mtu"]), int(m["frame"])))
    for v in out.values():
        v.sort()
    return out


def _path_facts(packets, space, flows, flow_id) -> dict[str, np.ndarray]:
    """Per flow: the end of the data its SYN carried (TCP Fast Open; _NONE: none), and the
    bytes of headers around each segment's payload (IPv4 20 / IPv6 40, TCP 20, the
    timestamps option 12: MSS + these = the path MTU, RFC 879)."""
    n_flows = len(flows["flow_id"])
    syn_end = np.full(n_flows, _NONE, dtype=np.int64)
    syn = np.flatnonzero(
        ((packets["flags"] & TCP_SYN) != 0)
        & ((packets["flags"] & TCP_ACK) == 0)
        & (packets["payload_len"] > 0)
    )
    if len(syn):
        np.maximum.at(syn_end, flow_id[syn], space["end_abs"][syn])
    hdr = np.where(flows["family"] == 6, 60, 40) + np.where(flows["ts_ok"], 12, 0)
    return {"syn_end": syn_end, "hdr_bytes": hdr.astype(np.int64)}


def _capture_start_timeout(
    packets, space, flows, tx, is_rtx_pkt, A, a_start, a_end, origs
) -> dict[str, np.ndarray]:
    """Per flow, whether the capture began in a Loss episode whose timeout it did not show
    as a retransmission: ``loss0_nxt`` (its high_seq, _NONE: no) and the segment the
    timeout resent (``loss0_seq``, ``loss0_end``, ``loss0_ts``).

    A flow whose handshake the capture missed, whose first data segment P0 went out
    before any ACK of the receiver was seen and alone until the first one (tcp_enter_loss
    leaves cwnd at one segment: the timeout resends one and waits), at the head (that ACK
    moves snd_una past its start) while data beyond it was outstanding (that ACK holds
    data above it, or the next new data starts above it): P0 was below snd_nxt. The capture
    cannot show it was resent (frames the capture dropped could have carried the data
    above it), so it is not reported; but a capture that starts at a random moment far
    more often opens in the silence before a timeout than in the microseconds between an
    ACK and a fast retransmit, and the resends that follow are the Loss state's slow start
    (tcp_enter_loss), not fast recovery. The replay starts in that state."""
    n_flows = len(flows["flow_id"])
    out = {
        "loss0_nxt": np.full(n_flows, _NONE, dtype=np.int64),
        "loss0_seq": np.zeros(n_flows, dtype=np.int64),
        "loss0_end": np.zeros(n_flows, dtype=np.int64),
        "loss0_ts": np.zeros(n_flows, dtype=np.int64),
    }
    tx_sel, tx_start, tx_end = tx
    if not len(tx_sel):
        return out
    pf = np.flatnonzero(tx_end > tx_start)
    head = tx_start[pf]
    p0 = tx_sel[head]
    nxt = head + 1  # the flow's next transmission, if any
    nxt_ok = nxt < tx_end[pf]
    nxt_frame = np.where(
        nxt_ok, packets["frame"][tx_sel[np.clip(nxt, 0, len(tx_sel) - 1)]], np.iinfo(np.int64).max
    )
    k1 = a_start[pf]
    keep = ~flows["syn_seen"].astype(bool)[pf] & ~is_rtx_pkt[p0] & (k1 < a_end[pf])
    k1c = np.clip(k1, 0, max(len(A["frame"]) - 1, 0))
    k1_frame = gather(A["frame"], k1c, keep, -1)
    keep &= (k1_frame > packets["frame"][p0]) & (nxt_frame > k1_frame)
    p0, pf, k1c = p0[keep], pf[keep], k1c[keep]
    seq, end = space["seq_abs"][p0], space["end_abs"][p0]
    una1, sack1 = A["una"][k1c], A["sack_hi"][k1c]
    nx_ok, nx = origs.next_sent(pf, p0)
    nx_seq = origs.f_seq_at(nx, nx_ok, _NONE)
    high = np.maximum.reduce([end, una1, sack1, nx_seq])
    hit = (una1 > seq) & (high > end)
    out["loss0_nxt"][pf[hit]] = high[hit]
    out["loss0_seq"][pf[hit]] = seq[hit]
    out["loss0_end"][pf[hit]] = end[hit]
    out["loss0_ts"][pf[hit]] = packets["ts_ns"][p0[hit]]
    return out


def _ack_rows(packets, space, flow_id, flows, data_flows, sorted_cap, not_rst) -> np.ndarray:
    """Rows of the ACKs (``not_rst``) sent by the reverse flows of ``data_flows``, grouped
    by the flow they acknowledge, each in capture order."""
    n_flows = len(flows["flow_id"])
    rev_of = flows["rev_flow_id"]
    want_rev = np.zeros(n_flows, dtype=bool)
    rv = rev_of[data_flows]
    want_rev[rv[rv >= 0]] = True
    ack_sel = np.flatnonzero(space["ack_flag"] & want_rev[flow_id] & not_rst)
    if not sorted_cap:
        ack_sel = ack_sel[np.argsort(packets["frame"][ack_sel], kind="stable")]
    return by_group(ack_sel, rev_of[flow_id[ack_sel]])


def _tx_rows(
    packets, space, flow_id, n_flows, data_flows, sorted_cap, not_rst
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the data segments (``not_rst``: first transmissions and retransmissions) of
    ``data_flows``, grouped by flow, each in capture order, and each flow's [start, end)
    in them. Rows are int32 (a capture stays below 2**31 rows): these span nearly every
    packet, and half the bytes is what classify_table's peak is made of."""
    want = np.zeros(n_flows, dtype=bool)
    want[data_flows] = True
    tx_sel = np.flatnonzero((space["seg_len"] > 0) & want[flow_id] & not_rst).astype(np.int32)
    if not sorted_cap:
        tx_sel = tx_sel[np.argsort(packets["frame"][tx_sel], kind="stable")]
    f = flow_id[tx_sel]
    counts = np.bincount(f, minlength=n_flows)
    return by_group(tx_sel, f), *_bounds(counts)


def _sack_tags(
    A: dict[str, np.ndarray], a_flow: np.ndarray, origs: _Originals, mss: np.ndarray
) -> None:
    """Keep in the ACK table only the SACK blocks the sender would act on.

    tcp_sacktag_walk -> tcp_match_skb_to_sack marks whole skbs, or splits one at MSS
    multiples (rounding a partly covered piece out): a block that covers no whole segment
    as it was sent (an skb, or an MSS-sized piece of one) tags nothing, so sacked_out does
    not grow, the state stays Open and the loss probe stays armed. ``sack_hi`` /
    ``sack_hi_left`` (the highest tagging block) and ``sack_n`` (tagging blocks, plus a
    D-SACK: FLAG_DSACKING_ACK makes the ACK dubious too) are recomputed from those that
    tag; the D-SACK itself is kept as it was."""
    L, R = A["sack_l"], A["sack_r"]
    n_blocks = A["sack_n"]
    if not len(L) or not (n_blocks > 0).any():
        return
    has = np.arange(4)[None, :] < n_blocks[:, None]
    has[:, 0] &= ~A["dsack"]
    at = np.flatnonzero(has.ravel())  # the blocks there are (most ACKs carry none)
    f = np.repeat(a_flow, 4)[at]
    lo, hi = L.ravel()[at], R.ravel()[at]
    ok, p = origs.containing(f, lo)
    seg_lo = origs.seq_at(p, ok, _NONE)
    seg_hi = origs.end_at(p, ok, _NONE)
    m = mss[f]
    # The first MSS piece of that segment starting at or after the block's left edge...
    start = seg_lo + -(-(lo - seg_lo) // m) * m
    inside = ok & (start < seg_hi)
    first_end = np.where(inside, np.minimum(start + m, seg_hi), _NONE)
    # ...or, past its end, the next segment's first piece.
    nx = p + 1
    nx_ok = ok & origs.by_seq.holds(nx, f)
    nx_end = np.minimum(origs.seq_at(nx, nx_ok, _NONE) + m, origs.end_at(nx, nx_ok, _NONE))
    piece_end = np.where(inside, first_end, np.where(nx_ok, nx_end, _NONE))
    # A block whose edge the capture cannot place (its data unseen) is kept as it is.
    flat = np.zeros(has.size, dtype=bool)
    flat[at] = ~ok | ((piece_end > _NONE) & (piece_end <= hi))
    tags = flat.reshape(-1, 4)
    sack_hi = np.full(len(L), _NONE, dtype=np.int64)
    sack_hi_left = np.full(len(L), _NONE, dtype=np.int64)
    for b in range(4):
        use = tags[:, b] & (R[:, b] > sack_hi)
        sack_hi = np.where(use, R[:, b], sack_hi)
        sack_hi_left = np.where(use, L[:, b], sack_hi_left)
    A["sack_hi"], A["sack_hi_left"] = sack_hi, sack_hi_left
    A["sack_n"] = tags.sum(axis=1) + A["dsack"]


def _ack_news(
    A: dict[str, np.ndarray], a_flow: np.ndarray, origs: _Originals, frame: np.ndarray
) -> None:
    """Add to the ACK table what the sender had been told before each ACK (``sack_top``,
    the highest SACKed sequence), whether it sent new data between this ACK and the next
    (``new_after``: F-RTO step 2.b) and its snd_nxt when the ACK came (``snd_nxt``: new
    data leaves at snd_nxt, so it is where the next first transmission starts; after the
    last one, that one's end; _NONE before any)."""
    never = np.iinfo(np.int64).max
    A["sack_top"] = seg_cummax(A["sack_hi"], group_numbers(a_flow), exclusive=True)
    nx_ok, nx = origs.next_sent(a_flow, A["pkt"])
    last_ok = origs.by_frame.holds(nx - 1, a_flow)
    A["snd_nxt"] = np.where(
        nx_ok,
        origs.f_seq_at(nx, nx_ok, _NONE),
        origs.f_end_at(nx - 1, last_ok, _NONE),
    )
    nx_frame = origs.f_at(frame, nx, nx_ok, never)
    next_ack_frame = np.r_[A["frame"][1:], never]
    same_next = np.r_[a_flow[1:] == a_flow[:-1], False]
    A["new_after"] = nx_frame < np.where(same_next, next_ack_frame, never)


def _since_last_send(packets, tx, sorted_cap: bool, rtx: Table) -> tuple[np.ndarray, np.ndarray]:
    """Per retransmission, ns since the previous data transmission of its flow
    (retransmission or not; _NONE where none), and that transmission's frame (-1).
    ``tx``: _tx_rows. In a capture in frame order the rows order as the frames do, and
    are searched themselves: no per-segment copy of frames, flows or times."""
    tx_sel, tx_start, tx_end = tx
    r_flow, frame = rtx["flow_id"], packets["frame"]
    if sorted_cap:
        search, key = _FlowSearch(tx_start, tx_end, tx_sel), rtx["pkt"]
    else:
        search, key = _FlowSearch(tx_start, tx_end, frame[tx_sel]), rtx["frame"]
    prev_tx = search(r_flow, key, "left") - 1
    prev_ok = search.holds(prev_tx, r_flow)
    prev_row = gather(tx_sel, prev_tx, prev_ok, 0)
    prev_tx_ts = np.where(prev_ok, packets["ts_ns"][prev_row], _NONE)
    return np.where(prev_ok, rtx["ts_ns"] - prev_tx_ts, _NONE), np.where(
        prev_ok, frame[prev_row], -1
    )


def _running_us(ts_ns: np.ndarray, grp: np.ndarray, t_ref: int) -> np.ndarray:
    """µs since ``t_ref`` of rows grouped by ``grp`` (capture order in each group), as the
    running maximum in each group: what a search for "the last row by time t" needs.
    A capture's clock may step back (the reader keeps the records as they come); a
    search over times out of order would answer by where the other groups' rows lie."""
    us = (ts_ns - t_ref) // 1000
    if ordered_in_groups(grp, us):
        return us
    return seg_cummax(us, group_numbers(grp))


def _last_ack(A, a_flow, shift_us, r_flow, r_frame, r_ts, t_ref: int):
    """Per retransmission, the last ACK of the receiver before it (an ACK-table index, -1:
    none), whether there is one, and ns since it (_NONE: none), in the sender's time.

    A flow whose sender is away from the capture point (``shift_us``: the round trip to it
    and back): its segments reach us half of it after they left, the ACKs we see reach it
    the other half later. In the sender's own time, an ACK-clocked retransmission follows
    the ACK by 0, not by that trip: compare in that time.
    """
    k_last = pair_search(a_flow, A["frame"], r_flow, r_frame, side="left") - 1
    k_ok = (k_last >= 0) & (gather(a_flow, k_last, k_last >= 0, -1) == r_flow)
    k_last = np.where(k_ok, k_last, -1)
    last_ack_ts = gather(A["ts"], k_last, k_ok, _NONE)
    since_last_ack = np.where(k_ok, r_ts - last_ack_ts, _NONE)
    shift = (shift_us * 1000)[r_flow]
    rem = shift > ACK_CLOCK_NS
    if rem.any() and len(a_flow):
        k2 = (
            pair_search(
                a_flow,
                _running_us(A["ts"], a_flow, t_ref),
                r_flow[rem],
                (r_ts[rem] - shift[rem] - t_ref) // 1000,
                side="right",
            )
            - 1
        )
        ok2 = (k2 >= 0) & (gather(a_flow, k2, k2 >= 0, -1) == r_flow[rem])
        k_last[rem] = np.where(ok2, k2, -1)
        k_ok[rem] = ok2
        since_last_ack[rem] = np.where(
            ok2, r_ts[rem] - shift[rem] - gather(A["ts"], k2, ok2, 0), _NONE
        )
    return k_last, k_ok, since_last_ack


def _bursts(r_flow, r_frame, k_last, since_last_send, prev_tx_frame, r_probe):
    """The rows by flow then frame, and each row's burst: a retransmission continues the
    previous one of its flow when no ACK arrived in between and that one was the flow's
    previous transmission, just before it (BURST_GAP_NS): one tcp_xmit_retransmit_queue
    walk sends retransmissions only. Probes stand alone."""
    m = len(r_flow)
    order_r = np.lexsort((r_frame, r_flow))
    rf, rk = r_flow[order_r], k_last[order_r]
    cont = np.zeros(m, dtype=bool)
    cont[1:] = (rf[1:] == rf[:-1]) & (rk[1:] == rk[:-1])
    cont[1:] &= prev_tx_frame[order_r][1:] == r_frame[order_r][:-1]
    cont &= (since_last_send[order_r] >= 0) & (since_last_send[order_r] <= BURST_GAP_NS)
    cont &= ~r_probe[order_r]
    cont[1:] &= ~r_probe[order_r][:-1]
    burst_of = np.empty(m, dtype=np.int64)
    burst_of[order_r] = np.cumsum(~cont) - 1
    return order_r, burst_of


def _snd_nxt_at(rtx: Table, origs: _Originals, late: np.ndarray) -> np.ndarray:
    """snd_nxt when each retransmission was sent: the highest end the flow has shown. For
    a flow whose handshake the capture missed (``late``) that may fall short of the
    sender's: new data always leaves at snd_nxt, so the next first transmission after a
    retransmission starts at or above it, and when that is beyond what the capture has
    seen, the bytes in between were outstanding too (sent before the capture began), and
    the retransmission was not of the tail. Only then: with the handshake seen, data in
    between was sent after the retransmission and lost before the capture point (or the
    capture dropped it), and snd_nxt had not reached it."""
    r_flow = rtx["flow_id"]
    snd_nxt = filled(rtx["snd_nxt_abs"], _NONE).astype(np.int64)
    nxt_ok, nxt = origs.next_sent(r_flow, rtx["pkt"])
    nxt_ok &= late[r_flow]
    nxt_seq = origs.f_seq_at(nxt, nxt_ok, _NONE)
    return np.maximum(snd_nxt, np.where(nxt_ok, nxt_seq, _NONE))


def _spans_originals(origs: _Originals, r_flow, seq, end) -> np.ndarray:
    """Per retransmission: does it run past the first transmission holding its first byte,
    into the next one (skbs collapsed on resending: tcp_retrans_try_collapse)?"""
    ok, p = origs.containing(r_flow, seq)
    return ok & (origs.end_at(p, ok, _NONE) < end)


def _unseen_below(origs: _Originals, r_flow, una, seq, una_seen) -> np.ndarray:
    """Per retransmission: does it start above snd_una as the capture shows it, with no
    byte in between ever seen sent (``una_seen``: a first transmission holds snd_una)?
    Then the capture may lack the ACK that moved snd_una up to it, as well as the data."""
    q = origs.by_seq(r_flow, una, "left")  # the first transmission at or above snd_una
    q_ok = origs.by_seq.holds(q, r_flow)
    between = q_ok & (origs.seq_at(q, q_ok, _NONE) < seq)
    return ~una_seen & (una < seq) & ~between


def _packets_out(origs: _Originals, mss, r_flow, una, snd_nxt) -> np.ndarray:
    """tp->packets_out: segments (MSS units of each skb) between snd_una and snd_nxt."""
    # a flow whose first transmissions the capture does not hold (it began later): the
    # bytes out in MSS-sized segments
    guess = np.maximum(1, -(-(snd_nxt - una) // mss[r_flow]))
    if len(origs.sel) == 0:
        return guess
    cum = origs.segments(mss)
    lo = origs.by_seq(r_flow, una, "left")
    hi = origs.by_seq(r_flow, snd_nxt, "left")
    c_hi = np.where(hi > 0, cum[np.clip(hi - 1, 0, None)], 0)
    c_lo = np.where(lo > 0, cum[np.clip(lo - 1, 0, None)], 0)
    # The segment holding snd_una (partly acked) still counts.
    lo_in = origs.by_seq.holds(lo - 1, r_flow)
    lo_part = lo_in & (origs.end_at(lo - 1, lo_in, 0) > una)
    none = origs.by_seq.start[r_flow] >= origs.by_seq.end[r_flow]
    return np.where(none, guess, np.maximum(c_hi - c_lo + lo_part, 1))


def _first_seq(space, flow_id, flows, frame, sorted_cap: bool) -> np.ndarray:
    """snd_una before any ACK: the first sequence number each flow used."""
    first = flows["first_frame"]
    if sorted_cap:
        idx = np.searchsorted(frame, first)
    else:
        idx = np.full(len(first), 0, dtype=np.int64)
        o = np.arange(len(flow_id))[::-1]
        idx[flow_id[o]] = o
    return space["seq_abs"][idx]


def _flow_mss(packets, flows, tx) -> np.ndarray:
    """Sender MSS: the peer's SYN MSS less the timestamp option, else the largest segment."""
    rev = flows["rev_flow_id"]
    n_flows = len(rev)
    peer_mss = np.where(rev >= 0, flows["mss"][np.clip(rev, 0, None)], 0)
    peer_mss = peer_mss.astype(np.int64) - np.where(flows["ts_ok"], 12, 0)
    biggest = np.zeros(n_flows, dtype=np.int64)
    tx_sel, tx_start, tx_end = tx
    if len(tx_sel):
        has = tx_end > tx_start
        biggest[has] = np.maximum.reduceat(packets["payload_len"][tx_sel], tx_start[has])
    return np.where(peer_mss > 0, peer_mss, np.where(biggest > 0, np.minimum(biggest, 1448), 1448))


def _ack_table(packets, space, sel, a_flow, una_init) -> dict[str, np.ndarray]:
    """The receiver's ACKs per data flow, in capture order, with what each one says."""
    ack = space["ack_abs"][sel]
    gno = group_numbers(a_flow)
    una = seg_cummax(ack, gno)
    start = np.ones(len(sel), dtype=bool)
    start[1:] = a_flow[1:] != a_flow[:-1]
    prev_una = np.empty_like(una)
    if len(una):
        prev_una[1:] = una[:-1]
        prev_una[start] = una_init[a_flow[start]]
    sn = packets["sack_n"][sel].astype(np.int64)
    L, R = sack_blocks(space, sel)
    # D-SACK, RFC 2883 §4: the first block is at or below the cumulative ACK, or lies
    # inside the second block.
    dsack = (sn >= 1) & (
        (R[:, 0] <= ack) | ((sn >= 2) & (L[:, 1] <= L[:, 0]) & (R[:, 0] <= R[:, 1]))
    )
    sack_hi = np.full(len(sel), _NONE, dtype=np.int64)
    sack_hi_left = np.full(len(sel), _NONE, dtype=np.int64)  # left edge of that block
    for b in range(4):
        use = (sn > b) & ~((b == 0) & dsack) & (R[:, b] > sack_hi)
        sack_hi = np.where(use, R[:, b], sack_hi)
        sack_hi_left = np.where(use, L[:, b], sack_hi_left)
    payload = packets["payload_len"][sel].astype(np.int64)
    return {
        "pkt": sel,
        "ts": packets["ts_ns"][sel],
        "frame": packets["frame"][sel],
        "ack": ack,
        "una": una,
        "prev_una": prev_una,
        "adv": una > prev_una,
        "sack_hi": sack_hi,
        "sack_hi_left": sack_hi_left,
        "dsack": dsack,
        "dsack_l": np.where(dsack, L[:, 0], 0),
        "dsack_r": np.where(dsack, R[:, 0], 0),
        "tsecr": packets["tsecr"][sel].astype(np.int64),
        "opt_ts": packets["opt_ts"][sel].astype(bool),
        "payload": payload,
        "sack_n": sn,
        "syn": (packets["flags"][sel] & TCP_SYN) != 0,
        "win": packets["win"][sel].astype(np.int64),
        "sack_l": L,
        "sack_r": R,
    }


def _remote_shift_us(
    packets, flow_id, flows: Table, want: np.ndarray, space=None, rows=None
) -> np.ndarray:
    """Per flow (those in ``want``), the round trip (us) from the capture point to the
    flow's sender and back (retrans.sender_trip_ns: the handshake's, lowered by the TSval
    echoes; 0 without a handshake, as on the sender's own host). An ACK seen here reaches
    the sender half of it later, and what the sender sends then appears here the other
    half later: RTT samples taken here miss it, and a retransmission is compared with the
    ACKs seen that much before it. On the sender's own host the trip is its stack's answer
    time, no part of the path: 0."""
    trip = sender_trip_ns(packets, flow_id, flows, want, echo_alone=False)
    if rows is not None and (unknown := want & (trip < 0)).any():
        # No handshake. Where the receiver answers new data within AT_SENDER_TRIP_NS, the
        # capture is on the receiver's host (its own stack answering, as the handshake
        # shows it, flows._local_side): the sender is a path away, and the TSval echoes
        # measure the trip to it. Elsewhere the sender's host stays the reading.
        below = np.zeros(len(flow_id), dtype=bool)
        below[rows] = True  # retransmissions and reordered originals are not new data
        d_rcv = receiver_trip_ns(packets, flow_id, flows, space, below, unknown)
        echo = sender_trip_ns(packets, flow_id, flows, unknown, echo_alone=True)
        at_rcv = unknown & (d_rcv >= 0) & (d_rcv <= AT_SENDER_TRIP_NS)
        mid = unknown & ~at_rcv & (echo > AT_SENDER_TRIP_NS) & (d_rcv > AT_SENDER_TRIP_NS)
        trip = np.where(at_rcv | mid, echo, trip)
    path = trip > AT_SENDER_TRIP_NS  # else the sender's own stack
    return np.where(path, trip // 1000, 0).astype(np.int64)


def _rtt_samples(
    packets, space, A, a_flow, origs: _Originals, rtx, flow_id, ts_ok_f, una_init, shift_us, seam
):
    """RTT samples the sender took (tcp_clean_rtx_queue / tcp_sacktag / tcp_ack_update_rtt).

    * An ACK advancing snd_una: now - send time of the first newly acknowledged segment, if
      nothing it acknowledges was retransmitted (Karn's rule, RFC 6298 §3).
    * Otherwise, with timestamps, now - the time the echoed TSval was sent (RFC 7323 §4.1,
      tcp_rtt_tsopt_us: millisecond granularity, at least 1 ms).
    * An ACK that only SACKs new data at the top: now - send time of that segment.
    """
    # Union of retransmitted ranges per flow (Karn): sorted, merged intervals.
    rf = rtx["flow_id"]
    rs = rtx["seq_abs"]
    re_ = rtx["end_abs"]
    ro = np.lexsort((rs, rf))
    rf, rs, re_ = rf[ro], rs[ro], re_[ro]
    run_end = seg_cummax(re_, group_numbers(rf)) if len(rf) else re_

    def overlaps_rtx(f, lo, hi):
        """Does [lo, hi) of flow f overlap any retransmitted range?"""
        if len(rf) == 0:
            return np.zeros(len(f), dtype=bool)
        p = pair_search(rf, rs, f, hi - 1, side="right") - 1
        pc = np.clip(p, 0, None)
        return (p >= 0) & (rf[pc] == f) & (run_end[pc] > lo)

    def orig_containing(f, byte):
        ok, p = origs.containing(f, byte)
        return ok, origs.ts_at(p, ok, 0)

    t = A["ts"]
    adv = A["adv"]
    # Cumulative ACK samples.
    ok1, t1 = orig_containing(a_flow, A["prev_una"])
    karn = overlaps_rtx(a_flow, A["prev_una"], A["una"])
    seq_ok = adv & ok1 & ~karn & (t1 <= t)
    rtt = np.where(seq_ok, (t - t1) // 1000, -1)
    # SACK samples: new data SACKed at the top (first_sackt), no cumulative advance.
    prev_hi = seg_cummax(A["sack_hi"], group_numbers(a_flow), exclusive=True)
    new_top = ~adv & (A["sack_hi"] > np.maximum(prev_hi, A["una"]))
    ok2, t2 = orig_containing(a_flow, A["sack_hi"] - 1)
    karn2 = overlaps_rtx(a_flow, A["sack_hi"] - 1, A["sack_hi"])
    sack_ok = new_top & ok2 & ~karn2 & (t2 <= t)
    rtt = np.where((rtt < 0) & sack_ok, (t - t2) // 1000, rtt)
    # Timestamp samples when Karn forbade the sequence sample.
    ts_ok = adv & (rtt < 0) & A["opt_ts"] & (A["tsecr"] != 0) & ts_ok_f[a_flow]
    if ts_ok.any():
        ts_rtt = _ts_rtt_us(packets, flow_id, a_flow, A, ts_ok)
        rtt = np.where(ts_ok & (ts_rtt >= 0), ts_rtt, rtt)
    keep = rtt >= 0
    A["rtt_sample"] = keep  # tcp_ack_update_rtt took one: icsk_backoff = 0 (RFC 6298 §5.7)
    # For a flow sent by the peer, ACK leaves here -> data arrived here is RTT less the path.
    rtt = rtt + np.where(keep, shift_us[a_flow], 0)
    s_flow = a_flow[keep]
    if seam is None:
        srtt, rto = rtt_estimator(s_flow, np.maximum(rtt[keep], 1))
    else:
        srtt, rto = seam.rtt(s_flow, A["frame"][keep], np.maximum(rtt[keep], 1))
    return s_flow, A["frame"][keep], srtt, rto


def _ts_rtt_us(packets, flow_id, a_flow, A, mask) -> np.ndarray:
    """tcp_rtt_tsopt_us: (sender's TS clock now - TSecr) in ms, at least 1, in us.

    The sender's TS clock is read off its own packets: TSval - capture ms is constant per
    connection (RFC 7323 §5.4, a per-connection offset), so its median gives the offset.
    """
    out = np.full(len(a_flow), -1, dtype=np.int64)
    flows_needed = np.flatnonzero(np.bincount(a_flow[mask]))
    offset = np.full(int(flow_id.max()) + 1, -1, dtype=np.int64)
    needed = np.zeros(len(offset), dtype=bool)
    needed[flows_needed] = True
    # The first TSval of each flow against its capture time (1 ms phase error at most):
    # the first row of each flow carrying one, looked for a block of rows at a time until
    # every flow has it (the first block nearly always does): no index over every packet.
    first = np.full(len(offset), -1, dtype=np.int64)
    for lo in range(0, len(flow_id), _BLOCK_ROWS):
        hi = lo + _BLOCK_ROWS
        has = packets["opt_ts"][lo:hi].astype(bool) & (packets["tsval"][lo:hi] != 0)
        sel = lo + np.flatnonzero(has & needed[flow_id[lo:hi]])
        f = flow_id[sel]
        first[f[::-1]] = sel[::-1]
        needed[f] = False
        if not needed.any():
            break
    fs = first[flows_needed]
    fs = fs[fs >= 0]
    offset[flow_id[fs]] = (
        packets["tsval"][fs].astype(np.int64) - packets["ts_ns"][fs] // 1_000_000
    ) & 0xFFFFFFFF
    f = a_flow[mask]
    now_ts = (A["ts"][mask] // 1_000_000 + offset[f]) & 0xFFFFFFFF
    delta = (now_ts - A["tsecr"][mask]) & 0xFFFFFFFF
    good = (offset[f] >= 0) & (delta < (1 << 30))
    out[mask] = np.where(good, np.maximum(delta, 1) * 1000, -1)
    return out


def _dsack_times(A, a_flow, rtx: Table) -> np.ndarray:
    """Per retransmission: time of the first D-SACK reporting it as a duplicate (else _INF).

    A D-SACK block [l, r) (RFC 2883) reports a segment that arrived twice; it is matched to
    the latest transmission of each overlapped range sent before the D-SACK arrived.
    """
    m = len(rtx["pkt"])
    out = np.full(m, _INF, dtype=np.int64)
    d = np.flatnonzero(A["dsack"])
    if not len(d) or not m:
        return out
    rf = rtx["flow_id"]
    rs = rtx["seq_abs"]
    re_ = rtx["end_abs"]
    rt = rtx["ts_ns"]
    o = np.lexsort((rs, rf))
    sf, ss, se, st = rf[o], rs[o], re_[o], rt[o]
    maxlen = int((se - ss).max()) if m else 0
    df, dl, dr, dt = a_flow[d], A["dsack_l"][d], A["dsack_r"][d], A["ts"][d]
    lo = pair_search(sf, ss, df, dl - maxlen, side="left")
    hi = pair_search(sf, ss, df, dr, side="left")
    cnt = np.maximum(hi - lo, 0)
    total = int(cnt.sum())
    if total == 0:
        return out
    qi = np.repeat(np.arange(len(d)), cnt)
    cj = np.arange(total) + np.repeat(lo - np.concatenate(([0], np.cumsum(cnt)[:-1])), cnt)
    hit = (sf[cj] == df[qi]) & (ss[cj] < dr[qi]) & (se[cj] > dl[qi]) & (st[cj] < dt[qi])
    qi, cj = qi[hit], cj[hit]
    if not len(qi):
        return out
    # Keep, per (D-SACK, start seq), the latest transmission before the D-SACK: the last
    # in time order, of two at the same time the later in capture order (a stable sort:
    # numpy's default one, as pandas' sort_values used, ordered ties by what else was
    # sorted with them, other flows' D-SACKs included).
    by_t = np.argsort(st[cj], kind="stable")
    q_t, s_t = qi[by_t], ss[cj][by_t]
    o2 = np.lexsort((np.arange(len(by_t)), s_t, q_t))
    last = np.r_[(q_t[o2][1:] != q_t[o2][:-1]) | (s_t[o2][1:] != s_t[o2][:-1]), True]
    best = by_t[o2[last]]
    rows = o[cj[best]]
    times = dt[qi[best]]
    np.minimum.at(out, rows, times)
    return out


def _ts_echo_spurious(packets, A, a_flow, rtx: Table, ts_ok_f) -> np.ndarray:
    """Eifel detection (RFC 3522 §3.2): the first ACK after the retransmission that covers
    it echoes a TSval older than the retransmission's, so an earlier copy arrived first."""
    m = len(rtx["pkt"])
    out = np.zeros(m, dtype=bool)
    if not len(A["ts"]):
        return out
    rf = rtx["flow_id"]
    pk = rtx["pkt"]
    tsval = packets["tsval"][pk].astype(np.int64)
    have = packets["opt_ts"][pk].astype(bool) & ts_ok_f[rf] & (tsval != 0)
    # First ACK (in the flow's ACK list) arriving after the retransmission...
    k_after = pair_search(a_flow, A["frame"], rf, rtx["frame"], side="right")
    # ...and the first one whose cumulative ACK covers its end.
    k_cover = pair_search(a_flow, A["una"], rf, rtx["end_abs"], side="left")
    k = np.maximum(k_after, k_cover)
    kc = np.clip(k, 0, len(a_flow) - 1)
    ok = have & (k < len(a_flow)) & (a_flow[kc] == rf) & (A["una"][kc] >= rtx["end_abs"])
    ecr = A["tsecr"][kc]
    before = (((ecr - tsval) & 0xFFFFFFFF) >= (1 << 31)) & (ecr != 0)
    out[ok & before & A["opt_ts"][kc]] = True
    return out


__all__ = ["classify_table", "rtt_estimator", "CLASSIFY_COLUMNS"]
