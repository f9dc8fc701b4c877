"""Link layers and encapsulations: where, in each frame, the IP header that carries TCP is.

A frame is peeled layer by layer, all frames of a block at once: the link header (by the
interface's link type), then a chain of EtherType-announced layers (VLAN tags, PPPoE,
PPP, MPLS labels, LLC/SNAP, Ethernet inside a tunnel), down to IPv4 or IPv6. When that IP
packet is a tunnel (IP-in-IP, GRE, VXLAN, Geneve), ``tunnel_inner`` finds the inner
packet and the chain goes on from there; decode.py reads the innermost IP and TCP, so the
flow is the inner 5-tuple. Each frame records the encapsulations it went through (a bit
per kind, ENCAP_KINDS) and, when a layer that may carry TCP is not decoded here, what
that layer is (an UNDECODED code): nothing that may hold TCP is skipped unnamed.

Layouts are data, citing their specs; link types: https://www.tcpdump.org/linktypes.html
"""

from __future__ import annotations

import numpy as np

from retranscope.analyze.capture.frames import WHY, FrameBytes
from retranscope.analyze.capture.gather import compose, is_any, take

LINKTYPE_NULL = 0  # BSD loopback: 4-byte AF_ value in the *writer's* byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9  # RFC 1661, with or without RFC 1662 HDLC-like framing (ff 03)
LINKTYPE_RAW_DLT12 = 12  # DLT_RAW on most BSDs, found in old files as a link type
LINKTYPE_RAW_DLT14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_PPP_HDLC = 50  # RFC 1662 framing (ff 03), or Cisco HDLC (0f/8f, RFC 1547 §4.3.1)
LINKTYPE_RAW = 101
LINKTYPE_C_HDLC = 104  # Cisco HDLC: address, control, EtherType
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte AF_ value, always big-endian
LINKTYPE_LINUX_SLL = 113  # tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html: 16 bytes
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239  # tcpdump.org/linktypes/LINKTYPE_NFLOG.html
LINKTYPE_IPOIB = 242  # a 40-byte GRH pseudo-header, then RFC 4391 §6: type, reserved
LINKTYPE_LINUX_SLL2 = 276  # tcpdump.org/linktypes/LINKTYPE_LINUX_SLL2.html: 20 bytes

SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "BSD loopback (NULL)",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_PPP: "PPP",
    LINKTYPE_RAW_DLT12: "raw IP (DLT 12)",
    LINKTYPE_RAW_DLT14: "raw IP (DLT 14)",
    LINKTYPE_PPP_HDLC: "PPP in HDLC framing",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_C_HDLC: "Cisco HDLC",
    LINKTYPE_LOOP: "OpenBSD loopback (LOOP)",
    LINKTYPE_LINUX_SLL: "Linux cooked v1 (SLL)",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_NFLOG: "Linux NFLOG",
    LINKTYPE_IPOIB: "IP over InfiniBand",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
}
RAW_LINKTYPES = (LINKTYPE_RAW_DLT12, LINKTYPE_RAW_DLT14, LINKTYPE_RAW)

# Link headers ending in an EtherType: (header bytes, offset of the EtherType, offset of
# the Linux packet type or None). SLL: pkttype u16 @0, ARPHRD @2, address length @4,
# address @6, protocol @14. SLL2: protocol @0, reserved @2, ifindex @4, ARPHRD @8,
# pkttype u8 @10. The SLL protocol is an EtherType for every ARPHRD that carries IP
# (Ethernet, tunnels, PPP, IPoIB, ...): the same chain decodes them all.
COOKED_LAYOUT = {
    LINKTYPE_ETHERNET: (14, 12, None),  # dst 6, src 6, EtherType 2
    LINKTYPE_LINUX_SLL: (16, 14, 0),
    LINKTYPE_LINUX_SLL2: (20, 0, 10),
    # as Wireshark's packet-ipoib.c reads this link type: the 40-byte global route
    # header (pseudo-header) before the 4-byte IPoIB header (RFC 4391 §6)
    LINKTYPE_IPOIB: (44, 40, None),
    LINKTYPE_C_HDLC: (4, 2, None),
}
# the longest link header decode.py gathers up front with the IP and TCP headers
LINK_HEAD_BYTES = {lt: layout[0] for lt, layout in COOKED_LAYOUT.items()}
LINK_HEAD_BYTES.update(
    {LINKTYPE_NULL: 4, LINKTYPE_LOOP: 4, LINKTYPE_PPP: 4, LINKTYPE_PPP_HDLC: 4, LINKTYPE_NFLOG: 8}
)

