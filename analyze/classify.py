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
TCP_TIMEOUT_MIN_US (2 ms) after the event that armed it. That, which segment is resent
(head or tail), and the congestion state replayed below decide the kind.

Work is bulk first: SRTT samples, ACK tables, D-SACK matching and bursts are vectorised; a
tight loop then walks only the *bursts* of retransmissions of each flow (not every packet),
applying the ACK-driven state changes between two bursts with binary searches over the
flow's cumulative-ACK array.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np
import pandas as pd

from retranscope.analyze.flows import sequence_space
from retranscope.analyze.retrans import sender_context
from retranscope.schemas.packets import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN

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
#: Wire segments of one kernel retransmit call (a GSO skb split, or the rest of the queue
#: walk) leave back to back, with no ACK in between.
BURST_GAP_NS = TCP_TIMEOUT_MIN_US * 1000 // 2

OPEN, DISORDER, CWR, RECOVERY, LOSS = 0, 1, 2, 3, 4  # enum tcp_ca_state
CA_NAMES = {OPEN: "Open", DISORDER: "Disorder", CWR: "CWR", RECOVERY: "Recovery", LOSS: "Loss"}

_NONE = np.iinfo(np.int64).min // 4
_INF = np.iinfo(np.int64).max // 4

CLASSIFY_COLUMNS = (
    "kind_pcap", "family", "spurious", "spurious_by", "since_last_send_ns", "since_last_ack_ns",
    "srtt_us", "expected_pto_ns", "expected_rto_ns", "backoff", "trigger_frame",
    "since_trigger_ns", "ca_state", "clock", "position", "burst",
)


# --- bulk helpers ------------------------------------------------------------------------

