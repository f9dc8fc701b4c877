"""The postmortem a person reads: HTML (self-contained), Markdown, and a terminal summary,
from what `retranscope analyze` wrote (retransmits.parquet, flows.parquet, summary.json).

It answers the seed article's question first: what share of the retransmissions were
probes, how many of those (and of the others) were spurious, which flows suffered; then
timing (the probe gap, RTO backoff chains), then everything that was not matched or lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from retranscope.errors import BadInput, SchemaMismatch
from retranscope.fileio import write_atomic
from retranscope.report import causes, compare, graphs, probegap, svg
from retranscope.report.page import page, section, table_html, table_md
from retranscope.schemas.outputs import FAMILY_OF_KIND, KINDS, OUTPUT_SCHEMA_VERSION

#: Why a retransmitted frame has no kernel event, in words (analyze/pipeline._why_no_event).
FRAME_WITHOUT_EVENT = {
    "peer_sent": "the other host sent them; a recording on this host cannot have them",
    "unreported": "the kernel resent them but ran no probe; counted in the accounting",
    "before_recording": "sent before the recorder started",
    "after_recording": "sent after the recorder stopped",
    "filtered_out": "outside the recorder's --port/-4/-6 filter",
}

KIND_TEXT = {
    "tlp": "tail loss probe (RFC 8985): the timer fired ~2·SRTT after the last send",
    "fast": "fast retransmit / SACK-RACK recovery (RFC 6675, 8985): the receiver showed a hole",
    "rto": "retransmission timeout (RFC 6298): nothing heard for a whole RTO",
    "rto_recovery": "slow-start retransmit after an RTO (the rest of the lost window)",
    "syn": "SYN retransmitted: the handshake got no answer",
    "synack": "SYN-ACK retransmitted by the server",
    "unknown": "could not be classified",
}


@dataclass
class Analysis:
    name: str
    retransmits: pd.DataFrame
    flows: pd.DataFrame
    summary: dict
    path: Path | None = None  # the analysis directory (its capture may be found beside it)


#: What render_terminal reads of one analysis: these columns of retransmits.parquet
#: (headline, _cause_lines) and summary.json. `analyze` prints its summary from them
#: alone: the whole of both tables took 157 MB more (and ~1 s) on a capture of 125k
#: connections.
TERMINAL_COLUMNS = ("kind", "spurious", "flow_id", "spurious_frames", "cause", "pmtu_mtu")


def load(path: str | Path, name: str | None = None, terminal: bool = False) -> Analysis:
    """An analysis directory read back; ``terminal``: only what render_terminal reads of
    one analysis (TERMINAL_COLUMNS, and no flows)."""
    path = Path(path)
    need = [path / "retransmits.parquet", path / "flows.parquet", path / "summary.json"]
    for f in need:
        if not f.exists():
            raise BadInput(
                f"{f} is missing: give a directory written by `retranscope analyze --out`"
            )
    try:
        summary = json.loads(need[2].read_text())
    except ValueError as exc:
        raise BadInput(f"{need[2]}: not JSON ({exc})") from exc
    if summary.get("output_schema_version") != OUTPUT_SCHEMA_VERSION:
        raise SchemaMismatch(
            f"{path}: analysis output version {summary.get('output_schema_version')},"
            f" this retranscope reads {OUTPUT_SCHEMA_VERSION}: analyze again"
        )
    if not terminal:
        return Analysis(
            name or path.name, pd.read_parquet(need[0]), pd.read_parquet(need[1]), summary, path
        )
    have = set(pq.read_schema(need[0]).names)
    columns = [c for c in TERMINAL_COLUMNS if c in have]
    return Analysis(
        name or path.name, pd.read_parquet(need[0], columns=columns), pd.DataFrame(), summary, path
    )


def headline(a: Analysis) -> dict:
    r = a.retransmits
    n = len(r)
    kinds = r["kind"].value_counts().to_dict() if n else {}
    fam = r["kind"].map(FAMILY_OF_KIND).value_counts().to_dict() if n else {}
    spurious = r["spurious"].fillna(False).astype(bool) if n else pd.Series(dtype=bool)
    tlp = r["kind"] == "tlp" if n else pd.Series(dtype=bool)
    return {
        "retransmissions": n,
        "by_kind": {k: int(kinds.get(k, 0)) for k in KINDS if kinds.get(k, 0)},
        "tlp_share": fam.get("tlp", 0) / n if n else 0.0,
        "fast_share": fam.get("fast", 0) / n if n else 0.0,
        "rto_share": fam.get("rto", 0) / n if n else 0.0,
        "spurious": int(spurious.sum()),
        "spurious_share": float(spurious.mean()) if n else 0.0,
        "spurious_tlp": int((spurious & tlp).sum()),
        "tlp": int(tlp.sum()),
        "flows_with_retransmissions": int(r["flow_id"].nunique()) if n else 0,
        # Needless segments inside retransmissions that also repaired something (one
        # event resending a GSO skb or a slow-start burst): not in "spurious" above.
        "partly_spurious": int(
            (r["spurious_frames"].fillna(0).astype(int) > 0).where(~spurious, False).sum()
        )
        if n and "spurious_frames" in r
        else 0,
        "needless_frames": int(r.loc[~spurious, "spurious_frames"].fillna(0).sum())
        if n and "spurious_frames" in r
        else 0,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ms(ns) -> str:
    return "" if ns is None or pd.isna(ns) else f"{ns / 1e6:.2f} ms"


def verdict(h: dict) -> str:
    n = h["retransmissions"]
    if not n:
        return "No retransmissions."
    parts = [
        f"{n} retransmissions: {_pct(h['tlp_share'])} tail loss probes, "
        f"{_pct(h['fast_share'])} fast retransmits, {_pct(h['rto_share'])} timeouts "
        "(RTO, SYN, slow-start after RTO)."
    ]
    if h["tlp"] and h["spurious_tlp"]:
        parts.append(
            f"{h['spurious_tlp']} of the {h['tlp']} probes were spurious: the data had "
            "arrived and only the ACK was late; those inflate RetransSegs without any loss."
        )
    elif h["tlp"]:
        parts.append(
            f"None of the {h['tlp']} probes was shown spurious: they repaired real "
            "tail losses (or the receiver could not tell: no D-SACK, no timestamps)."
        )
    parts.append(
        f"In all, {h['spurious']} ({_pct(h['spurious_share'])}) retransmissions were "
        "shown spurious by the receiver (D-SACK or timestamp echo)."
    )
    if h.get("partly_spurious"):
        parts.append(
            f"{h['partly_spurious']} more resent a lost segment together with "
            f"{h['needless_frames']} segments the receiver already had."
        )
    return " ".join(parts)


def _spurious_counts(f: pd.DataFrame) -> pd.Series:
    """Spurious retransmissions per flow. flows.parquet's ``spurious`` is written as a
    boolean by analyze/outputs.py today (the count is lost); its ``spurious_share`` times
    ``retransmissions`` gives the count back."""
    if "spurious" in f and pd.api.types.is_integer_dtype(f["spurious"]):
        return f["spurious"].astype(int)
    if "spurious_share" in f:
        return (f["spurious_share"].fillna(0) * f["retransmissions"]).round().astype(int)
    return pd.Series(0, index=f.index)


def top_flows(a: Analysis, n: int = 15) -> pd.DataFrame:
    """The flows with the most retransmissions, with their counts by kind: flows.parquet's
    own per-flow counts."""
    f = a.flows
    if f.empty or "retransmissions" not in f:
        return pd.DataFrame()
    f = f[f["retransmissions"] > 0]
    if f.empty:
        return pd.DataFrame()
    t = pd.DataFrame(
        {
            "flow_id": f["flow_id"],
            "saddr": f["saddr"],
            "sport": f["sport"],
            "daddr": f["daddr"],
            "dport": f["dport"],
            "retransmissions": f["retransmissions"],
        }
    )
    for k in KINDS:
        if k in f and (f[k] > 0).any():
            t[k] = f[k]
    t["spurious"] = _spurious_counts(f)
    if (t["flow_id"] < 0).all():
        t = t.drop(columns="flow_id")
    return (
        t.sort_values("retransmissions", ascending=False, kind="stable")
        .head(n)
        .reset_index(drop=True)
    )


def rto_chains(a: Analysis, n: int = 10) -> pd.DataFrame:
    """Consecutive timeouts of one flow: backoff index, and the gaps that doubled."""
    r = a.retransmits
    rto = r[r["kind"].isin(["rto", "syn", "synack"])].sort_values("ts_wall_ns")
    rows = []
    for key, g in rto.groupby(["saddr", "sport", "daddr", "dport"]):
        if len(g) < 2:
            continue
        gaps = np.diff(g["ts_wall_ns"].to_numpy()) / 1e6
        rows.append(
            {
                "flow": f"{key[0]}:{key[1]} → {key[2]}:{key[3]}",
                "timeouts": len(g),
                "kinds": "/".join(sorted(set(g["kind"]))),
                "gaps_ms": ", ".join(f"{x:.0f}" for x in gaps[:8])
                + (" …" if len(gaps) > 8 else ""),
            }
        )
    return (
        pd.DataFrame(rows).sort_values("timeouts", ascending=False).head(n)
        if rows
        else pd.DataFrame()
    )


def quality(a: Analysis) -> list[str]:
    """Everything that was lost or not matched, said plainly."""
    s = a.summary
    lines = []
    cap = s.get("capture") or {}
    if cap:
        drops = cap.get("if_drops")
        if cap.get("truncated"):
            lines.append(
                f"The capture is truncated at byte {cap.get('truncated_at_offset')}: "
                "packets after that are missing."
            )
        if drops:
            lines.append(f"The capture reports {drops} packets dropped by the interface/kernel.")
    rec = s.get("recording") or {}
    if rec:
        if rec.get("events_lost_in_kernel"):
            lines.append(f"{rec['events_lost_in_kernel']} kernel events were lost while recording.")
        acct = rec.get("accounting") or {}
        if acct.get("unreported_segments"):
            lines.append(
                f"The kernel retransmitted {acct['unreported_segments']} segments that no event "
                "reported (its own per-socket and namespace counts show the gap; it ran no "
                "probe for them)."
            )
        td = rec.get("tcpdump") or {}
        if td.get("dropped_by_kernel"):
            lines.append(f"tcpdump dropped {td['dropped_by_kernel']} packets.")
        if rec.get("complete") is False:
            lines.append("The recording did not end cleanly: its last interval is missing.")
    m = s.get("match") or {}
    for key, count in sorted((m.get("unmatched_events") or {}).items()):
        lines.append(f"{count} kernel events have no frame in the capture ({key}).")
    for key, count in sorted((m.get("frames_without_event_by") or {}).items()):
        why = FRAME_WITHOUT_EVENT.get(key)
        lines.append(
            f"{count} retransmitted frames have no kernel event ({key}"
            + (f": {why}" if why else "")
            + ")."
        )
    if m.get("disagreements"):
        lines.append(
            f"The capture's verdict differs from the kernel's reason for "
            f"{m['disagreements']} retransmissions (kind_agrees = false)."
        )
    lines += [f"Warning: {w}" for w in s.get("warnings", [])]
    return lines or ["Nothing was lost or left unmatched."]


def capture_reading(a: Analysis) -> list[str]:
    """What the capture showed beside the retransmissions, and what the counts above leave
    out or rest on (summary.json: keepalives, zero_window_probes, out_of_order,
    acks_lost_after_capture, timing_only, senders, capture_gaps; the rows' cause)."""
    s = a.summary
    lines = []
    ka, zw = s.get("keepalives") or 0, s.get("zero_window_probes") or 0
    if ka or zw:
        lines.append(
            f"{ka} keep-alives and {zw} zero-window probes were sent: the kernel sends them "
            "from its probe timers, not as retransmissions; they are not counted above."
        )
    if s.get("out_of_order"):
        lines.append(
            f"{s['out_of_order']} segments reached the capture point after data sent after "
            "them (reordered on the way, too soon for a resend): first transmissions, not "
            "counted as retransmissions."
        )
    if s.get("duplicate_frames"):
        lines.append(
            f"{s['duplicate_frames']} frames are in the capture twice (the same IPv4 packet, "
            "duplicated on its way to the capture point, e.g. by a span port): not counted."
        )
    lost = s.get("acks_lost_after_capture") or 0
    if lost:
        lines.append(
            f"{lost} ACKs in the capture never reached the sender (it resent data they "
            "acknowledged): lost after the capture point; the sender was replayed without them."
        )
    t = s.get("timing_only") or {}
    if t.get("retransmissions"):
        lines.append(
            f"{t['retransmissions']} retransmissions in {t['flows']} flows were classified by "
            "timing alone (evidence = timing_only): the capture has no ACK of their flow "
            "(a one-way capture), so what was resent and the silence before it decided."
        )
    g = s.get("capture_gaps") or {}
    if g.get("ranges"):
        lines.append(
            f"{g['ranges']} ranges of data ({g['bytes']:,} bytes) in {g['flows']} flows never "
            "appear in the capture: retransmissions of that data cannot be seen, and none "
            "is inferred from a gap."
        )
    lines += _cause_lines(a.retransmits)
    n = (s.get("senders") or {}).get("not_linux") or {}
    if n.get("flows"):
        stacks = ", ".join(
            f"{k} {v}"
            for k, v in (s["senders"].get("flows_by_stack") or {}).items()
            if k not in ("linux", "unknown")
        )
        lines.append(
            f"{n['flows']} flows were sent by stacks other than Linux ({stacks}); their "
            f"{n['retransmissions']} retransmissions are classified by Linux's rules: "
            "read their kinds as indicative."
        )
    und = (s.get("capture") or {}).get("undecoded") or {}
    if und:
        lines.append(
            f"{sum(und.values())} packets were not decoded (they may carry TCP): "
            + ", ".join(f"{v} in {k}" for k, v in sorted(und.items(), key=lambda kv: -kv[1]))
            + "."
        )
    return lines


def _cause_lines(r: pd.DataFrame) -> list[str]:
    """Retransmissions no timer and no duplicate ACK caused (retransmits.parquet cause)."""
    if "cause" not in r or not r["cause"].notna().any():
        return []
    out = []
    pm = r[r["cause"] == "pmtu"]
    if len(pm):
        mtus = sorted({int(m) for m in pm["pmtu_mtu"].dropna()}) if "pmtu_mtu" in pm else []
        out.append(
            f"{len(pm)} retransmissions followed a path MTU drop (ICMP fragmentation needed / "
            "packet too big"
            + (f"; MTU {', '.join(map(str, mtus))}" if mtus else "")
            + "): the kernel resent what no longer fitted at once, not because of congestion."
        )
    tfo = r[r["cause"] == "tfo"]
    if len(tfo):
        out.append(
            f"{len(tfo)} retransmissions resent data a TCP Fast Open SYN carried that the "
            "SYN-ACK did not acknowledge (the server took no Fast Open data)."
        )
    return out


def kernel_counters(a: Analysis) -> pd.DataFrame:
    d = (a.summary.get("recording") or {}).get("counters_delta") or {}
    return pd.DataFrame([{"counter": k, "delta": v} for k, v in d.items()])


def timing_table(a: Analysis) -> pd.DataFrame:
    r = a.retransmits
    rows = []
    for kind, g in r.groupby("kind"):
        row = {"kind": kind, "count": len(g)}
        for col, label in (
            ("since_last_send_ns", "since last send (median)"),
            ("since_original_ns", "since original (median)"),
            ("expected_pto_ns", "expected PTO (median)"),
            ("expected_rto_ns", "expected RTO (median)"),
        ):
            if col in g and g[col].notna().any():
                row[label] = _ms(g[col].median())
        rows.append(row)
    return pd.DataFrame(rows)


def _wall(ns) -> str:
    if ns is None or pd.isna(ns):
        return ""
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").strftime("%Y-%m-%d %H:%M:%S.%f UTC")


#: Per-file figures of a capture, in this order when present (then any other scalar).
CAPTURE_FIELDS = (
    "path",
    "format",
    "records",
    "tcp_packets",
    "skipped_non_tcp",
    "if_drops",
    "truncated",
    "first_ts_ns",
    "last_ts_ns",
)


def capture_table(a: Analysis) -> pd.DataFrame:
    """The capture file(s) the analysis read, one row per file, with their figures: a
    capture set's ``files`` list, or the single capture."""
    cap = a.summary.get("capture") or {}
    files = cap.get("files")
    entries: list[dict]
    if files:
        entries = [f if isinstance(f, dict) else {"path": str(f)} for f in files]
    elif cap.get("path"):
        entries = [cap]
    else:
        return pd.DataFrame()
    keys = [k for k in CAPTURE_FIELDS if any(k in e for e in entries)]
    keys += sorted(
        {
            k
            for e in entries
            for k, v in e.items()
            if k not in keys
            and isinstance(v, (int, float, str, bool))
            and k not in ("ts_resolution_ns", "snaplen", "truncated_at_offset")
        }
    )
    rows = []
    for e in entries:
        row = {k: e.get(k) for k in keys}
        for k in ("first_ts_ns", "last_ts_ns"):
            if k in row:
                row[k] = _wall(row[k])
        first, last = e.get("first_ts_ns"), e.get("last_ts_ns")
        if first is not None and last is not None:
            row["duration"] = f"{(int(last) - int(first)) / 1e9:.3f} s"
        rows.append(row)
    out = pd.DataFrame(rows).rename(
        columns={"first_ts_ns": "first packet", "last_ts_ns": "last packet"}
    )
    return out


def _fields(one_row: pd.DataFrame) -> pd.DataFrame:
    """A one-row table as field/value pairs (a single capture's figures)."""
    row = one_row.iloc[0]
    return pd.DataFrame({"": list(row.index), "value": [_cell_text(v) for v in row]})


def _cell_text(v) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


# The tables every rendering shows, in order, after the kinds and plots.
TABLE_SECTIONS = (
    ("Timing", timing_table),
    ("Flows that suffered most", top_flows),
    ("RTO backoff chains", rto_chains),
    ("Kernel counters over the recording", kernel_counters),
)


def kinds_table(h: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "kind": k,
                "count": c,
                "share": _pct(c / h["retransmissions"]),
                "meaning": KIND_TEXT.get(k, ""),
            }
            for k, c in h["by_kind"].items()
        ]
    )


