"""`retranscope analyze`: capture and/or events -> retransmits, flows, summary.

    capture --pcap.read_capture--> packets --flows--> flow ids --retrans--> retransmitted
    segments --classify--> kind_pcap + timing;  events --join--> kernel reason per frame

Pure assembly over the tables of analyze/table.py (numpy columns; pandas is never
imported): the reading happens in analyze/capture/ and analyze/events.py, the writing in
analyze/outputs.py, the one path through all of them in analyze/run.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retranscope.analyze import causes
from retranscope.analyze.join import common_keys
from retranscope.analyze.table import Nullable, Table, filled, n_rows, take
from retranscope.schemas.packets import ADDRESS_HALVES
from retranscope.schemas.vocabulary import FAMILY_OF_KIND, KINDS, MATCHED, REASON_AS_KIND

#: The capture's per-row findings that an output row carries (those of classify_table's
#: columns the outputs keep, with the causes and the evidence): a kernel event with no
#: frame has them empty, and takes them from its first frame when it has one.
CAPTURE_ROW_COLUMNS = (
    "kind_pcap",
    "spurious",
    "spurious_by",
    "since_original_ns",
    "since_last_send_ns",
    "since_last_ack_ns",
    "srtt_us",
    "expected_pto_ns",
    "expected_rto_ns",
    "backoff",
    "trigger_frame",
    "since_trigger_ns",
    "cause",
    "cause_text",
    "pmtu_mtu",
    "ack_delay_ns",
    "evidence",
    "sender_os",
)


@dataclass
class Result:
    """``retransmits`` and ``flows`` (tables; analyze/outputs.py writes them with the
    schemas of schemas/outputs.py) and summary.json's content."""

    retransmits: Table
    flows: Table
    summary: dict = field(default_factory=dict)


def classify_capture(
    packets: dict[str, np.ndarray],
    notes: dict | None = None,
    too_big: list[dict] | None = None,
    tuples: dict[str, np.ndarray] | None = None,
    seam=None,
) -> tuple[np.ndarray, Table, Table]:
    """flows + per-wire-segment classification of a capture (row index into packets kept).

    The sequence space and the sender context are computed once, for both the detection
    of retransmissions and their classification. ``notes`` receives what the capture
    showed beside the rows (classify_table); ``too_big``: the capture's ICMP too-big
    messages (CaptureMeta.icmp_too_big); ``tuples``: the packets' 4-tuples when they
    carry them numbered (a spilled shard: flows.flow_table); ``seam``: the packets are a
    window of a longer shard (analyze/windows.py: flows.sequence_space corrects its
    unwrapping, and it keeps the sequence space).
    """
    from retranscope.analyze.classify import classify_table
    from retranscope.analyze.flows import flow_table, sequence_space
    from retranscope.analyze.retrans import capture_gaps, retransmission_table, sender_context

    flow_id, flows = flow_table(packets, tuples)
    space = sequence_space(packets, flow_id, flows, seam=seam)
    if seam is not None:
        seam.space = space
    context = sender_context(packets, flow_id, flows, space)
    carried = 0 if seam is None else seam.n_extra
    retrans = retransmission_table(packets, flow_id, flows, space, context, carried)
    if notes is not None:
        notes["gaps"] = capture_gaps(packets, flow_id, flows, space, context)
    del context  # classify_table, where memory peaks, does not use it
    classified = classify_table(
        packets, flow_id, flows, retrans, space=space, notes=notes, too_big=too_big, seam=seam
    )
    return flow_id, flows, classified


def is_retransmission(classified: Table) -> np.ndarray:
    """Rows of classify_capture's table that are retransmissions: not a keep-alive or
    window probe (retrans.py ``probe``), not an out-of-order original (``out_of_order``),
    not a packet the capture holds twice (``duplicate``)."""
    from retranscope.analyze.table import present

    return (
        ~present(classified["probe"])
        & ~np.asarray(classified["out_of_order"], dtype=bool)
        & ~np.asarray(classified["duplicate"], dtype=bool)
    )


