"""`retranscope analyze`: capture and/or events -> retransmits, flows, summary.

    capture --pcap.read_capture--> packets --flows--> flow ids --retrans--> retransmitted
    segments --classify--> kind_pcap + timing;  events --join--> kernel reason per frame

Pure assembly: the reading happens in analyze/capture/ and analyze/events.py, the writing in
analyze/outputs.py. A capture alone is assembled over numpy tables (analyze/table.py) and
never imports pandas; with events, the join and the merge run over DataFrames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retranscope.analyze.table import Nullable, Table, filled, take, to_pandas
from retranscope.schemas.outputs import FAMILY_OF_KIND, KINDS, OUTPUT_SCHEMA_VERSION

if TYPE_CHECKING:
    import pandas as pd

CLASSIFY_COLUMNS = ("kind_pcap", "spurious", "spurious_by", "since_original_ns",
                    "since_last_send_ns", "since_last_ack_ns", "srtt_us", "expected_pto_ns",
                    "expected_rto_ns", "backoff", "trigger_frame", "since_trigger_ns")


@dataclass
class Result:
    """``retransmits`` and ``flows``: tables (a capture alone) or DataFrames (with events);
    analyze/outputs.py writes either."""

    retransmits: Any
    flows: Any
    summary: dict = field(default_factory=dict)


def classify_capture(packets: dict[str, np.ndarray]) -> tuple[np.ndarray, Table, Table]:
    """flows + per-wire-segment classification of a capture (row index into packets kept).

    The sequence space and the sender context are computed once, for both the detection
    of retransmissions and their classification.
    """
    from retranscope.analyze.classify import classify_table
    from retranscope.analyze.flows import flow_table, sequence_space
    from retranscope.analyze.retrans import retransmission_table, sender_context

    flow_id, flows = flow_table(packets)
    space = sequence_space(packets, flow_id, flows)
    context = sender_context(packets, flow_id, flows, space)
    retrans = retransmission_table(packets, flow_id, flows, space, context)
    classified = classify_table(packets, flow_id, flows, retrans, space=space)
    return flow_id, flows, classified


def _row_of_frame(packets: dict[str, np.ndarray], frames: np.ndarray) -> np.ndarray:
    """Packet-table row of each frame number (frames are increasing in the table)."""
    return np.searchsorted(packets["frame"], frames)


def _wire_table(flows: Table, c: Table) -> Table:
    """Classified wire segments -> output rows (source 'capture')."""
    fid = c["flow_id"]
    m = len(fid)
    out = {
        "ts_wall_ns": c["ts_ns"].astype(np.int64),
        "source": np.full(m, "capture", dtype=object),
        "family": flows["family"][fid].astype(np.uint8),
        "saddr": flows["saddr"][fid],
        "sport": flows["sport"][fid].astype(np.uint16),
        "daddr": flows["daddr"][fid],
        "dport": flows["dport"][fid].astype(np.uint16),
        "flow_id": fid.astype(np.int64),
        "seq": c["seq"].astype(np.uint32),
        "end_seq": c["end_seq"].astype(np.uint32),
        "kind": c["kind_pcap"],
    }
    for name in CLASSIFY_COLUMNS:
        out[name] = c[name] if name in c else np.full(m, None, dtype=object)
    out["frame"] = c["frame"].astype(np.int64)
    out["frames"] = np.ones(m, dtype=np.int64)
    out["spurious_frames"] = filled(c["spurious"], False).astype(np.int64)
    out["tx_index"] = c["tx_index"] if "tx_index" in c else np.full(m, None, dtype=object)
    out["match"] = np.full(m, None, dtype=object)
    out["kind_agrees"] = np.full(m, None, dtype=object)
    return out


def analyze(capture=None, events=None) -> Result:
    """capture: analyze.capture.Capture or None; events: analyze.events.Events or None."""
    if capture is None and events is None:
        raise ValueError("nothing to analyze")
    summary: dict = {"output_schema_version": OUTPUT_SCHEMA_VERSION, "warnings": []}
    wire = flows = packets = eligible = None
    if capture is not None:
        packets = capture.packets
        summary["capture"] = capture.meta.to_dict()
        summary["warnings"] += list(capture.meta.warnings)
        flow_id, flows, classified = classify_capture(packets)
        if events is None:
            rows = _wire_table(flows, classified)
            rows = take(rows, np.argsort(rows["ts_wall_ns"], kind="stable"))
            summary.update(_totals_table(rows))
            return Result(rows, _flows_table(flows, rows), summary)
        # With events the merge runs over DataFrames: the same rows, converted once.
        from retranscope.analyze.join import eligible_rows

        wire = to_pandas(_wire_table(flows, classified))
        eligible = eligible_rows(len(flow_id), classified["pkt"], flow_id, flows["syn_seen"])
        flows = to_pandas(flows)
    summary["recording"] = {k: events.run.get(k) for k in (
        "host", "kernel_release", "boot_id", "run_id", "complete", "status",
        "events_lost_in_kernel", "events_in_kernel", "events_written", "accounting",
        "counters_delta",
        "filters", "started_wall_ns", "ended_wall_ns")}
    summary["recording"]["tcpdump"] = (events.run.get("pcap") or {}).get("tcpdump")
    summary["warnings"] += events.warnings
    ev = events.table
    ev_rows = _event_rows(ev)
    if wire is not None:
        rows = _merge(ev, ev_rows, wire, packets, capture, summary, eligible, flows)
    else:
        rows = ev_rows
        rows["match"] = "no_capture"
    rows = rows.sort_values(["ts_wall_ns"], kind="stable").reset_index(drop=True)
    flows_out = _flows_out(flows, rows)
    summary.update(_totals_table({"kind": rows["kind"].to_numpy(object),
                                  "spurious": rows["spurious"].fillna(False).to_numpy(bool)}))
    return Result(rows, flows_out, summary)


def _event_rows(ev: pd.DataFrame) -> pd.DataFrame:
    """One row per kernel event, timing from the events alone (no wire evidence)."""
    import pandas as pd

    out = pd.DataFrame({
        "ts_wall_ns": ev["ts_wall_ns"].to_numpy(np.int64),
        "source": "event",
        "family": ev["family"].to_numpy(np.uint8),
        "saddr": ev["saddr"].to_numpy(), "sport": ev["sport"].to_numpy(np.uint16),
        "daddr": ev["daddr"].to_numpy(), "dport": ev["dport"].to_numpy(np.uint16),
        "flow_id": -1,
        "seq": ev["seq"].to_numpy(), "end_seq": ev["end_seq"].to_numpy(),
        "kind": ev["reason"].replace({"other": "unknown"}).to_numpy(object),
    })
    for col in CLASSIFY_COLUMNS:
        out[col] = None
    # Event-only timing: previous event of the same socket, and the kernel's own state.
    key = ev["skaddr"].astype(str) + ev["sport"].astype(str)
    prev = ev.groupby(key)["ts_wall_ns"].shift(1)
    out["since_last_send_ns"] = None
    out["since_prev_retransmit_ns"] = (ev["ts_wall_ns"] - prev).to_numpy()
    out["srtt_us"] = ev["srtt_us"].to_numpy()
    out["backoff"] = ev["backoff"].to_numpy()
    out["kernel_ca_state"] = ev["ca_state"].to_numpy()
    out["kernel_srtt_us"] = ev["srtt_us"].to_numpy()
    out["kernel_backoff"] = ev["backoff"].to_numpy()
    out["frame"] = -1
    out["frames"] = 0
    out["spurious_frames"] = 0
    out["tx_index"] = None
    out["kind_agrees"] = None
    return out


def _merge(ev, ev_rows, wire, packets, capture, summary, eligible, flows) -> pd.DataFrame:
    import pandas as pd

    from retranscope.accounting import gap_intervals
    from retranscope.analyze.join import join_events, why_unmatched

    event_of_row, frames = join_events(ev, packets, eligible=eligible)
    wire_row = _row_of_frame(packets, wire["frame"].to_numpy())
    wire_ev = event_of_row[wire_row]
    # Per event: the capture's evidence from its first retransmitted frame.
    w = wire.assign(ev=wire_ev)
    first = w[w["ev"] >= 0].sort_values(["ev", "ts_wall_ns"]).drop_duplicates("ev")
    first = first.set_index("ev")
    idx = np.arange(len(ev))
    has = np.isin(idx, first.index.to_numpy())
    out = ev_rows.copy()
    for col in CLASSIFY_COLUMNS + ("flow_id", "tx_index", "frame"):
        vals = first.reindex(idx)[col].to_numpy()
        out[col] = np.where(has, vals, out[col].to_numpy() if col in out else None)
    # One event can resend several segments, only some of which the receiver lacked (a
    # GSO skb, a slow-start burst): spurious as a whole only when every resent frame was
    # shown needless; spurious_frames says how many were.
    on = wire_ev >= 0
    n_wire = np.bincount(wire_ev[on], minlength=len(ev))
    sp_wire = wire["spurious"].fillna(False).astype(bool).to_numpy() & on
    n_sp = np.bincount(wire_ev[sp_wire], minlength=len(ev))
    out["spurious_frames"] = n_sp.astype(np.int64)
    all_sp = (n_wire > 0) & (n_sp == n_wire)
    out["spurious"] = np.where(n_wire > 0, all_sp, out["spurious"].to_numpy())
    out["spurious_by"] = np.where(all_sp, out["spurious_by"].to_numpy(), None)
    if all_sp.any():
        by = w[sp_wire].drop_duplicates("ev").set_index("ev")["spurious_by"]
        out.loc[all_sp, "spurious_by"] = by.reindex(np.flatnonzero(all_sp)).to_numpy()
    # A matched event whose frames the capture did not see as retransmissions (say, its
    # original was before the capture started) still has frames; count them.
    out["frames"] = frames
    matched_frame_rows = np.flatnonzero(event_of_row >= 0)
    first_any = pd.Series(matched_frame_rows).groupby(event_of_row[matched_frame_rows]).min()
    fr = packets["frame"][first_any.to_numpy()] if len(first_any) else np.array([], np.int64)
    frame_col = out["frame"].to_numpy().astype(object)
    for e, f in zip(first_any.index.to_numpy(), fr):
        if frame_col[e] is None or pd.isna(frame_col[e]) or frame_col[e] == -1:
            frame_col[e] = int(f)
    out["frame"] = pd.array(np.where(pd.isna(frame_col), -1, frame_col).astype(np.int64))
    out["source"] = np.where(frames > 0, "event+capture", "event")
    # flows_in_capture: does this event's flow appear in the capture at all?
    flows_seen = set(zip(wire["saddr"], wire["sport"], wire["daddr"], wire["dport"]))
    in_cap = np.array([(a, p, b, q) in flows_seen or bool(f) for a, p, b, q, f in
                       zip(ev["saddr"], ev["sport"], ev["daddr"], ev["dport"], frames)],
                      dtype=bool)
    meta = capture.meta
    why = why_unmatched(ev, frames, meta.first_ts_ns, meta.last_ts_ns, in_cap, meta.if_drops)
    out["match"] = np.where(frames > 0, "matched", why)
    kp = out["kind_pcap"]
    agrees = kp.map(FAMILY_OF_KIND) == out["kind"].map(FAMILY_OF_KIND)
    out["kind_agrees"] = np.where(kp.notna(), agrees, None)
    # Retransmitted frames no event explains: kept, as their own rows.
    orphan = wire[wire_ev < 0].copy()
    orphan["match"] = _why_no_event(orphan, summary.get("recording") or {}, gap_intervals(ev))
    # Sent by the peer, not by the host the capture (and so the recorder) ran on: its
    # retransmissions are the other host's, which this recording cannot have.
    local = flows.set_index("flow_id")["local"] if "local" in flows else None
    if local is not None and len(orphan):
        peer = orphan["flow_id"].map(local).astype("boolean").eq(False).fillna(False).to_numpy()
        orphan.loc[peer & (orphan["match"] == "no_event").to_numpy(), "match"] = "peer_sent"
    summary["match"] = {
        "events": int(len(ev)),
        "events_matched": int((frames > 0).sum()),
        "unmatched_events": pd.Series(why[frames == 0]).value_counts().to_dict(),
        "frames_matched": int((event_of_row >= 0).sum()),
        "frames_without_event": int(len(orphan)),
        "frames_without_event_by": orphan["match"].value_counts().to_dict(),
        "disagreements": int((out["kind_agrees"] == False).sum()),  # noqa: E712
    }
    if len(ev) and not (frames > 0).any():
        summary["warnings"].append(
            "no kernel event matched any frame: the capture and the events are from different "
            "hosts, namespaces or times")
    return pd.concat([out, orphan], ignore_index=True)


def _why_no_event(frames: pd.DataFrame, rec: dict, gaps: pd.DataFrame) -> np.ndarray:
    """Why a retransmitted frame has no kernel event: outside the recording, outside the
    recorder's filters, resent while the kernel ran no probe (unreported: the socket's own
    retransmission count grew past its events just there, retranscope/accounting.py), or unexplained
    (no_event: another namespace's socket, say)."""
    out = np.full(len(frames), "no_event", dtype=object)
    ts = frames["ts_wall_ns"].to_numpy(np.int64)
    if len(gaps) and len(frames):
        key = ["saddr", "sport", "daddr", "dport"]
        f = frames[key].assign(i=np.arange(len(frames)), ts=ts)
        g = gaps.astype({"sport": f["sport"].dtype, "dport": f["dport"].dtype})
        m = f.merge(g, on=key)
        inside = m[(m["ts"] > m["from_ns"]) & (m["ts"] <= m["to_ns"] + 1_000_000)]
        out[inside["i"].to_numpy()] = "unreported"
    filters = rec.get("filters") or {}
    port, family = filters.get("port"), filters.get("family")
    if port is not None:
        outside = (frames["sport"].to_numpy() != port) & (frames["dport"].to_numpy() != port)
        out[outside] = "filtered_out"
    if family is not None:
        out[frames["family"].to_numpy() != family] = "filtered_out"
    if rec.get("started_wall_ns"):
        out[ts < rec["started_wall_ns"]] = "before_recording"
    if rec.get("ended_wall_ns"):
        out[ts > rec["ended_wall_ns"]] = "after_recording"
    return out


def _flows_out(flows: pd.DataFrame | None, rows: pd.DataFrame) -> pd.DataFrame:
    if flows is None:
        g = rows.groupby(["family", "saddr", "sport", "daddr", "dport"])
        base = g.size().rename("retransmissions").reset_index()
        base.insert(0, "flow_id", -1)
    else:
        keep = [c for c in ("flow_id", "rev_flow_id", "conn_id", "family", "saddr", "sport",
                            "daddr", "dport", "first_ts_ns", "last_ts_ns", "n_packets", "n_data",
                            "mss", "sack_ok", "ts_ok") if c in flows]
        base = flows[keep].copy()
        counts = rows[rows["flow_id"] >= 0].groupby("flow_id").size()
        base["retransmissions"] = base["flow_id"].map(counts).fillna(0).astype(np.int64)
    key = ["saddr", "sport", "daddr", "dport"]
    for k in ("tlp", "fast", "rto", "rto_recovery", "syn", "synack", "unknown"):
        c = rows[rows["kind"] == k].groupby(key).size().rename(k)
        base = base.merge(c, left_on=key, right_index=True, how="left")
        base[k] = base[k].fillna(0).astype(np.int64)
    sp = rows[rows["spurious"].fillna(False).astype(bool)].groupby(key).size().rename("spurious")
    base = base.merge(sp, left_on=key, right_index=True, how="left")
    base["spurious"] = base["spurious"].fillna(0).astype(np.int64)
    base["spurious_share"] = np.where(base["retransmissions"] > 0,
                                      base["spurious"] / base["retransmissions"].clip(lower=1), 0.0)
    srtt = rows.groupby(key)["srtt_us"].median().rename("srtt_us_median")
    base = base.merge(srtt, left_on=key, right_index=True, how="left")
    return base.reset_index(drop=True)


def _value_counts(values: np.ndarray) -> dict:
    """{value: count}, most frequent first, ties in order of first appearance (as pandas'
    value_counts orders them: summary.json keeps its key order)."""
    counts: dict = {}
    for v in values.tolist():
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _totals_table(rows: Table) -> dict:
    """Totals by kind and spurious (summary.json)."""
    spurious = filled(rows["spurious"], False).astype(bool)
    return {
        "retransmissions": int(len(rows["kind"])),
        "by_kind": {str(k): int(v) for k, v in _value_counts(rows["kind"]).items()},
        "spurious": int(spurious.sum()),
        "spurious_by_kind": {str(k): int(v) for k, v in
                             _value_counts(rows["kind"][spurious]).items()},
    }


FLOW_OUT_COLUMNS = ("flow_id", "rev_flow_id", "conn_id", "family", "saddr", "sport", "daddr",
                    "dport", "first_ts_ns", "last_ts_ns", "n_packets", "n_data", "mss",
                    "sack_ok", "ts_ok")


def _flows_table(flows: Table, rows: Table) -> Table:
    """_flows_out over tables: per flow, its retransmissions (by flow id) and, per kind,
    those of its 4-tuple (all connections of the address/port pair, as _flows_out counts)."""
    n_flows = len(flows["flow_id"])
    base = {k: flows[k] for k in FLOW_OUT_COLUMNS if k in flows}
    fid = rows["flow_id"]
    own = fid >= 0
    retx = np.bincount(fid[own], minlength=n_flows).astype(np.int64)
    base["retransmissions"] = retx
    # 4-tuple of each flow, as its text columns show it (the rows carry the same text).
    tuple_of_flow = _text_tuple_ids(flows)
    n_tuples = int(tuple_of_flow.max()) + 1 if n_flows else 0
    t_row = tuple_of_flow[fid[own]]
    kind = rows["kind"][own]
    for k in KINDS:
        per_tuple = np.bincount(t_row[kind == k], minlength=n_tuples)
        base[k] = per_tuple[tuple_of_flow].astype(np.int64)
    spurious = filled(rows["spurious"], False).astype(bool)[own]
    sp = np.bincount(t_row[spurious], minlength=n_tuples)[tuple_of_flow].astype(np.int64)
    base["spurious"] = sp
    base["spurious_share"] = np.where(retx > 0, sp / np.clip(retx, 1, None), 0.0)
    base["srtt_us_median"] = _median_by(t_row, rows["srtt_us"][own], n_tuples)[tuple_of_flow]
    return base


def _text_tuple_ids(flows: Table) -> np.ndarray:
    """Dense ids of the flows' (saddr, sport, daddr, dport) as written (the address text
    is a function of family and address)."""
    if len(flows["flow_id"]) == 0:
        return np.zeros(0, dtype=np.int64)
    keys = [np.asarray(flows[k]) for k in (
        "family", "saddr_hi", "saddr_lo", "sport", "daddr_hi", "daddr_lo", "dport")]
    o = np.lexsort(keys[::-1])
    new = np.zeros(len(o), dtype=bool)
    new[0] = True
    for k in keys:
        new[1:] |= k[o][1:] != k[o][:-1]
    ids = np.empty(len(o), dtype=np.int64)
    ids[o] = np.cumsum(new) - 1
    return ids


def _median_by(group: np.ndarray, values, n_groups: int) -> np.ndarray:
    """Median of the non-null ``values`` per group (float64; NaN for a group without any)."""
    out = np.full(n_groups, np.nan)
    valid = values.valid if isinstance(values, Nullable) else np.ones(len(values), bool)
    g = group[valid]
    v = filled(values, 0)[valid].astype(np.float64)
    if not len(v):
        return out
    o = np.lexsort((v, g))
    g, v = g[o], v[o]
    start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    count = np.diff(np.r_[start, len(g)])
    lo = start + (count - 1) // 2
    hi = start + count // 2
    out[g[start]] = (v[lo] + v[hi]) / 2
    return out
