"""A capture bigger than memory: its packets spilled to disk by 4-tuple, classified a
shard at a time.

One streaming pass over the capture (analyze/capture: chunks, bounded memory) writes each
chunk's rows to one of SPILL_BUCKETS files, chosen by a hash of the row's 4-tuple (both
directions alike, shards.tuple_hash): every packet of a connection lands in one file, in
capture order. The buckets are then dealt into shards of about SHARD_PACKETS packets
(biggest first, to the least loaded), and each shard is read back, classified as if it
were the whole capture (shards.classify_part's contract) and dropped before the next is
read: peak memory follows the largest shard, not the capture. A 4-tuple is never split,
so one connection bigger than memory still needs its own packets in memory. The parts
are merged exactly as shards.merge_parts merges in-memory shards: the outputs are those
of the whole capture classified at once (tests/test_spill.py).

On disk, a bucket file is a sequence of blocks, one per chunk that had rows for it: each
block is the packet table's columns one after the other (schemas/packets.py order and
dtypes); ``Bucket.blocks`` says where each block starts and how many rows it holds.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from retranscope.analyze.capture.decode import columns
from retranscope.analyze.capture.records import CaptureMeta
from retranscope.analyze.shards import (
    SHARD_PACKETS,
    ClassifyPart,
    Part,
    give_back_free_memory,
    merge_parts,
    tuple_bucket,
)
from retranscope.analyze.table import Nullable
from retranscope.errors import RetranscopeError
from retranscope.schemas.packets import PACKET_DTYPES, empty_packets

#: files the packets are spread over by 4-tuple (then dealt into shards)
SPILL_BUCKETS = 64
#: a capture (its files as stored, compressed or not) at least this big is spilled when
#: analyze chooses by itself. Measured on the 1.3M-packet capture (184 MB, docs/scale.md):
#: spilled, the same time and 286 MB peak instead of 491 MB; small captures stay in
#: memory, where the spill's files cost more than they save
SPILL_MIN_BYTES = 64 << 20
ROW_BYTES = sum(dt.itemsize for dt in PACKET_DTYPES.values())


@dataclass
class Bucket:
    path: Path
    rows: int = 0
    blocks: list[tuple[int, int]] = field(default_factory=list)  # (file offset, rows)
    written: int = 0


@dataclass
class SpilledCapture:
    """A capture read once and spilled (``meta`` as read_capture gives it); ``classify``
    gives its merged classification, shard by shard."""

    meta: CaptureMeta
    buckets: list[Bucket]
    anchor: dict[str, np.ndarray] | None  # the capture's first packet (one row)
    anchor_bucket: int
    directory: tempfile.TemporaryDirectory

    @property
    def n_packets(self) -> int:
        return sum(b.rows for b in self.buckets)

    def close(self) -> None:
        self.directory.cleanup()

    def shards(self) -> list[list[int]]:
        """Bucket numbers of each shard: buckets dealt biggest first to the least loaded
        shard, as many shards as SHARD_PACKETS asks for (at least one)."""
        used = [i for i, b in enumerate(self.buckets) if b.rows]
        n_shards = max(1, min(len(used), -(-self.n_packets // SHARD_PACKETS)))
        load = [0] * n_shards
        out: list[list[int]] = [[] for _ in range(n_shards)]
        for i in sorted(used, key=lambda i: -self.buckets[i].rows):
            s = load.index(min(load))
            out[s].append(i)
            load[s] += self.buckets[i].rows
        return [sorted(s) for s in out if s]

    def rows_of(self, bucket_numbers: list[int]) -> int:
        """Rows of the table ``load`` gives for these buckets."""
        n = sum(self.buckets[i].rows for i in bucket_numbers)
        return n + (self.anchor is not None and self.anchor_bucket not in bucket_numbers)

    def load(
        self, bucket_numbers: list[int], into: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], int]:
        """The packet table of these buckets, in capture order, with the capture's first
        packet added when they lack it; and that row's position (-1: not added). The
        table is one allocation (``into``'s first rows, when given), reordered in place:
        no second copy of the shard."""
        n = sum(self.buckets[i].rows for i in bucket_numbers)
        borrow = self.anchor is not None and self.anchor_bucket not in bucket_numbers
        if into is None:
            table = columns(n + borrow, PACKET_DTYPES)
        else:
            table = {name: col[: n + borrow] for name, col in into.items()}
        self._read_into(table, bucket_numbers)
        if len(bucket_numbers) > 1:  # each file is in capture order; together they are not
            order = np.argsort(table["frame"][:n], kind="stable")
            for col in table.values():
                col[:n] = col[:n][order]  # one column's temporary at a time
            del order
        if not borrow:
            return table, -1
        assert self.anchor is not None
        pos = int(np.searchsorted(table["frame"][:n], self.anchor["frame"][0]))
        for name, col in table.items():
            col[pos + 1 :] = col[pos:n]  # numpy copies overlapping ranges as if buffered
            col[pos] = self.anchor[name][0]
        return table, pos

    def _read_into(self, table: dict[str, np.ndarray], bucket_numbers: list[int]) -> None:
        """Each block's columns read from the file straight into the table's."""
        at = 0
        for i in bucket_numbers:
            bucket = self.buckets[i]
            with open(bucket.path, "rb", buffering=0) as f:
                for offset, rows in bucket.blocks:
                    f.seek(offset)
                    for col in table.values():
                        dest = col[at : at + rows].view(np.uint8).data
                        if f.readinto(dest) != dest.nbytes:
                            raise OSError(f"{bucket.path} is shorter than what was written")
                    at += rows

    def classify(self, classify: ClassifyPart, too_big: list[dict] | None) -> Part:
        """Every shard read back and classified in turn, merged."""
        if not self.n_packets:
            return classify(empty_packets(), too_big)[1]
        parts = []
        shards = self.shards()
        # one table for every shard, sized for the largest: each shard's rows are read into
        # pages the one before faulted in (a fresh 400 MB table costs ~1 s of page faults
        # on the machine measured), and peak memory is the largest shard's either way
        space = columns(max(self.rows_of(s) for s in shards), PACKET_DTYPES)
        for shard in shards:
            give_back_free_memory()  # what the reading (or the shard before) left free
            packets, borrowed = self.load(shard, into=space)
            flow_id, part = classify(packets, too_big)
            part.drop_flow = int(flow_id[borrowed]) if borrowed >= 0 else -1
            del packets, flow_id
            parts.append(_own_memory(part, space))
        return merge_parts(parts)


def _own_memory(part: Part, table: dict[str, np.ndarray]) -> Part:
    """``part`` with a copy of any column that may be a view of ``table``'s memory, which
    the next shard overwrites (the classifier's outputs are gathered copies; this makes
    sure)."""
    block = next(iter(table.values())).base

    def own(col):
        if isinstance(col, Nullable):
            return Nullable(own(col.values), own(col.valid))
        return col.copy() if np.may_share_memory(col, block) else col

    for t in (part.flows, part.wire, part.per_flow):
        for name in t:
            t[name] = own(t[name])
    return part


def spill_capture(stream, directory: str | os.PathLike | None = None) -> SpilledCapture:
    """Read an open capture stream (analyze.capture.open_capture) to its end, spilling its
    packets into bucket files in a temporary directory made in ``directory`` (None: the
    system's). The caller closes the result (which removes the files)."""
    try:
        return _spill(stream, directory)
    except OSError as err:  # no space, no permission: the machine's, not the input's
        raise RetranscopeError(
            f"cannot spill the capture's packets to {directory or tempfile.gettempdir()} "
            f"({err.strerror or err}): they take ~{ROW_BYTES} bytes a TCP packet there; free "
            "space there, give another --out, or analyze in memory with --no-spill"
        ) from err


def _spill(stream, directory) -> SpilledCapture:
    tmp = tempfile.TemporaryDirectory(prefix="retranscope-spill-", dir=directory)
    buckets = [Bucket(Path(tmp.name) / f"bucket{i:03d}") for i in range(SPILL_BUCKETS)]
    files: dict[int, BinaryIO] = {}
    anchor, anchor_bucket, anchor_ts = None, -1, None
    try:
        for chunk in stream:
            bucket_of = tuple_bucket(chunk, SPILL_BUCKETS)
            first = int(np.argmin(chunk["ts_ns"]))
            if anchor_ts is None or int(chunk["ts_ns"][first]) < anchor_ts:
                anchor_ts = int(chunk["ts_ns"][first])
                anchor = {name: col[first : first + 1].copy() for name, col in chunk.items()}
                anchor_bucket = int(bucket_of[first])
            order = np.argsort(bucket_of, kind="stable")
            sorted_b = bucket_of[order]
            starts = np.flatnonzero(np.r_[True, sorted_b[1:] != sorted_b[:-1]])
            ends = np.r_[starts[1:], len(order)]
            # the rows grouped by bucket once; each bucket's block is then slices of them,
            # written as they are (no copy into bytes)
            grouped = [
                chunk[name] if len(starts) == 1 else chunk[name][order] for name in PACKET_DTYPES
            ]
            for lo, hi in zip(starts.tolist(), ends.tolist()):
                i = int(sorted_b[lo])
                if i not in files:
                    files[i] = open(buckets[i].path, "wb")
                f, bucket = files[i], buckets[i]
                for col in grouped:
                    f.write(col[lo:hi].view(np.uint8))
                bucket.blocks.append((bucket.written, hi - lo))
                bucket.written += (hi - lo) * ROW_BYTES
                bucket.rows += hi - lo
    except BaseException:
        for f in files.values():
            f.close()
        tmp.cleanup()
        raise
    for f in files.values():
        f.close()
    return SpilledCapture(stream.meta, buckets, anchor, anchor_bucket, tmp)
