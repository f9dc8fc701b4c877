"""`retranscope analyze`: capture and/or events -> retransmits, flows, summary.

    capture --pcap.read_capture--> packets --flows--> flow ids --retrans--> retransmitted
    segments --classify--> kind_pcap + timing;  events --join--> kernel reason per frame

Pure assembly over DataFrames: the reading happens in analyze/pcap.py and
analyze/events.py, the writing in analyze/outputs.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from retranscope.analyze.join import join_events, why_unmatched
from retranscope.schemas.outputs import FAMILY_OF_KIND, OUTPUT_SCHEMA_VERSION

CLASSIFY_COLUMNS = ("kind_pcap", "spurious", "spurious_by", "since_original_ns",
                    "since_last_send_ns", "since_last_ack_ns", "srtt_us", "expected_pto_ns",
                    "expected_rto_ns", "backoff", "trigger_frame", "since_trigger_ns")


@dataclass
class Result:
    retransmits: pd.DataFrame
    flows: pd.DataFrame
    summary: dict = field(default_factory=dict)


def classify_capture(packets: dict[str, np.ndarray]):
    """flows + per-wire-segment classification of a capture (row index into packets kept)."""
    from retranscope.analyze.classify import classify
    from retranscope.analyze.flows import assign_flows
    from retranscope.analyze.retrans import find_retransmissions

    flow_id, flows = assign_flows(packets)
    retrans = find_retransmissions(packets, flow_id, flows)
    classified = classify(packets, flow_id, flows, retrans)
    return flow_id, flows, classified


def _row_of_frame(packets: dict[str, np.ndarray], frames: np.ndarray) -> np.ndarray:
    """Packet-table row of each frame number (frames are increasing in the table)."""
    return np.searchsorted(packets["frame"], frames)


def _wire_rows(packets, flows: pd.DataFrame, c: pd.DataFrame) -> pd.DataFrame:
    """Classified wire segments -> output rows (source 'capture')."""
    f = flows.set_index("flow_id")
    fid = c["flow_id"].to_numpy()
    out = pd.DataFrame({
        "ts_wall_ns": c["ts_ns"].to_numpy(np.int64),
        "source": "capture",
        "family": f.loc[fid, "family"].to_numpy(np.uint8),
        "saddr": f.loc[fid, "saddr"].to_numpy(),
        "sport": f.loc[fid, "sport"].to_numpy(np.uint16),
        "daddr": f.loc[fid, "daddr"].to_numpy(),
        "dport": f.loc[fid, "dport"].to_numpy(np.uint16),
        "flow_id": fid.astype(np.int64),
        "seq": c["seq"].to_numpy(np.uint32),
        "end_seq": c["end_seq"].to_numpy(np.uint32),
        "kind": c["kind_pcap"].to_numpy(object),
    })
    for col in CLASSIFY_COLUMNS:
        out[col] = c[col].to_numpy() if col in c else None
    out["frame"] = c["frame"].to_numpy(np.int64)
    out["frames"] = 1
    out["tx_index"] = c["tx_index"].to_numpy() if "tx_index" in c else None
    out["match"] = None
    out["kind_agrees"] = None
    return out


def analyze(capture=None, events=None) -> Result:
    """capture: analyze.pcap.Capture or None; events: analyze.events.Events or None."""
    if capture is None and events is None:
        raise ValueError("nothing to analyze")
    summary: dict = {"output_schema_version": OUTPUT_SCHEMA_VERSION, "warnings": []}
    wire = flows = None
    packets = None
    if capture is not None:
        packets = capture.packets
        summary["capture"] = capture.meta.to_dict()
        summary["warnings"] += list(capture.meta.warnings)
        _flow_id, flows, classified = classify_capture(packets)
        wire = _wire_rows(packets, flows, classified)
    if events is not None:
        summary["recording"] = {k: events.run.get(k) for k in (
            "host", "kernel_release", "boot_id", "run_id", "complete", "status",
            "events_lost_in_kernel", "events_in_kernel", "events_written", "counters_delta",
            "filters", "started_wall_ns", "ended_wall_ns")}
        summary["recording"]["tcpdump"] = (events.run.get("pcap") or {}).get("tcpdump")
        summary["warnings"] += events.warnings
    ev = events.table if events is not None else None

    if ev is None:
        rows = wire
        rows["source"] = "capture"
    else:
        ev_rows = _event_rows(ev)
        if packets is not None and wire is not None:
            rows = _merge(ev, ev_rows, wire, packets, capture, summary)
        else:
            rows = ev_rows
            rows["match"] = "no_capture"
    rows = rows.sort_values(["ts_wall_ns"], kind="stable").reset_index(drop=True)
    flows_out = _flows_out(flows, rows)
    summary.update(_totals(rows))
    return Result(rows, flows_out, summary)


def _event_rows(ev: pd.DataFrame) -> pd.DataFrame:
    """One row per kernel event, timing from the events alone (no wire evidence)."""
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
    out["tx_index"] = None
    out["kind_agrees"] = None
    return out


def _merge(ev, ev_rows, wire, packets, capture, summary) -> pd.DataFrame:
    event_of_row, frames = join_events(ev, packets)
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
    orphan["match"] = _why_no_event(orphan, summary.get("recording") or {})
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


def _why_no_event(frames: pd.DataFrame, rec: dict) -> np.ndarray:
    """Why a retransmitted frame has no kernel event: outside the recording, outside the
    recorder's filters, or unexplained (no_event: a lost sample would be counted in
    run.json; another namespace's socket; a retransmission the kernel did not trace)."""
    out = np.full(len(frames), "no_event", dtype=object)
    ts = frames["ts_wall_ns"].to_numpy(np.int64)
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


def _totals(rows: pd.DataFrame) -> dict:
    kinds = rows["kind"].value_counts().to_dict()
    spurious = rows["spurious"].fillna(False).astype(bool)
    return {
        "retransmissions": int(len(rows)),
        "by_kind": {str(k): int(v) for k, v in kinds.items()},
        "spurious": int(spurious.sum()),
        "spurious_by_kind": {str(k): int(v) for k, v in
                             rows[spurious]["kind"].value_counts().to_dict().items()},
    }
