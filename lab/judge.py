"""Score a capture-only analysis against the kernel's own retransmissions.

The analyzer reads a capture alone (``retranscope.analyze.run.run_analysis(pcap, None,
out)``) and reports retransmissions, one row per wire frame. The recorder, on the host
that retransmitted, wrote what the kernel actually did (one event per
``tcp_retransmit_skb`` call, with its reason). This module lines the two up, frame by
frame, and counts (per recording and per kernel reason):

=================  ========================================================================
outcome            meaning
=================  ========================================================================
``right_kind``     reported, and a kernel retransmission of those bytes went out in that
                   frame; the reported kind is the kernel's reason
``right_family``   ... a different kind of the same family (rto/rto_recovery/syn/synack)
``wrong_family``   ... a kind of another family (tlp vs fast vs rto)
``invented``       reported, but no kernel retransmission of those bytes is in that frame:
                   an original, a reordered segment, a keep-alive. An error, as much as a
                   wrong kind (issue 7)
``missed``         a kernel retransmission whose frame is in the capture, not reported
``peer``           reported, sent by a host the recorder did not watch: not judged
``unreported``     reported, no event, but the capture holds an earlier copy of those
                   bytes and the recording counts retransmissions the kernel ran no probe
                   for (run.json ``accounting``): a real retransmission, not judged
=================  ========================================================================

A kernel retransmission that the capture could not show (lost before the tap, outside a
cut capture, the other way of a one-way capture) is no error; it is counted as
``not_visible`` per event.

Which frame carries which event is decided here, from the capture's frames and the events
alone, independent of how the analyzer classifies: same flow, overlapping sequence range
(``[seq, end_seq)``; SYN and FIN count one), and the frame's time within a window after the
event, shifted by the one-way delay from the retransmitting host to the capture point
(scenario.json ``tap_delay_ms``; events carry the sender's clock, and at a receiver or mid
tap the frame arrives later). The window opens ``BEFORE_NS`` early (tcpdump stamps a frame
as the device takes it, a few microseconds *before* the tracepoint runs: measured -1 to
-160 us on the corpus) and closes ``AFTER_NS`` late plus the most that reordering or jitter
adds (``tap_extra_ms``). Each frame goes to the nearest event; an event that finds two
copies of the same bytes keeps the nearer (the other is the original, sent just before).

Pure functions over the packet table (``analyze/capture/``), the events table
(``analyze/events.py``) and the reported rows; :func:`judge_recording` and :func:`main`
are the I/O edge::

    .venv/bin/python -m retranscope.lab.judge tests/fixtures/corpus [--only NAME...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from retranscope.analyze.join import FLOW_KEY, segment_len
from retranscope.analyze.table import to_pandas
from retranscope.schemas.vocabulary import FAMILY_OF_KIND

#: How early a frame may be stamped before its event (see the module docstring).
BEFORE_NS = 1_000_000
#: How late a frame may reach the tap after event time + path delay: queueing in the host
#: and in the delay line (a Python process) on a busy machine.
AFTER_NS = 10_000_000
#: With TCP timestamps a frame may arrive this much later still (its TSval shows it was
#: sent at the event's time: queueing on the path, see _sent_at_event).
QUEUE_NS = 300_000_000
#: An invented row with an event of the same bytes this close is reported as a near miss
#: (``near_event_ms``): a sign the window is wrong rather than the analyzer.
NEAR_NS = 500_000_000

OUTCOMES = (
    "right_kind",
    "right_family",
    "wrong_family",
    "invented",
    "missed",
    "peer",
    "unreported",
)
JUDGED = ("right_kind", "right_family", "wrong_family", "invented", "missed")


@dataclass(frozen=True)
class Setting:
    """What the recording says about its capture (scenario.json; docs/lab.md)."""

    name: str
    capture_point: str = "sender"
    #: Addresses of the hosts whose retransmissions the events cover.
    recorded_addrs: frozenset[str] = frozenset()
    #: One-way delay (ns) from a host (by address) to the capture point; absent: 0.
    tap_delay_ns: Mapping[str, int] = field(default_factory=dict)
    #: The most reordering/jitter adds to it (ns).
    tap_extra_ns: Mapping[str, int] = field(default_factory=dict)
    #: Segments the kernel resent without a probe (run.json accounting).
    unreported_segments: int = 0
    derived: Mapping | None = None


@dataclass
class Judged:
    """One recording judged: a row per judged frame, and the events no frame showed."""

    setting: Setting
    #: frame, ts_ns, saddr, sport, daddr, dport, seq, end_seq (unwrapped not), reason
    #: (kernel, or None), kind (reported, or None), outcome, first_copy, near_event_ms
    rows: pd.DataFrame
    #: reason, visible (bool): one row per kernel event that reached the wire (err == 0)
    events: pd.DataFrame
    error: str | None = None


# --- matching frames to kernel events ------------------------------------------------------


def _event_window(events: pd.DataFrame, setting: Setting) -> tuple[np.ndarray, np.ndarray]:
    """Per event: expected tap time (ns) and how late after it its frame may arrive."""
    delay = events["saddr"].map(lambda a: setting.tap_delay_ns.get(a, 0)).to_numpy(np.int64)
    extra = events["saddr"].map(lambda a: setting.tap_extra_ns.get(a, 0)).to_numpy(np.int64)
    return events["ts_wall_ns"].to_numpy(np.int64) + delay, extra + AFTER_NS


def _candidate_pairs(
    packets: dict[str, np.ndarray],
    events: pd.DataFrame,
    setting: Setting,
    window_lo_ns: int,
    window_hi_extra_ns: int,
) -> pd.DataFrame:
    """(row, ev, resid_ns, late_ns, ts_skew_ms, ...) for every frame overlapping an
    event's range of its flow whose time falls in [expected - window_lo_ns, expected +
    late + window_hi_extra_ns]. ``ts_skew_ms``: the frame's TSval minus the event's time
    on the sender's TCP clock (ms), modulo 2^32 and centred on 0; NO_TS without
    timestamps."""
    seglen = segment_len(packets)
    data_rows = np.flatnonzero(seglen > 0)
    if not len(events) or not len(data_rows):
        return _no_pairs()
    wire = pd.DataFrame({k: packets[k][data_rows] for k in FLOW_KEY})
    wire["row"] = data_rows
    wire["w_ts"] = packets["ts_ns"][data_rows].astype(np.int64)
    wire["w_seq"] = packets["seq"][data_rows].astype(np.int64)
    wire["w_len"] = seglen[data_rows]
    wire["w_tsval"] = np.where(
        packets["opt_ts"][data_rows], packets["tsval"][data_rows].astype(np.int64), -1
    )
    ev = events[list(FLOW_KEY)].copy()
    expect_ns, late_ns = _event_window(events, setting)
    ev["ev"] = np.arange(len(events))
    ev["e_ts"] = expect_ns
    ev["e_late"] = late_ns
    # The TCP clock that stamps TSval is CLOCK_MONOTONIC in ms plus a per-connection
    # offset (tcp_skb_timestamp_ts() + tp->tsoffset in __tcp_transmit_skb).
    ev["e_mono_ms"] = events["ts_mono_ns"].to_numpy(np.int64) // 1_000_000
    ev["e_seq"] = events["seq"].fillna(0).to_numpy(np.int64)
    ev["e_len"] = (events["end_seq"].fillna(0).to_numpy(np.int64) - ev["e_seq"]) % (1 << 32)
    ev["e_has_seq"] = events["seq"].notna().to_numpy()
    pairs = wire.merge(ev, on=FLOW_KEY, how="inner")
    if pairs.empty:
        return _no_pairs()
    d = _signed32(pairs["w_seq"].to_numpy() - pairs["e_seq"].to_numpy())
    overlap = (d < pairs["e_len"].to_numpy()) & (d + pairs["w_len"].to_numpy() > 0)
    overlap |= ~pairs["e_has_seq"].to_numpy()
    resid = pairs["w_ts"].to_numpy() - pairs["e_ts"].to_numpy()
    ok = (
        overlap
        & (resid >= -window_lo_ns)
        & (resid <= pairs["e_late"].to_numpy() + window_hi_extra_ns)
    )
    out = pairs.loc[ok, ["row", "ev", "w_seq", "w_len"]].copy()
    out["resid_ns"] = resid[ok]
    out["late_ns"] = pairs["e_late"].to_numpy()[ok]
    tsval = pairs["w_tsval"].to_numpy()[ok]
    skew = _signed32(tsval - pairs["e_mono_ms"].to_numpy()[ok])
    out["ts_skew_ms"] = np.where(tsval >= 0, skew, NO_TS)
    return out.reset_index(drop=True)


NO_TS = np.iinfo(np.int64).min


def _no_pairs() -> pd.DataFrame:
    cols = ["row", "ev", "w_seq", "w_len", "resid_ns", "late_ns", "ts_skew_ms"]
    return pd.DataFrame({c: np.zeros(0, np.int64) for c in cols})


def _signed32(d: np.ndarray) -> np.ndarray:
    return ((np.asarray(d, dtype=np.int64) + (1 << 31)) % (1 << 32)) - (1 << 31)


def _sent_at_event(pairs: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    """Which candidate pairs have a frame sent at its event's time.

    A queue on the path (the lab's delay line on a busy machine: tens of ms, measured)
    delays an original and its retransmission alike, so arrival time alone can pair an
    event with the original. TSval says when the sender sent the frame: per connection
    the offset between its TCP clock and the events' clock is the most common skew among
    the pairs in the tight window (else among all), and a pair belongs when its skew is
    within a millisecond of it. Frames without timestamps keep the tight window.
    """
    skew = pairs["ts_skew_ms"].to_numpy()
    has_ts = skew != NO_TS
    tight = pairs["resid_ns"].to_numpy() <= pairs["late_ns"].to_numpy()
    if not has_ts.any():
        return tight
    sock = (
        events["saddr"].astype(str)
        + "|"
        + events["sport"].astype(str)
        + "|"
        + events["daddr"].astype(str)
        + "|"
        + events["dport"].astype(str)
    ).to_numpy()
    conn = sock[pairs["ev"].to_numpy()]
    table = pd.DataFrame({"conn": conn, "skew": skew, "tight": tight})[has_ts]
    offset = {}
    for c, g in table.groupby("conn"):
        pick = g[g["tight"]] if g["tight"].any() else g
        offset[c] = int(pick["skew"].mode().min())
    off = np.array([offset.get(c, 0) for c in conn], dtype=np.int64)
    near = np.abs(_signed32(skew - off)) <= 1
    return np.where(has_ts, near, tight)


def match_frames(
    packets: dict[str, np.ndarray], events: pd.DataFrame, setting: Setting
) -> np.ndarray:
    """For every row of the packet table, the index (in ``events``) of the kernel
    retransmission that frame carries, or -1. Events that never reached the wire
    (``err`` != 0) carry none."""
    event_of_row = np.full(len(packets["ts_ns"]), -1, dtype=np.int64)
    sent = (
        events["err"].fillna(0).to_numpy() == 0 if "err" in events else np.ones(len(events), bool)
    )
    pairs = _candidate_pairs(packets, events, setting, BEFORE_NS, QUEUE_NS)
    pairs = pairs[sent[pairs["ev"].to_numpy()]] if len(pairs) else pairs
    if pairs.empty:
        return event_of_row
    pairs = pairs[_sent_at_event(pairs, events)]
    if pairs.empty:
        return event_of_row
    pairs = pairs.assign(dist=np.abs(pairs["resid_ns"].to_numpy()))
    # Each frame to its nearest event...
    best = pairs.sort_values(["row", "dist", "ev"], kind="stable").drop_duplicates("row")
    # ...and an event that got two copies of the same bytes keeps the nearer one.
    best = best.sort_values(["ev", "dist"], kind="stable")
    keep = _first_copy_per_event(
        best["ev"].to_numpy(), best["w_seq"].to_numpy(), best["w_len"].to_numpy()
    )
    best = best[keep]
    event_of_row[best["row"].to_numpy()] = best["ev"].to_numpy()
    return event_of_row


def _first_copy_per_event(ev: np.ndarray, seq: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Rows sorted by (event, distance): keep a row unless an earlier row of the same
    event overlaps its bytes. Sequential, but only over matched pairs (a few per event)."""
    keep = np.ones(len(ev), dtype=bool)
    kept: list[tuple[int, int]] = []
    for i in range(len(ev)):
        if i == 0 or ev[i] != ev[i - 1]:
            kept = []
        start = int(seq[i])
        for k_start, k_len in kept:
            d = int(_signed32(np.array(start - k_start)))
            if d < k_len and d + int(length[i]) > 0:
                keep[i] = False
                break
        if keep[i]:
            kept.append((start, int(length[i])))
    return keep


def seen_before(packets: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """For each packet-table row in ``rows``: does an earlier frame of the same flow (same
    direction) carry any of its bytes? (A copy of data the capture had already seen.)"""
    out = np.zeros(len(rows), dtype=bool)
    if not len(rows):
        return out
    seglen = segment_len(packets)
    key = np.stack([packets[k].astype(np.uint64) for k in FLOW_KEY], axis=1)
    _, flow = np.unique(key, axis=0, return_inverse=True)
    flow = flow.ravel()
    members = {f: np.flatnonzero((flow == f) & (seglen > 0)) for f in np.unique(flow[rows])}
    for i, r in enumerate(rows):
        m = members[flow[r]]
        earlier = m[m < r]  # the table is in capture order
        if not len(earlier):
            continue
        d = _signed32(packets["seq"][earlier].astype(np.int64) - int(packets["seq"][r]))
        out[i] = bool(np.any((d < int(seglen[r])) & (d + seglen[earlier] > 0)))
    return out


def near_event_ms(
    packets: dict[str, np.ndarray], events: pd.DataFrame, setting: Setting, rows: np.ndarray
) -> np.ndarray:
    """For each row: the residual (ms) of the nearest event of the same bytes within
    NEAR_NS, NaN if none (diagnostics for invented rows)."""
    out = np.full(len(rows), np.nan)
    if not len(rows) or not len(events):
        return out
    sub = {k: v[rows] for k, v in packets.items()}
    pairs = _candidate_pairs(sub, events, setting, NEAR_NS, NEAR_NS)
    if pairs.empty:
        return out
    pairs = pairs.assign(dist=np.abs(pairs["resid_ns"].to_numpy()))
    best = pairs.sort_values(["row", "dist"], kind="stable").drop_duplicates("row")
    out[best["row"].to_numpy()] = best["resid_ns"].to_numpy() / 1e6
    return out


# --- judging --------------------------------------------------------------------------------


def family(kind: object) -> object:
    return FAMILY_OF_KIND.get(kind, kind) if isinstance(kind, str) else None


def _addr_text(packets: dict[str, np.ndarray], rows: np.ndarray, side: str) -> np.ndarray:
    from retranscope.schemas.packets import addr_to_str

    hi, lo, fam = packets[f"{side}_hi"][rows], packets[f"{side}_lo"][rows], packets["family"][rows]
    cache: dict[tuple[int, int, int], str] = {}
    out = np.empty(len(rows), dtype=object)
    for i, k in enumerate(zip(hi.tolist(), lo.tolist(), fam.tolist())):
        if k not in cache:
            cache[k] = addr_to_str(k[0], k[1], k[2])
        out[i] = cache[k]
    return out


def judge(
    packets: dict[str, np.ndarray], reported: pd.DataFrame, events: pd.DataFrame, setting: Setting
) -> Judged:
    """Judge the analyzer's ``reported`` rows (retransmits.parquet of a capture-only
    analysis: ``frame``, ``kind``) against the kernel's ``events`` on the capture's
    ``packets``."""
    events = events.reset_index(drop=True)
    event_of_row = match_frames(packets, events, setting)
    frame_no = packets["frame"]
    rep_frames = reported["frame"].to_numpy(np.int64) if len(reported) else np.zeros(0, int)
    rep_rows = np.searchsorted(frame_no, rep_frames)
    if len(rep_rows) and (
        np.any(rep_rows >= len(frame_no))
        or np.any(frame_no[np.clip(rep_rows, 0, len(frame_no) - 1)] != rep_frames)
    ):
        raise ValueError(f"{setting.name}: reported frames not in the capture's TCP table")
    kernel_rows = np.flatnonzero(event_of_row >= 0)
    missed_rows = np.setdiff1d(kernel_rows, rep_rows)
    rows = np.concatenate([rep_rows, missed_rows]).astype(np.int64)
    kinds = np.concatenate(
        [
            reported["kind"].to_numpy(object) if len(reported) else np.zeros(0, object),
            np.full(len(missed_rows), None, dtype=object),
        ]
    )
    ev = event_of_row[rows]
    reasons = np.where(
        ev >= 0,
        events["reason"].to_numpy(object)[np.clip(ev, 0, None)] if len(events) else None,
        None,
    )
    saddr = _addr_text(packets, rows, "saddr")
    first = ~seen_before(packets, rows)
    judged = (
        np.isin(saddr, list(setting.recorded_addrs))
        if setting.recorded_addrs
        else (np.ones(len(rows), bool))
    )
    outcome = np.empty(len(rows), dtype=object)
    is_rep = np.arange(len(rows)) < len(rep_rows)
    fam_k = np.array([family(k) for k in kinds], dtype=object)
    fam_r = np.array([family(r) for r in reasons], dtype=object)
    outcome[is_rep & (ev >= 0)] = "wrong_family"
    outcome[is_rep & (ev >= 0) & (fam_k == fam_r)] = "right_family"
    outcome[is_rep & (ev >= 0) & (kinds == reasons)] = "right_kind"
    no_event = is_rep & (ev < 0)
    outcome[no_event] = "invented"
    if setting.unreported_segments:
        outcome[no_event & ~first] = "unreported"
    outcome[~is_rep] = "missed"
    outcome[is_rep & ~judged] = "peer"
    near = np.full(len(rows), np.nan)
    inv = np.flatnonzero(outcome == "invented")
    near[inv] = near_event_ms(packets, events, setting, rows[inv])
    out = (
        pd.DataFrame(
            {
                "frame": frame_no[rows],
                "ts_ns": packets["ts_ns"][rows],
                "saddr": saddr,
                "sport": packets["sport"][rows],
                "dport": packets["dport"][rows],
                "seq": packets["seq"][rows],
                "len": segment_len(packets)[rows],
                "reason": reasons,
                "kind": kinds,
                "outcome": outcome,
                "first_copy": first,
                "near_event_ms": near,
            }
        )
        .sort_values("frame", kind="stable")
        .reset_index(drop=True)
    )
    sent = (events["err"].fillna(0).to_numpy() == 0) if len(events) else np.zeros(0, bool)
    shown = np.zeros(len(events), dtype=bool)
    shown[event_of_row[kernel_rows]] = True
    ev_table = pd.DataFrame(
        {
            "reason": events["reason"].to_numpy(object) if len(events) else np.zeros(0, object),
            "visible": shown,
        }
    )[sent]
    return Judged(setting, out, ev_table.reset_index(drop=True))


def failed(
    setting: Setting, packets: dict[str, np.ndarray], events: pd.DataFrame, error: str
) -> Judged:
    """The analysis failed: every kernel retransmission the capture shows is missed."""
    empty = pd.DataFrame({"frame": np.zeros(0, np.int64), "kind": np.zeros(0, object)})
    j = judge(packets, empty, events, setting)
    j.error = error
    return j


# --- tables -------------------------------------------------------------------------------


def counts(judged: Iterable[Judged], by: str = "scenario") -> pd.DataFrame:
    """Outcome counts per recording (``by="scenario"``) or per kernel reason
    (``by="reason"``; invented rows have no reason and are left out there), with the
    kernel's visible retransmitted frames (``kernel`` = matched + missed), the missed ones
    that are the first copy of their bytes in the capture (``missed_first_copy``: the
    original was lost before the tap or cut off), events no frame showed
    (``not_visible``) and two scores: ``family_score`` = right_family / (kernel +
    invented), ``kind_score`` = right_kind / (kernel + invented)."""
    frames = []
    evs = []
    for j in judged:
        frames.append(j.rows.assign(scenario=j.setting.name))
        evs.append(j.events.assign(scenario=j.setting.name))
    rows = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["scenario", "reason", "outcome", "first_copy"])
    )
    ev = (
        pd.concat(evs, ignore_index=True)
        if evs
        else pd.DataFrame(columns=["scenario", "reason", "visible"])
    )
    if by == "reason":
        rows = rows[rows["reason"].notna()]
    names = [j.setting.name for j in judged] if by == "scenario" else []
    index = pd.Index(sorted(set(rows[by]) | set(ev[by]) | set(names)), name=by)
    table = (
        pd.crosstab(rows[by], rows["outcome"])
        .reindex(index=index, columns=list(OUTCOMES), fill_value=0)
        .rename_axis(columns="outcome")
    )
    unseen = rows["outcome"].eq("missed") & rows["first_copy"].astype(bool)
    table["missed_first_copy"] = unseen.groupby(rows[by]).sum().reindex(index).fillna(0)
    table["missed_first_copy"] = table["missed_first_copy"].astype(int)
    table["right_family"] += table["right_kind"]  # right kind is right family too
    table["wrong_kind"] = table["right_family"] - table["right_kind"] + table["wrong_family"]
    table["kernel"] = table["right_family"] + table["wrong_family"] + table["missed"]
    not_visible = (~ev["visible"].astype(bool)).groupby(ev[by]).sum() if len(ev) else None
    table["not_visible"] = (
        not_visible.reindex(table.index).fillna(0).astype(int) if not_visible is not None else 0
    )
    denom = (table["kernel"] + table["invented"]).replace(0, np.nan)
    table["family_score"] = table["right_family"] / denom
    table["kind_score"] = table["right_kind"] / denom
    cols = [
        "kernel",
        "right_kind",
        "right_family",
        "wrong_kind",
        "wrong_family",
        "invented",
        "missed",
        "missed_first_copy",
        "not_visible",
        "peer",
        "unreported",
        "family_score",
        "kind_score",
    ]
    return table[cols]


