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
    "local", "path_rtt_ns",
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


def assign_flows(packets: dict[str, np.ndarray]) -> tuple[np.ndarray, pd.DataFrame]:
    """Give each packet a flow id; describe the flows.

    A flow is one direction of one connection. Packets of one 4-tuple are split into
    connections at each handshake packet that names another connection than the previous
    one did (a SYN with a new ISN, or a SYN-ACK answering one), which is how a 4-tuple
    reused after a close, an RST or a long silence shows; a resent SYN (same ISN) does not
    split. Flow ids follow first appearance in the capture.
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


_VMIN = -(1 << 41)
_VMAX = (1 << 41) - 1
_BAND = 1 << 42
#: "No sequence number yet": the floor seg_cummax returns for empty history.
NO_VALUE = _VMIN


def seg_cummax(values: np.ndarray, grp_no: np.ndarray, exclusive: bool = False) -> np.ndarray:
    """Running maximum restarted at each group (groups contiguous, numbered 0, 1, ...).

    Values are sequence offsets (well inside +-2**41); each group is lifted into its own
    2**42-wide band so one np.maximum.accumulate serves all groups. Values below the band
    (the "nothing yet" sentinel) come back as that sentinel's floor, -2**41. ``exclusive``:
    the maximum over earlier rows only.
    """
    m = len(values)
    if m == 0:
        return values.astype(np.int64)
    g = grp_no.astype(np.int64)
    if int(g[-1]) >= (1 << 20):
        inc = pd.Series(np.clip(values, _VMIN, _VMAX)).groupby(g, sort=False).cummax().to_numpy()
    else:
        lifted = g * _BAND + (np.clip(values, _VMIN, _VMAX) - _VMIN)
        inc = np.maximum.accumulate(lifted) - g * _BAND + _VMIN
    if not exclusive:
        return inc
    out = np.empty_like(inc)
    out[0] = _VMIN
    out[1:] = inc[:-1]
    out[1:][g[1:] != g[:-1]] = _VMIN
    return out


def group_numbers(keys_sorted: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... numbering of runs of equal keys in a sorted array."""
    if len(keys_sorted) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.cumsum(_group_starts(keys_sorted)) - 1


def by_group(sel: np.ndarray, group_of_sel: np.ndarray) -> np.ndarray:
    """Reorder ``sel`` (increasing row numbers of a capture-ordered table) by group,
    keeping capture order inside each group (a stable sort)."""
    return sel[np.argsort(group_of_sel, kind="stable")]


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
    first_idx = _first_where_cap(flow_id, np.ones(n, dtype=bool), n_flows, cap)
    last_ts = pd.Series(ts).groupby(flow_id).max().reindex(
        np.arange(n_flows), fill_value=0).to_numpy()
    n_packets = np.bincount(flow_id, minlength=n_flows)
    n_data = np.bincount(flow_id[packets["payload_len"] > 0], minlength=n_flows)

    syn = (flags & TCP_SYN) != 0
    ack = (flags & TCP_ACK) != 0
    syn_idx = _first_where_cap(flow_id, syn, n_flows, cap)
    syn_seen = syn_idx >= 0
    synack_seen = np.zeros(n_flows, dtype=bool)
    synack_seen[syn_seen] = (flags[syn_idx[syn_seen]] & TCP_ACK) != 0
    fin_seen = np.bincount(flow_id[(flags & TCP_FIN) != 0], minlength=n_flows) > 0
    rst_seen = np.bincount(flow_id[(flags & TCP_RST) != 0], minlength=n_flows) > 0

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
    any_sack = np.bincount(flow_id[packets["sack_n"] > 0], minlength=n_flows) > 0
    any_ts = np.bincount(flow_id[packets["opt_ts"].astype(bool)], minlength=n_flows)
    ts_frac = any_ts / np.maximum(n_packets, 1)
    sack_any_dir = any_sack | np.where(rev >= 0, any_sack[rev_c], False)
    # Without the handshake, assume SACK (every current stack offers it) unless the peer
    # sends duplicate ACKs without SACK blocks, which a SACK receiver would not
    # (RFC 2018 §4: a SACK-permitted receiver reports out-of-order data in every dup ACK).
    plain_dup = _dupacks_without_sack(packets, flow_id, n_flows, ~both)
    sack_unrefuted = sack_any_dir | ~(plain_dup | np.where(rev >= 0, plain_dup[rev_c], False))
    sack_ok = np.where(both, sack_perm & sack_perm[rev_c], sack_unrefuted)
    ts_ok = np.where(both, ts_opt & ts_opt[rev_c], ts_frac > 0.5)

    local, path_rtt = _local_side(packets, flow_id, n_flows, rev, syn_idx, cap)

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
        "local": local,
        "path_rtt_ns": path_rtt,
    })
    assert len(df) == n_flows and n >= n_flows
    return df


