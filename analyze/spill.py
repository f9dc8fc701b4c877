"""A capture bigger than memory: its packets spilled to disk by 4-tuple, classified a
shard at a time.

One streaming pass over the capture (analyze/capture: chunks, bounded memory) writes each
chunk's rows to one of SPILL_BUCKETS files, chosen by a hash of the row's 4-tuple (both
directions alike, shards.tuple_hash): every packet of a connection lands in one file, in
capture order. The buckets are then dealt into shards of about SHARD_PACKETS packets
(biggest first, to the least loaded), and each shard is read back, classified as if it
were the whole capture (shards.classify_part's contract) and dropped before the next is
read: peak memory follows the largest shard, not the capture. A 4-tuple is never split,
so one connection bigger than memory still needs its own packets in memory. Each shard's
output rows are stored beside the buckets as it is done, and the outputs are merged from
them a row group at a time, numbered exactly as shards.merge_parts numbers in-memory
shards (analyze/streamed.py): the outputs are those of the whole capture classified at
once (tests/test_spill.py).

On disk, a bucket file is a sequence of blocks, one per chunk that had rows for it: each
block is the packet table's columns one after the other (schemas/packets.SPILLED_DTYPES
order and dtypes: the addresses are the number of the row's 4-tuple, TupleNumbers), then,
for the block's rows that carry SACK blocks only, their row numbers in the block (uint32)
and their SACK edges (SACK_EDGE_COLUMNS' order): a shard holds the edges sparse
(schemas/packets.SACK_ROWS). ``Bucket.blocks`` says where each block starts, how many rows
it holds and how many of them carry SACK blocks.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from retranscope.analyze.capture.chunks import FileState
from retranscope.analyze.capture.decode import columns
from retranscope.analyze.capture.parallel import default_jobs
from retranscope.analyze.capture.pcap import PcapWalker
from retranscope.analyze.capture.reader import CaptureStream, ReadProgress, SetRunRead
from retranscope.analyze.capture.records import CaptureMeta
from retranscope.analyze.capture.split import SetPlan, SplitPlan, part_reader
from retranscope.analyze.flows import _mix64
from retranscope.analyze.memory import available_memory_bytes, no_huge_pages
from retranscope.analyze.shards import (
    SHARD_PACKETS,
    ClassifyPart,
    Part,
    bucket_of_hash,
    canonical_tuple,
    give_back_free_memory,
)
from retranscope.analyze.streamed import Digest, Merged, finish_part, merge
from retranscope.analyze.windows import (
    WINDOW_FOOTPRINT_ROWS,
    WINDOWED_MIN_ROWS,
    classify_in_windows,
    margin_may_help,
    merged_blocks,
    wider_margins,
)
from retranscope.errors import RetranscopeError
from retranscope.schemas.packets import (
    SACK_EDGE_COLUMNS,
    SACK_ROWS,
    SPILLED_DTYPES,
    empty_packets,
)

#: files the packets are spread over by 4-tuple (then dealt into shards of ~SHARD_PACKETS
#: packets), at most: there are no more shards than buckets, so with 64 a capture of many
#: connections past 64M packets made shards of more than 1M packets, and its peak grew
#: with its length; with 512, past 512M packets (~60 GB of headers-only capture). Opened
#: as rows come, all of them for a capture of many connections (_open_files_for)
SPILL_BUCKETS = 512
#: and at least: more buckets than a capture needs cost time (more, smaller blocks:
#: 512 instead of 64 took 1.12x the time on 13M packets of 125k connections)
SPILL_BUCKETS_MIN = 64
#: capture bytes (as stored, uncompressed) a bucket is planned for: two buckets a shard
#: of SHARD_PACKETS packets at >= 64 bytes a packet on disk (a 16-byte record header and
#: a 48-byte TCP/IP header at the least), so that shards are dealt evenly
BUCKET_INPUT_BYTES = 32 << 20
#: a capture (its files as stored, compressed or not) at least this big is spilled when
#: analyze chooses by itself. Measured on the 1.3M-packet capture (184 MB, docs/scale.md):
#: spilled, the same time and 286 MB peak instead of 491 MB; small captures stay in
#: memory, where the spill's files cost more than they save
SPILL_MIN_BYTES = 64 << 20
ROW_BYTES = sum(dt.itemsize for dt in SPILLED_DTYPES.values())
#: and a row that carries SACK blocks: its number in the block, its eight edges
SACK_ROW_BYTES = 4 + 4 * len(SACK_EDGE_COLUMNS)
#: Peak memory of classifying a spilled shard, in bytes a packet of the shard: its table
#: (ROW_BYTES, 66, and SACK_ROW_BYTES a row with SACK blocks) and the classifier's arrays
#: at their worst stage (~80: every stage's own peak is ~37 bytes a packet on the
#: 1.3M-packet capture, bench/memory_stages.py, on top of what earlier stages keep), plus
#: a margin. Measured: 669 MB for a shard of 3.49M packets of the 13M-packet capture
#: with the SACK edges dense (32 bytes a packet more), ~600 MB since (docs/scale.md)
SHARD_PEAK_BYTES_PER_PACKET = 220
#: chunks spilled between two returns of the heap's free memory to the kernel
TRIM_EVERY_CHUNKS = 16


@dataclass
class ShardProgress:
    """Where the classification of a spilled capture stands; handed to its ``progress``
    callback after each shard (the reading before it reports a ReadProgress)."""

    shards_done: int
    shards_total: int
    packets_done: int
    packets_total: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        return self.packets_done / self.packets_total if self.packets_total else 1.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before the first shard is done."""
        if self.packets_done <= 0 or self.elapsed_s <= 0:
            return None
        return self.elapsed_s * (self.packets_total - self.packets_done) / self.packets_done


