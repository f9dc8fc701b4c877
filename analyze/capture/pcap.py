"""The pcap file format: the file header and the walk over the record headers.

https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html
"""

from __future__ import annotations

import os
import struct
from array import array

import numpy as np

from retranscope.analyze.capture.gather import first_true, windows
from retranscope.analyze.capture.records import MAX_CAPLEN_BYTES, Iface, Records, no_records
from retranscope.errors import TruncatedCapture

try:  # the record walk compiled (_walk.c); without it, a Python loop
    from retranscope.analyze.capture._walk import pcap_caplens
except ImportError:  # pragma: no cover - built by setup.sh and CI
    pcap_caplens = None

# pcap file header (draft-ietf-opsawg-pcap §4): 24 bytes
PCAP_FILE_HEADER = struct.Struct("IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, lt
PCAP_FILE_HEADER_BYTES = 24
# pcap record header (§5): 16 bytes, four 32-bit words
PCAP_RECORD_HEADER_BYTES = 16
PCAP_RECORD_WORD = {"ts_sec": 0, "ts_frac": 1, "caplen": 2, "origlen": 3}  # ts_frac: µs/ns
PCAP_MAGIC = {  # as read little-endian: (byte order of the file, ns per timestamp unit)
    0xA1B2C3D4: ("<", 1000),
    0xD4C3B2A1: (">", 1000),
    0xA1B23C4D: ("<", 1),
    0x4D3CB2A1: (">", 1),
}
PCAP_MAGIC_KUZNETSOV = (0xA1B2CD34, 0x34CDB2A1)  # "modified pcap", 24-byte record headers
EOF_HINT = "was the file copied while tcpdump was still writing?"


class PcapWalker:
    """Walks the records of a pcap file, one block of its bytes at a time.

    ``walk`` is given each block (the bytes after the ones it consumed before) and returns
    the complete records in it and how many bytes they took: the caller carries the rest
    (a record cut by the block's end) to the front of the next block. ``stopped`` is set
    at damage (a corrupt record header, or the file ending inside a record): nothing after
    it is read.
    """

    fmt = "pcap"

    def __init__(self, name: str, head: bytes):
        """``head``: the file's first bytes (at least the 24-byte header, unless the file
        is shorter). Raises TruncatedCapture for a file cut inside its header."""
        self.name = name
        (magic,) = struct.unpack_from("<I", head)
        self.order, self.frac_ns = PCAP_MAGIC[magic]
        if len(head) < PCAP_FILE_HEADER_BYTES:
            raise TruncatedCapture(
                f"{name} ends inside the pcap file header: got {len(head)} bytes, "
                f"{PCAP_FILE_HEADER_BYTES} needed; the capture has no packets to read"
            )
        _, major, minor, thiszone, _, snaplen, linktype_field = struct.unpack_from(
            self.order + PCAP_FILE_HEADER.format, head, 0
        )
        # The top bits of the link-type field may carry an FCS length (draft §4, "LinkType
        # and additional information"); the link type proper is the low 16 bits.
        self.ifaces = [Iface(linktype_field & 0xFFFF, snaplen)]
        self.snaplen = snaplen
        self.header_bytes = PCAP_FILE_HEADER_BYTES
        self.header_warnings: list[str] = []
        if major != 2:
            self.header_warnings.append(f"pcap version {major}.{minor}, expected 2.4: read as 2.4")
        if thiszone:
            # Always written as 0 in practice; reported, not applied, as tcpdump and
            # Wireshark do.
            self.header_warnings.append(
                f"pcap header thiszone={thiszone} s ignored: timestamps read as UTC"
            )
        self._unpack_caplen = struct.Struct(self.order + "8xI").unpack_from  # caplen, @8
        self.frames = 0  # records walked so far
        # records before this walker's first one: a part of the file walked on a process
        # of its own (capture/split.py) learns it when the parts before it are done, and
        # its stop message is worded only then (stop_warning)
        self.frames_before = 0
        self.stopped = False
        self._stop_words: tuple[str, int, str, str, str] | None = None
        self.truncated_at: int | None = None
        self.need_bytes = PCAP_RECORD_HEADER_BYTES  # the smallest block that makes progress
        self.over_snaplen = 0
        self.frac_over = 0  # records whose sub-second field is a second or more
        self.ts_resolution_ns = self.frac_ns
        # said when the data ends inside a record; the reader names damaged compression
        self.eof_hint = EOF_HINT

    def _offsets(self, mv: memoryview) -> tuple[np.ndarray, int]:
        """Offsets of the record headers in ``mv``: the one sequential loop. Returns them
        and where the walk stopped (the offset after the last record, which may lie
        past the block's end when that record is cut by it).

        The walk is compiled (_walk.c, ~10-20 ns a record on a block just read, bound by
        memory). Its Python fallback (_caplens_py) takes ~100 ns a record: ~0.13 s on 1.3M
        records (headers-only, 163 MB) with a loop whose only exit is the struct.error
        unpack_from raises past the end of its buffer, ~0.2 s with a bounds test per
        record. A vectorised alternative was tried
        and dropped: ~2,500 walkers stepping through their own chunks of the file in
        lock-step (one numpy gather per record position, each chunk's start guessed from
        sane-looking headers and verified by the previous walker landing on it) gave the
        same offsets in about the same time, because each step's gather touches 2,500
        cold pages (~90 ns a record, memory latency) where a loop streams through the
        file. Both walks keep the captured lengths, not the offsets: the offsets are
        their running sum.
        """
        if pcap_caplens is not None:
            room = np.empty(len(mv) // PCAP_RECORD_HEADER_BYTES + 1, dtype=np.uint32)
            count, off = pcap_caplens(mv, self.order == ">", room)
            caplens = room[:count]
        else:
            caplens, off = self._caplens_py(mv)
        offsets = np.empty(caplens.size + 1, dtype=np.int64)
        offsets[0] = 0
        np.cumsum(caplens, out=offsets[1:])
        offsets += PCAP_RECORD_HEADER_BYTES * np.arange(offsets.size)
        # offsets[-1] is where the walk stopped: 1-11 bytes of a record header there are
        # judged (and cut) like any record
        return (offsets if off < len(mv) else offsets[:-1]), off

    def _caplens_py(self, mv: memoryview) -> tuple[np.ndarray, int]:
        """_offsets' walk where the compiled one (_walk.c) was not built: each record's
        captured length, and the offset after the last record."""
        unpack_caplen = self._unpack_caplen
        caplens = array("I")  # 32 bits, as the field
        append = caplens.append
        off = 0
        try:
            while True:
                caplen = unpack_caplen(mv, off)[0]
                append(caplen)
                off += PCAP_RECORD_HEADER_BYTES + caplen
        except struct.error:
            pass  # this header lies past the block's end
        return np.frombuffer(caplens, dtype=np.uint32), off

    def walk(self, mv: memoryview, base: int, eof: bool) -> tuple[Records, int]:
        """The complete records in ``mv`` (which starts at byte ``base`` of the file), and
        how many bytes of it they take. ``eof``: nothing follows ``mv``."""
        n = len(mv)
        offsets, _ = self._offsets(mv)
        if offsets.size == 0:
            return no_records(self.ifaces), 0
        hdr = windows(np.frombuffer(mv, np.uint8), offsets, PCAP_RECORD_HEADER_BYTES).view(
            self.order + "u4"
        )
        # views on the gathered headers: columns are copied once, into what is kept
        ts_sec, ts_frac, caplen_u32, origlen = (
            hdr[:, PCAP_RECORD_WORD[k]] for k in ("ts_sec", "ts_frac", "caplen", "origlen")
        )
        # Where to stop: at the first impossible record (a length no writer produces, a
        # sub-second field out of range, an all-zero header: what garbage in a record
        # header looks like), or at a record running past the end of the block. Only the
        # last record can do that: every earlier one ends where a record header was read.
        good = offsets.size
        consumed = n
        last_end = int(offsets[-1]) + PCAP_RECORD_HEADER_BYTES + int(caplen_u32[-1])
        overrun = last_end > n
        # A sub-second field of a whole second or more is what a writer rounding up
        # leaves (tcpdump's timestamp_invalid_* tests); Wireshark reads it as it is, and
        # so does this, with a warning. Past two seconds' worth it is garbage.
        per_s = 1_000_000_000 // self.frac_ns
        bad = (caplen_u32 > MAX_CAPLEN_BYTES) | (ts_frac >= 2 * per_s)
        # a zero-filled tail (space allocated but never written, as after a crash): no
        # packet has wire length 0 at time 0
        bad |= (origlen == 0) & (ts_sec == 0)
        have_last = n - int(offsets[-1])
        if overrun and have_last < PCAP_RECORD_HEADER_BYTES:
            # its header is cut: the fields read are partly padding; the caplen, whole
            # from 12 bytes on, is still judged (a record cannot be longer)
            bad[-1] = have_last >= 12 and caplen_u32[-1] > MAX_CAPLEN_BYTES
        first_bad = first_true(bad)
        if first_bad is not None:
            good = first_bad
            self._stop(
                int(offsets[first_bad]) + base,
                *self._corrupt_message(
                    first_bad, int(offsets[first_bad]) + base, caplen_u32, ts_frac, origlen
                ),
            )
        elif overrun:
            good = offsets.size - 1
            consumed = int(offsets[-1])
            have = n - consumed
            need = PCAP_RECORD_HEADER_BYTES + (int(caplen_u32[-1]) if have >= 12 else 0)
            if eof:
                at = consumed + base
                self._stop(
                    at,
                    ("capture ends inside record ", self.frames + good + 1, f" at offset {at} "),
                    (f"(got {have} bytes, {need} needed)", f"; {self.eof_hint}"),
                )
            self.need_bytes = need
        if good < offsets.size:
            ts_sec, ts_frac, caplen_u32, origlen, offsets = (
                a[:good] for a in (ts_sec, ts_frac, caplen_u32, origlen, offsets)
            )
        if self.snaplen:
            self.over_snaplen += int(np.count_nonzero(caplen_u32 > self.snaplen))
        self.frac_over += int(np.count_nonzero(ts_frac >= per_s))
        offsets += PCAP_RECORD_HEADER_BYTES  # now where each frame's data starts
        ts_ns = ts_sec.astype(np.int64)
        ts_ns *= 1_000_000_000
        ts_ns += ts_frac.astype(np.int64) * self.frac_ns
        recs = Records(
            frame=np.arange(self.frames + 1, self.frames + good + 1, dtype=np.int64),
            data_off=offsets,
            caplen=caplen_u32.astype(np.int32),
            origlen=origlen,
            ts_ns=ts_ns,
            iface=np.zeros(good, dtype=np.int16),
            ifaces=self.ifaces,
        )
        self.frames += good
        return recs, consumed

    def _corrupt_message(self, i, at, caplen, ts_frac, origlen) -> tuple:
        return (
            ("record ", self.frames + i + 1, f" at offset {at} is corrupt "),
            (
                f"(caplen {caplen[i]} bytes, at most {MAX_CAPLEN_BYTES}; sub-second field "
                f"{ts_frac[i]}; wire length {origlen[i]})",
                " and stopped there",
            ),
        )

    def _stop(self, at: int, record: tuple[str, int, str], why: tuple[str, str]) -> None:
        """Stop at byte ``at``; the warning says ``record`` (text, this walker's number
        of the record, text), ``why[0]``, the records read before it, then ``why[1]``."""
        self.stopped = True
        self.truncated_at = at
        self._stop_words = (*record, *why)

    @property
    def stop_warning(self) -> str | None:
        if self._stop_words is None:
            return None
        lead, record, at, why, tail = self._stop_words
        record += self.frames_before
        if not lead:  # the data ended between two records
            return f"{at}: read the {record - 1} records before it{tail}"
        return f"{lead}{record}{at}{why}: read the {record - 1} records before it{tail}"

    def end_of_data(self, at: int, why: str) -> None:
        """The stream ended early (damaged compressed data) at decompressed byte ``at``,
        between two records."""
        if not self.stopped:
            self._stop(
                at, ("", self.frames + 1, f"{why}, after {at} bytes of capture data"), ("", "")
            )

    def __getstate__(self) -> dict:  # a part's walker comes back from its process
        return {k: v for k, v in self.__dict__.items() if k != "_unpack_caplen"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._unpack_caplen = struct.Struct(self.order + "8xI").unpack_from

    def absorb(self, later: PcapWalker) -> None:
        """Add the walk of the file's next part, walked by another process from the byte
        where this walk stopped (capture/split.py)."""
        later.frames_before = self.frames_before + self.frames
        self.frames += later.frames
        self.over_snaplen += later.over_snaplen
        self.frac_over += later.frac_over
        if later._stop_words is not None:
            lead, record, at, why, tail = later._stop_words
            record += later.frames_before - self.frames_before
            self._stop(later.truncated_at or 0, (lead, record, at), (why, tail))

    def warnings(self) -> list[str]:
        """The file's warnings, in the order the whole-file reader gave them."""
        out = list(self.header_warnings)
        if self.stop_warning:
            out.append(self.stop_warning)
        if self.frac_over:
            out.append(
                f"{self.frac_over} records have a sub-second timestamp field of a second "
                "or more: read as written (the timestamp moves into the next second)"
            )
        if self.over_snaplen:
            out.append(
                f"{self.over_snaplen} records are longer than the file's snaplen "
                f"{self.snaplen} bytes: read in full"
            )
        return out

    def summary(self) -> dict:
        return {"snaplen": self.snaplen, "if_drops": None, "skipped": {}}


#: a part of a pcap file walked on a process of its own (capture/split.py) starts where
#: this many record headers in a row, read from there, look like what a writer produces
RESYNC_CHAIN_RECORDS = 64
#: the bytes after the wanted offset searched for such a start: more than one record of
#: the longest kind, so that one starts inside them in any file
RESYNC_SEARCH_BYTES = 512 << 10
#: and the bytes read to follow the chains (a chain cut by them is taken when at least
#: RESYNC_CHAIN_MIN_RECORDS long: a wrong start is caught anyway, capture/split.py)
RESYNC_READ_BYTES = 4 << 20
RESYNC_CHAIN_MIN_RECORDS = 16


#: the first look: this many bytes read, record starts sought in the first quarter of
#: them (a record starts within ~1.5 kB in a capture of full-size packets); only when it
#: cannot decide is the whole RESYNC_READ_BYTES read (its answer is the same either way)
RESYNC_FIRST_READ_BYTES = 256 << 10


def record_start_near(fd: int, walker: PcapWalker, near: int, size_bytes: int) -> int | None:
    """A byte offset at or after ``near`` in the pcap file open as ``fd`` (walked by
    ``walker`` from its header) where a record seems to start: the first from which
    RESYNC_CHAIN_RECORDS headers in a row are sane (a captured length a writer produces
    and no more than the wire length, a sub-second field under a second) and each ends
    where the next begins, or the file ends. None: no such offset in RESYNC_SEARCH_BYTES.
    A guess: the part before it confirms it by ending exactly there (capture/split.py).

    Looked for in RESYNC_FIRST_READ_BYTES first (reading 4 MB and judging 512k offsets
    took ~20 ms, before the parts' processes could start); the whole read when a chain
    there is cut by its end, or no start is in it."""
    start = _start_in(os.pread(fd, RESYNC_FIRST_READ_BYTES, near), walker, near, size_bytes)
    if start is None or start < 0:
        start = _start_in(os.pread(fd, RESYNC_READ_BYTES, near), walker, near, size_bytes, True)
    return None if start is None else near + start


def _start_in(raw: bytes, walker: PcapWalker, near: int, size_bytes: int, whole=False):
    """record_start_near's search in ``raw`` (read from ``near``): the start's offset in
    it; None: none. Unless ``whole`` (``raw`` is all that is read), it searches the
    first quarter of ``raw`` only, and returns -1 where a longer read could decide
    otherwise (a chain cut by the end of ``raw`` before RESYNC_CHAIN_RECORDS, or no
    start found)."""
    data = np.frombuffer(raw, np.uint8)
    per_s = 1_000_000_000 // walker.frac_ns
    limit = min(walker.snaplen or MAX_CAPLEN_BYTES, MAX_CAPLEN_BYTES)
    search = RESYNC_SEARCH_BYTES if whole else len(raw) // 4
    n_cand = max(0, min(search, data.size - PCAP_RECORD_HEADER_BYTES + 1))
    hdr = windows(data, np.arange(n_cand), PCAP_RECORD_HEADER_BYTES).view(walker.order + "u4")
    ts_frac, caplen, origlen = (
        hdr[:, PCAP_RECORD_WORD[k]] for k in ("ts_frac", "caplen", "origlen")
    )

    def sane(caplen, origlen, frac):  # numpy columns or one header's ints alike
        return (caplen <= limit) & (caplen <= origlen) & (frac < per_s) & (origlen > 0)

    candidates = np.flatnonzero(sane(caplen, origlen, ts_frac))
    del hdr, ts_frac, caplen, origlen
    unpack = struct.Struct(walker.order + "4I").unpack_from
    for start in candidates.tolist():
        off, chained = start, 0
        while chained < RESYNC_CHAIN_RECORDS:
            if near + off == size_bytes:  # the file ends after a whole record
                return start
            if off + PCAP_RECORD_HEADER_BYTES > data.size:
                break
            _, frac, cap, orig = unpack(raw, off)
            if not sane(cap, orig, frac):
                break
            off += PCAP_RECORD_HEADER_BYTES + cap
            chained += 1
        if chained >= RESYNC_CHAIN_RECORDS:
            return start
        if off + PCAP_RECORD_HEADER_BYTES > data.size:  # the chain runs past what was read
            if not whole and near + len(raw) < size_bytes:
                return -1  # a longer read says whether it chains on
            if chained >= RESYNC_CHAIN_MIN_RECORDS:
                return start
    return None if whole else -1
