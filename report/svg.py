"""Tiny inline-SVG charts: the report is one self-contained HTML file, no plotting stack."""

from __future__ import annotations

from html import escape

import numpy as np

COLORS = {
    "tlp": "#e69f00",
    "fast": "#0072b2",
    "rto": "#d55e00",
    "rto_recovery": "#cc79a7",
    "syn": "#009e73",
    "synack": "#56b4e9",
    "unknown": "#999999",
    "other": "#999999",
}


def bars(items: list[tuple[str, float]], title: str, unit: str = "", width: int = 560) -> str:
    """Horizontal bar chart of (label, value)."""
    if not items:
        return ""
    row_h, left = 24, 130
    h = row_h * len(items) + 34
    vmax = max(v for _, v in items) or 1
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {h}" width="{width}" height="{h}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<text x="4" y="16" class="ttl">{escape(title)}</text>',
    ]
    for i, (label, v) in enumerate(items):
        y = 26 + i * row_h
        w = (width - left - 70) * v / vmax
        color = COLORS.get(label, "#4477aa")
        out.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        out.append(
            f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{color}"><title>{escape(label)}: {v:g}{unit}</title></rect>'
        )
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + 15}">{v:g}{unit}</text>')
    out.append("</svg>")
    return "\n".join(out)


def histogram(
    values_ms: np.ndarray,
    title: str,
    xlabel: str,
    bins: int = 40,
    width: int = 560,
    height: int = 220,
    log_x: bool = False,
) -> str:
    vals = np.asarray(values_ms, dtype=float)
    vals = vals[np.isfinite(vals)]
    if log_x:
        vals = vals[vals > 0]
    if not len(vals):
        return ""
    data = np.log10(vals) if log_x else vals
    lo, hi = float(data.min()), float(data.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
    left, bottom, top = 40, 36, 24
    pw, ph = width - left - 10, height - bottom - top
    cmax = counts.max() or 1
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}">'
        f'<title>{escape(title)}</title><text x="4" y="16" class="ttl">{escape(title)}</text>'
    ]
    bw = pw / bins
    for i, c in enumerate(counts):
        if not c:
            continue
        bh = ph * c / cmax
        a, b = edges[i], edges[i + 1]
        lab = f"{10**a:.3g}-{10**b:.3g} ms" if log_x else f"{a:.3g}-{b:.3g} ms"
        out.append(
            f'<rect x="{left + i * bw:.1f}" y="{top + ph - bh:.1f}" width="{bw - 1:.1f}" '
            f'height="{bh:.1f}" fill="#e69f00"><title>{lab}: {c}</title></rect>'
        )
    for frac in (0, 0.5, 1):
        x = lo + (hi - lo) * frac
        label = f"{10**x:.3g}" if log_x else f"{x:.3g}"
        anchor = {0: "start", 0.5: "middle", 1: "end"}[frac]
        out.append(
            f'<text x="{left + pw * frac:.1f}" y="{height - 18}" text-anchor="{anchor}">'
            f"{label}</text>"
        )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 3}" text-anchor="middle">'
        f"{escape(xlabel)}</text>"
    )
    out.append(f'<text x="4" y="{top + 10}">{cmax}</text>')
    out.append("</svg>")
    return "\n".join(out)


def timeline(
    t_s: np.ndarray,
    lanes: np.ndarray,
    kinds: np.ndarray,
    lane_labels: list[str],
    title: str,
    width: int = 760,
) -> str:
    """One dot per retransmission: x = time, y = flow, colour = kind."""
    if not len(t_s):
        return ""
    lane_h, left, top = 16, 170, 24
    height = top + lane_h * len(lane_labels) + 30
    pw = width - left - 10
    t0, t1 = float(np.min(t_s)), float(np.max(t_s))
    span = max(t1 - t0, 1e-6)
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<text x="4" y="16" class="ttl">{escape(title)}</text>'
    ]
    for i, lab in enumerate(lane_labels):
        y = top + i * lane_h + lane_h / 2
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="small">'
            f"{escape(lab)}</text>"
        )
    for t, lane, kind in zip(t_s, lanes, kinds):
        x = left + pw * (t - t0) / span
        y = top + lane * lane_h + lane_h / 2
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{COLORS.get(kind, "#999")}">'
            f"<title>{escape(str(kind))} at +{t - t0:.3f} s</title></circle>"
        )
    out.append(f'<text x="{left}" y="{height - 8}">0 s</text>')
    out.append(f'<text x="{left + pw}" y="{height - 8}" text-anchor="end">{span:.3g} s</text>')
    out.append("</svg>")
    return "\n".join(out)
