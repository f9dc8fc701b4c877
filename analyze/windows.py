"""Classifying a shard a window of rows at a time: a connection too big to hold whole.

A shard (analyze/shards.py) is a set of 4-tuples classified as if it were the whole
capture. Its largest connection sets its memory. Here the shard's rows (capture order)
are classified in windows instead: window k owns rows [s, e) and is classified on

- the rows [s - 2M, e + 2M) (M: ``margin_rows``): what it owns, with the rows before it
  to warm the state up (the SRTT, the sender's replay, the bursts), and the rows after it
  that tell what it owns (a burst's end, the D-SACK or echo that calls it spurious);
- rows carried from before s - 2M, for every 4-tuple in it (``_History``): each
  direction's first HEAD_ROWS rows (the handshake, from which the options, the base of
  the sequence space, the sender's stack are read), its last CARRY_ROWS rows, and the
  rows that hold its running maxima (the most data sent, the highest ACK, the last ACK);
  a 4-tuple silent for a whole window has its rows parked meanwhile (the first, the
  maxima and the last PARKED_ROWS of each direction; up to PARKED_MAX_ROWS in all, the
  longest silent let go past it) and carried into the window it is back in;
- the shard's anchor row (the capture's first packet, which every shard holds).

Its outputs are those of the rows it owns. Two states are carried on exactly from the
window before (``Seam``): the sequence space (the rows after the carried ones unwrapped
from the carried rows' true offsets), and the SRTT (a flow's RTT samples here are the
whole flow's from the first top block of the estimator's scan at which they match the
window before's, and from there classify.rtt_state carries on from that window's state,
to the last bit). Every flow that sends data takes its RTT samples in every window, for
that chain.

Whether a window's rows come out as the whole shard would give them is checked, not
assumed, and any doubt returns None (the caller then tries wider margins, where they may
answer it, wider_margins, or classifies the shard whole):

- the flows are the same: every row two windows both hold is in the same flow in each
  (by the flow's first frame; a 4-tuple reused after its carried handshake shows here),
  and every 4-tuple with rows before a window has rows carried into it (one let go while
  silent has none);
- the facts of each flow (FLOW_COLUMNS but the counts, the MSS and the trip to the
  sender the classifier reads) are the same in every window that owns rows of it or of
  its reverse flow; a flow without a handshake has its timestamp share counted whole;
- nothing the window owns reaches before its rows: a retransmission of bytes first sent
  before them, a last ACK, last send or trigger before them, or a look-up that found
  none (a flow with no ACK; not asked of a connection whose 4-tuple has no rows before
  the window, none carried), an SRTT from a sample not carried on; nor after them: a
  retransmission whose data no ACK in the window covers; a gap in the capture
  (retrans.capture_gaps: whether a later segment fills it is the whole flow's question);
  an ACK judged lost after the capture point by a retransmission past the rows compared
  (_lost_acks); an ICMP too-big message naming a flow of the window (matched by the
  flows' first and last times);
- the rows near each cut, classified by both windows beside it (one owns them, the other
  holds M rows on their far side), come out the same in both;
- the sender's replay (sender.SenderState), started afresh in each window 2M rows before
  its own, is in the same state at the cut as the window before's, which ran on to it
  (SenderState.at_cut: the state once the ACKs before the cut are applied, without what
  the rest of the flow cannot read; a flow one window did not replay is a fresh sender
  there): from the cut on the two replays go alike, so this window's is the whole
  shard's as the first window's is. Without that, a window came out alike at the cuts
  and yet resent later rows in another recovery episode (reorder_mid_rtt50 in windows
  of 300 rows with margins of 100, jitter_rcv_rtt30_v6 in 1,000 / 100-125: a sentence
  citing another first re-send; tests/test_windows.py).

What is not proven: that nothing a row looks ahead at (the D-SACK or echo that calls it
spurious, the end of its burst) lies past e + 2M. It is checked at the cuts, where the
rows with the least ahead of them in one window lie, against the other window's (and
what the replay's state holds of it, a D-SACK's undo, in the comparison above);
tests/test_windows.py compares windows with whole shards.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retranscope.analyze.flows import FLOW_COLUMNS
from retranscope.analyze.table import (
    Nullable,
    RowsAt,
    Table,
    count_where,
    group_numbers,
    group_rank,
    group_starts,
    take,
)
from retranscope.schemas.packets import (
    SACK_EDGE_COLUMNS,
    SACK_ROWS,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
)

#: rows a window owns
WINDOW_ROWS = 5 << 15
#: rows on each side of a window's own beyond them that it is classified with (2x) and
#: that are compared with the window beside it (1x)
MARGIN_ROWS = 1 << 12
#: first rows of each 4-tuple direction carried into every later window
HEAD_ROWS = 8
#: last rows of each 4-tuple direction before a window carried into it
CARRY_ROWS = 2048
#: the rows a window's classification holds (its own, both margins twice, some carried):
#: what a windowed shard counts for in the memory of shards classified at once
WINDOW_FOOTPRINT_ROWS = WINDOW_ROWS + 5 * MARGIN_ROWS
#: a shard of more rows than this is classified in windows; up to it, whole (as before:
#: shards.SHARD_PACKETS, the shards a capture of many connections is cut into), where
#: the windows' margins would cost time (~1.2x the rows classified) for memory one
#: process already holds
WINDOWED_MIN_ROWS = 1 << 20

_NONE = np.iinfo(np.int64).min
#: flows.parquet columns that add up over the windows instead of being checked alike
_SUMMED: tuple[str, ...] = ("flow_id", "rev_flow_id", "conn_id", "last_ts_ns", "n_packets")
_SUMMED += ("n_data", "fin_seen", "rst_seen")
#: the columns of a packet table that hold only its rows with SACK blocks, when it has
#: SACK_ROWS (schemas/packets.SACK_ROWS)
_SPARSE = (SACK_ROWS, *SACK_EDGE_COLUMNS)
#: per-row flags of the classified rows compared at the cuts beside the output columns
_ROW_FLAGS = ("probe", "out_of_order", "duplicate", "seq_abs", "end_abs")


class _Doubt(Exception):
    """A window's rows may not come out as the whole shard gives them (the reason)."""


#: doubts that wider margins cannot answer: what the whole flow decides (a gap, a path
#: MTU message, a reused 4-tuple, the flows' facts), or the capture's own order
_NOT_MARGINS: tuple[str, ...] = ("the capture misses", "an ICMP", "a row is in another")
_NOT_MARGINS += ("the windows disagree", "a flow without", "the capture's first", "no rows")


def wider_margins() -> list[int]:
    """The margins a shard's windows are tried with, in turn, while they doubt for want
    of rows before or after them (a flow with many packets in flight: a retransmission's
    original, its ACK, its episode lie further away): 4x wider each time, up to half a
    window. What the widest holds is within the bound the cores share (spill._plan):
    163,840 + 4 x 65,536 rows, ~430k, two at once below SHARD_PACKETS."""
    out = [MARGIN_ROWS]
    while out[-1] * 4 <= WINDOW_ROWS // 2 and len(out) < 3:
        out.append(out[-1] * 4)
    return out