@dataclass
class Bucket:
    path: Path
    rows: int = 0
    #: (file offset, rows, rows that carry SACK blocks)
    blocks: list[tuple[int, int, int]] = field(default_factory=list)
    written: int = 0
    sack_rows: int = 0
    #: the same bucket's blocks from the later parts of a split file, each read after this
    #: one's and fixed up as it says (_Spiller.absorb)
    later: list[tuple[Bucket, _Fix]] = field(default_factory=list)


@dataclass
class SpilledCapture:
    """A capture read once and spilled (``meta`` as read_capture gives it); ``classify``
    gives its merged classification, shard by shard."""

    meta: CaptureMeta
    buckets: list[Bucket]
    tuples: dict[str, np.ndarray]  # the 4-tuples the rows' ``tuple`` column numbers
    anchor: dict[str, np.ndarray] | None  # the capture's first packet (one row)
    anchor_bucket: int
    directory: tempfile.TemporaryDirectory
    progress: Callable[[ShardProgress], None] | None = None  # after each shard

    @property
    def n_packets(self) -> int:
        return sum(b.rows for b in self.buckets)

    def close(self) -> None:
        self.directory.cleanup()

    def shards(self, packets: int | None = None) -> list[list[int]]:
        """Bucket numbers of each shard: buckets dealt biggest first to the least loaded
        shard, as many shards as shards of ``packets`` (None: SHARD_PACKETS) ask for (at
        least one)."""
        used = [i for i, b in enumerate(self.buckets) if b.rows]
        budget = max(1, SHARD_PACKETS if packets is None else packets)
        return self._deal(used, max(1, min(len(used), -(-self.n_packets // budget))))

    def _deal(self, bucket_numbers: list[int], n_shards: int) -> list[list[int]]:
        """These buckets dealt biggest first to the least loaded of ``n_shards`` shards."""
        load = [0] * n_shards
        out: list[list[int]] = [[] for _ in range(n_shards)]
        for i in sorted(bucket_numbers, key=lambda i: -self.buckets[i].rows):
            s = load.index(min(load))
            out[s].append(i)
            load[s] += self.buckets[i].rows
        return [sorted(s) for s in out if s]

    def rows_of(self, bucket_numbers: list[int]) -> int:
        """Rows of the table ``load`` gives for these buckets."""
        n = self.packets_of(bucket_numbers)
        return n + (self.anchor is not None and self.anchor_bucket not in bucket_numbers)

    def packets_of(self, bucket_numbers: list[int]) -> int:
        """The packets of these buckets, without the anchor a shard borrows (``load``):
        what a shard holds in memory, for the bound on shards classified at once (one
        borrowed row is nothing, but counted it kept the pieces of one shard from ever
        fitting together)."""
        return sum(self.buckets[i].rows for i in bucket_numbers)

    def load(
        self, bucket_numbers: list[int], into: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], int]:
        """The packet table of these buckets, in capture order, with the capture's first
        packet added when they lack it; and that row's position (-1: not added). The
        table is one allocation (``into``'s first rows, when given), reordered in place:
        no second copy of the shard."""
        n = self.packets_of(bucket_numbers)
        borrow = self.anchor is not None and self.anchor_bucket not in bucket_numbers
        if into is None:
            table = columns(n + borrow, SPILLED_DTYPES)
        else:
            table = {name: col[: n + borrow] for name, col in into.items()}
        sack = self._read_into(table, bucket_numbers)
        if len(bucket_numbers) > 1:  # each file is in capture order; together they are not
            order = np.argsort(table["frame"][:n], kind="stable")
            for col in table.values():
                col[:n] = col[:n][order]  # one column's temporary at a time
            at = np.empty(n, dtype=np.int64)
            at[order] = np.arange(n)  # where each row went
            del order
            rows = at[sack[SACK_ROWS]]
            del at
            by_row = np.argsort(rows, kind="stable")
            sack = {name: col[by_row] for name, col in sack.items()}
            sack[SACK_ROWS] = rows[by_row]
        pos = -1
        if borrow:
            assert self.anchor is not None
            pos = int(np.searchsorted(table["frame"][:n], self.anchor["frame"][0]))
            for name, col in table.items():
                col[pos + 1 :] = col[pos:n]  # numpy copies overlapping ranges as if buffered
                col[pos] = self.anchor[name][0]
            sack[SACK_ROWS][sack[SACK_ROWS] >= pos] += 1
            if self.anchor["sack_n"][0] > 0:
                k = int(np.searchsorted(sack[SACK_ROWS], pos))
                sack = {
                    name: np.insert(col, k, pos if name == SACK_ROWS else self.anchor[name][0])
                    for name, col in sack.items()
                }
        return {**table, **sack}, pos

    def _read_into(
        self, table: dict[str, np.ndarray], bucket_numbers: list[int]
    ) -> dict[str, np.ndarray]:
        """Each block's columns read from the file straight into the table's: one
        preadv a block (a capture of many connections has many small blocks, and a read
        a column cost ~2 us each: ~1 s on 13M packets of 125k connections). A bucket's
        blocks from a split file's later parts follow its own, fixed up as they come.
        Returns the SACK edges of the rows that have them, and those rows' numbers
        (SACK_ROWS), in the order read."""
        n_sack = sum(self.buckets[i].sack_rows for i in bucket_numbers)
        sack = {name: np.empty(n_sack, dtype=np.uint32) for name in SACK_EDGE_COLUMNS}
        sack[SACK_ROWS] = np.empty(n_sack, dtype=np.int64)
        into = _SackInto(sack, np.empty(n_sack, dtype=np.uint32))
        at = 0
        for i in bucket_numbers:
            at = _read_blocks(self.buckets[i], table, at, into)
            for later, fix in self.buckets[i].later:
                start = at
                at = _read_blocks(later, table, at, into)
                fix.apply({name: table[name][start:at] for name in ("frame", "tuple")})
        sack[SACK_ROWS] += into.in_block  # the block's first row, plus the row's in it
        return sack

    def classify(
        self, classify: ClassifyPart, too_big: list[dict] | None, jobs: int | None = 1
    ) -> Merged:
        """Every shard read back and classified, its output rows stored as it is done
        (streamed.finish_part), and the whole capture's outputs merged from them: in turn
        in this process, or on forked workers, each reading its own shards from the
        bucket files, as many at once as ``_plan`` says for ``jobs`` (None: every core,
        in no more memory than one process takes)."""
        if not self.n_packets:
            return merge([self._finish(classify(empty_packets(), too_big)[1], 0, 1)])
        shards, workers, budget = self._plan(jobs)
        if workers >= 2:
            return merge(self._classify_forked(shards, classify, too_big, workers, budget))
        digests = []
        report = self._reporter(shards)
        no_huge_pages()  # the shards' arrays fill fresh memory first (memory.no_huge_pages)
        # one table for every shard, sized for the largest: each shard's rows are read into
        # pages the one before faulted in (a fresh 400 MB table costs ~1 s of page faults
        # on the machine measured), and peak memory is the largest shard's either way; a
        # shard's rows are stored before the next overwrites the table
        whole = [self.rows_of(s) for s in shards if not self.windowed(s)]
        space = columns(max(whole, default=0), SPILLED_DTYPES)
        for number, shard in enumerate(shards):
            part = self.classify_shard(shard, classify, too_big, space)
            digests.append(self._finish(part, number, len(shards)))
            del part
            report(shard)
        return merge(digests)

    def _plan(self, jobs: int | None) -> tuple[list[list[int]], int, int | None]:
        """(shards, processes, the most packets of shards classified at once; None: no
        bound) for ``jobs``.

        One process classifies the shards of SHARD_PACKETS in turn: its peak is the
        largest. With N, each of those shards is cut in N (its buckets dealt), and a
        shard starts only while the packets of those running, with it, stay within the
        bound: for ``jobs`` None (the default: every core) the largest shard one process
        would hold, so that the cores cost no more shard memory (a capture of many
        connections is classified on all of them, one of a few huge connections in turn
        as before); for
        an explicit N the memory available (cgroup limits included), so that asking for
        more cores never gets the analysis killed where memory is short. Where no two
        shards fit at once, one process, in turn."""
        whole = self.shards()
        n = default_jobs() if jobs is None else max(1, int(jobs))
        if n < 2:
            return whole, 1, None
        # one process holds a shard whole (up to SHARD_PACKETS, more where a bucket is
        # bigger) or, bigger than WINDOWED_MIN_ROWS, a window at a time (windows.py): the
        # cores share what one process may hold, SHARD_PACKETS or the largest shard. Not
        # the largest where it is smaller: the pieces of shards packed below it would
        # then pair only as they were packed, and a core waits (the 1.3M-packet capture's
        # four connections, 298k-377k packets, packed in two shards of 625k and 675k: a
        # core idle for a third of their classification)
        bound = max(SHARD_PACKETS if self.windowed(s) else self.packets_of(s) for s in whole)
        bound = max(bound, SHARD_PACKETS)
        # each shard of one process cut in n: its pieces always fit at once in the bound
        # (a cut of all the buckets afresh could pair none of its shards within it)
        fine = [piece for s in whole for piece in self._deal(s, n)]
        room = available_memory_bytes()
        room_packets = None if room is None else room // SHARD_PEAK_BYTES_PER_PACKET
        if jobs is None:
            budget = bound if room_packets is None else min(bound, room_packets)
        else:
            budget = room_packets
        sizes = sorted(self.footprint(s) for s in fine)
        if len(fine) < 2 or (budget is not None and sizes[0] + sizes[1] > budget):
            return whole, 1, None
        return fine, min(n, len(fine)), budget

    def _finish(self, part: Part, number: int, shards: int) -> Digest:
        """Shard ``number``'s (of ``shards``) output rows stored beside the buckets; its
        digest."""
        return finish_part(part, Path(self.directory.name), number, shards)

    def _reporter(self, shards: list[list[int]]) -> Callable[[list[int] | None], None]:
        """A function to call as each shard is done: it tells ``progress`` (and tells it
        now that none is)."""
        t0 = time.monotonic()
        done = [0, 0]  # shards, packets
        total = self.n_packets

        def report(shard: list[int] | None) -> None:
            if shard is not None:
                done[0] += 1
                done[1] += sum(self.buckets[i].rows for i in shard)
            if self.progress is not None:
                elapsed = time.monotonic() - t0
                self.progress(ShardProgress(done[0], len(shards), done[1], total, elapsed))

        report(None)  # started: the line shows from the first shard on
        return report

    def classify_shard(
        self,
        shard: list[int],
        classify: ClassifyPart,
        too_big: list[dict] | None,
        into: dict[str, np.ndarray] | None = None,
    ) -> Part:
        """One shard (its bucket numbers) read back and classified. Into ``into`` (one
        process classifying the shards in turn) the heap is not trimmed first: the shard
        before left its arrays' pages free for this one's, and handing them back to the
        kernel only made them fault in again, zero-filled (the 13M-packet capture: 0.93x
        the wall time, 6 paired runs, for a peak 14 MB higher). A forked worker's shards
        (no ``into``) start from a trimmed heap, as before: without the trim the workers
        took 18 MB more on the 1.3M-packet capture and 30 MB more on the 125k-connection
        one, in the same time."""
        if into is None:
            give_back_free_memory()  # what the shard before left free
        if self.windowed(shard):
            part = self._classify_windows(shard, too_big)
            if part is not None:
                return part
            give_back_free_memory()
            into = None  # sized for the shards classified whole
        packets, borrowed = self.load(shard, into=into)
        flow_id, part = classify(packets, too_big, tuples=self.tuples)
        part.drop_flow = int(flow_id[borrowed]) if borrowed >= 0 else -1
        return part

    def windowed(self, shard: list[int]) -> bool:
        """Is this shard classified a window at a time (analyze/windows.py)?"""
        return self.packets_of(shard) > WINDOWED_MIN_ROWS

    def footprint(self, shard: list[int]) -> int:
        """The rows this shard's classification holds at once: a window's or all."""
        return WINDOW_FOOTPRINT_ROWS if self.windowed(shard) else self.packets_of(shard)

    def _classify_windows(self, shard: list[int], too_big: list[dict] | None) -> Part | None:
        """The shard classified a window at a time from its bucket files, or None where the
        windows could not vouch for giving what the whole shard gives (windows.py)."""
        borrowed = -1
        if self.anchor is not None and self.anchor_bucket not in shard:
            borrowed = int(self.anchor["frame"][0])
        anchor = -1 if self.anchor is None else int(self.anchor["frame"][0])
        tried = []
        for margin in wider_margins():
            streams = [_bucket_blocks(self.buckets[i]) for i in shard]
            if borrowed >= 0 and self.anchor is not None:
                streams.append(iter([_sparse_row(self.anchor)]))
            part, why = classify_in_windows(
                merged_blocks(streams),
                self.rows_of(shard),
                too_big,
                self.tuples,
                anchor_frame=anchor,
                borrowed_frame=borrowed,
                margin_rows=margin,
                directory=Path(self.directory.name),
            )
            if part is not None:
                return part
            tried.append(f"{margin:,}")
            if not margin_may_help(why):
                break
        # not a loss (the shard is classified whole next), but memory then follows it
        print(
            f"retranscope: notice: {self.packets_of(shard):,} packets of one shard "
            f"classified whole, not a window at a time ({why}; margins of "
            f"{', '.join(tried)} rows tried): memory follows them",
            file=sys.stderr,
        )
        return None

    def _classify_forked(
        self, shards, classify, too_big, jobs: int, budget: int | None
    ) -> list[Digest]:
        """The shards' digests, in ``shards``' order, classified on ``jobs`` forked
        workers: the biggest shard first that fits beside those running (their packets
        within ``budget``; the first always starts), so that the last to finish is a
        small one."""
        give_back_free_memory()  # pages shared after the fork are copied on a write
        _FORKED.update(spilled=self, classify=classify, too_big=too_big, shards=len(shards))
        rows = [self.footprint(s) for s in shards]
        pending = sorted(range(len(shards)), key=lambda i: -rows[i])
        running: dict[Future, int] = {}
        digests: dict[int, Digest] = {}
        try:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                report = self._reporter(shards)
                while pending or running:
                    held = sum(rows[i] for i in running.values())
                    while pending and len(running) < jobs:
                        fit = next(
                            (
                                i
                                for i in pending
                                if budget is None or not running or held + rows[i] <= budget
                            ),
                            None,
                        )
                        if fit is None:
                            break
                        pending.remove(fit)
                        running[pool.submit(_forked_shard, shards[fit], fit)] = fit
                        held += rows[fit]
                    _load_writer()
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        i = running.pop(f)
                        digests[i] = f.result()
                        report(shards[i])
                return [digests[i] for i in range(len(shards))]
        finally:
            _FORKED.clear()


#: what a forked worker finds of its parent's SpilledCapture.classify (fork: inherited)
_FORKED: dict = {}


def _load_writer() -> None:
    """Load what writes the outputs (pyarrow: ~30 ms, ~55 MB resident) while the workers
    classify, once they are forked (a worker forked after it would carry its pages): this
    process waits for them anyway, and the writing, which follows them, is the analysis's
    serial end."""
    import retranscope.analyze.outputs  # noqa: F401


def _forked_shard(shard: list[int], number: int) -> Digest:
    """A worker's shard, read into a table of its own, its output rows stored."""
    spilled = _FORKED["spilled"]
    part = spilled.classify_shard(shard, _FORKED["classify"], _FORKED["too_big"])
    return spilled._finish(part, number, _FORKED["shards"])


@dataclass
class _SackInto:
    """Where the SACK-carrying rows of the blocks being read go: ``sack``'s columns from
    ``filled`` on, each row's number in its block into ``in_block`` (SACK_ROWS gets the
    block's first row)."""

    sack: dict[str, np.ndarray]
    in_block: np.ndarray
    filled: int = 0


def _read_blocks(bucket: Bucket, table: dict[str, np.ndarray], at: int, into: _SackInto) -> int:
    """``bucket``'s blocks read into ``table``'s rows from ``at`` on, their SACK-carrying
    rows into ``into``; returns the row after them."""
    if not bucket.blocks:  # a bucket only a split file's later parts wrote to
        return at
    fd = os.open(bucket.path, os.O_RDONLY)
    try:
        for offset, rows, n_sack in bucket.blocks:
            dest = [col[at : at + rows].view(np.uint8).data for col in table.values()]
            if n_sack:
                s = slice(into.filled, into.filled + n_sack)
                into.sack[SACK_ROWS][s] = at
                dest.append(into.in_block[s].view(np.uint8).data)
                dest += [into.sack[name][s].view(np.uint8).data for name in SACK_EDGE_COLUMNS]
                into.filled += n_sack
            if os.preadv(fd, dest, offset) != rows * ROW_BYTES + n_sack * SACK_ROW_BYTES:
                raise OSError(f"{bucket.path} is shorter than what was written")
            at += rows
    finally:
        os.close(fd)
    return at


def _bucket_blocks(bucket: Bucket) -> Iterator[dict[str, np.ndarray]]:
    """A bucket's rows a block at a time (capture order), each block a packet table with
    its sparse SACK edges (SACK_ROWS); a split file's later parts' blocks after, fixed
    up: what _read_into reads into one table, for a shard read a window at a time."""
    for part, fix in [(bucket, None), *bucket.later]:
        for offset, rows, n_sack in part.blocks:
            block = columns(rows, SPILLED_DTYPES)
            sack = {name: np.empty(n_sack, dtype=np.uint32) for name in SACK_EDGE_COLUMNS}
            sack[SACK_ROWS] = np.empty(n_sack, dtype=np.int64)
            into = _SackInto(sack, np.empty(n_sack, dtype=np.uint32))
            _read_blocks(Bucket(part.path, blocks=[(offset, rows, n_sack)]), block, 0, into)
            if fix is not None:
                fix.apply(block)
            sack[SACK_ROWS] += into.in_block  # the block's first row (0), plus the row's
            yield {**block, **sack}


def _sparse_row(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A one-row packet table with dense SACK edges (the anchor) in the sparse form."""
    has = np.flatnonzero(row["sack_n"] > 0)
    out = {name: row[name] for name in SPILLED_DTYPES}
    return {**out, SACK_ROWS: has, **{name: row[name][has] for name in SACK_EDGE_COLUMNS}}


def spill_capture(
    stream, directory: str | os.PathLike | None = None, jobs: int = 1
) -> SpilledCapture:
    """Read an open capture stream (analyze.capture.open_capture) to its end, spilling its
    packets into bucket files in a temporary directory made in ``directory`` (None: the
    system's). The caller closes the result (which removes the files). ``jobs`` of 2 or
    more: a pcap file, or a set of files, is read in up to that many parts at once
    (capture/split.py)."""
    try:
        return _spill(stream, directory, jobs)
    except OSError as err:  # no space, no permission: the machine's, not the input's
        raise RetranscopeError(
            f"cannot spill the capture's packets to {directory or tempfile.gettempdir()} "
            f"({err.strerror or err}): they take ~{ROW_BYTES} bytes a TCP packet there; free "
            "space there, give another --out, or analyze in memory with --no-spill"
        ) from err


class _ReadAgain(Exception):
    """The parts read on processes of their own cannot be joined into what one process
    reads: a run of a set's files starts before a packet of the runs before it (the files
    overlap in time, and one stream merges them by timestamp), or a part's process ended
    without its packets (killed: out of memory, say). The capture is then read again by
    this process alone; ``why`` (None: nothing to tell) is said in a warning."""

    def __init__(self, why: str | None = None):
        super().__init__(why)
        self.why = why


def _spill(stream, directory, jobs: int = 1) -> SpilledCapture:
    try:
        return _spill_once(stream, directory, jobs)
    except _ReadAgain as again:
        # a guess that cost time, never a packet
        stream.restart()
        if again.why:
            stream.set_warnings.append(again.why)
        return _spill_once(stream, directory, 1)


def _spill_once(stream, directory, jobs: int) -> SpilledCapture:
    n_buckets = _open_files_for(_buckets_for(stream))
    tmp = tempfile.TemporaryDirectory(prefix="retranscope-spill-", dir=directory)
    try:
        plan = stream.split(jobs) if jobs >= 2 else None
        parts = _Parts(plan, Path(tmp.name), n_buckets, stream) if plan else None
        spiller = _Spiller(Path(tmp.name), n_buckets, "")
        try:
            for chunk in stream:
                spiller.add(chunk)
            spiller.close()
            if parts is not None:
                parts.join(spiller, stream)
        finally:
            spiller.close()
            if parts is not None:
                parts.stop()  # before the files go: they may still be writing
    except BaseException:
        tmp.cleanup()
        raise
    return SpilledCapture(
        stream.meta,
        spiller.buckets,
        spiller.tuples.table(),
        spiller.anchor,
        spiller.anchor_bucket,
        tmp,
    )


@dataclass
class _Fix:
    """What a bucket block from a later part of a split file (capture/split.py) needs
    when it is read: its frames moved by the records before the part, and its tuple
    numbers (the part's own) made the capture's."""

    frames_before: int
    tuple_number: np.ndarray  # the capture's number of each of the part's tuples

    def apply(self, rows: dict[str, np.ndarray]) -> None:
        rows["frame"] += self.frames_before
        code = rows["tuple"]
        code[:] = (self.tuple_number[code >> 1] << 1) | (code & 1)


class _Spiller:
    """The spill of one stream of chunks (a capture, or a part of a split file) into
    bucket files named with ``suffix``: each chunk's rows grouped by bucket, a block a
    bucket; the 4-tuples numbered; the first packet (in time) kept as the anchor."""

    def __init__(self, directory: Path, n_buckets: int, suffix: str):
        self.buckets = [Bucket(directory / f"bucket{i:04d}{suffix}") for i in range(n_buckets)]
        self.files: dict[int, BinaryIO] = {}
        self.tuples = TupleNumbers()
        self.anchor: dict[str, np.ndarray] | None = None
        self.anchor_bucket = -1
        self.anchor_ts: int | None = None
        self.chunks = 0

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        self.chunks += 1
        if self.chunks % TRIM_EVERY_CHUNKS == 0:
            # chunks of a few rows more or less than the last leave holes their arrays do
            # not fit: the heap would grow with the capture's length (the 13M-packet
            # capture's reading process: 81 MB against the 1.3M one's 67; 76 trimmed)
            give_back_free_memory()
        buckets, files = self.buckets, self.files
        first_sent, canon = canonical_tuple(chunk)
        h = _mix64(canon)  # shards.tuple_hash
        bucket_of = bucket_of_hash(h, len(buckets))
        code = self.tuples.code(h, canon, first_sent)
        del canon, h, first_sent
        rows: dict[str, np.ndarray] = {
            name: code if name == "tuple" else chunk[name] for name in SPILLED_DTYPES
        }
        first = int(np.argmin(chunk["ts_ns"]))
        if self._earlier(int(chunk["ts_ns"][first])):
            self.anchor = {
                name: col[first : first + 1].copy()
                for name, col in (*rows.items(), *((e, chunk[e]) for e in SACK_EDGE_COLUMNS))
            }
            self.anchor_bucket = int(bucket_of[first])
        order = np.argsort(bucket_of, kind="stable")
        sorted_b = bucket_of[order]
        starts = np.flatnonzero(np.r_[True, sorted_b[1:] != sorted_b[:-1]])
        ends = np.r_[starts[1:], len(order)]
        # the rows grouped by bucket once; each bucket's block is then slices of them,
        # written as they are (no copy into bytes)
        one = len(starts) == 1
        grouped: list[np.ndarray] = [col if one else col[order] for col in rows.values()]
        # the rows that carry SACK blocks, where they are in that grouping, and their edges
        at_sack = np.flatnonzero(chunk["sack_n"] if one else chunk["sack_n"][order])
        edges = [chunk[e][at_sack if one else order[at_sack]] for e in SACK_EDGE_COLUMNS]
        bounds: list[list[int]] = [
            b.tolist() for b in (starts, ends, *np.searchsorted(at_sack, [starts, ends]))
        ]
        del rows, code
        blocks = zip(*bounds)
        for lo, hi, s_lo, s_hi in blocks:
            i = int(sorted_b[lo])
            if i not in files:
                files[i] = open(buckets[i].path, "wb", buffering=0)
            bucket = buckets[i]
            block = [col[lo:hi] for col in grouped]
            if s_hi > s_lo:
                block.append((at_sack[s_lo:s_hi] - lo).astype(np.uint32))
                block += [col[s_lo:s_hi] for col in edges]
            _write_all(files[i], block)  # one writev a block
            bucket.blocks.append((bucket.written, hi - lo, s_hi - s_lo))
            bucket.written += (hi - lo) * ROW_BYTES + (s_hi - s_lo) * SACK_ROW_BYTES
            bucket.rows += hi - lo
            bucket.sack_rows += s_hi - s_lo

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()

    def absorb(self, later: _PartSpilled, frames_before: int) -> None:
        """Add the spill of the file's next part (read on another process): its tuples
        numbered after this one's, in their order of first appearance (as one process
        reading on would have numbered them), its blocks read after this one's."""
        fields = list(later.tuples.values())
        code = self.tuples.code(_mix64(fields), fields, np.ones(len(fields[0]), bool))
        fix = _Fix(frames_before, (code >> 1).astype(np.uint32))
        for mine, theirs in zip(self.buckets, later.buckets):
            if theirs.rows:
                mine.later.append((theirs, fix))
                mine.rows += theirs.rows
                mine.sack_rows += theirs.sack_rows
        if later.anchor is not None:
            fix.apply(later.anchor)
            if self._earlier(int(later.anchor["ts_ns"][0])):
                self.anchor, self.anchor_bucket = later.anchor, later.anchor_bucket

    def _earlier(self, ts: int) -> bool:
        """Whether a packet at ``ts`` is the capture's first so far (and note its time):
        the first of the earliest, in file order, as chunks and then parts come in it."""
        if self.anchor_ts is not None and ts >= self.anchor_ts:
            return False
        self.anchor_ts = ts
        return True


@dataclass
class _PartSpilled:
    """What the process reading a part of a split file, or a run of a set's files,
    sends back: its spill, and what its reader learnt (capture/split.py): a file's part
    its FileState and walker, whether it ended at the part's end and the bytes it read;
    a run, what the set's stream absorbs of it (``run``)."""

    buckets: list[Bucket]
    tuples: dict[str, np.ndarray]
    anchor: dict[str, np.ndarray] | None
    anchor_bucket: int
    state: FileState | None = None
    walker: PcapWalker | None = None
    ended_at_part_end: bool = True
    bytes_read: int = 0
    run: SetRunRead | None = None


class _Parts:
    """The processes reading a split file's later parts, or a set's later runs of files
    (capture/split.py), started at once, each spilling into bucket files of its own;
    ``join`` adds those that follow on from the first part to its spill, and drops the
    rest."""

    def __init__(self, plan: SplitPlan | SetPlan, directory: Path, n_buckets: int, stream):
        ctx = multiprocessing.get_context("fork")
        self.plan = plan
        self.procs: list = []
        self.pipes: list = []
        stream.others_done = []
        n_parts = len(plan.bounds) if isinstance(plan, SetPlan) else len(plan.starts) + 1
        try:
            for k in range(1, n_parts):
                done = ctx.RawArray("q", 3)  # bytes, records, TCP packets: the progress
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_spill_part,
                    args=(plan, k, directory, n_buckets, send, done, stream.chunk_bytes),
                    daemon=True,
                )
                proc.start()
                send.close()
                self.procs.append(proc)
                self.pipes.append(receive)
                stream.others_done.append(done)
        except BaseException:
            self.stop()
            raise

    def join(self, spiller: _Spiller, stream) -> None:
        """Raises _ReadAgain when a run of a set starts before the latest packet of the
        runs before it, or a part's process ended without its packets (what was read is
        then no part of the result)."""
        runs = self.plan if isinstance(self.plan, SetPlan) else None
        latest = stream.max_key if runs else 0
        try:
            if runs and not stream.numbered_as(runs.maps):
                raise _ReadAgain  # a file of this run described an interface later on
            for k, (proc, pipe) in enumerate(zip(self.procs, self.pipes), start=1):
                if not runs and not stream.ended_at_part_end():
                    break  # the part before read on: this one's start was no record's
                try:
                    status, value = pipe.recv()
                except EOFError:
                    proc.join()
                    raise _ReadAgain(
                        f"the process reading part {k + 1} of the capture ended without "
                        f"its packets (exit code {proc.exitcode}): the capture was read "
                        "again, by one process"
                    ) from None
                if status == "error":
                    raise value
                if runs:
                    assert value.run is not None
                    first = runs.run(k)[0].first_ts_ns
                    if first is not None and first < latest:
                        raise _ReadAgain
                    latest = max(latest, value.run.max_key)
                    frames_before = stream.absorb_files(value.run)
                    if not stream.numbered_as(runs.maps):
                        raise _ReadAgain  # a file described an interface later on
                else:
                    frames_before = stream.absorb(
                        value.state, value.walker, value.ended_at_part_end, value.bytes_read
                    )
                spiller.absorb(value, frames_before)
        finally:
            stream.others_done = []  # parts dropped, if any, are no part of what was read
            self.stop()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for pipe in self.pipes:
            pipe.close()


def _spill_part(
    plan: SplitPlan | SetPlan, k: int, directory: Path, n_buckets: int, send, done, chunk_bytes
) -> None:
    """A process's part ``k`` of a split file, or run ``k`` of a set, spilled; the result
    sent on ``send``."""
    try:
        if isinstance(plan, SetPlan):
            send.send(("ok", _spill_run(plan, k, directory, n_buckets, done, chunk_bytes)))
            return
        reader = part_reader(plan, k)
        spiller = _Spiller(directory, n_buckets, f".{k}")
        try:
            for chunk in reader.chunks():
                if chunk.packets["frame"].size:
                    spiller.add(chunk.packets)
                done[:] = [
                    reader.consumed_bytes() - plan.starts[k - 1],
                    reader.state.records,
                    reader.state.tcp_packets,
                ]
        finally:
            spiller.close()
        assert isinstance(reader.walker, PcapWalker)
        result = _PartSpilled(
            spiller.buckets,
            spiller.tuples.table(),
            spiller.anchor,
            spiller.anchor_bucket,
            reader.state,
            reader.walker,
            reader.ended_at_part_end,
            reader.consumed_bytes() - plan.starts[k - 1],
        )
        send.send(("ok", result))
    except BaseException as err:  # the reading process says it; this one only reports
        try:
            send.send(("error", err))
        except Exception:
            send.send(("error", RetranscopeError(f"reading part {k + 1} of the capture: {err}")))
    finally:
        send.close()


def _spill_run(
    plan: SetPlan, k: int, directory: Path, n_buckets: int, done, chunk_bytes: int
) -> _PartSpilled:
    """Run ``k`` of a set's files read as the set's stream reads them, and spilled."""

    def report(p: ReadProgress) -> None:
        done[:] = [p.bytes_done, p.records_done, p.tcp_packets_done]

    files = plan.run(k)
    with CaptureStream(
        [f.path for f in files], jobs=1, chunk_bytes=chunk_bytes, progress=report
    ) as stream:
        stream.set_run(plan, k)
        spiller = _Spiller(directory, n_buckets, f".{k}")
        try:
            for chunk in stream:
                spiller.add(chunk)
        finally:
            spiller.close()
        run = stream.run_read()
    return _PartSpilled(
        spiller.buckets, spiller.tuples.table(), spiller.anchor, spiller.anchor_bucket, run=run
    )


def _buckets_for(stream) -> int:
    """Buckets for a capture: a power of two from SPILL_BUCKETS_MIN to SPILL_BUCKETS,
    BUCKET_INPUT_BYTES of it each; its size unknown (a pipe) or compressed (10 times as
    many packets a byte, headers-only captures compress about that well): the most."""
    from retranscope.analyze.capture.stream import file_compressed

    size = getattr(stream, "input_bytes", None)
    paths = getattr(stream, "paths", None) or []
    if size is None or not paths:
        return SPILL_BUCKETS
    try:
        if any(file_compressed(path) for path in paths):
            return SPILL_BUCKETS
    except OSError:
        return SPILL_BUCKETS
    want = max(1, -(-int(size) // BUCKET_INPUT_BYTES))
    return int(min(SPILL_BUCKETS, max(SPILL_BUCKETS_MIN, 1 << (want - 1).bit_length())))


def _open_files_for(n: int) -> int:
    """How many bucket files the spill may keep open, up to ``n``: the soft limit on open
    files raised towards the hard one where it is lower (1,024 is a common default), else
    a power of two that leaves 64 descriptors for the rest of the process."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return n
    room = max(1, int(soft) - 64)
    return 1 << (room.bit_length() - 1)


def _write_all(f: BinaryIO, parts: list[np.ndarray]) -> None:
    """``parts``' bytes, one after the other, with one writev. A write that stops short
    (a regular file's does only at a signal or a full disk) goes on from there, a part at
    a time: a full disk then raises."""
    fd = f.fileno()
    views = [p.data.cast("B") for p in parts]
    done = os.writev(fd, views)
    for v in views:
        if done >= v.nbytes:
            done -= v.nbytes
            continue
        v, done = v[done:], 0
        while v.nbytes:
            v = v[os.write(fd, v) :]


class TupleNumbers:
    """The 4-tuples of a capture being spilled, numbered in order of first appearance:
    each row is spilled with its tuple's number (and its direction in it) instead of its
    32 bytes of addresses, which the shard being classified would otherwise hold for
    every packet. Rows find their number by their tuple's 64-bit hash, then every row is
    checked against the tuple its number names: exact, whatever the hash does."""

    RECENT_TUPLES = 1 << 18
    #: up to this many tuples known, rows are looked up one by one, not once a tuple
    DIRECT_TUPLES = 1 << 16
    FIELDS = {"a_hi": np.uint64, "a_lo": np.uint64, "a_port": np.uint16}
    FIELDS |= {"b_hi": np.uint64, "b_lo": np.uint64, "b_port": np.uint16}

    def __init__(self) -> None:
        self.n = 0
        self._cols = {k: np.zeros(256, dtype=dt) for k, dt in self.FIELDS.items()}
        # known hashes, sorted, and the number of each: in two tables, a big one and one of
        # the RECENT_TUPLES newest, which new tuples are inserted into (an insert into the
        # big one would copy it at every chunk with a new tuple: ~1 s of 1M connections,
        # growing with the square of their count)
        self._hash = np.zeros(0, dtype=np.uint64)
        self._number = np.zeros(0, dtype=np.int64)
        self._recent_hash = np.zeros(0, dtype=np.uint64)
        self._recent_number = np.zeros(0, dtype=np.int64)

    def code(self, h: np.ndarray, canon: list[np.ndarray], first_sent: np.ndarray) -> np.ndarray:
        """Each row's ``tuple`` cell (schemas/packets.SPILLED_DTYPES): its tuple's number
        times two, plus one when the greater endpoint sent it. ``h``, ``canon``,
        ``first_sent``: shards.tuple_hash and canonical_tuple of the rows."""
        if self.n <= self.DIRECT_TUPLES:
            # a table that stays in the cache: every row looked up as it comes (sorting
            # the chunk's hashes would cost more: ~0.7 s of a 13M-packet capture)
            keys, inv = h, None
            number = self._lookup(keys)
            new = number < 0
            if new.any():
                rows = np.flatnonzero(new)
                new_hash, first = np.unique(h[rows], return_index=True)
                self._add(new_hash, rows[first], canon)
        else:
            # looked up once a tuple, in hash order: searchsorted with sorted keys walks
            # the table forwards (random keys cost a cache miss a step: ~6 s of a
            # 13M-packet capture of 1M connections)
            keys, first, inv = np.unique(h, return_index=True, return_inverse=True)
            number = self._lookup(keys)
            new = number < 0
            if new.any():
                self._add(keys[new], first[new], canon)
        if new.any():
            number[new] = self._lookup(keys[new])
        if inv is not None:
            number = number[inv.ravel()]
        if not all(np.array_equal(self._cols[k][number], c) for k, c in zip(self.FIELDS, canon)):
            raise RetranscopeError(
                "two of the capture's 4-tuples have one 64-bit hash (a chance of about one "
                "in 10^10): analyze it in memory with --no-spill"
            )
        return ((number << 1) | ~first_sent).astype(np.uint32)

    def _add(self, new_hash: np.ndarray, at: np.ndarray, canon: list[np.ndarray]) -> None:
        """Number the new tuples (``new_hash``, sorted; ``at``: the first row of each) in
        order of their first row."""
        rank = np.empty(len(at), dtype=np.int64)
        rank[np.argsort(at, kind="stable")] = np.arange(len(at))
        number = self.n + rank
        if self.n + len(at) >= 1 << 31:  # numbers and the direction bit fill a uint32
            raise RetranscopeError(
                "the capture has over 2^31 distinct 4-tuples, more than a spilled capture "
                "numbers: analyze it in memory with --no-spill"
            )
        size = len(self._cols["a_hi"])
        if self.n + len(at) > size:
            grown = max(2 * size, self.n + len(at))
            for k, col in self._cols.items():
                self._cols[k] = np.resize(col, grown)
        for col, c in zip(self._cols.values(), canon):
            col[number] = c[at]
        self.n += len(at)
        where = np.searchsorted(self._recent_hash, new_hash)  # new_hash is sorted
        self._recent_hash = np.insert(self._recent_hash, where, new_hash)
        self._recent_number = np.insert(self._recent_number, where, number)
        if len(self._recent_hash) > self.RECENT_TUPLES:
            where = np.searchsorted(self._hash, self._recent_hash)
            self._hash = np.insert(self._hash, where, self._recent_hash)
            self._number = np.insert(self._number, where, self._recent_number)
            self._recent_hash = self._recent_hash[:0]
            self._recent_number = self._recent_number[:0]

    def _lookup(self, uh: np.ndarray) -> np.ndarray:
        """The number of each of the sorted hashes ``uh`` (-1: not known yet)."""
        out = np.full(len(uh), -1, dtype=np.int64)
        for hashes, numbers in (
            (self._hash, self._number),
            (self._recent_hash, self._recent_number),
        ):
            pos = np.searchsorted(hashes, uh)
            hit = pos < len(hashes)
            hit[hit] = hashes[pos[hit]] == uh[hit]
            out[hit] = numbers[pos[hit]]
        return out

    def table(self) -> dict[str, np.ndarray]:
        """The tuples by number (FIELDS: lesser endpoint a, greater b): flows.flow_table's
        ``tuples``."""
        return {k: col[: self.n].copy() for k, col in self._cols.items()}