# --- the I/O edge ---------------------------------------------------------------------------


def load_setting(directory: Path, events: pd.DataFrame | None = None) -> Setting:
    """The recording's Setting from scenario.json and run.json. Recordings made before
    capture points existed were all captured on the retransmitting host: capture point
    ``sender``, no path delay, and the recorded host is the scenario's retransmitter."""
    directory = Path(directory)
    sc_file = directory / "scenario.json"
    sc = json.loads(sc_file.read_text()) if sc_file.is_file() else {}
    run_file = directory / "run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    recorded = sc.get("recorded_addrs")
    if recorded is None:
        recorded = _catalogue_addrs(sc.get("name", directory.name))
    if recorded is None and events is not None:
        recorded = sorted(set(events["saddr"]))
    ms_to_ns = 1_000_000
    return Setting(
        name=directory.name,
        capture_point=sc.get("capture_point", "sender"),
        recorded_addrs=frozenset(recorded or ()),
        tap_delay_ns={a: round(v * ms_to_ns) for a, v in (sc.get("tap_delay_ms") or {}).items()},
        tap_extra_ns={a: round(v * ms_to_ns) for a, v in (sc.get("tap_extra_ms") or {}).items()},
        unreported_segments=int((run.get("accounting") or {}).get("unreported_segments") or 0),
        derived=sc.get("derived"),
    )


