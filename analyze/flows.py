"""Flows: one direction of one TCP connection, and its sequence space unwrapped.

``assign_flows(packets)`` gives every packet a ``flow_id`` and describes each flow (its
4-tuple, reverse flow, handshake options). ``sequence_space(packets, flow_id, flows)`` turns
the raw 32-bit seq/ack/SACK numbers into int64 offsets from each flow's base (the ISN when
the SYN was captured, else the first sequence number seen), so that later stages compare
sequence numbers with plain integer operations.

Everything is vectorised: one stable sort by connection gives each connection's packets in
capture order, and the per-flow facts come from reductions over that order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retranscope.schemas.packets import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, addr_to_str

FLOW_COLUMNS = (
    "flow_id", "rev_flow_id", "conn_id", "dir", "family",
    "saddr_hi", "saddr_lo", "daddr_hi", "daddr_lo", "saddr", "daddr", "sport", "dport",
    "first_frame", "first_ts_ns", "last_ts_ns", "n_packets", "n_data",
    "isn", "base_seq", "ack_base", "syn_seen", "synack_seen", "fin_seen", "rst_seen",
    "mss", "wscale", "sack_perm", "ts_opt", "sack_ok", "ts_ok", "handshake_seen",
)

_U64 = np.uint64


def _mix64(cols: list[np.ndarray]) -> np.ndarray:
    """A 64-bit hash of several integer columns (splitmix64 finaliser per column)."""
    n = len(cols[0])
    h = np.full(n, 0x9E3779B97F4A7C15, dtype=_U64)
    with np.errstate(over="ignore"):
        for c in cols:
            h = h ^ c.astype(_U64)
            h = h * _U64(0xBF58476D1CE4E5B9)
            h = h ^ (h >> _U64(31))
            h = h * _U64(0x94D049BB133111EB)
            h = h ^ (h >> _U64(29))
    return h


def _factorize_rows(cols: list[np.ndarray]) -> np.ndarray:
    """Dense ids for distinct rows of ``cols`` (int64), via a hash checked for collisions."""
    codes, _ = pd.factorize(_mix64(cols))
    codes = codes.astype(np.int64)
    # Verify: every row of a group equals the group's first row. A collision (never seen in
    # practice for 64-bit hashes) falls back to an exact, slower unique over the columns.
    first = np.full(codes.max() + 1 if len(codes) else 0, -1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    rep = first[codes]
    if all(np.array_equal(c, c[rep]) for c in cols):
        return codes
    rec = np.rec.fromarrays(cols)
    _, inv = np.unique(rec, return_inverse=True)
    return inv.astype(np.int64).ravel()


def _endpoint_less(a_hi, a_lo, a_p, b_hi, b_lo, b_p) -> np.ndarray:
    """(a_hi, a_lo, a_port) < (b_hi, b_lo, b_port), lexicographically, vectorised."""
    return (a_hi < b_hi) | ((a_hi == b_hi) & ((a_lo < b_lo) | ((a_lo == b_lo) & (a_p < b_p))))


def _group_starts(keys_sorted: np.ndarray) -> np.ndarray:
    """Boolean mask: the row starts a new run of equal keys."""
    start = np.ones(len(keys_sorted), dtype=bool)
    if len(keys_sorted):
        start[1:] = keys_sorted[1:] != keys_sorted[:-1]
    return start


def _ffill_index(mask: np.ndarray) -> np.ndarray:
    """For each position, the last position <= it where ``mask`` holds (-1 if none)."""
    idx = np.where(mask, np.arange(len(mask)), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx


def assign_flows(packets: dict[str, np.ndarray]) -> tuple[np.ndarray, pd.DataFrame]:
    """Give each packet a flow id; describe the flows.

    A flow is one direction of one connection. Packets of one 4-tuple are split into
    connections at a handshake packet that names a different connection from the previous
    one (a SYN with a new ISN, or a SYN-ACK answering one): a reused 4-tuple after close,
    RST or a long silence starts a new pair of flows. Flow ids follow first appearance.
    """
    n = len(packets["frame"])
    if n == 0:
        return np.zeros(0, dtype=np.int64), pd.DataFrame({c: [] for c in FLOW_COLUMNS})

    s_hi, s_lo = packets["saddr_hi"], packets["saddr_lo"]
    d_hi, d_lo = packets["daddr_hi"], packets["daddr_lo"]
    sp, dp = packets["sport"], packets["dport"]
    flags = packets["flags"].astype(np.int64)
    frame = packets["frame"]

    # Canonical (unordered) endpoint pair: dir 0 is the packet sent by the lesser endpoint.
    src_first = _endpoint_less(s_hi, s_lo, sp, d_hi, d_lo, dp)
    a_hi = np.where(src_first, s_hi, d_hi)
    a_lo = np.where(src_first, s_lo, d_lo)
    a_p = np.where(src_first, sp, dp)
    b_hi = np.where(src_first, d_hi, s_hi)
    b_lo = np.where(src_first, d_lo, s_lo)
    b_p = np.where(src_first, dp, sp)
    dirbit = (~src_first).astype(np.int64)
    tuple_id = _factorize_rows([a_hi, a_lo, b_hi, b_lo, a_p.astype(np.int64), b_p.astype(np.int64)])

    # Capture order within each 4-tuple (frames are capture order; the reader emits rows
    # in capture order, so a stable sort by tuple keeps it).
    cap = capture_order(frame)
    order = cap[np.argsort(tuple_id[cap], kind="stable")]
    t_sorted = tuple_id[order]
    first_in_tuple = _group_starts(t_sorted)

    # Handshake signature: which side is the client and its ISN. A retransmitted SYN (same
    # ISN) or its SYN-ACK (ack = ISN + 1) keep the signature; anything else is a new connection.
    f_s = flags[order]
    syn = (f_s & TCP_SYN) != 0
    has_ack = (f_s & TCP_ACK) != 0
    seq_s = packets["seq"][order].astype(np.int64)
    ack_s = packets["ack"][order].astype(np.int64)
    dir_s = dirbit[order]
    client_dir = np.where(has_ack, 1 - dir_s, dir_s)
    client_isn = np.where(has_ack, (ack_s - 1) & 0xFFFFFFFF, seq_s)
    sig = client_dir * (1 << 33) + client_isn
    hs_pos = np.flatnonzero(syn)
    new_conn = first_in_tuple.copy()
    if len(hs_pos):
        prev_hs = np.empty(len(hs_pos), dtype=np.int64)
        prev_hs[0] = -1
        prev_hs[1:] = hs_pos[:-1]
        same_tuple_prev = np.zeros(len(hs_pos), dtype=bool)
        same_tuple_prev[1:] = t_sorted[hs_pos[1:]] == t_sorted[hs_pos[:-1]]
        differs = np.ones(len(hs_pos), dtype=bool)
        ok = same_tuple_prev
        differs[ok] = sig[hs_pos[ok]] != sig[prev_hs[ok]]
        # The first handshake packet of a tuple after packets of an older connection
        # (capture began mid-connection, then the tuple was reused) also starts one.
        new_conn[hs_pos] |= differs
    conn_sorted = np.cumsum(new_conn) - 1
    conn_id = np.empty(n, dtype=np.int64)
    conn_id[order] = conn_sorted

    # Flow = (connection, direction), numbered by first appearance (factorize numbers keys
    # in order of appearance, and ``cap`` is capture order).
    fkey = conn_id * 2 + dirbit
    codes, key_of_flow = pd.factorize(fkey[cap])
    flow_id = np.empty(n, dtype=np.int64)
    flow_id[cap] = codes
    key_of_flow = np.asarray(key_of_flow, dtype=np.int64)
    n_flows = len(key_of_flow)
    rev_flow_id = pd.Index(key_of_flow).get_indexer(key_of_flow ^ 1).astype(np.int64)

    flows = _describe_flows(packets, flow_id, n_flows, rev_flow_id, key_of_flow)
    return flow_id, flows


def capture_order(frame: np.ndarray) -> np.ndarray:
    """Permutation into capture order: the identity when rows already are (the reader's)."""
    if len(frame) < 2 or bool(np.all(frame[1:] > frame[:-1])):
        return np.arange(len(frame))
    return np.argsort(frame, kind="stable")


def flow_order(frame: np.ndarray, flow_id: np.ndarray) -> np.ndarray:
    """Permutation grouping packets by flow, each flow in capture order."""
    cap = capture_order(frame)
    return cap[np.argsort(flow_id[cap], kind="stable")]


def _describe_flows(packets, flow_id, n_flows, rev_flow_id, key_of_flow) -> pd.DataFrame:
    n = len(flow_id)
    flags = packets["flags"].astype(np.int64)
    frame = packets["frame"]
    ts = packets["ts_ns"]
    # Packets are in capture order (frame order) by contract; be safe for arbitrary input.
    cap = capture_order(frame)
    first_idx = np.full(n_flows, -1, dtype=np.int64)
    first_idx[flow_id[cap[::-1]]] = cap[::-1]
    last_ts = np.full(n_flows, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last_ts, flow_id, ts)
    n_packets = np.bincount(flow_id, minlength=n_flows)
    n_data = np.bincount(flow_id, weights=(packets["payload_len"] > 0), minlength=n_flows)

    syn = (flags & TCP_SYN) != 0
    ack = (flags & TCP_ACK) != 0
    syn_idx = _first_where_cap(flow_id, syn, n_flows, cap)
    syn_seen = syn_idx >= 0
    synack_seen = np.zeros(n_flows, dtype=bool)
    synack_seen[syn_seen] = (flags[syn_idx[syn_seen]] & TCP_ACK) != 0
    fin_seen = np.bincount(flow_id, weights=(flags & TCP_FIN) != 0, minlength=n_flows) > 0
    rst_seen = np.bincount(flow_id, weights=(flags & TCP_RST) != 0, minlength=n_flows) > 0

    seq = packets["seq"]
    base_seq = np.where(syn_seen, seq[np.where(syn_seen, syn_idx, first_idx)],
                        seq[first_idx]).astype(np.int64)
    # Acks in a flow count the reverse flow's bytes: their base is the reverse flow's base,
    # or (one-way capture) the first ack value seen.
    ack_idx = _first_where_cap(flow_id, ack, n_flows, cap)
    rev = rev_flow_id
    ack_base = np.where(rev >= 0, base_seq[np.clip(rev, 0, None)],
                        np.where(ack_idx >= 0, packets["ack"][np.clip(ack_idx, 0, None)], 0))
    ack_base = ack_base.astype(np.int64)

    def _syn_opt(col, missing):
        v = np.full(n_flows, missing, dtype=np.asarray(packets[col]).dtype)
        v[syn_seen] = packets[col][syn_idx[syn_seen]]
        return v

    mss = _syn_opt("opt_mss", 0)
    wscale = _syn_opt("opt_wscale", -1)
    sack_perm = _syn_opt("opt_sackok", False)
    ts_opt = _syn_opt("opt_ts", False)

    # Negotiated options need both SYNs; without the handshake, infer from what the flows
    # carry (a SACK block proves SACK was negotiated, RFC 2018 §2; a TS option proves TS).
    rev_c = np.clip(rev, 0, None)
    both = syn_seen & (rev >= 0) & syn_seen[rev_c]
    any_sack = np.bincount(flow_id, weights=packets["sack_n"] > 0, minlength=n_flows) > 0
    any_ts = np.bincount(flow_id, weights=packets["opt_ts"], minlength=n_flows)
    ts_frac = any_ts / np.maximum(n_packets, 1)
    sack_any_dir = any_sack | np.where(rev >= 0, any_sack[rev_c], False)
    sack_ok = np.where(both, sack_perm & sack_perm[rev_c], sack_any_dir)
    ts_ok = np.where(both, ts_opt & ts_opt[rev_c], ts_frac > 0.5)

    conn = key_of_flow >> 1
    dirb = key_of_flow & 1
    fi = first_idx
    df = pd.DataFrame({
        "flow_id": np.arange(n_flows, dtype=np.int64),
        "rev_flow_id": rev_flow_id.astype(np.int64),
        "conn_id": conn.astype(np.int64),
        "dir": dirb.astype(np.int8),
        "family": packets["family"][fi],
        "saddr_hi": packets["saddr_hi"][fi],
        "saddr_lo": packets["saddr_lo"][fi],
        "daddr_hi": packets["daddr_hi"][fi],
        "daddr_lo": packets["daddr_lo"][fi],
        "saddr": _addr_strings(packets["saddr_hi"][fi], packets["saddr_lo"][fi],
                               packets["family"][fi]),
        "daddr": _addr_strings(packets["daddr_hi"][fi], packets["daddr_lo"][fi],
                               packets["family"][fi]),
        "sport": packets["sport"][fi],
        "dport": packets["dport"][fi],
        "first_frame": frame[fi],
        "first_ts_ns": ts[fi],
        "last_ts_ns": last_ts,
        "n_packets": n_packets.astype(np.int64),
        "n_data": n_data.astype(np.int64),
        "isn": np.where(syn_seen, base_seq, -1).astype(np.int64),
        "base_seq": base_seq,
        "ack_base": ack_base,
        "syn_seen": syn_seen,
        "synack_seen": synack_seen,
        "fin_seen": fin_seen,
        "rst_seen": rst_seen,
        "mss": mss,
        "wscale": wscale,
        "sack_perm": sack_perm.astype(bool),
        "ts_opt": ts_opt.astype(bool),
        "sack_ok": sack_ok.astype(bool),
        "ts_ok": ts_ok.astype(bool),
        "handshake_seen": both,
    })
    assert len(df) == n_flows and n >= n_flows
    return df


def _first_where_cap(flow_id, mask, n_flows, cap):
    """Like _first_where but in capture (frame) order given by the permutation ``cap``."""
    out = np.full(n_flows, -1, dtype=np.int64)
    sel = cap[mask[cap]][::-1]
    out[flow_id[sel]] = sel
    return out


def _addr_strings(hi: np.ndarray, lo: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Text form of addresses (one per flow, so a loop over flows only, not packets)."""
    out = np.empty(len(hi), dtype=object)
    v4 = family == 4
    if v4.any():
        v = (lo[v4] & _U64(0xFFFFFFFF)).astype(np.int64)
        parts = [((v >> s) & 255).astype(str) for s in (24, 16, 8, 0)]
        out[v4] = np.char.add(np.char.add(np.char.add(np.char.add(parts[0], "."), parts[1]),
                                          np.char.add(".", parts[2])),
                              np.char.add(".", parts[3])).astype(object)
    for i in np.flatnonzero(~v4):
        out[i] = addr_to_str(int(hi[i]), int(lo[i]), int(family[i]))
    return out


# --- sequence space ---------------------------------------------------------------------

def _unwrap_in_order(raw: np.ndarray, grp: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Unwrap 32-bit values taken in order within groups into int64 offsets from ``base``.

    ``raw``/``grp`` are in processing order (grouped, each group in capture order) and
    ``base`` is one raw value per row's group. Consecutive values of a group are assumed to
    differ by less than 2**31 (RFC 9293 §3.4: the window is far smaller), so the signed
    32-bit difference between neighbours is the true step.
    """
    m = len(raw)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    raw64 = raw.astype(np.int64)
    start = _group_starts(grp)
    step = np.empty(m, dtype=np.int64)
    step[1:] = raw64[1:] - raw64[:-1]
    step[start] = raw64[start] - base[start]
    step = ((step + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    cs = np.cumsum(step)
    start_pos = np.flatnonzero(start)
    grp_no = np.cumsum(start) - 1
    offset = cs[start_pos] - step[start_pos]
    return cs - offset[grp_no]


def sequence_space(packets: dict[str, np.ndarray], flow_id: np.ndarray,
                   flows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Unwrapped sequence numbers per packet, as int64 offsets from each flow's base.

    Returns ``seq_abs``, ``end_abs`` (seq_abs + payload + SYN + FIN: the sequence space the
    segment occupies, RFC 9293 §3.4), ``seg_len``, ``ack_abs`` (in the reverse flow's space;
    meaningful only where the ACK flag is set) and ``sack_l_abs``/``sack_r_abs`` (n x 4,
    in the reverse flow's space, valid for block index < sack_n).
    """
    n = len(flow_id)
    flags = packets["flags"].astype(np.int64)
    order = flow_order(packets["frame"], flow_id)
    grp = flow_id[order]
    base = flows["base_seq"].to_numpy()[grp]
    seq_abs = np.empty(n, dtype=np.int64)
    seq_abs[order] = _unwrap_in_order(packets["seq"][order], grp, base)
    seg_len = (packets["payload_len"].astype(np.int64) + ((flags & TCP_SYN) != 0)
               + ((flags & TCP_FIN) != 0))
    end_abs = seq_abs + seg_len

    ack_flag = (flags & TCP_ACK) != 0
    ack_abs = np.zeros(n, dtype=np.int64)
    o_ack = order[ack_flag[order]]
    if len(o_ack):
        g_ack = flow_id[o_ack]
        ack_abs[o_ack] = _unwrap_in_order(packets["ack"][o_ack], g_ack,
                                          flows["ack_base"].to_numpy()[g_ack])

    sack_n = packets["sack_n"].astype(np.int64)
    ack_raw = packets["ack"].astype(np.int64)
    sack_l_abs = np.zeros((n, 4), dtype=np.int64)
    sack_r_abs = np.zeros((n, 4), dtype=np.int64)
    for b in range(4):
        have = sack_n > b
        if not have.any():
            continue
        for side, out in (("l", sack_l_abs), ("r", sack_r_abs)):
            d = packets[f"sack_{side}{b}"].astype(np.int64) - ack_raw
            d = ((d + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            out[:, b] = np.where(have, ack_abs + d, 0)
    return {
        "seq_abs": seq_abs,
        "end_abs": end_abs,
        "seg_len": seg_len,
        "ack_abs": ack_abs,
        "ack_flag": ack_flag,
        "sack_l_abs": sack_l_abs,
        "sack_r_abs": sack_r_abs,
    }
