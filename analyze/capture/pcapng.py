"""The pcapng file format: blocks, sections, interfaces, packet blocks, statistics.

https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

import numpy as np

from retranscope.analyze.capture.gather import first_true, take, windows
from retranscope.analyze.capture.records import (
    MAX_CAPLEN_BYTES,
    MAX_DROP_MARKS,
    Iface,
    Records,
    no_records,
)
from retranscope.errors import NotACapture, TruncatedCapture

try:  # the EPB walk compiled (_walk.c); without it, a Python loop
    from retranscope.analyze.capture._walk import pcapng_epbs
except ImportError:  # pragma: no cover - built by setup.sh and CI
    pcapng_epbs = None

# pcapng (draft-ietf-opsawg-pcapng §4): every block is type, total length, body, length
PCAPNG_SHB = 0x0A0D0D0A  # palindromic, so it reads the same in either byte order
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_IDB = 0x00000001
PCAPNG_PB = 0x00000002  # obsolete Packet Block (Appendix A)
PCAPNG_SPB = 0x00000003
PCAPNG_ISB = 0x00000005
PCAPNG_EPB = 0x00000006
BLOCK_HEADER_BYTES = 12  # type, total length, ..., total length again
# EPB (§4.3), 32-bit words from the block start, data after them. The obsolete PB is the
# same but for a u16 interface id and a u16 drops count in word 2. SPB (§4.4): origlen in
# word 2, data at byte 12, no timestamp.
EPB_WORD = {
    "type": 0,
    "length": 1,
    "iface": 2,
    "ts_high": 3,
    "ts_low": 4,
    "caplen": 5,
    "origlen": 6,
}
EPB_DATA_OFFSET = 28
EPB_MIN_BYTES = 32
SPB_DATA_OFFSET = 12
SPB_MIN_BYTES = 16
# Wireshark's pcapng.c refuses blocks over 16 MiB: a longer one is a corrupt length
MAX_BLOCK_BYTES = 16 * 1024 * 1024
# IDB options (§4.2)
IF_TSRESOL = 9
IF_TSOFFSET = 14
# EPB options (§4.3.1): epb_dropcount, packets lost between this packet and the one before
EPB_DROPCOUNT = 4
EPB_OPTIONS_MAX = 32  # options walked per EPB before giving up on the rest
# ISB options (§4.6): cumulative counters, so the last ISB of an interface counts
ISB_IFDROP = 5
ISB_OSDROP = 7
UNKNOWN_COUNT = 0xFFFFFFFFFFFFFFFF  # an ISB counter of all ones means "unknown"
EOF_HINT = "was the file copied while tcpdump was still writing?"


def _tsresol_unit(tsresol: int) -> tuple[int, int]:
    """if_tsresol (pcapng §4.2): MSB clear, a unit is 10^-v s; set, 2^-v s.
    Returns (base, exponent)."""
    return (2, tsresol & 0x7F) if tsresol & 0x80 else (10, tsresol)


def _resolution_ns(iface: Iface) -> int:
    base, exp = _tsresol_unit(iface.tsresol)
    return max(1, -(-1_000_000_000 // base**exp))


def _units_to_ns(units: np.ndarray, iface: Iface) -> np.ndarray:
    """EPB timestamps (uint64, in if_tsresol units since if_tsoffset) → int64 ns."""
    base, exp = _tsresol_unit(iface.tsresol)
    if base == 10 and exp <= 9:
        ns = units.astype(np.int64) * (10 ** (9 - exp))
    elif base == 10:
        ns = (units // np.uint64(10 ** min(exp - 9, 19))).astype(np.int64)
    else:
        # seconds and the fraction apart, so that fraction * 1e9 cannot overflow
        per_s = np.uint64(1 << exp) if exp < 64 else None
        if per_s is None:
            ns = np.zeros(units.size, np.int64)
        else:
            whole, rest = np.divmod(units, per_s)
            frac = rest.astype(np.float64) * 1e9 / float(1 << exp)
            ns = whole.astype(np.int64) * 1_000_000_000 + frac.astype(np.int64)
    return ns + iface.tsoffset_s * 1_000_000_000


def _options(mv, start: int, end: int, order: str):
    """(code, value) of a pcapng options list (§3.5), up to opt_endofopt or the block end."""
    opt = struct.Struct(order + "HH")
    off = start
    while off + 4 <= end:
        code, length = opt.unpack_from(mv, off)
        if code == 0 or off + 4 + length > end:
            return
        yield code, bytes(mv[off + 4 : off + 4 + length])
        off += 4 + ((length + 3) & ~3)  # values are padded to 32 bits


@dataclass
class _Section:
    offset: int  # in the file
    order: str  # "<" or ">"
    iface_base: int  # global index of the section's interface 0
    n_ifaces: int = 0


class _Stop(Exception):
    """Internal: where the walk stopped early, and why (message for meta.warnings)."""

    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = offset


class _NeedMore(Exception):
    """Internal: the block at ``offset`` (relative) ends past the bytes at hand."""

    def __init__(self, offset: int, need: int):
        super().__init__(offset)
        self.offset = offset
        self.need = need


@dataclass
class _Scan:
    """What one pass over a block of bytes found (offsets relative to the block)."""

    epb: array  # of int64 ('q'): the EPBs' offsets
    simple: list[tuple[int, int]]  # (offset, block type) of SPBs and obsolete PBs
    isb_at: list[int]  # relative offsets of the ISBs read (for their place among frames)
    stop: _Stop | None = None
    more: _NeedMore | None = None


class PcapngWalker:
    """Walks the blocks of a pcapng file, one block of its bytes at a time (the same
    contract as pcap.PcapWalker). Sections, interfaces and statistics carry over from
    one call to the next; offsets kept here are from the start of the file."""

    fmt = "pcapng"
    header_bytes = 0  # the section header is a block like any other

    def __init__(self, name: str):
        self.name = name
        self.sections: list[_Section] = []
        self.ifaces_at: list[tuple[int, Iface]] = []  # (IDB offset, interface)
        self.isb: dict[int, tuple[int, int]] = {}  # global iface -> (ISB offset, drops)
        self.frames = 0
        self.stopped = False
        self.stop_warning: str | None = None
        self.truncated_at: int | None = None
        self.need_bytes = BLOCK_HEADER_BYTES
        self.eof_hint = EOF_HINT
        self.last_ts_ns = 0  # of the last record: what a following SPB is given
        self.unknown_iface = 0
        self.untimed = 0  # SPBs
        self.epb_drops: int | None = None
        self.drop_marks: list[dict] = []
        self.drop_marks_total = 0
        self._block_struct = struct.Struct("<II")  # block type, total length (§3.1)

    def __getstate__(self) -> dict:  # a run of a set's walker comes back from its process
        return {**self.__dict__, "_block_struct": self._block_struct.format}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _block_struct=struct.Struct(state["_block_struct"]))

    @property
    def ifaces(self) -> list[Iface]:
        return [i for _, i in self.ifaces_at]

    def walk(self, mv: memoryview, base: int, eof: bool) -> tuple[Records, int]:
        """The complete packet records in ``mv`` (which starts at byte ``base`` of the
        file) and how many bytes of it were consumed. ``eof``: nothing follows ``mv``."""
        n = len(mv)
        scan, consumed = self._scan(mv, base, eof)
        buf = np.frombuffer(mv, np.uint8)
        epb_off = np.array(scan.epb, dtype=np.int64)
        pk = _gather_epbs(buf, epb_off, epb_off + base, self.sections)
        stop = self._first_damage(pk, n, base, scan.stop)
        if stop is None and scan.more is not None:
            self.need_bytes = max(scan.more.need, BLOCK_HEADER_BYTES)
        if stop is not None:
            consumed = n
            self._stop(stop)
            keep = pk["block_off"] + base < stop.offset
            pk = {k: v[keep] for k, v in pk.items()}
            scan.simple = [s for s in scan.simple if s[0] + base < stop.offset]
            scan.isb_at = [s for s in scan.isb_at if s + base < stop.offset]
        if scan.simple:
            pk = _add_simple_blocks(mv, base, pk, scan.simple, self.sections, self.ifaces)
        if not self.sections:
            # only reachable after damage in the very first block
            return no_records(self.ifaces), consumed
        return self._records(pk, scan.isb_at), consumed

    def _scan(self, mv: memoryview, base: int, eof: bool) -> tuple[_Scan, int]:
        """Walk the blocks: EPBs on a fast path (one unpack each), any other block through
        _block. Returns what was found and the offset up to which blocks were complete."""
        n = len(mv)
        scan = _Scan(array("q"), [], [])
        # the compiled walk's output: room for every EPB that fits, reused by each run
        room = np.empty(n // EPB_MIN_BYTES + 1, dtype=np.int64) if pcapng_epbs else None
        off = 0
        try:
            while off < n:
                # Fast path: runs of EPBs. Anything else is left to the block-by-block
                # code below.
                if room is not None:
                    big = self._block_struct.format[0] == ">"
                    count, off = pcapng_epbs(
                        mv, off, big, PCAPNG_EPB, EPB_MIN_BYTES, MAX_BLOCK_BYTES, room
                    )
                    scan.epb.frombytes(room[:count].tobytes())
                    if off >= n:  # clean end, or the last EPB runs past it (below)
                        break
                else:
                    off = self._epbs_py(mv, off, scan)
                    if off >= n:
                        break
                order = self._block(mv, off, base, eof, scan)
                if order is not None:  # a section header: the byte order may change
                    self._block_struct = struct.Struct(order + "II")
                off += self._block_struct.unpack_from(mv, off)[1]
        except _Stop as why:
            scan.stop = why
        except _NeedMore as more:
            scan.more = more
            off = more.offset
        if off > n and scan.epb:  # the last EPB runs past the end
            last = scan.epb[-1]
            if not eof:
                scan.epb.pop()
                scan.more = _NeedMore(last, off - last)
                off = last
        return scan, min(off, n)

    def _epbs_py(self, mv: memoryview, off: int, scan: _Scan) -> int:
        """The fast path's walk where the compiled one (_walk.c) was not built: appends
        the offsets of the run of EPBs from ``off`` to ``scan.epb``; returns where the run
        ends (at another block, or where a block header no longer fits in ``mv``)."""
        fast = self._block_struct.unpack_from
        append = scan.epb.append
        try:
            while True:
                btype, blen = fast(mv, off)
                # & 3 and the trailer are checked in bulk
                if btype != PCAPNG_EPB or not EPB_MIN_BYTES <= blen <= MAX_BLOCK_BYTES:
                    break
                append(off)
                off += blen
        except struct.error:
            pass  # the end of the bytes
        return off

    def _first_damage(self, pk: dict, n: int, base: int, stop: _Stop | None) -> _Stop | None:
        """The earlier of the scan's stop and the first EPB that fails the bulk checks."""
        bad = (
            (pk["caplen"] > MAX_CAPLEN_BYTES)
            | (pk["caplen"] > pk["blen"] - EPB_MIN_BYTES)
            | (pk["trailer"] != pk["blen"])
            | (pk["blen"] & 3 != 0)
        )
        i = first_true(bad)
        if i is None:
            return stop
        rel = int(pk["block_off"][i])
        at = rel + base
        if stop is not None and stop.offset <= at:
            return stop
        blen = int(pk["blen"][i])
        if rel + blen > n:
            return _Stop(
                at,
                f"capture ends inside the packet block at offset {at} (got "
                f"{n - rel} bytes, {blen} needed): read everything before it; {self.eof_hint}",
            )
        return _Stop(
            at,
            f"packet block at offset {at} is corrupt (block length {blen}, caplen "
            f"{pk['caplen'][i]}, trailing length {pk['trailer'][i]}): read everything "
            "before it and stopped there",
        )

    def _stop(self, stop: _Stop) -> None:
        """Damage at ``stop.offset``: whatever the walk found after it came from the same
        damaged bytes."""
        self.stopped = True
        self.truncated_at = stop.offset
        self.stop_warning = str(stop)
        at = stop.offset
        self.isb = {k: v for k, v in self.isb.items() if v[0] < at}
        self.ifaces_at = [i for i in self.ifaces_at if i[0] < at]
        self.sections = [s for s in self.sections if s.offset < at]
        for s in self.sections:
            s.n_ifaces = min(s.n_ifaces, max(0, len(self.ifaces_at) - s.iface_base))

    def end_of_data(self, at: int, why: str) -> None:
        """The stream ended early (damaged compressed data) at decompressed byte ``at``,
        between two blocks."""
        if not self.stopped:
            self._stop(
                _Stop(at, f"{why}, after {at} bytes of capture data: read everything before it")
            )

    def _block(self, mv, off: int, base: int, eof: bool, scan: _Scan) -> str | None:
        """Check and read one block that is not on the EPB fast path; raise _Stop where the
        file cannot be read any further, _NeedMore where the block runs past the bytes
        at hand. Returns the byte order of a new section, else None."""
        n = len(mv)
        at = off + base  # in the file
        have = n - off
        if have < BLOCK_HEADER_BYTES:
            if not eof:
                raise _NeedMore(off, BLOCK_HEADER_BYTES)
            raise _Stop(
                at,
                f"capture ends inside the block at offset {at} (got {have} bytes, "
                "12 needed for a block header): read everything before it",
            )
        order = self._block_order(mv, off, at)
        btype, blen = struct.unpack_from(order + "II", mv, off)
        if blen < 12 or blen & 3 or blen > MAX_BLOCK_BYTES:
            if at == 0:
                raise NotACapture(
                    f"{self.name}: the pcapng section header has an impossible length "
                    f"({blen} bytes); give a capture written by tcpdump -w"
                )
            raise _Stop(
                at,
                f"block at offset {at} is corrupt (length {blen} bytes): read "
                "everything before it and stopped there",
            )
        if blen > have:
            if not eof:
                raise _NeedMore(off, blen)
            if at == 0:
                raise TruncatedCapture(
                    f"{self.name} ends inside the pcapng section header: got {have} "
                    f"bytes, {blen} needed; the capture has no packets"
                )
            raise _Stop(
                at,
                f"capture ends inside the block at offset {at} (got {have} bytes, "
                f"{blen} needed): read everything before it; {self.eof_hint}",
            )
        (trailer,) = struct.unpack_from(order + "I", mv, off + blen - 4)
        if trailer != blen:
            if at == 0:
                raise NotACapture(
                    f"{self.name}: the pcapng section header is corrupt (leading "
                    f"length {blen}, trailing {trailer}); give a capture written "
                    "by tcpdump -w"
                )
            raise _Stop(
                at,
                f"block at offset {at} is corrupt (leading length {blen}, "
                f"trailing {trailer}): read everything before it and stopped there",
            )
        self._read_block(mv, off, at, btype, blen, order, scan)
        return order if btype == PCAPNG_SHB else None

    def _block_order(self, mv, off: int, at: int) -> str:
        """The byte order a block is read in: its own for a section header (from the
        byte-order magic), else its section's."""
        (btype,) = struct.unpack_from("<I", mv, off)
        if btype == PCAPNG_SHB:
            (bom,) = struct.unpack_from("<I", mv, off + 8)
            if bom == PCAPNG_BYTE_ORDER_MAGIC:
                return "<"
            if bom == 0x4D3C2B1A:  # the byte-order magic written big-endian
                return ">"
            if at == 0:
                raise NotACapture(
                    f"{self.name} starts like pcapng but its byte-order magic is "
                    f"0x{bom:08x}, not 0x1a2b3c4d; give a capture written by tcpdump -w"
                )
            raise _Stop(
                at,
                f"section header at offset {at} has a bad byte-order magic "
                f"0x{bom:08x}: read everything before it",
            )
        return self.sections[-1].order

    def _read_block(self, mv, off, at, btype, blen, order, scan: _Scan) -> None:
        if btype == PCAPNG_SHB:
            self.sections.append(_Section(at, order, len(self.ifaces_at)))
        elif btype == PCAPNG_IDB and blen >= 20:
            linktype, _, snaplen = struct.unpack_from(order + "HHI", mv, off + 8)
            iface = Iface(linktype, snaplen)
            for code, value in _options(mv, off + 16, off + blen - 4, order):
                if code == IF_TSRESOL and len(value) >= 1:
                    iface.tsresol = value[0]
                elif code == IF_TSOFFSET and len(value) >= 8:
                    (iface.tsoffset_s,) = struct.unpack(order + "q", value[:8])
            self.ifaces_at.append((at, iface))
            self.sections[-1].n_ifaces += 1
        elif btype == PCAPNG_EPB:
            scan.epb.append(off)  # odd-sized; the bulk validation judges it
        elif btype in (PCAPNG_SPB, PCAPNG_PB):
            scan.simple.append((off, btype))
        elif btype == PCAPNG_ISB and blen >= 24:
            self._read_isb(mv, off, at, blen, order, scan)
        # every other block (NRB, DSB, custom, unknown) is skipped by its length (§3.1)

    def _read_isb(self, mv, off, at, blen, order, scan: _Scan) -> None:
        local, ts_hi, ts_lo = struct.unpack_from(order + "III", mv, off + 8)
        drops = 0
        for code, value in _options(mv, off + 20, off + blen - 4, order):
            if code in (ISB_IFDROP, ISB_OSDROP) and len(value) >= 8:
                (count,) = struct.unpack(order + "Q", value[:8])
                if count != UNKNOWN_COUNT:
                    drops += count
        sec = self.sections[-1]
        if local >= sec.n_ifaces:
            return
        g = sec.iface_base + local
        before = self.isb.get(g, (0, 0))[1]
        self.isb[g] = (at, drops)
        if drops > before:
            # the frame is filled in by _records, once the ISB's place among them is known
            iface = self.ifaces_at[g][1]
            ts_ns = int(_units_to_ns(np.array([(ts_hi << 32) | ts_lo], np.uint64), iface)[0])
            self._mark(
                {
                    "frame": -1,
                    "ts_ns": ts_ns,
                    "iface": g,
                    "dropped": drops - before,
                    "source": "isb",
                },
                off,
            )
            scan.isb_at.append(off)

    def _mark(self, mark: dict, rel_off: int) -> None:
        self.drop_marks_total += 1
        if len(self.drop_marks) < MAX_DROP_MARKS:
            mark["_rel"] = rel_off
            self.drop_marks.append(mark)

    def _records(self, pk: dict, isb_at: list[int]) -> Records:
        """Frame numbers, interfaces and timestamps of the packet blocks of one walk."""
        n_records = int(pk["block_off"].size)
        frame = np.arange(self.frames + 1, self.frames + n_records + 1, dtype=np.int64)
        self._place_isb_marks(pk["block_off"], isb_at)
        self.frames += n_records
        sec = pk["section"]
        base = np.array([s.iface_base for s in self.sections], np.int64)[sec]
        n_local = np.array([s.n_ifaces for s in self.sections], np.int64)[sec]
        unknown = pk["local_iface"] >= n_local
        if unknown.any():
            self.unknown_iface += int(np.count_nonzero(unknown))
            pk = {k: v[~unknown] for k, v in pk.items()}
            frame, base = frame[~unknown], base[~unknown]
        iface = base + pk["local_iface"]
        iface_list = self.ifaces
        ts_ns = np.zeros(iface.size, np.int64)
        for g in np.unique(iface) if len(iface_list) > 1 else range(len(iface_list)):
            sel = iface == g if len(iface_list) > 1 else slice(None)
            ts_ns[sel] = _units_to_ns(pk["ts_units"][sel], iface_list[int(g)])
        has_ts = pk["has_ts"]
        if not has_ts.all():
            # An SPB has no timestamp (§4.4): it takes the one of the packet before it (0
            # if none), so the table stays in time order; a warning says so.
            before = np.maximum.accumulate(np.where(has_ts, np.arange(has_ts.size), -1))
            prev = np.where(before >= 0, ts_ns[np.maximum(before, 0)], self.last_ts_ns)
            ts_ns = np.where(has_ts, ts_ns, prev)
            self.untimed += int(np.count_nonzero(~has_ts))
        if ts_ns.size:
            self.last_ts_ns = int(ts_ns[-1])
        self._epb_drop_marks(pk.get("dropcount"), frame, ts_ns, iface)
        return Records(
            frame=frame,
            data_off=pk["data_off"],
            caplen=pk["caplen"],
            origlen=pk["origlen"],
            ts_ns=ts_ns,
            iface=iface,
            ifaces=iface_list,
        )

    def _place_isb_marks(self, block_off: np.ndarray, isb_at: list[int]) -> None:
        """An ISB's loss shows before the next packet record: give its mark that frame.
        Marks of ISBs that a stop set aside (not in ``isb_at``) are dropped."""
        kept = set(isb_at)
        placed = []
        for mark in self.drop_marks:
            rel = mark.pop("_rel", None)
            if rel is None:
                placed.append(mark)
            elif rel in kept:
                mark["frame"] = self.frames + int(np.searchsorted(block_off, rel)) + 1
                placed.append(mark)
            else:
                self.drop_marks_total -= 1
        self.drop_marks = placed

    def _epb_drop_marks(self, dropcount, frame, ts_ns, iface) -> None:
        if dropcount is None:
            return
        known = dropcount >= 0
        if not known.any():
            return
        self.epb_drops = (self.epb_drops or 0) + int(dropcount[known].sum())
        for i in np.flatnonzero(dropcount > 0).tolist():
            self.drop_marks_total += 1
            if len(self.drop_marks) < MAX_DROP_MARKS:
                self.drop_marks.append(
                    {
                        "frame": int(frame[i]),
                        "ts_ns": int(ts_ns[i]),
                        "iface": int(iface[i]),
                        "dropped": int(dropcount[i]),
                        "source": "epb",
                    }
                )

    def warnings(self) -> list[str]:
        """The file's warnings, in the order the whole-file reader gave them."""
        out = []
        if self.stop_warning:
            out.append(self.stop_warning)
        if self.unknown_iface:
            out.append(
                f"{self.unknown_iface} packet blocks name an interface that has no "
                "interface description block: skipped"
            )
        if self.untimed:
            out.append(
                f"{self.untimed} Simple Packet Blocks carry no timestamp: each was given "
                "the timestamp of the packet before it"
            )
        if_drops = self.if_drops
        if if_drops:
            out.append(
                f"the capturing interfaces dropped {if_drops} packets (pcapng interface "
                "statistics): segments the hosts exchanged are missing from the capture"
            )
        if self.epb_drops:
            out.append(
                f"the capturing interfaces dropped {self.epb_drops} packets (pcapng "
                "per-packet drop counts): segments the hosts exchanged are missing from "
                "the capture"
            )
        return out

    @property
    def if_drops(self) -> int | None:
        return int(sum(d for _, d in self.isb.values())) if self.isb else None

    @property
    def snaplen(self) -> int:
        snaplens = [i.snaplen for i in self.ifaces]
        return 0 if (not snaplens or 0 in snaplens) else max(snaplens)

    @property
    def ts_resolution_ns(self) -> int:
        return max((_resolution_ns(i) for i in self.ifaces), default=1000)

    def summary(self) -> dict:
        return {
            "snaplen": self.snaplen,
            "if_drops": self.if_drops,
            "skipped": {"unknown_interface": self.unknown_iface} if self.unknown_iface else {},
        }