def _catalogue_addrs(name: str) -> list[str] | None:
    from retranscope.lab.netns import ADDR4, ADDR6
    from retranscope.lab.scenarios import SCENARIOS

    sc = SCENARIOS.get(name.split("__")[0])
    if sc is None:
        return None
    role = "sender" if sc.retransmitter == "client" else "receiver"  # lab roles
    return [ADDR4[role] if sc.family == 4 else ADDR6[role]]


def events_frame(table) -> pd.DataFrame:
    """The analyzer's events table (analyze/events.py) as the DataFrame the judge works on
    (nullable columns as pandas' nullable dtypes), in the same row order."""
    return to_pandas(table)


def judge_recording(directory: Path, work_dir: Path) -> Judged:
    """Analyze ``directory/capture.pcap`` alone, as a user would, and judge it."""
    from retranscope.analyze.capture import read_capture
    from retranscope.analyze.events import read_events
    from retranscope.analyze.run import run_analysis

    directory = Path(directory)
    events = events_frame(read_events(directory).table)
    setting = load_setting(directory, events)
    packets = read_capture(directory / "capture.pcap").packets
    out = Path(work_dir) / directory.name
    try:
        run_analysis(directory / "capture.pcap", None, out)
        reported = pd.read_parquet(out / "retransmits.parquet", columns=["frame", "kind"])
    except Exception as err:  # the analyzer crashing is a result to report, not to hide
        return failed(setting, packets, events, f"{type(err).__name__}: {err}")
    return judge(packets, reported, events, setting)


