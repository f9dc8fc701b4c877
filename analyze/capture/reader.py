"""The entry points: a capture (one file, a set of files, or a stream) -> packet table.

``open_capture`` returns a CaptureStream: iterate over it for packet-table chunks, in
bounded memory; ``read_capture`` is "concatenate the chunks" (the same table the
whole-file reader gave). The chunk contract (what a streaming consumer may rely on):

- Each chunk is a dict with exactly the columns of ``schemas/packets.py`` (those dtypes,
  contiguous, owned by the consumer), one row per TCP segment, with at least one row.
- Chunks come in capture order, and so do rows within a chunk: ``frame`` strictly
  increases through the whole stream. For one file, ``frame`` is the record number in
  the file, as Wireshark counts (records that are not TCP leave gaps). For a set, files
  follow each other by first packet time and frames go on through them; where files
  overlap in time, their records are merged by timestamp and numbered in that order.
- ``iface`` indexes ``meta.linktypes`` (a set numbers the files' interfaces through).
- ``meta`` grows as chunks come; it is final only once the iteration has ended
  (records, skip counts, truncation, drops, warnings, per-file details). A damaged file
  does not raise: its records up to the damage are chunks, and ``meta`` says where it
  stopped. What is refused raises a CaptureError (or BadInput) subclass with one line.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Union

import numpy as np

from retranscope.analyze.capture.chunks import DEFAULT_CHUNK_BYTES, FileReader, FileState
from retranscope.analyze.capture.decode import SKIP_REASONS, columns, encapsulation_counts
from retranscope.analyze.capture.merge import Merger
from retranscope.analyze.capture.parallel import Decoder
from retranscope.analyze.capture.pcap import PcapWalker
from retranscope.analyze.capture.pcapng import PcapngWalker
from retranscope.analyze.capture.records import MAX_DROP_MARKS, Capture, CaptureMeta
from retranscope.analyze.capture.sets import (
    InputFile,
    number_ifaces,
    order_by_first_packet,
    resolve_inputs,
)
from retranscope.analyze.capture.split import SetPlan, SplitPlan, plan_set_split, plan_split
from retranscope.analyze.capture.stream import (
    COMPRESSED_EXPANSION,
    file_compressed,
    open_stream,
    stream_of_fileobj,
)
from retranscope.schemas.packets import PACKET_DTYPES, TOO_BIG_FIELDS, empty_packets

Source = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]], BinaryIO]


@dataclass
class SetRunRead:
    """What the process reading a run of a set's files learnt (capture/split.py): each
    file's (FileState, walker, bytes read), the records its merge numbered, the latest
    record time it read, and the pairs of its files (numbered in the run) it merged."""

    files: list[tuple[FileState, PcapWalker | PcapngWalker, int]]
    frames: int
    max_key: int
    overlaps: set[tuple[int, int]]


@dataclass
class _ReadElsewhere:
    """A file of the set that another process read: what a FileReader would have kept."""

    state: FileState
    walker: PcapWalker | PcapngWalker
    bytes_read: int

    def consumed_bytes(self) -> int:
        return self.bytes_read


@dataclass
class ReadProgress:
    """Where reading stands; handed to the ``progress`` callback after each chunk."""

    bytes_done: int  # of the files as stored (compressed bytes for compressed files)
    bytes_total: int | None  # None when unknown (a pipe)
    records_done: int
    tcp_packets_done: int
    elapsed_s: float
    files_done: int
    files_total: int

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def records_per_s(self) -> float:
        return self.records_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None while it cannot be told."""
        if not self.bytes_total or self.bytes_done <= 0 or self.elapsed_s <= 0:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.bytes_per_s)

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else None


ProgressFn = Callable[[ReadProgress], None]
PARALLEL_MIN_BYTES = 64 << 20


