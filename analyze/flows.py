"""Flows: one direction of one TCP connection, and its sequence space unwrapped.

``flow_table(packets)`` gives every packet a ``flow_id`` and describes each flow (its
4-tuple, reverse flow, handshake options). ``sequence_space(packets, flow_id, flows)`` turns
the raw 32-bit seq/ack/SACK numbers into int64 offsets from each flow's base (the ISN when
the SYN was captured, else the first sequence number seen), so that later stages compare
sequence numbers with plain integer operations.

Everything is vectorised: one stable sort by connection gives each connection's packets in
capture order, and the per-flow facts come from reductions over that order. Pure numpy
(tables as in analyze/table.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from retranscope.analyze.table import (
    Nullable,
    Table,
    by_group,
    capture_order,
    count_where,
    group_sort,
    group_starts,
)
from retranscope.schemas.packets import (
    ADDRESS_HALVES,
    SACK_ROWS,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    addr_to_str,
)

FLOW_COLUMNS = (
    "flow_id",
    "rev_flow_id",
    "conn_id",
    "dir",
    "family",
    "saddr_hi",
    "saddr_lo",
    "daddr_hi",
    "daddr_lo",
    "saddr",
    "daddr",
    "sport",
    "dport",
    "first_frame",
    "first_ts_ns",
    "last_ts_ns",
    "n_packets",
    "n_data",
    "isn",
    "base_seq",
    "ack_base",
    "syn_seen",
    "synack_seen",
    "fin_seen",
    "rst_seen",
    "mss",
    "wscale",
    "sack_perm",
    "ts_opt",
    "sack_ok",
    "ts_ok",
    "handshake_seen",
    "local",
    "path_rtt_ns",
    "hs_rtt_ns",
    "trip_ns",
    "sender_os",
    "initial_ttl",
)

_U64 = np.uint64
_BIG = np.iinfo(np.int64).max


def _mix64(cols: list[np.ndarray]) -> np.ndarray:
    """A 64-bit hash of several integer columns (splitmix64 finaliser per column)."""
    n = len(cols[0])
    h = np.full(n, 0x9E3779B97F4A7C15, dtype=_U64)
    with np.errstate(over="ignore"):
        for c in cols:
            h ^= c.astype(_U64)
            h *= _U64(0xBF58476D1CE4E5B9)
            h ^= h >> _U64(31)
            h *= _U64(0x94D049BB133111EB)
            h ^= h >> _U64(29)
    return h


def _endpoint_less(a_hi, a_lo, a_p, b_hi, b_lo, b_p) -> np.ndarray:
    """(a_hi, a_lo, a_port) < (b_hi, b_lo, b_port), lexicographically, vectorised."""
    return (a_hi < b_hi) | ((a_hi == b_hi) & ((a_lo < b_lo) | ((a_lo == b_lo) & (a_p < b_p))))


def _same_as_first(cols: list[np.ndarray], start: np.ndarray) -> bool:
    """Does every row of each run (``start`` marks run heads) equal its run's first row?"""
    rep = np.flatnonzero(start)[np.cumsum(start) - 1]
    return all(np.array_equal(c, c[rep]) for c in cols)