def margin_may_help(why: str | None) -> bool:
    """Could wider margins answer this doubt?"""
    return why is not None and not why.startswith(_NOT_MARGINS)


#: what a window's SRTT carries on from (rtt_state's seed, but "on")
SEED_NAMES = ("srtt", "mdev1", "mdev2", "srtt_prev", "mdev1_prev")
#: RTT samples of a flow a window keeps for the next to find where to carry on from
RECORD_SAMPLES = 4096
#: what classify.rtt_state gives per sample
_STATE = ("srtt", "mdev1", "mdev2", "rto", "cin_srtt", "cin_mdev1", "cin_mdev2")


@dataclass
class Seam:
    """What a window's classification takes from the windows before it, and gives on.

    The first ``n_extra`` rows of its table are rows carried from before it, whose true
    sequence and ACK offsets (``seq_true``, ``ack_true``) earlier windows computed.
    flows.sequence_space unwraps by steps between a flow's consecutive rows, and the rows
    left out between them break that: ``correct`` sets the carried rows to their true
    offsets and moves each flow's later rows by what its last carried row was off (its
    true predecessor: the last row before the window is always carried).

    The SRTT (``rtt``): ``records`` holds, per flow (by first frame), the RTT samples an
    earlier window took that are the whole flow's (``frame``, ``m``, their number in the
    flow ``gidx``, and where a top block of the estimator's scan begins, the state to carry
    on from: SEED_NAMES). A flow's samples here are the whole flow's from the first such
    sample at which they match the record to its end: from there the estimator carries on
    (classify.rtt_state's seed) and its values are the whole flow's to the last bit. A flow
    with no record and none in ``poisoned`` (samples no window could place), or whose
    samples here begin with the first its record holds (``_from_first``: a short flow
    begun in the rows two windows share), is seen from its first sample (``from_first``).
    ``check_rows`` lists the frames of rows whose SRTT came from a sample not placed so,
    or that have no sample before them in a flow seen before but not from its first here
    (``untrusted_frames``).
    """

    n_extra: int
    seq_true: np.ndarray
    ack_true: np.ndarray
    records: dict
    poisoned: set
    space: dict | None = None
    flow_keys: np.ndarray | None = None
    trusted: np.ndarray | None = None
    untrusted_frames: np.ndarray | None = None
    new_records: dict = field(default_factory=dict)
    #: the flows whose samples here begin with their first (keys)
    from_first: set = field(default_factory=set)
    #: the last frame the window owns: its samples after it (taken without the rows after
    #: the window) are not recorded
    last_frame: int = np.iinfo(np.int64).max
    #: the cuts at which the replay gives its state (sender.replay's ``cuts``): each one's
    #: frame and time (of the first row the window or the next owns) and the rows of the
    #: table before which a flow's data was sent before the later window's rows;
    #: ``at_cut``: per cut, {flow key: (SenderState.at_cut, the earliest ACK frame it
    #: refers to, a fresh sender's at_cut)} for the flows replayed (the others: fresh)
    cuts: list[tuple[int, int, int]] = field(default_factory=list)
    at_cut: list[dict] = field(default_factory=list)

    def correct(self, seq_abs, ack_abs, ack_flag, flow_id) -> None:
        m = self.n_extra
        if m == 0 or not len(flow_id):
            return
        n_flows = int(flow_id.max()) + 1
        for values, true, rows in (
            (seq_abs, self.seq_true, np.ones(m, dtype=bool)),
            (ack_abs, self.ack_true, ack_flag[:m]),
        ):
            r = np.flatnonzero(rows)
            last = np.full(n_flows, -1, dtype=np.int64)
            np.maximum.at(last, flow_id[r], r)
            has = last >= 0
            shift = np.zeros(n_flows, dtype=np.int64)
            shift[has] = true[last[has]] - values[last[has]]
            values[r] = true[r]
            if not shift.any():  # the common case: no flow moved 2**31 past its carried rows
                continue
            tail = values[m:]
            later = shift[flow_id[m:]] != 0
            if values is ack_abs:
                later &= ack_flag[m:]
            tail[later] += shift[flow_id[m:][later]]

    def rtt(self, s_flow, s_frame, m) -> tuple[np.ndarray, np.ndarray]:
        """classify.rtt_estimator's (SRTT, RTO) for the window's samples, carried on."""
        from retranscope.analyze.classify import SCAN_BLOCK, SCAN_LEVELS, rtt_state

        top = SCAN_BLOCK**SCAN_LEVELS
        n = len(m)
        self.trusted = np.zeros(n, dtype=bool)
        if n == 0:
            return np.zeros(0), np.zeros(0)
        assert self.flow_keys is not None
        keys = self.flow_keys[s_flow].astype(np.int64)
        gidx = np.full(n, -1, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, s_flow[1:] != s_flow[:-1]])
        ends = np.r_[starts[1:], n]
        carried = []  # (first sample here, end, its number in the flow, seed)
        for i0, i1 in zip(starts.tolist(), ends.tolist()):
            rec = self.records.get(int(keys[i0]))
            if (rec is None and int(keys[i0]) not in self.poisoned) or (
                rec is not None and _from_first(rec, s_frame[i0:i1], m[i0:i1])
            ):  # seen here from its first sample, as the estimator runs it
                self.trusted[i0:i1] = True
                gidx[i0:i1] = np.arange(i1 - i0)
                self.from_first.add(int(keys[i0]))
                continue
            if rec is None:
                continue
            found = _carry_point(rec, s_frame[i0:i1], m[i0:i1], top)
            if found is not None:
                carried.append((i0 + found[0], i1, found[1], found[2]))
        # from a flow's first sample here, as the estimator runs it; a flow carried on,
        # only up to where it is (its values there on are the carried ones, below)
        plain = np.ones(n, dtype=bool)
        for a, b, _, _ in carried:
            plain[a:b] = False
        rows = np.flatnonzero(plain)
        state = {k: np.empty(n) for k in _STATE}
        for k, v in rtt_state(s_flow[rows], m[rows]).items():
            state[k][rows] = v
        if carried:
            lengths = [b - a for a, b, _, _ in carried]
            idx = np.concatenate([np.arange(a, b) for a, b, _, _ in carried])
            pos0 = np.cumsum([0] + lengths[:-1])
            seed = {"on": np.zeros(len(idx), dtype=bool)}
            seed["on"][pos0] = True
            for i, name in enumerate(SEED_NAMES):
                seed[name] = np.zeros(len(idx))
                seed[name][pos0] = [c[3][i] for c in carried]
            on = rtt_state(np.repeat(np.arange(len(carried)), lengths), m[idx], seed)
            for k, v in on.items():
                state[k][idx] = v
            self.trusted[idx] = True
            gidx[idx] = np.concatenate(
                [g + np.arange(n_) for (_, _, g, _), n_ in zip(carried, lengths)]
            )
        for i0, i1 in zip(starts.tolist(), ends.tolist()):
            self._record(int(keys[i0]), np.arange(i0, i1), s_frame, m, gidx, state, top)
        return state["srtt"], state["rto"]

    def _record(self, key, rows, s_frame, m, gidx, state, top) -> None:
        """The flow ``key``'s samples here that are the whole flow's, for the next window."""
        assert self.trusted is not None
        trusted = self.trusted[rows]
        ok = rows[trusted & (s_frame[rows] <= self.last_frame)][-RECORD_SAMPLES:]
        if not len(ok):
            # samples no window could place: no later window can start it afresh. Those
            # all placed and after the window (a flow begun in its last rows) are the next
            # window's from the flow's first, as these are
            if key not in self.records and not trusted.all():
                self.poisoned.add(key)
            return
        rec = {"frame": s_frame[ok], "m": m[ok], "gidx": gidx[ok]}
        for name in SEED_NAMES:
            rec[name] = np.full(len(ok), np.nan)
        # a top block's first sample, with the one before it here too
        at = np.flatnonzero((rec["gidx"] % top == 0) & (rec["gidx"] > 0))
        at = at[at > 0]
        at = at[rec["gidx"][at - 1] == rec["gidx"][at] - 1]
        for name in ("srtt", "mdev1", "mdev2"):
            rec[name][at] = state["cin_" + name][ok[at]]
        rec["srtt_prev"][at] = state["srtt"][ok[at - 1]]
        rec["mdev1_prev"][at] = state["mdev1"][ok[at - 1]]
        self.new_records[key] = rec

    def check_rows(self, r_flow, r_frame, s_pos, s_ok) -> None:
        """The frames of rows whose SRTT here may not be the whole flow's."""
        assert self.flow_keys is not None and self.trusted is not None
        # a flow seen before, but not here from its first sample: a row with no sample
        # before it here may have had one before the window
        seen = np.array(
            [
                (k in self.records or k in self.poisoned) and k not in self.from_first
                for k in self.flow_keys.tolist()
            ],
            dtype=bool,
        )
        placed = np.zeros(len(s_ok), dtype=bool)
        if len(self.trusted):
            placed = s_ok & self.trusted[np.clip(s_pos, 0, len(self.trusted) - 1)]
        bad = (s_ok & ~placed) | (~s_ok & seen[r_flow])
        self.untrusted_frames = r_frame[bad]