def _probe_section(a: Analysis, ev: graphs.Evidence | None) -> list[str]:
    p = probegap.probe_table(a.retransmits, ev.ack_delay if ev else None)
    if p.empty:
        return []
    note = ""
    if "ack_delay_ns" not in a.retransmits and (ev is None or ev.ack_delay is None):
        note = "<p class='note'>ACK delays need the capture (see the note on the graphs below).</p>"
    return [
        section(
            "Probe gap against expected PTO",
            f"<p>{escape(probegap.story(p))}</p>",
            probegap.plot(p, f"{a.name}: probe gap and ACK delay against expected PTO"),
            "<p class='note'>A probe fired on time sits on the dashed diagonal. A "
            "cross above the diagonal: the receiver's ACK for the probed data came "
            "later than the PTO (a delayed ACK), so the sender probed data that had "
            "arrived; the receiver's D-SACK then shows the probe spurious (hollow)."
            "</p>",
            note,
        )
    ]


def _why_section(a: Analysis, limit: int = 100) -> list[str]:
    r = a.retransmits
    if r.empty:
        return []
    parts = [f"<p class='note'>{escape(causes.source_note(r))}.</p>"]
    counts = causes.cause_counts(r)
    if not counts.empty:
        parts.append(table_html(counts, klass="causes"))
    table, left_out = causes.why_table(r, limit)
    parts.append(
        f"<details{' open' if len(r) <= 20 else ''}><summary>The first "
        f"{min(limit, len(r)):,} retransmissions, one by one</summary>"
        + table_html(table, klass="why")
        + (f"<p>{left_out:,} more in retransmits.parquet.</p>" if left_out else "")
        + "</details>"
    )
    return [
        "<div class='why-section'>" + section("Why each retransmission happened", *parts) + "</div>"
    ]