def _tuple_order(
    cap: np.ndarray | None, ports: list[np.ndarray], addrs: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by 4-tuple, capture order inside (``cap``: None when the rows already
    are); and where each tuple's run starts in that order.

    The port pair separates the tuples of nearly every capture, and two 16-bit radix
    passes sort by it; the addresses are then only checked to be constant in each run.
    When they are not (one port pair between several address pairs), the rows are sorted
    by a hash of the whole tuple instead, checked for collisions.
    """
    n = len(ports[0])
    base = np.arange(n) if cap is None else cap
    o = base[np.argsort(ports[1][base], kind="stable")]
    o = o[np.argsort(ports[0][o], kind="stable")]
    a_s, b_s = ports[0][o], ports[1][o]
    start = group_starts(a_s)
    start[1:] |= b_s[1:] != b_s[:-1]
    if _same_as_first([a[o] for a in addrs], start):
        return o, start
    h = _mix64(addrs + ports)
    uniq = np.unique(h)
    tid = np.searchsorted(uniq, h)
    o = base[group_sort(tid[base])]
    start = group_starts(tid[o])
    if _same_as_first([c[o] for c in addrs + ports], start):
        return o, start
    # A 64-bit hash collision (never seen): an exact, slower sort over the columns.
    keys = np.stack([c.astype(np.uint64) for c in addrs + ports], axis=1)
    _, tid = np.unique(keys, axis=0, return_inverse=True)
    tid = tid.ravel()
    o = base[np.argsort(tid[base], kind="stable")]
    return o, group_starts(tid[o])


def flow_table(
    packets: Mapping[str, np.ndarray], tuples: Mapping[str, np.ndarray] | None = None
) -> tuple[np.ndarray, Table]:
    """Give each packet a flow id; describe the flows (FLOW_COLUMNS).

    A flow is one direction of one connection. Packets of one 4-tuple are split into
    connections at each handshake packet that names another connection than the previous
    one did (a SYN with a new ISN, or a SYN-ACK answering one), which is how a 4-tuple
    reused after a close, an RST or a long silence shows; a resent SYN (same ISN) does not
    split. Flow ids follow first appearance in the capture.

    ``tuples``: the packets carry their 4-tuple as a number (a spilled shard's ``tuple``
    column, schemas/packets.SPILLED_DTYPES) instead of their addresses, and this is the
    table of the tuples it numbers (analyze/spill.TupleNumbers.table).
    """
    n = len(packets["frame"])
    if n == 0:
        return np.zeros(0, dtype=np.int64), _describe_flows(
            packets, np.zeros(0, np.int64), 0, np.zeros(0, np.int64), np.zeros(0, np.int64), None
        )
    cap = capture_order(packets["frame"])
    if tuples is None:
        dirbit, order, first_in_tuple = _tuples_of_addresses(packets, cap)
    else:
        # the spill numbered the canonical tuple and the direction: (tuple << 1) | dir
        dirbit = (packets["tuple"] & 1) != 0
        number = packets["tuple"] >> 1
        order = group_sort(number) if cap is None else cap[group_sort(number[cap])]
        first_in_tuple = group_starts(number[order])
        del number

    # Handshake signature: which side is the client and its ISN. A retransmitted SYN (same
    # ISN) or its SYN-ACK (ack = ISN + 1) keep the signature; anything else is a new
    # connection. Only the handshake packets are looked at.
    flags = packets["flags"]
    hs_pos = np.flatnonzero((flags[order] & TCP_SYN) != 0)
    starts_here = first_in_tuple[hs_pos]
    if len(hs_pos):
        hs_rows = order[hs_pos]
        has_ack = (flags[hs_rows] & TCP_ACK) != 0
        d_hs = dirbit[hs_rows].astype(np.int64)
        client_dir = np.where(has_ack, 1 - d_hs, d_hs)
        client_isn = np.where(
            has_ack,
            (packets["ack"][hs_rows].astype(np.int64) - 1) & 0xFFFFFFFF,
            packets["seq"][hs_rows].astype(np.int64),
        )
        sig = client_dir * (1 << 33) + client_isn
        differs = np.ones(len(hs_pos), dtype=bool)
        # Within a tuple: another handshake than the tuple's previous one. The first
        # handshake packet of a tuple after packets of an older connection (capture
        # began mid-connection, then the tuple was reused) also starts one.
        # cumsum(first_in_tuple)[hs_pos], from the few starts: no pass over every packet
        tuple_no = np.searchsorted(np.flatnonzero(first_in_tuple), hs_pos, side="right")
        same_tuple_prev = tuple_no[1:] == tuple_no[:-1]
        differs[1:][same_tuple_prev] = sig[1:][same_tuple_prev] != sig[:-1][same_tuple_prev]
        # the connections' starts are the 4-tuples' and these: marked in first_in_tuple
        # for the count, then unmarked (a copy would cost a byte a packet at the peak);
        # _number_by_first_row numbers the 4-tuples by it (until stop 21 it saw the
        # connections' starts: the whole capture numbered connections by their own first
        # packet, shards.merge_parts by their 4-tuple's)
        first_in_tuple[hs_pos] |= differs
    conn = np.cumsum(first_in_tuple) - 1
    first_in_tuple[hs_pos] = starts_here
    conn_sorted = _number_by_first_row(conn, order, first_in_tuple)
    del conn
    n_conn = int(conn_sorted.max()) + 1
    conn_id = np.empty(n, dtype=np.int64)
    conn_id[order] = conn_sorted

    # Flow = (connection, direction), numbered by first appearance in capture order.
    fkey = conn_id * 2 + dirbit
    first_frame = np.full(2 * n_conn + 2, _BIG, dtype=np.int64)
    np.minimum.at(first_frame, fkey, packets["frame"])
    keys = np.flatnonzero(first_frame < _BIG)
    key_of_flow = keys[np.argsort(first_frame[keys], kind="stable")]
    n_flows = len(key_of_flow)
    code = np.full(len(first_frame), -1, dtype=np.int64)
    code[key_of_flow] = np.arange(n_flows)
    flow_id = code[fkey]
    rev_flow_id = code[key_of_flow ^ 1]

    flows = _describe_flows(packets, flow_id, n_flows, rev_flow_id, key_of_flow, cap, tuples)
    return flow_id, flows


def _tuples_of_addresses(
    packets: Mapping[str, np.ndarray], cap: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each packet's direction in its 4-tuple (True: sent by the greater endpoint), the
    rows grouped by 4-tuple (capture order inside) and where each tuple's run starts."""
    s_hi, s_lo = packets["saddr_hi"], packets["saddr_lo"]
    d_hi, d_lo = packets["daddr_hi"], packets["daddr_lo"]
    sp, dp = packets["sport"], packets["dport"]
    # Canonical (unordered) endpoint pair: dir 0 is the packet sent by the lesser endpoint.
    src_first = _endpoint_less(s_hi, s_lo, sp, d_hi, d_lo, dp)
    a_p = np.where(src_first, sp, dp)
    b_p = np.where(src_first, dp, sp)
    # IPv4 (IPv4-mapped) addresses have a zero high half: the low halves tell them apart.
    halves = [(s_lo, d_lo)] if not (s_hi.any() or d_hi.any()) else [(s_hi, d_hi), (s_lo, d_lo)]
    addrs = [np.where(src_first, a, b) for a, b in halves] + [
        np.where(src_first, b, a) for a, b in halves
    ]
    # Capture order within each 4-tuple (frames are capture order; the reader emits rows
    # in capture order, so a stable sort by tuple keeps it).
    order, first_in_tuple = _tuple_order(cap, [a_p, b_p], addrs)
    return ~src_first, order, first_in_tuple


def _flow_addresses(packets, fi: np.ndarray, tuples) -> list[np.ndarray]:
    """Source and destination address halves (s_hi, s_lo, d_hi, d_lo) of the packets at
    rows ``fi``, from the packets' own columns or from their numbered tuples."""
    if tuples is None:
        return [packets[k][fi] for k in ADDRESS_HALVES]
    code = packets["tuple"][fi]
    number, sent_by_b = code >> 1, (code & 1) != 0
    a = [tuples["a_hi"][number], tuples["a_lo"][number]]
    b = [tuples["b_hi"][number], tuples["b_lo"][number]]
    return [np.where(sent_by_b, y, x) for x, y in zip(a, b)] + [
        np.where(sent_by_b, x, y) for x, y in zip(a, b)
    ]


def _number_by_first_row(
    conn: np.ndarray, order: np.ndarray, tuple_start: np.ndarray
) -> np.ndarray:
    """Renumber connections (``conn``: 0, 1, ... along ``order``, whose runs of 4-tuples
    start at ``tuple_start``) so that 4-tuples count in order of their first row, and the
    connections of a 4-tuple in capture order: conn_id is an output column, and that is
    how it has always been numbered."""
    starts = np.flatnonzero(tuple_start)
    first_row = np.minimum.reduceat(order, starts)
    if len(starts) < 2 or bool(np.all(first_row[1:] > first_row[:-1])):
        return conn
    by_first = np.argsort(first_row, kind="stable")
    n_conns = np.diff(np.r_[conn[starts], conn[-1] + 1])
    new_start = np.empty(len(starts), dtype=np.int64)
    new_start[by_first] = np.cumsum(n_conns[by_first]) - n_conns[by_first]
    tuple_no = np.cumsum(tuple_start) - 1
    return conn + (new_start - conn[starts])[tuple_no]


def flow_order(frame: np.ndarray, flow_id: np.ndarray) -> np.ndarray:
    """Permutation grouping packets by flow, each flow in capture order."""
    cap = capture_order(frame)
    if cap is None:
        return group_sort(flow_id)
    return cap[group_sort(flow_id[cap])]


def _first_where(flow_id, mask, n_flows, rank, cap) -> np.ndarray:
    """Row of the first packet (in capture order) of each flow where ``mask`` (None: all);
    -1 where none. ``rank``: each row's capture rank; ``cap`` its inverse (None: both are
    the row number)."""
    best = np.full(n_flows, _BIG, dtype=np.int64)
    if mask is None:
        np.minimum.at(best, flow_id, rank)
    else:
        np.minimum.at(best, flow_id[mask], rank[mask])
    found = best < _BIG
    rows = np.where(found, best, 0)
    if cap is not None:
        rows = cap[rows]
    return np.where(found, rows, -1)


def _describe_flows(packets, flow_id, n_flows, rev_flow_id, key_of_flow, cap, tuples=None) -> Table:
    n = len(flow_id)
    flags = packets["flags"]
    frame = packets["frame"]
    ts = packets["ts_ns"]
    # Packets are in capture order (frame order) by contract; be safe for arbitrary input.
    if cap is None:
        rank = np.arange(n)
    else:
        rank = np.empty(n, dtype=np.int64)
        rank[cap] = np.arange(n)
    first_idx = _first_where(flow_id, None, n_flows, rank, cap)
    last_ts = np.full(n_flows, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last_ts, flow_id, ts)
    n_packets = np.bincount(flow_id, minlength=n_flows)
    n_data = count_where(flow_id, packets["payload_len"] > 0, n_flows)

    syn = (flags & TCP_SYN) != 0
    ack = (flags & TCP_ACK) != 0
    syn_idx = _first_where(flow_id, syn, n_flows, rank, cap)
    syn_seen = syn_idx >= 0
    synack_seen = np.zeros(n_flows, dtype=bool)
    synack_seen[syn_seen] = (flags[syn_idx[syn_seen]] & TCP_ACK) != 0
    fin_seen = count_where(flow_id, (flags & TCP_FIN) != 0, n_flows) > 0
    rst_seen = count_where(flow_id, (flags & TCP_RST) != 0, n_flows) > 0

    seq = packets["seq"]
    fi = np.clip(first_idx, 0, None)
    base_seq = np.where(syn_seen, seq[np.where(syn_seen, syn_idx, fi)], seq[fi]).astype(np.int64)
    # Acks in a flow count the reverse flow's bytes: their base is the reverse flow's base,
    # or (one-way capture) the first ack value seen.
    rev = rev_flow_id
    rev_c = np.clip(rev, 0, None)
    if (rev >= 0).all():
        ack_base = base_seq[rev_c]
    else:
        ack_idx = _first_where(flow_id, ack, n_flows, rank, cap)
        ack_base = np.where(
            rev >= 0,
            base_seq[rev_c],
            np.where(ack_idx >= 0, packets["ack"][np.clip(ack_idx, 0, None)], 0),
        )
    ack_base = ack_base.astype(np.int64)

    def _syn_opt(name, missing):
        v = np.full(n_flows, missing, dtype=np.asarray(packets[name]).dtype)
        v[syn_seen] = packets[name][syn_idx[syn_seen]]
        return v

    mss = _syn_opt("opt_mss", 0)
    wscale = _syn_opt("opt_wscale", -1)
    sack_perm = _syn_opt("opt_sackok", False)
    ts_opt = _syn_opt("opt_ts", False)

    # Negotiated options need both SYNs; without the handshake, infer from what the flows
    # carry (a SACK block proves SACK was negotiated, RFC 2018 §2; a TS option proves TS).
    both = syn_seen & (rev >= 0) & syn_seen[rev_c]
    any_sack = count_where(flow_id, packets["sack_n"] > 0, n_flows) > 0
    any_ts = count_where(flow_id, np.asarray(packets["opt_ts"], dtype=bool), n_flows)
    ts_frac = any_ts / np.maximum(n_packets, 1)
    sack_any_dir = any_sack | np.where(rev >= 0, any_sack[rev_c], False)
    # Without the handshake, assume SACK (every current stack offers it) unless the peer
    # sends duplicate ACKs without SACK blocks, which a SACK receiver would not
    # (RFC 2018 §4: a SACK-permitted receiver reports out-of-order data in every dup ACK).
    plain_dup = _dupacks_without_sack(packets, flow_id, n_flows, ~both)
    sack_unrefuted = sack_any_dir | ~(plain_dup | np.where(rev >= 0, plain_dup[rev_c], False))
    # One SYN seen without SACK-permitted refuses it: both ends must offer it (RFC 2018 §2).
    refused = (syn_seen & ~sack_perm) | np.where(
        rev >= 0, syn_seen[rev_c] & ~sack_perm[rev_c], False
    )
    sack_ok = np.where(both, sack_perm & sack_perm[rev_c], sack_unrefuted & ~refused)
    ts_ok = np.where(both, ts_opt & ts_opt[rev_c], ts_frac > 0.5)

    local, path_rtt, hs_rtt, trip = _local_side(packets, flow_id, n_flows, rev, syn_idx)
    sender_os, initial_ttl = sender_stack(packets, syn_idx, fi)

    conn = key_of_flow >> 1
    dirb = key_of_flow & 1
    family = packets["family"][fi]
    s_hi, s_lo, d_hi, d_lo = _flow_addresses(packets, fi, tuples)
    text = _addr_strings([(s_hi, s_lo), (d_hi, d_lo)], family)
    table = {
        "flow_id": np.arange(n_flows, dtype=np.int64),
        "rev_flow_id": rev_flow_id.astype(np.int64),
        "conn_id": conn.astype(np.int64),
        "dir": dirb.astype(np.int8),
        "family": family,
        "saddr_hi": s_hi,
        "saddr_lo": s_lo,
        "daddr_hi": d_hi,
        "daddr_lo": d_lo,
        "saddr": text[0],
        "daddr": text[1],
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
        "hs_rtt_ns": hs_rtt,
        "trip_ns": trip,
        "sender_os": sender_os,
        "initial_ttl": initial_ttl,
    }
    assert n >= n_flows
    return table


#: Initial TTLs stacks use (Linux, macOS, BSD 64; Windows 128; network gear, Solaris 255;
#: some old stacks 32): a packet's TTL is its sender's less the hops to the capture point.
INITIAL_TTLS = (32, 64, 128, 255)
#: The option order Linux writes in a SYN or SYN-ACK (tcp_options_write): [MD5] MSS, then
#: SACK-permitted + timestamps, or NOP NOP timestamps; NOP window scale; NOP NOP
#: SACK-permitted when timestamps are off; then TFO, MPTCP, AO (kinds above 14). One hex
#: digit per kind (schemas/packets.py opt_layout).
LINUX_SYN_LAYOUT = re.compile(r"^f?2(48|118)?(13)?(114)?[f01]*$")
#: Other stacks' SYN layouts (p0f's signatures): macOS and FreeBSD put the window scale
#: before the timestamps.
OTHER_SYN_LAYOUTS = {
    "21311840": "macos",
    "2131184": "macos",
    "21348": "bsd",
    "213114": "windows",
    "2114": "windows",
}


def sender_stack(packets, syn_idx, first_idx) -> tuple[np.ndarray, np.ndarray]:
    """Per flow, the stack that sent it, as far as the capture tells, and its initial TTL
    (the smallest of INITIAL_TTLS at or above what the flow's SYN, else first packet, shows;
    -1: unknown). ``linux`` when the SYN's options are in Linux's order and the TTL starts
    at 64 or less; ``windows``, ``macos``, ``bsd`` when the SYN has their layout (Windows'
    is also Linux's with timestamps off: the TTL, 128 for Windows, tells them apart);
    ``other`` for any other layout or a TTL from 255; without a SYN, ``windows`` for a
    TTL from 128, else ``unknown`` (a TTL from 64 is Linux's, macOS's or BSD's)."""
    n_flows = len(syn_idx)
    has_syn = syn_idx >= 0
    at = np.where(has_syn, syn_idx, first_idx)
    ttl = packets["ttl"][at].astype(np.int64) if "ttl" in packets else np.zeros(n_flows, int)
    known = ttl > 0
    guess = np.full(n_flows, -1, dtype=np.int16)
    for t in INITIAL_TTLS[::-1]:
        guess[known & (ttl <= t)] = t
    layout = packets["opt_layout"][at] if "opt_layout" in packets else np.zeros(n_flows, int)
    out = np.full(n_flows, "unknown", dtype=object)
    out[guess == 128] = "windows"
    out[guess == 255] = "other"
    for f in np.flatnonzero(has_syn & (layout > 0)).tolist():
        digits = f"{int(layout[f]):x}"
        other = OTHER_SYN_LAYOUTS.get(digits)
        if LINUX_SYN_LAYOUT.match(digits) and 0 <= guess[f] <= 64:
            out[f] = "linux"
        elif other is not None and not (other == "windows" and guess[f] not in (-1, 128)):
            out[f] = other
        else:
            out[f] = "other"
    return out, guess


def _dupacks_without_sack(packets, flow_id, n_flows, wanted) -> np.ndarray:
    """Per flow (of those ``wanted``, or whose reverse is): did it send three duplicate
    ACKs in a row that carry no SACK block?"""
    out = np.zeros(n_flows, dtype=bool)
    if not wanted.any():
        return out
    flags = packets["flags"]
    pure = (
        ((flags & TCP_ACK) != 0)
        & ((flags & (TCP_SYN | TCP_FIN | TCP_RST)) == 0)
        & (packets["payload_len"] == 0)
    )
    sel = by_group(np.flatnonzero(pure), flow_id[pure])
    if len(sel) < 4:
        return out
    f = flow_id[sel]
    same = (
        (f[1:] == f[:-1])
        & (packets["ack"][sel][1:] == packets["ack"][sel][:-1])
        & (packets["win"][sel][1:] == packets["win"][sel][:-1])
        & (packets["sack_n"][sel][1:] == 0)
    )
    # three consecutive duplicates: same[i] & same[i+1] & same[i+2]
    three = same[:-2] & same[1:-1] & same[2:]
    out[f[1:-2][three]] = True
    return out


PACKET_HOST, PACKET_OUTGOING = 0, 4  # sll_pkttype, linux/if_packet.h

#: A round trip from the capture point to a flow's sender this short (ns) is that host's
#: own stack answering (its processing, not a path): the capture runs on the sender.
AT_SENDER_TRIP_NS = 250_000


def _local_side(packets, flow_id, n_flows, rev, syn_idx):
    """Was each flow sent by the capturing host? The path RTT seen from that host; the
    whole path's RTT; and the round trip from the capture point to each flow's sender.

    A Linux cooked capture says it per packet (sll_pkttype PACKET_OUTGOING). Otherwise the
    handshake does: the capturing host answers at once, its peer one path RTT later. On the
    client's host SYN -> SYN-ACK takes the RTT and SYN-ACK -> ACK microseconds; on the
    server's host, the other way round. Unknown (null) when neither is available.

    Wherever the capture point lies (either host, or a tap between them), the SYN ->
    SYN-ACK gap is the round trip from it to the server and back, SYN-ACK -> ACK the round
    trip to the client, and their sum (SYN -> the client's ACK, also when a one-way capture
    lacks the SYN-ACK) the path's RTT: ``hs_rtt_ns``. ``trip_ns`` is the round trip from
    the capture point to the flow's own sender: how much later, at the capture point, a
    segment that answers a packet seen there can appear.
    """
    local = np.zeros(n_flows, dtype=bool)
    local_known = np.zeros(n_flows, dtype=bool)
    path_rtt = np.zeros(n_flows, dtype=np.int64)
    rtt_known = np.zeros(n_flows, dtype=bool)
    hs_rtt = np.zeros(n_flows, dtype=np.int64)
    hs_known = np.zeros(n_flows, dtype=bool)
    trip = np.zeros(n_flows, dtype=np.int64)
    trip_known = np.zeros(n_flows, dtype=bool)
    pt = packets["pkttype"]
    if (pt >= 0).any():
        out_n = count_where(flow_id, pt == PACKET_OUTGOING, n_flows)
        in_n = count_where(flow_id, (pt >= 0) & (pt != PACKET_OUTGOING), n_flows)
        local_known = (out_n + in_n) > 0
        local = local_known & (out_n > in_n)
    known = local_known.copy()

    ts = packets["ts_ns"]
    flags = packets["flags"]
    # Client flow c (its first SYN is a pure SYN) with server flow s = rev[c], if any.
    c = np.flatnonzero(syn_idx >= 0)
    c = c[(flags[syn_idx[c]] & TCP_ACK) == 0]
    if len(c):
        s = rev[c]
        sc = np.clip(s, 0, None)
        has_sa = (s >= 0) & (syn_idx[sc] >= 0)
        big = np.iinfo(np.int64).max
        t_synack = np.where(has_sa, ts[syn_idx[sc]], big)
        is_client = np.zeros(n_flows, dtype=bool)
        is_client[c] = True
        # The client's first packet after its SYN (and the SYN-ACK): its ACK of it.
        is_syn = (flags & TCP_SYN) != 0
        after = ~is_syn & ((flags & TCP_ACK) != 0) & is_client[flow_id]
        first_after_of = np.full(n_flows, _BIG, dtype=np.int64)
        np.minimum.at(first_after_of, flow_id[after], ts[after])
        first_after = first_after_of[c]
        # The SYN answered: the last one sent before the SYN-ACK, or (no SYN-ACK in the
        # capture) before the client's ACK (SYNs may be resent).
        answer_t_of = np.full(n_flows, big, dtype=np.int64)
        answer_t_of[c] = np.where(has_sa, t_synack, first_after)
        rows = np.flatnonzero(is_syn)
        rows = rows[((flags[rows] & TCP_ACK) == 0) & is_client[flow_id[rows]]]
        rows = rows[ts[rows] <= answer_t_of[flow_id[rows]]]
        last_syn = np.full(n_flows, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last_syn, flow_id[rows], ts[rows])
        t_syn = last_syn[c]
        good = (
            (t_syn > np.iinfo(np.int64).min)
            & (first_after < _BIG)
            & (first_after >= np.where(has_sa, t_synack, t_syn))
        )
        whole = first_after - t_syn
        hs_rtt[c[good]] = whole[good]
        hs_known[c[good]] = True
        both = good & has_sa & (t_syn <= t_synack)
        g1 = t_synack[both] - t_syn[both]
        g2 = first_after[both] - t_synack[both]
        cg, sg = c[both], s[both]
        hs_rtt[sg] = g1 + g2
        hs_known[sg] = True
        trip[cg], trip[sg] = g2, g1
        trip_known[cg] = trip_known[sg] = True
        client_local = g1 > g2
        undecided = ~known[cg] & ~known[sg]
        local[cg[undecided]] = client_local[undecided]
        local[sg[undecided]] = ~client_local[undecided]
        local_known[cg[undecided]] = True
        local_known[sg[undecided]] = True
        rtt = np.maximum(g1, g2)
        path_rtt[cg] = rtt
        path_rtt[sg] = rtt
        rtt_known[cg] = True
        rtt_known[sg] = True
    return (
        Nullable(local, local_known),
        Nullable(path_rtt, rtt_known),
        Nullable(hs_rtt, hs_known),
        Nullable(trip, trip_known),
    )


def _addr_strings(pairs: list[tuple[np.ndarray, np.ndarray]], family: np.ndarray) -> list:
    """Text form of addresses, one per flow; each distinct address is formatted once."""
    cache: dict = {}
    fam = family.tolist()
    out = []
    for hi, lo in pairs:
        text = []
        for h, lo_, f in zip(hi.tolist(), lo.tolist(), fam):
            key = (h, lo_, f)
            s = cache.get(key)
            if s is None:
                s = cache[key] = addr_to_str(h, lo_, f)
            text.append(s)
        out.append(np.array(text, dtype=object))
    return out


# --- sequence space ---------------------------------------------------------------------


def _unwrap_in_order(
    raw: np.ndarray, start_pos: np.ndarray, base_at_start: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """Unwrap 32-bit values taken in order within groups into int64 offsets from a base.

    ``raw`` is in processing order: groups one after another, each in capture order;
    group k starts at ``start_pos[k]`` (increasing, the first 0) and its raw base is
    ``base_at_start[k]``. The offsets are written into ``out`` (int64, len(raw)), which is
    returned. Consecutive values of a group are assumed to differ by less than 2**31 (RFC
    9293 §3.4: the window is far smaller), so the signed 32-bit difference between
    neighbours is the true step: uint32 subtraction, read as int32.
    """
    m = len(raw)
    if m == 0:
        return out
    raw = raw.astype(np.uint32, copy=False)
    step = np.empty(m, dtype=np.uint32)
    np.subtract(raw[1:], raw[:-1], out=step[1:])
    step[start_pos] = raw[start_pos] - base_at_start.astype(np.uint32)
    step = step.view(np.int32)
    # One running sum over all groups that restarts at each group start: the start's
    # step less the previous group's total (where the sum stood), so no per-row offset
    # array is needed; done in place in ``out`` (reduceat on it: on the int32 steps with
    # dtype=int64 numpy would first make a full int64 copy).
    np.copyto(out, step)
    del step
    totals = np.add.reduceat(out, start_pos)
    out[start_pos[1:]] -= totals[:-1]
    np.cumsum(out, out=out)
    return out


def sequence_space(
    packets: dict[str, np.ndarray],
    flow_id: np.ndarray,
    flows,
    order: np.ndarray | None = None,
    seam=None,
) -> dict[str, np.ndarray]:
    """Unwrapped sequence numbers per packet, as int64 offsets from each flow's base.

    Returns ``seq_abs``, ``end_abs`` (seq_abs + payload + SYN + FIN: the sequence space the
    segment occupies, RFC 9293 §3.4), ``seg_len``, ``ack_abs`` (in the reverse flow's space;
    meaningful only where the ACK flag is set) and, for the rows ``sack_rows`` that carry
    SACK blocks, ``sack_l_abs``/``sack_r_abs`` (len(sack_rows) x 4, in the reverse flow's
    space, valid for block index < sack_n): use sack_blocks() for a dense view.
    ``order``: flow_order(packets["frame"], flow_id), when the caller has it (flows in
    increasing flow_id, each in capture order). ``seam``: the rows are a window of a
    longer capture behind rows carried from before it (analyze/windows.Seam), whose true
    offsets it knows: it corrects the unwrapping across the rows left out.

    Memory: a connection is never split across shards, so the largest one goes through
    here at once. Beside the 33 B/packet returned, at most ~12 B/packet of temporaries
    (int32 row order, 32-bit raw values and steps) live at a time: one int64 scratch
    buffer serves both unwraps and then becomes end_abs.
    """
    n = len(flow_id)
    if order is None:
        order = flow_order(packets["frame"], flow_id)
    # Row numbers fit int32 (a shard is far below 2**31 packets): half the bytes.
    order = order.astype(np.int32 if n < (1 << 31) else np.int64, copy=False)
    # order groups the flows in increasing flow_id: flow f's rows follow the earlier ones'.
    n_of_flow = np.bincount(flow_id, minlength=len(flows["base_seq"]))
    present = np.flatnonzero(n_of_flow)
    n_of_flow = n_of_flow[present]
    start_pos = np.cumsum(n_of_flow) - n_of_flow
    buf = np.empty(n, dtype=np.int64)
    _unwrap_in_order(packets["seq"][order], start_pos, flows["base_seq"][present], buf)
    seq_abs = np.empty(n, dtype=np.int64)
    seq_abs[order] = buf

    # ACK numbers: the rows with the ACK flag, same processing order; buf is free again.
    ack_flag = (packets["flags"] & TCP_ACK) != 0
    in_order = ack_flag[order]
    # ACK rows per flow, from a running count kept in buf (no new full-length array).
    np.cumsum(in_order, out=buf)
    n_ack = np.diff(buf[start_pos + n_of_flow - 1], prepend=0)
    o_ack = order[in_order]
    del order, in_order
    with_ack = n_ack > 0
    n_ack = n_ack[with_ack]
    _unwrap_in_order(
        packets["ack"][o_ack],
        np.cumsum(n_ack) - n_ack,
        flows["ack_base"][present[with_ack]],
        buf[: len(o_ack)],
    )
    ack_abs = np.zeros(n, dtype=np.int64)
    ack_abs[o_ack] = buf[: len(o_ack)]
    del o_ack
    if seam is not None:
        seam.correct(seq_abs, ack_abs, ack_flag, flow_id)

    # SYN and FIN each take one sequence number. Kept as payload_len's uint32 (4 bytes a
    # packet less than int64 in every shard): a segment never nears 2^32 bytes, and sums
    # with the int64 sequence numbers are int64.
    seg_len = packets["payload_len"].astype(np.uint32)
    for bit in (TCP_SYN, TCP_FIN):
        seg_len += (packets["flags"] & bit) != 0
    end_abs = np.add(seq_abs, seg_len, out=buf)

    # SACK edges lie near the ACK number: offset them from it. Only rows carrying SACK
    # blocks are stored (sparse): see sack_blocks().
    # A spilled shard has the edges of those rows only (schemas/packets.SACK_ROWS).
    sparse = SACK_ROWS in packets
    rows = packets[SACK_ROWS] if sparse else np.flatnonzero(packets["sack_n"] > 0)
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
                edge = packets[f"sack_{side}{b}"]
                d = (edge if sparse else edge[rows]).astype(np.int64) - base_raw
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
