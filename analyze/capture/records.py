"""The data types of the capture reader: what a file walk hands to the decoder (Records),
what a decoded chunk is (Chunk), and what the reader returns (Capture, CaptureMeta)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# libpcap's MAXIMUM_SNAPLEN: no writer produces a longer record, so a longer one means the
# record header is garbage (Wireshark: "File has N-byte packet, bigger than maximum").
MAX_CAPLEN_BYTES = 262144


@dataclass
class CaptureMeta:
    """What the later stages and the report need to know about the capture.

    For a capture set (several files read as one) the counts are over all files, the
    warnings name the file they are about, and ``files`` describes each file.
    """

    path: str  # the file, or for a set the inputs as given (joined by ", ")
    format: str  # "pcap" | "pcapng" | "mixed" (a set of both)
    ts_resolution_ns: int  # the coarsest timestamp unit among the interfaces, ns (>= 1)
    linktypes: list[int]  # one per interface (pcap: one per file), in file order
    snaplen: int  # the largest snaplen; 0 when one of them is unlimited
    records: int  # packet records read (pcapng: EPB, SPB, PB), numbered as Wireshark does
    tcp_packets: int
    skipped_non_tcp: int
    skipped_other: dict[str, int]  # reason -> records (decode.SKIP_REASONS)
    truncated: bool
    truncated_at_offset: int | None  # byte offset of the first record that could not be read
    warnings: list[str]
    if_drops: int | None  # pcapng ISB isb_ifdrop + isb_osdrop (last ISB per interface)
    first_ts_ns: int | None  # over all records read, not only the TCP ones
    last_ts_ns: int | None
    # --- added with the streaming reader (all present for every capture)
    files: list[dict] = field(default_factory=list)  # one per file: see reader.FileInfo
    # TCP packets found inside each encapsulation (tunnel, PPPoE, MPLS...): kind -> packets
    encapsulated: dict[str, int] = field(default_factory=dict)
    # packets that may carry TCP in a layer not decoded here: kind -> packets (each also
    # counted in skipped_other["unsupported_encapsulation"])
    undecoded: dict[str, int] = field(default_factory=dict)
    # pcapng per-packet drop counters (EPB epb_dropcount, obsolete PB drops_count): their
    # sum, None when no packet block carries one
    epb_drops: int | None = None
    # where the capturing side reported lost packets, in capture order: {"frame": first
    # frame after the loss, "ts_ns", "iface", "dropped", "source": "epb" | "isb"};
    # at most MAX_DROP_MARKS (drop_marks_total counts them all)
    drop_marks: list[dict] = field(default_factory=list)
    drop_marks_total: int = 0
    # ICMP fragmentation-needed / ICMPv6 packet-too-big messages quoting a TCP segment, in
    # capture order: {TOO_BIG_FIELDS} (schemas/packets.py); at most MAX_DROP_MARKS
    icmp_too_big: list[dict] = field(default_factory=list)
    icmp_too_big_total: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


MAX_DROP_MARKS = 10_000


@dataclass
class Capture:
    packets: dict[str, np.ndarray]  # exactly PACKET_COLUMNS, in that order, those dtypes
    meta: CaptureMeta


@dataclass
class Iface:
    linktype: int
    snaplen: int
    tsresol: int = 6  # if_tsresol byte: 6 = 10^-6 s
    tsoffset_s: int = 0  # if_tsoffset


@dataclass
class Records:
    """The packet records of one block of a file: one entry per record, for the decoder.

    ``data_off`` is relative to the block's buffer; ``frame`` is the 1-based number of the
    record in its file; ``iface`` indexes ``ifaces`` (the file's interfaces so far).
    """

    frame: np.ndarray  # int64
    data_off: np.ndarray  # int64
    caplen: np.ndarray  # int32 or int64
    origlen: np.ndarray  # any integer type
    ts_ns: np.ndarray  # int64
    iface: np.ndarray  # int16 or int64
    ifaces: list[Iface]

    def __len__(self) -> int:
        return int(self.data_off.size)

    def rows(self, lo: int, hi: int) -> Records:
        """The records lo:hi (views), for decoding in chunks."""
        return Records(
            self.frame[lo:hi],
            self.data_off[lo:hi],
            self.caplen[lo:hi],
            self.origlen[lo:hi],
            self.ts_ns[lo:hi],
            self.iface[lo:hi],
            self.ifaces,
        )


def no_records(ifaces: list[Iface]) -> Records:
    z = np.zeros(0, np.int64)
    return Records(z, z, z, z, z, z, ifaces)
