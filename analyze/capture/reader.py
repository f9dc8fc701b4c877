"""read_capture: a pcap or pcapng file -> the packet table (the package's entry point)."""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from retranscope.analyze.capture.decode import decode_in_chunks
from retranscope.analyze.capture.pcap import PCAP_MAGIC, PCAP_MAGIC_KUZNETSOV, walk_pcap
from retranscope.analyze.capture.pcapng import PCAPNG_SHB, walk_pcapng
from retranscope.analyze.capture.records import Capture, CaptureMeta, Progress
from retranscope.errors import BadInput, CaptureError, NotACapture

GZIP_MAGIC = b"\x1f\x8b"


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
        recs = walk_pcapng(path, mm, n, progress)
    elif magic in PCAP_MAGIC:
        recs = walk_pcap(path, mm, n, magic, progress)
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
        packets, skipped, notes = decode_in_chunks(path, buf, recs)
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