def analysis_html(a: Analysis, ev: graphs.Evidence | None = None, level: int = 2) -> str:
    """One analysis's part of a page: verdict, capture, kinds, probe gaps, timing plots,
    time-sequence graphs, causes, tables, and what was lost. Reusable by other pages."""
    h = headline(a)
    r = a.retransmits
    parts = [
        f"<section class='analysis' data-name='{escape(a.name)}'>"
        f"<h{level}>{escape(a.name)}</h{level}><p class='verdict'>{escape(verdict(h))}</p>"
    ]
    cap = capture_table(a)
    if len(cap) > 1:
        parts.append(section(f"Capture set: {len(cap)} files", table_html(cap)))
    elif len(cap):
        parts.append(section("Capture", table_html(_fields(cap))))
    if h["retransmissions"]:
        parts.append(svg.bars(list(h["by_kind"].items()), "Retransmissions by kind"))
        parts.append(table_html(kinds_table(h)))
        parts += _probe_section(a, ev)
        tlp = r[r["kind"] == "tlp"]
        if len(tlp) and tlp["since_last_send_ns"].notna().any():
            parts.append(
                svg.histogram(
                    tlp["since_last_send_ns"].dropna().to_numpy() / 1e6,
                    "Probe gap: TLP time since the previous send",
                    "milliseconds",
                )
            )
        if r["since_original_ns"].notna().any():
            parts.append(
                svg.histogram(
                    r["since_original_ns"].dropna().to_numpy() / 1e6,
                    "Time since the original transmission (log scale)",
                    "milliseconds",
                    log_x=True,
                )
            )
        parts.append(_timeline(a))
    if ev is not None and (ev.figures or ev.notes):
        parts.append(
            section(
                "Time-sequence graphs",
                *[f"<p class='warn'>{escape(n)}</p>" for n in ev.notes],
                *ev.figures,
            )
        )
    parts += _why_section(a)
    for title, table in TABLE_SECTIONS:
        parts.append(section(title, table_html(table(a))))
    reading = capture_reading(a)
    if reading:
        parts.append(
            section(
                "How the capture was read",
                "<ul class='reading'>"
                + "".join(f"<li>{escape(x)}</li>" for x in reading)
                + "</ul>",
            )
        )
    parts.append(
        section(
            "What was lost or not matched",
            "<ul class='quality'>" + "".join(f"<li>{escape(x)}</li>" for x in quality(a)) + "</ul>",
        )
    )
    parts.append("</section>")
    return "\n".join(parts)