def _affine_scan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y[i] = a[i] * y[i-1] + b[i] (y[-1] = 0), as a parallel prefix (Hillis-Steele).

    A row with a = 0 restarts the recurrence, which is how groups are kept apart. All
    |a| <= 1, so the composed coefficients only shrink: numerically stable.
    """
    A = a.astype(np.float64).copy()
    B = b.astype(np.float64).copy()
    n = len(A)
    d = 1
    while d < n:
        nB = B.copy()
        nB[d:] += A[d:] * B[:-d]
        nA = A.copy()
        nA[d:] *= A[:-d]
        A, B = nA, nB
        d *= 2
    return B


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


def _grp_search(grp_sorted: np.ndarray, val_sorted: np.ndarray, q_grp: np.ndarray,
                q_val: np.ndarray, side: str = "right") -> np.ndarray:
    """searchsorted of (group, value) pairs; rows sorted by group then value (int64 values)."""
    band = np.int64(1) << np.int64(42)
    lim = (np.int64(1) << np.int64(41)) - 1

    def key(g, v):
        return g.astype(np.int64) * band + (np.clip(v, -lim, lim) + (band >> 1))

    return np.searchsorted(key(grp_sorted, val_sorted), key(q_grp, q_val), side=side)


class _FlowArrays:
    """Per-flow slices of a table sorted by (flow, order): start/end offsets."""

    def __init__(self, flow_sorted: np.ndarray, n_flows: int):
        self.start = np.searchsorted(flow_sorted, np.arange(n_flows), side="left")
        self.end = np.searchsorted(flow_sorted, np.arange(n_flows), side="right")


# --- the classifier ----------------------------------------------------------------------

def classify(packets: dict[str, np.ndarray], flow_id: np.ndarray, flows: pd.DataFrame,
             retrans: pd.DataFrame, *, space: dict[str, np.ndarray] | None = None,
             context: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """``retrans`` plus the kernel reason and the evidence for it (CLASSIFY_COLUMNS)."""
    out = retrans.copy().reset_index(drop=True)
    m = len(out)
    if m == 0:
        for c in CLASSIFY_COLUMNS:
            out[c] = pd.Series([], dtype=object)
        return out
    if space is None:
        space = sequence_space(packets, flow_id, flows)
    if context is None:
        context = sender_context(packets, flow_id, flows, space)

    n_flows = len(flows)
    flags_all = packets["flags"].astype(np.int64)
    ts_all = packets["ts_ns"]
    rev_of = flows["rev_flow_id"].to_numpy()
    sack_ok_f = flows["sack_ok"].to_numpy().astype(bool)
    ts_ok_f = flows["ts_ok"].to_numpy().astype(bool)

    r_pkt = out["pkt"].to_numpy()
    r_flow = out["flow_id"].to_numpy()
    r_ts = out["ts_ns"].to_numpy()
    r_seq = out["seq_abs"].to_numpy()
    r_end = out["end_abs"].to_numpy()
    r_probe = out["probe"].notna().to_numpy()

    data_flows = np.unique(r_flow)
    want = np.zeros(n_flows, dtype=bool)
    want[data_flows] = True

    # ---- ACK table: packets of the reverse flows of flows with retransmissions ---------
    pk_flow_of_ack = np.where(flow_id >= 0, rev_of[flow_id], -1)
    ack_sel = np.flatnonzero(space["ack_flag"] & (pk_flow_of_ack >= 0)
                             & want[np.clip(pk_flow_of_ack, 0, None)]
                             & ((flags_all & TCP_RST) == 0))
    a_flow = pk_flow_of_ack[ack_sel]
    o = np.lexsort((packets["frame"][ack_sel], a_flow))
    ack_sel, a_flow = ack_sel[o], a_flow[o]
    una_init = _first_seq(space, flow_id, n_flows)
    A = _ack_table(packets, space, ack_sel, a_flow, una_init)
    a_idx = _FlowArrays(a_flow, n_flows)

    # ---- originals and transmissions of the data flows -----------------------------------
    seg_len = space["seg_len"]
    tx_sel = np.flatnonzero((seg_len > 0) & want[flow_id] & ((flags_all & TCP_RST) == 0))
    tx_sel = tx_sel[np.lexsort((packets["frame"][tx_sel], flow_id[tx_sel]))]
    tx_flow = flow_id[tx_sel]
    tx_ts = ts_all[tx_sel]
    is_rtx_pkt = np.zeros(len(flow_id), dtype=bool)
    is_rtx_pkt[r_pkt] = True
    orig_sel = tx_sel[~is_rtx_pkt[tx_sel]]
    orig_sel = orig_sel[np.lexsort((space["seq_abs"][orig_sel], flow_id[orig_sel]))]

    una_init = _first_seq(space, flow_id, n_flows)

    # ---- RTT samples -> SRTT / RTO (tcp_ack_update_rtt) ----------------------------------
    s_flow, s_frame, s_srtt, s_rto = _rtt_samples(packets, space, A, a_flow, orig_sel, out,
                                                  flow_id, ts_ok_f, una_init)
    s_idx = _FlowArrays(s_flow, n_flows)

    # ---- per-retransmission evidence (vectorised) ----------------------------------------
    last_rev = context["last_rev"][r_pkt]
    # Previous data transmission of the same flow (retransmission or not).
    pos_in_tx = np.searchsorted(_pair_key(tx_flow, packets["frame"][tx_sel]),
                                _pair_key(r_flow, out["frame"].to_numpy()), side="left")
    prev_tx = pos_in_tx - 1
    prev_ok = (prev_tx >= 0) & (_at(tx_flow, prev_tx, prev_tx >= 0, -1) == r_flow)
    prev_tx_ts = _at(tx_ts, prev_tx, prev_ok, _NONE)
    prev_tx_pkt = _at(tx_sel, prev_tx, prev_ok, -1)
    since_last_send = np.where(prev_ok, r_ts - prev_tx_ts, _NONE)
    # The last ACK from the receiver before it: index into the ACK table.
    k_last = _grp_search(a_flow, packets["frame"][ack_sel], r_flow, out["frame"].to_numpy(),
                         side="left") - 1
    k_ok = (k_last >= 0) & (_at(a_flow, k_last, k_last >= 0, -1) == r_flow)
    k_last = np.where(k_ok, k_last, -1)
    last_ack_ts = _at(A["ts"], k_last, k_ok, _NONE)
    since_last_ack = np.where(k_ok, r_ts - last_ack_ts, _NONE)

    # SRTT/RTO in force at each retransmission (the last sample before it).
    s_pos = np.searchsorted(_pair_key(s_flow, s_frame),
                            _pair_key(r_flow, out["frame"].to_numpy()), side="left") - 1
    s_ok = (s_pos >= 0) & (_at(s_flow, s_pos, s_pos >= 0, -1) == r_flow)
    srtt_us = _at(s_srtt, s_pos, s_ok, 0.0).astype(np.float64)
    rto_us = _at(s_rto, s_pos, s_ok, float(TCP_TIMEOUT_INIT_US)).astype(np.float64)

    # Bursts: a retransmission continues the previous one of its flow when no ACK arrived
    # in between and the flow's previous transmission left just before it.
    prev_r_same = np.zeros(m, dtype=bool)
    order_r = np.lexsort((out["frame"].to_numpy(), r_flow))
    inv = np.empty(m, dtype=np.int64)
    inv[order_r] = np.arange(m)
    rf, rk = r_flow[order_r], k_last[order_r]
    cont = np.zeros(m, dtype=bool)
    cont[1:] = (rf[1:] == rf[:-1]) & (rk[1:] == rk[:-1])
    cont &= (since_last_send[order_r] >= 0) & (since_last_send[order_r] <= BURST_GAP_NS)
    cont &= ~r_probe[order_r]
    cont[1:] &= ~r_probe[order_r][:-1]
    prev_r_same[order_r] = cont
    burst_id_sorted = np.cumsum(~cont) - 1
    burst_of = np.empty(m, dtype=np.int64)
    burst_of[order_r] = burst_id_sorted

    # Spurious: D-SACK (RFC 2883) or an Eifel timestamp echo (RFC 3522).
    dsack_ts = _dsack_times(A, a_flow, out)
    ts_echo = _ts_echo_spurious(packets, A, a_flow, a_idx, out, ts_ok_f)

    # MSS in use, to count packets_out for the PTO (tcp_schedule_loss_probe).
    mss = _flow_mss(packets, flows, flow_id, tx_sel)
    una_at = np.where(k_ok, _at(A["una"], k_last, k_ok, 0), una_init[r_flow])
    pkts_out = _packets_out(space, flow_id, orig_sel, mss, r_flow, una_at,
                            out["snd_nxt_abs"].to_numpy())

    res = _replay(out, order_r, burst_of, r_flow, r_ts, r_seq, r_end, r_probe,
                  flags_all[r_pkt], out["snd_nxt_abs"].to_numpy(),
                  packets["tsval"][r_pkt].astype(np.int64),
                  packets["opt_ts"][r_pkt].astype(bool),
                  k_last, since_last_ack, srtt_us, rto_us, A, a_idx, sack_ok_f, mss,
                  una_init, dsack_ts, pkts_out)

    kind = res["kind"]
    out["kind_pcap"] = kind
    out["family"] = [FAMILY[k] for k in kind]
    spurious_by = np.full(m, None, dtype=object)
    spurious_by[ts_echo] = "ts_echo"
    spurious_by[dsack_ts < _INF] = "dsack"
    spurious_by[r_probe] = None
    out["spurious"] = pd.array(spurious_by != None, dtype="boolean")  # noqa: E711
    out["spurious_by"] = spurious_by
    out["since_last_send_ns"] = _nullable(since_last_send, since_last_send != _NONE)
    out["since_last_ack_ns"] = _nullable(since_last_ack, k_ok)
    out["srtt_us"] = _nullable(np.round(srtt_us).astype(np.int64), s_ok)
    out["expected_pto_ns"] = _nullable(res["pto_ns"], ~r_probe)
    out["expected_rto_ns"] = _nullable(res["rto_ns"], ~r_probe)
    out["backoff"] = _nullable(res["backoff"], res["backoff"] >= 0)
    trig = res["trigger"]
    tk = np.clip(trig, 0, None)
    out["trigger_frame"] = _nullable(_at(A["frame"], tk, trig >= 0, 0), trig >= 0)
    out["since_trigger_ns"] = _nullable(r_ts - _at(A["ts"], tk, trig >= 0, 0), trig >= 0)
    out["ca_state"] = [CA_NAMES.get(int(s)) if s >= 0 else None for s in res["ca"]]
    out["clock"] = res["clock"]
    out["position"] = res["position"]
    out["burst"] = burst_of
    return out


def _at(a: np.ndarray, idx: np.ndarray, valid: np.ndarray, fill) -> np.ndarray:
    """a[idx] where ``valid`` (idx in range), ``fill`` elsewhere; safe when ``a`` is empty."""
    if len(a) == 0:
        return np.full(len(idx), fill)
    return np.where(valid, a[np.clip(idx, 0, len(a) - 1)], fill)


def _nullable(values: np.ndarray, valid: np.ndarray) -> pd.api.extensions.ExtensionArray:
    arr = pd.array(np.where(valid, values, 0).astype(np.int64), dtype="Int64")
    arr[~np.asarray(valid, dtype=bool)] = pd.NA
    return arr


def _pair_key(grp: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(flow, frame) as one sortable int64 (frames < 2**40)."""
    return grp.astype(np.int64) * (np.int64(1) << np.int64(40)) + order.astype(np.int64)