# AF_INET is 2 everywhere; AF_INET6 is 10 on Linux, 24 on the BSDs, 28 on FreeBSD, 30 on
# Darwin (the list Wireshark's packet-null.c accepts)
AF_INET = 2
AF_INET6_VALUES = (10, 24, 28, 30)

# --- EtherTypes (IEEE registry) and the layers they announce
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)  # 802.1Q C-tag, 802.1ad S-tag, pre-standard QinQ
VLAN_TAG_BYTES = 4  # TCI, then the next EtherType (IEEE 802.1Q §9.5)
ETHERTYPE_PPPOE_SESSION = 0x8864  # RFC 2516 §4: ver/type, code, session, length; then PPP
PPPOE_HEADER_BYTES = 6
ETHERTYPES_MPLS = (0x8847, 0x8848)  # unicast, multicast (RFC 3032)
MPLS_LABEL_BYTES = 4  # label 20 bits, TC 3, bottom of stack 1, TTL 8 (RFC 3032 §2.1)
ETHERTYPE_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame follows
ETHER_HEADER_BYTES = 14
ETHERTYPE_PPP = 0x880B  # PPP (as GRE v1 carries it, RFC 2637 §4.1)
ETHERTYPE_ERSPAN2 = 0x88BE  # ERSPAN type II: 8-byte header, then Ethernet
ETHERTYPE_ERSPAN3 = 0x22EB  # ERSPAN type III: 12 bytes (+8 with the O flag), Ethernet
ERSPAN_TYPE1 = -1  # pseudo: GRE 0x88be without sequence numbers is type I (no header)
# WCCP redirection over GRE (draft-wilson-wrec-wccp-v2 §4.12): a 4-byte redirect header,
# then the client's IPv4 packet; WCCPv1 has no such header (the packet starts with 0x4_)
ETHERTYPE_WCCP = 0x883E
WCCP_REDIRECT_BYTES = 4
LLC_SNAP = b"\xaa\xaa\x03\x00\x00\x00"  # 802.2 LLC + SNAP with an EtherType (RFC 1042)
ETHER_MAX_LENGTH = 1500  # an EtherType field at most this is an 802.3 length
# PPP protocol numbers (RFC 1661 §2; IANA): IPv4 (RFC 1332), IPv6 (RFC 5072), MPLS
# (RFC 3032 §5), Van Jacobson compressed TCP (RFC 1144: not decoded)
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057
PPP_MPLS = (0x0281, 0x0283)
PPP_VJ = (0x002D, 0x002F)
PPP_ADDRESS_CONTROL = 0xFF03  # RFC 1662 §3.1 address 0xff, control 0x03
CISCO_HDLC_ADDRESSES = (0x0F, 0x8F)  # unicast, broadcast (RFC 1547 §4.3.1)
CHAIN_STEPS_MAX = 16  # layers peeled before giving up (VLAN tags, MPLS labels...)

# --- tunnels (IP protocol numbers, IANA)
IPPROTO_IPIP = 4  # RFC 2003
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41  # RFC 4213
IPPROTO_GRE = 47  # RFC 2784 / 2890; version 1: PPTP, RFC 2637
IPPROTO_ESP = 50  # RFC 4303: encrypted, never decodable
IPPROTO_AH = 51  # RFC 4302: next header, length in 4-octet units minus 2
IPPROTO_IPCOMP = 108  # RFC 3173: compressed payload, not decoded
TUNNEL_PROTOS = (
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_GRE,
    IPPROTO_UDP,
    IPPROTO_ESP,
    IPPROTO_AH,
    IPPROTO_IPCOMP,
)
GRE_AT = {"flags_version": 0, "protocol": 2}
GRE_C, GRE_R, GRE_K, GRE_S = 0x8000, 0x4000, 0x2000, 0x1000  # RFC 1701 §2.1, RFC 2890
GRE_A = 0x0080  # acknowledgment number present (RFC 2637 §4.1, version 1)
GRE_BASE_BYTES = 4
UDP_HEADER_BYTES = 8
UDP_AT = {"sport": 0, "dport": 2}
VXLAN_PORT = 4789  # RFC 7348 §5: 8-byte header, then Ethernet
VXLAN_HEADER_BYTES = 8
GENEVE_PORT = 6081  # RFC 8926 §3.4: 8 bytes + options (6 bits, 4-byte units), type @2
GENEVE_BASE_BYTES = 8
TUNNELS_NESTED_MAX = 4