def _gather_epbs(
    buf: np.ndarray, offs: np.ndarray, offs_in_file: np.ndarray, sections: list[_Section]
) -> dict:
    """The fixed EPB fields (§4.3) of every EPB, in their section's byte order, the
    trailing length of each block (which must repeat the leading one), and the
    epb_dropcount option where a block has options."""
    n = buf.size
    groups: list[tuple[int, np.ndarray | None]] = [(len(sections) - 1, None)]
    section = np.full(offs.size, max(len(sections) - 1, 0), np.int64)
    if len(sections) > 1:
        starts = np.array([s.offset for s in sections], np.int64)
        section = np.searchsorted(starts, offs_in_file, side="right") - 1
        groups = [(i, np.flatnonzero(section == i)) for i in range(len(sections))]
    parts = []
    for s_i, sel in groups:
        order = (sections[s_i].order if sections else "<") + "u4"
        o = take(offs, sel)
        hdr = windows(buf, o, EPB_DATA_OFFSET).view(order)
        blen = hdr[:, EPB_WORD["length"]].astype(np.int64)
        end = o + blen
        inside = end <= n
        tail = windows(buf, np.where(inside, end - 4, 0), 4).view(order)[:, 0]
        caplen = hdr[:, EPB_WORD["caplen"]].astype(np.int64)
        part = {
            "block_off": o,
            "blen": blen,
            "local_iface": hdr[:, EPB_WORD["iface"]],
            "ts_units": (hdr[:, EPB_WORD["ts_high"]].astype(np.uint64) << np.uint64(32))
            | hdr[:, EPB_WORD["ts_low"]],
            "caplen": caplen,
            "origlen": hdr[:, EPB_WORD["origlen"]],
            "trailer": np.where(inside, tail, -1),
            "section": take(section, sel),
        }
        opt_at = EPB_DATA_OFFSET + caplen + (-caplen % 4)
        has_opts = inside & (opt_at + 4 <= blen - 4)
        if has_opts.any():
            part["dropcount"] = _epb_dropcounts(buf, o, opt_at, blen - 4, has_opts, order[0])
        parts.append(part)
    if any("dropcount" in p for p in parts):
        for p in parts:
            p.setdefault("dropcount", np.full(p["block_off"].size, -1, np.int64))
    if len(parts) == 1:
        pk = parts[0]
    else:  # back into file order
        by_offset = np.argsort(np.concatenate([p["block_off"] for p in parts]), kind="stable")
        pk = {k: np.concatenate([p[k] for p in parts])[by_offset] for k in parts[0]}
    pk["data_off"] = pk["block_off"] + EPB_DATA_OFFSET
    pk["has_ts"] = np.ones(offs.size, bool)
    return pk


