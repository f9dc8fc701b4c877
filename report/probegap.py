"""Probe gap against expected PTO: the seed article's 5 ms story, one plot per analysis.

Each tail loss probe is a column at the PTO its flow's SRTT implied (``expected_pto_ns``):
a dot at its measured gap (``since_last_send_ns``) and a cross at the receiver's ACK delay
for the probed data (the time from the original segment to the first ACK that covers it:
``ack_delay_ns`` when the analysis has it, else measured from the capture). Dots sit on
the diagonal when the probe fired on time. A probe is needless when the ACK was merely
late: its cross sits above the diagonal (the receiver held its ACK longer than the PTO,
a delayed ACK), and the receiver's D-SACK shows it spurious (hollow dot).
"""

from __future__ import annotations

from html import escape

import numpy as np
import pandas as pd

from retranscope.report.svg import COLORS

#: Probes plotted at most (the rest are counted on the plot).
MAX_POINTS = 5000


def probe_table(r: pd.DataFrame, ack_delay: pd.Series | None = None) -> pd.DataFrame:
    """One row per TLP with a measured gap and an expected PTO: gap_ms, pto_ms,
    ack_delay_ms (NaN where unknown), spurious."""
    t = r[(r["kind"] == "tlp") & r["since_last_send_ns"].notna() & r["expected_pto_ns"].notna()]
    out = pd.DataFrame(
        {
            "gap_ms": t["since_last_send_ns"].astype(float) / 1e6,
            "pto_ms": t["expected_pto_ns"].astype(float) / 1e6,
            "spurious": t["spurious"].fillna(False).astype(bool),
        },
        index=t.index,
    )
    if "ack_delay_ns" in t.columns:
        delay = pd.to_numeric(t["ack_delay_ns"], errors="coerce")
    elif ack_delay is not None:
        delay = ack_delay.reindex(t.index)
    else:
        delay = pd.Series(np.nan, index=t.index)
    out["ack_delay_ms"] = delay.where(delay >= 0).astype(float) / 1e6
    # The first ACK covering the probed data came only after the probe left: the receiver
    # had held it at least that long, and may have been answering the probe itself (a
    # lower bound of its own delay).
    since_orig = pd.to_numeric(t["since_original_ns"], errors="coerce") / 1e6
    out["after_probe"] = (out["ack_delay_ms"] >= since_orig).fillna(False).astype(bool)
    return out


def story(p: pd.DataFrame) -> str:
    """The plot's finding in one or two sentences."""
    if p.empty:
        return "No tail loss probe with a measured gap and an expected PTO."
    n = len(p)
    on_time = int(((p["gap_ms"] - p["pto_ms"]).abs() <= 0.1 * p["pto_ms"] + 0.5).sum())
    s = (
        f"{n} probes; median gap {p['gap_ms'].median():.3g} ms against a median expected "
        f"PTO of {p['pto_ms'].median():.3g} ms ({on_time} within 10% + 0.5 ms of it)."
    )
    known = p[p["ack_delay_ms"].notna()]
    if len(known):
        late = known["ack_delay_ms"] > known["pto_ms"]
        sp = known["spurious"]
        s += (
            f" For {int(late.sum())} of the {len(known)} probes with a measured ACK delay "
            f"the receiver's ACK came later than the PTO; {int((late & sp).sum())} of "
            f"those were shown spurious, and {int((~late & sp).sum())} spurious probes "
            "had an ACK delay under the PTO."
        )
        after = int(known["after_probe"].sum())
        if after:
            s += (
                f" For {after} the first ACK came only after the probe (arrow up): the "
                "receiver held its ACK at least that long, the probe may have drawn it."
            )
    return s


def _log_axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    lo = max(lo, 1e-3)
    a, b = np.floor(np.log10(lo)), np.ceil(np.log10(max(hi, lo * 1.01)))
    if b - a < 1:
        b = a + 1
    ticks = [
        float(m * 10**e)
        for e in range(int(a), int(b) + 1)
        for m in (1, 2, 5)
        if 10**a <= m * 10**e <= 10**b
    ]
    return 10**a, 10**b, ticks