# Encapsulations a TCP segment was found inside (CaptureMeta.encapsulated): a bit each
ENCAP_KINDS = (
    "pppoe",
    "mpls",
    "gre",
    "pptp",
    "erspan",
    "vxlan",
    "geneve",
    "ipip",
    "6in4",
    "4in6",
    "6in6",
    "ah",
)
ENCAP_BIT = {kind: np.uint16(1 << i) for i, kind in enumerate(ENCAP_KINDS)}

# Layers that may carry TCP but are not decoded (CaptureMeta.undecoded): the code of a
# frame is kind << 16 | a value (a protocol number) that its name shows
(
    U_GRE_PROTOCOL,
    U_GRE_ROUTING,
    U_GRE_VERSION,
    U_MPLS_PAYLOAD,
    U_PPP_VJ,
    U_ESP,
    U_DEPTH,
    U_IPCOMP,
) = range(1, 9)
UNDECODED_NAMES = {
    U_GRE_PROTOCOL: "GRE carrying protocol 0x{v:04x}",
    U_GRE_ROUTING: "GRE with source routing",
    U_GRE_VERSION: "GRE version {v}",
    U_MPLS_PAYLOAD: "MPLS carrying neither IPv4 nor IPv6 (a pseudowire)",
    U_PPP_VJ: "PPP with Van Jacobson compressed TCP (protocol 0x{v:04x})",
    U_ESP: "IPsec ESP (encrypted)",
    U_DEPTH: f"encapsulations nested deeper than {TUNNELS_NESTED_MAX}",
    U_IPCOMP: "IPComp (compressed)",
}


def undecoded_name(code: int) -> str:
    return UNDECODED_NAMES[code >> 16].format(v=code & 0xFFFF)


def _field(frames: FrameBytes, rows, at, nbytes: int) -> np.ndarray:
    return frames.field(rows, at, nbytes).astype(np.int64)


class Layers:
    """Per-row state of the peeling: where the next header is (``at``, bytes into the
    frame), what announces it (``ethertype``), the IP family found (0 while none), the
    skip code, encapsulation bits and undecoded code."""

    def __init__(self, n: int):
        self.at = np.zeros(n, np.int64)
        self.ethertype = np.zeros(n, np.int64)
        self.fam = np.zeros(n, np.uint8)
        self.code = np.zeros(n, np.int8)
        self.encap = np.zeros(n, np.uint16)
        self.undecoded = np.zeros(n, np.int32)


