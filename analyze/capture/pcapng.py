"""The pcapng file format: blocks, sections, interfaces, packet blocks, statistics.

https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

import numpy as np

from retranscope.analyze.capture.gather import first_true, take, windows
from retranscope.analyze.capture.records import (
    MAX_CAPLEN_BYTES,
    PROGRESS_CALLS,
    Iface,
    Progress,
    Records,
)
from retranscope.errors import NotACapture, TruncatedCapture

# pcapng (draft-ietf-opsawg-pcapng §4): every block is type, total length, body, length
PCAPNG_SHB = 0x0A0D0D0A  # palindromic, so it reads the same in either byte order
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_IDB = 0x00000001
PCAPNG_PB = 0x00000002  # obsolete Packet Block (Appendix A)
PCAPNG_SPB = 0x00000003
PCAPNG_ISB = 0x00000005
PCAPNG_EPB = 0x00000006
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
# ISB options (§4.6): cumulative counters, so the last ISB of an interface counts
ISB_IFDROP = 5
ISB_OSDROP = 7

# ---------------------------------------------------------------------------------------
# pcapng
# ---------------------------------------------------------------------------------------


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
        ns = (units // np.uint64(10 ** (exp - 9))).astype(np.int64)
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


def _options(mm: mmap.mmap, start: int, end: int, order: str):
    """(code, value) of a pcapng options list (§3.5), up to opt_endofopt or the block end."""
    opt = struct.Struct(order + "HH")
    off = start
    while off + 4 <= end:
        code, length = opt.unpack_from(mm, off)
        if code == 0 or off + 4 + length > end:
            return
        yield code, mm[off + 4 : off + 4 + length]
        off += 4 + ((length + 3) & ~3)  # values are padded to 32 bits


@dataclass
class _Section:
    offset: int
    order: str  # "<" or ">"
    iface_base: int  # global index of the section's interface 0
    n_ifaces: int = 0


class _Stop(Exception):
    """Internal: where the walk stopped early, and why (message for meta.warnings)."""

    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = offset


def walk_pcapng(path: str, mm: mmap.mmap, n: int, progress: Progress | None) -> Records:
    sections: list[_Section] = []
    ifaces: list[tuple[int, Iface]] = []  # (IDB offset, interface)
    epb: list[int] = []  # EPB offsets, every section, file order
    simple: list[tuple[int, int]] = []  # (offset, block type) of SPBs and obsolete PBs
    isb: dict[int, tuple[int, int]] = {}  # global iface -> (ISB offset, drops)
    stop: _Stop | None = None

    append = epb.append
    mv = memoryview(mm)
    step = max(n // PROGRESS_CALLS, 1 << 20)
    limit = min(n, step)
    view = mv[:limit]
    block = struct.Struct("<II")  # block type, block total length (§3.1)
    fast = block.unpack_from
    off = 0
    try:
        while off < n:
            # Fast path: runs of EPBs, one unpack each. Anything else is left to the
            # block-by-block code below; the end of the slice raises struct.error.
            try:
                while True:
                    btype, blen = fast(view, off)
                    if btype != PCAPNG_EPB or blen < EPB_MIN_BYTES:  # & 3: checked in bulk
                        break
                    append(off)
                    off += blen
            except struct.error:
                if limit < n:
                    limit = min(n, limit + step)
                    view.release()
                    view = mv[:limit]
                    if progress is not None:
                        progress(min(off, n), n)
                    continue
                if off >= n:  # clean end, or the last EPB runs past it (checked below)
                    break
            order = _block(path, mm, n, off, sections, ifaces, epb, simple, isb)
            if order is not None:  # a section header: the byte order may change
                block = struct.Struct(order + "II")
                fast = block.unpack_from
            off += block.unpack_from(mm, off)[1]
    except _Stop as why:
        stop = why
    finally:
        view.release()
        mv.release()
    if progress is not None:
        progress(min(off, n), n)
    if not sections:
        raise TruncatedCapture(
            f"{path} ends inside the pcapng section header (got {n} bytes); "
            "the capture has no packets to read"
        )

    # EPBs in bulk, per section (each has its own byte order), then validated in bulk
    buf = np.frombuffer(mm, dtype=np.uint8)
    pk = _gather_epbs(buf, np.array(epb, dtype=np.int64), sections)
    del buf
    ends = pk["block_off"] + pk["blen"]
    bad = (
        (pk["caplen"] > MAX_CAPLEN_BYTES)
        | (pk["caplen"] > pk["blen"] - EPB_MIN_BYTES)
        | (pk["trailer"] != pk["blen"])
        | (pk["blen"] & 3 != 0)
    )
    i = first_true(bad)
    if i is not None and (stop is None or pk["block_off"][i] < stop.offset):
        at = int(pk["block_off"][i])
        if ends[i] > n:
            stop = _Stop(
                at,
                f"capture ends inside the packet block at offset {at} (got "
                f"{n - at} bytes, {pk['blen'][i]} needed): read everything before "
                "it; was the file copied while tcpdump was still writing?",
            )
        else:
            stop = _Stop(
                at,
                f"packet block at offset {at} is corrupt (block length "
                f"{pk['blen'][i]}, caplen {pk['caplen'][i]}, trailing length "
                f"{pk['trailer'][i]}): read everything before it and stopped there",
            )

    warnings: list[str] = []
    truncated_at = None
    if stop is not None:
        # Whatever the walk found after the damage came from the same damaged bytes.
        truncated_at = stop.offset
        warnings.append(str(stop))
        keep = pk["block_off"] < truncated_at
        pk = {k: v[keep] for k, v in pk.items()}
        simple = [s for s in simple if s[0] < truncated_at]
        isb = {k: v for k, v in isb.items() if v[0] < truncated_at}
        ifaces = [i for i in ifaces if i[0] < truncated_at]
        sections = [s for s in sections if s.offset < truncated_at]
        for s in sections:
            s.n_ifaces = min(s.n_ifaces, max(0, len(ifaces) - s.iface_base))
    if simple:
        pk = _add_simple_blocks(mm, pk, simple, sections, [i for _, i in ifaces])
    iface_list = [i for _, i in ifaces]

    n_records = int(pk["block_off"].size)
    frame = np.arange(1, n_records + 1, dtype=np.int64)
    sec = pk["section"]
    base = np.array([s.iface_base for s in sections], np.int64)[sec]
    n_local = np.array([s.n_ifaces for s in sections], np.int64)[sec]
    skipped: dict[str, int] = {}
    unknown = pk["local_iface"] >= n_local
    if unknown.any():
        count = int(np.count_nonzero(unknown))
        skipped["unknown_interface"] = count
        warnings.append(
            f"{count} packet blocks name an interface that has no interface "
            "description block: skipped"
        )
        pk = {k: v[~unknown] for k, v in pk.items()}
        frame, base = frame[~unknown], base[~unknown]
    iface = base + pk["local_iface"]

    ts_ns = np.zeros(iface.size, np.int64)
    for g in np.unique(iface) if len(iface_list) > 1 else range(len(iface_list)):
        sel = iface == g if len(iface_list) > 1 else slice(None)
        ts_ns[sel] = _units_to_ns(pk["ts_units"][sel], iface_list[int(g)])
    has_ts = pk["has_ts"]
    if not has_ts.all():
        # An SPB has no timestamp (§4.4): it takes the one of the packet before it (0 if
        # none), so the table stays in time order; the warning says so.
        before = np.maximum.accumulate(np.where(has_ts, np.arange(has_ts.size), -1))
        ts_ns = np.where(has_ts, ts_ns, np.where(before >= 0, ts_ns[np.maximum(before, 0)], 0))
        warnings.append(
            f"{int(np.count_nonzero(~has_ts))} Simple Packet Blocks carry no "
            "timestamp: each was given the timestamp of the packet before it"
        )

    if_drops = None
    if isb:
        if_drops = int(sum(drops for _, drops in isb.values()))
        if if_drops:
            warnings.append(
                f"the capturing interfaces dropped {if_drops} packets (pcapng "
                "interface statistics): segments the hosts exchanged are "
                "missing from the capture"
            )
    snaplens = [i.snaplen for i in iface_list]
    return Records(
        frame=frame,
        data_off=pk["data_off"],
        caplen=pk["caplen"],
        origlen=pk["origlen"],
        ts_ns=ts_ns,
        iface=iface,
        ifaces=iface_list,
        fmt="pcapng",
        snaplen=0 if (not snaplens or 0 in snaplens) else max(snaplens),
        ts_resolution_ns=max((_resolution_ns(i) for i in iface_list), default=1000),
        records=n_records,
        truncated_at=truncated_at,
        warnings=warnings,
        if_drops=if_drops,
        skipped=skipped,
    )


def _block(path, mm, n, off, sections, ifaces, epb, simple, isb) -> str | None:
    """Check and read one block that is not on the EPB fast path; raise _Stop where the
    file cannot be read any further. Returns the byte order of a new section, else None."""
    have = n - off
    if have < 12:
        raise _Stop(
            off,
            f"capture ends inside the block at offset {off} (got {have} bytes, "
            "12 needed for a block header): read everything before it",
        )
    (btype,) = struct.unpack_from("<I", mm, off)
    new_order = None
    if btype == PCAPNG_SHB:
        (bom,) = struct.unpack_from("<I", mm, off + 8)
        if bom == PCAPNG_BYTE_ORDER_MAGIC:
            new_order = "<"
        elif bom == 0x4D3C2B1A:  # the byte-order magic written big-endian
            new_order = ">"
        elif off == 0:
            raise NotACapture(
                f"{path} starts like pcapng but its byte-order magic is "
                f"0x{bom:08x}, not 0x1a2b3c4d; give a capture written by "
                "tcpdump -w"
            )
        else:
            raise _Stop(
                off,
                f"section header at offset {off} has a bad byte-order magic "
                f"0x{bom:08x}: read everything before it",
            )
    order = new_order or sections[-1].order
    btype, blen = struct.unpack_from(order + "II", mm, off)
    if blen < 12 or blen & 3 or blen > MAX_BLOCK_BYTES:
        if off == 0:
            raise NotACapture(
                f"{path}: the pcapng section header has an impossible length "
                f"({blen} bytes); give a capture written by tcpdump -w"
            )
        raise _Stop(
            off,
            f"block at offset {off} is corrupt (length {blen} bytes): read "
            "everything before it and stopped there",
        )
    if blen > have:
        if off == 0:
            raise TruncatedCapture(
                f"{path} ends inside the pcapng section header: got {n} "
                f"bytes, {blen} needed; the capture has no packets"
            )
        raise _Stop(
            off,
            f"capture ends inside the block at offset {off} (got {have} bytes, "
            f"{blen} needed): read everything before it; was the file copied while "
            "tcpdump was still writing?",
        )
    (trailer,) = struct.unpack_from(order + "I", mm, off + blen - 4)
    if trailer != blen:
        if off == 0:
            raise NotACapture(
                f"{path}: the pcapng section header is corrupt (leading "
                f"length {blen}, trailing {trailer}); give a capture written "
                "by tcpdump -w"
            )
        raise _Stop(
            off,
            f"block at offset {off} is corrupt (leading length {blen}, "
            f"trailing {trailer}): read everything before it and stopped there",
        )

    if btype == PCAPNG_SHB:
        sections.append(_Section(off, order, len(ifaces)))
    elif btype == PCAPNG_IDB and blen >= 20:
        linktype, _, snaplen = struct.unpack_from(order + "HHI", mm, off + 8)
        iface = Iface(linktype, snaplen)
        for code, value in _options(mm, off + 16, off + blen - 4, order):
            if code == IF_TSRESOL and len(value) >= 1:
                iface.tsresol = value[0]
            elif code == IF_TSOFFSET and len(value) >= 8:
                (iface.tsoffset_s,) = struct.unpack(order + "q", value[:8])
        ifaces.append((off, iface))
        sections[-1].n_ifaces += 1
    elif btype == PCAPNG_EPB:
        epb.append(off)  # odd-sized; the bulk validation judges it
    elif btype in (PCAPNG_SPB, PCAPNG_PB):
        simple.append((off, btype))
    elif btype == PCAPNG_ISB and blen >= 24:
        (local,) = struct.unpack_from(order + "I", mm, off + 8)
        drops = 0
        for code, value in _options(mm, off + 20, off + blen - 4, order):
            if code in (ISB_IFDROP, ISB_OSDROP) and len(value) >= 8:
                (count,) = struct.unpack(order + "Q", value[:8])
                if count != 0xFFFFFFFFFFFFFFFF:  # all ones: "unknown"
                    drops += count
        if local < sections[-1].n_ifaces:
            isb[sections[-1].iface_base + local] = (off, drops)
    # every other block (NRB, DSB, custom, unknown) is skipped by its length (§3.1)
    return new_order


def _gather_epbs(buf: np.ndarray, offs: np.ndarray, sections: list[_Section]):
    """The fixed EPB fields (§4.3) of every EPB, in their section's byte order, and the
    trailing length of each block (which must repeat the leading one)."""
    n = buf.size
    groups: list[tuple[int, np.ndarray | None]] = [(0, None)]
    section = np.zeros(offs.size, np.int64)
    if len(sections) > 1:
        starts = np.array([s.offset for s in sections], np.int64)
        section = np.searchsorted(starts, offs, side="right") - 1
        groups = [(i, np.flatnonzero(section == i)) for i in range(len(sections))]
    parts = []
    for s_i, sel in groups:
        order = sections[s_i].order + "u4"
        o = take(offs, sel)
        hdr = windows(buf, o, EPB_DATA_OFFSET).view(order)
        blen = hdr[:, EPB_WORD["length"]].astype(np.int64)
        end = o + blen
        inside = end <= n
        tail = windows(buf, np.where(inside, end - 4, 0), 4).view(order)[:, 0]
        parts.append(
            {
                "block_off": o,
                "blen": blen,
                "local_iface": hdr[:, EPB_WORD["iface"]],
                "ts_units": (hdr[:, EPB_WORD["ts_high"]].astype(np.uint64) << np.uint64(32))
                | hdr[:, EPB_WORD["ts_low"]],
                "caplen": hdr[:, EPB_WORD["caplen"]].astype(np.int64),
                "origlen": hdr[:, EPB_WORD["origlen"]],
                "trailer": np.where(inside, tail, -1),
                "section": take(section, sel),
            }
        )
    if len(parts) == 1:
        pk = parts[0]
    else:  # back into file order
        by_offset = np.argsort(np.concatenate([p["block_off"] for p in parts]), kind="stable")
        pk = {k: np.concatenate([p[k] for p in parts])[by_offset] for k in parts[0]}
    pk["data_off"] = pk["block_off"] + EPB_DATA_OFFSET
    pk["has_ts"] = np.ones(offs.size, bool)
    return pk


def _add_simple_blocks(mm, pk, simple, sections, ifaces):
    """SPBs and obsolete PBs (rare in practice: one Python step each), merged in file
    order with the EPBs."""
    starts = [s.offset for s in sections]
    rows = []
    for off, btype in simple:
        s_i = int(np.searchsorted(starts, off, side="right")) - 1
        sec = sections[s_i]
        o = sec.order
        (blen,) = struct.unpack_from(o + "I", mm, off + 4)
        if btype == PCAPNG_SPB:
            if blen < SPB_MIN_BYTES:
                continue
            # SPB (§4.4): interface 0 of the section, captured length from the block and
            # that interface's snaplen, no timestamp
            (orig,) = struct.unpack_from(o + "I", mm, off + 8)
            cap = min(orig, blen - SPB_MIN_BYTES)
            if sec.n_ifaces and ifaces[sec.iface_base].snaplen:
                cap = min(cap, ifaces[sec.iface_base].snaplen)
            rows.append((off, off + SPB_DATA_OFFSET, cap, orig, 0, 0, s_i, False))
        else:
            if blen < EPB_MIN_BYTES:
                continue
            local, _drops, hi, lo, cap, orig = struct.unpack_from(o + "HHIIII", mm, off + 8)
            if cap > blen - EPB_MIN_BYTES:
                continue
            rows.append((off, off + EPB_DATA_OFFSET, cap, orig, local, (hi << 32) | lo, s_i, True))
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
    order = np.argsort(np.concatenate([pk["block_off"], extra["block_off"]]), kind="stable")
    return {k: np.concatenate([pk[k], v])[order] for k, v in extra.items()}
