"""Capture reader: a pcap or pcapng file → the packet table of ``schemas/packets.py``.

Bulk, not per packet: the file is memory-mapped, the record headers are walked with one
tight loop (the only sequential part: each record's length says where the next one starts),
and every field of every packet is then gathered with numpy fancy indexing. Header layouts
are written down below as data and cite their specs:

- pcap: https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html
- pcapng: https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html
- link types: https://www.tcpdump.org/linktypes.html

Nothing is dropped silently: every record that does not become a row is counted in
``CaptureMeta.skipped_non_tcp`` or ``CaptureMeta.skipped_other`` (so ``tcp_packets +
skipped_non_tcp + sum(skipped_other.values()) == records``), and anything odd about the
file itself (truncation, corruption, unsupported interfaces) is a line in ``warnings``.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from retranscope.errors import (
    BadInput,
    CaptureError,
    NotACapture,
    TruncatedCapture,
    UnknownLinkType,
)
from retranscope.schemas.packets import PACKET_DTYPES, V4_MAPPED_LO_PREFIX, empty_packets

__all__ = ["Capture", "CaptureMeta", "read_capture", "SUPPORTED_LINKTYPES"]

Progress = Callable[[int, int], None]

# libpcap's MAXIMUM_SNAPLEN: no writer produces a longer record, so a longer one means the
# record header is garbage (Wireshark: "File has N-byte packet, bigger than maximum").
MAX_CAPLEN_BYTES = 262144
PROGRESS_CALLS = 32  # the walk reports this many times per file, at most

# ---------------------------------------------------------------------------------------
# File formats. Field positions are data: byte offsets (or 32-bit word indexes, "_WORD")
# from the start of each header, which the code below reads by name.
# ---------------------------------------------------------------------------------------

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
GZIP_MAGIC = b"\x1f\x8b"

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
EPB_WORD = {"type": 0, "length": 1, "iface": 2, "ts_high": 3, "ts_low": 4, "caplen": 5,
            "origlen": 6}
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
# Link layers: tcpdump.org/linktypes.html
# ---------------------------------------------------------------------------------------
LINKTYPE_NULL = 0  # BSD loopback: 4-byte AF_ value in the *writer's* byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_DLT12 = 12  # DLT_RAW on most BSDs, found in old files as a link type
LINKTYPE_RAW_DLT14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte AF_ value, always big-endian
LINKTYPE_LINUX_SLL = 113  # tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html: 16 bytes
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276  # tcpdump.org/linktypes/LINKTYPE_LINUX_SLL2.html: 20 bytes

SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "BSD loopback (NULL)",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW_DLT12: "raw IP (DLT 12)",
    LINKTYPE_RAW_DLT14: "raw IP (DLT 14)",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_LOOP: "OpenBSD loopback (LOOP)",
    LINKTYPE_LINUX_SLL: "Linux cooked v1 (SLL)",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
}
RAW_LINKTYPES = (LINKTYPE_RAW_DLT12, LINKTYPE_RAW_DLT14, LINKTYPE_RAW)

# (link type) -> (link header bytes, offset of the 16-bit EtherType, offset of pkttype)
COOKED_LAYOUT = {
    LINKTYPE_ETHERNET: (14, 12, None),  # dst 6, src 6, EtherType 2
    # SLL: pkttype u16 @0, ARPHRD @2, addr len @4, addr 8 @6, protocol @14
    LINKTYPE_LINUX_SLL: (16, 14, 0),
    # SLL2: protocol @0, reserved @2, ifindex @4, ARPHRD @8, pkttype u8 @10, addr len @11
    LINKTYPE_LINUX_SLL2: (20, 0, 10),
}
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# 802.1Q C-tag, 802.1ad S-tag, and the pre-standard QinQ TPID: each adds TCI + EtherType
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
VLAN_TAGS_MAX = 3
# Carry TCP but are not decoded here: PPPoE session (RFC 2516), MPLS (RFC 3032)
ETHERTYPES_UNSUPPORTED = (0x8864, 0x8847, 0x8848)
# AF_INET is 2 everywhere; AF_INET6 is 10 on Linux, 24 on the BSDs, 28 on FreeBSD, 30 on
# Darwin (the list Wireshark's packet-null.c accepts)
AF_INET = 2
AF_INET6_VALUES = (10, 24, 28, 30)

# ---------------------------------------------------------------------------------------
# IP and TCP
# ---------------------------------------------------------------------------------------
IPPROTO_TCP = 6
IPV4_MIN_HEADER_BYTES = 20  # RFC 791 §3.1: IHL 5..15 words
IPV4_AT = {"version_ihl": 0, "total_length": 2, "flags_fragment": 6, "protocol": 9,
           "src": 12, "dst": 16}
IPV6_HEADER_BYTES = 40  # RFC 8200 §3
IPV6_AT = {"version": 0, "payload_length": 4, "next_header": 6, "src": 8, "dst": 24}
# extension headers (RFC 8200 §4.3-4.6): next header, length; the fragment header has the
# offset (13 bits, in 8-byte units) and the M flag in bytes 2-3
IPV6_EXT_AT = {"next_header": 0, "length": 1, "fragment": 2}
# IPv6 extension headers walked to find TCP (RFC 8200 §4): hop-by-hop, routing,
# destination options (length in 8-octet units, not counting the first 8), fragment
# (fixed 8 bytes), and AH (RFC 4302: length in 4-octet units minus 2)
IPV6_EXT_8OCTET = (0, 43, 60)
IPV6_FRAGMENT = 44
IPV6_AH = 51
IPV6_EXT_MAX = 8
TCP_MIN_HEADER_BYTES = 20  # RFC 9293 §3.1
TCP_AT = {"sport": 0, "dport": 2, "seq": 4, "ack": 8, "data_offset": 12, "flags": 13,
          "window": 14}
TCP_MAX_OPTION_BYTES = 40
# TCP option kinds, with the lengths Linux's tcp_parse_options() accepts
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2  # RFC 9293, length 4
TCPOPT_WSCALE = 3  # RFC 7323, length 3
TCPOPT_SACK_PERM = 4  # RFC 2018, length 2
TCPOPT_SACK = 5  # RFC 2018, 2 + 8 per block
TCPOPT_TIMESTAMP = 8  # RFC 7323, length 10
SACK_BLOCKS_MAX = 4

# Why a record did not become a row (counted in CaptureMeta.skipped_other)
SKIP_REASONS = (
    "",  # 0: kept
    "non_tcp",  # counted in skipped_non_tcp instead
    "ip_fragment",  # a non-first fragment of a TCP segment: no TCP header in it
    "bad_ip_header",
    "bad_tcp_header",
    "link_header_cut",  # the snaplen cut the frame before the IP header
    "ip_header_cut",
    "tcp_header_cut",
    "unsupported_encapsulation",  # PPPoE, MPLS: may carry TCP, not decoded
    "unsupported_linktype",
    "unknown_interface",  # pcapng packet naming an interface with no IDB
)
_WHY = {name: code for code, name in enumerate(SKIP_REASONS)}


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


@dataclass
class CaptureMeta:
    """What the later stages and the report need to know about the file."""

    path: str
    format: str  # "pcap" | "pcapng"
    ts_resolution_ns: int  # the coarsest timestamp unit among the interfaces, ns (>= 1)
    linktypes: list[int]  # one per interface (pcap: one), in file order
    snaplen: int  # pcapng: the largest interface snaplen; 0 when one of them is unlimited
    records: int  # packet records read (pcapng: EPB, SPB, PB), numbered as Wireshark does
    tcp_packets: int
    skipped_non_tcp: int
    skipped_other: dict[str, int]  # reason -> records (SKIP_REASONS)
    truncated: bool
    truncated_at_offset: int | None  # byte offset of the first record that could not be read
    warnings: list[str]
    if_drops: int | None  # pcapng ISB isb_ifdrop + isb_osdrop (last ISB per interface)
    first_ts_ns: int | None  # over all records read, not only the TCP ones
    last_ts_ns: int | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Capture:
    packets: dict[str, np.ndarray]  # exactly PACKET_COLUMNS, in that order, those dtypes
    meta: CaptureMeta


def read_capture(path: str | os.PathLike, *, progress: Progress | None = None) -> Capture:
    """Read a pcap or pcapng file into the packet table, one row per TCP segment.

    ``progress(bytes_done, bytes_total)`` is called a few dozen times at most.
    Raises BadInput (missing or unreadable file), NotACapture (empty, wrong magic),
    TruncatedCapture (cut inside the file header), UnknownLinkType (no interface has a
    link type decoded here), CaptureError (other unreadable files). A file damaged or cut
    after its header is read up to the damage: ``meta.truncated`` and a warning say where.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"no such file: {path}") from None
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror}") from None
    if not os.path.isfile(path):
        raise BadInput(f"not a regular file: {path}; give a capture file written by tcpdump -w")
    if st.st_size == 0:
        raise NotACapture(
            f"{path} is empty (0 bytes), not a pcap or pcapng file; "
            "give a capture written by tcpdump -w"
        )
    try:
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror}") from None
    try:
        return _read_mapped(path, mm, progress)
    finally:
        try:
            mm.close()
        except BufferError:  # a view is still referenced; the garbage collector unmaps it
            pass


