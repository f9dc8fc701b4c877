"""The packet table: what the capture reader produces and every later stage consumes.

One row per TCP segment in the capture (any direction). Declared once here; the reader
builds exactly these columns (a test checks it) and the flow/classify stages read them.
Addresses are kept as two big-endian 64-bit halves so that flows can be keyed and
grouped with integer operations; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d, RFC 4291
§2.5.5.2) so one layout covers both families.
"""

from __future__ import annotations

import numpy as np

# (name, numpy dtype, meaning)
PACKET_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("frame", "int64", "1-based record number in the capture file, as Wireshark counts"),
    ("ts_ns", "int64", "capture timestamp, wall clock (CLOCK_REALTIME), ns since the epoch"),
    ("iface", "int16", "pcapng interface id (0 for pcap)"),
    ("pkttype", "int8", "Linux cooked packet type (0 host, 4 outgoing, ...); -1 if unknown"),
    ("family", "uint8", "4 or 6"),
    ("saddr_hi", "uint64", "source address, high 64 bits (big-endian, IPv4-mapped for v4)"),
    ("saddr_lo", "uint64", "source address, low 64 bits"),
    ("daddr_hi", "uint64", "destination address, high 64 bits"),
    ("daddr_lo", "uint64", "destination address, low 64 bits"),
    ("sport", "uint16", "TCP source port, host byte order"),
    ("dport", "uint16", "TCP destination port, host byte order"),
    ("seq", "uint32", "raw 32-bit sequence number"),
    ("ack", "uint32", "raw 32-bit acknowledgment number"),
    (
        "flags",
        "uint16",
        "TCP flags: FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 "
        "ECE 0x40 CWR 0x80 (AE/NS 0x100)",
    ),
    ("win", "uint16", "raw window field, not scaled"),
    ("payload_len", "uint32", "TCP payload bytes from the IP length (right under a short snaplen)"),
    ("opt_mss", "uint16", "MSS option (RFC 9293), 0 if absent"),
    ("opt_wscale", "int8", "window scale shift (RFC 7323), -1 if absent"),
    ("opt_sackok", "bool", "SACK-permitted option present (RFC 2018)"),
    ("opt_ts", "bool", "timestamps option present (RFC 7323)"),
    ("tsval", "uint32", "TSval, 0 if absent"),
    ("tsecr", "uint32", "TSecr, 0 if absent"),
    ("sack_n", "uint8", "number of SACK blocks (0-4, RFC 2018)"),
    ("sack_l0", "uint32", "SACK block 0 left edge (raw)"),
    ("sack_r0", "uint32", "SACK block 0 right edge (raw)"),
    ("sack_l1", "uint32", ""),
    ("sack_r1", "uint32", ""),
    ("sack_l2", "uint32", ""),
    ("sack_r2", "uint32", ""),
    ("sack_l3", "uint32", ""),
    ("sack_r3", "uint32", ""),
    ("opts_cut", "bool", "TCP options were cut short by the snaplen"),
    (
        "opt_layout",
        "uint32",
        "the TCP option kinds in the order sent, one hex digit each (kinds above 14 as F), "
        "the first eight: a stack's habit (Linux SYN: 0x24813 = MSS, SACK-permitted, "
        "timestamps, NOP, window scale)",
    ),
    (
        "ip_id",
        "uint16",
        "IPv4 identification (RFC 791 §3.1; Linux counts it per socket: the sender's order), "
        "0 for IPv6",
    ),
    ("ttl", "uint8", "IPv4 time to live / IPv6 hop limit, as the capture point saw it"),
)

PACKET_DTYPES: dict[str, np.dtype] = {name: np.dtype(dt) for name, dt, _ in PACKET_COLUMNS}

#: The packet table as a spilled shard holds it (analyze/spill.py): the four address
#: halves give way to ``tuple``, the row's 4-tuple numbered in the capture (its addresses
#: and ports in the spill's TupleNumbers table, lesser endpoint first) times two, plus one
#: when the lesser endpoint received the packet (flows.flow_table's direction 1): 4 bytes
#: a packet instead of 32 in the table of the shard being classified.
ADDRESS_HALVES = ("saddr_hi", "saddr_lo", "daddr_hi", "daddr_lo")
#: The SACK blocks' edges: a spilled shard holds them only for the rows that carry SACK
#: blocks (sack_n > 0; a few in a hundred of a bulk transfer's packets), as columns as
#: long as SACK_ROWS, the numbers of those rows in the shard's table (ascending): 32
#: bytes a packet less, on disk and in memory (flows.sequence_space reads either form).
SACK_EDGE_COLUMNS = tuple(f"sack_{side}{b}" for b in range(4) for side in "lr")
SACK_ROWS = "sack_rows"
SPILLED_DTYPES: dict[str, np.dtype] = {
    ("tuple" if name == "saddr_hi" else name): (np.dtype(np.uint32) if name == "saddr_hi" else dt)
    for name, dt in PACKET_DTYPES.items()
    if name not in ADDRESS_HALVES[1:] and name not in SACK_EDGE_COLUMNS
}


def sparse_sack_edges(packets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SACK_ROWS and the SACK_EDGE_COLUMNS of those rows only, from a table that has the
    edges for every row."""
    rows = np.flatnonzero(packets["sack_n"] > 0)
    return {SACK_ROWS: rows, **{name: packets[name][rows] for name in SACK_EDGE_COLUMNS}}


TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# IPv4-mapped IPv6 prefix ::ffff:0:0/96 (RFC 4291 §2.5.5.2): the high half is 0 and the
# low half is 0x0000ffff_<ipv4>.
V4_MAPPED_LO_PREFIX = np.uint64(0xFFFF) << np.uint64(32)


#: ICMP messages saying a TCP segment was too big for the path (ICMP destination
#: unreachable / fragmentation needed, RFC 1191; ICMPv6 packet too big, RFC 8201): one
#: per message, with the TCP flow and sequence number the quoted header names (its sender
#: is the flow's sender). The reader puts them, capped, in the capture's metadata.
TOO_BIG_FIELDS = (
    "frame",
    "ts_ns",
    "family",
    "saddr_hi",
    "saddr_lo",
    "daddr_hi",
    "daddr_lo",
    "sport",
    "dport",
    "seq",
    "mtu",
)


def addr_to_str(hi: int, lo: int, family: int) -> str:
    """Format one address from its two halves (for output rows, not for bulk work)."""
    import ipaddress

    if family == 4:
        return str(ipaddress.IPv4Address(int(lo) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((int(hi) << 64) | int(lo)))


def addr_from_str(text: str) -> tuple[int, int, int]:
    """Parse an address into (hi, lo, family) in the packet table's layout."""
    import ipaddress

    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return 0, (0xFFFF << 32) | int(ip), 4
    value = int(ip)
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF, 6


def empty_packets() -> dict[str, np.ndarray]:
    """A packet table with no rows, every column of the right dtype."""
    return {name: np.empty(0, dtype=dt) for name, dt in PACKET_DTYPES.items()}
