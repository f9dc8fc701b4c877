"""The data types of the capture reader: what a file walk hands to the decoder (Records),
and what the reader returns (Capture, CaptureMeta)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

Progress = Callable[[int, int], None]

# libpcap's MAXIMUM_SNAPLEN: no writer produces a longer record, so a longer one means the
# record header is garbage (Wireshark: "File has N-byte packet, bigger than maximum").
MAX_CAPLEN_BYTES = 262144
PROGRESS_CALLS = 32  # the walk reports this many times per file, at most


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


@dataclass
class Iface:
    linktype: int
    snaplen: int
    tsresol: int = 6  # if_tsresol byte: 6 = 10^-6 s
    tsoffset_s: int = 0  # if_tsoffset


@dataclass
class Records:
    """One entry per packet record that the decoder will look at."""

    frame: np.ndarray  # int64, 1-based number among all packet records
    data_off: np.ndarray  # int64, absolute byte offset of the frame's first byte
    caplen: np.ndarray  # int32 or int64
    origlen: np.ndarray  # any unsigned or signed integer type
    ts_ns: np.ndarray  # int64
    iface: np.ndarray  # int16 or int64, index into ifaces
    ifaces: list[Iface]
    fmt: str
    snaplen: int
    ts_resolution_ns: int
    records: int  # packet records read, including ones set aside before decoding
    truncated_at: int | None = None
    warnings: list[str] = field(default_factory=list)
    if_drops: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)

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
            self.fmt,
            self.snaplen,
            self.ts_resolution_ns,
            self.records,
        )
