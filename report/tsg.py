"""Time-sequence graphs (Stevens, tcptrace): one flow's sequence space against time.

Drawn: the original segments (sampled on long flows), every retransmission coloured by
kind (spurious ones hollow) with its cause on hover, the ACK line, SACK and D-SACK blocks,
the receive window's right edge, and for each probe or timeout the PTO or RTO deadline
the sender had armed. The page's script (assets/tsg.js) draws it from a JSON block and
gives zoom and pan; this module builds that block and the figure around it.

Retransmissions are never sampled. The originals (and the ACKs) are, once a flow has more
than the budget: every one near a retransmission is kept, and an even stride elsewhere;
the figure says how many were kept and how.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape

import numpy as np
import pandas as pd

from retranscope.report import causes
from retranscope.report.packets import FlowView
from retranscope.report.page import table_html
from retranscope.report.svg import COLORS
from retranscope.schemas.vocabulary import KINDS

#: Originals (and ACKs) drawn per graph at most, before the floor of two neighbours per
#: retransmission: enough for the shape of a flow, small enough for a page of several.
SAMPLE_BUDGET = 6000
#: Neighbours kept on each side of a retransmission, at most.
FOCUS_MAX = 16
TIMER_OF_KIND = {"tlp": "pto", "rto": "rto", "syn": "rto", "synack": "rto"}


@dataclass
class Sampled:
    keep: np.ndarray  # indices kept, increasing
    total: int
    neighbours: int  # kept on each side of a retransmission (0: not sampled)
    stride: int  # elsewhere, every stride-th (1: all)

    def note(self, what: str) -> str:
        n = len(self.keep)
        if self.stride <= 1:
            return f"all {self.total:,} {what}"
        near = (
            f"all within {self.neighbours} of a retransmission or of the original it resent"
            if self.neighbours >= 0
            else "all in the same stretches of time around each retransmission"
        )
        return f"{n:,} of {self.total:,} {what} ({near}, every {_ordinal(self.stride)} elsewhere)"


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _focus_mask(n: int, pos: np.ndarray, k: int) -> np.ndarray:
    """Rows within ``k`` of any position in ``pos`` (a row index per retransmission)."""
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, np.clip(pos - k, 0, n), 1)
    np.add.at(diff, np.clip(pos + k, 0, n), -1)
    return np.cumsum(diff[:n]) > 0


def sample(n: int, pos: np.ndarray, budget: int = SAMPLE_BUDGET) -> Sampled:
    """Rows of a series of ``n`` to draw: all if they fit the budget; else every row within
    ``k`` of a position in ``pos`` (where a retransmission left, and the original it
    resent; k from FOCUS_MAX down to 1, so that about half the budget goes there) and
    every ``stride``-th row elsewhere."""
    if n <= budget:
        return Sampled(np.arange(n), n, 0, 1)
    k = int(np.clip(budget // max(1, 4 * len(pos)), 1, FOCUS_MAX)) if len(pos) else 0
    focus = _focus_mask(n, pos, k) if k else np.zeros(n, bool)
    rest = np.flatnonzero(~focus)
    room = max(budget - int(focus.sum()), budget // 4)
    stride = max(1, -(-len(rest) // room))
    keep = np.zeros(n, bool)
    keep[focus] = True
    keep[rest[::stride]] = True
    keep[[0, n - 1]] = True  # the ends: the graph spans the whole flow
    return Sampled(np.flatnonzero(keep), n, k, stride)


def sample_by_windows(
    t: np.ndarray, windows: tuple[np.ndarray, np.ndarray], budget: int = SAMPLE_BUDGET
) -> Sampled:
    """Like ``sample``, for a second series (the ACKs): rows inside the time windows the
    originals' focus covered, and a stride elsewhere."""
    n = len(t)
    if n <= budget:
        return Sampled(np.arange(n), n, 0, 1)
    starts, ends = np.sort(windows[0]), np.sort(windows[1])
    inside = (np.searchsorted(starts, t, side="right") - np.searchsorted(ends, t, side="left")) > 0
    rest = np.flatnonzero(~inside)
    room = max(budget - int(inside.sum()), budget // 4)
    stride = max(1, -(-len(rest) // room))
    keep = inside.copy()
    keep[rest[::stride]] = True
    keep[[0, n - 1]] = True
    return Sampled(np.flatnonzero(keep), n, -1, stride)


def _delta(x: np.ndarray) -> list[int]:
    """Delta encoding (the page's script sums it back): sorted times and sequence offsets
    then take a few digits each instead of ten."""
    x = np.asarray(x, dtype=np.int64)
    return np.diff(x, prepend=0).tolist() if len(x) else []


def _us(ns: np.ndarray) -> np.ndarray:
    return np.asarray(ns, dtype=np.int64) // 1000


def rows_of_flow(r: pd.DataFrame, flow, span_ns: tuple[int, int]) -> pd.DataFrame:
    """The flow's retransmissions: its rows, and kernel events of its 4-tuple inside the
    connection's span that found no frame (flow_id -1): the kernel sent them, the capture
    did not see them."""
    own = r["flow_id"] == int(flow["flow_id"])
    loose = (
        (r["flow_id"] < 0)
        & (r["saddr"] == flow["saddr"])
        & (r["sport"] == flow["sport"])
        & (r["daddr"] == flow["daddr"])
        & (r["dport"] == flow["dport"])
        & (r["ts_wall_ns"] >= span_ns[0])
        & (r["ts_wall_ns"] <= span_ns[1])
    )
    return r[own | loose].sort_values("ts_wall_ns", kind="stable")


def _timers(rows: pd.DataFrame, t_us: np.ndarray) -> list:
    """Per retransmission, the timer that fired it: [armed_us, deadline_us, 'pto'|'rto'],
    or None. Linux re-arms the probe and retransmission timers on each send and on each
    ACK (tcp_schedule_loss_probe, tcp_rearm_rto): armed at the later of the last send
    and the last ACK, deadline the expected PTO / RTO after."""
    out: list = []
    for i, row in enumerate(rows.to_dict("records")):
        timer = TIMER_OF_KIND.get(row["kind"])
        expected = row.get("expected_pto_ns" if timer == "pto" else "expected_rto_ns")
        since = [row.get(c) for c in ("since_last_send_ns", "since_last_ack_ns")]
        since = [float(s) for s in since if s is not None and not pd.isna(s) and s >= 0]
        if timer is None or expected is None or pd.isna(expected) or not since:
            out.append(None)
            continue
        armed = int(t_us[i] - min(since) / 1000)
        out.append([armed, int(armed + float(expected) / 1000), timer])
    return out


def graph_data(
    view: FlowView, flow, rows: pd.DataFrame, title: str, budget: int = SAMPLE_BUDGET
) -> dict:
    """The JSON the page's script draws: times in µs since the flow's start and sequence
    offsets in bytes, the long series delta-encoded."""
    t0 = view.t0_ns
    r_t = rows["ts_wall_ns"].to_numpy(np.int64) - t0
    r_s = view.place(rows["ts_wall_ns"].to_numpy(np.int64), rows["seq"].to_numpy(np.int64))
    r_e = r_s + ((rows["end_seq"].to_numpy(np.int64) - rows["seq"].to_numpy(np.int64)) & 0xFFFFFFFF)
    o = np.flatnonzero(view.original)
    # Where each retransmission left among the originals, and the original that carried
    # its first byte: zoomed in on either, the segments around it are there.
    reach = np.maximum.accumulate(view.end[o]) if len(o) else np.zeros(0, np.int64)
    pos = np.concatenate(
        [np.searchsorted(view.t_ns[o], r_t), np.searchsorted(reach, r_s, side="right")]
    )
    orig = sample(len(o), pos, budget)
    o_keep = o[orig.keep]
    k = max(orig.neighbours, 1)
    windows = (
        view.t_ns[o][np.clip(pos - k, 0, max(len(o) - 1, 0))] if len(o) else r_t,
        view.t_ns[o][np.clip(pos + k, 0, max(len(o) - 1, 0))] if len(o) else r_t,
    )
    acks = _ack_changes(view)
    ack = sample_by_windows(view.ack_t_ns[acks], windows, budget)
    a_keep = acks[ack.keep]
    s_on = np.isin(view.sack_ack_index, a_keep)
    kinds = [k for k in KINDS if k in set(rows["kind"])] or ["unknown"]
    kind_index = {k: i for i, k in enumerate(kinds)}
    spurious = rows["spurious"].fillna(False).astype(bool).to_numpy()
    partly = (
        (rows["spurious_frames"].fillna(0).to_numpy() > 0) & ~spurious
        if "spurious_frames" in rows
        else np.zeros(len(rows), bool)
    )
    r_us = _us(r_t)
    notes = [
        orig.note("original segments") + " drawn",
        ack.note("ACK changes") + " drawn",
        f"all {len(rows):,} retransmissions drawn",
    ]
    if view.window_note:
        notes.append(view.window_note)
    return {
        "title": title,
        "t0_wall_ns": str(t0),
        "kinds": kinds,
        "colors": {k: COLORS.get(k, "#999") for k in kinds},
        "sampled": bool(orig.stride > 1 or ack.stride > 1),
        "notes": notes,
        "orig": {
            "t": _delta(_us(view.t_ns[o_keep])),
            "s": _delta(view.seq[o_keep]),
            "l": (view.end[o_keep] - view.seq[o_keep]).tolist(),
        },
        "ack": {
            "t": _delta(_us(view.ack_t_ns[a_keep])),
            "a": _delta(view.ack[a_keep]),
            "w": _delta(view.rwnd_edge[a_keep]) if view.rwnd_edge is not None else None,
        },
        "sack": {
            "t": _delta(_us(view.sack_t_ns[s_on])),
            "l": view.sack_l[s_on].tolist(),
            "r": view.sack_r[s_on].tolist(),
            "d": view.sack_dsack[s_on].astype(int).tolist(),
        },
        "rtx": {
            "t": r_us.tolist(),
            "s": r_s.tolist(),
            "e": r_e.tolist(),
            "k": [kind_index.get(k, 0) for k in rows["kind"]],
            "sp": (spurious.astype(int) + 2 * partly.astype(int)).tolist(),
            "frame": rows["frame"].fillna(-1).astype(np.int64).tolist(),
            "why": causes.sentences(rows),
            "cause": causes.codes(rows),
            "timer": _timers(rows, r_us),
        },
    }


def _ack_changes(view: FlowView) -> np.ndarray:
    """ACKs that move the ACK line, the window edge, or carry SACK blocks: the others
    draw nothing new."""
    n = len(view.ack)
    if not n:
        return np.zeros(0, np.int64)
    change = np.ones(n, bool)
    change[1:] = view.ack[1:] != view.ack[:-1]
    if view.rwnd_edge is not None:
        change[1:] |= view.rwnd_edge[1:] != view.rwnd_edge[:-1]
    change[np.unique(view.sack_ack_index)] = True
    change[-1] = True
    return np.flatnonzero(change)


def flow_label(flow) -> str:
    a, b = str(flow["saddr"]), str(flow["daddr"])
    a = f"[{a}]" if ":" in a else a
    b = f"[{b}]" if ":" in b else b
    return f"{a}:{flow['sport']} → {b}:{flow['dport']}"


def _json_script(data: dict) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    # Inside <script>, "</script" ends the element and "<!--" changes how the rest is
    # parsed (HTML's script data states); "<" only occurs inside JSON strings, where
    # "\u003c" is the same character.
    return text.replace("<", "\\u003c")


LEGEND = (
    ("orig", "original segment"),
    ("ack", "ACK line"),
    ("rwnd", "receive window edge"),
    ("sack", "SACK block"),
    ("dsack", "D-SACK block"),
    ("pto", "PTO deadline (from last send/ACK)"),
    ("rto", "RTO deadline"),
)


def figure_html(data: dict, graph_id: str, rows: pd.DataFrame) -> str:
    """A <figure> the script turns into the interactive graph; without JavaScript it says
    so, and the why-table under it still lists every retransmission drawn."""
    counts = rows["kind"].value_counts()
    n_sp = int(rows["spurious"].fillna(False).astype(bool).sum())
    summary = ", ".join(f"{k} {int(counts[k])}" for k in data["kinds"] if k in counts)
    legend = "".join(
        f"<span class='lg'><i class='sw k' style='background:{data['colors'][k]}'></i>{k}</span>"
        for k in data["kinds"]
    )
    legend += "<span class='lg'><i class='sw k hollow'></i>spurious (hollow)</span>"
    legend += "".join(
        f"<span class='lg'><i class='sw {c}'></i>{escape(t)}</span>" for c, t in LEGEND
    )
    table, left_out = causes.why_table(rows, limit=200)
    more = f"<p>{left_out:,} more in retransmits.parquet.</p>" if left_out else ""
    return (
        f"<figure class='tsg' id='{graph_id}'>"
        f"<figcaption><b>Time-sequence graph</b> {escape(data['title'])}: "
        f"{len(rows):,} retransmissions ({escape(summary)}; {n_sp} spurious)</figcaption>"
        "<div class='tsg-tools'><button type='button' class='tsg-reset'>Reset view</button>"
        "<span class='hint'>wheel: zoom (shift: time only, alt: sequence only) · drag: pan "
        "· shift-drag: zoom to box · double-click: reset · hover a retransmission: why"
        "</span></div>"
        "<div class='tsg-wrap'><svg class='tsg-plot' width='940' height='460' role='img' "
        f"aria-label='time-sequence graph {escape(data['title'])}'></svg>"
        "<div class='tsg-tip' hidden></div></div>"
        f"<div class='tsg-legend'>{legend}</div>"
        f"<p class='tsg-note'>{'Sampled: ' if data['sampled'] else ''}"
        f"{escape('; '.join(data['notes']))}.</p>"
        "<noscript><p class='warn'>This graph is drawn by the page's script: enable "
        "JavaScript to see it. The table below lists its retransmissions.</p></noscript>"
        f"<script type='application/json' class='tsg-data'>{_json_script(data)}</script>"
        f"<details><summary>Why each of these {len(rows):,} retransmissions happened "
        f"({escape(causes.source_note(rows))})</summary>{table_html(table, klass='why')}{more}"
        "</details>"
        "</figure>"
    )