def _from_first(rec: dict, frame: np.ndarray, m: np.ndarray) -> bool:
    """Do a window's samples of a flow (``frame``, ``m``) begin with the flow's first
    sample, as an earlier window's record holds it (its number 0), and match the record
    to its end? (A short flow that began in the rows two windows share: no top block of
    the estimator's scan to carry on from, and none needed.)"""
    if not len(frame) or rec["gidx"][0] != 0 or frame[0] != rec["frame"][0]:
        return False
    end = int(np.searchsorted(frame, rec["frame"][-1], "right"))
    n = len(rec["frame"])
    return end == n and np.array_equal(frame[:n], rec["frame"]) and np.array_equal(m[:n], rec["m"])


def _carry_point(rec: dict, frame: np.ndarray, m: np.ndarray, top: int):
    """Where a window's samples of a flow (``frame``, ``m``) match an earlier window's
    record from a top block's start to the record's end: (the window's sample there, its
    number in the flow, the seed), or None."""
    for c in np.flatnonzero(~np.isnan(rec["srtt"])).tolist():
        j = int(np.searchsorted(frame, rec["frame"][c]))
        if j >= len(frame) or frame[j] != rec["frame"][c]:
            continue
        fr = rec["frame"][c:]
        end = int(np.searchsorted(frame, fr[-1], "right"))
        if end - j == len(fr) and np.array_equal(frame[j:end], fr):
            if np.array_equal(m[j:end], rec["m"][c:]):
                return j, int(rec["gidx"][c]), tuple(rec[name][c] for name in SEED_NAMES)
    return None