def _timeline(a: Analysis, lanes: int = 20) -> str:
    """Retransmissions over time, one lane per flow (the ``lanes`` with the most)."""
    r = a.retransmits
    group = r.groupby(["saddr", "sport", "daddr", "dport"], sort=False).ngroup().to_numpy()
    counts = np.bincount(group)
    top = np.argsort(-counts, kind="stable")[:lanes]
    lane_of = np.full(len(counts), -1)
    lane_of[top] = np.arange(len(top))
    ids, first = np.unique(group, return_index=True)
    label_of = {
        int(g): f"{row.saddr}:{row.sport}→{row.dport}"
        for g, row in zip(ids, r.iloc[first].itertuples())
    }
    lane = lane_of[group]
    sel = lane >= 0
    return svg.timeline(
        r["ts_wall_ns"].to_numpy()[sel] / 1e9,
        lane[sel],
        r["kind"].to_numpy()[sel],
        [label_of[int(g)] for g in top],
        "Retransmissions over time, by flow and kind",
    )


def compare_html(
    a: Analysis, b: Analysis, ea: graphs.Evidence | None = None, eb: graphs.Evidence | None = None
) -> str:
    """The compare view of two analyses: tested differences, then their probe-gap plots
    side by side."""
    tests = compare.compare(a, b)
    parts = [
        f"<section class='compare'><h2>Compare: {escape(a.name)} → {escape(b.name)}</h2>",
        f"<p class='verdict'>{escape(compare.headline(tests, a.name, b.name))}</p>",
    ]
    side = pd.DataFrame(
        {
            "": ["retransmissions", "flows with retransmissions", "spurious"],
            a.name: [
                headline(a)[k]
                for k in ("retransmissions", "flows_with_retransmissions", "spurious")
            ],
            b.name: [
                headline(b)[k]
                for k in ("retransmissions", "flows_with_retransmissions", "spurious")
            ],
        }
    )
    parts.append(table_html(side))
    for group, title in compare.GROUPS:
        t = compare.table(tests, group, a.name, b.name)
        if not t.empty:
            parts.append(
                section(
                    title,
                    table_html(t, ["changed" if v == "changed" else "" for v in t["verdict"]]),
                )
            )
    plots = []
    for x, e in ((a, ea), (b, eb)):
        p = probegap.probe_table(x.retransmits, e.ack_delay if e else None)
        plots.append(
            f"<div>{probegap.plot(p, f'{x.name}: probe gap against expected PTO')}"
            f"<p class='note'>{escape(probegap.story(p))}</p></div>"
        )
    parts.append(section("Probe gaps side by side", f"<div class='side'>{''.join(plots)}</div>"))
    parts.append(f"<p class='note'>{escape(compare.METHOD_NOTE)}</p></section>")
    return "\n".join(parts)


