"""Why each retransmission happened, in one sentence per row.

The analyzer writes ``cause`` (a code) and ``cause_text`` (a sentence citing frames and
measured times) per row of retransmits.parquet when it knows them. Analyses without those
columns get a sentence made here from the kind and the timing columns the row has, and
the page says which of the two it shows.
"""

from __future__ import annotations

import pandas as pd

from retranscope.schemas.vocabulary import CAUSES

HAS_CAUSE = ("cause", "cause_text")


def has_causes(r: pd.DataFrame) -> bool:
    return "cause_text" in r.columns and r["cause_text"].notna().any()


def _ms(ns) -> str | None:
    if ns is None or pd.isna(ns):
        return None
    ms = float(ns) / 1e6
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def _int(v) -> int | None:
    return None if v is None or pd.isna(v) else int(v)


def _flag(v) -> bool | None:
    return None if v is None or pd.isna(v) else bool(v)


def timing_sentence(row) -> str:
    """Kind and timing of one row (a mapping of retransmits.parquet columns)."""
    g = row.get
    kind = g("kind") or "unknown"
    gap, orig = _ms(g("since_last_send_ns")), _ms(g("since_original_ns"))
    backoff = _int(g("backoff"))
    if kind == "tlp":
        s = "tail loss probe" + (f" {gap} after the last send" if gap else "")
        pto = _ms(g("expected_pto_ns"))
        srtt = g("srtt_us")
        if pto:
            s += f" (expected PTO {pto}" + (
                f", SRTT {float(srtt) / 1000:.3g} ms"
                if srtt is not None and not pd.isna(srtt)
                else ""
            )
            s += ")"
    elif kind in ("rto", "syn", "synack"):
        what = {"rto": "RTO", "syn": "SYN retransmitted", "synack": "SYN-ACK retransmitted"}
        s = what[kind] + (f" {gap} after the last send" if gap else "")
        rto = _ms(g("expected_rto_ns"))
        extra = [f"expected RTO {rto}"] if rto else []
        if backoff is not None:
            extra.append(f"backoff {backoff}")
        s += f" ({', '.join(extra)})" if extra else ""
    elif kind == "fast":
        trig, since = _int(g("trigger_frame")), _ms(g("since_trigger_ns"))
        s = "fast retransmit"
        if trig is not None:
            s += f" on the ACK in frame {trig}" + (f" ({since} before)" if since else "")
    elif kind == "rto_recovery":
        s = "slow-start retransmit after an RTO"
    else:
        s = "not classified"
    if kind not in ("tlp", "rto", "syn", "synack") and orig:
        s += f", {orig} after the original"
    kp = g("kind_pcap")
    if _flag(g("kind_agrees")) is False and kp:
        s += f"; the capture read it as {kp}"
    if _flag(g("spurious")):
        by = {"dsack": "D-SACK", "ts_echo": "timestamp echo"}.get(g("spurious_by"), "")
        s += "; spurious" + (f" ({by})" if by else "")
    elif (_int(g("spurious_frames")) or 0) > 0:
        s += f"; {int(g('spurious_frames'))} of its {_int(g('frames'))} frames were needless"
    frame = _int(g("frame"))
    if frame is not None and frame >= 0:
        s += f"; frame {frame}"
    elif g("match") and g("match") != "matched":
        s += f"; no frame in the capture ({g('match')})"
    return s


def sentences(r: pd.DataFrame) -> list[str]:
    """One sentence per row: the analyzer's ``cause_text`` where it has one, else the
    kind-and-timing sentence."""
    cause = r["cause_text"].tolist() if "cause_text" in r.columns else [None] * len(r)
    out = []
    for text, row in zip(cause, r.to_dict("records")):
        out.append(text if isinstance(text, str) and text else timing_sentence(row))
    return out


def codes(r: pd.DataFrame) -> list[str | None]:
    """The analyzer's cause code per row (None without one)."""
    if "cause" not in r.columns:
        return [None] * len(r)
    return [c if isinstance(c, str) and c else None for c in r["cause"].tolist()]


def source_note(r: pd.DataFrame) -> str:
    return (
        "causes as the analyzer found them (cause_text)"
        if has_causes(r)
        else "kind and timing: this analysis has no cause column (analyze again with a "
        "newer retranscope for a cause per retransmission)"
    )


def cause_counts(r: pd.DataFrame) -> pd.DataFrame:
    """Rows per cause code, what the code means (schemas/vocabulary.py CAUSES) and one
    example sentence; empty without a cause column."""
    if "cause" not in r.columns or not r["cause"].notna().any():
        return pd.DataFrame()
    g = r[r["cause"].notna()].groupby("cause", sort=False)
    first = g.head(1).set_index("cause")
    out = g.size().rename("count").to_frame()
    out["meaning"] = [CAUSES.get(c, (None, ""))[1] for c in out.index]
    out["example"] = first["cause_text"] if "cause_text" in first else ""
    return out.sort_values("count", ascending=False).reset_index()


def why_table(r: pd.DataFrame, limit: int = 50) -> tuple[pd.DataFrame, int]:
    """The per-retransmission "why" table (first ``limit`` rows by time) and how many rows
    were left out."""
    rows = r.sort_values("ts_wall_ns", kind="stable").head(limit)
    t0 = int(r["ts_wall_ns"].min()) if len(r) else 0
    out = pd.DataFrame(
        {
            "time": [f"+{(t - t0) / 1e9:.6f} s" for t in rows["ts_wall_ns"]],
            "flow": [
                f"{a}:{p} → {b}:{q}"
                for a, p, b, q in zip(rows["saddr"], rows["sport"], rows["daddr"], rows["dport"])
            ],
            "frame": [f if f >= 0 else "" for f in rows["frame"].fillna(-1).astype(int)],
            "seq": rows["seq"].tolist(),
            "kind": rows["kind"].tolist(),
            "why": sentences(rows),
        }
    )
    if "cause" in rows.columns:
        out.insert(5, "cause", rows["cause"].fillna("").tolist())
    return out, max(0, len(r) - limit)