def _take_rows(packets: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``idx`` of a packet table, in that order, with its sparse SACK edges
    (schemas/packets.SACK_ROWS) where it has them."""
    if SACK_ROWS not in packets:
        return {k: v[idx] for k, v in packets.items()}
    out = {k: v[idx] for k, v in packets.items() if k != SACK_ROWS and k not in SACK_EDGE_COLUMNS}
    rows = packets[SACK_ROWS]
    pos = np.searchsorted(rows, idx)
    hit = pos < len(rows)
    hit[hit] = rows[pos[hit]] == idx[hit]
    out[SACK_ROWS] = np.flatnonzero(hit)
    for k in SACK_EDGE_COLUMNS:
        out[k] = packets[k][pos[hit]]
    return out


def _concat_rows(
    parts: list[dict[str, np.ndarray]], into: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Packet tables one after another (their sparse SACK rows renumbered); the dense
    columns written into the first rows of ``into``'s, where they fit."""
    m = sum(len(p["frame"]) for p in parts)
    out = {}
    for k in parts[0]:
        if k == SACK_ROWS:
            continue
        if into is not None and k in into and len(into[k]) >= m:
            out[k] = np.concatenate([p[k] for p in parts], out=into[k][:m])
        else:
            out[k] = np.concatenate([p[k] for p in parts])
    if SACK_ROWS in parts[0]:
        base = np.cumsum([0] + [len(p["frame"]) for p in parts[:-1]])
        out[SACK_ROWS] = np.concatenate([p[SACK_ROWS] + b for p, b in zip(parts, base)])
    return out


def tuple_dir(packets: dict[str, np.ndarray]) -> np.ndarray:
    """Each row's 4-tuple and direction as one number (both directions of a tuple differ
    in the last bit only)."""
    if "tuple" in packets:  # a spilled shard's: (tuple number << 1) | direction
        return packets["tuple"].astype(np.int64)
    from retranscope.analyze.flows import _mix64
    from retranscope.analyze.shards import canonical_tuple

    first, cols = canonical_tuple(packets)
    h = (_mix64(cols) >> np.uint64(2)).astype(np.int64)
    return h * 2 + (~first).astype(np.int64)


def _slice_rows(packets: dict[str, np.ndarray], a: int, b: int) -> dict[str, np.ndarray]:
    """Rows [a, b) of a packet table, as views (its sparse SACK rows renumbered)."""
    if SACK_ROWS not in packets:
        return {k: v[a:b] for k, v in packets.items()}
    i, j = np.searchsorted(packets[SACK_ROWS], [a, b])
    out = {k: v[a:b] for k, v in packets.items() if k != SACK_ROWS and k not in SACK_EDGE_COLUMNS}
    out[SACK_ROWS] = packets[SACK_ROWS][i:j] - a
    out.update({k: packets[k][i:j] for k in SACK_EDGE_COLUMNS})
    return out


def merged_blocks(streams: list[Iterator[dict[str, np.ndarray]]]) -> Iterator[dict]:
    """Blocks of rows from several streams of blocks, each in capture order, merged into
    capture order (by frame): each step gives the rows up to the frame that every stream
    still going has reached (none of them can bring a row below it)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    held: list[dict[str, np.ndarray]] = [{} for _ in streams]  # rows not given yet
    live = set(range(len(streams)))
    while True:
        for i in sorted(live):
            if not held[i] or not len(held[i]["frame"]):
                block = next(streams[i], None)
                if block is None:
                    live.discard(i)
                else:
                    held[i] = block
        if not any(h and len(h["frame"]) for h in held):
            return
        if len(live) == 1 and sum(bool(h) and len(h["frame"]) > 0 for h in held) == 1:
            (i,) = live  # the rest are done: this one's blocks as they are
            yield held[i]
            held[i] = {}
            continue
        upto = min((int(held[i]["frame"][-1]) for i in live), default=np.iinfo(np.int64).max)
        out = []
        for i, h in enumerate(held):
            if h and len(h["frame"]):
                cut = int(np.searchsorted(h["frame"], upto, "right"))
                out.append(_slice_rows(h, 0, cut))
                held[i] = _slice_rows(h, cut, len(h["frame"]))
        rows = _concat_rows(out)
        if not np.all(rows["frame"][1:] >= rows["frame"][:-1]):
            rows = _take_rows(rows, np.argsort(rows["frame"], kind="stable"))
        yield rows


class _Rows:
    """The shard's rows from ``blocks`` (consecutive packet tables in capture order): the
    blocks that hold rows still to be asked for."""

    def __init__(self, blocks: Iterator[dict[str, np.ndarray]]):
        self.blocks = blocks
        self.held: list[tuple[int, dict[str, np.ndarray]]] = []
        self.end = 0

    def get(self, lo: int, hi: int) -> list[dict[str, np.ndarray]]:
        """Rows [lo, hi) as views of the blocks, in order."""
        while self.end < hi:
            block = next(self.blocks)
            self.held.append((self.end, block))
            self.end += len(block["frame"])
        out = []
        for g, b in self.held:
            a, z = max(lo, g) - g, min(hi, g + len(b["frame"])) - g
            if a < z:
                out.append(_slice_rows(b, a, z))
        return out

    def drop_below(self, lo: int) -> None:
        """Let the blocks wholly below row ``lo`` go."""
        self.held = [(g, b) for g, b in self.held if g + len(b["frame"]) > lo]


#: rows of a 4-tuple direction kept while its 4-tuple is silent (in no window's rows):
#: besides its first HEAD_ROWS and the rows that hold its maxima, its last PARKED_ROWS
PARKED_ROWS = 64
#: rows parked at most (~100 bytes each): past it the 4-tuples silent longest are let
#: go, and a window they are back in doubts (_check_carried): memory does not grow with
#: the number of connections a windowed shard has seen end
PARKED_MAX_ROWS = 1 << 18


@dataclass
class _History:
    """Rows carried from before a window: a packet table and, per row, its row number in
    the shard, its tuple_dir and its true offsets; and ``parked``, the rows of 4-tuples
    silent in the windows since (their first, last and maxima rows), carried into the
    first window their 4-tuple is in again."""

    rows: dict[str, np.ndarray] | None = None
    gidx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tdir: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seq: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ack: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    parked: _History | None = None

    def for_window(self, tuples_in: np.ndarray, anchor: int) -> _History:
        """The carried rows of the 4-tuples of a window's rows (``tuples_in``, tuple_dir >> 1
        of each), and the anchor; the other 4-tuples' rows parked."""
        here, gone = self._split(tuples_in, anchor)
        back, still = (
            self.parked._split(tuples_in, anchor) if self.parked is not None else (None, None)
        )
        out = _merged([h for h in (here, back) if h is not None])
        parked = [h for h in (_trimmed(gone) if gone is not None else None, still) if h is not None]
        out.parked = _within_budget(_merged(parked)) if parked else None
        return out

    def _split(self, tuples_in: np.ndarray, anchor: int):
        """(the rows of ``tuples_in``'s 4-tuples and the anchor, the others) or Nones."""
        if self.rows is None:
            return None, None
        mine = self.tdir >> 1
        if len(mine) and 0 <= mine.min() and mine.max() < 4 * len(tuples_in) + 1024:
            seen = np.zeros(int(mine.max()) + 1, dtype=bool)  # small numbers: a table
            seen[tuples_in[tuples_in < len(seen)]] = True
            keep = seen[mine]
        else:
            keep = np.isin(mine, tuples_in)
        keep |= self.gidx == anchor
        return self._take(np.flatnonzero(keep)), self._take(np.flatnonzero(~keep))

    def _take(self, idx: np.ndarray) -> _History | None:
        if not len(idx) or self.rows is None:
            return None
        gidx, tdir, seq, ack = (a[idx] for a in self._arrays())
        return _History(_take_rows(self.rows, idx), gidx, tdir, seq, ack)

    def _arrays(self):
        return self.gidx, self.tdir, self.seq, self.ack


def _merged(parts: list[_History]) -> _History:
    """Histories' rows in one, in shard order."""
    if not parts:
        return _History()
    if len(parts) == 1:
        return parts[0]
    rows = _concat_rows([h.rows for h in parts if h.rows is not None])
    arrays = [np.concatenate(a) for a in zip(*(h._arrays() for h in parts))]
    order = np.argsort(arrays[0], kind="stable")
    gidx, tdir, seq, ack = (a[order] for a in arrays)
    return _History(_take_rows(rows, order), gidx, tdir, seq, ack)


def _within_budget(h: _History) -> _History | None:
    """The parked rows, those of the 4-tuples silent longest let go past PARKED_MAX_ROWS."""
    if len(h.gidx) <= PARKED_MAX_ROWS:
        return h
    t = h.tdir >> 1
    names, inv = np.unique(t, return_inverse=True)
    last = np.full(len(names), -1, dtype=np.int64)
    np.maximum.at(last, inv, h.gidx)
    count = np.bincount(inv, minlength=len(names))
    newest = np.argsort(-last, kind="stable")
    fits = newest[np.cumsum(count[newest]) <= PARKED_MAX_ROWS]
    keep = np.zeros(len(names), dtype=bool)
    keep[fits] = True
    return h._take(np.flatnonzero(keep[inv]))