def _not_retransmitted(flows: Table, classified: Table) -> tuple[dict, dict]:
    """What the capture flagged that is not a retransmission, in summary.json (totals) and
    flows.parquet (per flow): keep-alives and zero-window probes (RFC 9293 §3.8.4,
    §3.8.6.1: the kernel's tcp_xmit_probe_skb, never tcp_retransmit_skb) and originals
    that arrived out of order (what tshark calls out-of-order), and packets the capture
    holds twice (the same IPv4 packet, duplicated on its way to the capture)."""
    n_flows = len(flows["flow_id"])
    probe = np.asarray(classified["probe"], dtype=object)
    fid = classified["flow_id"]
    masks = {
        "keepalives": probe == "keepalive",
        "zero_window_probes": probe == "zero_window",
        "out_of_order": np.asarray(classified["out_of_order"], dtype=bool),
        "duplicate_frames": np.asarray(classified["duplicate"], dtype=bool),
    }
    totals = {k: int(m.sum()) for k, m in masks.items()}
    per_flow = {
        k: np.bincount(fid[m], minlength=n_flows).astype(np.int64) for k, m in masks.items()
    }
    return totals, per_flow


def _gap_summary(gaps: dict, meta) -> dict:
    """summary.json ``capture_gaps``: what the capture did not record (retrans.capture_gaps
    per flow, summed: part_sums) and what the capturing side said it dropped."""
    drops = [getattr(meta, k, None) for k in ("if_drops", "epb_drops")]
    known = [int(d) for d in drops if d is not None]
    return {
        "ranges": gaps["ranges"],
        "bytes": gaps["bytes"],
        "acknowledged": gaps["acked"],
        "flows": gaps["flows"],
        "capture_drops": sum(known) if known else None,
    }


def classify_part(
    packets: dict[str, np.ndarray],
    too_big: list[dict] | None,
    tuples: dict[str, np.ndarray] | None = None,
):
    """classify_capture of a capture (or of a shard of one: analyze/shards.py), down to
    what the outputs keep: its flows, output rows of its retransmissions, and per flow
    what it flagged that is not a retransmission and the capture's gaps. Returns the
    packets' flow ids and the shards.Part."""
    from retranscope.analyze.shards import Part

    notes: dict = {}
    flow_id, flows, classified = classify_capture(packets, notes, too_big, tuples)
    _, per_flow = _not_retransmitted(flows, classified)
    for key in FLOW_EXTRA_GAPS:
        per_flow["gap_" + key] = notes["gaps"][key]
    classified = take(classified, np.flatnonzero(is_retransmission(classified)))
    acks_lost = int(notes.get("acks_lost_after_capture", 0))
    return flow_id, Part(flows, _wire_table(flows, classified), per_flow, acks_lost)


def _capture_rows(
    capture, summary: dict, jobs: int = 1, whole: bool = False
) -> tuple[np.ndarray | None, Table, Table, dict]:
    """The capture's retransmissions as output rows, and what summary.json says about the
    capture beside them: its reader's metadata and warnings, keep-alives, zero-window
    probes and out-of-order originals (not retransmissions), ACKs lost after the capture
    point, gaps, rows classified by timing alone, and the senders' stacks. Returns
    (flow_id, flows, rows, per-flow columns for flows.parquet); flow_id is None when the
    capture was classified in shards (analyze/shards.py; by ``jobs`` processes), which
    ``whole`` forbids. A capture in memory: a spilled one is _analyze_spilled's."""
    from retranscope.analyze.shards import assign_shards, classify_sharded, shard_count

    too_big = _read_summary(capture, summary)
    packets = capture.packets
    n_shards = 1 if whole else shard_count(len(packets["frame"]), jobs)
    shard_of_row = assign_shards(packets, n_shards) if n_shards > 1 else None
    if shard_of_row is None:
        flow_id, part = classify_part(packets, too_big)
    else:
        flow_id, part = None, classify_sharded(packets, too_big, shard_of_row, classify_part, jobs)
    flows, wire, per_flow = part.flows, part.wire, part.per_flow
    _capture_summary(part_sums(flows, wire, per_flow, part.acks_lost), capture, summary)
    return flow_id, flows, wire, flow_extra_columns(per_flow)


def _read_summary(capture, summary: dict) -> list[dict] | None:
    """summary.json's ``capture`` (the reader's metadata) and its warnings; returns the
    capture's ICMP too-big messages, which the classification reads."""
    summary["capture"] = capture.meta.to_dict()
    summary["warnings"] += list(capture.meta.warnings)
    return getattr(capture.meta, "icmp_too_big", None)


def _analyze_spilled(capture, summary: dict, jobs: int | None) -> Result:
    """A spilled capture (analyze/spill.py): classified a shard at a time, each shard's
    rows stored as it is done, the outputs streamed from them (analyze/streamed.py)."""
    too_big = _read_summary(capture, summary)
    merged = capture.classify(classify_part, too_big, jobs=jobs)
    _capture_summary(merged.sums, capture, summary)
    summary.update(totals(merged.sums["kind_firsts"], merged.retransmits.n_rows))
    return Result(merged.retransmits, merged.flows, summary)


