"""One pcap file read by several processes at once, a part of its bytes each.

The walk over a pcap file's records is sequential (each record header says where the
next one starts), and decoding on worker processes did not pay: each block's bytes were
copied to a worker and its packets back (docs/captures.md). Here each process reads its
own part of the file from the page cache and spills its own packets (analyze/spill.py):
nothing is copied between them but a few counters.

A part after the first starts where a record seems to start (pcap.record_start_near: a
chain of sane record headers). That is a guess, and the part before it checks it: it
reads up to the guessed byte and stops there only if a record ends exactly there
(FileReader.ended_at_part_end). Otherwise that part reads on to the file's end, and the
parts after it are dropped. So what is read is always what one process walking the file
from its header reads, and the output is the same for any number of parts
(tests/test_split.py). A part's frames are numbered from 1; they are renumbered, and its
counters added, once the parts before it are done.

Only an uncompressed pcap file, one (not a set), of at least two SPLIT_MIN_PART_BYTES,
is split: a compressed stream cannot be entered in its middle, pcapng blocks are not
resynchronised here, and for a small file a process costs more than it saves.

A capture set (pcap and pcapng files, compressed or not) is read in runs of its files
instead (SetPlan), a process each: each run is read as the set's stream reads those
files, and the runs are joined as the parts of a file are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from retranscope.analyze.capture.chunks import DEFAULT_CHUNK_BYTES, FileReader
from retranscope.analyze.capture.pcap import (
    PCAP_FILE_HEADER_BYTES,
    PCAP_MAGIC,
    PcapWalker,
    record_start_near,
)
from retranscope.analyze.capture.sets import InputFile, number_ifaces
from retranscope.analyze.capture.stream import (
    COMPRESSED_EXPANSION,
    ByteStream,
    sniff_compression,
)

#: the least bytes of a part: a process (fork, its own buffers and buckets) costs
#: ~30 ms, what reading ~8 MB of headers-only capture takes
SPLIT_MIN_PART_BYTES = 32 << 20
#: and the most parts, whatever the cores: each part's process holds ~66-70 MB (RSS,
#: measured on the bench captures: a block of the file, the decoder's temporaries, the
#: interpreter it shares with the others) and writes bucket files of its own, which a
#: shard then reads as more, smaller blocks; reading will not go faster than the disk
#: anyway. Measured here on 2 cores only.
SPLIT_MAX_PARTS = 8
#: the file's first bytes every part makes its walker from (FileReader: 64)
HEAD_BYTES = 64


@dataclass
class SplitPlan:
    """Where the parts of ``path`` start: the first at its first record, then
    ``starts``; ``head``: the file's first bytes (its header, which every part reads by)."""

    path: str
    head: bytes
    starts: list[int]
    size_bytes: int

    def ends(self) -> list[int | None]:
        """Each part's end (the next one's start; None: the file's end), the first
        part's included."""
        return [*self.starts, None]


def plan_split(path: str, parts: int) -> SplitPlan | None:
    """How to read ``path`` in up to ``parts`` parts; None when it is not split (not an
    uncompressed pcap file, too small, or no record start found where one was sought:
    the caller reads it whole, and says what is wrong with it if anything is)."""
    try:
        size = os.path.getsize(path)
        parts = min(parts, SPLIT_MAX_PARTS, size // SPLIT_MIN_PART_BYTES)
        if parts < 2 or not os.path.isfile(path):
            return None
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        head = os.pread(fd, HEAD_BYTES, 0)
        if len(head) < PCAP_FILE_HEADER_BYTES or sniff_compression(head):
            return None
        if int.from_bytes(head[:4], "little") not in PCAP_MAGIC:
            return None
        walker = PcapWalker(path, head)
        starts: list[int] = []
        for k in range(1, parts):
            start = record_start_near(fd, walker, size * k // parts, size)
            if start is not None and start < size and (not starts or start > starts[-1]):
                starts.append(start)
    except Exception:  # an unreadable or odd header: the whole-file reader says what
        return None
    finally:
        os.close(fd)
    return SplitPlan(path, head, starts, size) if starts else None


@dataclass
class SetPlan:
    """A capture set read in parts, a run of its files each (``bounds``: the index, in
    the set's order, of each run's first file; the first run is read by the capture's
    own stream). ``maps``: each file's interfaces numbered in the set, as one stream
    reading the files in turn numbers them (sets.number_ifaces), from the interfaces
    their first bytes describe, so that every part's rows carry the set's numbers."""

    files: list[InputFile]
    bounds: list[int]
    maps: list[list[int]]

    def run(self, k: int) -> list[InputFile]:
        """The files of part ``k``."""
        ends = [*self.bounds[1:], len(self.files)]
        return self.files[self.bounds[k] : ends[k]]


def plan_set_split(files: list[InputFile], parts: int) -> SetPlan | None:
    """How to read a capture set (``files`` in the set's order) in up to ``parts`` runs
    of files, cut where they hold about as many bytes each; None when it is not split.

    The set's numbering of every file's interfaces is taken from the interfaces each
    file's first bytes describe (a pcap file's one, in its header; a pcapng file's
    first blocks, where dumpcap and tcpdump write them), so that every part writes it.
    The parts are joined in order, and the whole set is read again by one process
    (analyze/spill.py) when they turn out to be a wrong guess: a part whose first packet
    is earlier than a packet of the parts before it (files that overlap in time, which
    one stream merges by timestamp), or a pcapng file that describes an interface later
    on, which numbers the set's interfaces otherwise (CaptureStream.numbered_as)."""
    if len(files) < 2 or any(f.fmt not in ("pcap", "pcapng") for f in files):
        return None
    try:  # by what the files decompress to (a compressed one's size is not known)
        sizes = [
            os.path.getsize(f.path) * (COMPRESSED_EXPANSION if f.compression else 1) for f in files
        ]
    except OSError:
        return None
    total = sum(sizes)
    parts = min(parts, SPLIT_MAX_PARTS, len(files), total // SPLIT_MIN_PART_BYTES)
    if parts < 2:
        return None
    # each run ends at the file boundary nearest its share of the bytes
    ends = np.cumsum(sizes)
    bounds = [0]
    for k in range(1, parts):
        cut = int(np.argmin(np.abs(ends[:-1] - total * k / parts))) + 1
        if cut > bounds[-1]:
            bounds.append(cut)
    if len(bounds) < 2:
        return None
    maps: list[list[int]] = []
    linktypes: list[int] = []
    for i, f in enumerate(files):
        number_ifaces(maps, linktypes, i, f.ifaces, files[0].ifaces)
    return SetPlan(files, bounds, maps)


def part_reader(plan: SplitPlan, k: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FileReader:
    """A reader of part ``k`` (1 on: the first is read by the capture's own stream)."""
    start, stop_at = plan.starts[k - 1], plan.ends()[k]
    raw = open(plan.path, "rb", buffering=0)  # noqa: SIM115 - ByteStream.close() closes it
    raw.seek(start)
    stream = ByteStream(raw, plan.path, plan.size_bytes, b"")
    return FileReader(stream, chunk_bytes=chunk_bytes, start=(start, plan.head), stop_at=stop_at)