def _epb_dropcounts(buf, block_off, opt_at, opt_end, has_opts, order: str) -> np.ndarray:
    """epb_dropcount (§4.3.1, a u64) of each EPB, -1 where absent: the options of every
    EPB that has some, walked in lock-step, one option per step."""
    out = np.full(block_off.size, -1, np.int64)
    act = np.flatnonzero(has_opts)
    pos = opt_at[act]
    for _ in range(EPB_OPTIONS_MAX):
        inside = pos + 4 <= opt_end[act]
        act, pos = act[inside], pos[inside]
        if act.size == 0:
            break
        head = windows(buf, block_off[act] + pos, 4).view(order + "u2")
        code, length = head[:, 0].astype(np.int64), head[:, 1].astype(np.int64)
        go = (code != 0) & (pos + 4 + length <= opt_end[act])
        hit = go & (code == EPB_DROPCOUNT) & (length >= 8)
        if hit.any():
            value = windows(buf, block_off[act[hit]] + pos[hit] + 4, 8).view(order + "u8")[:, 0]
            out[act[hit]] = np.minimum(value, np.iinfo(np.int64).max).astype(np.int64)
        act, pos = act[go], pos[go] + 4 + length[go] + (-length[go] % 4)
    return out


def _add_simple_blocks(mv, base, pk, simple, sections, ifaces):
    """SPBs and obsolete PBs (rare in practice: one Python step each), merged in block
    order with the EPBs."""
    starts = [s.offset for s in sections]
    rows = []
    for off, btype in simple:
        s_i = max(int(np.searchsorted(starts, off + base, side="right")) - 1, 0)
        sec = sections[s_i]
        o = sec.order
        (blen,) = struct.unpack_from(o + "I", mv, off + 4)
        if btype == PCAPNG_SPB:
            if blen < SPB_MIN_BYTES:
                continue
            # SPB (§4.4): interface 0 of the section, captured length from the block and
            # that interface's snaplen, no timestamp
            (orig,) = struct.unpack_from(o + "I", mv, off + 8)
            cap = min(orig, blen - SPB_MIN_BYTES)
            if sec.n_ifaces and ifaces[sec.iface_base].snaplen:
                cap = min(cap, ifaces[sec.iface_base].snaplen)
            rows.append((off, off + SPB_DATA_OFFSET, cap, orig, 0, 0, s_i, False, -1))
        else:
            if blen < EPB_MIN_BYTES:
                continue
            local, drops, hi, lo, cap, orig = struct.unpack_from(o + "HHIIII", mv, off + 8)
            if cap > blen - EPB_MIN_BYTES:
                continue
            # drops_count (Appendix A): 0xFFFF where the writer did not know
            known = drops if drops != 0xFFFF else -1
            rows.append(
                (off, off + EPB_DATA_OFFSET, cap, orig, local, (hi << 32) | lo, s_i, True, known)
            )
    if not rows:
        return pk
    cols = list(zip(*rows))
    extra = {
        "block_off": np.array(cols[0], np.int64),
        "data_off": np.array(cols[1], np.int64),
        "caplen": np.array(cols[2], np.int64),
        "origlen": np.array(cols[3], np.int64),
        "local_iface": np.array(cols[4], np.int64),
        "ts_units": np.array(cols[5], np.uint64),
        "section": np.array(cols[6], np.int64),
        "has_ts": np.array(cols[7], bool),
    }
    if any(d >= 0 for d in cols[8]) or "dropcount" in pk:
        extra["dropcount"] = np.array(cols[8], np.int64)
        pk.setdefault("dropcount", np.full(pk["block_off"].size, -1, np.int64))
    order = np.argsort(np.concatenate([pk["block_off"], extra["block_off"]]), kind="stable")
    return {k: np.concatenate([pk[k], v])[order] for k, v in extra.items()}
