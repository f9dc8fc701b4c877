"""The postmortem a person reads: HTML (self-contained), Markdown, and a terminal summary,
from what `retranscope analyze` wrote (retransmits.parquet, flows.parquet, summary.json).

It answers the seed article's question first: what share of the retransmissions were
probes, how many of those (and of the others) were spurious, which flows suffered; then
timing (the probe gap, RTO backoff chains), then everything that was not matched or lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from retranscope.errors import BadInput, SchemaMismatch
from retranscope.report import svg
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


def load(path: str | Path, name: str | None = None) -> Analysis:
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
    return Analysis(name or path.name, pd.read_parquet(need[0]), pd.read_parquet(need[1]), summary)


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
        "partly_spurious": int((r["spurious_frames"].fillna(0).astype(int) > 0)
                               .where(~spurious, False).sum())
        if n and "spurious_frames" in r else 0,
        "needless_frames": int(r.loc[~spurious, "spurious_frames"].fillna(0).sum())
        if n and "spurious_frames" in r else 0,
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


def top_flows(a: Analysis, n: int = 15) -> pd.DataFrame:
    r = a.retransmits
    if r.empty:
        return pd.DataFrame()
    g = r.groupby(["saddr", "sport", "daddr", "dport"], dropna=False)
    t = g.size().rename("retransmissions").to_frame()
    for k in ("tlp", "fast", "rto", "rto_recovery", "syn", "synack"):
        t[k] = g["kind"].apply(lambda s, k=k: int((s == k).sum()))
    t["spurious"] = g["spurious"].apply(lambda s: int(s.fillna(False).astype(bool).sum()))
    t = t.loc[:, (t != 0).any(axis=0) | (t.columns == "retransmissions")]
    return t.sort_values("retransmissions", ascending=False).head(n).reset_index()


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
                "probe for them).")
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
        lines.append(f"{count} retransmitted frames have no kernel event ({key}"
                     + (f": {why}" if why else "") + ").")
    if m.get("disagreements"):
        lines.append(
            f"The capture's verdict differs from the kernel's reason for "
            f"{m['disagreements']} retransmissions (kind_agrees = false)."
        )
    lines += [f"Warning: {w}" for w in s.get("warnings", [])]
    return lines or ["Nothing was lost or left unmatched."]


def _table_md(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(out) + "\n"


def _table_html(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p>(none)</p>"
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


# The tables every rendering shows, in order, after the kinds and plots.
TABLE_SECTIONS = (
    ("Timing", timing_table),
    ("Flows that suffered most", top_flows),
    ("RTO backoff chains", rto_chains),
    ("Kernel counters over the recording", kernel_counters),
)


def render_markdown(analyses: list[Analysis]) -> str:
    out = ["# retranscope report", ""]
    for a in analyses:
        h = headline(a)
        out += [f"## {a.name}", "", verdict(h), ""]
        out += ["| kind | count | share | meaning |", "|---|---|---|---|"]
        for k, c in h["by_kind"].items():
            out.append(f"| {k} | {c} | {_pct(c / h['retransmissions'])} | {KIND_TEXT.get(k, '')} |")
        out.append("")
        for title, table in TABLE_SECTIONS:
            out += [f"### {title}", "", _table_md(table(a))]
        out += ["### What was lost or not matched", ""]
        out += [f"- {line}" for line in quality(a)] + [""]
    return "\n".join(out)


CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
  color:#222}
h1{font-size:1.6em}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}
.verdict{font-size:1.1em;background:#fff8e6;border-left:4px solid #e69f00;padding:.6em 1em}
svg.chart{display:block;margin:.5em 0;font-size:12px}
svg .ttl{font-weight:600}
svg .small{font-size:10px}
.quality li{margin:.2em 0}
"""


def render_html(analyses: list[Analysis]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>retranscope report</title>"
        f"<style>{CSS}</style></head><body><h1>retranscope report</h1>"
    ]
    for a in analyses:
        h = headline(a)
        r = a.retransmits
        parts.append(
            f"<section class='analysis' data-name='{escape(a.name)}'>"
            f"<h2>{escape(a.name)}</h2><p class='verdict'>{escape(verdict(h))}</p>"
        )
        if h["retransmissions"]:
            parts.append(svg.bars(list(h["by_kind"].items()), "Retransmissions by kind"))
            kt = pd.DataFrame(
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
            parts.append(_table_html(kt))
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
            flows = top_flows(a, 20)
            lanes_key = r[["saddr", "sport", "daddr", "dport"]].astype(str).agg(" ".join, axis=1)
            labels = [f"{f.saddr}:{f.sport}→{f.dport}" for f in flows.itertuples()]
            keys = [
                " ".join(map(str, (f.saddr, f.sport, f.daddr, f.dport))) for f in flows.itertuples()
            ]
            lane_of = {k: i for i, k in enumerate(keys)}
            sel = lanes_key.isin(lane_of)
            parts.append(
                svg.timeline(
                    r.loc[sel, "ts_wall_ns"].to_numpy() / 1e9,
                    lanes_key[sel].map(lane_of).to_numpy(),
                    r.loc[sel, "kind"].to_numpy(),
                    labels,
                    "Retransmissions over time, by flow and kind",
                )
            )
        for title, table in TABLE_SECTIONS:
            parts.append(f"<h3>{escape(title)}</h3>" + _table_html(table(a)))
        parts.append(
            "<h3>What was lost or not matched</h3><ul class='quality'>"
            + "".join(f"<li>{escape(x)}</li>" for x in quality(a))
            + "</ul></section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_terminal(analyses: list[Analysis]) -> str:
    out = []
    for a in analyses:
        h = headline(a)
        out.append(f"{a.name}: {verdict(h)}")
        for k, c in h["by_kind"].items():
            out.append(f"  {k:<13} {c:>7}  {_pct(c / max(1, h['retransmissions'])):>6}")
        for q in quality(a):
            out.append(f"  note: {q}")
    return "\n".join(out)


def write_report(analyses: list[Analysis], out: Path) -> list[Path]:
    """Write report.html and report.md (``out`` is the .html path or a directory)."""
    out = Path(out)
    html_path = out / "report.html" if out.suffix != ".html" else out
    html_path.parent.mkdir(parents=True, exist_ok=True)
    md_path = html_path.with_suffix(".md")
    html_path.write_text(render_html(analyses))
    md_path.write_text(render_markdown(analyses))
    return [html_path, md_path]
