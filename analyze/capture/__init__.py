"""Capture reader: pcap and pcapng files (one, a set, compressed or not) -> the packet
table of ``schemas/packets.py``, as a stream of chunks in bounded memory.

Bulk, not per packet: a file is read a block at a time, the record headers of a block
are walked with one tight loop (the only sequential part: each record's length says where
the next one starts), and every field of every packet is then gathered with numpy fancy
indexing. One module per concern, as dpkt has them:

- ``pcap``: the pcap file format (draft-ietf-opsawg-pcap)
- ``pcapng``: pcapng blocks (draft-ietf-opsawg-pcapng)
- ``decode``: link layers, encapsulations, IP, TCP (header layouts as data, citing specs)
- ``gather``: the byte-window gathers the others are built on
- ``stream``: a file's bytes, decompressed on the way (gzip, zstd, xz, bzip2)
- ``chunks``: one file -> chunks (the block, carry and walk loop)
- ``parallel``: decoding on worker processes
- ``sets``: capture sets (files, directories, globs; ordered by first packet)
- ``merge``: several files' chunks -> one stream in time order
- ``reader``: ``open_capture`` (the chunk stream and its contract) and ``read_capture``

Nothing is dropped silently: every record that does not become a row is counted in
``CaptureMeta.skipped_non_tcp`` or ``CaptureMeta.skipped_other`` (so ``tcp_packets +
skipped_non_tcp + sum(skipped_other.values()) == records``), and anything odd about the
files themselves (truncation, corruption, unsupported interfaces) is a line in
``warnings``.
"""

from retranscope.analyze.capture.decode import SUPPORTED_LINKTYPES
from retranscope.analyze.capture.reader import (
    CaptureStream,
    ReadProgress,
    open_capture,
    read_capture,
)
from retranscope.analyze.capture.records import Capture, CaptureMeta

__all__ = [
    "Capture",
    "CaptureMeta",
    "CaptureStream",
    "ReadProgress",
    "SUPPORTED_LINKTYPES",
    "open_capture",
    "read_capture",
]
