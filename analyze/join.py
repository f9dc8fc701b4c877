"""Join kernel events to the capture's frames: by flow, sequence range and time.

One event (one tcp_retransmit_skb call) covers [seq, end_seq) of one skb, which can be
several wire segments (GSO/TSO; FIELD-NOTES.md), and the same range can be resent many
times (an RTO chain), so the time decides between events of the same range: each frame
goes to the overlapping event nearest to it in time. Both clocks are the recording
host's CLOCK_REALTIME (events: CLOCK_MONOTONIC + the offset saved in run.json).

Pure functions over DataFrames; vectorised (candidate frames are first narrowed to those
near some event in time, then merged on the flow key).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retranscope.schemas.packets import TCP_FIN, TCP_SYN, addr_from_str

FLOW_KEY = ["saddr_hi", "saddr_lo", "daddr_hi", "daddr_lo", "sport", "dport"]
# The tracepoint fires in __tcp_retransmit_skb right after the skb is handed to the
# device; tcpdump stamps it at the tap, microseconds apart on the same host. Queueing in
# a qdisc can add milliseconds. A frame farther than this from every event of its range
# is not that event's.
DEFAULT_TOLERANCE_NS = 500_000_000


def event_flow_keys(events: pd.DataFrame) -> pd.DataFrame:
    """saddr/daddr text -> the packet table's (hi, lo) halves, parsing each address once."""
    out = pd.DataFrame(index=events.index)
    for side in ("saddr", "daddr"):
        codes, uniq = pd.factorize(events[side])
        parsed = np.array([addr_from_str(a)[:2] for a in uniq], dtype=np.uint64).reshape(-1, 2)
        out[f"{side}_hi"] = parsed[codes, 0] if len(uniq) else np.zeros(0, np.uint64)
        out[f"{side}_lo"] = parsed[codes, 1] if len(uniq) else np.zeros(0, np.uint64)
    out["sport"] = events["sport"].astype(np.uint16).to_numpy()
    out["dport"] = events["dport"].astype(np.uint16).to_numpy()
    return out


def segment_len(packets: dict[str, np.ndarray]) -> np.ndarray:
    """Sequence space a segment occupies: payload plus one for SYN and one for FIN."""
    flags = packets["flags"]
    return (packets["payload_len"].astype(np.int64) + ((flags & TCP_SYN) != 0)
            + ((flags & TCP_FIN) != 0))


def eligible_rows(n_rows: int, retrans_rows: np.ndarray, flow_id: np.ndarray,
                  syn_seen: np.ndarray) -> np.ndarray:
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


def join_events(events: pd.DataFrame, packets: dict[str, np.ndarray],
                tolerance_ns: int = DEFAULT_TOLERANCE_NS,
                eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Match frames to events.

    Returns (event_of_row, frames_per_event): for every packet-table row the index (in
    ``events``) of the event it belongs to or -1, and for every event how many frames it got.
    Events without ``seq`` (unreadable skb) match on flow and time alone. ``eligible``
    (see eligible_rows) limits the frames considered; None considers every frame.
    """
    n_rows = len(packets["ts_ns"])
    event_of_row = np.full(n_rows, -1, dtype=np.int64)
    frames = np.zeros(len(events), dtype=np.int64)
    if not len(events) or not n_rows:
        return event_of_row, frames

    seglen = segment_len(packets)
    ev_ts = events["ts_wall_ns"].to_numpy(np.int64)
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

    wire = pd.DataFrame({k: packets[k][cand] for k in FLOW_KEY})
    wire["row"] = cand
    wire["w_ts"] = ts[cand]
    wire["w_seq"] = packets["seq"][cand].astype(np.int64)
    wire["w_len"] = seglen[cand]
    ev = event_flow_keys(events)
    ev["ev"] = np.arange(len(events))
    ev["e_ts"] = ev_ts
    has_seq = events["seq"].notna().to_numpy()
    ev["e_seq"] = events["seq"].fillna(0).to_numpy(np.int64)
    ev["e_len"] = ((events["end_seq"].fillna(0).to_numpy(np.int64) - ev["e_seq"]) % (1 << 32))
    ev["e_has_seq"] = has_seq

    pairs = wire.merge(ev, on=FLOW_KEY, how="inner")
    if pairs.empty:
        return event_of_row, frames
    # Overlap of [w_seq, w_seq + w_len) and [e_seq, e_seq + e_len) in 32-bit sequence space.
    d = pairs["w_seq"].to_numpy() - pairs["e_seq"].to_numpy()
    d = ((d + (1 << 31)) % (1 << 32)) - (1 << 31)
    overlap = (d < pairs["e_len"].to_numpy()) & (d + pairs["w_len"].to_numpy() > 0)
    dt = np.abs(pairs["w_ts"].to_numpy() - pairs["e_ts"].to_numpy())
    ok = (overlap | ~pairs["e_has_seq"].to_numpy()) & (dt <= tolerance_ns)
    pairs = pairs.loc[ok, ["row", "ev"]].assign(dt=dt[ok])
    if pairs.empty:
        return event_of_row, frames
    best = pairs.sort_values(["row", "dt", "ev"], kind="stable").drop_duplicates("row")
    event_of_row[best["row"].to_numpy()] = best["ev"].to_numpy()
    frames = np.bincount(best["ev"].to_numpy(), minlength=len(events)).astype(np.int64)
    return event_of_row, frames


def why_unmatched(events: pd.DataFrame, frames: np.ndarray, capture_first_ns: int | None,
                  capture_last_ns: int | None, flows_in_capture: np.ndarray,
                  capture_drops: int | None) -> np.ndarray:
    """For events with no frame, the most likely reason (object array; None if matched)."""
    out = np.full(len(events), None, dtype=object)
    none = frames == 0
    ts = events["ts_wall_ns"].to_numpy(np.int64)
    err = events["err"].fillna(0).to_numpy()
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