def _first_where_cap(flow_id, mask, n_flows, cap):
    """Row of the first packet (in capture order ``cap``) of each flow where ``mask``; -1."""
    out = np.full(n_flows, -1, dtype=np.int64)
    sel = cap[mask[cap]]
    if len(sel):
        firsts = pd.Series(flow_id[sel]).drop_duplicates()
        out[firsts.to_numpy()] = sel[firsts.index.to_numpy()]
    return out


def _dupacks_without_sack(packets, flow_id, n_flows, wanted) -> np.ndarray:
    """Per flow (of those ``wanted``, or whose reverse is): did it send three duplicate
    ACKs in a row that carry no SACK block?"""
    out = np.zeros(n_flows, dtype=bool)
    if not wanted.any():
        return out
    flags = packets["flags"]
    pure = ((flags & TCP_ACK) != 0) & ((flags & (TCP_SYN | TCP_FIN | TCP_RST)) == 0) & \
        (packets["payload_len"] == 0)
    sel = by_group(np.flatnonzero(pure), flow_id[pure])
    if len(sel) < 4:
        return out
    f = flow_id[sel]
    same = (f[1:] == f[:-1]) & (packets["ack"][sel][1:] == packets["ack"][sel][:-1]) & \
        (packets["win"][sel][1:] == packets["win"][sel][:-1]) & (packets["sack_n"][sel][1:] == 0)
    # three consecutive duplicates: same[i] & same[i+1] & same[i+2]
    three = same[:-2] & same[1:-1] & same[2:]
    out[f[1:-2][three]] = True
    return out


PACKET_HOST, PACKET_OUTGOING = 0, 4  # sll_pkttype, linux/if_packet.h


def _local_side(packets, flow_id, n_flows, rev, syn_idx, cap):
    """Was each flow sent by the capturing host? And the path RTT seen from that host.

    A Linux cooked capture says it per packet (sll_pkttype PACKET_OUTGOING). Otherwise the
    handshake does: the capturing host answers at once, its peer one path RTT later. On the
    client's host SYN -> SYN-ACK takes the RTT and SYN-ACK -> ACK microseconds; on the
    server's host, the other way round. Unknown (NA) when neither is available.
    """
    local = pd.array(np.zeros(n_flows, dtype=bool), dtype="boolean")
    local[:] = pd.NA
    path_rtt = pd.array(np.zeros(n_flows, dtype=np.int64), dtype="Int64")
    path_rtt[:] = pd.NA
    pt = packets["pkttype"]
    out_n = np.bincount(flow_id[pt == PACKET_OUTGOING], minlength=n_flows)
    in_n = np.bincount(flow_id[(pt >= 0) & (pt != PACKET_OUTGOING)], minlength=n_flows)
    known = (out_n + in_n) > 0
    local[known] = out_n[known] > in_n[known]

    ts = packets["ts_ns"]
    flags = packets["flags"]
    # Client flow c (its first SYN is a pure SYN) with server flow s = rev[c].
    c = np.flatnonzero((syn_idx >= 0) & (rev >= 0))
    c = c[(flags[syn_idx[c]] & TCP_ACK) == 0]
    s = rev[c]
    ok = syn_idx[s] >= 0
    c, s = c[ok], s[ok]
    if len(c):
        t_synack = ts[syn_idx[s]]
        # The SYN answered: the last one sent before the SYN-ACK (SYNs may be resent).
        pure_syn = ((flags & TCP_SYN) != 0) & ((flags & TCP_ACK) == 0)
        synack_t_of = np.full(n_flows, np.iinfo(np.int64).max, dtype=np.int64)
        synack_t_of[c] = t_synack
        rows = np.flatnonzero(pure_syn)
        rows = rows[ts[rows] <= synack_t_of[flow_id[rows]]]
        last_syn = pd.Series(ts[rows]).groupby(flow_id[rows]).max()
        t_syn = last_syn.reindex(c).to_numpy()
        # The client's first packet after the SYN-ACK (its ACK of it).
        after = np.flatnonzero(((flags & TCP_SYN) == 0) & ((flags & TCP_ACK) != 0))
        first_after = pd.Series(ts[after]).groupby(flow_id[after]).min().reindex(c).to_numpy()
        good = ~np.isnan(t_syn) & ~np.isnan(first_after) & (first_after >= t_synack) & \
            (t_syn <= t_synack)
        g1 = t_synack[good] - t_syn[good].astype(np.int64)
        g2 = first_after[good].astype(np.int64) - t_synack[good]
        cg, sg = c[good], s[good]
        client_local = g1 > g2
        undecided = ~known[cg] & ~known[sg]
        local[cg[undecided]] = client_local[undecided]
        local[sg[undecided]] = ~client_local[undecided]
        rtt = np.maximum(g1, g2)
        path_rtt[cg] = rtt
        path_rtt[sg] = rtt
    return local, path_rtt