# ---------------------------------------------------------------------------------------
# Records: what the walk of either format hands to the decoder
# ---------------------------------------------------------------------------------------


@dataclass
class _Iface:
    linktype: int
    snaplen: int
    tsresol: int = 6  # if_tsresol byte: 6 = 10^-6 s
    tsoffset_s: int = 0  # if_tsoffset


@dataclass
class _Records:
    """One entry per packet record that the decoder will look at."""

    frame: np.ndarray  # int64, 1-based number among all packet records
    data_off: np.ndarray  # int64, absolute byte offset of the frame's first byte
    caplen: np.ndarray  # int32 or int64
    origlen: np.ndarray  # any unsigned or signed integer type
    ts_ns: np.ndarray  # int64
    iface: np.ndarray  # int16 or int64, index into ifaces
    ifaces: list[_Iface]
    fmt: str
    snaplen: int
    ts_resolution_ns: int
    records: int  # packet records read, including ones set aside before decoding
    truncated_at: int | None = None
    warnings: list[str] = field(default_factory=list)
    if_drops: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def rows(self, lo: int, hi: int) -> _Records:
        """The records lo:hi (views), for decoding in chunks."""
        return _Records(self.frame[lo:hi], self.data_off[lo:hi], self.caplen[lo:hi],
                        self.origlen[lo:hi], self.ts_ns[lo:hi], self.iface[lo:hi],
                        self.ifaces, self.fmt, self.snaplen, self.ts_resolution_ns,
                        self.records)


def _read_mapped(path: str, mm: mmap.mmap, progress: Progress | None) -> Capture:
    n = len(mm)
    head = mm[:12]
    if len(head) < 4:
        raise NotACapture(
            f"{path} is not a pcap or pcapng file (got {len(head)} bytes, 4 needed for the "
            "magic); give a capture written by tcpdump -w"
        )
    (magic,) = struct.unpack_from("<I", head)
    if magic == PCAPNG_SHB:
        recs = _walk_pcapng(path, mm, n, progress)
    elif magic in PCAP_MAGIC:
        recs = _walk_pcap(path, mm, n, magic, progress)
    elif magic in PCAP_MAGIC_KUZNETSOV:
        raise CaptureError(
            f"{path} is a 'modified' (Kuznetsov) pcap, which is not read here; "
            "convert it with: editcap -F pcap IN OUT"
        )
    elif head.startswith(GZIP_MAGIC):
        raise NotACapture(f"{path} is gzip-compressed, not a pcap or pcapng file; gunzip it")
    else:
        raise NotACapture(
            f"{path} is not a pcap or pcapng file (magic 0x{head[:4].hex()}); "
            "give a capture written by tcpdump -w"
        )

    buf = np.frombuffer(mm, dtype=np.uint8)
    try:
        packets, skipped, notes = _decode_in_chunks(path, buf, recs)
    finally:
        del buf
    if progress is not None:
        progress(n, n)

    skipped_non_tcp = skipped.pop("non_tcp", 0)
    for name, count in recs.skipped.items():
        skipped[name] = skipped.get(name, 0) + count
    ts = recs.ts_ns
    meta = CaptureMeta(
        path=path,
        format=recs.fmt,
        ts_resolution_ns=recs.ts_resolution_ns,
        linktypes=[i.linktype for i in recs.ifaces],
        snaplen=recs.snaplen,
        records=recs.records,
        tcp_packets=int(packets["frame"].size),
        skipped_non_tcp=skipped_non_tcp,
        skipped_other={k: v for k, v in sorted(skipped.items()) if v},
        truncated=recs.truncated_at is not None,
        truncated_at_offset=recs.truncated_at,
        warnings=recs.warnings + notes,
        if_drops=recs.if_drops,
        first_ts_ns=int(ts.min()) if ts.size else None,
        last_ts_ns=int(ts.max()) if ts.size else None,
    )
    return Capture(packets=packets, meta=meta)


# ---------------------------------------------------------------------------------------
# Gathering fixed-width byte windows at many offsets at once
# ---------------------------------------------------------------------------------------