def open_capture(
    source: Source,
    *,
    jobs: int | None = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: ProgressFn | None = None,
) -> CaptureStream:
    """A capture to read as chunks (see the module docstring for the contract).

    ``source``: a file path; a directory, a glob pattern, or a list of any of them (a
    capture set); "-" for standard input; or an open binary file. ``jobs``: worker
    processes that decode (1: none; None: every core). Raises BadInput for inputs that
    name no capture; errors about a file's content come during the iteration.
    """
    return CaptureStream(source, jobs=jobs, chunk_bytes=chunk_bytes, progress=progress)


def read_capture(
    source: Source,
    *,
    jobs: int | None = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: ProgressFn | None = None,
) -> Capture:
    """Read a capture into one packet table, one row per TCP segment.

    Raises BadInput (missing or unreadable file), NotACapture (empty, wrong magic),
    TruncatedCapture (cut inside the file header), UnknownLinkType (no interface has a
    link type decoded here), CaptureError (other unreadable files). A file damaged or cut
    after its header is read up to the damage: ``meta.truncated`` and a warning say where.
    """
    with open_capture(source, jobs=jobs, chunk_bytes=chunk_bytes, progress=progress) as cap:
        table: _TableBuilder | None = None
        for chunk in cap:
            if table is None:  # sized once the first block tells the bytes per record
                table = _TableBuilder(cap.size_hint_rows())
            table.add(chunk)
        return Capture(packets=table.result() if table else empty_packets(), meta=cap.meta)


