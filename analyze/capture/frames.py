"""What the decoding stages share: byte windows into the frames of a block, and the
reasons a record does not become a row."""

from __future__ import annotations

import numpy as np

from retranscope.analyze.capture.gather import take, windows

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
    "unsupported_encapsulation",  # may carry TCP, in a layer not decoded (meta.undecoded)
    "unsupported_linktype",
    "unknown_interface",  # pcapng packet naming an interface with no IDB
)
WHY = {name: code for code, name in enumerate(SKIP_REASONS)}


class FrameBytes:
    """Byte windows at offsets into the frames: served from the frame heads gathered in
    one pass (row gathers of a small matrix, or views), else read from the block."""

    def __init__(self, buf: np.ndarray, data_off: np.ndarray, head: np.ndarray):
        self.buf, self.data_off, self.head = buf, data_off, head

    def window(self, rows, rel, width: int) -> np.ndarray:
        """``width`` bytes at ``rel`` (scalar or per row) into the frames ``rows`` (None:
        every record), rows of a (len, width) uint8 matrix (may be a view). Bytes past
        a frame's captured length are the next record's or padding: callers check
        the captured length."""
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
                        out[k] = self.head[base[k], v : v + width]
                    return out
        if np.ndim(rel) == 0 and 0 <= rel and rel + width <= hw:
            # A copy, not a view: each field is then read from a narrow contiguous
            # matrix, not with the stride of the whole head.
            if rows is None:
                return np.ascontiguousarray(self.head[:, rel : rel + width])
            return self.head[rows, rel : rel + width]
        return windows(self.buf, take(self.data_off, rows) + rel, width)

    def field(self, rows, rel, nbytes: int) -> np.ndarray:
        """The big-endian unsigned field of ``nbytes`` at ``rel``, native order."""
        return self.window(rows, rel, nbytes).view(f">u{nbytes}")[:, 0].astype(f"=u{nbytes}")

    def byte(self, rows, rel) -> np.ndarray:
        return self.window(rows, rel, 1)[:, 0].copy()