def _trimmed(h: _History) -> _History | None:
    """The rows of a silent 4-tuple's history it keeps while silent: per direction, its
    first HEAD_ROWS and last PARKED_ROWS rows, and those that hold its most data sent
    and its highest ACK, and its last ACK (what _carried keeps but the long tail)."""
    rows = h.rows
    assert rows is not None
    o = np.lexsort((h.gidx, h.tdir))  # by direction, then in shard order
    t = h.tdir[o]
    start, group, rank = np.flatnonzero(group_starts(t)), group_numbers(t), group_rank(t)
    keep = (rank < HEAD_ROWS) | (rank >= np.bincount(group)[group] - PARKED_ROWS)
    flags = rows["flags"][o]
    end = h.seq[o] + rows["payload_len"][o] + ((flags & (TCP_SYN | TCP_FIN)) != 0)
    keep |= end == np.maximum.reduceat(end, start)[group]
    is_ack = (flags & TCP_ACK) != 0
    ack = np.where(is_ack, h.ack[o], _NONE)
    keep |= is_ack & (ack == np.maximum.reduceat(ack, start)[group])
    a = np.flatnonzero(is_ack)
    if len(a):  # each direction's last ACK
        keep[a[np.r_[group[a][1:] != group[a][:-1], True]]] = True
    return h._take(np.sort(o[keep]))


def _carried(packets, gidx, tdir, space, below: int, anchor: int) -> _History:
    """The rows of a window's table before row ``below`` of the shard that the windows
    after it carry (see the module docstring), with their true offsets."""
    cand = np.flatnonzero(gidx < below)
    if not len(cand):
        return _History()
    t = tdir[cand]
    names = np.unique(np.concatenate([t[:1024], t[-4096:]]))
    if len(names) <= 8 and np.isin(t, names).all():  # a connection or two: the common case
        groups = [cand[t == x] for x in names]  # each in capture order (the table is)
    else:
        o = cand[np.argsort(t, kind="stable")]
        cut = np.flatnonzero(np.diff(tdir[o])) + 1
        groups = np.split(o, cut)
    is_ack = (packets["flags"] & TCP_ACK) != 0
    keep = [cand[gidx[cand] == anchor]]
    for rows in groups:
        keep += [rows[:HEAD_ROWS], rows[-CARRY_ROWS:]]
        acks = rows[is_ack[rows]]
        for r, value in ((rows, space["end_abs"]), (acks, space["ack_abs"])):
            if len(r):  # the last row holding the most: what sent_hi / the ACK stood at
                v = value[r]
                keep.append(
                    r[len(v) - 1 - int(np.argmax(v[::-1])) : len(v) - int(np.argmax(v[::-1]))]
                )
        keep.append(acks[-1:])
    rows = np.unique(np.concatenate(keep))
    return _History(
        _take_rows(packets, rows),
        gidx[rows],
        tdir[rows],
        space["seq_abs"][rows],
        space["ack_abs"][rows],
    )


