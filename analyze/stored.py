"""A table on disk, read back a range of rows at a time (I/O edge).

A spilled capture's shards are classified one after another (analyze/spill.py); each
shard's output rows are written here as soon as it is done, and read back a row group at
a time when the outputs are written (analyze/streamed.py), so that what the analysis
holds in memory does not grow with the capture's flows and retransmissions.

One file a table: every column's data one after the other. A numeric or boolean column is
its raw bytes (a row range is one positioned read); a column of text (str or None) is
UTF-8 in Arrow's layout (table.Text: its offsets, validity and bytes, each raw: a row
range is three positioned reads, and is read back as a Text, which the outputs hand to
Arrow as it is); any other column of Python objects is pickled in runs of OBJECT_RUN_ROWS
rows; a Nullable is its values and its validity, each stored so.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retranscope.analyze.table import Nullable, Table, Text, n_rows

#: Rows of an output converted to Arrow and written at a time, one Parquet row group
#: (analyze/outputs.py), and read back from here a group at a time: only one group's Arrow
#: arrays (and its strings' Python bytes) exist at once, ~40 MB for the 250k flows of a
#: 13M-packet capture of 125k connections when it was converted whole. 4k rows (64k
#: until stop 22): a group of retransmissions with their cause sentences took ~85 MB
#: beside pyarrow at 48k rows (the 13M-packet capture's, written in 200 MB), and the
#: writing's peak followed the group up to 64k rows (the 1.3M-packet capture's 4k rows:
#: 97 MB; 8k rows of the 13M one: 114 MB); with 4k the files are 6% bigger
ROW_GROUP_ROWS = 1 << 12
#: rows pickled together in an object column, at most: a read of a few rows unpickles at
#: most a run more of each such column
OBJECT_RUN_ROWS = 4096


def run_rows_for(tables: int) -> int:
    """Object rows a run for one of ``tables`` tables read back together a row group at a
    time (a spilled capture's shards: each row group takes ~ROW_GROUP_ROWS / tables rows
    of each). Runs that size keep what a row group unpickles to about twice what it
    keeps, however many shards: with runs of OBJECT_RUN_ROWS, 1,000 shards would unpickle
    4M rows for a group of 64k."""
    return max(min(64, OBJECT_RUN_ROWS), min(OBJECT_RUN_ROWS, ROW_GROUP_ROWS // max(tables, 1)))


@dataclass
class _Column:
    """Where one column's data lies in the file: ``dtype`` None for pickled objects
    (``runs``: (offset, bytes) of each run), else raw values from ``offset``; text, its
    Text's three columns (``text``: offsets, validity, bytes)."""

    dtype: np.dtype | None
    offset: int = 0
    runs: list[tuple[int, int]] = field(default_factory=list)
    text: tuple[_Column, _Column, _Column] | None = None


@dataclass
class StoredTable:
    """A table written by ``store``: its path, rows and columns (picklable: a forked
    worker returns it to the process that writes the outputs)."""

    path: Path
    n_rows: int
    columns: dict[str, tuple[_Column, _Column | None]]  # name -> (values, validity)
    run_rows: int = OBJECT_RUN_ROWS  # rows a pickled run of an object column

    def read(self, lo: int, hi: int) -> Table:
        """Rows lo .. hi - 1, as they were stored (numpy, object or Nullable columns)."""
        lo, hi = max(0, lo), min(self.n_rows, hi)
        hi = max(lo, hi)
        out: Table = {}
        with open(self.path, "rb", buffering=0) as f:
            for name, (values, valid) in self.columns.items():
                v = _read(f, values, lo, hi, self.run_rows)
                out[name] = (
                    v if valid is None else Nullable(v, _read(f, valid, lo, hi, self.run_rows))
                )
        return out


