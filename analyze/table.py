"""Tables inside analyze/: a dict of equal-length numpy columns, and the grouped kernels
that every stage runs over them.

The capture-only path (read, flows, retransmissions, classify, outputs) runs on these and
never imports pandas: importing it costs ~0.3 s, a quarter of the time the whole analysis
of a 1.3M-packet capture may take. A column with nulls is a Nullable (values + valid).
pandas appears only at the edges that want it: the events join and the merge.

Most work is "per group" (per flow, per connection) over rows kept grouped, each group in
capture order. Two tricks serve it everywhere: a stable radix sort by group (group_sort),
and the *band key*: a (group, value) pair as one sortable int64, each group lifted into its
own 2**42-wide band, so that one numpy call (searchsorted, maximum.accumulate) serves every
group at once (pair_key, pair_search, GroupedSearch, seg_cummax).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

Side = Literal["left", "right"]

Table = dict  # column name -> 1-D numpy array, or Nullable


class Nullable:
    """A column with nulls: ``values`` (numpy, 0 where null) and ``valid`` (bool) of one
    length, as Arrow stores it (numpy's masked arrays add arithmetic and fill rules that
    nothing here wants)."""

    __slots__ = ("values", "valid")

    def __init__(self, values: np.ndarray, valid: np.ndarray):
        self.values = values
        self.valid = valid

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, idx) -> Nullable:
        return Nullable(self.values[idx], self.valid[idx])

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype


class Text:
    """A column of text (or None), UTF-8 in Arrow's layout: row i's bytes are
    ``data[offsets[i]:offsets[i + 1]]`` (``offsets``: int64, one more than the rows, from
    0), null where not ``valid``. What a spilled capture's shards store their text columns
    as (analyze/stored.py), encoded where they are classified, on every core: the process
    that writes the outputs then hands the buffers to Arrow as they are, where it once
    encoded every sentence itself (the 13M-packet capture's 89k retransmissions: ~0.4 s
    of the analysis's serial end)."""

    __slots__ = ("offsets", "data", "valid")

    def __init__(self, offsets: np.ndarray, data: np.ndarray, valid: np.ndarray):
        self.offsets = offsets
        self.data = data
        self.valid = valid

    @classmethod
    def encode(cls, items: list) -> Text:
        """Python strings (or None) as a Text column."""
        valid = np.fromiter((v is not None for v in items), dtype=bool, count=len(items))
        strs = items if valid.all() else [v if v is not None else "" for v in items]
        encoded = list(map(str.encode, strs))  # C loops: ~0.1 µs a string
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(items)), out=offsets[1:])
        return cls(offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8), valid)

    @classmethod
    def concat(cls, cols: list[Text]) -> Text:
        starts = np.cumsum([0] + [int(c.offsets[-1]) for c in cols[:-1]])
        offsets = np.concatenate([[0]] + [c.offsets[1:] + b for c, b in zip(cols, starts)])
        return cls(
            offsets.astype(np.int64),
            np.concatenate([c.data for c in cols]),
            np.concatenate([c.valid for c in cols]),
        )

    def __len__(self) -> int:
        return len(self.valid)

    #: rows whose bytes are gathered at once: the gather's index takes 8 bytes a byte
    GATHER_ROWS = 512

    def __getitem__(self, idx) -> Text:
        """Rows ``idx`` (a slice or row numbers), their bytes gathered."""
        if isinstance(idx, slice) and idx.step in (None, 1):
            lo, hi, _ = idx.indices(len(self))
            hi = max(lo, hi)
            o = self.offsets[lo : hi + 1]
            return Text(o - o[0], self.data[o[0] : o[-1]], self.valid[lo:hi])
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), dtype=np.uint8)
        # in runs of rows: gathered at once, a 4,096-row group of sentences (~1 MB) took
        # an index of 8 bytes a byte and its parts, 13 MB, the writing's peak
        for a in range(0, len(rows), self.GATHER_ROWS):
            b = min(len(rows), a + self.GATHER_ROWS)
            lo, hi = int(offsets[a]), int(offsets[b])
            # each byte's source: its row's start plus its place in the row
            at = np.arange(lo, hi, dtype=np.int64)
            at += np.repeat(starts[a:b] - offsets[a:b], lengths[a:b])
            data[lo:hi] = self.data[at]
        return Text(offsets, data, self.valid[rows])

    def to_objects(self) -> np.ndarray:
        """The column as Python strings (None where null)."""
        raw = self.data.tobytes()
        o = self.offsets.tolist()
        out = np.empty(len(self), dtype=object)
        out[:] = [
            raw[o[i] : o[i + 1]].decode() if ok else None
            for i, ok in enumerate(self.valid.tolist())
        ]
        return out


