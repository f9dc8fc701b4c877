"""One capture file -> packet-table chunks, in bounded memory.

The file's bytes are read a block at a time into one buffer (``chunk_bytes``, grown only
for a record longer than it). The format's walker finds the complete records in the
block; the record cut by the block's end is carried to the front of the buffer and
completed by the next read. Each walk's records are decoded DECODE_CHUNK_RECORDS at a
time, here or by worker processes (parallel.Decoder), and handed on in file order. Peak
memory is the buffer plus the chunks in flight: it does not grow with the file's length.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from retranscope.analyze.capture.decode import (
    DECODE_CHUNK_RECORDS,
    SUPPORTED_LINKTYPES,
    Notes,
    supported_records,
    unknown_linktype_message,
)
from retranscope.analyze.capture.parallel import Decoder
from retranscope.analyze.capture.pcap import PCAP_MAGIC, PCAP_MAGIC_KUZNETSOV, PcapWalker
from retranscope.analyze.capture.pcapng import PCAPNG_SHB, PcapngWalker
from retranscope.analyze.capture.records import Records
from retranscope.analyze.capture.stream import ByteStream, sniff_compression
from retranscope.errors import CaptureError, NotACapture, UnknownLinkType

DEFAULT_CHUNK_BYTES = 8 << 20  # a block of the file: ~60k headers-only records


@dataclass
class FileChunk:
    """The decoded TCP segments of some consecutive records of one file.

    ``packets`` has the columns of schemas/packets.py, ``frame`` numbered within the file
    and ``iface`` indexing the file's interfaces; ``rec_frame`` and ``rec_ts_ns`` are the
    frame number and timestamp of every record the chunk covers (TCP or not), in file
    order: what a merge of several files orders by.
    """

    packets: dict[str, np.ndarray]
    rec_frame: np.ndarray
    rec_ts_ns: np.ndarray


@dataclass
class FileState:
    """What reading one file has learnt so far (final once its chunks are exhausted)."""

    name: str
    compression: str | None
    size_bytes: int | None
    format: str = ""
    records: int = 0
    tcp_packets: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    notes: Notes = field(default_factory=Notes)
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    supported: int = 0  # records on an interface of a link type decoded here
    present_linktypes: set[int] = field(default_factory=set)
    done: bool = False

    def note_times(self, lo: int, hi: int) -> None:
        """Widen the span of record times seen to [lo, hi]."""
        self.first_ts_ns = lo if self.first_ts_ns is None else min(self.first_ts_ns, lo)
        self.last_ts_ns = hi if self.last_ts_ns is None else max(self.last_ts_ns, hi)

    def absorb(self, later: FileState, frames_before: int) -> None:
        """Add what reading the file's next part learnt (capture/split.py): its frames
        were numbered from 1, and ``frames_before`` records precede it."""
        self.records += later.records
        self.tcp_packets += later.tcp_packets
        for why, count in later.skipped.items():
            self.skipped[why] = self.skipped.get(why, 0) + count
        later.notes.too_big = [(t[0] + frames_before, *t[1:]) for t in later.notes.too_big]
        self.notes.merge(later.notes)
        if later.first_ts_ns is not None and later.last_ts_ns is not None:
            self.note_times(later.first_ts_ns, later.last_ts_ns)
        self.supported += later.supported
        self.present_linktypes |= later.present_linktypes


def make_walker(name: str, head: bytes, compression: str | None):
    """The walker for a file whose first bytes are ``head``; raises for what is not a
    pcap or pcapng file (with a message naming the file and what to do)."""
    inside = f"{name} is {compression}-compressed, and what it holds" if compression else name
    if len(head) < 4:
        raise NotACapture(
            f"{inside} is not a pcap or pcapng file (got {len(head)} bytes, 4 needed for "
            "the magic); give a capture written by tcpdump -w"
        )
    (magic,) = struct.unpack_from("<I", head)
    if magic == PCAPNG_SHB:
        return PcapngWalker(name)
    if magic in PCAP_MAGIC:
        walker = PcapWalker(name, head)
        linktype = walker.ifaces[0].linktype
        if linktype not in SUPPORTED_LINKTYPES:
            raise UnknownLinkType(unknown_linktype_message(name, [linktype]))
        return walker
    if magic in PCAP_MAGIC_KUZNETSOV:
        raise CaptureError(
            f"{name} is a 'modified' (Kuznetsov) pcap, which is not read here; "
            "convert it with: editcap -F pcap IN OUT"
        )
    twice = sniff_compression(head)
    if twice:
        raise NotACapture(
            f"{inside} is {twice}-compressed again: decompress it once by hand "
            "(or give the capture inside)"
        )
    raise NotACapture(
        f"{inside} is not a pcap or pcapng file (magic 0x{head[:4].hex()}); "
        "give a capture written by tcpdump -w"
    )


class FileReader:
    """Reads one capture file as a sequence of FileChunk (``chunks()``), keeping what it
    learns in ``state`` and the walker (``walker``: interfaces, truncation, warnings)."""

    def __init__(
        self,
        stream: ByteStream,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        decoder: Decoder | None = None,
        start: tuple[int, bytes] | None = None,
        stop_at: int | None = None,
        read_ahead: bool = False,
    ):
        """A part of the file only (capture/split.py): ``start``, the byte its first record
        starts at and the file's first bytes (``stream`` is positioned at that byte);
        ``stop_at``, the byte it ends at. It reads on past that when no record ends
        there: ``ended_at_part_end`` says which it did. ``read_ahead``: a compressed file
        is decompressed on a thread of its own (ByteStream.read_ahead), for a process
        that reads alone; where other processes read the rest of the input beside it,
        the cores are taken (a set of 8 gzipped files in runs: 1.04x the time with it)."""
        self.stream = stream
        self.read_ahead = read_ahead
        self.start = start
        self.stop_at = stop_at
        self.ended_at_part_end = False
        self.chunk_bytes = max(int(chunk_bytes), 64)
        self.decoder = decoder or Decoder(1)
        self.state = FileState(stream.name, stream.compression, stream.size_bytes)
        self.walker: PcapWalker | PcapngWalker | None = None

    def consumed_bytes(self) -> int:
        return self.stream.consumed_bytes()

    def chunks(self) -> Iterator[FileChunk]:
        """The file's chunks in file order. The decoding of up to ``decoder.window``
        chunks runs ahead of the one handed out."""
        pending: deque = deque()
        try:
            for buf, recs in self._walks():
                for lo in range(0, len(recs), DECODE_CHUNK_RECORDS):
                    part = (
                        recs.rows(lo, lo + DECODE_CHUNK_RECORDS)
                        if lo or len(recs) > DECODE_CHUNK_RECORDS
                        else recs
                    )
                    pending.append((self.decoder.submit(buf, part), part.frame, part.ts_ns))
                    while len(pending) > self.decoder.window:
                        yield self._finish(*pending.popleft())
            while pending:
                yield self._finish(*pending.popleft())
        finally:
            self.stream.close()
        self._check_linktypes()
        self.state.done = True

    def _finish(self, job, rec_frame, rec_ts) -> FileChunk:
        packets, skipped, notes = job.result()
        st = self.state
        st.tcp_packets += int(packets["frame"].size)
        for why, count in skipped.items():
            st.skipped[why] = st.skipped.get(why, 0) + count
        st.notes.merge(notes)
        return FileChunk(packets, rec_frame, rec_ts)

    def _walks(self) -> Iterator[tuple[np.ndarray, Records]]:
        """(block bytes, its complete records) for each block of the file: the read,
        carry and walk loop."""
        stream, st = self.stream, self.state
        if self.read_ahead:
            stream.read_ahead()
        buf = bytearray(self.chunk_bytes)
        base = self.start[0] if self.start else 0
        filled, eof = self._read(buf, 0, base)
        if self.start:
            walker = self.walker = make_walker(stream.name, self.start[1], None)
        else:
            walker = self.walker = self._first_walker(buf, filled)
        st.format = walker.fmt
        pos = 0 if self.start else walker.header_bytes
        while True:
            if eof and stream.damage:
                walker.eof_hint = stream.damage
            mv = memoryview(buf)[pos:filled]
            recs, used = walker.walk(mv, base + pos, eof)
            mv.release()
            self._count(recs)
            if len(recs):
                yield np.frombuffer(buf, np.uint8, count=filled - pos, offset=pos), recs
            pos += used
            if walker.stopped or eof:
                break
            if self.stop_at is not None and base + filled == self.stop_at:
                if pos == filled:  # a record ends where the part does
                    self.ended_at_part_end = True
                    break
                self.stop_at = None  # the part's end was no record's start: read on
            tail = filled - pos
            need = walker.need_bytes
            if need > len(buf) - 0 or (used == 0 and tail == len(buf)):
                grown = bytearray(max(need, 2 * len(buf)))  # a record longer than a block
                grown[:tail] = buf[pos:filled]
                buf = grown
            else:
                buf[:tail] = buf[pos:filled]
            base += pos
            pos = 0
            filled, eof = self._read(buf, tail, base)
        if stream.damage and not walker.stopped:
            walker.end_of_data(base + pos, stream.damage)

    def _read(self, buf: bytearray, filled: int, base: int) -> tuple[int, bool]:
        """Fill ``buf`` from ``filled`` on (``buf[0]`` is the file's byte ``base``), up to
        the part's end while it holds; returns the bytes in it and whether the file
        ended."""
        end = len(buf) if self.stop_at is None else min(len(buf), self.stop_at - base)
        with memoryview(buf) as mv:
            got = self.stream.readinto(mv[filled:end]) if end > filled else 0
        return filled + got, filled + got < end

    def _first_walker(self, buf: bytearray, filled: int):
        """The walker for the file whose first ``filled`` bytes are in ``buf``."""
        stream = self.stream
        if filled == 0:
            if stream.damage:
                raise CaptureError(f"{stream.name}: {stream.damage}, before any capture data")
            what = (
                f"decompresses to nothing ({stream.compression})"
                if (stream.compression)
                else "is empty (0 bytes)"
            )
            raise NotACapture(
                f"{stream.name} {what}, not a pcap or pcapng file; "
                "give a capture written by tcpdump -w"
            )
        return make_walker(
            stream.name,
            bytes(buf[:64]) if filled >= 64 else bytes(buf[:filled]),
            stream.compression,
        )

    def _count(self, recs: Records) -> None:
        st = self.state
        n = len(recs)
        if n == 0:
            return
        st.records += n
        ts = recs.ts_ns
        lo, hi = int(ts.min()), int(ts.max())
        st.note_times(lo, hi)
        st.supported += supported_records(recs)
        linktypes = [i.linktype for i in recs.ifaces]
        if len(set(linktypes)) == 1:
            st.present_linktypes.add(linktypes[0])
        else:
            st.present_linktypes.update(int(linktypes[g]) for g in np.unique(recs.iface))

    def _check_linktypes(self) -> None:
        """A file none of whose records is on an interface decoded here is refused, as a
        pcap file of such a link type is at its header."""
        st = self.state
        if st.records and not st.supported:
            raise UnknownLinkType(unknown_linktype_message(st.name, sorted(st.present_linktypes)))