def link_layer(frames: FrameBytes, sel, lt: int, caplen):
    """Where the IP header starts in each frame of the records ``sel`` (None: all) of
    link type ``lt``. Returns (offset, family announced (0: read the IP version), Linux
    packet type or None, skip code or None, (rows, Layers) of the rows that went through
    the EtherType chain, or None); the first two are arrays over the rows or scalars
    holding for all of them."""
    if lt in RAW_LINKTYPES:
        return 0, 0, None, None, None
    if lt in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0, (4 if lt == LINKTYPE_IPV4 else 6), None, None, None
    if lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
        af = frames.field(sel, 0, 4)
        if lt == LINKTYPE_NULL:
            # DLT_NULL's AF_ value is in the capturing host's byte order: a value with
            # bits in its high half was written by the other endianness (packet-null.c)
            swapped = af.byteswap()
            af = np.where(swapped <= 0xFFFF, swapped, af)
        fam = np.where(af == AF_INET, 4, np.where(is_any(af, AF_INET6_VALUES), 6, 0))
        code = np.where(fam == 0, np.int8(WHY["non_tcp"]), np.int8(0))
        code[caplen < 4] = WHY["link_header_cut"]
        return 4, fam.astype(np.uint8), None, code, None
    if lt == LINKTYPE_NFLOG:
        return _nflog(frames, sel, caplen)
    n = caplen.size
    pkttype = None
    if lt in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
        start, ethertype = np.zeros(n, np.int64), np.full(n, ETHERTYPE_PPP, np.int64)
        if lt == LINKTYPE_PPP_HDLC:
            cisco = is_any(frames.byte(sel, 0), CISCO_HDLC_ADDRESSES)
            start[cisco] = 4
            ethertype[cisco] = _field(frames, compose(sel, np.flatnonzero(cisco)), 2, 2)
    else:
        fixed_len, ethertype_at, pkttype_at = COOKED_LAYOUT[lt]
        ethertype = frames.field(sel, ethertype_at, 2)
        if lt == LINKTYPE_LINUX_SLL:
            pkttype = np.minimum(frames.field(sel, pkttype_at, 2), 127).astype(np.int8)
        elif lt == LINKTYPE_LINUX_SLL2:
            pkttype = np.minimum(frames.field(sel, pkttype_at, 1), 127).astype(np.int8)
        if (ethertype == ETHERTYPE_IPV4).all():  # the usual capture: untagged IPv4 only
            short = caplen < fixed_len
            code = np.where(short, np.int8(WHY["link_header_cut"]), np.int8(0))
            return fixed_len, np.uint8(4), pkttype, code if short.any() else None, None
        start = np.full(n, fixed_len, np.int64)
        ethertype = ethertype.astype(np.int64)
    # untagged IPv4 needs nothing more: the chain walks the other rows only
    fam = np.where(ethertype == ETHERTYPE_IPV4, np.uint8(4), np.uint8(0))
    code = np.where(caplen < start, np.int8(WHY["link_header_cut"]), np.int8(0))
    rest = np.flatnonzero(fam == 0)
    if rest.size == 0:
        return start, fam, pkttype, code, None
    layers = Layers(rest.size)
    layers.at, layers.ethertype, layers.code = start[rest], ethertype[rest], code[rest]
    ethertype_chain(frames, compose(sel, rest), np.arange(rest.size), layers, caplen[rest])
    start[rest], fam[rest], code[rest] = layers.at, layers.fam, layers.code
    return start, fam, pkttype, code, (rest, layers)


def _nflog(frames: FrameBytes, sel, caplen):
    """NFLOG (tcpdump.org/linktypes/LINKTYPE_NFLOG.html): family u8, version u8, resource
    id u16, then TLVs (length and type in the capturing host's byte order, length
    including the 4-byte TLV header, padded to 4 bytes) until NFULA_PAYLOAD (type 9):
    the IP packet."""
    n = caplen.size
    family = frames.byte(sel, 0)
    fam = np.where(family == AF_INET, 4, np.where(family == 10, 6, 0)).astype(np.uint8)
    at = np.full(n, 4, np.int64)
    found = np.zeros(n, bool)
    act = np.flatnonzero(fam != 0)
    for _ in range(64):  # TLVs walked per frame at most
        act = act[at[act] + 4 <= caplen[act]]
        if act.size == 0:
            break
        tlv = frames.window(compose(sel, act), at[act], 4)
        length = tlv[:, :2].copy().view("<u2")[:, 0].astype(np.int64)
        kind = tlv[:, 2:4].copy().view("<u2")[:, 0]
        # a length or type with its high byte set was written big-endian
        swap = (length > 0xFF) & (kind > 0xFF)
        length = np.where(swap, ((length & 0xFF) << 8) | (length >> 8), length)
        kind = np.where(swap, ((kind & 0xFF) << 8) | (kind >> 8), kind) & 0x7FFF
        payload = kind == 9
        found[act[payload]] = True
        at[act[payload]] += 4
        go = ~payload & (length >= 4)
        act = act[go]
        at[act] += (length[go] + 3) & ~3
    code = np.where(found, np.int8(0), np.int8(WHY["non_tcp"]))
    code[found & (at > caplen)] = WHY["link_header_cut"]
    return at, np.where(found, fam, 0).astype(np.uint8), None, code, None