def recordings(corpus: Path) -> list[Path]:
    return sorted(
        d
        for d in Path(corpus).iterdir()
        if (d / "capture.pcap").is_file() and any(d.glob("events/*.parquet"))
    )


def _print_tables(judged: list[Judged], point_of: Mapping[str, str]) -> None:
    per = counts(judged)
    per.insert(0, "point", [point_of.get(n, "") for n in per.index])
    fmt = {"float_format": lambda v: f"{v:.4f}"}
    with pd.option_context(
        "display.width", 250, "display.max_rows", 1000, "display.max_columns", 30
    ):
        print("== per recording ==")
        print(per.to_string(**fmt))
        print("\n== per capture point ==")
        by_point = per.drop(columns=["family_score", "kind_score"]).groupby("point").sum()
        denom = (by_point["kernel"] + by_point["invented"]).replace(0, np.nan)
        by_point["family_score"] = by_point["right_family"] / denom
        by_point["kind_score"] = by_point["right_kind"] / denom
        print(by_point.to_string(**fmt))
        print("\n== per kernel reason ==")
        print(counts(judged, by="reason").to_string(**fmt))
    errors = [j for j in judged if j.error]
    for j in errors:
        print(f"analysis failed on {j.setting.name}: {j.error}")
    inv = pd.concat([j.rows[j.rows["outcome"] == "invented"] for j in judged])
    near = int(inv["near_event_ms"].notna().sum()) if len(inv) else 0
    total = per.sum()
    print(
        f"\nall: kernel {int(total['kernel'])}, right kind {int(total['right_kind'])}, "
        f"right family {int(total['right_family'])}, wrong family "
        f"{int(total['wrong_family'])}, invented {int(total['invented'])} ({near} with an "
        f"event of the same bytes within {NEAR_NS // 1_000_000} ms), missed "
        f"{int(total['missed'])}, analyses failed {len(errors)}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m retranscope.lab.judge",
        description="Judge capture-only analyses of lab recordings against the kernel's reasons.",
    )
    ap.add_argument("corpus", type=Path, help="directory of recordings (make_corpus.py)")
    ap.add_argument("--only", nargs="*", default=None, help="recording names")
    ap.add_argument("--csv", type=Path, default=None, help="also write every judged frame")
    args = ap.parse_args(argv)
    dirs = recordings(args.corpus)
    if args.only:
        dirs = [d for d in dirs if d.name in set(args.only)]
    if not dirs:
        print(f"no recordings in {args.corpus}", file=sys.stderr)
        return 2
    judged = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in dirs:
            judged.append(judge_recording(d, Path(tmp)))
    point_of = {
        j.setting.name: j.setting.capture_point
        + (
            "+" + "+".join(op["op"] for op in j.setting.derived.get("ops", []))
            if j.setting.derived
            else ""
        )
        for j in judged
    }
    _print_tables(judged, point_of)
    if args.csv:
        pd.concat([j.rows.assign(scenario=j.setting.name) for j in judged]).to_csv(
            args.csv, index=False
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