def _addr_strings(hi: np.ndarray, lo: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Text form of addresses, one per flow; each distinct address is formatted once."""
    codes = _factorize_rows([hi, lo, family.astype(np.uint64)])
    first = pd.Series(codes).drop_duplicates().index.to_numpy()
    text = np.array([addr_to_str(int(hi[i]), int(lo[i]), int(family[i])) for i in first],
                    dtype=object)
    return text[codes] if len(codes) else np.empty(0, dtype=object)


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
    meaningful only where the ACK flag is set) and, for the rows ``sack_rows`` that carry
    SACK blocks, ``sack_l_abs``/``sack_r_abs`` (len(sack_rows) x 4, in the reverse flow's
    space, valid for block index < sack_n): use sack_blocks() for a dense view.
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

    # SACK edges lie near the ACK number: offset them from it. Only rows carrying SACK
    # blocks are stored (sparse): see sack_blocks().
    rows = np.flatnonzero(packets["sack_n"] > 0)
    sack_l_abs = np.zeros((len(rows), 4), dtype=np.int64)
    sack_r_abs = np.zeros((len(rows), 4), dtype=np.int64)
    if len(rows):
        sn = packets["sack_n"][rows]
        base_abs = ack_abs[rows]
        base_raw = packets["ack"][rows].astype(np.int64)
        for b in range(4):
            have = sn > b
            if not have.any():
                break
            for side, out in (("l", sack_l_abs), ("r", sack_r_abs)):
                d = packets[f"sack_{side}{b}"][rows].astype(np.int64) - base_raw
                d = ((d + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
                out[:, b] = np.where(have, base_abs + d, 0)
    return {
        "seq_abs": seq_abs,
        "end_abs": end_abs,
        "seg_len": seg_len,
        "ack_abs": ack_abs,
        "ack_flag": ack_flag,
        "sack_rows": rows,
        "sack_l_abs": sack_l_abs,
        "sack_r_abs": sack_r_abs,
    }


def sack_blocks(space: dict[str, np.ndarray], sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense (len(sel) x 4) left and right SACK edges for packet rows ``sel`` (0 if none)."""
    rows = space["sack_rows"]
    L = np.zeros((len(sel), 4), dtype=np.int64)
    R = np.zeros((len(sel), 4), dtype=np.int64)
    if len(rows) and len(sel):
        pos = np.searchsorted(rows, sel)
        pc = np.clip(pos, 0, len(rows) - 1)
        hit = rows[pc] == sel
        L[hit] = space["sack_l_abs"][pc[hit]]
        R[hit] = space["sack_r_abs"][pc[hit]]
    return L, R