def _cells(col) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of a column, nulls (None or Nullable) as invalid."""
    if isinstance(col, Nullable):
        return np.asarray(col.values), np.asarray(col.valid, dtype=bool)
    a = np.asarray(col)
    if a.dtype == object:
        valid = np.array([v is not None for v in a], dtype=bool)
        return a, valid
    return a, np.ones(len(a), dtype=bool)


def _same_cells(a, b) -> np.ndarray:
    """Row by row: do two columns hold the same value (or both null)?"""
    va, ok_a = _cells(a)
    vb, ok_b = _cells(b)
    if va.dtype == object or vb.dtype == object:
        eq = np.array([x == y for x, y in zip(va.tolist(), vb.tolist())], dtype=bool)
    else:
        eq = va == vb
    return (ok_a == ok_b) & (eq | ~ok_a)


def _view(classified: Table, flows: Table, c_rows: np.ndarray, c_g: np.ndarray) -> dict:
    """The classified rows ``c_rows`` as two windows' views of them are compared: by shard
    row, their output columns, flags, and flow (by its first frame)."""
    from retranscope.analyze.pipeline import _wire_table

    o = c_rows[np.argsort(c_g[c_rows], kind="stable")]
    c = take(classified, o)
    out = _wire_table(flows, c)
    out["flow_id"] = flows["first_frame"][c["flow_id"]]
    out.update({k: c[k] for k in _ROW_FLAGS if k in c})
    out["row"] = c_g[o]
    return out


def _check_same_view(a: dict, b: dict) -> None:
    if len(a["row"]) != len(b["row"]) or not np.array_equal(a["row"], b["row"]):
        raise _Doubt("the rows beside a cut are not alike in the windows on both sides")
    for name in a:
        if not _same_cells(a[name], b[name]).all():
            raise _Doubt(f"the windows beside a cut disagree on {name}")


def classify_in_windows(
    blocks: Iterator[dict[str, np.ndarray]],
    n: int,
    too_big: list[dict] | None,
    tuples: dict[str, np.ndarray] | None = None,
    anchor_frame: int = -1,
    borrowed_frame: int = -1,
    window_rows: int | None = None,
    margin_rows: int | None = None,
    directory: Path | None = None,
):
    """The shards.Part of a shard of ``n`` rows, read in ``blocks`` (consecutive packet
    tables in capture order), classified a window at a time, or (None, why) where the
    windows may not give what the whole shard gives. ``anchor_frame``: the frame of the
    capture's first packet (carried into every window; the shard's first row, else the
    windows are not tried: a clock that steps back); ``borrowed_frame``: the same, when
    the shard holds it as a copy (its flow is dropped by the merge: Part.drop_flow);
    ``tuples``: as pipeline.classify_part's; ``directory``: where the windows' output rows
    are stored as they are done (the Part's ``wire`` is then a WindowRows; None: held)."""
    if n == 0:
        return None, "no rows"
    window_rows = window_rows or WINDOW_ROWS
    margin_rows = margin_rows or MARGIN_ROWS
    if 2 * margin_rows > window_rows:  # the next window would start before this one
        raise ValueError(f"margins of {margin_rows} rows need windows of {2 * margin_rows}+")
    anchor = 0 if anchor_frame >= 0 else -1
    rows = _Rows(blocks)
    table: dict[str, np.ndarray] = {}  # every window's table written into the same pages
    hist = _History()
    srtt: tuple[dict, set] = ({}, set())  # Seam.records, Seam.poisoned
    acc = _Windows(directory)
    prev = None  # (shard rows, their flows' keys, the view at the cut) of the window before
    before = _Seen()  # the 4-tuples of the rows before the next window's
    try:
        for s in range(0, n, window_rows):
            e = min(n, s + window_rows)
            lo, hi = max(0, s - 2 * margin_rows), min(n, e + 2 * margin_rows)
            cur = rows.get(lo, hi)
            if s == 0 and anchor_frame >= 0 and cur[0]["frame"][0] != anchor_frame:
                raise _Doubt("the capture's first packet in time is not its first in order")
            tuples_in = np.concatenate([tuple_dir(c) for c in cur]) >> 1
            extra = hist.for_window(tuples_in, anchor)
            _check_carried(_distinct(tuples_in), extra.tdir >> 1, before)
            size = hi - lo + len(extra.gidx)
            if not table or len(table["frame"]) < size:  # grown, with room to spare, seldom
                table = {}  # the old one's pages go before the new one's are taken
                size += 4 * CARRY_ROWS
                table = {k: np.empty(size, v.dtype) for k, v in cur[0].items() if k not in _SPARSE}
            packets = _concat_rows(cur if extra.rows is None else [extra.rows, *cur], table)
            del cur
            nxt = e - 2 * margin_rows  # the next window's first row
            rows.drop_below(nxt)
            gidx = np.concatenate([extra.gidx, np.arange(lo, hi)])
            seam = Seam(len(extra.gidx), extra.seq, extra.ack, *srtt)
            m = seam.n_extra
            seam.last_frame = int(packets["frame"][m + e - 1 - lo])
            for at, sent in ((s, m), (e, m + nxt - lo)):  # the cuts before and after
                if 0 < at < n:  # (what was sent before the later window's rows: sent)
                    seam.cuts.append(
                        (
                            int(packets["frame"][m + at - lo]),
                            int(packets["ts_ns"][m + at - lo]),
                            sent,
                        )
                    )
            w = _window(
                packets, gidx, (s, e, lo, hi == n), seam, too_big, tuples, margin_rows, prev
            )
            srtt[0].update(seam.new_records)
            acc.add(w)
            later = gidx >= nxt
            after = seam.at_cut[-1] if seam.at_cut and e < n else {}
            prev = (gidx[later], w.row_key[later], w.view_after, after)
            if e < n:
                tdir = tuple_dir(packets)
                hist = _carried(packets, gidx, tdir, w.space, nxt, anchor)
                hist.parked = extra.parked  # the silent 4-tuples' rows, carried on
                before.add(_distinct(tdir[: np.searchsorted(gidx, nxt)] >> 1))
                del tdir
            # nothing of this window's table outlives it: the next one's is as big
            del packets, w, gidx, later, seam
        return acc.part(borrowed_frame), None
    except _Doubt as why:
        acc.remove()
        return None, str(why)


@dataclass
class _Window:
    """One window's own outputs and what the checks compare."""

    facts: dict[str, np.ndarray]
    wire: Table
    row_key: np.ndarray
    view_after: dict | None
    space: dict
    acks_lost: int


def _window(packets, gidx, bounds, seam, too_big, tuples, margin_rows, prev) -> _Window:
    """Classify one window (``bounds``: the rows it owns [s, e), its first row lo, and
    whether it is the shard's last)."""
    from retranscope.analyze.classify import _too_big_by_flow
    from retranscope.analyze.pipeline import (
        _not_retransmitted,
        _wire_table,
        classify_capture,
        is_retransmission,
    )

    s, e, lo, last = bounds
    notes: dict = {}
    flow_id, flows, classified = classify_capture(packets, notes, too_big, tuples, seam=seam)
    space = seam.space
    assert space is not None
    n_lost = _lost_acks(notes, classified, gidx, bounds, seam.n_extra, margin_rows, prev)
    if too_big and _too_big_by_flow(flows, too_big):  # matched by the flows' first, last times
        raise _Doubt("an ICMP too-big message names a flow of the window")
    own = (gidx >= s) & (gidx < e)
    if own[notes["gaps"]["hole_rows"]].any():
        raise _Doubt("the capture misses data of a flow")
    key = flows["first_frame"].astype(np.int64)
    row_key = key[flow_id]
    if prev is not None:  # the window before's last rows are this one's first, in turn
        m = seam.n_extra
        both = row_key[m : m + len(prev[0])]
        if not (
            np.array_equal(gidx[m : m + len(prev[0])], prev[0]) and np.array_equal(both, prev[1])
        ):
            raise _Doubt("a row is in another flow in the window before (a 4-tuple reused)")
    c_g = gidx[classified["pkt"]]
    c_own = (c_g >= s) & (c_g < e)
    rtx = np.flatnonzero(is_retransmission(classified) & c_own)
    if lo > 0:
        _reaches_back(packets, flow_id, space, classified, rtx, seam.n_extra)
    if not last:
        # the first ACK that covers a retransmission's data lies after it: one the window
        # does not reach may yet come (causes._receiver_ack)
        if not _cells(classified["ack_delay_ns"][rtx])[1].all():
            raise _Doubt("a retransmission's data is not acknowledged within its window")
    if (
        seam.untrusted_frames is not None
        and np.isin(classified["frame"][rtx], seam.untrusted_frames).any()
    ):
        raise _Doubt("a retransmission's SRTT is not carried on from the window before")
    margin = margin_rows
    if prev is not None:  # the replays' states at the cut between the two (Seam.cuts)
        here = seam.at_cut[0] if seam.at_cut else {}
        _check_same_senders(prev[3], here, int(packets["frame"][seam.n_extra]))
    if prev is not None and prev[2] is not None:
        before = np.flatnonzero((c_g >= s - margin) & (c_g < s + margin))
        _check_same_view(prev[2], _view(classified, flows, before, c_g))
    after = np.flatnonzero((c_g >= e - margin) & (c_g < e + margin))
    view_after = _view(classified, flows, after, c_g)
    wire = _wire_table(flows, take(classified, rtx))
    wire["flow_id"] = key[wire["flow_id"]]
    _, per_flow = _not_retransmitted(flows, take(classified, np.flatnonzero(c_own)))
    facts = _facts(packets, flow_id, flows, own, notes.get("flow_facts", {}), per_flow)
    return _Window(facts, wire, row_key, view_after, space, n_lost)


def _distinct(a: np.ndarray) -> np.ndarray:
    """The distinct values of ``a`` (a spilled shard's tuple numbers are small: a table)."""
    if len(a) and 0 <= a.min() and a.max() < 4 * len(a) + 1024:
        seen = np.zeros(int(a.max()) + 1, dtype=bool)
        seen[a] = True
        return np.flatnonzero(seen)
    return np.unique(a)


class _Seen:
    """A set of 4-tuple numbers: flags where they are small (a spilled shard numbers its
    4-tuples from 0), else a set (tuple_dir's hashes, a table in memory)."""

    SMALL = 1 << 28

    def __init__(self) -> None:
        self.flags = np.zeros(0, dtype=bool)
        self.other: set[int] = set()

    def add(self, t: np.ndarray) -> None:
        small = (t >= 0) & (t < self.SMALL)
        if small.any():
            top = int(t[small].max()) + 1
            if top > len(self.flags):
                self.flags = np.concatenate(
                    [self.flags, np.zeros(max(top, 2 * len(self.flags)) - len(self.flags), bool)]
                )
            self.flags[t[small]] = True
        self.other.update(t[~small].tolist())

    def any_of(self, t: np.ndarray) -> bool:
        small = (t >= 0) & (t < self.SMALL)
        inside = t[small & (t < len(self.flags))]
        return bool(self.flags[inside].any()) or any(x in self.other for x in t[~small].tolist())


def _check_carried(tuples_in: np.ndarray, carried: np.ndarray, before: _Seen) -> None:
    """Raise _Doubt where a 4-tuple of a window's rows had rows before it but none are
    carried: a connection silent for a whole window whose rows were let go (parked past
    PARKED_MAX_ROWS), whose handshake, offsets and history are lost here."""
    lost = np.setdiff1d(tuples_in, carried)
    if len(lost) and before.any_of(lost):
        raise _Doubt("a connection silent for a whole window has no rows carried into the next")


def _check_same_senders(before: dict, here: dict, lo_frame: int) -> None:
    """Raise _Doubt unless each flow's sender, replayed by the window before to the cut
    and by this one from its first rows (both sender.SenderState.at_cut; a flow one of
    them did not replay: a fresh sender there), is in the same state: from there on the
    two replays go alike, and this window's is the whole shard's (the window before's
    being so, in turn from the first window). And the ACKs the state refers to must be
    among this window's own rows, with all that follows them (the carried rows before
    are a flow's head and last rows, not all of them)."""
    for key in before.keys() | here.keys():
        fresh = (before.get(key) or here[key])[2]  # a fresh sender's, in either window
        b, h = before.get(key), here.get(key)
        theirs = b[0] if b is not None else fresh
        mine = h[0] if h is not None else fresh
        if theirs != mine:
            # no_probe: read off the whole flow (sender.replay); a state of ACKs applied out
            # of order (at_cut's marker) is shorter
            if len(theirs) == len(mine) and theirs[1] != mine[1]:
                raise _Doubt("the windows disagree on whether a flow's sender arms loss probes")
            raise _Doubt("the sender's replayed state at a cut differs in the windows beside it")
        if h is not None and h[1] < lo_frame:
            raise _Doubt("the sender's state at a cut refers to an ACK before the window")


def _lost_acks(notes, classified, gidx, bounds, n_extra: int, margin: int, prev) -> int:
    """How many of the ACKs the window owns were lost after the capture point, as the
    whole shard judges them (classify._received_acks), or raise _Doubt.

    An ACK is judged lost by a later retransmission of bytes it covered, from the first
    ACK that covered them (the range's first) to the last that had to reach the sender
    before it. The whole shard's ranges over a window's rows are the window's where every
    retransmission that marks rows up to the compared rows past its end (e + M) lies in
    the window at or before them (those after are told by the window that holds them: a
    range reaching back past the end of the window before's rows, e + 2M there, doubts);
    and a retransmission the window owns cites the range's first ACK as the whole shard
    does where that ACK is one of the window's own rows, not a carried one (the rows
    carried hold each flow's highest ACK before and its last: the ACK before it is judged
    on the same cumulative ACK)."""
    lost_rows, lost_at = notes.get("lost_acks", (np.zeros(0, dtype=np.int64), None))
    if not len(lost_rows):
        return 0
    s, e, _, _ = bounds
    by = np.flatnonzero(lost_at >= 0)
    by_g, first_g = gidx[classified["pkt"][by]], gidx[lost_at[by]]
    if ((by_g >= e + margin) & (first_g < e + margin)).any():
        raise _Doubt("an ACK lost after the capture point is told past the rows compared")
    if prev is not None and ((by_g >= s + 2 * margin) & (first_g < s + 2 * margin)).any():
        raise _Doubt("an ACK lost after the capture point is told past the window before")
    own = (by_g >= s) & (by_g < e)
    if (lost_at[by[own]] < n_extra).any():
        raise _Doubt("a retransmission cites a lost ACK carried from before its window")
    g = gidx[lost_rows]
    return int(((g >= s) & (g < e)).sum())


def _reaches_back(packets, flow_id, space, classified, rtx, n_extra: int) -> None:
    """Raise _Doubt where a retransmission a window owns depends on rows before the window
    that it lacks (see the module docstring). A connection whose 4-tuple has no rows
    before the window (none carried) lacks none: its look-ups that find nothing find
    nothing in the whole shard either (a SYN's, the first data's before any ACK)."""
    if n_extra:
        tup = tuple_dir(packets) >> 1
        rtx = rtx[np.isin(tup[classified["pkt"][rtx]], tup[:n_extra])]
    if not len(rtx):
        return
    n_flows = int(flow_id.max()) + 1
    sent = np.full(n_flows, _NONE, dtype=np.int64)
    np.maximum.at(sent, flow_id[:n_extra], space["end_abs"][:n_extra])
    f = classified["flow_id"][rtx]
    if (classified["seq_abs"][rtx] < sent[f]).any():
        raise _Doubt("a retransmission resends bytes first sent before its window")
    t0, frame0 = packets["ts_ns"][n_extra], packets["frame"][n_extra]
    ts = classified["ts_ns"][rtx]
    for name in ("since_last_ack_ns", "since_last_send_ns"):
        v, ok = _cells(classified[name][rtx])
        if not (ok & (ts - np.where(ok, v, 0).astype(np.int64) >= t0)).all():
            raise _Doubt(f"a retransmission's {name} reaches before its window")
    if "trigger_frame" in classified:
        v, ok = _cells(classified["trigger_frame"][rtx])
        if (ok & (np.where(ok, v, frame0).astype(np.int64) < frame0)).any():
            raise _Doubt("a retransmission's trigger lies before its window")


def _facts(packets, flow_id, flows, own, flow_facts, per_flow) -> dict[str, np.ndarray]:
    """Per flow that owns rows here (or whose reverse flow does): its flows row, what the
    classifier read of it, and its own rows' counts."""
    n_flows = len(flows["flow_id"])
    fo = flow_id[own]
    flags = packets["flags"][own]
    counts = {
        "n_packets": np.bincount(fo, minlength=n_flows),
        "n_data": count_where(fo, packets["payload_len"][own] > 0, n_flows),
        "fin_seen": count_where(fo, (flags & TCP_FIN) != 0, n_flows),
        "rst_seen": count_where(fo, (flags & TCP_RST) != 0, n_flows),
        "n_ts": count_where(fo, packets["opt_ts"][own].astype(bool), n_flows),
    }
    last = np.full(n_flows, _NONE, dtype=np.int64)
    np.maximum.at(last, fo, packets["ts_ns"][own])
    counts["last_ts_ns"] = last
    rev = flows["rev_flow_id"]
    mine = counts["n_packets"] > 0
    rel = np.flatnonzero(mine | ((rev >= 0) & mine[np.clip(rev, 0, None)]))
    key = flows["first_frame"].astype(np.int64)
    out = {c: flows[c][rel] for c in FLOW_COLUMNS}
    out["key"] = key[rel]
    out["rev_key"] = np.where(rev >= 0, key[np.clip(rev, 0, None)], -1)[rel]
    # what classify_table read of the flows with retransmissions in it (the others': none)
    want = flow_facts.get("want", np.zeros(n_flows, dtype=bool))
    for k in ("mss", "shift_us"):
        v = flow_facts.get(k, np.zeros(n_flows, dtype=np.int64))
        out["read_" + k] = np.where(want, v, _NONE).astype(np.int64)[rel]
    out.update({"own_" + k: v[rel] for k, v in counts.items()})
    out.update({"own_" + k: v[rel] for k, v in per_flow.items()})
    return out


#: the columns of a shard's output rows that what follows its classification reads of
#: every row (streamed.finish_part: the order, summary.json's sums, flows.parquet's
#: per-flow counts): what a windowed shard holds of each, its rows being on disk
BRIEF_COLUMNS = ("flow_id", "ts_wall_ns", "frame", "kind", "spurious", "srtt_us", "evidence")


class WindowRows:
    """A windowed shard's output rows: each window's on disk (``stored``, flow ids the
    flows' first frames), and in memory only their BRIEF_COLUMNS (``brief``, flow ids the
    shard's), in the windows' order. ~60 bytes a row held instead of ~560 (the sentences,
    the addresses and ~40 columns): what the shard holds grows with its retransmissions
    by those few columns only."""

    def __init__(self, stored: list, brief: Table, keys: np.ndarray, new_id: np.ndarray):
        self.stored = stored
        self.starts = np.cumsum([0] + [t.n_rows for t in stored])
        self.brief = brief
        self.keys, self.new_id = keys, new_id

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, idx: np.ndarray, flow_of) -> Table:
        """Rows ``idx`` (numbers in the windows' order), their flow ids ``flow_of`` of the
        shard's."""
        win = np.searchsorted(self.starts, idx, "right") - 1
        rows = RowsAt(len(idx))
        for k in np.unique(win).tolist() or [0]:
            pos = np.flatnonzero(win == k)
            at = idx[pos] - self.starts[k]
            lo, hi = (int(at.min()), int(at.max()) + 1) if len(at) else (0, 0)
            rows.add(take(self.stored[k].read(lo, hi), at - lo), pos)
        out = rows.result(self.stored[0].columns)
        out["flow_id"] = flow_of(self.new_id[np.searchsorted(self.keys, out["flow_id"])])
        return out

    def remove(self) -> None:
        for t in self.stored:
            t.path.unlink(missing_ok=True)