def _packets_out(space, flow_id, orig_sel, mss, r_flow, una, snd_nxt) -> np.ndarray:
    """tp->packets_out: segments (MSS units of each skb) between snd_una and snd_nxt."""
    if len(orig_sel) == 0:
        return np.maximum(1, -(-(snd_nxt - una) // mss[r_flow]))
    o_flow = flow_id[orig_sel]
    o_seq = space["seq_abs"][orig_sel]
    o_len = space["end_abs"][orig_sel] - o_seq
    pc = np.maximum(1, -(-o_len // mss[o_flow]))
    cum = np.cumsum(pc)
    lo = _grp_search(o_flow, o_seq, r_flow, una, side="left")
    hi = _grp_search(o_flow, o_seq, r_flow, snd_nxt, side="left")
    c_hi = np.where(hi > 0, cum[np.clip(hi - 1, 0, None)], 0)
    c_lo = np.where(lo > 0, cum[np.clip(lo - 1, 0, None)], 0)
    # The segment holding snd_una (partly acked) still counts.
    lo_part = (lo > 0) & (_at(o_flow, lo - 1, lo > 0, -1) == r_flow) & \
        (_at(space["end_abs"][orig_sel], lo - 1, lo > 0, 0) > una)
    n = c_hi - c_lo + lo_part
    return np.maximum(n, 1)


def _first_seq(space, flow_id, n_flows) -> np.ndarray:
    """snd_una before any ACK: the first sequence number each flow used."""
    out = np.zeros(n_flows, dtype=np.int64)
    idx = np.arange(len(flow_id))[::-1]
    out[flow_id[idx]] = space["seq_abs"][idx]
    return out


def _flow_mss(packets, flows, flow_id, tx_sel) -> np.ndarray:
    """Sender MSS: the peer's SYN MSS less the timestamp option, else the largest segment."""
    n_flows = len(flows)
    rev = flows["rev_flow_id"].to_numpy()
    peer_mss = np.where(rev >= 0, flows["mss"].to_numpy()[np.clip(rev, 0, None)], 0)
    peer_mss = peer_mss.astype(np.int64) - np.where(flows["ts_ok"].to_numpy(), 12, 0)
    biggest = np.zeros(n_flows, dtype=np.int64)
    np.maximum.at(biggest, flow_id[tx_sel], packets["payload_len"][tx_sel].astype(np.int64))
    return np.where(peer_mss > 0, peer_mss, np.where(biggest > 0, np.minimum(biggest, 1448),
                                                     1448))


def _ack_table(packets, space, sel, a_flow, una_init) -> dict[str, np.ndarray]:
    """The receiver's ACKs per data flow, in capture order, with what each one says."""
    ack = space["ack_abs"][sel]
    una = pd.Series(ack).groupby(a_flow, sort=False).cummax().to_numpy() if len(sel) else ack
    start = np.ones(len(sel), dtype=bool)
    start[1:] = a_flow[1:] != a_flow[:-1]
    prev_una = np.empty_like(una)
    if len(una):
        prev_una[1:] = una[:-1]
        prev_una[start] = una_init[a_flow[start]]
    sn = packets["sack_n"][sel].astype(np.int64)
    L = space["sack_l_abs"][sel]
    R = space["sack_r_abs"][sel]
    # D-SACK, RFC 2883 §4: the first block is at or below the cumulative ACK, or lies
    # inside the second block.
    dsack = (sn >= 1) & ((R[:, 0] <= ack) | ((sn >= 2) & (L[:, 1] <= L[:, 0])
                                             & (R[:, 0] <= R[:, 1])))
    sack_hi = np.full(len(sel), _NONE, dtype=np.int64)
    for b in range(4):
        use = (sn > b) & ~((b == 0) & dsack)
        sack_hi = np.where(use, np.maximum(sack_hi, R[:, b]), sack_hi)
    payload = packets["payload_len"][sel].astype(np.int64)
    return {
        "pkt": sel, "ts": packets["ts_ns"][sel], "frame": packets["frame"][sel],
        "ack": ack, "una": una, "prev_una": prev_una, "adv": una > prev_una,
        "sack_hi": sack_hi, "dsack": dsack, "dsack_l": np.where(dsack, L[:, 0], 0),
        "dsack_r": np.where(dsack, R[:, 0], 0), "tsecr": packets["tsecr"][sel].astype(np.int64),
        "opt_ts": packets["opt_ts"][sel].astype(bool), "payload": payload, "sack_n": sn,
        "win": packets["win"][sel].astype(np.int64),
        "sack_l": L, "sack_r": R,
    }


def _rtt_samples(packets, space, A, a_flow, orig_sel, rtx, flow_id, ts_ok_f, una_init):
    """RTT samples the sender took (tcp_clean_rtx_queue / tcp_sacktag / tcp_ack_update_rtt).

    * An ACK advancing snd_una: now - send time of the first newly acknowledged segment, if
      nothing it acknowledges was retransmitted (Karn's rule, RFC 6298 §3).
    * Otherwise, with timestamps, now - the time the echoed TSval was sent (RFC 7323 §4.1,
      tcp_rtt_tsopt_us: millisecond granularity, at least 1 ms).
    * An ACK that only SACKs new data at the top: now - send time of that segment.
    """
    o_flow = flow_id[orig_sel]
    o_seq = space["seq_abs"][orig_sel]
    o_end = space["end_abs"][orig_sel]
    o_ts = packets["ts_ns"][orig_sel]
    # Union of retransmitted ranges per flow (Karn): sorted, merged intervals.
    rf = rtx["flow_id"].to_numpy()
    rs = rtx["seq_abs"].to_numpy()
    re_ = rtx["end_abs"].to_numpy()
    ro = np.lexsort((rs, rf))
    rf, rs, re_ = rf[ro], rs[ro], re_[ro]
    run_end = pd.Series(re_).groupby(rf, sort=False).cummax().to_numpy() if len(rf) else re_

    def overlaps_rtx(f, lo, hi):
        """Does [lo, hi) of flow f overlap any retransmitted range?"""
        if len(rf) == 0:
            return np.zeros(len(f), dtype=bool)
        p = _grp_search(rf, rs, f, hi - 1, side="right") - 1
        pc = np.clip(p, 0, None)
        return (p >= 0) & (rf[pc] == f) & (run_end[pc] > lo)

    def orig_containing(f, byte):
        if len(orig_sel) == 0:
            return np.zeros(len(f), dtype=bool), np.zeros(len(f), dtype=np.int64)
        p = _grp_search(o_flow, o_seq, f, byte, side="right") - 1
        pc = np.clip(p, 0, None)
        ok = (p >= 0) & (o_flow[pc] == f) & (o_seq[pc] <= byte) & (o_end[pc] > byte)
        return ok, o_ts[pc]

    t = A["ts"]
    adv = A["adv"]
    # Cumulative ACK samples.
    ok1, t1 = orig_containing(a_flow, A["prev_una"])
    karn = overlaps_rtx(a_flow, A["prev_una"], A["una"])
    seq_ok = adv & ok1 & ~karn & (t1 <= t)
    rtt = np.where(seq_ok, (t - t1) // 1000, -1)
    # SACK samples: new data SACKed at the top (first_sackt), no cumulative advance.
    prev_hi = pd.Series(A["sack_hi"]).groupby(a_flow, sort=False).cummax().shift(1).to_numpy()
    start = np.ones(len(a_flow), dtype=bool)
    start[1:] = a_flow[1:] != a_flow[:-1]
    prev_hi = np.where(start | np.isnan(prev_hi.astype(float)), _NONE, prev_hi).astype(np.int64)
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
    s_flow = a_flow[keep]
    srtt, rto = rtt_estimator(s_flow, np.maximum(rtt[keep], 1))
    return s_flow, A["frame"][keep], srtt, rto


def _ts_rtt_us(packets, flow_id, a_flow, A, mask) -> np.ndarray:
    """tcp_rtt_tsopt_us: (sender's TS clock now - TSecr) in ms, at least 1, in us.

    The sender's TS clock is read off its own packets: TSval - capture ms is constant per
    connection (RFC 7323 §5.4, a per-connection offset), so its median gives the offset.
    """
    out = np.full(len(a_flow), -1, dtype=np.int64)
    has = packets["opt_ts"].astype(bool) & (packets["tsval"] != 0)
    sel = np.flatnonzero(has)
    if not len(sel):
        return out
    off = (packets["tsval"][sel].astype(np.int64) - packets["ts_ns"][sel] // 1_000_000) \
        & 0xFFFFFFFF
    med = pd.Series(off).groupby(flow_id[sel]).median()
    offset = np.full(int(flow_id.max()) + 1, -1, dtype=np.int64)
    offset[med.index.to_numpy()] = med.to_numpy().astype(np.int64)
    f = a_flow[mask]
    now_ts = (A["ts"][mask] // 1_000_000 + offset[f]) & 0xFFFFFFFF
    delta = (now_ts - A["tsecr"][mask]) & 0xFFFFFFFF
    good = (offset[f] >= 0) & (delta < (1 << 30))
    out[mask] = np.where(good, np.maximum(delta, 1) * 1000, -1)
    return out


def _dsack_times(A, a_flow, rtx: pd.DataFrame) -> np.ndarray:
    """Per retransmission: time of the first D-SACK reporting it as a duplicate (else _INF).

    A D-SACK block [l, r) (RFC 2883) reports a segment that arrived twice; it is matched to
    the latest transmission of each overlapped range sent before the D-SACK arrived.
    """
    m = len(rtx)
    out = np.full(m, _INF, dtype=np.int64)
    d = np.flatnonzero(A["dsack"])
    if not len(d) or not m:
        return out
    rf = rtx["flow_id"].to_numpy()
    rs = rtx["seq_abs"].to_numpy()
    re_ = rtx["end_abs"].to_numpy()
    rt = rtx["ts_ns"].to_numpy()
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
    # Keep, per (D-SACK, start seq), the latest transmission before the D-SACK.
    pairs = pd.DataFrame({"q": qi, "s": ss[cj], "t": st[cj], "j": cj})
    best = pairs.sort_values("t").groupby(["q", "s"], sort=False).tail(1)
    rows = o[best["j"].to_numpy()]
    times = dt[best["q"].to_numpy()]
    np.minimum.at(out, rows, times)
    return out


def _ts_echo_spurious(packets, A, a_flow, a_idx, rtx: pd.DataFrame, ts_ok_f) -> np.ndarray:
    """Eifel detection (RFC 3522 §3.2): the first ACK after the retransmission that covers
    it echoes a TSval older than the retransmission's, so an earlier copy arrived first."""
    m = len(rtx)
    out = np.zeros(m, dtype=bool)
    if not len(A["ts"]):
        return out
    rf = rtx["flow_id"].to_numpy()
    pk = rtx["pkt"].to_numpy()
    tsval = packets["tsval"][pk].astype(np.int64)
    have = packets["opt_ts"][pk].astype(bool) & ts_ok_f[rf] & (tsval != 0)
    # First ACK (in the flow's ACK list) arriving after the retransmission...
    k_after = np.searchsorted(_pair_key(a_flow, A["frame"]),
                              _pair_key(rf, rtx["frame"].to_numpy()), side="right")
    # ...and the first one whose cumulative ACK covers its end.
    k_cover = _grp_search(a_flow, A["una"], rf, rtx["end_abs"].to_numpy(), side="left")
    k = np.maximum(k_after, k_cover)
    kc = np.clip(k, 0, len(a_flow) - 1)
    ok = have & (k < len(a_flow)) & (a_flow[kc] == rf) & (A["una"][kc] >= rtx["end_abs"].to_numpy())
    ecr = A["tsecr"][kc]
    before = (((ecr - tsval) & 0xFFFFFFFF) >= (1 << 31)) & (ecr != 0)
    out[ok & before & A["opt_ts"][kc]] = True
    return out


# --- the replay --------------------------------------------------------------------------

def _replay(out, order_r, burst_of, r_flow, r_ts, r_seq, r_end, r_probe, r_flags, r_sndnxt,
            r_tsval, r_has_ts, k_last, since_last_ack, srtt_us, rto_us, A, a_idx, sack_ok_f,
            mss_f, una_init, dsack_ts, pkts_out_r):
    """Walk each flow's retransmission bursts in order, replaying the congestion state."""
    m = len(out)
    kind = np.full(m, "unknown", dtype=object)
    clock = np.full(m, None, dtype=object)
    position = np.full(m, None, dtype=object)
    ca = np.full(m, -1, dtype=np.int64)
    backoff = np.full(m, -1, dtype=np.int64)
    trigger = np.full(m, -1, dtype=np.int64)
    pto_ns = np.zeros(m, dtype=np.int64)
    rto_ns = np.zeros(m, dtype=np.int64)

    # Burst table (one row per burst, in flow/time order).
    rows_sorted = order_r
    b_sorted = burst_of[rows_sorted]
    b_first = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    b_last = np.r_[b_first[1:], len(rows_sorted)]
    first_row = rows_sorted[b_first]
    seg_lo = np.minimum.reduceat(r_seq[rows_sorted], b_first)
    seg_hi = np.maximum.reduceat(r_end[rows_sorted], b_first)
    b_flow = r_flow[first_row]

    # Python lists: scalar access in the loop is several times faster than numpy's.
    L = {k: A[k].tolist() for k in ("ts", "una", "ack", "adv", "sack_hi", "dsack", "tsecr",
                                     "payload", "sack_n", "prev_una")}
    a_ts, a_una, a_ack, a_adv = L["ts"], L["una"], L["ack"], L["adv"]
    a_sack_hi, a_dsack, a_tsecr = L["sack_hi"], L["dsack"], L["tsecr"]
    a_payload, a_sack_n, a_prev_una = L["payload"], L["sack_n"], L["prev_una"]
    a_start, a_end = a_idx.start.tolist(), a_idx.end.tolist()

    rs_l, re_l, rts_l = r_seq.tolist(), r_end.tolist(), r_ts.tolist()
    flags_l = r_flags.tolist()
    snd_l = r_sndnxt.tolist()
    tsval_l, hts_l = r_tsval.tolist(), r_has_ts.tolist()
    kl_l = k_last.tolist()
    sla_l = since_last_ack.tolist()
    srtt_l, rto_l = srtt_us.tolist(), rto_us.tolist()
    probe_l = r_probe.tolist()
    dsack_l = dsack_ts.tolist()
    sack_ok_l = sack_ok_f.tolist()
    pkts_l = pkts_out_r.tolist()
    una0_l = una_init.tolist()
    rows_l = rows_sorted.tolist()
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
            loss_ranges = []       # ranges retransmitted since the last RTO (Loss episode)
            episode = []           # retransmissions since the last Open (undo accounting)
            retrans_stamp = None   # TSval of the episode's first retransmission
            frto = False
            frto_acks = 0
            tlp_high = None
            tlp_k = -1
            chain_head = None      # head seq of the current run of timeouts
            chain_n = 0
            chain_una = None
            syn_n = 0
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
            for r in rows:
                clock[r] = None
            continue

        # ---- ACK-driven transitions between the previous burst and this one -------------
        if k >= 0:
            if st in (RECOVERY, LOSS):
                # Leave when snd_una reaches high_seq (tcp_fastretrans_alert step D,
                # tcp_process_loss "recovered").
                j = bisect_left(a_una, high_seq, max(entry_k + 1, fa), fb_)
                exit_k = j if j < fb_ and a_una[j] >= high_seq else _INF
                undo_k = _INF
                if st == LOSS:
                    undo_k = _loss_undo(entry_k, min(k, exit_k), fa, a_una, a_adv, a_tsecr,
                                        a_sack_hi, a_payload, a_sack_n, a_ts, retrans_stamp,
                                        frto, loss_ranges, high_seq, a_prev_una)
                if episode and min(exit_k, undo_k) > k:
                    # tcp_try_undo_dsack / undo_retrans == 0: every retransmission of the
                    # episode was reported duplicate (tcp_try_undo_loss, tcp_try_undo_dsack).
                    last_d = max(dsack_l[r] for r in episode)
                    if last_d < _INF:
                        jd = bisect_left(a_ts, last_d, max(entry_k + 1, fa), fb_)
                        if jd <= k:
                            undo_k = min(undo_k, jd)
                if min(exit_k, undo_k) <= k:
                    st = OPEN
                    episode = []
                    retrans_stamp = None
                    loss_ranges = []
                    frto = False
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
        ack_clocked = 0 <= sla <= ACK_CLOCK_NS
        if ack_clocked and st == OPEN and k >= 0:
            # In Open, only an ACK with news enters tcp_fastretrans_alert (tcp_ack_is_dubious):
            # a SACK, a duplicate ACK, or progress. Peer data alone releases nothing.
            if not (a_sack_n[k] > 0 or a_adv[k] or a_payload[k] == 0):
                ack_clocked = False

        trig = -1
        bo = -1
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
            if st == LOSS and not _overlaps(loss_ranges, lo, hi):
                knd = "rto_recovery"
            else:
                # A retransmission resent on an ACK in Loss means RACK found it lost again:
                # FLAG_LOST_RETRANS moves Loss to Recovery (tcp_fastretrans_alert).
                if st != RECOVERY:
                    st = RECOVERY
                    high_seq = snd_nxt
                    entry_k = k
                    tlp_high = None  # tcp_init_cwnd_reduction
                    loss_ranges = []
                knd = "fast"
            state_sent = st
            rto_us = rto_base
        else:
            clk = "timer"
            timeout_like = sla < 0 or sla >= 0.75 * rto_base * 1000
            reo_like = 0 <= sla <= (0.5 * srtt + 15_000) * 1000
            if not sack_ok:
                knd = "rto"
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
            if knd == "fast" and st != RECOVERY:
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
                loss_ranges = []
                tlp_high = None  # tcp_enter_loss
                # F-RTO (RFC 5682 §3.1 step 1) unless recovery was already underway.
                frto = prev_st < RECOVERY or chain_n > 0
                frto_acks = 0
            if knd == "tlp":
                tlp_high = snd_nxt
                tlp_k = k
            state_sent = st
            rto_us = rto_base * (1 << min(max(bo, 0), 10))
            rto_us = min(rto_us, TCP_RTO_MAX_US)

        if knd in ("rto", "rto_recovery"):
            loss_ranges.append((lo, hi))
        if knd != "tlp":
            if not episode and knd not in ("syn", "synack"):
                retrans_stamp = tsval_l[r0] if hts_l[r0] else None
            episode.extend(rows)
        for r in rows:
            kind[r] = knd
            clock[r] = clk if r == r0 else "burst"
            position[r] = pos
            ca[r] = state_sent
            backoff[r] = bo
            trigger[r] = trig
            pto_ns[r] = int(pto * 1000)
            rto_ns[r] = int(rto_us * 1000)
    del frto_acks
    return {"kind": kind, "clock": clock, "position": position, "ca": ca, "backoff": backoff,
            "trigger": trigger, "pto_ns": pto_ns, "rto_ns": rto_ns}


def _overlaps(ranges, lo, hi) -> bool:
    for a, b in ranges:
        if a < hi and lo < b:
            return True
    return False


def _loss_undo(entry_k, upto_k, fa, a_una, a_adv, a_tsecr, a_sack_hi, a_payload, a_sack_n,
               a_ts, retrans_stamp, frto, loss_ranges, high_seq, a_prev_una) -> int:
    """First ACK index in (entry_k, upto_k] at which the Loss state is undone, else _INF.

    tcp_process_loss: on an ACK advancing snd_una, tcp_try_undo_loss undoes when the ACK
    echoes a TSval older than the first retransmission (tcp_packet_delayed, Eifel). With
    F-RTO (RFC 5682 §3.1 step 3.b) an ACK of never-retransmitted data also proves the
    timeout spurious; a duplicate ACK or SACK first (step 3.a) proves the loss real.
    """
    j = max(entry_k + 1, fa)
    steps = 0
    while j <= upto_k and steps < 8:
        if a_adv[j]:
            if retrans_stamp is not None and a_tsecr[j] and \
                    ((a_tsecr[j] - retrans_stamp) & 0xFFFFFFFF) >= (1 << 31):
                return j
            if frto:
                lo, hi = a_prev_una[j], min(a_una[j], high_seq)
                if hi > lo and not _covered(loss_ranges, lo, hi):
                    return j
        elif frto and (a_sack_n[j] > 0 or a_payload[j] == 0):
            frto = False
        steps += 1
        j += 1
    return _INF


def _covered(ranges, lo, hi) -> bool:
    """Is [lo, hi) entirely inside the union of ``ranges``?"""
    pos = lo
    for a, b in sorted(ranges):
        if a > pos:
            break
        pos = max(pos, b)
        if pos >= hi:
            return True
    return pos >= hi


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


__all__ = ["classify", "rtt_estimator", "KINDS", "FAMILY", "TCP_FIN"]