def ethertype_chain(frames: FrameBytes, sel, rows: np.ndarray, layers: Layers, caplen) -> None:
    """Peel EtherType-announced layers off the ``rows`` of ``layers`` (each at
    ``layers.at`` with ``layers.ethertype``) until IPv4 or IPv6: sets ``fam`` there,
    else a skip code (not TCP, cut, or an undecoded layer)."""
    L = layers
    act = rows[L.code[rows] == 0]
    for _ in range(CHAIN_STEPS_MAX):
        if act.size == 0:
            return
        et = L.ethertype[act]
        ip4, ip6 = et == ETHERTYPE_IPV4, et == ETHERTYPE_IPV6
        L.fam[act[ip4]] = 4
        L.fam[act[ip6]] = 6
        act = act[~(ip4 | ip6)]
        et = L.ethertype[act]
        step = np.zeros(act.size, bool)
        for kinds, peel in (
            (VLAN_TPIDS, _vlan),
            ((ETHERTYPE_PPPOE_SESSION,), _pppoe),
            ((ETHERTYPE_PPP,), _ppp),
            (ETHERTYPES_MPLS, _mpls),
            ((ETHERTYPE_TEB,), _ethernet),
            ((ETHERTYPE_ERSPAN2, ETHERTYPE_ERSPAN3, ERSPAN_TYPE1), _erspan),
            ((ETHERTYPE_WCCP,), _wccp),
        ):
            hit = is_any(et, kinds)
            if hit.any():
                peel(frames, sel, act[hit], L, caplen)
                step |= hit
        llc = (et <= ETHER_MAX_LENGTH) & (et >= 0)
        if llc.any():
            _llc_snap(frames, sel, act[llc], L, caplen)
            step |= llc
        stop = act[~step]
        L.code[stop[(L.code[stop] == 0) & (L.undecoded[stop] == 0)]] = WHY["non_tcp"]
        act = act[step]
        act = act[L.code[act] == 0]
    L.code[act] = WHY["unsupported_encapsulation"]
    L.undecoded[act] = U_DEPTH << 16


def _need(rows: np.ndarray, L: Layers, caplen, sel, nbytes: int) -> np.ndarray:
    """The rows whose frame holds ``nbytes`` at ``at``; the others are cut there."""
    ok = L.at[rows] + nbytes <= take(caplen, rows) if np.ndim(caplen) else np.ones(rows.size, bool)
    L.code[rows[~ok]] = WHY["link_header_cut"]
    return rows[ok]


def _vlan(frames, sel, rows, L: Layers, caplen) -> None:
    rows = _need(rows, L, caplen, sel, VLAN_TAG_BYTES)
    L.ethertype[rows] = _field(frames, compose(sel, rows), L.at[rows] + 2, 2)
    L.at[rows] += VLAN_TAG_BYTES


def _pppoe(frames, sel, rows, L: Layers, caplen) -> None:
    rows = _need(rows, L, caplen, sel, PPPOE_HEADER_BYTES)
    L.at[rows] += PPPOE_HEADER_BYTES
    L.ethertype[rows] = ETHERTYPE_PPP
    L.encap[rows] |= ENCAP_BIT["pppoe"]


def _ppp(frames, sel, rows, L: Layers, caplen) -> None:
    """A PPP header (RFC 1661 §2): address and control (ff 03) when framed as RFC 1662
    says, then the protocol, one byte when compressed (an odd first byte, §6.5)."""
    rows = _need(rows, L, caplen, sel, 2)
    r = compose(sel, rows)
    framed = _field(frames, r, L.at[rows], 2) == PPP_ADDRESS_CONTROL
    L.at[rows[framed]] += 2
    rows = _need(rows, L, caplen, sel, 1)
    r = compose(sel, rows)
    first = _field(frames, r, L.at[rows], 1)
    short = (first & 1) == 1
    proto = np.where(short, first, _field(frames, r, L.at[rows], 2))
    L.at[rows] += np.where(short, 1, 2)
    et = np.full(rows.size, -2, np.int64)  # not IP: LCP, IPCP, ... carry no TCP
    et[proto == PPP_IPV4] = ETHERTYPE_IPV4
    et[proto == PPP_IPV6] = ETHERTYPE_IPV6
    et[is_any(proto, PPP_MPLS)] = ETHERTYPES_MPLS[0]
    vj = is_any(proto, PPP_VJ)
    L.code[rows[vj]] = WHY["unsupported_encapsulation"]
    L.undecoded[rows[vj]] = (U_PPP_VJ << 16) | proto[vj]
    L.ethertype[rows] = et


