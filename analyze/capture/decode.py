"""Decoding: link layer -> IP -> TCP, vectorised over all the records of a walk.

Header layouts are data (byte offsets by field name) and cite their specs; link types:
https://www.tcpdump.org/linktypes.html
"""

from __future__ import annotations

import numpy as np

from retranscope.analyze.capture.frames import SKIP_REASONS, WHY, FrameBytes
from retranscope.analyze.capture.gather import (
    be_at,
    be_field,
    compose,
    is_any,
    subset,
    take,
    windows,
)
from retranscope.analyze.capture.link import (
    ENCAP_BIT,
    ENCAP_KINDS,
    IPPROTO_AH,
    IPPROTO_TCP,
    LINK_HEAD_BYTES,
    LINKTYPE_RAW,
    SUPPORTED_LINKTYPES,
    TUNNEL_PROTOS,
    TUNNELS_NESTED_MAX,
    U_DEPTH,
    Layers,
    link_layer,
    tunnel_inner,
    undecoded_name,
)
from retranscope.analyze.capture.records import Records
from retranscope.schemas.packets import PACKET_DTYPES, V4_MAPPED_LO_PREFIX, empty_packets

# ---------------------------------------------------------------------------------------
# IP and TCP
# ---------------------------------------------------------------------------------------
IPV4_MIN_HEADER_BYTES = 20  # RFC 791 §3.1: IHL 5..15 words
IPV4_AT = {
    "version_ihl": 0,
    "total_length": 2,
    "flags_fragment": 6,
    "identification": 4,
    "ttl": 8,
    "protocol": 9,
    "src": 12,
    "dst": 16,
}
IPV6_HEADER_BYTES = 40  # RFC 8200 §3
IPV6_AT = {"version": 0, "payload_length": 4, "next_header": 6, "hop_limit": 7, "src": 8, "dst": 24}
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
TCP_AT = {"sport": 0, "dport": 2, "seq": 4, "ack": 8, "data_offset": 12, "flags": 13, "window": 14}
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

# Options read for every segment at once: NOP, NOP, timestamps (see _tcp_options)
TCP_FAST_OPTION_BYTES = 12


def _frame_head_bytes(linktypes: list[int]) -> int:
    """How much of each frame to gather up front: the link header and a 20-byte IPv4 and
    TCP header with the usual 12 option bytes. Longer headers (VLAN tags, IPv6, IP
    options, tunnels) read what lies beyond from the block."""
    link = max(LINK_HEAD_BYTES.get(lt, 0) for lt in linktypes)
    return link + IPV4_MIN_HEADER_BYTES + TCP_MIN_HEADER_BYTES + TCP_FAST_OPTION_BYTES


# ---------------------------------------------------------------------------------------
# Decoding: link layer → IP → TCP, vectorised over all records
#
# Memory matters as much as arithmetic: on the VMs measured, a fresh page costs ~2 µs to
# fault in, so a 1.3M-row temporary of 8 bytes a row costs ~25 ms before any work is
# done. Offsets that are the same for every row stay scalars (``take`` passes them
# through), byte windows are only as wide as the fields read, and ``None`` as an index
# means "every row", so the common capture (one link type, all TCP) copies nothing.
# ---------------------------------------------------------------------------------------


def unknown_linktype_message(path: str, linktypes: list[int]) -> str:
    names = ", ".join(str(lt) for lt in linktypes)
    supported = ", ".join(f"{k} {v}" for k, v in sorted(SUPPORTED_LINKTYPES.items()))
    return (
        f"{path}: link type {names} is not decoded here (supported: {supported}); "
        "capture with tcpdump -i any or on an Ethernet interface"
    )


class Notes:
    """Notes about the packets, counted: the chunks of a capture add to the same line.
    Also tallies by kind (``tally``): TCP found inside encapsulations, and packets in
    layers not decoded here; the reader puts those into the capture's metadata."""

    def __init__(self) -> None:
        self.counts: dict[tuple, list] = {}
        self.tallies: dict[tuple[str, str], int] = {}
        # ICMP too-big messages quoting a TCP segment: tuples of TOO_BIG_FIELDS
        self.too_big: list[tuple] = []

    def add(self, key: tuple, template: str, n: int) -> None:
        """``key`` orders the lines (the decoder's order: link, IPv4, IPv6, TCP);
        ``template`` has {n} where the count goes."""
        if n:
            self.counts.setdefault(key, [template, 0])[1] += int(n)

    def tally(self, group: str, kind: str, n: int) -> None:
        if n:
            self.tallies[(group, kind)] = self.tallies.get((group, kind), 0) + int(n)

    def merge(self, other: Notes) -> None:
        for key, (template, n) in other.counts.items():
            self.add(key, template, n)
        for (group, kind), n in other.tallies.items():
            self.tally(group, kind, n)
        self.too_big += other.too_big

    def lines(self) -> list[str]:
        return [t.replace("{n}", str(n)) for _, (t, n) in sorted(self.counts.items())]