def render_html(analyses: list[Analysis], evidence: list | None = None) -> str:
    """The report page. Two analyses: the compare view first. ``evidence``: per analysis,
    what graphs.gather took from its capture (None: no graphs)."""
    ev = evidence or [None] * len(analyses)
    body = ["<h1>retranscope report</h1>"]
    if len(analyses) == 2:
        body.append(compare_html(analyses[0], analyses[1], ev[0], ev[1]))
    body += [analysis_html(a, e) for a, e in zip(analyses, ev)]
    return page("retranscope report", body)


def render_markdown(analyses: list[Analysis], evidence: list | None = None) -> str:
    ev = evidence or [None] * len(analyses)
    out = ["# retranscope report", ""]
    if len(analyses) == 2:
        a, b = analyses
        tests = compare.compare(a, b)
        out += [f"## Compare: {a.name} → {b.name}", "", compare.headline(tests, a.name, b.name), ""]
        for group, title in compare.GROUPS:
            t = compare.table(tests, group, a.name, b.name)
            if not t.empty:
                out += [f"### {title}", "", table_md(t)]
        out += [compare.METHOD_NOTE, ""]
    for a, e in zip(analyses, ev):
        h = headline(a)
        out += [f"## {a.name}", "", verdict(h), ""]
        cap = capture_table(a)
        if len(cap):
            title = f"Capture set: {len(cap)} files" if len(cap) > 1 else "Capture"
            out += [f"### {title}", "", table_md(cap if len(cap) > 1 else _fields(cap))]
        if h["retransmissions"]:
            out += [table_md(kinds_table(h))]
            p = probegap.probe_table(a.retransmits, e.ack_delay if e else None)
            if not p.empty:
                out += ["### Probe gap against expected PTO", "", probegap.story(p), ""]
        if e is not None and (e.graphed or e.notes):
            out += ["### Time-sequence graphs", ""]
            out += [f"- {n}" for n in e.notes]
            if e.graphed:
                out.append(f"- flows {', '.join(map(str, e.graphed))}: in the HTML report")
            out.append("")
        if len(a.retransmits):
            table, left_out = causes.why_table(a.retransmits, 30)
            out += [
                "### Why each retransmission happened",
                "",
                causes.source_note(a.retransmits) + ".",
                "",
            ]
            counts = causes.cause_counts(a.retransmits)
            if not counts.empty:
                out += [table_md(counts.drop(columns=["meaning"])), ""]
            out += [table_md(table)]
            if left_out:
                out += [f"{left_out:,} more in retransmits.parquet.", ""]
        for title, table_fn in TABLE_SECTIONS:
            out += [f"### {title}", "", table_md(table_fn(a))]
        reading = capture_reading(a)
        if reading:
            out += ["### How the capture was read", ""] + [f"- {x}" for x in reading] + [""]
        out += ["### What was lost or not matched", ""]
        out += [f"- {line}" for line in quality(a)] + [""]
    return "\n".join(out)