class CaptureStream:
    """Iterate for packet-table chunks; ``meta`` is final once the iteration ends."""

    def __init__(
        self, source: Source, *, jobs: int | None, chunk_bytes: int, progress: ProgressFn | None
    ):
        self.chunk_bytes = chunk_bytes
        self.jobs = jobs
        self.progress = progress
        self.fileobj: BinaryIO | None = None
        self.set_warnings: list[str] = []
        if hasattr(source, "read"):
            self.fileobj = source  # type: ignore[assignment]
            self.label = getattr(source, "name", "<stream>")
            self.paths = [str(self.label)]
        else:
            given = [source] if isinstance(source, (str, os.PathLike)) else list(source)
            items: list[str] = [str(os.fspath(i)) for i in given]  # type: ignore[arg-type]
            self.label = ", ".join(items)
            self.paths, self.set_warnings = resolve_inputs(items)
        self.readers: list[FileReader] = []
        self._total_bytes = self._input_bytes()
        # Worker processes cost ~20 ms each to start and a copy of every block both ways:
        # below PARALLEL_MIN_BYTES of input they cannot pay back (bench/bench_reader.py)
        small = self._total_bytes is not None and self._total_bytes < PARALLEL_MIN_BYTES
        self.decoder = Decoder(1 if small else jobs)
        self._iface_maps: list[list[int]] = []
        self._linktypes: list[int] = []
        self._merger: Merger | None = None
        self.meta: CaptureMeta = self._meta()
        self._t0 = time.monotonic()
        self._tcp_done = 0
        # read as the first part of a split file (capture/split.py): where that part ends,
        # and how far the processes reading the other parts are: (bytes, records, TCP
        # packets) each
        self.part_end: int | None = None
        self.others_done: list = []
        self._absorbed_bytes = 0
        # a set read in runs of files (capture/split.py SetPlan): the files in the set's
        # order (peeked once), how many of them this stream reads, the records numbered
        # by the runs absorbed; and, on a run's process, the set's interface numbers and
        # that it is a run of a set (merged as a set even when it is one file)
        self._ordered: list[InputFile] | None = None
        self.set_end: int | None = None
        self._frames_absorbed = 0
        self._preset_maps: list[list[int]] | None = None
        self.in_set = False

    def __enter__(self) -> CaptureStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.decoder.close()
        for r in self.readers:
            if isinstance(r, FileReader):
                r.stream.close()

    @property
    def input_bytes(self) -> int | None:
        """The inputs' size as stored (None: unknown, a pipe)."""
        return self._total_bytes

    def expanded_bytes(self) -> int | None:
        """The inputs' size once decompressed, as far as it is known before reading: a
        compressed file counts COMPRESSED_EXPANSION times its size. None: unknown (a
        pipe)."""
        if self._total_bytes is None:
            return None
        total = 0
        try:
            for path in self.paths:
                grows = COMPRESSED_EXPANSION if file_compressed(path) else 1
                total += os.path.getsize(path) * grows
        except OSError:
            return self._total_bytes  # the reading says what is wrong
        return total

    def size_hint_rows(self) -> int | None:
        """How many rows the whole input will give, from the bytes per record of what
        has been read (uncompressed inputs of known size only), with 5% to spare."""
        if self._total_bytes is None or any(r.state.compression for r in self.readers):
            return None
        done = sum(r.consumed_bytes() for r in self.readers)
        records = sum(r.state.records for r in self.readers)
        if not done or not records:
            return None
        return int(self._total_bytes * records / done * 1.05) + 1024

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        try:
            if self.fileobj is not None or (len(self.paths) == 1 and not self.in_set):
                reader = self._open(0, self.paths[0])
                for chunk in reader.chunks():
                    self._report()
                    if chunk.packets["frame"].size:
                        self._tcp_done += int(chunk.packets["frame"].size)
                        yield chunk.packets
            else:
                yield from self._iter_set()
        finally:
            self.decoder.close()
        for i, reader in enumerate(self.readers):
            self._note_ifaces(i, reader)
        self.meta = self._meta()
        self._report()

    def _iter_set(self) -> Iterator[dict[str, np.ndarray]]:
        files = self._ordered if self._ordered is not None else order_by_first_packet(self.paths)
        self.paths = [f.path for f in files]
        if self._preset_maps is not None:
            self._iface_maps = [list(m) for m in self._preset_maps]
        else:
            self._iface_maps = [[] for _ in files]
        files = files[: self.set_end]  # the first run only, when the set is read in runs

        def start(i: int):
            reader = self._open(i, files[i].path)
            for chunk in reader.chunks():
                self._note_ifaces(i, reader)
                yield chunk

        self._merger = Merger([f.first_ts_ns for f in files], start, self._fix_ifaces)
        for packets in self._merger:
            if packets["frame"].size:
                self._tcp_done += int(packets["frame"].size)
                self._report()
                yield packets

    def _open(self, i: int, path: str) -> FileReader:
        if self.fileobj is not None:
            stream = stream_of_fileobj(self.fileobj, self.label)
        elif path == "-":
            stream = stream_of_fileobj(sys.stdin.buffer, "<stdin>")
        else:
            stream = open_stream(path)
        # alone: not one of the processes reading the input in parts or runs (split,
        # set_run)
        alone = self.part_end is None and self.set_end is None and not self.in_set
        reader = FileReader(
            stream,
            chunk_bytes=self.chunk_bytes,
            decoder=self.decoder,
            stop_at=self.part_end,
            read_ahead=alone,
        )
        while len(self.readers) <= i:
            self.readers.append(reader)
        self.readers[i] = reader
        return reader

    def _note_ifaces(self, i: int, reader: FileReader) -> None:
        """Give the file's new interfaces their numbers in the set (sets.number_ifaces).
        One file keeps its own numbers."""
        ifaces = reader.walker.ifaces if reader.walker else []
        if self._preset_maps is not None:
            # a run of a set (capture/split.py): numbered in the set already, from the
            # interfaces the files' first bytes describe; one described later on gets
            # no number here (-1), and the set is read again (absorb_files)
            known = self._iface_maps[i]
            known += [-1] * (len(ifaces) - len(known))
            return
        first = self.readers[0].walker.ifaces if self.readers and self.readers[0].walker else []
        number_ifaces(self._iface_maps, self._linktypes, i, ifaces, first)

    def _fix_ifaces(self, i: int, packets: dict) -> dict:
        mapping = self._iface_maps[i] if i < len(self._iface_maps) else []
        if mapping and mapping != list(range(len(mapping))) and packets["iface"].size:
            packets = dict(packets)
            packets["iface"] = np.asarray(mapping, np.int16)[packets["iface"]]
        return packets

    def split(self, parts: int) -> SplitPlan | SetPlan | None:
        """Plan reading the input (when it is one pcap file, or a set of files,
        that can be) in up to ``parts`` parts, a process each (capture/split.py): this
        stream then reads the first part, in this process. None: it reads all of the
        input."""
        if self.fileobj is not None or "-" in self.paths or self.readers or parts < 2:
            return None
        plan: SplitPlan | SetPlan | None
        if len(self.paths) == 1:
            plan = plan_split(self.paths[0], parts)
            if plan is not None:
                self.part_end = plan.starts[0]
        else:
            self._ordered = order_by_first_packet(self.paths)
            plan = plan_set_split(self._ordered, parts)
            if plan is not None:
                self.set_end = plan.bounds[1]
        if plan is not None:
            self.decoder.close()
            self.decoder = Decoder(1)  # the parts are the parallel decoding
        return plan

    def set_run(self, plan: SetPlan, k: int) -> None:
        """Make this stream (of ``plan.run(k)``'s files, not yet read) read them as
        part ``k`` of the set: in the set's order and with its interface numbers."""
        lo = plan.bounds[k]
        self._ordered = plan.run(k)
        self._preset_maps = plan.maps[lo : lo + len(self._ordered)]
        self.in_set = True

    def run_read(self) -> SetRunRead:
        """What this stream, having read a run of a set (set_run), hands the set's
        stream (absorb_files)."""
        assert self._merger is not None
        read = [(r.state, r.walker, r.consumed_bytes()) for r in self.readers]
        return SetRunRead(read, self._merger.frames, self.max_key, self._merger.overlaps)

    @property
    def max_key(self) -> int:
        """The latest record time read (made monotonic per file; capture/merge.py)."""
        return self._merger.max_key if self._merger is not None else -(1 << 63)

    def numbered_as(self, maps: list[list[int]]) -> bool:
        """Whether the files read so far number their interfaces in the set as ``maps``
        (a SetPlan's, for all the set's files) does."""
        return self._iface_maps[: len(self.readers)] == maps[: len(self.readers)]

    def absorb_files(self, run: SetRunRead) -> int:
        """Add the files of the set's next run, read by another process (their state
        and walker, the bytes read, what its merge numbered and found); the metadata then
        covers them. Returns the records before that run (what its frame numbers are to
        be moved by)."""
        assert self._merger is not None
        frames_before = self._merger.frames + self._frames_absorbed
        lo = len(self.readers)
        for state, walker, bytes_read in run.files:
            self.readers.append(_ReadElsewhere(state, walker, bytes_read))  # type: ignore[arg-type]
            self._note_ifaces(len(self.readers) - 1, self.readers[-1])
            self._tcp_done += state.tcp_packets
        self._merger.overlaps |= {(a + lo, b + lo) for a, b in run.overlaps}
        self._frames_absorbed += run.frames
        self.others_done = self.others_done[1:]  # the runs are absorbed in order
        self.meta = self._meta()
        self._report()
        return frames_before

    def restart(self) -> None:
        """Forget what was read, to read the input again from its start, in this process
        (a set whose runs turned out to overlap in time: analyze/spill.py)."""
        self.close()
        self.readers = []
        self._iface_maps, self._linktypes, self._merger = [], [], None
        self._tcp_done = self._absorbed_bytes = self._frames_absorbed = 0
        self.part_end = self.set_end = None
        self.others_done = []
        self.decoder = Decoder(1)
        self.meta = self._meta()

    def ended_at_part_end(self) -> bool:
        """The first part ended where the next one starts (and the stream has ended)."""
        return bool(self.readers) and self.readers[0].ended_at_part_end

    def absorb(
        self, later: FileState, walker: PcapWalker, ended_at_part_end: bool, bytes_read: int
    ) -> int:
        """Add what the process reading the next part of the file learnt (its FileState
        and walker, the bytes it read); the metadata then covers both. Returns the
        records before that part (what its frame numbers are to be moved by)."""
        mine = self.readers[0]
        assert isinstance(mine.walker, PcapWalker)
        frames_before = mine.walker.frames_before + mine.walker.frames
        mine.state.absorb(later, frames_before)
        mine.walker.absorb(walker)
        mine.ended_at_part_end = ended_at_part_end
        self._tcp_done += later.tcp_packets
        self._absorbed_bytes += bytes_read
        self.others_done = self.others_done[1:]  # the parts are absorbed in order
        self.meta = self._meta()
        self._report()
        return frames_before

    def _input_bytes(self) -> int | None:
        if self.fileobj is not None or "-" in self.paths:
            return None
        try:
            return sum(os.path.getsize(p) for p in self.paths)
        except OSError:
            return None

    def _report(self) -> None:
        if self.progress is None:
            return
        total = self._total_bytes
        done = sum(r.consumed_bytes() for r in self.readers)
        records = sum(r.state.records for r in self.readers)
        tcp = self._tcp_done
        done += self._absorbed_bytes
        for other in self.others_done:  # a split file: its other parts so far
            done, records, tcp = done + other[0], records + other[1], tcp + other[2]
        self.progress(
            ReadProgress(
                bytes_done=min(done, total) if total is not None else done,
                bytes_total=total,
                records_done=records,
                tcp_packets_done=tcp,
                elapsed_s=time.monotonic() - self._t0,
                files_done=sum(r.state.done for r in self.readers),
                files_total=len(self.paths),
            )
        )

    def _meta(self) -> CaptureMeta:
        return build_meta(
            self.label, self.readers, self._linktypes, self.set_warnings, self._merger
        )