class _Windows:
    """The windows' outputs, merged into the shard's Part; their output rows stored in
    ``directory`` as each window is done (None: held, as the tests compare them)."""

    def __init__(self, directory: Path | None = None):
        self.facts: list[dict] = []
        self.wires: list = []
        self.briefs: list[Table] = []
        self.acks_lost = 0
        self.directory = directory

    def add(self, w: _Window) -> None:
        self.facts.append(w.facts)
        if self.directory is None:
            self.wires.append(w.wire)
        else:
            from retranscope.analyze.stored import store

            fd, name = tempfile.mkstemp(prefix="window-", dir=self.directory)
            os.close(fd)
            self.wires.append(store(w.wire, name))
            self.briefs.append({c: w.wire[c] for c in BRIEF_COLUMNS})
        self.acks_lost += w.acks_lost

    def remove(self) -> None:
        """The stored rows of windows whose shard is classified whole after all."""
        for t in self.wires:
            if hasattr(t, "path"):
                t.path.unlink(missing_ok=True)

    def part(self, borrowed_frame: int):
        from retranscope.analyze.shards import (
            Part,
            _concat,
            _tuple_first_frame,
            number_flows,
        )

        f = {k: _concat([x[k] for x in self.facts]) for k in self.facts[0]}
        o = np.argsort(f["key"], kind="stable")
        f = take(f, o)
        k = f["key"]
        first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        checked = [c for c in f if c[:4] not in ("own_", "read") and c not in _SUMMED]
        group = np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(k)]))
        for c in checked:
            if not _same_cells(f[c], f[c][first[group]]).all():
                raise _Doubt(f"the windows disagree on the flows' {c}")
        for c in (c for c in f if c.startswith("read_")):
            read = f[c] != _NONE  # alike wherever it was read
            kr, vr = k[read], f[c][read]
            head = np.flatnonzero(np.r_[True, kr[1:] != kr[:-1]])
            if (vr != np.repeat(vr[head], np.diff(np.r_[head, len(kr)]))).any():
                raise _Doubt(f"the windows disagree on the flows' {c[5:]}")
        flows = {c: f[c][first] for c in FLOW_COLUMNS}
        sums = {c[4:]: np.add.reduceat(f[c], first) for c in f if c.startswith("own_")}
        sums["last_ts_ns"] = np.maximum.reduceat(f["own_last_ts_ns"], first)
        ts_share = sums["n_ts"] / np.maximum(sums["n_packets"], 1) > 0.5
        if (~flows["handshake_seen"] & (flows["ts_ok"] != ts_share)).any():
            raise _Doubt("a flow without its handshake has timestamps on another share whole")
        for c in ("n_packets", "n_data", "last_ts_ns"):
            flows[c] = sums[c].astype(np.int64)
        flows["fin_seen"] = sums["fin_seen"] > 0
        flows["rst_seen"] = sums["rst_seen"] > 0
        keys = k[first]
        rev_key = f["rev_key"][first]
        pos = np.clip(np.searchsorted(keys, rev_key), 0, len(keys) - 1)
        rev_cat = np.where((rev_key >= 0) & (keys[pos] == rev_key), pos, -1)
        conn_key = np.where(rev_cat >= 0, np.minimum(keys, rev_key), keys)
        order, new_id, rev_id, conn_id = number_flows(
            flows["first_frame"], rev_cat, conn_key, _tuple_first_frame(flows)
        )
        flows["flow_id"], flows["rev_flow_id"], flows["conn_id"] = new_id, rev_id, conn_id
        flows = {c: flows[c][order] for c in FLOW_COLUMNS}
        per_flow_names = [c[4:] for c in f if c.startswith("own_")]
        per_flow_names = [c for c in per_flow_names if c in _PER_FLOW]
        per_flow = {c: sums[c][order].astype(np.int64) for c in per_flow_names}
        for g in ("ranges", "bytes", "acked"):
            per_flow["gap_" + g] = np.zeros(len(keys), dtype=np.int64)
        wire: Table | WindowRows
        if self.directory is not None:
            brief = {c: _concat([w[c] for w in self.briefs]) for c in BRIEF_COLUMNS}
            brief["flow_id"] = new_id[np.searchsorted(keys, brief["flow_id"])]
            wire = WindowRows(self.wires, brief, keys, new_id)
        else:
            held = {c: _concat([w[c] for w in self.wires]) for c in self.wires[0]}
            held["flow_id"] = new_id[np.searchsorted(keys, held["flow_id"])]
            wire = take(held, np.argsort(held["frame"], kind="stable"))
        drop = -1
        if borrowed_frame >= 0:
            drop = int(new_id[np.searchsorted(keys, borrowed_frame)])
        return Part(flows, wire, per_flow, self.acks_lost, drop)


#: classify_part's per-flow counts (pipeline._not_retransmitted)
_PER_FLOW = ("keepalives", "zero_window_probes", "out_of_order", "duplicate_frames")
