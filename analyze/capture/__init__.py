"""Capture reader: a pcap or pcapng file -> the packet table of ``schemas/packets.py``.

Bulk, not per packet: the file is memory-mapped, the record headers are walked with one
tight loop (the only sequential part: each record's length says where the next one starts),
and every field of every packet is then gathered with numpy fancy indexing. One module per
format, as dpkt has them:

- ``pcap``: the pcap file format (draft-ietf-opsawg-pcap)
- ``pcapng``: pcapng blocks (draft-ietf-opsawg-pcapng)
- ``decode``: link layer, IP, TCP (header layouts as data, citing their specs)
- ``gather``: the byte-window gathers the others are built on
- ``reader``: ``read_capture``, the entry point

Nothing is dropped silently: every record that does not become a row is counted in
``CaptureMeta.skipped_non_tcp`` or ``CaptureMeta.skipped_other`` (so ``tcp_packets +
skipped_non_tcp + sum(skipped_other.values()) == records``), and anything odd about the
file itself (truncation, corruption, unsupported interfaces) is a line in ``warnings``.
"""

from retranscope.analyze.capture.decode import SUPPORTED_LINKTYPES
from retranscope.analyze.capture.reader import read_capture
from retranscope.analyze.capture.records import Capture, CaptureMeta

__all__ = ["Capture", "CaptureMeta", "read_capture", "SUPPORTED_LINKTYPES"]