class RowsAt:
    """A table of ``n`` rows assembled from pieces, each put at its rows (``pos``) as it
    comes: one copy of the table at a time, not the pieces, their concatenation and the
    rows taken from it (a spilled capture's row groups, from its shards' files, and a
    windowed shard's rows, from its windows'). Text columns are kept aside and gathered
    once all the pieces are in."""

    def __init__(self, n: int):
        self.n = n
        self.table: Table = {}
        self.texts: dict[str, list[Text]] = {}
        self.pos: list[np.ndarray] = []

    def add(self, piece: Table, pos: np.ndarray) -> None:
        self.pos.append(pos)
        for name, col in piece.items():
            if isinstance(col, Text) or name in self.texts:
                self.texts.setdefault(name, []).append(col)
                continue
            if name not in self.table:  # made from the first piece's kind and type
                if isinstance(col, Nullable):
                    self.table[name] = Nullable(
                        np.zeros(self.n, dtype=col.values.dtype), np.zeros(self.n, dtype=bool)
                    )
                else:
                    self.table[name] = np.empty(self.n, dtype=np.asarray(col).dtype)
            out = self.table[name]
            values, valid = (col.values, col.valid) if isinstance(col, Nullable) else (col, True)
            held = out.values if isinstance(out, Nullable) else out
            values = np.asarray(values)
            if not np.can_cast(values.dtype, held.dtype):  # as np.concatenate would: widened
                held = held.astype(np.result_type(held, values))
                out = Nullable(held, out.valid) if isinstance(out, Nullable) else held
                self.table[name] = out
            held[pos] = values
            if isinstance(out, Nullable):
                out.valid[pos] = valid

    def result(self, columns) -> Table:
        """The table, its columns in the order of ``columns``."""
        if self.texts:
            at = np.empty(self.n, dtype=np.int64)  # row -> its place in the pieces, in turn
            at[np.concatenate(self.pos)] = np.arange(self.n)
            for name, parts in self.texts.items():
                self.table[name] = Text.concat(parts)[at]
        return {name: self.table[name] for name in columns}


def nullable(values: np.ndarray, valid: np.ndarray, dtype=np.int64) -> Nullable:
    """``values`` where ``valid``, null elsewhere."""
    valid = np.asarray(valid, dtype=bool)
    return Nullable(np.where(valid, values, 0).astype(dtype), valid)


def filled(col, fill) -> np.ndarray:
    """The values of a column, ``fill`` where null."""
    if isinstance(col, Nullable):
        return np.where(col.valid, col.values, fill)
    return np.asarray(col)


def n_rows(table: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(table.values()))) if table else 0


def take(table: Mapping[str, np.ndarray], idx: np.ndarray) -> Table:
    """Rows ``idx`` of every column (nulls follow)."""
    return {k: v[idx] for k, v in table.items()}


def present(values: np.ndarray) -> np.ndarray:
    """Not null, for an object column whose nulls are None (or NaN from pandas)."""
    return np.array([v is not None and v == v for v in values.tolist()], dtype=bool)


def to_pandas(table: Mapping[str, np.ndarray]):
    """DataFrame of a table: Nullable columns become pandas' nullable Int64 / boolean."""
    import pandas as pd

    cols = {}
    for name, col in table.items():
        if isinstance(col, Nullable):
            dtype = "boolean" if col.dtype == bool else "Int64"
            arr = pd.array(col.values.astype(bool if dtype == "boolean" else np.int64), dtype=dtype)
            arr[~col.valid] = pd.NA
            cols[name] = arr
        else:
            cols[name] = col
    return pd.DataFrame(cols)


# --- grouped rows ---------------------------------------------------------------------


