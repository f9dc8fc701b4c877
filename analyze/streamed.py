"""A spilled capture's outputs, merged from its shards' rows on disk.

A spilled capture is classified a shard at a time (analyze/spill.py). Each shard's output
rows (its flows.parquet rows and its retransmits.parquet rows) are written to the spill's
directory as soon as the shard is done (``finish_part``, in the process that classified
it) and dropped from memory; what stays is a ``Digest``: per flow its first frame, its
4-tuple's first frame, its connection and reverse flow (the keys of the whole capture's
numbering), per retransmission its time and frame (the key of the output order), and the
shard's sums for summary.json. ``merge`` numbers the whole capture from the digests
exactly as shards.merge_parts does, and the outputs are written a row group at a time
(``StreamedTable.row_groups``), each group read back from the shards' files.

What the analysis holds for the whole capture is then 32 bytes a flow and 16 a
retransmission while the shards are classified (their digests), ~40 and 8 while the
outputs are written (the numbering), not every output row (~250 bytes a flow, ~630 a
retransmission, plus the merge's copies, as before).

Both orders are merges of the shards' own orders, which is what lets a row group be read
as one contiguous range of rows from each shard's file:
- flows by first frame: within a shard, flows are stored in first-frame order;
- retransmissions by time, then frame (analyze: rows by ``ts_wall_ns``, stable over frame
  order): within a shard they are stored in that order, and frames are the capture's, so
  no two shards share one (the borrowed first packet's flow, the one frame that is in
  several shards, is dropped with its rows before anything is stored).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retranscope.analyze.shards import Part, _tuple_first_frame, number_flows
from retranscope.analyze.stored import ROW_GROUP_ROWS, Chained, StoredTable, run_rows_for, store
from retranscope.analyze.table import RowsAt, Table, n_rows, take


@dataclass
class Digest:
    """What one shard leaves in memory once its output rows are stored."""

    flows: StoredTable  # flows.parquet rows, local ids, in first-frame order
    rows: StoredTable  # retransmits.parquet rows, local flow ids, in output order
    first_frame: np.ndarray  # per flow
    tuple_first: np.ndarray  # per flow: its 4-tuple's first frame
    conn: np.ndarray  # per flow: the shard's connection number
    rev: np.ndarray  # per flow: the shard's row of the reverse flow, -1: none
    row_ts: np.ndarray  # per retransmission: ts_wall_ns
    row_frame: np.ndarray  # per retransmission
    sums: dict  # pipeline.part_sums, and the totals' partials (kind_firsts)


def finish_part(part: Part, directory: Path, number: int, shards: int = 1) -> Digest:
    """Shard ``number``'s Part (of ``shards``) as output rows stored in ``directory``, and
    its Digest."""
    from retranscope.analyze.pipeline import (
        TUPLE_KEY,
        _flows_out,
        flow_extra_columns,
        kind_firsts,
        part_sums,
    )
    from retranscope.analyze.windows import WindowRows

    n = n_rows(part.flows)
    keep = np.flatnonzero(np.arange(n) != part.drop_flow)
    keep = keep[np.argsort(part.flows["first_frame"][keep], kind="stable")]
    local = np.full(n + 1, -1, dtype=np.int64)  # local flow id -> stored row; [-1] stays -1
    local[keep] = np.arange(len(keep))
    flows = take(part.flows, keep)
    per_flow = {k: v[keep] for k, v in part.per_flow.items()}
    windowed = isinstance(part.wire, WindowRows)  # its rows on disk, a few columns here
    wire = part.wire.brief if windowed else part.wire
    cat = local[wire["flow_id"]]
    src = np.flatnonzero(cat >= 0)
    wire = take(wire, src)
    wire["flow_id"] = cat[src]
    by_frame = np.argsort(wire["frame"], kind="stable")
    order = by_frame[np.argsort(wire["ts_wall_ns"][by_frame], kind="stable")]
    rows = take(wire, order)
    if windowed:  # the flow's 4-tuple, which flows.parquet's per-tuple counts read
        rows.update({k: flows[k][rows["flow_id"]] for k in TUPLE_KEY})
    sums = part_sums(flows, rows, per_flow, part.acks_lost)
    sums["kind_firsts"] = kind_firsts(rows)
    out_flows = {**_flows_out(flows, rows), **flow_extra_columns(per_flow)}
    run = run_rows_for(shards)
    if windowed:
        to = directory / f"rows-{number}"
        stored_rows = _store_in_order(part.wire, src[order], local, to, run)
    else:
        stored_rows = store(rows, directory / f"rows-{number}", run)
    del wire, part
    digest = Digest(
        flows=store(out_flows, directory / f"flows-{number}", run),
        rows=stored_rows,
        first_frame=flows["first_frame"].astype(np.int64),
        tuple_first=_tuple_first_frame(flows) if len(keep) else np.zeros(0, dtype=np.int64),
        conn=flows["conn_id"].astype(np.int64),
        rev=local[flows["rev_flow_id"]],
        row_ts=rows["ts_wall_ns"].astype(np.int64),
        row_frame=rows["frame"].astype(np.int64),
        sums=sums,
    )
    return digest


def _store_in_order(window_rows, idx: np.ndarray, local: np.ndarray, path: Path, run: int):
    """A windowed shard's rows ``idx`` (in the windows' order), their flow ids ``local``'s,
    stored in that order a row group at a time (analyze/windows.WindowRows: what the
    shard holds stays a group's), the windows' files then removed."""
    parts: list[StoredTable] = []
    for lo in range(0, max(len(idx), 1), ROW_GROUP_ROWS):
        group = window_rows.rows(idx[lo : lo + ROW_GROUP_ROWS], lambda f: local[f])
        parts.append(store(group, path.with_name(f"{path.name}.{len(parts)}"), run))
    window_rows.remove()
    return Chained(parts)


class StreamedTable:
    """An output table whose rows are on disk in the shards' files, in a known order:
    ``row_groups`` reads it back a group of rows at a time, ids renumbered."""

    def __init__(self, stored: list[StoredTable], part_of: np.ndarray, patch):
        self.stored = stored
        self.part_of = part_of  # per output row, in output order: its shard
        self._patch = patch  # (group table, output rows lo, hi, shard of each) -> None
        self.n_rows = len(part_of)

    def row_groups(self, size: int) -> Iterator[Table]:
        cursor = [0] * len(self.stored)
        for lo in range(0, max(self.n_rows, 1), size):
            hi = min(self.n_rows, lo + size)
            p = self.part_of[lo:hi]
            counts = np.bincount(p, minlength=len(self.stored))
            rows = RowsAt(len(p))  # each shard's piece put at its rows in output order
            # (no rows at all: one empty group, as the in-memory path writes)
            for s in np.flatnonzero(counts).tolist() or [0]:
                c = int(counts[s])
                rows.add(self.stored[s].read(cursor[s], cursor[s] + c), np.flatnonzero(p == s))
                cursor[s] += c
            group = rows.result(self.stored[0].columns)
            self._patch(group, lo, hi, p)
            # handed over, not kept: the caller frees it before the next group is read
            # (a suspended generator holds its locals: two groups at once)
            held = [group]
            del group, rows
            yield held.pop()


@dataclass
class Merged:
    """The whole capture's outputs (streamed) and the shards' sums added up."""

    retransmits: StreamedTable
    flows: StreamedTable
    sums: dict


def merge(digests: list[Digest]) -> Merged:
    """The shards' digests as one capture, numbered as shards.merge_parts numbers it:
    flows by first frame, connections by their 4-tuple's first frame then in capture
    order, retransmissions by time then frame."""
    from retranscope.analyze.pipeline import add_sums

    sizes = np.array([len(d.first_frame) for d in digests], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    part_of_cat = np.repeat(np.arange(len(digests)), sizes)
    order, new_id, rev_id, conn_id = number_flows(
        np.concatenate([d.first_frame for d in digests]),
        np.concatenate([np.where(d.rev >= 0, d.rev + o, -1) for d, o in zip(digests, offsets)]),
        np.concatenate([d.conn + (i << 40) for i, d in enumerate(digests)]),
        np.concatenate([d.tuple_first for d in digests]),
    )

    def patch_flows(group: Table, lo: int, hi: int, _part) -> None:
        cat = order[lo:hi]
        group["flow_id"] = np.arange(lo, hi, dtype=np.int64)
        group["rev_flow_id"] = rev_id[cat]
        group["conn_id"] = conn_id[cat]

    n_rtx = np.array([len(d.row_ts) for d in digests], dtype=np.int64)
    row_part = np.repeat(np.arange(len(digests)), n_rtx)
    pos = np.concatenate([np.arange(k) for k in n_rtx.tolist()] or [np.zeros(0, np.int64)])
    ts = np.concatenate([d.row_ts for d in digests])
    frame = np.concatenate([d.row_frame for d in digests])
    row_order = np.lexsort((pos, row_part, frame, ts))
    row_part = row_part[row_order]
    del pos, ts, frame, row_order

    def patch_rows(group: Table, _lo, _hi, part) -> None:
        group["flow_id"] = new_id[offsets[part] + np.asarray(group["flow_id"], dtype=np.int64)]

    sums = add_sums([d.sums for d in digests])
    firsts = [d.sums["kind_firsts"] for d in digests]
    sums["kind_firsts"] = {
        key: _merged_firsts([f[key] for f in firsts], digests) for key in ("all", "spurious")
    }
    stored_rows = [d.rows for d in digests]
    return Merged(
        StreamedTable(stored_rows, row_part, patch_rows),
        StreamedTable([d.flows for d in digests], part_of_cat[order], patch_flows),
        sums,
    )


def _merged_firsts(per_part: list[dict], digests: list[Digest]) -> dict:
    """Per kind: count, and the key of its first appearance in the capture's output order
    (time, frame, shard, row in the shard: the order ``merge`` writes the rows in)."""
    out: dict = {}
    for s, (kinds, d) in enumerate(zip(per_part, digests)):
        for kind, (count, row) in kinds.items():
            key = (int(d.row_ts[row]), int(d.row_frame[row]), s, row)
            if kind in out:
                out[kind] = [out[kind][0] + count, min(out[kind][1], key)]
            else:
                out[kind] = [count, key]
    return out