def _mpls(frames, sel, rows, L: Layers, caplen) -> None:
    """One label stack entry; after the bottom one, IPv4 or IPv6 by the version nibble
    (MPLS does not say what it carries: RFC 3032 §2.2, as routers and Wireshark guess)."""
    rows = _need(rows, L, caplen, sel, MPLS_LABEL_BYTES + 1)
    r = compose(sel, rows)
    bottom = (_field(frames, r, L.at[rows] + 2, 1) & 1) == 1
    L.at[rows] += MPLS_LABEL_BYTES
    L.encap[rows] |= ENCAP_BIT["mpls"]
    b = rows[bottom]
    nibble = _field(frames, compose(sel, b), L.at[b], 1) >> 4
    L.ethertype[b] = np.select([nibble == 4, nibble == 6], [ETHERTYPE_IPV4, ETHERTYPE_IPV6], -3)
    other = b[(nibble != 4) & (nibble != 6)]
    L.code[other] = WHY["unsupported_encapsulation"]
    L.undecoded[other] = U_MPLS_PAYLOAD << 16


def _ethernet(frames, sel, rows, L: Layers, caplen) -> None:
    rows = _need(rows, L, caplen, sel, ETHER_HEADER_BYTES)
    L.ethertype[rows] = _field(frames, compose(sel, rows), L.at[rows] + 12, 2)
    L.at[rows] += ETHER_HEADER_BYTES


def _erspan(frames, sel, rows, L: Layers, caplen) -> None:
    """ERSPAN (draft-foschiano-erspan): type I has no header, type II 8 bytes, type III
    12 (and 8 more when its O flag says a platform sub-header follows); then Ethernet."""
    et = L.ethertype[rows]
    t3 = rows[et == ETHERTYPE_ERSPAN3]
    t3 = _need(t3, L, caplen, sel, 12)
    o_flag = (_field(frames, compose(sel, t3), L.at[t3] + 11, 1) & 1) == 1
    L.at[t3] += 12 + 8 * o_flag
    t2 = rows[et == ETHERTYPE_ERSPAN2]
    L.at[t2] += 8
    L.ethertype[rows] = ETHERTYPE_TEB
    L.encap[rows] |= ENCAP_BIT["erspan"]


def _wccp(frames, sel, rows, L: Layers, caplen) -> None:
    rows = _need(rows, L, caplen, sel, 1)
    v1 = (_field(frames, compose(sel, rows), L.at[rows], 1) >> 4) == 4
    L.at[rows[~v1]] += WCCP_REDIRECT_BYTES
    L.ethertype[rows] = ETHERTYPE_IPV4


def _llc_snap(frames, sel, rows, L: Layers, caplen) -> None:
    """An 802.3 length field: IP follows only behind LLC/SNAP with an EtherType."""
    rows = _need(rows, L, caplen, sel, 8)
    w = frames.window(compose(sel, rows), L.at[rows], 8)
    snap = np.all(w[:, :6] == np.frombuffer(LLC_SNAP, np.uint8), axis=1)
    L.ethertype[rows[~snap]] = -4  # LLC without SNAP (STP, NetBIOS...): not TCP
    s = rows[snap]
    L.ethertype[s] = w[snap, 6].astype(np.int64) << 8 | w[snap, 7]
    L.at[s] += 8


def tunnel_inner(
    frames: FrameBytes, sel, rows: np.ndarray, proto, l4_rel, version, caplen, L: Layers
) -> None:
    """For the ``rows`` whose IP packet (family ``version``) carries ``proto`` at
    ``l4_rel``: where the inner packet's IP header is (``L.at``/``L.fam``), or why it
    is not decoded. ``proto``, ``l4_rel``, ``version`` are over ``rows``."""
    L.at[rows] = l4_rel
    L.ethertype[rows] = -5
    for p, four, six in ((IPPROTO_IPIP, "ipip", "4in6"), (IPPROTO_IPV6, "6in4", "6in6")):
        hit = proto == p
        if hit.any():
            L.ethertype[rows[hit]] = ETHERTYPE_IPV4 if p == IPPROTO_IPIP else ETHERTYPE_IPV6
            L.encap[rows[hit]] |= np.where(version[hit] == 4, ENCAP_BIT[four], ENCAP_BIT[six])
    for p, kind in ((IPPROTO_ESP, U_ESP), (IPPROTO_IPCOMP, U_IPCOMP)):
        hit = rows[proto == p]
        L.code[hit] = WHY["unsupported_encapsulation"]
        L.undecoded[hit] = kind << 16
    gre = rows[proto == IPPROTO_GRE]
    if gre.size:
        _gre(frames, sel, gre, L, caplen)
    udp = rows[proto == IPPROTO_UDP]
    if udp.size:
        _udp_tunnel(frames, sel, udp, L, caplen)
    ethertype_chain(frames, sel, rows, L, caplen)