def _windows(buf: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Rows of ``width`` bytes from ``buf`` at each of ``starts``: one fancy-index gather.

    A strided view whose row i is buf[i:i+width] turns "read N bytes at each offset" into a
    single take (measured: about as fast for 64 bytes a row as for 4). Rows running past
    the end of the file are zero-padded; callers mask every field with the record's
    captured length, so neither padding nor the next record's bytes are taken as data.
    """
    n = buf.size
    if starts.size == 0:
        return np.zeros((0, width), dtype=np.uint8)
    inside_max = n - width
    if inside_max >= 0 and int(starts.max()) <= inside_max:
        view = as_strided(buf, shape=(inside_max + 1, width), strides=(1, 1), writeable=False)
        return view[starts]
    out = np.zeros((starts.size, width), dtype=np.uint8)
    inside = starts <= inside_max
    if inside.any():
        view = as_strided(buf, shape=(inside_max + 1, width), strides=(1, 1), writeable=False)
        out[inside] = view[starts[inside]]
    for i in np.flatnonzero(~inside):  # at most `width` rows: the file's last bytes
        tail = buf[int(starts[i]) : n]
        out[i, : tail.size] = tail
    return out


def _col_u(mat: np.ndarray, col: int, nbytes: int, order: str = ">") -> np.ndarray:
    """The unsigned field of ``nbytes`` at column ``col`` of every row, native order."""
    if nbytes == 1:
        return mat[:, col].copy()
    raw = np.ascontiguousarray(mat[:, col : col + nbytes]).view(f"{order}u{nbytes}")[:, 0]
    return raw.astype(f"=u{nbytes}")


def _first(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.any() else None


# Options read for every segment at once: NOP, NOP, timestamps (see _tcp_options)
TCP_FAST_OPTION_BYTES = 12


def _frame_head_bytes(linktypes: list[int]) -> int:
    """How much of each frame to gather up front: the link header and a 20-byte IPv4 and
    TCP header with the usual 12 option bytes. Longer headers (VLAN tags, IPv6, IP
    options) read what lies beyond from the file."""
    link = max((COOKED_LAYOUT[lt][0] if lt in COOKED_LAYOUT else
                4 if lt in (LINKTYPE_NULL, LINKTYPE_LOOP) else 0) for lt in linktypes)
    return link + IPV4_MIN_HEADER_BYTES + TCP_MIN_HEADER_BYTES + TCP_FAST_OPTION_BYTES


class _FrameBytes:
    """Byte windows at offsets into the frames: served from the frame heads gathered in
    one pass (row gathers of a small matrix, or views), else read from the file."""

    def __init__(self, buf: np.ndarray, data_off: np.ndarray, head: np.ndarray):
        self.buf, self.data_off, self.head = buf, data_off, head

    def window(self, rows, rel, width: int) -> np.ndarray:
        """``width`` bytes at ``rel`` (scalar or per row) into the frames ``rows`` (None:
        every record), rows of a (len, width) uint8 matrix (may be a view)."""
        hw = self.head.shape[1]
        if np.ndim(rel) and rel.size:
            lo, hi = int(rel.min()), int(rel.max())
            if lo == hi:
                rel = lo
            elif lo >= 0 and hi + width <= hw:
                values = np.unique(rel)
                if values.size <= 4:  # a few layouts (VLAN tags, IP options): one each
                    out = np.empty((rel.size, width), np.uint8)
                    base = np.arange(rel.size) if rows is None else rows
                    for v in values.tolist():
                        k = np.flatnonzero(rel == v)
                        out[k] = self.head[base[k], v:v + width]
                    return out
        if np.ndim(rel) == 0 and 0 <= rel and rel + width <= hw:
            # A copy, not a view: each field is then read from a narrow contiguous
            # matrix, not with the stride of the whole head.
            if rows is None:
                return np.ascontiguousarray(self.head[:, rel:rel + width])
            return self.head[rows, rel:rel + width]
        return _windows(self.buf, _take(self.data_off, rows) + rel, width)

    def field(self, rows, rel, nbytes: int) -> np.ndarray:
        """The big-endian unsigned field of ``nbytes`` at ``rel``, native order."""
        return self.window(rows, rel, nbytes).view(f">u{nbytes}")[:, 0].astype(f"=u{nbytes}")


# ---------------------------------------------------------------------------------------
# pcap
# ---------------------------------------------------------------------------------------


def _walk_pcap_offsets(mm: mmap.mmap, n: int, order: str,
                       progress: Progress | None) -> np.ndarray:
    """Offsets of the pcap record headers from ``start`` on: the one sequential loop.

    Measured on 1.3M records (headers-only, 163 MB): a loop whose only exit is the
    struct.error that unpack_from raises past the end of its buffer takes ~0.13 s, the
    same loop with a bounds test per record ~0.2 s. A vectorised alternative was tried
    and dropped: ~2,500 walkers stepping through their own chunks of the file in
    lock-step (one numpy gather per record position, each chunk's start guessed from
    sane-looking headers and verified by the previous walker landing on it) gave the same
    offsets in about the same time, because each step's gather touches 2,500 cold pages
    (~90 ns a record, memory latency) where this loop streams through the file.
    Progress comes from walking the file in slices: the error at a slice's end resumes
    the loop on a longer slice. The loop keeps the captured lengths, not the offsets, in
    a typed array: the offsets are their running sum, and no Python int is kept per
    record (1.3M of them were ~40 MB of fresh memory).
    """
    unpack_caplen = struct.Struct(order + "8xI").unpack_from  # caplen, @8 of the header
    caplens = array("I")  # 32 bits, as the field
    append = caplens.append
    mv = memoryview(mm)
    step = max(n // PROGRESS_CALLS, 1 << 20)
    limit = off = PCAP_FILE_HEADER_BYTES
    try:
        while True:
            limit = min(n, limit + step)
            with mv[:limit] as view:
                try:
                    while True:
                        caplen = unpack_caplen(view, off)[0]
                        append(caplen)
                        off += PCAP_RECORD_HEADER_BYTES + caplen
                except struct.error:
                    pass  # this header lies past the slice: read it from the next
            if progress is not None:
                progress(min(off, n), n)
            if limit >= n:
                break
    finally:
        mv.release()
    offsets = np.empty(len(caplens) + 1, dtype=np.int64)
    offsets[0] = 0
    np.cumsum(np.frombuffer(caplens, dtype=np.uint32), out=offsets[1:])
    offsets += PCAP_RECORD_HEADER_BYTES * np.arange(offsets.size) + PCAP_FILE_HEADER_BYTES
    # offsets[-1] is where the walk stopped: 1-11 bytes of a record header there are
    # validated (and cut) below
    return offsets if off < n else offsets[:-1]


def _walk_pcap(path: str, mm: mmap.mmap, n: int, magic: int, progress: Progress | None):
    order, frac_ns = PCAP_MAGIC[magic]
    if n < PCAP_FILE_HEADER_BYTES:
        raise TruncatedCapture(
            f"{path} ends inside the pcap file header: got {n} bytes, "
            f"{PCAP_FILE_HEADER_BYTES} needed; the capture has no packets to read"
        )
    _, major, minor, thiszone, _, snaplen, linktype_field = struct.unpack_from(
        order + PCAP_FILE_HEADER.format, mm, 0
    )
    # The top bits of the link-type field may carry an FCS length (draft §4, "LinkType
    # and additional information"); the link type proper is the low 16 bits.
    linktype = linktype_field & 0xFFFF
    if linktype not in SUPPORTED_LINKTYPES:
        raise UnknownLinkType(_unknown_linktype_message(path, [linktype]))
    warnings = []
    if major != 2:
        warnings.append(f"pcap version {major}.{minor}, expected 2.4: read as 2.4")
    if thiszone:
        # Always written as 0 in practice; reported, not applied, as tcpdump and
        # Wireshark do.
        warnings.append(f"pcap header thiszone={thiszone} s ignored: timestamps read as UTC")

    offsets = _walk_pcap_offsets(mm, n, order, progress)
    buf = np.frombuffer(mm, dtype=np.uint8)
    hdr = _windows(buf, offsets, PCAP_RECORD_HEADER_BYTES).view(order + "u4")
    del buf
    # views on the gathered headers: columns are copied once, into what is kept
    ts_sec, ts_frac, caplen_u32, origlen = (
        hdr[:, PCAP_RECORD_WORD[k]] for k in ("ts_sec", "ts_frac", "caplen", "origlen"))

    # Where to stop: at the first impossible record (a length no writer produces, a
    # sub-second field out of range, an all-zero header: what garbage in a record header
    # looks like), or at a record running past the end of the file. Only the last record
    # can do that: every earlier one ends where a record header was read.
    good = offsets.size
    truncated_at = None
    last_end = int(offsets[-1]) + PCAP_RECORD_HEADER_BYTES + int(caplen_u32[-1]) if good else 0
    overrun = last_end > n
    bad = (caplen_u32 > MAX_CAPLEN_BYTES) | (ts_frac >= 1_000_000_000 // frac_ns)
    # a zero-filled tail (space allocated but never written, as after a crash): no packet
    # has wire length 0 at time 0
    bad |= (origlen == 0) & (ts_sec == 0)
    if overrun and n - int(offsets[-1]) < PCAP_RECORD_HEADER_BYTES:
        bad[-1] = False  # its header is cut: the fields read are partly padding
    first_bad = _first(bad)
    if first_bad is not None:
        good = first_bad
        truncated_at = int(offsets[first_bad])
        warnings.append(
            f"record {first_bad + 1} at offset {truncated_at} is corrupt (caplen "
            f"{caplen_u32[first_bad]} bytes, at most {MAX_CAPLEN_BYTES}; sub-second field "
            f"{ts_frac[first_bad]}; wire length {origlen[first_bad]}): read the {first_bad} "
            "records before it and stopped there"
        )
    elif overrun:
        good = offsets.size - 1
        truncated_at = int(offsets[-1])
        have = n - truncated_at
        need = PCAP_RECORD_HEADER_BYTES + (int(caplen_u32[-1]) if have >= 12 else 0)
        warnings.append(
            f"capture ends inside record {good + 1} at offset {truncated_at} (got {have} "
            f"bytes, {need} needed): read the {good} records before it; was the file "
            "copied while tcpdump was still writing?"
        )
    if good < offsets.size:
        ts_sec, ts_frac, caplen_u32, origlen, offsets = (
            a[:good] for a in (ts_sec, ts_frac, caplen_u32, origlen, offsets)
        )
    if snaplen:
        over = int(np.count_nonzero(caplen_u32 > snaplen))
        if over:
            warnings.append(f"{over} records are longer than the file's snaplen {snaplen} "
                            "bytes: read in full")
    offsets += PCAP_RECORD_HEADER_BYTES  # now where each frame's data starts
    ts_ns = ts_sec.astype(np.int64)
    ts_ns *= 1_000_000_000
    ts_ns += ts_frac.astype(np.int64) * frac_ns
    return _Records(
        frame=np.arange(1, good + 1, dtype=np.int64),
        data_off=offsets,
        caplen=caplen_u32.astype(np.int32),
        origlen=origlen,
        ts_ns=ts_ns,
        iface=np.zeros(good, dtype=np.int16),
        ifaces=[_Iface(linktype, snaplen)],
        fmt="pcap",
        snaplen=snaplen,
        ts_resolution_ns=frac_ns,
        records=good,
        truncated_at=truncated_at,
        warnings=warnings,
    )


# ---------------------------------------------------------------------------------------
# pcapng
# ---------------------------------------------------------------------------------------


def _tsresol_unit(tsresol: int) -> tuple[int, int]:
    """if_tsresol (pcapng §4.2): MSB clear, a unit is 10^-v s; set, 2^-v s.
    Returns (base, exponent)."""
    return (2, tsresol & 0x7F) if tsresol & 0x80 else (10, tsresol)


def _resolution_ns(iface: _Iface) -> int:
    base, exp = _tsresol_unit(iface.tsresol)
    return max(1, -(-1_000_000_000 // base**exp))


def _units_to_ns(units: np.ndarray, iface: _Iface) -> np.ndarray:
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


def _walk_pcapng(path: str, mm: mmap.mmap, n: int, progress: Progress | None) -> _Records:
    sections: list[_Section] = []
    ifaces: list[tuple[int, _Iface]] = []  # (IDB offset, interface)
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
    bad = ((pk["caplen"] > MAX_CAPLEN_BYTES) | (pk["caplen"] > pk["blen"] - EPB_MIN_BYTES)
           | (pk["trailer"] != pk["blen"]) | (pk["blen"] & 3 != 0))
    i = _first(bad)
    if i is not None and (stop is None or pk["block_off"][i] < stop.offset):
        at = int(pk["block_off"][i])
        if ends[i] > n:
            stop = _Stop(at, f"capture ends inside the packet block at offset {at} (got "
                         f"{n - at} bytes, {pk['blen'][i]} needed): read everything before "
                         "it; was the file copied while tcpdump was still writing?")
        else:
            stop = _Stop(at, f"packet block at offset {at} is corrupt (block length "
                         f"{pk['blen'][i]}, caplen {pk['caplen'][i]}, trailing length "
                         f"{pk['trailer'][i]}): read everything before it and stopped there")

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
        warnings.append(f"{count} packet blocks name an interface that has no interface "
                        "description block: skipped")
        pk = {k: v[~unknown] for k, v in pk.items()}
        frame, base = frame[~unknown], base[~unknown]
    iface = base + pk["local_iface"]

    ts_ns = np.zeros(iface.size, np.int64)
    for g in (np.unique(iface) if len(iface_list) > 1 else range(len(iface_list))):
        sel = iface == g if len(iface_list) > 1 else slice(None)
        ts_ns[sel] = _units_to_ns(pk["ts_units"][sel], iface_list[int(g)])
    has_ts = pk["has_ts"]
    if not has_ts.all():
        # An SPB has no timestamp (§4.4): it takes the one of the packet before it (0 if
        # none), so the table stays in time order; the warning says so.
        before = np.maximum.accumulate(np.where(has_ts, np.arange(has_ts.size), -1))
        ts_ns = np.where(has_ts, ts_ns,
                         np.where(before >= 0, ts_ns[np.maximum(before, 0)], 0))
        warnings.append(f"{int(np.count_nonzero(~has_ts))} Simple Packet Blocks carry no "
                        "timestamp: each was given the timestamp of the packet before it")

    if_drops = None
    if isb:
        if_drops = int(sum(drops for _, drops in isb.values()))
        if if_drops:
            warnings.append(f"the capturing interfaces dropped {if_drops} packets (pcapng "
                            "interface statistics): segments the hosts exchanged are "
                            "missing from the capture")
    snaplens = [i.snaplen for i in iface_list]
    return _Records(
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
        raise _Stop(off, f"capture ends inside the block at offset {off} (got {have} bytes, "
                    "12 needed for a block header): read everything before it")
    (btype,) = struct.unpack_from("<I", mm, off)
    new_order = None
    if btype == PCAPNG_SHB:
        (bom,) = struct.unpack_from("<I", mm, off + 8)
        if bom == PCAPNG_BYTE_ORDER_MAGIC:
            new_order = "<"
        elif bom == 0x4D3C2B1A:  # the byte-order magic written big-endian
            new_order = ">"
        elif off == 0:
            raise NotACapture(f"{path} starts like pcapng but its byte-order magic is "
                              f"0x{bom:08x}, not 0x1a2b3c4d; give a capture written by "
                              "tcpdump -w")
        else:
            raise _Stop(off, f"section header at offset {off} has a bad byte-order magic "
                        f"0x{bom:08x}: read everything before it")
    order = new_order or sections[-1].order
    btype, blen = struct.unpack_from(order + "II", mm, off)
    if blen < 12 or blen & 3 or blen > MAX_BLOCK_BYTES:
        if off == 0:
            raise NotACapture(f"{path}: the pcapng section header has an impossible length "
                              f"({blen} bytes); give a capture written by tcpdump -w")
        raise _Stop(off, f"block at offset {off} is corrupt (length {blen} bytes): read "
                    "everything before it and stopped there")
    if blen > have:
        if off == 0:
            raise TruncatedCapture(f"{path} ends inside the pcapng section header: got {n} "
                                   f"bytes, {blen} needed; the capture has no packets")
        raise _Stop(off, f"capture ends inside the block at offset {off} (got {have} bytes, "
                    f"{blen} needed): read everything before it; was the file copied while "
                    "tcpdump was still writing?")
    (trailer,) = struct.unpack_from(order + "I", mm, off + blen - 4)
    if trailer != blen:
        if off == 0:
            raise NotACapture(f"{path}: the pcapng section header is corrupt (leading "
                              f"length {blen}, trailing {trailer}); give a capture written "
                              "by tcpdump -w")
        raise _Stop(off, f"block at offset {off} is corrupt (leading length {blen}, "
                    f"trailing {trailer}): read everything before it and stopped there")

    if btype == PCAPNG_SHB:
        sections.append(_Section(off, order, len(ifaces)))
    elif btype == PCAPNG_IDB and blen >= 20:
        linktype, _, snaplen = struct.unpack_from(order + "HHI", mm, off + 8)
        iface = _Iface(linktype, snaplen)
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
        o = _take(offs, sel)
        hdr = _windows(buf, o, EPB_DATA_OFFSET).view(order)
        blen = hdr[:, EPB_WORD["length"]].astype(np.int64)
        end = o + blen
        inside = end <= n
        tail = _windows(buf, np.where(inside, end - 4, 0), 4).view(order)[:, 0]
        parts.append({
            "block_off": o,
            "blen": blen,
            "local_iface": hdr[:, EPB_WORD["iface"]],
            "ts_units": (hdr[:, EPB_WORD["ts_high"]].astype(np.uint64) << np.uint64(32))
            | hdr[:, EPB_WORD["ts_low"]],
            "caplen": hdr[:, EPB_WORD["caplen"]].astype(np.int64),
            "origlen": hdr[:, EPB_WORD["origlen"]],
            "trailer": np.where(inside, tail, -1),
            "section": _take(section, sel),
        })
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
            rows.append((off, off + EPB_DATA_OFFSET, cap, orig, local, (hi << 32) | lo, s_i,
                         True))
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


# ---------------------------------------------------------------------------------------
# Decoding: link layer → IP → TCP, vectorised over all records
#
# Memory matters as much as arithmetic: on the VMs measured, a fresh page costs ~2 µs to
# fault in, so a 1.3M-row temporary of 8 bytes a row costs ~25 ms before any work is
# done. Offsets that are the same for every row stay scalars (``_take`` passes them
# through), byte windows are only as wide as the fields read, and ``None`` as an index
# means "every row", so the common capture (one link type, all TCP) copies nothing.
# ---------------------------------------------------------------------------------------


def _take(a, idx):
    """``a[idx]``, where ``idx`` None means every row and a scalar holds for every row."""
    if idx is None or np.ndim(a) == 0:
        return a
    return a[idx]


def _compose(outer, inner):
    """Index into the records of rows picked by ``inner`` among rows picked by ``outer``."""
    if inner is None:
        return outer
    return inner if outer is None else outer[inner]


def _subset(mask: np.ndarray):
    """Row index of a mask, or None when every row is in it."""
    return None if mask.all() else np.flatnonzero(mask)


def _be(buf: np.ndarray, at, nbytes: int) -> np.ndarray:
    """The big-endian unsigned field of ``nbytes`` at each absolute offset, native order."""
    return _windows(buf, np.asarray(at), nbytes).view(f">u{nbytes}")[:, 0].astype(
        f"=u{nbytes}")


def _field(mat: np.ndarray, col: int, nbytes: int) -> np.ndarray:
    """The big-endian field at ``col`` of every row of a window matrix (a view, no copy)."""
    return mat[:, col : col + nbytes].view(f">u{nbytes}")[:, 0]


def _is_any(a: np.ndarray, values) -> np.ndarray:
    """np.isin for a handful of values: a few compares beat its sort on 1M rows."""
    hit = a == values[0]
    for v in values[1:]:
        hit |= a == v
    return hit


def _unknown_linktype_message(path: str, linktypes: list[int]) -> str:
    names = ", ".join(str(lt) for lt in linktypes)
    supported = ", ".join(f"{k} {v}" for k, v in sorted(SUPPORTED_LINKTYPES.items()))
    return (
        f"{path}: link type {names} is not decoded here (supported: {supported}); "
        "capture with tcpdump -i any or on an Ethernet interface"
    )


class _Notes:
    """Notes about the packets, counted: the chunks of a capture add to the same line."""

    def __init__(self) -> None:
        self.counts: dict[tuple, list] = {}

    def add(self, key: tuple, template: str, n: int) -> None:
        """``key`` orders the lines (the decoder's order: link, IPv4, IPv6, TCP);
        ``template`` has {n} where the count goes."""
        if n:
            self.counts.setdefault(key, [template, 0])[1] += int(n)

    def lines(self) -> list[str]:
        return [t.replace("{n}", str(n)) for _, (t, n) in sorted(self.counts.items())]


# Records decoded at a time: the byte windows and masks of a chunk take a few MB, reused
# from chunk to chunk and warm in the cache. Decoding all records at once took hundreds of
# MB of temporaries, and fresh memory is not free (~0.6 ms a MB to fault in on the VMs
# measured, more than the decoding arithmetic on it).
DECODE_CHUNK_RECORDS = 1 << 16


def _columns(n: int, dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """Empty columns of ``n`` rows, carved out of one allocation: the kernel maps one big
    block with huge pages (numpy asks for them), where 32 separate ~10 MB arrays were
    faulted in 4 KB at a time (~40k page faults for 1.3M rows)."""
    starts, size = [], 0
    for dt in dtypes.values():
        size = -(-size // 64) * 64  # each column on its own cache line
        starts.append(size)
        size += n * dt.itemsize
    block = np.empty(size, dtype=np.uint8)
    return {name: block[at:at + n * dt.itemsize].view(dt)
            for (name, dt), at in zip(dtypes.items(), starts)}


def _present_linktypes(recs: _Records) -> tuple[list[int], np.ndarray | None]:
    """Link types that records use (sorted), and the link type of every record when the
    interfaces have several (else None)."""
    linktypes = [i.linktype for i in recs.ifaces]
    if len(set(linktypes)) > 1:
        lt_of = np.array(linktypes, np.int64)[recs.iface]
        return [int(lt) for lt in np.unique(lt_of)], lt_of
    return linktypes[:1], None


def _decode_in_chunks(path: str, buf: np.ndarray, recs: _Records):
    """_decode, DECODE_CHUNK_RECORDS at a time, into one table; returns the table, skip
    counts, notes."""
    n_rec = recs.data_off.size
    if n_rec == 0:
        return empty_packets(), {}, []
    present, _ = _present_linktypes(recs)
    unsupported = [lt for lt in present if lt not in SUPPORTED_LINKTYPES]
    if len(unsupported) == len(present):
        raise UnknownLinkType(_unknown_linktype_message(path, unsupported))
    notes = _Notes()
    if n_rec <= DECODE_CHUNK_RECORDS:
        packets, skipped = _decode(path, buf, recs, notes)
        return packets, skipped, notes.lines()
    table = _columns(n_rec, PACKET_DTYPES)
    rows = 0
    skipped: dict[str, int] = {}
    for lo in range(0, n_rec, DECODE_CHUNK_RECORDS):
        part, part_skipped = _decode(path, buf, recs.rows(lo, lo + DECODE_CHUNK_RECORDS), notes)
        m = part["frame"].size
        for name, col in table.items():
            col[rows:rows + m] = part[name]
        rows += m
        for why, count in part_skipped.items():
            skipped[why] = skipped.get(why, 0) + count
    # the tail of each column beyond the TCP rows was never written (nor faulted in)
    return {name: col[:rows] for name, col in table.items()}, skipped, notes.lines()


def _decode(path: str, buf: np.ndarray, recs: _Records, notes: _Notes):
    """Link layer, IP, TCP for every record; returns the table and skip counts (and adds
    to ``notes``). The caller checked that some link type is decoded here."""
    n_rec = recs.data_off.size
    why = np.zeros(n_rec, dtype=np.int8)  # SKIP_REASONS code per record; 0 = a TCP row
    data_off, caplen = recs.data_off, recs.caplen

    # --- link layer: offset of the IP header in the frame, the family it announces
    present, lt_of = _present_linktypes(recs)
    several = lt_of is not None
    # One gather of the first bytes of every frame: the link, IP and TCP headers.
    frames = _FrameBytes(buf, data_off, _windows(buf, data_off, _frame_head_bytes(
        [lt for lt in present if lt in SUPPORTED_LINKTYPES] or [LINKTYPE_RAW])))
    pkttype = np.full(n_rec, -1, np.int8)
    if several:
        l3_rel = np.zeros(n_rec, np.int32)
        want = np.zeros(n_rec, np.uint8)
    for lt in present:
        sel = np.flatnonzero(lt_of == lt) if lt_of is not None else None
        if lt not in SUPPORTED_LINKTYPES and sel is not None:  # another one is supported
            why[sel] = _WHY["unsupported_linktype"]
            notes.add((0, lt), f"{{n}} packets on interfaces with link type {lt} skipped: "
                      "that link type is not decoded here", sel.size)
            continue
        rel, fam, ptype, code = _link_layer(frames, sel, lt, _take(caplen, sel))
        if several:
            l3_rel[sel], want[sel] = rel, fam
        else:
            l3_rel, want = rel, fam
        if ptype is not None:
            pkttype[slice(None) if sel is None else sel] = ptype
        if code is not None:
            why[slice(None) if sel is None else sel] = code

    # --- IP: a 20-byte window per packet; IPv6 rows read 20 more
    ip = _subset(why == 0)
    off_ip = _take(data_off, ip)
    cap_ip = _take(caplen, ip)
    l3r = _take(l3_rel, ip)
    want_ip = _take(want, ip)
    h = frames.window(ip, l3r, IPV4_MIN_HEADER_BYTES)
    m = h.shape[0]
    avail = cap_ip - l3r
    version = h[:, IPV4_AT["version_ihl"]] >> 4  # the same nibble in IPv6
    if np.ndim(want_ip) == 0 and want_ip:
        wrong = version != want_ip
    else:
        wrong = (version != 4) & (version != 6)
        if np.ndim(want_ip):
            wrong |= (want_ip != 0) & (version != want_ip)
    code = np.zeros(m, np.int8)
    code[wrong] = _WHY["bad_ip_header"]
    code[avail < 1] = _WHY["ip_header_cut"]
    # Every row is read as IPv4 (cheaper than splitting the IPv4 rows off first); the
    # IPv6 rows, usually fewer, are then read again and overwrite what that gave.
    is4 = (code == 0) & (version == 4)
    c4, l4r, seg_len = _ipv4(h, avail, _take(recs.origlen, ip), l3r, is4, notes)
    code = np.where(is4, c4, code)
    # IPv4-mapped (RFC 4291 §2.5.5.2): high half 0, low half 0000ffff:<address>
    addr = {
        "saddr_hi": np.zeros(m, np.uint64),
        "saddr_lo": _field(h, IPV4_AT["src"], 4) | V4_MAPPED_LO_PREFIX,
        "daddr_hi": np.zeros(m, np.uint64),
        "daddr_lo": _field(h, IPV4_AT["dst"], 4) | V4_MAPPED_LO_PREFIX,
    }
    is6 = (code == 0) & (version == 6)
    if is6.any():
        s6 = np.flatnonzero(is6)
        start6 = _take(off_ip, s6) + _take(l3r, s6)
        h6 = frames.window(_compose(ip, s6), _take(l3r, s6), IPV6_HEADER_BYTES)
        code[s6], l4r[s6], seg_len[s6] = _ipv6(
            buf, h6, avail[s6], recs.origlen[_compose(ip, s6)], _take(l3r, s6), start6,
            _take(off_ip, s6) + cap_ip[s6], notes)
        for name, col in (("saddr_hi", IPV6_AT["src"]), ("saddr_lo", IPV6_AT["src"] + 8),
                          ("daddr_hi", IPV6_AT["dst"]), ("daddr_lo", IPV6_AT["dst"] + 8)):
            addr[name][s6] = _field(h6, col, 8)
    if ip is None:
        why = code
    else:
        why[ip] = code

    # --- TCP (RFC 9293 §3.1): the 20-byte header; options below
    tcp = _subset(code == 0)  # index among the IP rows
    rows = _compose(ip, tcp)  # index among the records
    tcp_rel = _take(l4r, tcp)
    tcp_at = _take(off_ip, tcp) + tcp_rel
    th = frames.window(rows, tcp_rel, TCP_MIN_HEADER_BYTES)
    tcp_avail = _take(cap_ip, tcp) - _take(l4r, tcp)
    doff_bytes = (th[:, TCP_AT["data_offset"]] >> 4).astype(np.int32) * 4
    seg = _take(seg_len, tcp)
    cut = tcp_avail < TCP_MIN_HEADER_BYTES
    bad = ~cut & ((doff_bytes < TCP_MIN_HEADER_BYTES) | (doff_bytes > seg))
    if cut.any() or bad.any():
        rec = np.arange(n_rec) if rows is None else rows
        why[rec[cut]] = _WHY["tcp_header_cut"]
        why[rec[bad]] = _WHY["bad_tcp_header"]
        keep = np.flatnonzero(~(cut | bad))
        th, tcp_at, tcp_avail, doff_bytes, seg = (
            a[keep] for a in (th, tcp_at, tcp_avail, doff_bytes, seg))
        tcp_rel = _take(tcp_rel, keep)
        tcp = _compose(tcp, keep)
        rows = _compose(ip, tcp)

    out: dict[str, np.ndarray] = {
        "frame": _take(recs.frame, rows),
        "ts_ns": _take(recs.ts_ns, rows),
        "iface": _take(recs.iface, rows),
        "pkttype": _take(pkttype, rows),
        "family": _take(version, tcp),
        **{name: _take(a, tcp) for name, a in addr.items()},
        "sport": _field(th, TCP_AT["sport"], 2),
        "dport": _field(th, TCP_AT["dport"], 2),
        "seq": _field(th, TCP_AT["seq"], 4),
        "ack": _field(th, TCP_AT["ack"], 4),
        # AE (formerly NS, RFC 3540) is the low bit of the data offset byte (RFC 9293 §3.1)
        "flags": ((th[:, TCP_AT["data_offset"]].astype(np.uint16) & 1) << 8)
        | th[:, TCP_AT["flags"]],
        "win": _field(th, TCP_AT["window"], 2),
        # from the IP length, so that a headers-only snaplen does not shrink it
        "payload_len": seg - doff_bytes,
    }
    opt_len = doff_bytes - TCP_MIN_HEADER_BYTES
    opt_avail = np.minimum(tcp_avail - TCP_MIN_HEADER_BYTES, opt_len)  # >= 0: cut ones left
    opt_rel = tcp_rel + TCP_MIN_HEADER_BYTES
    opts, malformed = _tcp_options(
        buf, tcp_at + TCP_MIN_HEADER_BYTES, opt_len, opt_avail,
        lambda idx: frames.window(_compose(rows, idx), _take(opt_rel, idx),
                                  TCP_FAST_OPTION_BYTES))
    out.update(opts)
    out["opts_cut"] = opt_avail < opt_len
    notes.add((5,), "{n} TCP segments have malformed options: each was read up to the bad "
              "option", malformed)

    packets = {name: np.ascontiguousarray(out[name], dtype=dt)
               for name, dt in PACKET_DTYPES.items()}
    counts = np.bincount(why[why != 0], minlength=len(SKIP_REASONS))
    skipped = {SKIP_REASONS[c]: int(counts[c]) for c in range(1, len(SKIP_REASONS))
               if counts[c]}
    return packets, skipped


def _link_layer(frames: _FrameBytes, sel, lt, caplen):
    """Offset of the IP header in the frame, the family the link layer announces (0: read
    the IP version), pkttype, skip code; each an array over the records ``sel`` (None:
    all), a scalar holding for all of them, or None."""
    if lt in RAW_LINKTYPES:
        return 0, 0, None, None
    if lt in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0, (4 if lt == LINKTYPE_IPV4 else 6), None, None
    pkttype = None
    if lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
        af = frames.field(sel, 0, 4)
        if lt == LINKTYPE_NULL:
            # DLT_NULL's AF_ value is in the capturing host's byte order: a value with
            # bits in its high half was written by the other endianness (packet-null.c)
            swapped = af.byteswap()
            af = np.where(swapped <= 0xFFFF, swapped, af)
        hdr_len = 4
        fam = np.where(af == AF_INET, 4, np.where(_is_any(af, AF_INET6_VALUES), 6, 0))
        unsupported = None
    else:
        fixed_len, ethertype_at, pkttype_at = COOKED_LAYOUT[lt]
        ethertype = frames.field(sel, ethertype_at, 2)
        hdr_len = fixed_len
        if lt == LINKTYPE_LINUX_SLL:
            pkttype = np.minimum(frames.field(sel, pkttype_at, 2), 127).astype(np.int8)
        elif lt == LINKTYPE_LINUX_SLL2:
            pkttype = np.minimum(frames.field(sel, pkttype_at, 1), 127).astype(np.int8)
        if (ethertype == ETHERTYPE_IPV4).all():  # the usual capture: untagged IPv4 only
            short = caplen < hdr_len
            code = np.where(short, np.int8(_WHY["link_header_cut"]), np.int8(0))
            return hdr_len, np.uint8(4), pkttype, code if short.any() else None
        # VLAN tags (IEEE 802.1Q §9.5): TPID, TCI, then the next EtherType; QinQ stacks
        # an 802.1ad S-tag over a C-tag
        tagged = _is_any(ethertype, VLAN_TPIDS)
        if tagged.any():
            hdr_len = np.full(ethertype.size, fixed_len, np.int32)
            for _ in range(VLAN_TAGS_MAX):
                t = np.flatnonzero(tagged)
                if t.size == 0:
                    break
                ethertype[t] = frames.field(_compose(sel, t), hdr_len[t] + 2, 2)
                hdr_len[t] += 4
                tagged[t] = _is_any(ethertype[t], VLAN_TPIDS)
        fam = np.where(ethertype == ETHERTYPE_IPV4, 4,
                       np.where(ethertype == ETHERTYPE_IPV6, 6, 0))
        unsupported = _is_any(ethertype, ETHERTYPES_UNSUPPORTED + VLAN_TPIDS)
    code = np.where(fam == 0, np.int8(_WHY["non_tcp"]), np.int8(0))
    if unsupported is not None:
        code[unsupported] = _WHY["unsupported_encapsulation"]
    code[caplen < hdr_len] = _WHY["link_header_cut"]
    return hdr_len, fam.astype(np.uint8), pkttype, code


def _ipv4(h, avail, origlen, l3_rel, is4, notes):
    """IPv4 (RFC 791) from a 20-byte window per packet, for the rows ``is4``. Returns
    (skip code, offset of the TCP header in the frame, TCP segment length: header +
    payload), each an array over all rows."""
    ihl_bytes = (h[:, IPV4_AT["version_ihl"]] & 0x0F).astype(np.int32) * 4
    total = _field(h, IPV4_AT["total_length"], 2).astype(np.int64)
    frag = _field(h, IPV4_AT["flags_fragment"], 2)  # RF DF MF, then the offset
    # Total length 0 is what a TSO super-frame captured before segmentation can show
    # (Wireshark: "may be caused by TSO"): the frame's own length stands in for it.
    tso = (total == 0) & is4
    n_tso = int(np.count_nonzero(tso))
    if n_tso:
        total = np.where(tso, origlen.astype(np.int64) - l3_rel, total)
    code = np.select(
        [avail < IPV4_MIN_HEADER_BYTES,
         (ihl_bytes < IPV4_MIN_HEADER_BYTES) | (total < ihl_bytes),
         h[:, IPV4_AT["protocol"]] != IPPROTO_TCP,
         (frag & 0x1FFF) != 0],  # a later fragment: the TCP header is in the first one
        [_WHY["ip_header_cut"], _WHY["bad_ip_header"], _WHY["non_tcp"], _WHY["ip_fragment"]],
        0,
    ).astype(np.int8)
    ok = (code == 0) & is4
    first_frag = int(np.count_nonzero(ok & ((frag & 0x2000) != 0)))  # MF set, offset 0
    notes.add((1,), "{n} TCP segments are first IPv4 fragments: kept, with a payload_len "
              "counting that fragment only", first_frag)
    if n_tso:
        notes.add((2,), "{n} IPv4 packets have total length 0 (TSO): their length was "
                  "taken from the frame", int(np.count_nonzero(ok & tso)))
    return code, l3_rel + ihl_bytes, total - ihl_bytes


def _ipv6(buf, h, avail, origlen, l3_rel, start, cap_end, notes):
    """IPv6 (RFC 8200): payload length, then the extension-header chain up to TCP.
    Returns (skip code, offset of the TCP header in the frame, TCP segment length)."""
    m = h.shape[0]
    code = np.zeros(m, np.int8)
    code[avail < IPV6_HEADER_BYTES] = _WHY["ip_header_cut"]
    plen = _field(h, IPV6_AT["payload_length"], 2).astype(np.int64)
    nh = h[:, IPV6_AT["next_header"]].astype(np.int64)
    cur = start + IPV6_HEADER_BYTES  # absolute
    ext_bytes = np.zeros(m, np.int64)
    first_frag = np.zeros(m, bool)
    chain = IPV6_EXT_8OCTET + (IPV6_FRAGMENT, IPV6_AH)
    for _ in range(IPV6_EXT_MAX):
        act = np.flatnonzero((code == 0) & np.isin(nh, chain))
        if act.size == 0:
            break
        cut = cur[act] + 8 > cap_end[act]
        code[act[cut]] = _WHY["ip_header_cut"]
        act = act[~cut]
        e = _windows(buf, cur[act], 8)
        kind = nh[act]
        nxt = e[:, IPV6_EXT_AT["next_header"]].astype(np.int64)
        length = e[:, IPV6_EXT_AT["length"]].astype(np.int64)
        ext_len = np.select([kind == IPV6_FRAGMENT, kind == IPV6_AH],
                            [8, (length + 2) * 4], (length + 1) * 8)
        is_frag = kind == IPV6_FRAGMENT
        frag = _field(e, IPV6_EXT_AT["fragment"], 2)
        later = is_frag & ((frag >> 3) != 0)
        # a later fragment has no TCP header; a later fragment of another protocol is
        # simply not TCP
        code[act[later]] = np.where(nxt[later] == IPPROTO_TCP, _WHY["ip_fragment"],
                                    _WHY["non_tcp"])
        first_frag[act[is_frag & ~later & ((frag & 1) != 0)]] = True  # M set
        nh[act] = nxt
        cur[act] += ext_len
        ext_bytes[act] += ext_len
    code[(code == 0) & np.isin(nh, chain)] = _WHY["bad_ip_header"]  # absurdly long chain
    code[(code == 0) & (nh != IPPROTO_TCP)] = _WHY["non_tcp"]
    # Payload length 0 is a jumbogram (RFC 2675) or a GSO/BIG TCP super-frame: the
    # frame's own length stands in for it, as for IPv4 TSO.
    jumbo = plen == 0
    plen = np.where(jumbo, origlen.astype(np.int64) - l3_rel - IPV6_HEADER_BYTES, plen)
    code[(code == 0) & (plen < ext_bytes)] = _WHY["bad_ip_header"]
    ok = code == 0
    n_first = int(np.count_nonzero(ok & first_frag))
    notes.add((3,), "{n} TCP segments are first IPv6 fragments: kept, with a payload_len "
              "counting that fragment only", n_first)
    n_jumbo = int(np.count_nonzero(ok & jumbo))
    if n_jumbo:
        notes.add((4,), "{n} IPv6 packets have payload length 0 (jumbogram or GSO): "
                  "their length was taken from the frame", n_jumbo)
    return code, l3_rel + IPV6_HEADER_BYTES + ext_bytes, plen - ext_bytes


# The option layout of nearly every segment of a Linux connection: NOP, NOP, timestamps
# (RFC 7323 Appendix A). It is read for all segments at once; the general loop below then
# only sees what follows it (SACK blocks) and segments laid out otherwise (SYNs).
NOP_NOP_TS = (TCPOPT_NOP << 24) | (TCPOPT_NOP << 16) | (TCPOPT_TIMESTAMP << 8) | 10


def _tcp_options(buf, opt_at, opt_len, opt_avail, fast_window):
    """Parse the options of every segment at once, one option per step for all of them.

    ``opt_at`` is the absolute offset of each segment's options, ``opt_len`` their length
    from the data offset, ``opt_avail`` how many of those bytes were captured;
    ``fast_window(idx)`` gives the first TCP_FAST_OPTION_BYTES of the segments ``idx``
    (None: all), from the frame heads.
    Follows Linux tcp_parse_options(): EOL ends the list, NOP is one byte, any other kind
    has a length byte; a length < 2 or one running past the data offset ends parsing (the
    segment counts as malformed); a known kind with the wrong length is ignored. An option
    cut by the snaplen ends parsing too (``opts_cut`` says so).
    """
    m = opt_len.size
    out = {
        "opt_mss": np.zeros(m, np.uint16),
        "opt_wscale": np.full(m, -1, np.int8),
        "opt_sackok": np.zeros(m, bool),
        "opt_ts": np.zeros(m, bool),
        "tsval": np.zeros(m, np.uint32),
        "tsecr": np.zeros(m, np.uint32),
        "sack_n": np.zeros(m, np.uint8),
    }
    for b in range(SACK_BLOCKS_MAX):
        out[f"sack_l{b}"] = np.zeros(m, np.uint32)
        out[f"sack_r{b}"] = np.zeros(m, np.uint32)
    malformed = np.zeros(m, bool)
    pos = np.zeros(m, np.int32)  # offset within the options reached so far

    head = _subset(opt_avail >= TCP_FAST_OPTION_BYTES)
    if head is None:
        # every segment has room for them: masks, no index arrays
        w = fast_window(None)
        fast = _field(w, 0, 4) == NOP_NOP_TS
        out["opt_ts"] = fast
        out["tsval"] = np.where(fast, _field(w, 4, 4), 0).astype(np.uint32)
        out["tsecr"] = np.where(fast, _field(w, 8, 4), 0).astype(np.uint32)
        pos = np.where(fast, np.int32(TCP_FAST_OPTION_BYTES), np.int32(0))
    elif head.size:
        w = fast_window(head)
        fast = _field(w, 0, 4) == NOP_NOP_TS
        f = _subset(fast)
        rows = _compose(head, f)
        sl = slice(None) if rows is None else rows
        out["opt_ts"][sl] = True
        wf = _take(w, f)
        out["tsval"][sl] = _field(wf, 4, 4)
        out["tsecr"][sl] = _field(wf, 8, 4)
        pos[sl] = TCP_FAST_OPTION_BYTES
    act = np.flatnonzero(pos < opt_avail)  # segments with options still to parse
    pos = pos[act]
    for _ in range(TCP_MAX_OPTION_BYTES):
        avail = opt_avail[act]
        inside = pos < avail
        if not inside.all():
            act, pos, avail = act[inside], pos[inside], avail[inside]
        if act.size == 0:
            break
        at = opt_at[act] + pos
        kind = buf[at]
        nop = kind == TCPOPT_NOP
        has_len = (kind != TCPOPT_EOL) & ~nop
        olen = opt_len[act]
        len_seen = has_len & (pos + 1 < avail)
        length = np.where(len_seen, buf[np.where(len_seen, at + 1, at)], 1).astype(np.int32)
        # past the data offset: malformed; past the snaplen only: cut, stop quietly
        bad = (len_seen & ((length < 2) | (pos + length > olen))) | (
            has_len & (pos + 1 >= olen))
        malformed[act[bad]] = True
        fits = len_seen & ~bad & (pos + length <= avail)
        for k, k_len in ((TCPOPT_MSS, 4), (TCPOPT_WSCALE, 3), (TCPOPT_SACK_PERM, 2),
                         (TCPOPT_TIMESTAMP, 10)):
            hit = fits & (kind == k) & (length == k_len)
            if not hit.any():
                continue
            rows, a = act[hit], at[hit]
            if k == TCPOPT_MSS:
                out["opt_mss"][rows] = _be(buf, a + 2, 2)
            elif k == TCPOPT_WSCALE:
                # the shift as sent (RFC 7323 caps its use at 14; int8 holds up to 127)
                out["opt_wscale"][rows] = np.minimum(buf[a + 2], 127).astype(np.int8)
            elif k == TCPOPT_SACK_PERM:
                out["opt_sackok"][rows] = True
            else:
                out["opt_ts"][rows] = True
                out["tsval"][rows] = _be(buf, a + 2, 4)
                out["tsecr"][rows] = _be(buf, a + 6, 4)
        # SACK: 2 + 8n bytes (RFC 2018 §3); 40 option bytes leave room for 4 blocks
        sack = fits & (kind == TCPOPT_SACK) & (length >= 10) & ((length - 2) % 8 == 0)
        if sack.any():
            rows, a = act[sack], at[sack]
            nblocks = np.minimum((length[sack] - 2) // 8, SACK_BLOCKS_MAX)
            out["sack_n"][rows] = nblocks
            edges = _windows(buf, a + 2, 8 * SACK_BLOCKS_MAX).view(">u4")
            for b in range(SACK_BLOCKS_MAX):
                has = nblocks > b
                for side, col in (("l", 2 * b), ("r", 2 * b + 1)):
                    # a later SACK option in the same segment replaces an earlier one
                    out[f"sack_{side}{b}"][rows] = np.where(has, edges[:, col], 0)
        go = nop | fits
        act = act[go]
        pos = pos[go] + length[go]
    return out, int(np.count_nonzero(malformed))