def store(table: Table, path: str | os.PathLike, run_rows: int | None = None) -> StoredTable:
    """Write ``table`` to ``path`` (a new file); object columns in runs of ``run_rows``
    (None: OBJECT_RUN_ROWS; run_rows_for)."""
    path = Path(path)
    run = int(run_rows or OBJECT_RUN_ROWS)
    n = n_rows(table)
    columns: dict[str, tuple[_Column, _Column | None]] = {}
    with open(path, "wb") as f:
        for name, col in table.items():
            if isinstance(col, Nullable):
                values, valid = np.asarray(col.values), col.valid
                columns[name] = (_write(f, values, run), _write(f, valid, run))
            elif isinstance(col, Text):  # read back from a table stored before
                columns[name] = (_write_text(f, col, run), None)
            else:
                columns[name] = (_write(f, np.asarray(col), run), None)
    return StoredTable(path, n, columns, run)


def _write(f, col: np.ndarray, run: int) -> _Column:
    if col.dtype != object:
        c = _Column(col.dtype, f.tell())
        f.write(np.ascontiguousarray(col).tobytes())
        return c
    items = col.tolist()
    if all(type(v) is str or v is None for v in items):
        return _write_text(f, Text.encode(items), run)
    c = _Column(None)
    for lo in range(0, len(col), run):
        blob = pickle.dumps(items[lo : lo + run], protocol=5)
        c.runs.append((f.tell(), len(blob)))
        f.write(blob)
    return c


def _write_text(f, t: Text, run: int) -> _Column:
    offsets = t.offsets - t.offsets[0]
    parts = (_write(f, offsets, run), _write(f, t.valid, run), _write(f, t.data, run))
    return _Column(None, text=parts)


def _read(f, c: _Column, lo: int, hi: int, run_rows: int) -> np.ndarray | Text:
    if c.text is not None:
        offsets_at, valid_at, data_at = c.text
        offsets = _read(f, offsets_at, lo, hi + 1, run_rows)
        data = _read(f, data_at, int(offsets[0]), int(offsets[-1]), run_rows)
        return Text(offsets - offsets[0], data, _read(f, valid_at, lo, hi, run_rows))
    if c.dtype is not None:
        out = np.empty(hi - lo, dtype=c.dtype)
        if hi > lo:
            f.seek(c.offset + lo * c.dtype.itemsize)
            if f.readinto(out.view(np.uint8).data) != out.nbytes:
                raise OSError(f"{f.name} is shorter than what was written")
        return out
    out = np.empty(hi - lo, dtype=object)
    at = lo
    while at < hi:
        run = at // run_rows
        offset, size = c.runs[run]
        f.seek(offset)
        blob = f.read(size)
        if len(blob) != size:
            raise OSError(f"{f.name} is shorter than what was written")
        items = pickle.loads(blob)
        start = at - run * run_rows
        take = min(hi - at, len(items) - start)
        # fromiter: a list assigned to an object slice would be taken apart if its items
        # were sequences themselves
        out[at - lo : at - lo + take] = np.fromiter(items[start : start + take], object, take)
        at += take
    return out


@dataclass
class Chained:
    """A table stored in several StoredTables, one after the other (a windowed shard's
    rows, written a run of rows at a time: analyze/windows.py), read as one."""

    parts: list[StoredTable]

    @property
    def columns(self) -> dict:
        return self.parts[0].columns

    @property
    def n_rows(self) -> int:
        return sum(p.n_rows for p in self.parts)

    def read(self, lo: int, hi: int) -> Table:
        """Rows lo .. hi - 1, across the parts."""
        from retranscope.analyze.shards import _concat

        pieces: list[Table] = []
        at = 0
        for p in self.parts:
            a, b = max(lo, at), min(hi, at + p.n_rows)
            if a < b or not pieces and p is self.parts[-1]:
                pieces.append(p.read(a - at, max(a, b) - at))
            at += p.n_rows
        return {name: _concat([t[name] for t in pieces]) for name in pieces[0]}