def encapsulation_counts(notes: Notes) -> tuple[dict[str, int], dict[str, int]]:
    """({kind: TCP packets decoded inside it}, {kind: packets not decoded})."""
    enc = {k: n for (g, k), n in notes.tallies.items() if g == "encapsulated"}
    und = {k: n for (g, k), n in notes.tallies.items() if g == "undecoded"}
    return enc, und


# Records decoded at a time: the byte windows and masks of a chunk take a few MB, reused
# from chunk to chunk and warm in the cache. Decoding all records at once took hundreds of
# MB of temporaries, and fresh memory is not free (~0.6 ms a MB to fault in on the VMs
# measured, more than the decoding arithmetic on it).
DECODE_CHUNK_RECORDS = 1 << 16


def columns(n: int, dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """Empty columns of ``n`` rows, carved out of one allocation: the kernel maps one big
    block with huge pages (numpy asks for them), where 32 separate ~10 MB arrays were
    faulted in 4 KB at a time (~40k page faults for 1.3M rows)."""
    starts, size = [], 0
    for dt in dtypes.values():
        size = -(-size // 64) * 64  # each column on its own cache line
        starts.append(size)
        size += n * dt.itemsize
    block = np.empty(size, dtype=np.uint8)
    return {
        name: block[at : at + n * dt.itemsize].view(dt)
        for (name, dt), at in zip(dtypes.items(), starts)
    }


def _present_linktypes(recs: Records) -> tuple[list[int], np.ndarray | None]:
    """Link types that records use (sorted), and the link type of every record when the
    interfaces have several (else None)."""
    linktypes = [i.linktype for i in recs.ifaces]
    if len(set(linktypes)) > 1:
        lt_of = np.array(linktypes, np.int64)[recs.iface]
        return [int(lt) for lt in np.unique(lt_of)], lt_of
    return linktypes[:1], None


def _unsupported_note(lt: int) -> str:
    return (
        f"{{n}} packets on interfaces with link type {lt} skipped: "
        "that link type is not decoded here"
    )


def supported_records(recs: Records) -> int:
    """How many of the records are on an interface whose link type is decoded here."""
    linktypes = [i.linktype for i in recs.ifaces]
    if len(set(linktypes)) <= 1:
        return len(recs) if linktypes and linktypes[0] in SUPPORTED_LINKTYPES else 0
    ok = np.array([lt in SUPPORTED_LINKTYPES for lt in linktypes], bool)
    return int(np.count_nonzero(ok[recs.iface]))


def decode(buf: np.ndarray, recs: Records, notes: Notes) -> tuple[dict[str, np.ndarray], dict]:
    """The packet table of the TCP segments among ``recs`` (whose ``data_off`` index into
    ``buf``), and why the other records were skipped ({reason: records}); notes about the
    packets are added to ``notes``. Decode at most DECODE_CHUNK_RECORDS at a time."""
    if len(recs) == 0:
        return empty_packets(), {}
    present, lt_of = _present_linktypes(recs)
    if all(lt not in SUPPORTED_LINKTYPES for lt in present):
        # every record is on an interface of a link type not decoded here: the reader
        # refuses the file if that holds for all of it
        for lt in present:
            n = len(recs) if lt_of is None else int(np.count_nonzero(lt_of == lt))
            notes.add((0, lt), _unsupported_note(lt), n)
        return empty_packets(), {"unsupported_linktype": len(recs)}
    return _decode(buf, recs, notes)


def _decode(buf: np.ndarray, recs: Records, notes: Notes):
    """Link layer, encapsulations, IP, TCP for every record; returns the table and skip
    counts (and adds to ``notes``). The caller checked that some link type is decoded."""
    n_rec = recs.data_off.size
    why = np.zeros(n_rec, dtype=np.int8)  # SKIP_REASONS code per record; 0 = a TCP row
    data_off = recs.data_off
    present, lt_of = _present_linktypes(recs)
    # One gather of the first bytes of every frame: the link, IP and TCP headers.
    head = _frame_head_bytes([lt for lt in present if lt in SUPPORTED_LINKTYPES] or [LINKTYPE_RAW])
    frames = FrameBytes(buf, data_off, windows(buf, data_off, head))
    pkttype, l3_rel, want, link = _links(frames, recs, present, lt_of, why, notes)

    # --- IP, then the tunnels it may be (their inner IP replaces it)
    ip = subset(why == 0)
    ipl = _ip_stage(frames, buf, recs, ip, take(l3_rel, ip), take(want, ip), notes)
    tunnels = _tunnels(frames, buf, recs, ip, ipl, notes)
    _too_big(frames, recs, ip, ipl, notes)
    code, version, off_ip, cap_ip = ipl.code, ipl.version, ipl.off_ip, ipl.cap_ip
    if ip is None:
        why = code
    else:
        why[ip] = code

    # --- TCP (RFC 9293 §3.1): the 20-byte header; options below
    tcp = subset(code == 0)  # index among the IP rows
    rows = compose(ip, tcp)  # index among the records
    tcp_rel = take(ipl.l4r, tcp)
    tcp_at = take(off_ip, tcp) + tcp_rel
    th = frames.window(rows, tcp_rel, TCP_MIN_HEADER_BYTES)
    tcp_avail = take(cap_ip, tcp) - tcp_rel
    doff_bytes = (th[:, TCP_AT["data_offset"]] >> 4).astype(np.int32) * 4
    seg = take(ipl.seg_len, tcp)
    cut = tcp_avail < TCP_MIN_HEADER_BYTES
    bad = ~cut & ((doff_bytes < TCP_MIN_HEADER_BYTES) | (doff_bytes > seg))
    if cut.any() or bad.any():
        rec = np.arange(n_rec) if rows is None else rows
        why[rec[cut]] = WHY["tcp_header_cut"]
        why[rec[bad]] = WHY["bad_tcp_header"]
        keep = np.flatnonzero(~(cut | bad))
        th, tcp_at, tcp_avail, doff_bytes, seg = (
            a[keep] for a in (th, tcp_at, tcp_avail, doff_bytes, seg)
        )
        tcp_rel = take(tcp_rel, keep)
        tcp = compose(tcp, keep)
        rows = compose(ip, tcp)

    out: dict[str, np.ndarray] = {
        "frame": take(recs.frame, rows),
        "ts_ns": take(recs.ts_ns, rows),
        "iface": take(recs.iface, rows),
        "pkttype": take(pkttype, rows),
        "family": take(version, tcp),
        **{name: take(a, tcp) for name, a in ipl.addr.items()},
        "sport": be_field(th, TCP_AT["sport"], 2),
        "dport": be_field(th, TCP_AT["dport"], 2),
        "seq": be_field(th, TCP_AT["seq"], 4),
        "ack": be_field(th, TCP_AT["ack"], 4),
        # AE (formerly NS, RFC 3540) is the low bit of the data offset byte (RFC 9293 §3.1)
        "flags": ((th[:, TCP_AT["data_offset"]].astype(np.uint16) & 1) << 8)
        | th[:, TCP_AT["flags"]],
        "win": be_field(th, TCP_AT["window"], 2),
        # from the IP length, so that a headers-only snaplen does not shrink it
        "payload_len": seg - doff_bytes,
        "ip_id": take(ipl.ip_id, tcp),
        "ttl": take(ipl.ttl, tcp),
    }
    opt_len = doff_bytes - TCP_MIN_HEADER_BYTES
    opt_avail = np.minimum(tcp_avail - TCP_MIN_HEADER_BYTES, opt_len)  # >= 0: cut ones left
    opt_rel = tcp_rel + TCP_MIN_HEADER_BYTES
    opts, malformed = _tcp_options(
        buf,
        tcp_at + TCP_MIN_HEADER_BYTES,
        opt_len,
        opt_avail,
        lambda idx: frames.window(compose(rows, idx), take(opt_rel, idx), TCP_FAST_OPTION_BYTES),
    )
    out.update(opts)
    out["opts_cut"] = opt_avail < opt_len
    notes.add(
        (5,),
        "{n} TCP segments have malformed options: each was read up to the bad option",
        malformed,
    )
    _tally_layers(notes, n_rec, why, ip, rows, tcp, link, tunnels)
    packets = {
        name: np.ascontiguousarray(out[name], dtype=dt) for name, dt in PACKET_DTYPES.items()
    }
    counts = np.bincount(why[why != 0], minlength=len(SKIP_REASONS))
    skipped = {SKIP_REASONS[c]: int(counts[c]) for c in range(1, len(SKIP_REASONS)) if counts[c]}
    return packets, skipped


def _links(frames: FrameBytes, recs: Records, present, lt_of, why, notes):
    """The link layer of every record: (pkttype, offset of the IP header, family the link
    layer announces (0: read the IP version), [(records, Layers)] of the records that
    went through encapsulations at this level). Sets ``why`` for the records without
    an IP header."""
    n_rec = len(recs)
    pkttype = np.full(n_rec, -1, np.int8)
    several = lt_of is not None
    l3_rel: np.ndarray | int = np.zeros(n_rec, np.int64) if several else 0
    want: np.ndarray | int = np.zeros(n_rec, np.uint8) if several else 0
    link = []
    for lt in present:
        sel = np.flatnonzero(lt_of == lt) if lt_of is not None else None
        if lt not in SUPPORTED_LINKTYPES and sel is not None:  # another one is supported
            why[sel] = WHY["unsupported_linktype"]
            notes.add((0, lt), _unsupported_note(lt), sel.size)
            continue
        rel, fam, ptype, code, layers = link_layer(frames, sel, lt, take(recs.caplen, sel))
        if several:
            l3_rel[sel], want[sel] = rel, fam  # type: ignore[index]
        else:
            l3_rel, want = rel, fam
        if ptype is not None:
            pkttype[slice(None) if sel is None else sel] = ptype
        if code is not None:
            why[slice(None) if sel is None else sel] = code
        if layers is not None:
            rest, chain = layers
            if chain.encap.any() or chain.undecoded.any():
                link.append((compose(sel, rest), chain))
    return pkttype, l3_rel, want, link


class _IPStage:
    """The IP layer of some rows: skip code, the protocol it carries and where (``l4r``,
    bytes into the frame), that payload's length, the IP version and addresses."""

    def __init__(self, code, proto, l4r, seg_len, version, addr, off_ip, cap_ip, ip_id, ttl):
        self.code, self.proto, self.l4r, self.seg_len = code, proto, l4r, seg_len
        self.version, self.addr, self.off_ip, self.cap_ip = version, addr, off_ip, cap_ip
        self.ip_id, self.ttl = ip_id, ttl

    def assign(self, at: np.ndarray, other: _IPStage) -> None:
        """Rows ``at`` take the values of ``other`` (the inner packet of a tunnel)."""
        for name in ("code", "proto", "l4r", "seg_len", "version", "ip_id", "ttl"):
            getattr(self, name)[at] = getattr(other, name)
        for name, col in self.addr.items():
            col[at] = other.addr[name]


def _ip_stage(frames: FrameBytes, buf, recs: Records, ip, l3r, want_ip, notes) -> _IPStage:
    """IPv4 or IPv6 at ``l3r`` into the frames of the records ``ip`` (None: all): a
    20-byte window per packet; IPv6 rows read 20 more."""
    off_ip = take(recs.data_off, ip)
    cap_ip = take(recs.caplen, ip)
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
    code[wrong] = WHY["bad_ip_header"]
    code[avail < 1] = WHY["ip_header_cut"]
    # Every row is read as IPv4 (cheaper than splitting the IPv4 rows off first); the
    # IPv6 rows, usually fewer, are then read again and overwrite what that gave.
    is4 = (code == 0) & (version == 4)
    c4, l4r, seg_len = _ipv4(h, avail, take(recs.origlen, ip), l3r, is4, notes)
    code = np.where(is4, c4, code)
    proto = h[:, IPV4_AT["protocol"]].astype(np.int64)
    ip_id = be_field(h, IPV4_AT["identification"], 2).astype(np.uint16)
    ttl = h[:, IPV4_AT["ttl"]].copy()
    # IPv4-mapped (RFC 4291 §2.5.5.2): high half 0, low half 0000ffff:<address>
    addr = {
        "saddr_hi": np.zeros(m, np.uint64),
        "saddr_lo": be_field(h, IPV4_AT["src"], 4) | V4_MAPPED_LO_PREFIX,
        "daddr_hi": np.zeros(m, np.uint64),
        "daddr_lo": be_field(h, IPV4_AT["dst"], 4) | V4_MAPPED_LO_PREFIX,
    }
    is6 = (code == 0) & (version == 6)
    if is6.any():
        s6 = np.flatnonzero(is6)
        start6 = take(off_ip, s6) + take(l3r, s6)
        h6 = frames.window(compose(ip, s6), take(l3r, s6), IPV6_HEADER_BYTES)
        code[s6], l4r[s6], seg_len[s6], proto[s6] = _ipv6(
            buf,
            h6,
            avail[s6],
            recs.origlen[compose(ip, s6)],
            take(l3r, s6),
            start6,
            take(off_ip, s6) + cap_ip[s6],
            notes,
        )
        for name, col in (
            ("saddr_hi", IPV6_AT["src"]),
            ("saddr_lo", IPV6_AT["src"] + 8),
            ("daddr_hi", IPV6_AT["dst"]),
            ("daddr_lo", IPV6_AT["dst"] + 8),
        ):
            addr[name][s6] = be_field(h6, col, 8)
        ip_id[s6] = 0
        ttl[s6] = h6[:, IPV6_AT["hop_limit"]]
    return _IPStage(
        code, proto, l4r, seg_len, version.astype(np.uint8), addr, off_ip, cap_ip, ip_id, ttl
    )


def _tunnels(frames: FrameBytes, buf, recs: Records, ip, ipl: _IPStage, notes):
    """Rows whose IP packet is a tunnel (or carries AH) take their inner packet's IP
    layer, up to TUNNELS_NESTED_MAX deep. Returns the Layers over the IP rows (their
    encapsulation bits and undecoded codes), or None when no row is a tunnel."""
    layers: Layers | None = None
    for depth in range(TUNNELS_NESTED_MAX + 1):
        cand = np.flatnonzero((ipl.code == WHY["non_tcp"]) & is_any(ipl.proto, TUNNEL_PROTOS))
        if cand.size == 0:
            break
        if layers is None:
            layers = Layers(ipl.code.size)
        if depth == TUNNELS_NESTED_MAX:
            ipl.code[cand] = WHY["unsupported_encapsulation"]
            layers.undecoded[cand] = U_DEPTH << 16
            break
        ah = ipl.proto[cand] == IPPROTO_AH
        if ah.any():
            _skip_ah(frames, ip, cand[ah], ipl, layers)
        rows = cand[~ah]
        if rows.size == 0:
            continue
        found = layers.encap[rows].copy()
        layers.code[rows] = 0
        layers.fam[rows] = 0
        tunnel_inner(
            frames, ip, rows, ipl.proto[rows], ipl.l4r[rows], ipl.version[rows], ipl.cap_ip, layers
        )
        layers.encap[rows] |= found
        failed = rows[layers.code[rows] != 0]
        ipl.code[failed] = layers.code[failed]
        ipl.proto[failed] = -1  # looked at: not a tunnel decoded here
        inner = rows[layers.code[rows] == 0]
        if inner.size:
            ipl.assign(
                inner,
                _ip_stage(
                    frames,
                    buf,
                    recs,
                    compose(ip, inner),
                    layers.at[inner],
                    layers.fam[inner],
                    notes,
                ),
            )
    return layers


IPPROTO_ICMP, IPPROTO_ICMPV6 = 1, 58
ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED = 3, 4  # RFC 792; next-hop MTU in bytes 6-7 (RFC 1191)
ICMPV6_PKT_TOOBIG = 2  # RFC 4443 §3.2; MTU in bytes 4-7
ICMP_HEADER_BYTES = 8
TCP_QUOTED_BYTES = 8  # what every ICMP error quotes at least: ports and sequence number


def _too_big(frames: FrameBytes, recs: Records, ip, ipl: _IPStage, notes: Notes) -> None:
    """ICMP "fragmentation needed" (IPv4) and ICMPv6 "packet too big" messages that quote
    a TCP segment: into ``notes.too_big`` (TOO_BIG_FIELDS), the quoted segment's flow
    (its sender is the quoted source), sequence number and the MTU the message reports.
    The rows stay skipped as not TCP."""
    cand = np.flatnonzero(
        (ipl.code == WHY["non_tcp"])
        & (
            ((ipl.version == 4) & (ipl.proto == IPPROTO_ICMP))
            | ((ipl.version == 6) & (ipl.proto == IPPROTO_ICMPV6))
        )
    )
    if cand.size == 0:
        return
    v6 = ipl.version[cand] == 6
    need = (
        ICMP_HEADER_BYTES
        + np.where(v6, IPV6_HEADER_BYTES, IPV4_MIN_HEADER_BYTES)
        + TCP_QUOTED_BYTES
    )
    rows = compose(ip, cand)
    at = ipl.l4r[cand]
    w = frames.window(rows, at, ICMP_HEADER_BYTES + IPV6_HEADER_BYTES + TCP_QUOTED_BYTES)
    avail = ipl.cap_ip[cand] - at
    typ, code = w[:, 0], w[:, 1]
    is4 = ~v6 & (typ == ICMP_DEST_UNREACH) & (code == ICMP_FRAG_NEEDED)
    is6 = v6 & (typ == ICMPV6_PKT_TOOBIG)
    q = w[:, ICMP_HEADER_BYTES:]
    ihl = (q[:, 0] & 0x0F).astype(np.int64) * 4
    quoted_tcp4 = is4 & ((q[:, 0] >> 4) == 4) & (q[:, IPV4_AT["protocol"]] == IPPROTO_TCP)
    quoted_tcp6 = is6 & ((q[:, 0] >> 4) == 6) & (q[:, IPV6_AT["next_header"]] == IPPROTO_TCP)
    ok = (quoted_tcp4 | quoted_tcp6) & (avail >= need + np.where(v6, 0, ihl - 20))
    if not ok.any():
        return
    sel = np.flatnonzero(ok)
    c_rows, c_at, c_v6 = rows[sel], at[sel], v6[sel]
    tcp_rel = c_at + ICMP_HEADER_BYTES + np.where(c_v6, IPV6_HEADER_BYTES, ihl[sel])
    t = frames.window(c_rows, tcp_rel, TCP_QUOTED_BYTES)
    qs = q[sel]
    mtu = np.where(c_v6, be_field(w[sel], 4, 4), be_field(w[sel], 6, 2).astype(np.uint32))
    s_hi = np.where(c_v6, be_field(qs, IPV6_AT["src"], 8), 0).astype(np.uint64)
    s_lo = np.where(
        c_v6,
        be_field(qs, IPV6_AT["src"] + 8, 8),
        be_field(qs, IPV4_AT["src"], 4).astype(np.uint64) | V4_MAPPED_LO_PREFIX,
    )
    d_hi = np.where(c_v6, be_field(qs, IPV6_AT["dst"], 8), 0).astype(np.uint64)
    d_lo = np.where(
        c_v6,
        be_field(qs, IPV6_AT["dst"] + 8, 8),
        be_field(qs, IPV4_AT["dst"], 4).astype(np.uint64) | V4_MAPPED_LO_PREFIX,
    )
    cols = (
        recs.frame[c_rows],
        recs.ts_ns[c_rows],
        np.where(c_v6, 6, 4),
        s_hi,
        s_lo,
        d_hi,
        d_lo,
        be_field(t, 0, 2),
        be_field(t, 2, 2),
        be_field(t, 4, 4),
        mtu,
    )
    notes.too_big += list(zip(*(c.tolist() for c in cols)))


def _skip_ah(frames: FrameBytes, ip, rows: np.ndarray, ipl: _IPStage, layers: Layers) -> None:
    """IPsec AH (RFC 4302 §2) after an IPv4 header: next header, then the header's length
    in 4-octet units minus 2. What follows it is what the packet carries."""
    cut = ipl.l4r[rows] + 8 > ipl.cap_ip[rows]
    ipl.code[rows[cut]] = WHY["ip_header_cut"]
    rows = rows[~cut]
    w = frames.window(compose(ip, rows), ipl.l4r[rows], 2)
    length = (w[:, 1].astype(np.int64) + 2) * 4
    ipl.proto[rows] = w[:, 0]
    ipl.l4r[rows] += length
    ipl.seg_len[rows] -= length
    ipl.code[rows] = np.where(w[:, 0] == IPPROTO_TCP, 0, WHY["non_tcp"])
    bad = ipl.seg_len[rows] < 0
    ipl.code[rows[bad]] = WHY["bad_ip_header"]
    layers.encap[rows] |= ENCAP_BIT["ah"]


def _tally_layers(notes: Notes, n_rec: int, why, ip, rows, tcp, link, tunnels) -> None:
    """Count the TCP rows by the encapsulations they were found in, and the records
    left undecoded by what they are (Notes.tally: the capture's metadata)."""
    if not link and tunnels is None:
        return
    encap = np.zeros(n_rec, np.uint16)
    undecoded = np.zeros(n_rec, np.int32)
    for sel, layers in link:
        encap[sel] |= layers.encap
        undecoded[sel] = np.where(layers.undecoded != 0, layers.undecoded, undecoded[sel])
    if tunnels is not None:
        at = np.arange(n_rec) if ip is None else ip
        encap[at] |= tunnels.encap
        undecoded[at] = np.where(tunnels.undecoded != 0, tunnels.undecoded, undecoded[at])
    kept = encap[np.arange(n_rec) if rows is None else rows]
    for i, kind in enumerate(ENCAP_KINDS):
        notes.tally("encapsulated", kind, int(np.count_nonzero(kept & (1 << i))))
    lost = undecoded[why == WHY["unsupported_encapsulation"]]
    for code, count in zip(*np.unique(lost[lost != 0], return_counts=True)):
        notes.tally("undecoded", undecoded_name(int(code)), int(count))


def _ipv4(h, avail, origlen, l3_rel, is4, notes):
    """IPv4 (RFC 791) from a 20-byte window per packet, for the rows ``is4``. Returns
    (skip code, offset of the TCP header in the frame, TCP segment length: header +
    payload), each an array over all rows."""
    ihl_bytes = (h[:, IPV4_AT["version_ihl"]] & 0x0F).astype(np.int32) * 4
    total = be_field(h, IPV4_AT["total_length"], 2).astype(np.int64)
    frag = be_field(h, IPV4_AT["flags_fragment"], 2)  # RF DF MF, then the offset
    # Total length 0 is what a TSO super-frame captured before segmentation can show
    # (Wireshark: "may be caused by TSO"): the frame's own length stands in for it.
    tso = (total == 0) & is4
    n_tso = int(np.count_nonzero(tso))
    if n_tso:
        total = np.where(tso, origlen.astype(np.int64) - l3_rel, total)
    code = np.select(
        [
            avail < IPV4_MIN_HEADER_BYTES,
            (ihl_bytes < IPV4_MIN_HEADER_BYTES) | (total < ihl_bytes),
            h[:, IPV4_AT["protocol"]] != IPPROTO_TCP,
            (frag & 0x1FFF) != 0,
        ],  # a later fragment: the TCP header is in the first one
        [WHY["ip_header_cut"], WHY["bad_ip_header"], WHY["non_tcp"], WHY["ip_fragment"]],
        0,
    ).astype(np.int8)
    ok = (code == 0) & is4
    first_frag = int(np.count_nonzero(ok & ((frag & 0x2000) != 0)))  # MF set, offset 0
    notes.add(
        (1,),
        "{n} TCP segments are first IPv4 fragments: kept, with a payload_len "
        "counting that fragment only",
        first_frag,
    )
    if n_tso:
        notes.add(
            (2,),
            "{n} IPv4 packets have total length 0 (TSO): their length was taken from the frame",
            int(np.count_nonzero(ok & tso)),
        )
    return code, l3_rel + ihl_bytes, total - ihl_bytes


def _ipv6(buf, h, avail, origlen, l3_rel, start, cap_end, notes):
    """IPv6 (RFC 8200): payload length, then the extension-header chain up to TCP.
    Returns (skip code, offset of what the packet carries in the frame, its length, the
    protocol it is: TCP, or the next header where the chain ended)."""
    m = h.shape[0]
    code = np.zeros(m, np.int8)
    code[avail < IPV6_HEADER_BYTES] = WHY["ip_header_cut"]
    plen = be_field(h, IPV6_AT["payload_length"], 2).astype(np.int64)
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
        code[act[cut]] = WHY["ip_header_cut"]
        act = act[~cut]
        e = windows(buf, cur[act], 8)
        kind = nh[act]
        nxt = e[:, IPV6_EXT_AT["next_header"]].astype(np.int64)
        length = e[:, IPV6_EXT_AT["length"]].astype(np.int64)
        ext_len = np.select(
            [kind == IPV6_FRAGMENT, kind == IPV6_AH], [8, (length + 2) * 4], (length + 1) * 8
        )
        is_frag = kind == IPV6_FRAGMENT
        frag = be_field(e, IPV6_EXT_AT["fragment"], 2)
        later = is_frag & ((frag >> 3) != 0)
        # a later fragment has no TCP header; a later fragment of another protocol is
        # simply not TCP
        code[act[later]] = np.where(nxt[later] == IPPROTO_TCP, WHY["ip_fragment"], WHY["non_tcp"])
        first_frag[act[is_frag & ~later & ((frag & 1) != 0)]] = True  # M set
        nh[act] = nxt
        cur[act] += ext_len
        ext_bytes[act] += ext_len
    code[(code == 0) & np.isin(nh, chain)] = WHY["bad_ip_header"]  # absurdly long chain
    code[(code == 0) & (nh != IPPROTO_TCP)] = WHY["non_tcp"]
    # Payload length 0 is a jumbogram (RFC 2675) or a GSO/BIG TCP super-frame: the
    # frame's own length stands in for it, as for IPv4 TSO.
    jumbo = plen == 0
    plen = np.where(jumbo, origlen.astype(np.int64) - l3_rel - IPV6_HEADER_BYTES, plen)
    code[(code == 0) & (plen < ext_bytes)] = WHY["bad_ip_header"]
    ok = code == 0
    n_first = int(np.count_nonzero(ok & first_frag))
    notes.add(
        (3,),
        "{n} TCP segments are first IPv6 fragments: kept, with a payload_len "
        "counting that fragment only",
        n_first,
    )
    n_jumbo = int(np.count_nonzero(ok & jumbo))
    if n_jumbo:
        notes.add(
            (4,),
            "{n} IPv6 packets have payload length 0 (jumbogram or GSO): "
            "their length was taken from the frame",
            n_jumbo,
        )
    return code, l3_rel + IPV6_HEADER_BYTES + ext_bytes, plen - ext_bytes, nh


# The option layout of nearly every segment of a Linux connection: NOP, NOP, timestamps
# (RFC 7323 Appendix A). It is read for all segments at once; the general loop below then
# only sees what follows it (SACK blocks) and segments laid out otherwise (SYNs).
NOP_NOP_TS = (TCPOPT_NOP << 24) | (TCPOPT_NOP << 16) | (TCPOPT_TIMESTAMP << 8) | 10
NOP_NOP_TS_LAYOUT = (TCPOPT_NOP << 8) | (TCPOPT_NOP << 4) | TCPOPT_TIMESTAMP  # opt_layout


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
        "opt_layout": np.zeros(m, np.uint32),
    }
    for b in range(SACK_BLOCKS_MAX):
        out[f"sack_l{b}"] = np.zeros(m, np.uint32)
        out[f"sack_r{b}"] = np.zeros(m, np.uint32)
    malformed = np.zeros(m, bool)
    pos = np.zeros(m, np.int32)  # offset within the options reached so far

    head = subset(opt_avail >= TCP_FAST_OPTION_BYTES)
    if head is None:
        # every segment has room for them: masks, no index arrays
        w = fast_window(None)
        fast = be_field(w, 0, 4) == NOP_NOP_TS
        out["opt_ts"] = fast
        out["tsval"] = np.where(fast, be_field(w, 4, 4), 0).astype(np.uint32)
        out["tsecr"] = np.where(fast, be_field(w, 8, 4), 0).astype(np.uint32)
        out["opt_layout"] = np.where(fast, np.uint32(NOP_NOP_TS_LAYOUT), np.uint32(0))
        pos = np.where(fast, np.int32(TCP_FAST_OPTION_BYTES), np.int32(0))
    elif head.size:
        w = fast_window(head)
        fast = be_field(w, 0, 4) == NOP_NOP_TS
        f = subset(fast)
        rows = compose(head, f)
        sl = slice(None) if rows is None else rows
        out["opt_ts"][sl] = True
        wf = take(w, f)
        out["tsval"][sl] = be_field(wf, 4, 4)
        out["tsecr"][sl] = be_field(wf, 8, 4)
        out["opt_layout"][sl] = NOP_NOP_TS_LAYOUT
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
        # the kinds in order, a hex digit each (the sending stack's habit: RFC 9293 leaves
        # the order free), as long as eight fit
        lay = out["opt_layout"][act]
        room = lay < (1 << 28)
        out["opt_layout"][act[room]] = (lay[room] << 4) | np.minimum(kind[room], 15)
        nop = kind == TCPOPT_NOP
        has_len = (kind != TCPOPT_EOL) & ~nop
        olen = opt_len[act]
        len_seen = has_len & (pos + 1 < avail)
        length = np.where(len_seen, buf[np.where(len_seen, at + 1, at)], 1).astype(np.int32)
        # past the data offset: malformed; past the snaplen only: cut, stop quietly
        bad = (len_seen & ((length < 2) | (pos + length > olen))) | (has_len & (pos + 1 >= olen))
        malformed[act[bad]] = True
        fits = len_seen & ~bad & (pos + length <= avail)
        for k, k_len in (
            (TCPOPT_MSS, 4),
            (TCPOPT_WSCALE, 3),
            (TCPOPT_SACK_PERM, 2),
            (TCPOPT_TIMESTAMP, 10),
        ):
            hit = fits & (kind == k) & (length == k_len)
            if not hit.any():
                continue
            rows, a = act[hit], at[hit]
            if k == TCPOPT_MSS:
                out["opt_mss"][rows] = be_at(buf, a + 2, 2)
            elif k == TCPOPT_WSCALE:
                # the shift as sent (RFC 7323 caps its use at 14; int8 holds up to 127)
                out["opt_wscale"][rows] = np.minimum(buf[a + 2], 127).astype(np.int8)
            elif k == TCPOPT_SACK_PERM:
                out["opt_sackok"][rows] = True
            else:
                out["opt_ts"][rows] = True
                out["tsval"][rows] = be_at(buf, a + 2, 4)
                out["tsecr"][rows] = be_at(buf, a + 6, 4)
        # SACK: 2 + 8n bytes (RFC 2018 §3); 40 option bytes leave room for 4 blocks
        sack = fits & (kind == TCPOPT_SACK) & (length >= 10) & ((length - 2) % 8 == 0)
        if sack.any():
            rows, a = act[sack], at[sack]
            nblocks = np.minimum((length[sack] - 2) // 8, SACK_BLOCKS_MAX)
            out["sack_n"][rows] = nblocks
            edges = windows(buf, a + 2, 8 * SACK_BLOCKS_MAX).view(">u4")
            for b in range(SACK_BLOCKS_MAX):
                has = nblocks > b
                for side, col in (("l", 2 * b), ("r", 2 * b + 1)):
                    # a later SACK option in the same segment replaces an earlier one
                    out[f"sack_{side}{b}"][rows] = np.where(has, edges[:, col], 0)
        go = nop | fits
        act = act[go]
        pos = pos[go] + length[go]
    return out, int(np.count_nonzero(malformed))