#: the per-flow gap columns classify_part's per_flow carries, each as "gap_" + name
FLOW_EXTRA_GAPS = ("ranges", "bytes", "acked")


def flow_extra_columns(per_flow: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """classify_part's per-flow columns as flows.parquet has them: the counts of what is
    not a retransmission, and the flow's unseen ranges (its gaps)."""
    out = {k: v for k, v in per_flow.items() if not k.startswith("gap_")}
    out["unseen_ranges"] = per_flow["gap_ranges"]
    return out


def part_sums(flows: Table, wire: Table, per_flow: dict, acks_lost: int) -> dict:
    """What summary.json adds up over the capture, for the flows and output rows of a
    capture or of one shard of it (flows disjoint): sums add_sums can add."""
    timing = np.asarray(wire["evidence"], dtype=object) == "timing_only"
    ranges = per_flow["gap_ranges"]
    return {
        "not_retransmitted": {
            k: int(v.sum()) for k, v in per_flow.items() if not k.startswith("gap_")
        },
        "acks_lost": int(acks_lost),
        "gaps": {
            **{k: int(per_flow["gap_" + k].sum()) for k in FLOW_EXTRA_GAPS},
            "flows": int((ranges > 0).sum()),
        },
        "timing_only": {
            "retransmissions": int(timing.sum()),
            "flows": int(len(set(wire["flow_id"][timing].tolist()))),
        },
        "senders": _sender_summary(flows, wire),
    }


def add_sums(sums: list[dict]) -> dict:
    """part_sums of several shards as one capture's: numbers added, key by key."""

    def add(a, b):
        if isinstance(a, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = add(out[k], v) if k in out else v
            return out
        return a + b

    out: dict = {}
    for s in sums:
        out = add(out, {k: v for k, v in s.items() if k != "kind_firsts"})
    return out


def _capture_summary(sums: dict, capture, summary: dict) -> None:
    """summary.json's capture keys and warnings, from the classification's part_sums."""
    summary.update(sums["not_retransmitted"])
    summary["acks_lost_after_capture"] = sums["acks_lost"]
    summary["capture_gaps"] = _gap_summary(sums["gaps"], capture.meta)
    if summary["capture_gaps"]["ranges"] or summary["capture_gaps"]["capture_drops"]:
        summary["warnings"].append(gap_warning(summary["capture_gaps"]))
    summary["timing_only"] = sums["timing_only"]
    senders = sums["senders"]
    senders["flows_by_stack"] = dict(sorted(senders["flows_by_stack"].items()))
    summary["senders"] = senders
    if summary["senders"]["not_linux"]["retransmissions"]:
        summary["warnings"].append(not_linux_warning(summary["senders"]))


def _sender_summary(flows: Table, classified: Table) -> dict:
    """summary.json ``senders``: the flows that carried data, by the stack that sent them
    (flows.sender_stack), and those of stacks other than Linux with their
    retransmissions: the replay follows Linux's rules, so their kinds are Linux's reading
    of what another stack did."""
    os_ = np.asarray(flows["sender_os"], dtype=object)
    data = np.asarray(flows["n_data"]) > 0
    by_os: dict[str, int] = {}
    for name in os_[data].tolist():
        by_os[name] = by_os.get(name, 0) + 1
    other = np.isin(os_, ("windows", "macos", "bsd", "other"))
    n_rtx = np.bincount(classified["flow_id"], minlength=len(os_))
    return {
        "flows_by_stack": dict(sorted(by_os.items())),
        "not_linux": {
            "flows": int((other & data).sum()),
            "flows_with_retransmissions": int((other & (n_rtx > 0)).sum()),
            "retransmissions": int(n_rtx[other].sum()),
        },
    }


def not_linux_warning(senders: dict) -> str:
    n = senders["not_linux"]
    kinds = ", ".join(
        f"{k} {v}"
        for k, v in senders["flows_by_stack"].items()
        if k in ("windows", "macos", "bsd", "other")
    )
    return (
        f"{n['retransmissions']} retransmissions in {n['flows_with_retransmissions']} "
        f"flows sent by stacks other than Linux ({kinds} flows): their kinds follow "
        "Linux's rules (a TLP, RTO or fast retransmit as Linux would have made it); "
        "read them as indicative"
    )


def gap_warning(g: dict) -> str:
    """One line about the capture's gaps (summary.json capture_gaps)."""
    parts = []
    if g["ranges"]:
        parts.append(
            f"{g['ranges']} ranges of data ({g['bytes']} bytes) in {g['flows']} flows "
            f"never appear in the capture ({g['acknowledged']} of them acknowledged by "
            "the receiver)"
        )
    if g["capture_drops"]:
        parts.append(f"the capturing side reports {g['capture_drops']} packets dropped")
    return (
        "the capture has gaps: " + "; ".join(parts) + ". Retransmissions of data whose "
        "first copy fell in a gap are not seen, and none is inferred from a gap"
    )


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
        **{k: flows[k][fid] for k in ADDRESS_HALVES},
        "seq": c["seq"].astype(np.uint32),
        "end_seq": c["end_seq"].astype(np.uint32),
        "kind": c["kind_pcap"],
    }
    for name in CAPTURE_ROW_COLUMNS:
        out[name] = c[name] if name in c else np.full(m, None, dtype=object)
    out["sender_os"] = flows["sender_os"][fid]
    out["frame"] = c["frame"].astype(np.int64)
    out["frames"] = np.ones(m, dtype=np.int64)
    out["spurious_frames"] = filled(c["spurious"], False).astype(np.int64)
    out["tx_index"] = c["tx_index"] if "tx_index" in c else np.full(m, None, dtype=object)
    out["match"] = np.full(m, None, dtype=object)
    out["kind_agrees"] = np.full(m, None, dtype=object)
    return out


#: The numeric flow key the rows carry beside the address text (join, per-tuple counts):
#: schemas/packets.ADDRESS_HALVES and the ports.
TUPLE_KEY = ("family", "saddr_hi", "saddr_lo", "sport", "daddr_hi", "daddr_lo", "dport")
RECORDING_KEYS = (
    "host",
    "kernel_release",
    "boot_id",
    "run_id",
    "complete",
    "status",
    "events_lost_in_kernel",
    "events_in_kernel",
    "events_written",
    "accounting",
    "counters_delta",
    "filters",
    "started_wall_ns",
    "ended_wall_ns",
)


def analyze(capture=None, events=None, jobs: int | None = 1) -> Result:
    """capture: analyze.capture.Capture (or a spilled one, analyze/spill.py) or None;
    events: analyze.events.Events or None. ``jobs``: processes that classify the capture,
    in shards of connections (analyze/shards.py; None: a spilled capture on every core, in
    the memory one process takes, spill.SpilledCapture._plan; one in memory on one); the
    join with events needs the whole capture's flow ids, so with events it is classified
    whole."""
    result = _analyze(capture, events, jobs)
    # imported only now: schemas/outputs.py loads pyarrow (~55 MB resident), which the
    # classification, where memory peaks, does not need
    from retranscope.schemas.outputs import OUTPUT_SCHEMA_VERSION

    result.summary["output_schema_version"] = OUTPUT_SCHEMA_VERSION  # the first key
    return result


def _analyze(capture, events, jobs: int | None) -> Result:
    if capture is None and events is None:
        raise ValueError("nothing to analyze")
    summary: dict = {"output_schema_version": None, "warnings": []}
    if capture is not None and not hasattr(capture, "packets"):
        return _analyze_spilled(capture, summary, jobs)  # never with events: run.py
    # in memory: None is one process (the capture is under SPILL_MIN_BYTES by default)
    jobs = 1 if jobs is None else max(1, int(jobs))
    if capture is not None:
        flow_id, flows, wire, flows_extra = _capture_rows(
            capture, summary, jobs, whole=events is not None
        )
    if events is None:
        rows = take(wire, np.argsort(wire["ts_wall_ns"], kind="stable"))
        summary.update(_totals_table(rows))
        return Result(rows, {**_flows_out(flows, rows), **flows_extra}, summary)
    summary["recording"] = {k: events.run.get(k) for k in RECORDING_KEYS}
    summary["recording"]["tcpdump"] = (events.run.get("pcap") or {}).get("tcpdump")
    summary["warnings"] += events.warnings
    ev_rows = _event_rows(events.table)
    if capture is None:
        ev_rows["match"] = np.full(n_rows(ev_rows), "no_capture", dtype=object)
        rows, flows = ev_rows, None
    else:
        from retranscope.analyze.join import eligible_rows

        assert flow_id is not None  # with events the capture is classified whole
        resent = _row_of_frame(capture.packets, wire["frame"])
        eligible = eligible_rows(len(flow_id), resent, flow_id, flows["syn_seen"])
        rows = _merge(events.table, ev_rows, wire, capture, summary, eligible, flows)
    rows = take(rows, np.argsort(rows["ts_wall_ns"], kind="stable"))
    summary.update(_totals_table(rows))
    flows_table = _flows_out(flows, rows)
    if capture is not None:
        flows_table.update(flows_extra)
    return Result(rows, flows_table, summary)


def _event_rows(ev: Table) -> Table:
    """One row per kernel event, timing from the events alone (no wire evidence)."""
    n = n_rows(ev)
    none = np.full(n, None, dtype=object)
    out: Table = {
        "ts_wall_ns": np.asarray(ev["ts_wall_ns"], dtype=np.int64),
        "source": np.full(n, "event", dtype=object),
        "family": np.asarray(ev["family"], dtype=np.uint8),
        "saddr": ev["saddr"],
        "sport": np.asarray(ev["sport"], dtype=np.uint16),
        "daddr": ev["daddr"],
        "dport": np.asarray(ev["dport"], dtype=np.uint16),
        "flow_id": np.full(n, -1, dtype=np.int64),
        **{k: ev[k] for k in ADDRESS_HALVES},
        "seq": ev["seq"],
        "end_seq": ev["end_seq"],
        "kind": np.array([REASON_AS_KIND.get(r, r) for r in ev["reason"].tolist()], dtype=object),
    }
    for col in CAPTURE_ROW_COLUMNS:
        out[col] = none.copy()
    out["cause"], out["cause_text"] = causes.of_events(ev)  # the event alone
    out["since_prev_retransmit_ns"] = _since_previous_of_socket(ev)
    out["srtt_us"] = ev["srtt_us"]
    out["backoff"] = ev["backoff"]
    out["kernel_ca_state"] = ev["ca_state"]
    out["kernel_srtt_us"] = ev["srtt_us"]
    out["kernel_backoff"] = ev["backoff"]
    out["frame"] = np.full(n, -1, dtype=np.int64)
    out["frames"] = np.zeros(n, dtype=np.int64)
    out["spurious_frames"] = np.zeros(n, dtype=np.int64)
    out["tx_index"] = none.copy()
    out["kind_agrees"] = none.copy()
    return out


def _since_previous_of_socket(ev: Table) -> Nullable:
    """Per event, the time since the same socket's (address and port) previous event."""
    n = n_rows(ev)
    ts = np.asarray(ev["ts_wall_ns"], dtype=np.int64)
    sk = np.asarray(ev["skaddr"], dtype=np.uint64)
    port = np.asarray(ev["sport"], dtype=np.uint64)
    order = np.lexsort((np.arange(n), port, sk))
    same = np.zeros(n, dtype=bool)
    same[1:] = (sk[order][1:] == sk[order][:-1]) & (port[order][1:] == port[order][:-1])
    gap = np.zeros(n, dtype=np.int64)
    gap[1:] = ts[order][1:] - ts[order][:-1]
    out_gap = np.zeros(n, dtype=np.int64)
    out_valid = np.zeros(n, dtype=bool)
    out_gap[order] = gap
    out_valid[order] = same
    return Nullable(np.where(out_valid, out_gap, 0), out_valid)


def _cells(col, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(values as objects, valid) of any column kind: numpy, Nullable or objects."""
    if isinstance(col, Nullable):
        return col.values.astype(object), np.asarray(col.valid, dtype=bool)
    vals = np.asarray(col)
    if vals.dtype == object:
        return vals, np.array([v is not None and v == v for v in vals.tolist()], dtype=bool)
    return vals.astype(object), np.ones(n, dtype=bool)


def _pick(mask: np.ndarray, a, b, n: int) -> np.ndarray:
    """a where mask, else b, cell by cell (nulls as None)."""
    av, aok = _cells(a, n)
    bv, bok = _cells(b, n)
    vals = np.where(mask, av, bv)
    ok = np.where(mask, aok, bok)
    vals[~ok] = None
    return vals


def _first_per_event(
    ev_of: np.ndarray, n_ev: int, order_key: np.ndarray | None = None
) -> np.ndarray:
    """Per event, the first row (by ``order_key``, then position) with ev_of == event,
    else -1."""
    on = np.flatnonzero(ev_of >= 0)
    if order_key is not None:
        on = on[np.lexsort((order_key[on], ev_of[on]))]
    else:
        on = on[np.argsort(ev_of[on], kind="stable")]
    out = np.full(n_ev, -1, dtype=np.int64)
    first = np.r_[True, ev_of[on][1:] != ev_of[on][:-1]] if len(on) else np.zeros(0, bool)
    out[ev_of[on][first]] = on[first]
    return out


def _merge(
    ev: Table,
    ev_rows: Table,
    wire: Table,
    capture,
    summary: dict,
    eligible: np.ndarray,
    flows: Table,
) -> Table:
    """Event rows with the capture's evidence for their frames, plus a row per resent
    frame that no event explains."""
    from retranscope.accounting import gap_intervals
    from retranscope.analyze.join import join_events, why_unmatched

    packets = capture.packets
    n_ev = n_rows(ev)
    event_of_row, frames = join_events(ev, packets, eligible=eligible)
    wire_ev = event_of_row[_row_of_frame(packets, wire["frame"])]
    out = dict(ev_rows)
    # Per event: the capture's evidence from its first retransmitted frame.
    first = _first_per_event(wire_ev, n_ev, wire["ts_wall_ns"])
    has = first >= 0
    src = np.clip(first, 0, None)
    for col in CAPTURE_ROW_COLUMNS + ("flow_id", "tx_index", "frame"):
        taken = _take_cells(wire[col], src, n_ev)
        out[col] = _pick(has, taken, out[col], n_ev)
    _spurious_per_event(out, wire, wire_ev, n_ev)
    out["frames"] = frames
    out["frame"] = _first_frame(out["frame"], event_of_row, packets["frame"], n_ev)
    out["source"] = np.where(frames > 0, "event+capture", "event").astype(object)
    in_cap = _tuple_present(ev, wire) | (frames > 0)
    meta = capture.meta
    why = why_unmatched(ev, frames, meta.first_ts_ns, meta.last_ts_ns, in_cap, meta.if_drops)
    out["match"] = np.where(frames > 0, MATCHED, why).astype(object)
    out["kind_agrees"] = _kind_agrees(out["kind_pcap"], out["kind"])
    out["cause"], out["cause_text"] = causes.with_kernel(
        ev_rows["cause"],
        ev_rows["cause_text"],
        out["cause"],
        out["cause_text"],
        out["kind"],
        out["kind_pcap"],
        has,
        out["match"],
    )
    # Retransmitted frames no event explains: kept, as their own rows.
    orphan = take(wire, np.flatnonzero(wire_ev < 0))
    orphan["match"] = _why_no_event(orphan, summary.get("recording") or {}, gap_intervals(ev))
    # Sent by the peer, not by the host the capture (and so the recorder) ran on: its
    # retransmissions are the other host's, which this recording cannot have.
    local = flows["local"]
    peer = (
        ~filled(local, True).astype(bool)[orphan["flow_id"]]
        if n_rows(orphan)
        else np.zeros(0, dtype=bool)
    )
    orphan["match"][peer & (orphan["match"] == "no_event")] = "peer_sent"
    matched = frames > 0
    summary["match"] = {
        "events": int(n_ev),
        "events_matched": int(matched.sum()),
        "unmatched_events": _value_counts(why[~matched]),
        "frames_matched": int((event_of_row >= 0).sum()),
        "frames_without_event": int(n_rows(orphan)),
        "frames_without_event_by": _value_counts(orphan["match"]),
        "disagreements": int(sum(1 for a in out["kind_agrees"].tolist() if a is False)),
    }
    if n_ev and not matched.any():
        summary["warnings"].append(
            "no kernel event matched any frame: the capture and the events are from different "
            "hosts, namespaces or times"
        )
    return _concat(out, orphan)


def _take_cells(col, idx: np.ndarray, n: int):
    """col[idx] for any column kind (n rows wanted)."""
    if isinstance(col, Nullable):
        return col[idx] if len(col) else Nullable(np.zeros(n, np.int64), np.zeros(n, bool))
    vals = np.asarray(col)
    if not len(vals):
        return np.full(n, None, dtype=object)
    return vals[idx]


def _spurious_per_event(out: Table, wire: Table, wire_ev: np.ndarray, n_ev: int) -> None:
    """One event can resend several segments, only some of which the receiver lacked (a
    GSO skb, a slow-start burst): spurious as a whole only when every resent frame was
    shown needless; spurious_frames says how many were."""
    on = wire_ev >= 0
    n_wire = np.bincount(wire_ev[on], minlength=n_ev)
    sp_wire = filled(wire["spurious"], False).astype(bool) & on
    n_sp = np.bincount(wire_ev[sp_wire], minlength=n_ev)
    out["spurious_frames"] = n_sp.astype(np.int64)
    all_sp = (n_wire > 0) & (n_sp == n_wire)
    out["spurious"] = Nullable(all_sp, n_wire > 0)
    by = np.full(n_ev, None, dtype=object)
    first_sp = _first_per_event(np.where(sp_wire, wire_ev, -1), n_ev)
    got = all_sp & (first_sp >= 0)
    by[got] = np.asarray(wire["spurious_by"], dtype=object)[first_sp[got]]
    out["spurious_by"] = by


def _first_frame(
    frame_col, event_of_row: np.ndarray, frame_no: np.ndarray, n_ev: int
) -> np.ndarray:
    """A matched event whose frames the capture did not see as retransmissions (say, its
    original was before the capture started) still has frames: the first of them."""
    vals, ok = _cells(frame_col, n_ev)
    fr = np.where(ok, vals, -1).astype(np.int64)
    first_row = _first_per_event(event_of_row, n_ev)
    fill = (first_row >= 0) & (fr == -1)
    fr[fill] = frame_no[first_row[fill]]
    return fr


def _tuple_present(ev: Table, wire: Table) -> np.ndarray:
    """Per event: does its 4-tuple appear among the capture's retransmitted frames?"""
    key_e, key_w = common_keys(
        [np.asarray(ev[k]) for k in TUPLE_KEY], [np.asarray(wire[k]) for k in TUPLE_KEY]
    )
    return np.isin(key_e, key_w)


def _kind_agrees(kind_pcap: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """kind_pcap in the same family as the kernel's reason; None without kind_pcap."""
    return np.array(
        [
            None if p is None else FAMILY_OF_KIND.get(p) == FAMILY_OF_KIND.get(k)
            for p, k in zip(kind_pcap.tolist(), kind.tolist())
        ],
        dtype=object,
    )


def _true(col, n: int) -> np.ndarray:
    """A boolean column with nulls read as False."""
    vals, ok = _cells(col, n)
    return ok & np.array([bool(v) if v is not None else False for v in vals.tolist()], dtype=bool)


def _concat(a: Table, b: Table) -> Table:
    """Rows of a, then rows of b; a column only one of them has is null in the other."""
    na, nb = n_rows(a), n_rows(b)
    out: Table = {}
    for name in list(a) + [k for k in b if k not in a]:
        av, aok = (
            _cells(a[name], na) if name in a else (np.full(na, None, object), np.zeros(na, bool))
        )
        bv, bok = (
            _cells(b[name], nb) if name in b else (np.full(nb, None, object), np.zeros(nb, bool))
        )
        vals = np.concatenate([av, bv])
        vals[~np.concatenate([aok, bok])] = None
        out[name] = vals
    return out


def _why_no_event(frames: Table, rec: dict, gaps: Table) -> np.ndarray:
    """Why a retransmitted frame has no kernel event: outside the recording, outside the
    recorder's filters, resent while the kernel ran no probe (unreported: the socket's own
    retransmission count grew past its events just there, retranscope/accounting.py), or
    unexplained (no_event: another namespace's socket, say)."""
    n = n_rows(frames)
    out = np.full(n, "no_event", dtype=object)
    if not n:
        return out
    ts = np.asarray(frames["ts_wall_ns"], dtype=np.int64)
    if n_rows(gaps):
        key = ADDRESS_HALVES + ("sport", "dport")
        kf, kg = common_keys(
            [np.asarray(frames[k]) for k in key], [np.asarray(gaps[k]) for k in key]
        )
        for g in range(len(kg)):
            inside = (
                (kf == kg[g]) & (ts > gaps["from_ns"][g]) & (ts <= gaps["to_ns"][g] + 1_000_000)
            )
            out[inside] = "unreported"
    filters = rec.get("filters") or {}
    port, family = filters.get("port"), filters.get("family")
    if port is not None:
        outside = (np.asarray(frames["sport"]) != port) & (np.asarray(frames["dport"]) != port)
        out[outside] = "filtered_out"
    if family is not None:
        out[np.asarray(frames["family"]) != family] = "filtered_out"
    if rec.get("started_wall_ns"):
        out[ts < rec["started_wall_ns"]] = "before_recording"
    if rec.get("ended_wall_ns"):
        out[ts > rec["ended_wall_ns"]] = "after_recording"
    return out


FLOW_OUT_COLUMNS = (
    "flow_id",
    "rev_flow_id",
    "conn_id",
    "family",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "first_ts_ns",
    "last_ts_ns",
    "n_packets",
    "n_data",
    "mss",
    "sack_ok",
    "ts_ok",
    "sender_os",
    "initial_ttl",
)


def _flows_out(flows: Table | None, rows: Table) -> Table:
    """Per flow, its retransmissions (by flow id) and, per kind, those of its address/port
    4-tuple (all connections of the pair, and the events matched to no frame). Without a
    capture, one row per 4-tuple the events name."""
    n = n_rows(rows)
    if flows is None:
        base = _tuples_of_events(rows)
        src = base
    else:
        base = {k: flows[k] for k in FLOW_OUT_COLUMNS if k in flows}
        fid = np.asarray(rows["flow_id"], dtype=np.int64)
        own = fid >= 0
        base["retransmissions"] = np.bincount(fid[own], minlength=len(flows["flow_id"])).astype(
            np.int64
        )
        src = flows
    key_f, key_r = common_keys(
        [np.asarray(src[k]) for k in TUPLE_KEY], [np.asarray(rows[k]) for k in TUPLE_KEY]
    )
    n_keys = int(max(key_f.max(initial=-1), key_r.max(initial=-1))) + 1
    kind = np.asarray(rows["kind"], dtype=object)
    for k in KINDS:
        base[k] = np.bincount(key_r[kind == k], minlength=n_keys)[key_f].astype(np.int64)
    spurious = _true(rows["spurious"], n)
    sp = np.bincount(key_r[spurious], minlength=n_keys)[key_f].astype(np.int64)
    retx = base["retransmissions"]
    base["spurious"] = sp
    base["spurious_share"] = np.where(retx > 0, sp / np.clip(retx, 1, None), 0.0)
    base["srtt_us_median"] = _median_by(key_r, rows["srtt_us"], n_keys)[key_f]
    return base


def _tuples_of_events(rows: Table) -> Table:
    """Distinct (family, saddr, sport, daddr, dport) of the rows, ordered by family, address
    text and port, with how many rows each has."""
    n = n_rows(rows)
    text = [np.asarray(rows[k]).astype(str) for k in ("saddr", "daddr")]
    order = np.lexsort(
        (
            np.asarray(rows["dport"]),
            text[1],
            np.asarray(rows["sport"]),
            text[0],
            np.asarray(rows["family"]),
        )
    )
    cols = [np.asarray(rows[k])[order] for k in TUPLE_KEY]
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
    for c in cols:
        new[1:] |= c[1:] != c[:-1]
    starts = np.flatnonzero(new)
    pick = order[starts]
    base: Table = {"flow_id": np.full(len(starts), -1, dtype=np.int64)}
    for k in ("family", "saddr", "sport", "daddr", "dport") + ADDRESS_HALVES:
        base[k] = np.asarray(rows[k])[pick]
    base["retransmissions"] = np.diff(np.r_[starts, n]).astype(np.int64)
    return base


def _value_counts(values: np.ndarray) -> dict:
    """{value: count}, most frequent first, ties in order of first appearance (as pandas'
    value_counts orders them: summary.json keeps its key order)."""
    counts: dict = {}
    for v in values.tolist():
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _totals_table(rows: Table) -> dict:
    """Totals by kind and spurious (summary.json)."""
    return totals(kind_firsts(rows), n_rows(rows))


def kind_firsts(rows: Table) -> dict:
    """Per kind, of all the rows and of the spurious ones: [count, row of its first
    appearance]: what ``totals`` needs, and what a spilled capture's shards add up
    (analyze/streamed.py, which keys the first appearance by time and frame)."""
    kind = np.asarray(rows["kind"], dtype=object)
    spurious = _true(rows["spurious"], len(kind))
    out: dict = {"all": {}, "spurious": {}}
    for key, mask in (("all", np.ones(len(kind), dtype=bool)), ("spurious", spurious)):
        for i in np.flatnonzero(mask).tolist():
            seen = out[key].setdefault(kind[i], [0, i])
            seen[0] += 1
    return out


def totals(firsts: dict, n: int) -> dict:
    """summary.json's totals by kind and spurious, of ``n`` rows whose kind_firsts are
    ``firsts``: kinds most frequent first, ties in order of first appearance (as pandas'
    value_counts orders them)."""

    def ranked(kinds: dict) -> dict:
        order = sorted(kinds.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
        return {str(k): int(count) for k, (count, _) in order}

    return {
        "retransmissions": int(n),
        "by_kind": ranked(firsts["all"]),
        "spurious": int(sum(count for count, _ in firsts["spurious"].values())),
        "spurious_by_kind": ranked(firsts["spurious"]),
    }


def _median_by(group: np.ndarray, values, n_groups: int) -> np.ndarray:
    """Median of the non-null ``values`` per group (float64; NaN for a group without any)."""
    out = np.full(n_groups, np.nan)
    raw, valid = _cells(values, len(group))
    g = group[valid]
    v = raw[valid].astype(np.float64)
    ok = ~np.isnan(v)
    g, v = g[ok], v[ok]
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