def count_where(groups: np.ndarray, mask: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, its rows where ``mask`` holds: np.bincount(groups[mask]), with the rows
    picked by np.compress. Boolean indexing branches on every row, and a mask like "the
    row carries data" alternates with a bulk transfer's data and ACKs: ~3x slower than
    compress on such a mask (176k rows, a window: 1.3 ms against 0.4)."""
    return np.bincount(np.compress(mask, groups), minlength=n_groups)


def group_starts(keys_sorted: np.ndarray) -> np.ndarray:
    """Boolean mask: the row starts a new run of equal keys."""
    start = np.ones(len(keys_sorted), dtype=bool)
    if len(keys_sorted):
        np.not_equal(keys_sorted[1:], keys_sorted[:-1], out=start[1:])
    return start


def group_numbers(keys_sorted: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... numbering of runs of equal keys in a sorted array."""
    if len(keys_sorted) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.cumsum(group_starts(keys_sorted)) - 1


def group_rank(keys_sorted: np.ndarray) -> np.ndarray:
    """Each row's position in its run of equal keys (0 for the run's first row)."""
    m = len(keys_sorted)
    pos = np.arange(m)
    return pos - np.maximum.accumulate(np.where(group_starts(keys_sorted), pos, 0)) if m else pos


def group_bounds(grp_sorted: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Each group's slice [start, end) of rows sorted by group (empty groups: start == end)."""
    groups = np.arange(n_groups)
    return (
        np.searchsorted(grp_sorted, groups, side="left"),
        np.searchsorted(grp_sorted, groups, side="right"),
    )


def group_sort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative integer keys, as radix sorts.

    numpy's stable sort is a radix sort for 16-bit keys and a merge sort otherwise: on
    1.3M rows, 12 ms against 55 ms. Keys (flow, connection numbers) almost always fit 16
    bits; wider ones take one more 16-bit pass per 16 bits (LSD order).
    """
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    top = int(keys.max())
    if top < (1 << 16):
        return np.argsort(keys.astype(np.uint16), kind="stable")
    if top >= (1 << 32):
        return np.argsort(keys, kind="stable")
    k = keys.astype(np.uint32)
    o = np.argsort((k & 0xFFFF).astype(np.uint16), kind="stable")
    return o[np.argsort((k[o] >> 16).astype(np.uint16), kind="stable")]


def by_group(sel: np.ndarray, group_of_sel: np.ndarray) -> np.ndarray:
    """Reorder ``sel`` (increasing row numbers of a capture-ordered table) by group,
    keeping capture order inside each group (a stable sort)."""
    return sel[group_sort(group_of_sel)]


def ordered_in_groups(grp: np.ndarray, val: np.ndarray) -> bool:
    """Does ``val`` never decrease inside a group (rows grouped by ``grp``)?"""
    down = np.flatnonzero(val[1:] < val[:-1])  # few: mostly where one group follows another
    return not (grp[down + 1] == grp[down]).any()


def by_value_in_group(sel: np.ndarray, grp: np.ndarray, val: np.ndarray) -> np.ndarray:
    """``sel`` (rows grouped by ``grp``, groups in increasing order; ``grp`` and ``val``:
    columns of the rows) reordered by value inside each group, ties in their order
    (stable): ``sel`` itself when it already is. What GroupedSearch and pair_search need
    of their rows; on rows out of order they answer by where the other groups' rows lie.
    Checked _CHUNK rows at a time (a whole-length gather costs 8 bytes a row of peak).
    """
    for lo in range(0, max(len(sel) - 1, 0), _CHUNK):
        rows = sel[lo : lo + _CHUNK + 1]
        if not ordered_in_groups(grp[rows], val[rows]):
            return sel[np.lexsort((val[sel], grp[sel]))]
    return sel


def capture_order(frame: np.ndarray) -> np.ndarray | None:
    """Permutation into capture order; None when rows already are (the reader's)."""
    if len(frame) < 2 or bool(np.all(frame[1:] > frame[:-1])):
        return None
    return np.argsort(frame, kind="stable")


def gather(a: np.ndarray, idx: np.ndarray, valid: np.ndarray, fill) -> np.ndarray:
    """a[idx] where ``valid`` (idx in range), ``fill`` elsewhere; safe when ``a`` is empty."""
    if len(a) == 0:
        return np.full(len(idx), fill)
    return np.where(valid, a[np.clip(idx, 0, len(a) - 1)], fill)


def last_where(mask: np.ndarray, grp_sorted: np.ndarray) -> np.ndarray:
    """Per row of rows sorted by group, the last row at or before it, in its group, where
    ``mask``; -1 where none."""
    m = len(mask)
    idx = np.where(mask, np.arange(m), -1)
    last = np.maximum.accumulate(idx) if m else idx
    if m:
        same = last >= 0
        same[same] = grp_sorted[last[same]] == grp_sorted[same]
        last = np.where(same, last, -1)
    return last


# --- the band key: (group, value) as one int64 ----------------------------------------

#: Values (sequence offsets, frame numbers, times in us) stay well inside +-2**41; each
#: group gets a 2**42-wide band. 2**21 groups fit an int64 (pair_search goes by ranges of
#: that many when there are more).
VALUE_BITS = 41
_BAND = 1 << (VALUE_BITS + 1)
_VMIN = -(1 << VALUE_BITS)
_VMAX = (1 << VALUE_BITS) - 1
_KEY_GROUPS = 1 << 21
_CUMMAX_GROUPS = 1 << 20
#: "No value yet" (no sequence number sent, no time): the floor seg_cummax returns for an
#: empty history, below every value.
NO_VALUE = _VMIN


def pair_key(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(group, value) as one sortable int64 (values clipped to +-(2**41 - 1); groups below
    2**21)."""
    return g.astype(np.int64) * np.int64(_BAND) + (np.clip(v, -_VMAX, _VMAX) + (_BAND >> 1))


def pair_search(
    grp_sorted: np.ndarray,
    val_sorted: np.ndarray,
    q_grp: np.ndarray,
    q_val: np.ndarray,
    side: Side = "left",
) -> np.ndarray:
    """searchsorted of (group, value) queries among rows sorted by group, then value."""
    if len(grp_sorted) == 0 or int(grp_sorted[-1]) < _KEY_GROUPS:
        return np.searchsorted(pair_key(grp_sorted, val_sorted), pair_key(q_grp, q_val), side=side)
    # More groups than one int64 holds bands for: a range of 2**21 groups at a time.
    out = np.zeros(len(q_grp), dtype=np.int64)  # groups below every row's: 0
    top = max(int(grp_sorted[-1]), int(q_grp.max()) if len(q_grp) else 0)
    for base in range(0, top + 1, _KEY_GROUPS):
        lo, hi = np.searchsorted(grp_sorted, [base, base + _KEY_GROUPS]).tolist()
        q = np.flatnonzero((q_grp >= base) & (q_grp < base + _KEY_GROUPS))
        out[q] = lo + np.searchsorted(
            pair_key(grp_sorted[lo:hi] - base, val_sorted[lo:hi]),
            pair_key(q_grp[q] - base, q_val[q]),
            side=side,
        )
    return out


class GroupedSearch:
    """pair_search over one set of rows (sorted by group, then value), queried many times.

    With few groups queried (the usual capture: a few bulk flows) each group's slice is
    searched on its own; with many, one search over band keys, built on first use. The two
    agree: the keys order rows as the slices do.
    """

    MAX_SLICES = 32

    def __init__(self, grp_sorted: np.ndarray, val_sorted: np.ndarray):
        self.grp, self.val = grp_sorted, val_sorted
        self._keys: np.ndarray | None = None

    def __call__(self, q_grp: np.ndarray, q_val: np.ndarray, side: Side) -> np.ndarray:
        groups = np.flatnonzero(np.bincount(q_grp)) if len(q_grp) else q_grp
        if len(groups) > self.MAX_SLICES:
            if len(self.grp) and int(self.grp[-1]) >= _KEY_GROUPS:
                return pair_search(self.grp, self.val, q_grp, q_val, side)
            if self._keys is None:
                self._keys = pair_key(self.grp, self.val)
            return np.searchsorted(self._keys, pair_key(q_grp, q_val), side=side)
        out = np.empty(len(q_grp), dtype=np.int64)
        lo = np.searchsorted(self.grp, groups, side="left")
        hi = np.searchsorted(self.grp, groups, side="right")
        for g, a, b in zip(groups.tolist(), lo.tolist(), hi.tolist()):
            q = np.flatnonzero(q_grp == g) if len(groups) > 1 else slice(None)
            v = np.clip(q_val[q], -_VMAX, _VMAX)  # as pair_key clips
            out[q] = a + np.searchsorted(self.val[a:b], v, side=side)
        return out


def seg_cummax(values: np.ndarray, grp_no: np.ndarray, exclusive: bool = False) -> np.ndarray:
    """Running maximum restarted at each group (groups contiguous, numbered 0, 1, ...).

    Values are sequence offsets (well inside +-2**41); each group is lifted into its own
    band so one np.maximum.accumulate serves all groups (2**20 groups at a time, so the
    lift stays inside int64). Values below the band (the "nothing yet" sentinel) come back
    as NO_VALUE. ``exclusive``: the maximum over earlier rows only.
    """
    m = len(values)
    if m == 0:
        return values.astype(np.int64)
    g = grp_no.astype(np.int64)
    if int(g[-1]) >= _CUMMAX_GROUPS:
        inc = np.empty(m, dtype=np.int64)
        cuts = np.searchsorted(g, np.arange(0, int(g[-1]) + 1 + _CUMMAX_GROUPS, _CUMMAX_GROUPS))
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            if hi > lo:
                inc[lo:hi] = seg_cummax(values[lo:hi], g[lo:hi] - g[lo])
    else:
        lifted = np.clip(values, _VMIN, _VMAX)
        lifted -= _VMIN
        lifted += g * _BAND
        inc = np.maximum.accumulate(lifted)
        inc -= g * _BAND
        inc += _VMIN
    if not exclusive:
        return inc
    out = np.empty_like(inc)
    out[0] = _VMIN
    out[1:] = inc[:-1]
    out[1:][g[1:] != g[:-1]] = _VMIN
    return out


#: Rows a chunked kernel works on at a time: its temporaries stay ~0.5 MB each however many
#: packets the table holds (whole-length ones cost 8 bytes a packet each, and a shard may
#: hold a 3.56M-packet connection).
_CHUNK = 1 << 16


def sided_cummax_before(own: np.ndarray, other, starts: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Running maxima of two streams interleaved in each group (a connection's two
    directions): row j adds ``own[j]`` to the stream of its ``side`` (bool) and ``other[j]``
    (an array, or one scalar for every row) to the other side's. Per row, the maximum over
    the earlier rows of its group of its own side's stream; NO_VALUE where none. Values are
    clipped to +-(2**41 - 1) as seg_cummax does; ``starts``: the row begins a group.

    A chunk of rows at a time, each stream's maximum carried into the next chunk, so that
    the result is the only array as long as the table.
    """
    m = len(starts)
    out = np.empty(m, dtype=np.int64)
    carry = [_VMIN, _VMIN]  # each stream's maximum over its group's rows so far
    for lo in range(0, m, _CHUNK):
        hi = min(lo + _CHUNK, m)
        s, st, mine = side[lo:hi], starts[lo:hi], own[lo:hi]
        theirs = other[lo:hi] if np.ndim(other) else other
        cont = not st[0]  # the chunk's first row continues the previous chunk's group
        # each group of the chunk lifted into its own band (as in seg_cummax): one
        # np.maximum.accumulate serves them all
        lift = np.cumsum(st, dtype=np.int64)
        lift *= _BAND
        lift -= _VMIN
        for k, v in enumerate((np.where(s, theirs, mine), np.where(s, mine, theirs))):
            np.clip(v, _VMIN, _VMAX, out=v)
            if cont:
                v[0] = max(v[0], carry[k])
            v += lift
            np.maximum.accumulate(v, out=v)
            v -= lift  # inclusive maxima
            # the maximum over earlier rows: the previous row's inclusive one
            before = np.empty_like(v)
            before[0] = carry[k] if cont else _VMIN
            before[1:] = v[:-1]
            before[st] = _VMIN
            carry[k] = int(v[-1])
            if k == 0:
                out[lo:hi] = before
            else:
                np.copyto(out[lo:hi], before, where=s)
    return out