def _gre(frames, sel, rows, L: Layers, caplen) -> None:
    """GRE (RFC 2784, RFC 2890 key and sequence, RFC 1701 routing; version 1 is PPTP's
    enhanced GRE, RFC 2637 §4.1): the header's length from its flags, then what the
    protocol type announces."""
    rows = _need(rows, L, caplen, sel, GRE_BASE_BYTES)
    r = compose(sel, rows)
    flags = _field(frames, r, L.at[rows] + GRE_AT["flags_version"], 2)
    ptype = _field(frames, r, L.at[rows] + GRE_AT["protocol"], 2)
    version = flags & 7
    has = lambda bit: ((flags & bit) != 0).astype(np.int64)  # noqa: E731
    length = GRE_BASE_BYTES + 4 * (has(GRE_C) | has(GRE_R)) + 4 * has(GRE_K) + 4 * has(GRE_S)
    v1 = version == 1
    length = np.where(v1, GRE_BASE_BYTES + 4 + 4 * has(GRE_S) + 4 * has(GRE_A), length)
    routing = (version == 0) & ((flags & GRE_R) != 0)
    bad = ~((version == 0) | v1) | routing
    L.code[rows[bad]] = WHY["unsupported_encapsulation"]
    L.undecoded[rows[bad]] = np.where(
        routing[bad], U_GRE_ROUTING << 16, (U_GRE_VERSION << 16) | version[bad]
    )
    # ERSPAN: without sequence numbers, type I (no ERSPAN header)
    type1 = (ptype == ETHERTYPE_ERSPAN2) & ((flags & GRE_S) == 0)
    ptype = np.where(type1, ERSPAN_TYPE1, ptype)
    ok = ~bad
    rows, ptype, length, v1 = rows[ok], ptype[ok], length[ok], v1[ok]
    # PPTP: a payload length of 0 is an acknowledgment alone
    pptp = rows[v1]
    if pptp.size:
        empty = _field(frames, compose(sel, pptp), L.at[pptp] + 4, 2) == 0
        L.code[pptp[empty]] = WHY["non_tcp"]
    L.encap[rows] |= np.where(v1, ENCAP_BIT["pptp"], ENCAP_BIT["gre"])
    L.at[rows] += length
    L.ethertype[rows] = ptype
    known = is_any(
        ptype,
        (
            ETHERTYPE_IPV4,
            ETHERTYPE_IPV6,
            ETHERTYPE_TEB,
            ETHERTYPE_PPP,
            ETHERTYPE_ERSPAN2,
            ETHERTYPE_ERSPAN3,
            ERSPAN_TYPE1,
            ETHERTYPE_WCCP,
        )
        + ETHERTYPES_MPLS,
    )
    unknown = rows[~known & (L.code[rows] == 0)]
    L.code[unknown] = WHY["unsupported_encapsulation"]
    L.undecoded[unknown] = (U_GRE_PROTOCOL << 16) | (L.ethertype[unknown] & 0xFFFF)


def _udp_tunnel(frames, sel, rows, L: Layers, caplen) -> None:
    """VXLAN (RFC 7348) and Geneve (RFC 8926) on their IANA ports; other UDP is not TCP."""
    rows = _need(rows, L, caplen, sel, UDP_HEADER_BYTES)
    dport = _field(frames, compose(sel, rows), L.at[rows] + UDP_AT["dport"], 2)
    vx = rows[dport == VXLAN_PORT]
    L.at[vx] += UDP_HEADER_BYTES + VXLAN_HEADER_BYTES
    L.ethertype[vx] = ETHERTYPE_TEB
    L.encap[vx] |= ENCAP_BIT["vxlan"]
    gv = rows[dport == GENEVE_PORT]
    L.at[gv] += UDP_HEADER_BYTES
    gv = _need(gv, L, caplen, sel, GENEVE_BASE_BYTES)
    r = compose(sel, gv)
    opt_bytes = (_field(frames, r, L.at[gv], 1) & 0x3F) * 4
    L.ethertype[gv] = _field(frames, r, L.at[gv] + 2, 2)
    L.at[gv] += GENEVE_BASE_BYTES + opt_bytes
    L.encap[gv] |= ENCAP_BIT["geneve"]