def build_meta(
    label: str,
    readers: list[FileReader],
    linktypes: list[int],
    set_warnings: list[str],
    merger: Merger | None,
) -> CaptureMeta:
    """The capture's metadata from what each file's reader learnt."""
    one = len(readers) == 1 and merger is None
    if one and readers[0].walker is not None:
        linktypes = [i.linktype for i in readers[0].walker.ifaces]
    skipped: dict[str, int] = {}
    warnings: list[str] = []
    encapsulated: dict[str, int] = {}
    undecoded: dict[str, int] = {}
    files = []
    drop_marks: list[dict] = []
    too_big: list[tuple] = []
    drop_total, epb_drops, if_drops = 0, None, None
    truncated_at = None
    if not readers:
        return CaptureMeta(
            label, "", 1000, [], 0, 0, 0, 0, {}, False, None, list(set_warnings), None, None, None
        )
    for r in readers:
        st, w = r.state, r.walker
        if w is None:
            continue
        summary = w.summary()
        for name, count in list(st.skipped.items()) + list(summary["skipped"].items()):
            skipped[name] = skipped.get(name, 0) + count
        prefix = "" if one else f"{os.path.basename(st.name)}: "
        warnings += [prefix + line for line in w.warnings() + st.notes.lines()]
        too_big += st.notes.too_big
        enc, und = encapsulation_counts(st.notes)
        for k, v in enc.items():
            encapsulated[k] = encapsulated.get(k, 0) + v
        for k, v in und.items():
            undecoded[k] = undecoded.get(k, 0) + v
        if summary["if_drops"] is not None:
            if_drops = (if_drops or 0) + summary["if_drops"]
        if getattr(w, "epb_drops", None) is not None:
            epb_drops = (epb_drops or 0) + w.epb_drops
        drop_marks += getattr(w, "drop_marks", [])
        drop_total += getattr(w, "drop_marks_total", 0)
        if w.truncated_at is not None and truncated_at is None:
            truncated_at = w.truncated_at
        files.append(
            {
                "path": st.name,
                "format": st.format,
                "compression": st.compression,
                "size_bytes": st.size_bytes,
                "records": w.frames,
                "tcp_packets": st.tcp_packets,
                "first_ts_ns": st.first_ts_ns,
                "last_ts_ns": st.last_ts_ns,
                "linktypes": [i.linktype for i in w.ifaces],
                "truncated": w.truncated_at is not None,
            }
        )
    if merger is not None and merger.overlaps:
        names = sorted(
            {
                os.path.basename(readers[i].state.name)
                for pair in merger.overlaps
                for i in pair
                if i < len(readers)
            }
        )
        warnings.append(
            f"{len(names)} capture files overlap in time and were merged by "
            f"timestamp: {', '.join(names)}"
        )
    if undecoded:
        kinds = sorted(undecoded.items(), key=lambda kv: (-kv[1], kv[0]))
        warnings.append(
            f"{sum(undecoded.values())} packets not decoded (they may carry TCP): "
            + ", ".join(f"{n} in {kind}" for kind, n in kinds)
        )
    warnings = set_warnings + warnings
    skipped_non_tcp = skipped.pop("non_tcp", 0)
    firsts = [f["first_ts_ns"] for f in files if f["first_ts_ns"] is not None]
    lasts = [f["last_ts_ns"] for f in files if f["last_ts_ns"] is not None]
    formats = sorted({f["format"] for f in files})
    walkers = [r.walker for r in readers if r.walker is not None]
    snaplens = [w.snaplen for w in walkers]
    return CaptureMeta(
        path=readers[0].state.name if one else label,
        format=formats[0] if len(formats) == 1 else ("mixed" if formats else ""),
        ts_resolution_ns=max((w.ts_resolution_ns for w in walkers), default=1000),
        linktypes=list(linktypes),
        snaplen=0 if (not snaplens or 0 in snaplens) else max(snaplens),
        records=sum(f["records"] for f in files),
        tcp_packets=sum(f["tcp_packets"] for f in files),
        skipped_non_tcp=skipped_non_tcp,
        skipped_other={k: v for k, v in sorted(skipped.items()) if v and k in SKIP_REASONS},
        truncated=any(f["truncated"] for f in files),
        truncated_at_offset=truncated_at,
        warnings=warnings,
        if_drops=if_drops,
        first_ts_ns=min(firsts) if firsts else None,
        last_ts_ns=max(lasts) if lasts else None,
        files=files,
        encapsulated=dict(sorted(encapsulated.items())),
        undecoded=dict(sorted(undecoded.items())),
        epb_drops=epb_drops,
        drop_marks=sorted(drop_marks, key=lambda d: d["frame"])[:MAX_DROP_MARKS],
        drop_marks_total=drop_total,
        icmp_too_big=[dict(zip(TOO_BIG_FIELDS, t)) for t in sorted(too_big)[:MAX_DROP_MARKS]],
        icmp_too_big_total=len(too_big),
    )


class _TableBuilder:
    """Chunks -> one packet table, without holding chunks and table at once: the table
    is one allocation (records.columns: each column on its own cache line, faulted in
    as written), sized from the input when it can be, else grown by doubling."""

    MAX_HINT_ROWS = 16 << 20  # a bigger hint is not reserved up front (address space)

    def __init__(self, size_hint_rows: int | None):
        self.rows = 0
        hint = min(size_hint_rows or (1 << 16), self.MAX_HINT_ROWS)
        self.table = columns(hint, PACKET_DTYPES)
        self.capacity = hint

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        m = int(chunk["frame"].size)
        if self.rows + m > self.capacity:
            self.capacity = max(2 * self.capacity, self.rows + m)
            bigger = columns(self.capacity, PACKET_DTYPES)
            for name, col in bigger.items():
                col[: self.rows] = self.table[name][: self.rows]
            self.table = bigger
        for name, col in self.table.items():
            col[self.rows : self.rows + m] = chunk[name]
        self.rows += m

    def result(self) -> dict[str, np.ndarray]:
        if self.rows == 0:
            return empty_packets()
        # the tail of each column beyond the rows was never written (nor faulted in)
        return {name: col[: self.rows] for name, col in self.table.items()}