def render_terminal(analyses: list[Analysis]) -> str:
    out = []
    if len(analyses) == 2:
        a, b = analyses
        out.append(compare.headline(compare.compare(a, b), a.name, b.name))
    for a in analyses:
        h = headline(a)
        out.append(f"{a.name}: {verdict(h)}")
        for k, c in h["by_kind"].items():
            out.append(f"  {k:<13} {c:>7}  {_pct(c / max(1, h['retransmissions'])):>6}")
        for q in capture_reading(a) + quality(a):
            out.append(f"  note: {q}")
    return "\n".join(out)


@dataclass
class ReportOptions:
    """What `retranscope report` asks beyond the analyses: flows to graph (--flow), the
    capture files (--pcap: for one analysis, its file(s); for several, one per analysis
    in order), how many of the worst flows to graph, and where warnings go."""

    flows: list[str] = field(default_factory=list)
    pcap: list[Path] = field(default_factory=list)
    top: int = graphs.DEFAULT_GRAPHS
    warn: Callable[[str], None] = lambda _line: None


def gather_evidence(analyses: list[Analysis], opts: ReportOptions) -> list[graphs.Evidence]:
    """Read each analysis's capture for its graphs and ACK delays (the report's I/O)."""
    if opts.pcap and len(analyses) > 1 and len(opts.pcap) != len(analyses):
        raise BadInput(
            f"{len(analyses)} analyses and {len(opts.pcap)} --pcap: give one "
            "--pcap per analysis, in the same order (or none)"
        )
    out = []
    for i, a in enumerate(analyses):
        pcap = opts.pcap if len(analyses) == 1 else opts.pcap[i : i + 1]
        out.append(
            graphs.gather(
                a,
                graphs.GraphOptions(
                    flows=list(opts.flows),
                    pcap=list(pcap),
                    top=opts.top,
                    warn=opts.warn,
                    key=f"a{i}-",
                ),
            )
        )
    for spec in opts.flows:
        if all(spec in e.missing for e in out):
            raise BadInput(
                f"--flow {spec}: no such flow in {', '.join(a.name for a in analyses)}"
                " (flows.parquet lists them)"
            )
    return out


def write_report(
    analyses: list[Analysis], out: Path, options: ReportOptions | None = None
) -> list[Path]:
    """Write report.html and report.md (``out`` is the .html path or a directory)."""
    evidence = gather_evidence(analyses, options or ReportOptions())
    out = Path(out)
    html_path = out / "report.html" if out.suffix != ".html" else out
    html_path.parent.mkdir(parents=True, exist_ok=True)
    md_path = html_path.with_suffix(".md")
    write_atomic(html_path, lambda p: p.write_text(render_html(analyses, evidence)))
    write_atomic(md_path, lambda p: p.write_text(render_markdown(analyses, evidence)))
    return [html_path, md_path]
