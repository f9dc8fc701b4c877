"""Why was each segment retransmitted? Replay the Linux sender's loss recovery.

Linux retransmits from four places (net/ipv4/tcp_output.c, tcp_timer.c, tcp_recovery.c):

* ``tcp_send_loss_probe`` (**tlp**, RFC 8985 §7): the probe timer fired ~2·SRTT after the
  last transmission or ACK, in the Open/CWR state, on a SACK connection, with no probe
  already outstanding (``tlp_high_seq``); it resends the *tail* (the last MSS below snd_nxt).
* ``tcp_retransmit_timer`` (**rto**, RFC 6298 §5): the retransmission timer fired; it
  enters the Loss state and resends the *head* (snd_una), one MSS, doubling the timer on each
  consecutive timeout (``backoff``). In SYN_SENT that is a **syn**; a SYN-ACK is a **synack**.
* ``tcp_xmit_retransmit_queue`` called while processing an ACK (or from the RACK reorder
  timer, tcp_rack_reo_timeout): **fast** when the congestion state is not Loss (SACK/RACK
  recovery, RFC 6675 / RFC 8985 §6), **rto_recovery** in the Loss state (the slow-start
  retransmits of the rest of the window after an RTO, until snd_una passes high_seq).

The capture is taken on the sender's host, so an ACK-clocked retransmission leaves within
microseconds of the ACK that released it, while every timer fires at least
TCP_TIMEOUT_MIN_US (2 ms) after the event that armed it. That clock, which segment is resent
(head = snd_una, tail = the last MSS below snd_nxt), how much is resent at once (the timers
resend one MSS), and the congestion state replayed below decide the kind.

The replayed state (tcp_fastretrans_alert, tcp_process_loss, tcp_process_tlp_ack):

* Open / Disorder: Disorder while the receiver reports SACKed data above snd_una, or
  after recovery while the segment at snd_una was ever resent (tcp_try_keep_open). A probe
  is only scheduled in Open (and CWR), on a SACK connection, with tlp_high_seq clear.
* Recovery: entered by the first fast retransmit (an ACK with loss news, or the RACK
  reorder timer; high_seq = snd_nxt), left when snd_una reaches high_seq or when D-SACKs
  report every retransmission of the episode duplicate (tcp_try_undo_dsack).
* Loss: entered by an RTO (high_seq = snd_nxt, tlp_high_seq cleared), left when snd_una
  reaches high_seq, on an Eifel undo (the ACK echoes a TSval older than the first
  retransmission, tcp_packet_delayed), an F-RTO undo (never-resent data acknowledged, RFC
  5682), a D-SACK undo, or for Recovery when RACK finds a retransmission lost again
  (FLAG_LOST_RETRANS: a range already resent in this Loss episode is resent on an ACK).
* tlp_high_seq: set by a probe; cleared by an ACK beyond it, a D-SACK or pure duplicate
  ACK at it, entering Recovery or Loss; an ACK exactly at it leaves it set.

A capture that starts mid-connection is read with the same rules: a gap before the next
new data shows how far snd_nxt already was (retrans.py marks the segments before it), and
a retransmission with no ACK seen yet is timed from the capture's start.

Work is bulk first: SRTT samples, ACK tables, D-SACK matching and bursts are vectorised; a
tight loop then walks only the *bursts* of retransmissions of each flow (not every packet),
applying the ACK-driven state changes between two bursts with binary searches over the
flow's cumulative-ACK array.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING

import numpy as np

from retranscope.analyze.flows import (
    NO_VALUE,
    by_group,
    flows_as_table,
    group_numbers,
    sack_blocks,
    seg_cummax,
    sequence_space,
)
from retranscope.analyze.table import (
    Nullable,
    Table,
    filled,
    from_pandas,
    nullable,
    present,
    to_pandas,
)
from retranscope.schemas.packets import TCP_ACK, TCP_RST, TCP_SYN

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("tlp", "fast", "rto", "rto_recovery", "syn", "synack", "unknown")
#: The three families the kernel's counters distinguish (TCPTimeouts+TCPSlowStartRetrans+
#: TCPSynRetrans / TCPFastRetrans / TCPLossProbes).
FAMILY = {"rto": "rto", "rto_recovery": "rto", "syn": "rto", "synack": "rto",
          "fast": "fast", "tlp": "tlp", "unknown": "unknown"}

# include/net/tcp.h
TCP_RTO_MIN_US = 200_000          # TCP_RTO_MIN (HZ/5)
TCP_RTO_MAX_US = 120_000_000      # TCP_RTO_MAX
TCP_TIMEOUT_INIT_US = 1_000_000   # TCP_TIMEOUT_INIT, RFC 6298 §2.1
TCP_TIMEOUT_MIN_US = 2_000        # TCP_TIMEOUT_MIN_US: floor of the PTO and RACK timers

#: A retransmission this soon after an ACK was sent while processing it: no timer can fire
#: earlier than TCP_TIMEOUT_MIN_US after the ACK that (re)armed it.
ACK_CLOCK_NS = TCP_TIMEOUT_MIN_US * 1000 // 2
#: No timer fires sooner than this after the ACK that re-armed it: an ACK that advances
#: snd_una re-arms the probe/RTO timer (tcp_set_xmit_timer) or the RACK reorder timer, both
#: at least TCP_TIMEOUT_MIN_US away. Closer than that, a retransmission answers that ACK
#: even if the stack processed it late (socket owned by the writer: the backlog).
TIMER_MIN_NS = TCP_TIMEOUT_MIN_US * 1000
#: Wire segments of one kernel retransmit call (a GSO skb split, or the rest of the queue
#: walk) leave back to back, with no ACK in between.
BURST_GAP_NS = TCP_TIMEOUT_MIN_US * 1000 // 2

OPEN, DISORDER, CWR, RECOVERY, LOSS = 0, 1, 2, 3, 4  # enum tcp_ca_state
CA_NAMES = {OPEN: "Open", DISORDER: "Disorder", CWR: "CWR", RECOVERY: "Recovery", LOSS: "Loss"}

_NONE = NO_VALUE  # "no value": the floor of seg_cummax
_INF = np.iinfo(np.int64).max // 4

CLASSIFY_COLUMNS = (
    "kind_pcap", "family", "spurious", "spurious_by", "since_last_send_ns", "since_last_ack_ns",
    "srtt_us", "expected_pto_ns", "expected_rto_ns", "backoff", "trigger_frame",
    "since_trigger_ns", "ca_state", "clock", "position", "burst",
)


# --- bulk helpers ------------------------------------------------------------------------

def _affine_scan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y[i] = a[i] * y[i-1] + b[i] (y[-1] = 0), blocked: sequential over sqrt(n) positions
    with every block at once, then over the blocks. A row with a = 0 restarts the
    recurrence (how groups are kept apart); |a| <= 1 keeps it numerically stable.
    """
    n = len(a)
    if n == 0:
        return np.zeros(0)
    width = max(16, int(np.sqrt(n)))
    nb = -(-n // width)
    pad = nb * width - n
    A = np.concatenate([a.astype(np.float64), np.ones(pad)]).reshape(nb, width)
    B = np.concatenate([b.astype(np.float64), np.zeros(pad)]).reshape(nb, width)
    Y = np.empty_like(B)   # within-block result, as if the block started from y = 0
    P = np.empty_like(A)   # product of a over the block up to each position
    Y[:, 0] = B[:, 0]
    P[:, 0] = A[:, 0]
    for i in range(1, width):
        Y[:, i] = A[:, i] * Y[:, i - 1] + B[:, i]
        P[:, i] = A[:, i] * P[:, i - 1]
    carry = np.zeros(nb)   # y just before each block
    c = 0.0
    last_y, last_p = Y[:, -1].tolist(), P[:, -1].tolist()
    for k in range(nb):
        carry[k] = c
        c = last_p[k] * c + last_y[k]
    return (Y + P * carry[:, None]).ravel()[:n]


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
    a = np.where(start, 0.0, 7.0 / 8.0)
    b = np.where(start, m, m / 8.0)
    srtt = _affine_scan(a, b)
    prev = np.empty(n)
    prev[0] = 0.0
    prev[1:] = srtt[:-1]
    err = m - prev
    aerr = np.abs(err)
    # mdev <= max(2*m0, 4*max|err|): when that stays under TCP_RTO_MIN, rttvar is the
    # floor itself and the two mdev passes can be skipped (the common short-RTT case).
    if max(float((2.0 * m[start]).max()), float(4.0 * aerr[~start].max(initial=0.0))) \
            < TCP_RTO_MIN_US:
        return srtt, np.minimum(srtt + TCP_RTO_MIN_US, TCP_RTO_MAX_US)
    # mdev: linearise the branch (which depends on mdev itself) with one refinement pass.
    a1 = np.where(start, 0.0, 0.75)
    b1 = np.where(start, 2.0 * m, aerr)
    mdev = _affine_scan(a1, b1)
    prev_mdev = np.empty(n)
    prev_mdev[0] = 0.0
    prev_mdev[1:] = mdev[:-1]
    damp = (err < 0) & (aerr > prev_mdev / 4.0) & ~start
    a2 = np.where(start, 0.0, np.where(damp, 31.0 / 32.0, 0.75))
    b2 = np.where(start, 2.0 * m, np.where(damp, aerr / 8.0, aerr))
    mdev = _affine_scan(a2, b2)
    rttvar = np.maximum(mdev, TCP_RTO_MIN_US)
    rto = np.minimum(srtt + rttvar, TCP_RTO_MAX_US)
    return srtt, rto


_KEY_BAND = np.int64(1) << np.int64(42)
_KEY_LIM = (np.int64(1) << np.int64(41)) - 1


def _key(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(group, value) as one sortable int64: values (sequence offsets, frame numbers) fit
    well inside +-2**41, groups (flow ids) below 2**21."""
    return g.astype(np.int64) * _KEY_BAND + (np.clip(v, -_KEY_LIM, _KEY_LIM) + (_KEY_BAND >> 1))


def _grp_search(grp_sorted: np.ndarray, val_sorted: np.ndarray, q_grp: np.ndarray,
                q_val: np.ndarray, side: str = "right") -> np.ndarray:
    """searchsorted of (group, value) pairs; rows sorted by group then value."""
    return np.searchsorted(_key(grp_sorted, val_sorted), _key(q_grp, q_val), side=side)


class _GroupedSearch:
    """searchsorted of (group, value) queries among rows sorted by group, then value.

    With few groups queried (the usual capture: a few bulk flows) each group's slice is
    searched on its own; with many, one search over (group, value) keys (_key), built on
    first use. The two agree: the keys order rows as the slices do.
    """

    MAX_SLICES = 32

    def __init__(self, grp_sorted: np.ndarray, val_sorted: np.ndarray):
        self.grp, self.val = grp_sorted, val_sorted
        self._keys: np.ndarray | None = None

    def __call__(self, q_grp: np.ndarray, q_val: np.ndarray, side: str) -> np.ndarray:
        groups = np.flatnonzero(np.bincount(q_grp)) if len(q_grp) else q_grp
        if len(groups) > self.MAX_SLICES:
            if self._keys is None:
                self._keys = _key(self.grp, self.val)
            return np.searchsorted(self._keys, _key(q_grp, q_val), side=side)
        out = np.empty(len(q_grp), dtype=np.int64)
        lo = np.searchsorted(self.grp, groups, side="left")
        hi = np.searchsorted(self.grp, groups, side="right")
        for g, a, b in zip(groups.tolist(), lo.tolist(), hi.tolist()):
            q = np.flatnonzero(q_grp == g) if len(groups) > 1 else slice(None)
            v = np.clip(q_val[q], -_KEY_LIM, _KEY_LIM)  # as _key clips
            out[q] = a + np.searchsorted(self.val[a:b], v, side=side)
        return out


class _Originals:
    """First transmissions of the data flows, by flow then capture order (which is also
    sequence order), searchable by sequence and by frame."""

    def __init__(self, packets, space, flow_id, sel):
        self.sel = sel
        self.flow = flow_id[sel]
        self.seq = space["seq_abs"][sel]
        self.end = space["end_abs"][sel]
        self.ts = packets["ts_ns"][sel]
        self.by_seq = _GroupedSearch(self.flow, self.seq)
        self.by_frame = _GroupedSearch(self.flow, packets["frame"][sel])

    def containing(self, f: np.ndarray, byte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, index) of the first transmission of flow f holding sequence ``byte``."""
        p = self.by_seq(f, byte, "right") - 1
        ok = (p >= 0) & (_at(self.flow, p, p >= 0, -1) == f)
        ok &= (_at(self.seq, p, ok, 0) <= byte) & (_at(self.end, p, ok, _NONE) > byte)
        return ok, np.clip(p, 0, None)


class _FlowArrays:
    """Per-flow slices of a table sorted by (flow, order): start/end offsets."""

    def __init__(self, flow_sorted: np.ndarray, n_flows: int):
        self.start = np.searchsorted(flow_sorted, np.arange(n_flows), side="left")
        self.end = np.searchsorted(flow_sorted, np.arange(n_flows), side="right")


# --- the classifier ----------------------------------------------------------------------

def classify(packets: dict[str, np.ndarray], flow_id: np.ndarray, flows, retrans, *,
             space: dict[str, np.ndarray] | None = None):
    """``retrans`` (a DataFrame of find_retransmissions) plus the kernel reason and the
    evidence for it (CLASSIFY_COLUMNS), as a DataFrame: ``classify_table`` for pandas."""
    import pandas as pd

    out = retrans.copy().reset_index(drop=True)
    if len(out) == 0:
        for c in CLASSIFY_COLUMNS:
            out[c] = pd.Series([], dtype=object)
        return out
    res = classify_table(packets, flow_id, flows_as_table(flows), from_pandas(out),
                         space=space)
    new = to_pandas({c: res[c] for c in CLASSIFY_COLUMNS})
    for c in CLASSIFY_COLUMNS:
        out[c] = new[c]
    return out


def classify_table(packets: dict[str, np.ndarray], flow_id: np.ndarray, flows: Table,
                   retrans: Table, *, space: dict[str, np.ndarray] | None = None) -> Table:
    """``retrans`` (a retransmission_table) plus the kernel reason and the evidence for it
    (CLASSIFY_COLUMNS; the optional ones Nullable)."""
    out = dict(retrans)
    m = len(out["pkt"])
    if m == 0:
        for c in CLASSIFY_COLUMNS:
            out[c] = np.zeros(0, dtype=object)
        return out
    if space is None:
        space = sequence_space(packets, flow_id, flows)

    n_flows = len(flows["flow_id"])
    flags_all = packets["flags"].astype(np.int64)
    ts_all = packets["ts_ns"]
    rev_of = flows["rev_flow_id"]
    sack_ok_f = flows["sack_ok"].astype(bool)
    ts_ok_f = flows["ts_ok"].astype(bool)

    r_pkt = out["pkt"]
    r_flow = out["flow_id"]
    r_ts = out["ts_ns"]
    r_seq = out["seq_abs"]
    r_end = out["end_abs"]
    r_frame = out["frame"]
    r_probe = present(out["probe"])

    data_flows = np.flatnonzero(np.bincount(r_flow))  # np.unique would import numpy.ma
    want = np.zeros(n_flows, dtype=bool)
    want[data_flows] = True

    # ---- ACK table: packets of the reverse flows of flows with retransmissions ---------
    frame = packets["frame"]
    sorted_cap = len(frame) < 2 or bool(np.all(frame[1:] > frame[:-1]))
    want_rev = np.zeros(n_flows, dtype=bool)
    rv = rev_of[data_flows]
    want_rev[rv[rv >= 0]] = True
    ack_sel = np.flatnonzero(space["ack_flag"] & want_rev[flow_id]
                             & ((flags_all & TCP_RST) == 0))
    if not sorted_cap:
        ack_sel = ack_sel[np.argsort(packets["frame"][ack_sel], kind="stable")]
    ack_sel = by_group(ack_sel, rev_of[flow_id[ack_sel]])
    a_flow = rev_of[flow_id[ack_sel]]
    una_init = _first_seq(space, flow_id, flows, packets["frame"])
    A = _ack_table(packets, space, ack_sel, a_flow, una_init)
    a_idx = _FlowArrays(a_flow, n_flows)

    # ---- originals and transmissions of the data flows -----------------------------------
    seg_len = space["seg_len"]
    tx_sel = np.flatnonzero((seg_len > 0) & want[flow_id] & ((flags_all & TCP_RST) == 0))
    if not sorted_cap:
        tx_sel = tx_sel[np.argsort(packets["frame"][tx_sel], kind="stable")]
    tx_sel = by_group(tx_sel, flow_id[tx_sel])
    tx_flow = flow_id[tx_sel]
    tx_ts = ts_all[tx_sel]
    is_rtx_pkt = np.zeros(len(flow_id), dtype=bool)
    is_rtx_pkt[r_pkt] = True
    # First transmissions, by flow then capture order, which is also sequence order.
    orig_sel = tx_sel[~is_rtx_pkt[tx_sel]]
    origs = _Originals(packets, space, flow_id, orig_sel)
    # What the sender had been told before each ACK (highest SACKed sequence), and whether
    # it sent new data between this ACK and the next (F-RTO step 2.b).
    A["sack_top"] = seg_cummax(A["sack_hi"], group_numbers(a_flow), exclusive=True)
    nx = origs.by_frame(a_flow, A["frame"], "right")
    nx_frame = _at(packets["frame"][orig_sel], nx,
                   (nx < len(orig_sel)) & (_at(origs.flow, nx, nx < len(orig_sel), -1) == a_flow),
                   np.iinfo(np.int64).max)
    next_ack_frame = np.r_[A["frame"][1:], np.iinfo(np.int64).max]
    same_next = np.r_[a_flow[1:] == a_flow[:-1], False]
    A["new_after"] = nx_frame < np.where(same_next, next_ack_frame, np.iinfo(np.int64).max)

    # ---- RTT samples -> SRTT / RTO (tcp_ack_update_rtt) ----------------------------------
    s_flow, s_frame, s_srtt, s_rto = _rtt_samples(packets, space, A, a_flow, origs, out,
                                                  flow_id, ts_ok_f, una_init,
                                                  _remote_shift_us(flows))

    # ---- per-retransmission evidence (vectorised) ----------------------------------------
    # Previous data transmission of the same flow (retransmission or not).
    pos_in_tx = _GroupedSearch(tx_flow, packets["frame"][tx_sel])(r_flow, r_frame, "left")
    prev_tx = pos_in_tx - 1
    prev_ok = (prev_tx >= 0) & (_at(tx_flow, prev_tx, prev_tx >= 0, -1) == r_flow)
    prev_tx_ts = _at(tx_ts, prev_tx, prev_ok, _NONE)
    since_last_send = np.where(prev_ok, r_ts - prev_tx_ts, _NONE)
    # The last ACK from the receiver before it: index into the ACK table.
    k_last = _grp_search(a_flow, packets["frame"][ack_sel], r_flow, r_frame,
                         side="left") - 1
    k_ok = (k_last >= 0) & (_at(a_flow, k_last, k_last >= 0, -1) == r_flow)
    k_last = np.where(k_ok, k_last, -1)
    last_ack_ts = _at(A["ts"], k_last, k_ok, _NONE)
    since_last_ack = np.where(k_ok, r_ts - last_ack_ts, _NONE)

    # A flow sent by the capture's peer (flows.local is False): its segments reach us
    # half a path RTT after they left, our ACKs reach it half an RTT after we saw them. In
    # the sender's own time, an ACK-clocked retransmission follows the ACK by 0, not by
    # the path RTT: compare in that time.
    shift_f = _remote_shift_us(flows) * 1000
    shift = shift_f[r_flow]
    rem = shift > ACK_CLOCK_NS
    if rem.any() and len(a_flow):
        t_ref = int(ts_all.min())
        k2 = np.searchsorted(_key(a_flow, (A["ts"] - t_ref) // 1000),
                             _key(r_flow[rem], (r_ts[rem] - shift[rem] - t_ref) // 1000),
                             side="right") - 1
        ok2 = (k2 >= 0) & (_at(a_flow, k2, k2 >= 0, -1) == r_flow[rem])
        k_last[rem] = np.where(ok2, k2, -1)
        k_ok[rem] = ok2
        since_last_ack[rem] = np.where(ok2, r_ts[rem] - shift[rem] - _at(A["ts"], k2, ok2, 0),
                                       _NONE)

    # SRTT/RTO in force at each retransmission (the last sample before it).
    s_pos = np.searchsorted(_pair_key(s_flow, s_frame),
                            _pair_key(r_flow, r_frame), side="left") - 1
    s_ok = (s_pos >= 0) & (_at(s_flow, s_pos, s_pos >= 0, -1) == r_flow)
    srtt_us = _at(s_srtt, s_pos, s_ok, 0.0).astype(np.float64)
    rto_us = _at(s_rto, s_pos, s_ok, float(TCP_TIMEOUT_INIT_US)).astype(np.float64)

    # Bursts: a retransmission continues the previous one of its flow when no ACK arrived
    # in between and the flow's previous transmission left just before it.
    order_r = np.lexsort((r_frame, r_flow))
    rf, rk = r_flow[order_r], k_last[order_r]
    cont = np.zeros(m, dtype=bool)
    cont[1:] = (rf[1:] == rf[:-1]) & (rk[1:] == rk[:-1])
    cont &= (since_last_send[order_r] >= 0) & (since_last_send[order_r] <= BURST_GAP_NS)
    cont &= ~r_probe[order_r]
    cont[1:] &= ~r_probe[order_r][:-1]
    burst_id_sorted = np.cumsum(~cont) - 1
    burst_of = np.empty(m, dtype=np.int64)
    burst_of[order_r] = burst_id_sorted

    # Spurious: D-SACK (RFC 2883) or an Eifel timestamp echo (RFC 3522).
    dsack_ts = _dsack_times(A, a_flow, out)
    ts_echo = _ts_echo_spurious(packets, A, a_flow, a_idx, out, ts_ok_f)

    # snd_nxt when it was sent. New data always leaves at snd_nxt, so the next first
    # transmission after a retransmission starts at the sender's snd_nxt: when that is
    # beyond what the capture has seen (it started late, or missed packets), the bytes in
    # between were outstanding too, and the retransmission was not of the tail.
    snd_nxt_r = filled(out["snd_nxt_abs"], _NONE).astype(np.int64)
    nxt = origs.by_frame(r_flow, r_frame, "right")
    nxt_ok = (nxt < len(origs.sel)) & (_at(origs.flow, nxt, nxt < len(origs.sel), -1) == r_flow)
    nxt_seq = _at(origs.seq, nxt, nxt_ok, _NONE)
    snd_nxt_r = np.maximum(snd_nxt_r, np.where(nxt_ok, nxt_seq, _NONE))

    # MSS in use, to count packets_out for the PTO (tcp_schedule_loss_probe).
    mss = _flow_mss(packets, flows, flow_id, tx_sel)
    una_at = np.where(k_ok, _at(A["una"], k_last, k_ok, 0), una_init[r_flow])
    pkts_out = _packets_out(origs, mss, r_flow, una_at, snd_nxt_r)

    # When the segment at snd_una last left (its first transmission here; the replay adds
    # its retransmissions): the RTO runs from it or from the last ACK that advanced.
    p_ok, p = origs.containing(r_flow, una_at)
    head_orig_ts = _at(origs.ts, p, p_ok, _NONE)
    adv_ff = _ffill_adv(A["adv"], a_flow)

    rows_in = {
        "seq": r_seq, "end": r_end, "ts": r_ts, "flags": flags_all[r_pkt], "snd_nxt": snd_nxt_r,
        "tsval": packets["tsval"][r_pkt].astype(np.int64),
        "has_ts": packets["opt_ts"][r_pkt].astype(bool), "k": k_last, "sla": since_last_ack,
        "srtt": srtt_us, "rto": rto_us, "probe": r_probe, "dsack": dsack_ts,
        "pkts_out": pkts_out, "head_ts": head_orig_ts,
    }
    flows_in = {
        "sack_ok": sack_ok_f, "mss": mss, "mss_known": flows["handshake_seen"].astype(bool),
        "una0": una_init, "a_start": a_idx.start, "a_end": a_idx.end,
    }
    res = _replay(rows_in, flows_in, A, adv_ff, order_r, burst_of, r_flow, int(ts_all.min()))

    kind = res["kind"]
    out["kind_pcap"] = np.array(kind, dtype=object)
    out["family"] = np.array([FAMILY[k] for k in kind], dtype=object)
    spurious_by = np.full(m, None, dtype=object)
    spurious_by[ts_echo] = "ts_echo"
    spurious_by[dsack_ts < _INF] = "dsack"
    spurious_by[r_probe] = None
    out["spurious"] = Nullable(spurious_by != None, np.ones(m, dtype=bool))  # noqa: E711
    out["spurious_by"] = spurious_by
    out["since_last_send_ns"] = nullable(since_last_send, since_last_send != _NONE)
    out["since_last_ack_ns"] = nullable(since_last_ack, k_ok)
    out["srtt_us"] = nullable(np.round(srtt_us).astype(np.int64), s_ok)
    pto = np.array(res["pto_ns"], dtype=np.int64)
    rto = np.array(res["rto_ns"], dtype=np.int64)
    out["expected_pto_ns"] = nullable(pto, ~r_probe)
    out["expected_rto_ns"] = nullable(rto, ~r_probe)
    bo = np.array(res["backoff"], dtype=np.int64)
    out["backoff"] = nullable(bo, bo >= 0)
    trig = np.array(res["trigger"], dtype=np.int64)
    out["trigger_frame"] = nullable(_at(A["frame"], trig, trig >= 0, 0), trig >= 0)
    out["since_trigger_ns"] = nullable(r_ts - _at(A["ts"], trig, trig >= 0, 0), trig >= 0)
    out["ca_state"] = np.array([CA_NAMES.get(s) for s in res["ca"]], dtype=object)
    out["clock"] = np.array(res["clock"], dtype=object)
    out["position"] = np.array(res["position"], dtype=object)
    out["burst"] = burst_of
    return out


def _at(a: np.ndarray, idx: np.ndarray, valid: np.ndarray, fill) -> np.ndarray:
    """a[idx] where ``valid`` (idx in range), ``fill`` elsewhere; safe when ``a`` is empty."""
    if len(a) == 0:
        return np.full(len(idx), fill)
    return np.where(valid, a[np.clip(idx, 0, len(a) - 1)], fill)


def _pair_key(grp: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(flow, frame) as one sortable int64."""
    return _key(grp, order)


def _packets_out(origs: _Originals, mss, r_flow, una, snd_nxt) -> np.ndarray:
    """tp->packets_out: segments (MSS units of each skb) between snd_una and snd_nxt."""
    if len(origs.sel) == 0:
        return np.maximum(1, -(-(snd_nxt - una) // mss[r_flow]))
    pc = np.maximum(1, -(-(origs.end - origs.seq) // mss[origs.flow]))
    cum = np.cumsum(pc)
    lo = origs.by_seq(r_flow, una, "left")
    hi = origs.by_seq(r_flow, snd_nxt, "left")
    c_hi = np.where(hi > 0, cum[np.clip(hi - 1, 0, None)], 0)
    c_lo = np.where(lo > 0, cum[np.clip(lo - 1, 0, None)], 0)
    # The segment holding snd_una (partly acked) still counts.
    lo_part = (lo > 0) & (_at(origs.flow, lo - 1, lo > 0, -1) == r_flow) & \
        (_at(origs.end, lo - 1, lo > 0, 0) > una)
    return np.maximum(c_hi - c_lo + lo_part, 1)


def _first_seq(space, flow_id, flows, frame) -> np.ndarray:
    """snd_una before any ACK: the first sequence number each flow used."""
    first = flows["first_frame"]
    if len(frame) and bool(np.all(frame[1:] > frame[:-1])):
        idx = np.searchsorted(frame, first)
    else:
        idx = np.full(len(first), 0, dtype=np.int64)
        o = np.arange(len(flow_id))[::-1]
        idx[flow_id[o]] = o
    return space["seq_abs"][idx]


def _flow_mss(packets, flows, flow_id, tx_sel) -> np.ndarray:
    """Sender MSS: the peer's SYN MSS less the timestamp option, else the largest segment."""
    rev = flows["rev_flow_id"]
    n_flows = len(rev)
    peer_mss = np.where(rev >= 0, flows["mss"][np.clip(rev, 0, None)], 0)
    peer_mss = peer_mss.astype(np.int64) - np.where(flows["ts_ok"], 12, 0)
    biggest = np.zeros(n_flows, dtype=np.int64)
    if len(tx_sel):
        f = flow_id[tx_sel]  # grouped by flow
        starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
        biggest[f[starts]] = np.maximum.reduceat(
            packets["payload_len"][tx_sel].astype(np.int64), starts)
    return np.where(peer_mss > 0, peer_mss, np.where(biggest > 0, np.minimum(biggest, 1448),
                                                     1448))


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
    dsack = (sn >= 1) & ((R[:, 0] <= ack) | ((sn >= 2) & (L[:, 1] <= L[:, 0])
                                             & (R[:, 0] <= R[:, 1])))
    sack_hi = np.full(len(sel), _NONE, dtype=np.int64)
    sack_hi_left = np.full(len(sel), _NONE, dtype=np.int64)  # left edge of that block
    for b in range(4):
        use = (sn > b) & ~((b == 0) & dsack) & (R[:, b] > sack_hi)
        sack_hi = np.where(use, R[:, b], sack_hi)
        sack_hi_left = np.where(use, L[:, b], sack_hi_left)
    payload = packets["payload_len"][sel].astype(np.int64)
    return {
        "pkt": sel, "ts": packets["ts_ns"][sel], "frame": packets["frame"][sel],
        "ack": ack, "una": una, "prev_una": prev_una, "adv": una > prev_una,
        "sack_hi": sack_hi, "sack_hi_left": sack_hi_left, "dsack": dsack,
        "dsack_l": np.where(dsack, L[:, 0], 0),
        "dsack_r": np.where(dsack, R[:, 0], 0), "tsecr": packets["tsecr"][sel].astype(np.int64),
        "opt_ts": packets["opt_ts"][sel].astype(bool), "payload": payload, "sack_n": sn,
        "win": packets["win"][sel].astype(np.int64),
        "sack_l": L, "sack_r": R,
    }


def _remote_shift_us(flows: Table) -> np.ndarray:
    """Path RTT (us) to add to RTT samples of flows sent by the capture's peer, else 0."""
    out = np.zeros(len(flows["flow_id"]), dtype=np.int64)
    if "local" not in flows:
        return out
    remote = ~filled(flows["local"], True).astype(bool)
    prtt = filled(flows["path_rtt_ns"], 0).astype(np.int64)
    out[remote] = prtt[remote] // 1000
    return out


def _rtt_samples(packets, space, A, a_flow, origs: _Originals, rtx, flow_id, ts_ok_f, una_init,
                 shift_us):
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
        p = _grp_search(rf, rs, f, hi - 1, side="right") - 1
        pc = np.clip(p, 0, None)
        return (p >= 0) & (rf[pc] == f) & (run_end[pc] > lo)

    def orig_containing(f, byte):
        ok, p = origs.containing(f, byte)
        return ok, _at(origs.ts, p, ok, 0)

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
    # For a flow sent by the peer, ACK leaves here -> data arrived here is RTT less the path.
    rtt = rtt + np.where(keep, shift_us[a_flow], 0)
    s_flow = a_flow[keep]
    srtt, rto = rtt_estimator(s_flow, np.maximum(rtt[keep], 1))
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
    has = packets["opt_ts"].astype(bool) & (packets["tsval"] != 0) & needed[flow_id]
    sel = np.flatnonzero(has)
    if not len(sel):
        return out
    # The first TSval of each flow against its capture time (1 ms phase error at most).
    first = np.full(len(offset), -1, dtype=np.int64)
    first[flow_id[sel[::-1]]] = sel[::-1]
    fs = first[flows_needed]
    fs = fs[fs >= 0]
    offset[flow_id[fs]] = (packets["tsval"][fs].astype(np.int64)
                           - packets["ts_ns"][fs] // 1_000_000) & 0xFFFFFFFF
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
    lo = _grp_search(sf, ss, df, dl - maxlen, side="left")
    hi = _grp_search(sf, ss, df, dr, side="left")
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
    # in time order (ties: numpy's default sort, as pandas' sort_values uses).
    by_t = np.argsort(st[cj], kind="quicksort")
    q_t, s_t = qi[by_t], ss[cj][by_t]
    o2 = np.lexsort((np.arange(len(by_t)), s_t, q_t))
    last = np.r_[(q_t[o2][1:] != q_t[o2][:-1]) | (s_t[o2][1:] != s_t[o2][:-1]), True]
    best = by_t[o2[last]]
    rows = o[cj[best]]
    times = dt[qi[best]]
    np.minimum.at(out, rows, times)
    return out


def _ts_echo_spurious(packets, A, a_flow, a_idx, rtx: Table, ts_ok_f) -> np.ndarray:
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
    k_after = np.searchsorted(_pair_key(a_flow, A["frame"]),
                              _pair_key(rf, rtx["frame"]), side="right")
    # ...and the first one whose cumulative ACK covers its end.
    k_cover = _grp_search(a_flow, A["una"], rf, rtx["end_abs"], side="left")
    k = np.maximum(k_after, k_cover)
    kc = np.clip(k, 0, len(a_flow) - 1)
    ok = have & (k < len(a_flow)) & (a_flow[kc] == rf) & (A["una"][kc] >= rtx["end_abs"])
    ecr = A["tsecr"][kc]
    before = (((ecr - tsval) & 0xFFFFFFFF) >= (1 << 31)) & (ecr != 0)
    out[ok & before & A["opt_ts"][kc]] = True
    return out


# --- the replay --------------------------------------------------------------------------

def _replay(R: dict, F: dict, A: dict, adv_ff: np.ndarray, order_r: np.ndarray,
            burst_of: np.ndarray, r_flow: np.ndarray, t_cap0: int) -> dict:
    """Walk each flow's retransmission bursts in order, replaying the congestion state.

    ``R``: per retransmission row, ``F``: per flow, ``A``: the ACK table (see classify).
    Between two bursts the ACKs' effect on the state (leaving Recovery/Loss when snd_una
    reaches high_seq, undo, the end of a probe episode) is found by binary search over the
    flow's cumulative ACKs; the burst's kind then follows from its clock, which segment it
    resends, and the state.
    """
    m = len(r_flow)
    kind = ["unknown"] * m
    clock: list = [None] * m
    position: list = [None] * m
    ca = [-1] * m
    backoff = [-1] * m
    trigger = [-1] * m
    pto_ns = [0] * m
    rto_ns = [0] * m

    # Burst table (one row per burst, in flow/time order).
    b_sorted = burst_of[order_r]
    b_first = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    b_last = np.r_[b_first[1:], len(order_r)]
    seg_lo = np.minimum.reduceat(R["seq"][order_r], b_first)
    seg_hi = np.maximum.reduceat(R["end"][order_r], b_first)
    b_flow = r_flow[order_r[b_first]]

    # Python lists: scalar access in the loop is several times faster than numpy's.
    a_ts, a_una, a_ack, a_adv, a_sack_hi, a_dsack, a_tsecr, a_payload, a_sack_n, \
        a_sack_top, a_new_after, a_prev_una, a_sack_left = (A[k].tolist() for k in (
            "ts", "una", "ack", "adv", "sack_hi", "dsack", "tsecr", "payload", "sack_n",
            "sack_top", "new_after", "prev_una", "sack_hi_left"))
    rs_l, rts_l, flags_l, snd_l, tsval_l, hts_l, kl_l, sla_l, srtt_l, rto_l, probe_l, \
        dsack_l, pkts_l, head_ts_l = (R[k].tolist() for k in (
            "seq", "ts", "flags", "snd_nxt", "tsval", "has_ts", "k", "sla", "srtt", "rto",
            "probe", "dsack", "pkts_out", "head_ts"))
    sack_ok_l, mss_l, mss_known_l, una0_l, a_start, a_end = (F[k].tolist() for k in (
        "sack_ok", "mss", "mss_known", "una0", "a_start", "a_end"))
    adv_ff_l = adv_ff.tolist()
    rows_l = order_r.tolist()
    bf_l, bl_l = b_first.tolist(), b_last.tolist()
    lo_l, hi_l = seg_lo.tolist(), seg_hi.tolist()
    bflow_l = b_flow.tolist()

    cur_flow = -1
    st = OPEN
    for bi in range(len(bf_l)):
        f = bflow_l[bi]
        rows = rows_l[bf_l[bi]:bl_l[bi]]
        r0 = rows[0]
        if f != cur_flow:
            cur_flow = f
            st = OPEN
            high_seq = 0
            entry_k = -1           # ACK index current when the state was entered
            loss_ranges = _Ranges()  # ranges resent since the last RTO (the Loss episode)
            ever_resent = _Ranges()  # every range ever resent (TCPCB_EVER_RETRANS)
            episode_n = 0          # retransmissions since the last Open (undo accounting)
            episode_dmax = _NONE   # ... and when the last of their D-SACKs arrived
            retrans_stamp = None   # TSval of the episode's first retransmission
            frto = False
            tlp_high = None
            tlp_k = -1
            chain_head = None      # head seq of the current run of timeouts
            chain_n = 0
            chain_una = None
            syn_n = 0
            last_rtx_ts = {}       # seq -> time of its latest retransmission
            fa, fb_ = a_start[f], a_end[f]
        lo, hi = lo_l[bi], hi_l[bi]
        t0 = rts_l[r0]
        k = kl_l[r0]                       # last ACK before the burst (absolute index)
        una = a_una[k] if k >= 0 else una0_l[f]
        snd_nxt = snd_l[r0]
        srtt = srtt_l[r0]
        rto_base = rto_l[r0]
        sla = sla_l[r0]

        if probe_l[r0]:
            continue  # keep-alive / window probe: not a retransmission of data

        # ---- ACK-driven transitions between the previous burst and this one -------------
        if k >= 0:
            if st in (RECOVERY, LOSS):
                # Leave when snd_una reaches high_seq (tcp_fastretrans_alert step D,
                # tcp_process_loss "recovered").
                j = bisect_left(a_una, high_seq, max(entry_k + 1, fa), fb_)
                exit_k = j if j < fb_ and a_una[j] >= high_seq else _INF
                if st == RECOVERY and not sack_ok_l[f]:
                    # Reno holds Recovery while snd_una == high_seq, until something above
                    # it is acked (tcp_try_undo_recovery; RFC 6582 against false fast
                    # retransmits): a timeout meanwhile interrupts recovery (no F-RTO).
                    j = bisect_right(a_una, high_seq, max(entry_k + 1, fa), fb_)
                    exit_k = j if j < fb_ and a_una[j] > high_seq else _INF
                undo_k = _INF
                if st == LOSS:
                    undo_k = _loss_undo(entry_k, min(k, exit_k), fa, a_una, a_prev_una, a_adv,
                                        a_tsecr, a_sack_hi, a_sack_left, a_sack_top,
                                        a_payload, a_new_after, retrans_stamp, frto,
                                        loss_ranges, high_seq, sack_ok_l[f], ever_resent)
                if episode_n and min(exit_k, undo_k) > k:
                    # tcp_try_undo_dsack / undo_retrans == 0: every retransmission of the
                    # episode was reported duplicate (tcp_try_undo_loss, tcp_try_undo_dsack).
                    last_d = episode_dmax
                    if last_d < _INF:
                        jd = bisect_left(a_ts, last_d, max(entry_k + 1, fa), fb_)
                        if jd <= k:
                            undo_k = min(undo_k, jd)
                if min(exit_k, undo_k) <= k:
                    # tcp_try_to_open -> tcp_try_keep_open: Disorder, not Open, while the
                    # segment at snd_una was ever resent (tcp_any_retrans_done); no probe
                    # is scheduled in Disorder (tcp_schedule_loss_probe).
                    st = DISORDER if una in last_rtx_ts else OPEN
                    episode_n, episode_dmax = 0, _NONE
                    retrans_stamp = None
                    loss_ranges = _Ranges()
                    frto = False
            elif st == DISORDER and una not in last_rtx_ts:
                st = OPEN
            if tlp_high is not None:
                if _tlp_cleared(tlp_high, tlp_k, k, fa, fb_, a_una, a_ack, a_adv, a_dsack,
                                a_payload, a_sack_n):
                    tlp_high = None
            if chain_una is not None and una > chain_una:
                chain_head = None
                chain_n = 0
                chain_una = None

        sack_ok = sack_ok_l[f]
        sacked = k >= 0 and a_sack_hi[k] > una
        head = lo <= una
        tail = hi >= snd_nxt
        pos = "head+tail" if head and tail else "head" if head else "tail" if tail else "middle"
        pkts_out = pkts_l[r0]
        pto = (2 * srtt + (TCP_RTO_MIN_US if pkts_out == 1 else TCP_TIMEOUT_MIN_US)
               if srtt > 0 else TCP_TIMEOUT_INIT_US)
        pto = min(pto, rto_base)
        fl = flags_l[r0]
        # The RTO runs from the later of the head's last transmission and the last ACK that
        # advanced snd_una (tcp_rearm_rto, tcp_rto_delta_us); backed off per timeout.
        head_tx = max(head_ts_l[r0], last_rtx_ts.get(una, _NONE))
        ka = adv_ff_l[k] if k >= 0 else -1
        t_adv = a_ts[ka] if ka >= fa else _NONE
        since_arm = t0 - max(head_tx, t_adv)
        bo_next = chain_n + 1 if (chain_head == lo and chain_una == una) else 0
        rto_due = since_arm >= 0.5 * rto_base * 1000 * (1 << min(bo_next, 10))
        ack_clocked = 0 <= sla <= ACK_CLOCK_NS or (
            0 <= sla < TIMER_MIN_NS and k >= 0 and a_adv[k] and not (head and rto_due))
        if ack_clocked and st == OPEN and k >= 0:
            # In Open, only an ACK with news enters tcp_fastretrans_alert (tcp_ack_is_dubious):
            # a SACK, a duplicate ACK, or progress. Peer data alone releases nothing.
            if not (a_sack_n[k] > 0 or a_adv[k] or a_payload[k] == 0):
                ack_clocked = False

        trig = -1
        bo = -1
        # tcp_retransmit_timer and tcp_send_loss_probe resend one MSS (segs = 1, and
        # tcp_retrans_try_collapse stays within it): more at once is
        # tcp_xmit_retransmit_queue, from an ACK (perhaps one not seen) or the RACK timer.
        multi = len(rows) > 1 or (mss_known_l[f] and hi - lo > mss_l[f])
        if not sack_ok and st != LOSS and not fl & TCP_SYN and (multi or not head):
            # NewReno recovery resends only the segment at snd_una, one MSS per partial
            # ACK (tcp_newreno_mark_lost marks just the head, cut to one MSS), whatever
            # clocks it (an ACK, or TSQ's tasklet once the device drains). More at once,
            # or a segment above snd_una, is the Loss state's walk over all that a timeout
            # marked lost (tcp_timeout_mark_lost): a timeout the capture did not show. Its
            # high_seq is at least what has been sent.
            st = LOSS
            high_seq = snd_nxt
            entry_k = k
            loss_ranges = _Ranges()
            tlp_high = None
            frto = False
        if fl & TCP_SYN:
            knd = "synack" if fl & TCP_ACK else "syn"
            bo = syn_n
            syn_n += 1
            clk = "timer"
            state_sent = OPEN
            rto_us = TCP_TIMEOUT_INIT_US * (1 << min(bo, 7))
        elif ack_clocked:
            clk = "ack"
            trig = k
            # Only RACK can find a retransmission lost again (tcp_identify_packet_loss sets
            # FLAG_LOST_RETRANS from tcp_rack_mark_lost), and RACK needs SACK: a Reno flow
            # stays in Loss, resending in slow start, until snd_una passes high_seq
            # (tcp_process_loss; tcp_newreno_mark_lost marks nothing in Loss).
            if st == LOSS and (not sack_ok or not loss_ranges.overlaps(lo, hi)):
                knd = "rto_recovery"
            else:
                # A retransmission resent on an ACK in Loss means RACK found it lost again:
                # FLAG_LOST_RETRANS moves Loss to Recovery (tcp_fastretrans_alert).
                if st != RECOVERY:
                    st = RECOVERY
                    high_seq = snd_nxt
                    entry_k = k
                    tlp_high = None  # tcp_init_cwnd_reduction
                    loss_ranges = _Ranges()
                knd = "fast"
            state_sent = st
            rto_us = rto_base
        else:
            clk = "timer"
            timeout_like = sla < 0 or sla >= 0.75 * rto_base * 1000
            reo_like = 0 <= sla <= (0.5 * srtt + 15_000) * 1000
            # No ACK of this flow yet in the capture. Unless the capture only just began,
            # none arrived lately either: the silence is at least (now - capture start).
            # Just after the start the clock is unknown. A capture that starts at a random
            # moment far more often opens in the silence before a timer (hundreds of ms
            # before an RTO) than in the microseconds between an ACK and the fast
            # retransmit it clocks: so a resend that the receiver's next ACK shows was at
            # the head (snd_una moves past it) while it held data beyond is the RTO ending
            # that silence; one that was not at the head, with data held beyond it, was
            # sent on SACK news (fast recovery).
            if k < 0:
                sla = t0 - t_cap0
                timeout_like = sla >= 0.75 * rto_base * 1000
                reo_like = False
            held_beyond = (k < 0 and sla <= ACK_CLOCK_NS and fa < fb_
                           and (a_sack_hi[fa] > hi or a_una[fa] > hi))
            if held_beyond and not multi and a_una[fa] > lo:
                knd = "rto"
                # snd_nxt was at least what the receiver shows it held (sent before the
                # capture): the Loss episode lasts until snd_una passes it.
                snd_nxt = max(snd_nxt, a_una[fa], a_sack_hi[fa])
            elif multi or held_beyond:
                knd = "rto_recovery" if st == LOSS else "fast"
            elif not sack_ok:
                # Without SACK the only timer is the RTO (no TLP, no RACK reorder timer):
                # a retransmission that cannot be one was clocked by a late-processed ACK.
                if head and (rto_due or k < 0):
                    knd = "rto"
                else:
                    knd = "rto_recovery" if st == LOSS else "fast"
                    clk = "ack"
                    trig = k
            elif st == LOSS:
                knd = "fast" if (sacked and not head and reo_like) else "rto"
            elif st == OPEN and not sacked:
                if tail and tlp_high is None:
                    knd = "tlp"
                elif head:
                    knd = "rto"
                else:
                    knd = "tlp" if tail else "fast"
            else:
                # Disorder or Recovery: the RACK reorder timer (fast) fires within reo_wnd +
                # 2 ms of the ACK that armed it; the RTO only after the whole RTO.
                if head and (timeout_like or not reo_like):
                    knd = "rto"
                else:
                    knd = "fast"
            if knd == "fast":
                # The RACK reorder timer was armed by the last ACK (its SACK): the trigger.
                trig = k
                if st != RECOVERY:
                    st = RECOVERY
                    high_seq = snd_nxt
                    entry_k = k
                    tlp_high = None
            if knd == "rto":
                if chain_head is not None and chain_head == lo and chain_una == una:
                    chain_n += 1
                else:
                    chain_head, chain_n, chain_una = lo, 0, una
                bo = chain_n
                prev_st = st
                st = LOSS
                high_seq = snd_nxt
                entry_k = k
                loss_ranges = _Ranges()
                tlp_high = None  # tcp_enter_loss
                # F-RTO (RFC 5682 §3.1 step 1) unless recovery was already underway.
                frto = prev_st < RECOVERY or chain_n > 0
            if knd == "tlp":
                tlp_high = snd_nxt
                tlp_k = k
            state_sent = st
            rto_us = rto_base * (1 << min(max(bo, 0), 10))
            rto_us = min(rto_us, TCP_RTO_MAX_US)

        if knd in ("rto", "rto_recovery"):
            loss_ranges.add(lo, hi)
        ever_resent.add(lo, hi)
        if knd != "tlp":
            if not episode_n and knd not in ("syn", "synack"):
                retrans_stamp = tsval_l[r0] if hts_l[r0] else None
            episode_n += len(rows)
            for r in rows:
                if dsack_l[r] > episode_dmax:
                    episode_dmax = dsack_l[r]
        for r in rows:
            last_rtx_ts[rs_l[r]] = rts_l[r]
            kind[r] = knd
            clock[r] = clk if r == r0 else "burst"
            position[r] = pos
            ca[r] = state_sent
            backoff[r] = bo
            trigger[r] = trig
            pto_ns[r] = int(pto * 1000)
            rto_ns[r] = int(rto_us * 1000)
    return {"kind": kind, "clock": clock, "position": position, "ca": ca, "backoff": backoff,
            "trigger": trigger, "pto_ns": pto_ns, "rto_ns": rto_ns}


def _ffill_adv(adv: np.ndarray, a_flow: np.ndarray) -> np.ndarray:
    """Per ACK row, the row of the last ACK at or before it (same flow) that advanced
    snd_una, else -1."""
    m = len(adv)
    idx = np.where(adv, np.arange(m), -1)
    last = np.maximum.accumulate(idx) if m else idx
    if m:
        same = last >= 0
        same[same] = a_flow[last[same]] == a_flow[same]
        last = np.where(same, last, -1)
    return last


class _Ranges:
    """A set of disjoint [lo, hi) sequence ranges, merged on insertion (bisect, no scans)."""

    __slots__ = ("lo", "hi")

    def __init__(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.lo)

    def add(self, lo: int, hi: int) -> None:
        i = bisect_left(self.hi, lo)          # first range ending at or after lo
        j = bisect_right(self.lo, hi)         # ranges starting at or before hi
        if i < j:
            lo = min(lo, self.lo[i])
            hi = max(hi, self.hi[j - 1])
        self.lo[i:j] = [lo]
        self.hi[i:j] = [hi]

    def overlaps(self, lo: int, hi: int) -> bool:
        i = bisect_right(self.hi, lo)         # first range ending after lo
        return i < len(self.lo) and self.lo[i] < hi

    def covers(self, lo: int, hi: int) -> bool:
        i = bisect_right(self.lo, lo) - 1
        return i >= 0 and self.hi[i] >= hi


def _loss_undo(entry_k, upto_k, fa, a_una, a_prev_una, a_adv, a_tsecr, a_sack_hi, a_sack_left,
               a_sack_top, a_payload, a_new_after, retrans_stamp, frto, loss_ranges,
               high_seq, sack_ok=True, ever_resent: _Ranges | None = None) -> int:
    """First ACK index in (entry_k, upto_k] at which the Loss state is undone, else _INF.

    tcp_process_loss, per ACK: one advancing snd_una undoes when it echoes a TSval older
    than the episode's first retransmission (tcp_try_undo_loss -> tcp_packet_delayed,
    Eifel). With F-RTO (RFC 5682 §3.1), an ACK or SACK of never-retransmitted, never-SACKed
    data below high_seq proves the timeout spurious (step 3.b, FLAG_ORIG_SACK_ACKED); once
    new data went out, a SACK or duplicate ACK proves the loss real (step 3.a); the first
    partial ACK with no new data to send falls back to conventional recovery (step 2.b).
    Without SACK only the F-RTO undo reopens the connection: tcp_try_undo_loss restores
    cwnd on an Eifel undo but leaves a Reno sender in Loss (`frto_undo || tcp_is_sack`).
    And without SACK a cumulative ACK proves nothing if it also covers a segment that was
    ever resent (tcp_clean_rtx_queue drops FLAG_ORIG_SACK_ACKED on FLAG_RETRANS_DATA_ACKED
    for Reno): only an ACK of never-resent data alone undoes.
    """
    resent = ever_resent if ever_resent is not None else loss_ranges
    j = max(entry_k + 1, fa)
    steps = 0
    new_sent = False
    while j <= upto_k and steps < 8:
        prev_una = a_prev_una[j]
        adv = a_adv[j]
        if sack_ok and adv and retrans_stamp is not None and a_tsecr[j] and \
                ((a_tsecr[j] - retrans_stamp) & 0xFFFFFFFF) >= (1 << 31):
            return j
        if frto:
            # What was SACKed before: at the flow's first ACK in the capture nothing is
            # known, and its blocks (from before the capture) are not news.
            top = a_sack_top[j] if j > fa else max(a_sack_top[j], a_sack_hi[j])
            if adv:
                lo, hi = max(prev_una, top), min(a_una[j], high_seq)
                if sack_ok:
                    if hi > lo and not loss_ranges.covers(lo, hi):
                        return j
                elif hi > lo and not resent.overlaps(prev_una, a_una[j]):
                    return j
            if a_sack_hi[j] > top:
                lo, hi = max(top, a_sack_left[j], a_una[j]), min(a_sack_hi[j], high_seq)
                if hi > lo and not loss_ranges.covers(lo, hi):
                    return j
            if new_sent:
                if a_sack_hi[j] > top or (not adv and a_payload[j] == 0):
                    frto = False
            elif adv and a_una[j] < high_seq:
                if a_new_after[j]:
                    new_sent = True
                else:
                    frto = False
        steps += 1
        j += 1
    return _INF


def _tlp_cleared(tlp_high, tlp_k, k, fa, fb, a_una, a_ack, a_adv, a_dsack, a_payload,
                 a_sack_n) -> bool:
    """Did an ACK in (tlp_k, k] end the probe episode? (tcp_process_tlp_ack)

    An ACK beyond tlp_high_seq ends it (loss repaired, or new data acknowledged); so does a
    D-SACK at or above it (original and probe both arrived) or a pure duplicate ACK at it.
    An ACK exactly at tlp_high_seq that advances snd_una leaves it set.
    """
    lo = max(tlp_k + 1, fa)
    j = bisect_right(a_una, tlp_high, lo, fb)
    if j <= k and j < fb:
        return True
    stop = min(k, j - 1, lo + 64)
    for i in range(lo, stop + 1):
        if a_ack[i] >= tlp_high and (a_dsack[i] or (not a_adv[i] and a_payload[i] == 0
                                                    and a_sack_n[i] == 0)):
            return True
    return False


def family_of(kind: pd.Series) -> pd.Series:
    """Map kind_pcap to its family (rto / fast / tlp / unknown)."""
    return kind.map(FAMILY)


__all__ = ["classify", "family_of", "rtt_estimator", "CLASSIFY_COLUMNS", "FAMILY", "KINDS"]