def plot(p: pd.DataFrame, title: str, width: int = 560, height: int = 420) -> str:
    """Log-log scatter: x expected PTO, y measured gap (dots) and ACK delay (crosses)."""
    if p.empty:
        return ""
    shown = p if len(p) <= MAX_POINTS else p.sample(MAX_POINTS, random_state=0)
    vals = np.concatenate([shown["gap_ms"], shown["pto_ms"], shown["ack_delay_ms"].dropna()])
    vals = vals[vals > 0]
    lo, hi, ticks = _log_axis(float(vals.min()), float(vals.max()))
    left, right, top, bottom = 56, 12, 28, 44
    pw, ph = width - left - right, height - top - bottom
    la, lb = np.log10(lo), np.log10(hi)

    def x(v):
        return left + pw * (np.log10(np.maximum(v, lo)) - la) / (lb - la)

    def y(v):
        return top + ph - ph * (np.log10(np.maximum(v, lo)) - la) / (lb - la)

    out = [
        f'<svg class="chart probegap" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}">'
        f'<title>{escape(title)}</title><text x="4" y="16" class="ttl">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for t in ticks:
        out.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + ph}" '
            f'stroke="#eee"/><line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" '
            f'y2="{y(t):.1f}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{x(t):.1f}" y="{top + ph + 14}" text-anchor="middle" '
            f'class="small">{t:g}</text><text x="{left - 4}" y="{y(t) + 3:.1f}" '
            f'text-anchor="end" class="small">{t:g}</text>'
        )
    out.append(
        f'<line x1="{x(lo):.1f}" y1="{y(lo):.1f}" x2="{x(hi):.1f}" y2="{y(hi):.1f}" '
        'stroke="#888" stroke-dasharray="5 4"><title>gap = expected PTO</title></line>'
    )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">expected '
        "PTO, ms (2·SRTT + 2 ms, Linux tcp_schedule_loss_probe)</text>"
    )
    out.append(
        f'<text x="12" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 12 '
        f'{top + ph / 2})">ms</text>'
    )
    color = COLORS["tlp"]
    for row in shown.itertuples():
        cx, cy = x(row.pto_ms), y(row.gap_ms)
        delay = (
            "unknown"
            if pd.isna(row.ack_delay_ms)
            else (("≥ " if row.after_probe else "") + f"{row.ack_delay_ms:.3g} ms")
        )
        tip = f"gap {row.gap_ms:.3g} ms, expected PTO {row.pto_ms:.3g} ms, ACK delay {delay}" + (
            ", spurious" if row.spurious else ""
        )
        fill = "#fff" if row.spurious else color
        out.append(
            f'<circle class="probe" cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{fill}" '
            f'stroke="{color}" stroke-width="2.2"><title>{escape(tip)}</title></circle>'
        )
        if not pd.isna(row.ack_delay_ms):
            ay = y(row.ack_delay_ms)
            up = "m4 -4v-14m-3 3l3 -3l3 3" if row.after_probe else ""
            out.append(
                f'<path class="ackdelay" d="M{cx - 4:.1f} {ay - 4:.1f}l8 8m0 -8'
                f'l-8 8{up}" fill="none" stroke="#0072b2" stroke-width="1.4">'
                f"<title>{escape(tip)}</title></path>"
            )
    lx = left + 8
    out.append(
        f'<circle cx="{lx}" cy="{top + 10}" r="4" fill="{color}"/><text x="{lx + 8}" '
        f'y="{top + 14}" class="small">probe gap (hollow: spurious)</text>'
        f'<path d="M{lx - 4} {top + 22}l8 8m0 -8l-8 8" stroke="#0072b2"/>'
        f'<text x="{lx + 8}" y="{top + 30}" class="small">receiver ACK delay of the '
        "probed data (arrow: at least, the ACK came after the probe)</text>"
    )
    if len(shown) < len(p):
        out.append(
            f'<text x="{left + pw - 4}" y="{top + ph - 6}" text-anchor="end" '
            f'class="small">{len(shown):,} of {len(p):,} probes drawn (random '
            "sample)</text>"
        )
    out.append("</svg>")
    return "\n".join(out)
