"""Read a BPF ring buffer's memory directly, a batch at a time, without bcc's callback.

bcc hands ring-buffer records to Python one by one through a ctypes callback: a few
microseconds of interpreter work per event, most of the recorder's CPU under a storm.
The ring buffer is plain shared memory, though (kernel/bpf/ringbuf.c), laid out as:

    page 0            consumer_pos (u64): written by the reader, mapped read-write
    page 1            producer_pos (u64): written by the kernel, mapped read-only
    page 2 ...        the data area (max_entries bytes), mapped twice in a row so that a
                      record that wraps around the end reads as one contiguous run

Each record is an 8-byte header (u32 len with BPF_RINGBUF_BUSY_BIT while the producer
still writes it and BPF_RINGBUF_DISCARD_BIT if it was discarded; u32 page offset), then
the sample, the whole rounded up to 8 bytes. Every record of our program is one
``struct rts_event``, so the records between the consumer and producer positions are a
fixed-stride array: one numpy view finds the first busy record, checks every length,
and copies the samples out; one store of consumer_pos then hands the space back (as
libbpf's ring_buffer__consume does, record by record).

Memory order: the kernel commits a record by clearing BUSY with an atomic exchange after
writing it. Reading producer_pos, then headers, then data relies on loads not being
reordered with other loads, which holds on x86 (TSO); elsewhere the recorder keeps bcc's
reader (``available()`` says so).

Waiting: the map's file descriptor polls readable when data is there; the kernel wakes a
poller only when the consumer has caught up (adaptive wakeup), so a reader that takes
everything in one batch is woken once per batch, not once per event.
"""

from __future__ import annotations

import mmap
import os
import select

import numpy as np

from retranscope.record.bpfsys import map_info

BUSY_BIT = 1 << 31  # BPF_RINGBUF_BUSY_BIT, include/uapi/linux/bpf.h
DISCARD_BIT = 1 << 30  # BPF_RINGBUF_DISCARD_BIT
HDR_SIZE = 8  # BPF_RINGBUF_HDR_SZ
BPF_MAP_TYPE_RINGBUF = 27


def available() -> str | None:
    """None if direct reading is safe on this machine, else why not."""
    if os.uname().machine not in ("x86_64", "amd64"):
        return f"{os.uname().machine}: direct ring-buffer reads need x86's load ordering"
    return None


class RingReader:
    """Consumer of one BPF ring buffer map holding fixed-size records of ``dtype``."""

    def __init__(self, map_fd: int, dtype: np.dtype):
        info = map_info(map_fd)
        if info is None or info["type"] != BPF_MAP_TYPE_RINGBUF:
            raise OSError(f"fd {map_fd} is not a BPF ring buffer map")
        self.size = int(info["max_entries"])
        self.mask = self.size - 1
        self.page = mmap.PAGESIZE
        self.dtype = dtype
        self.sample_size = dtype.itemsize
        self.stride = (self.sample_size + HDR_SIZE + 7) // 8 * 8
        self._cons_map = mmap.mmap(
            map_fd, self.page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._data_map = mmap.mmap(
            map_fd, self.page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=self.page
        )
        self._cons = np.frombuffer(self._cons_map, dtype=np.uint64, count=1)
        self._prod = np.frombuffer(self._data_map, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._data_map, dtype=np.uint8, offset=self.page)
        self._poll = select.poll()
        self._poll.register(map_fd, select.POLLIN)
        self.discarded = 0

    def pending_bytes(self) -> int:
        return int(self._prod[0]) - int(self._cons[0])

    def wait(self, timeout_ms: int) -> bool:
        """Block until data is there (or timeout); True if there is data."""
        if self.pending_bytes() > 0:
            return True
        self._poll.poll(timeout_ms)
        return self.pending_bytes() > 0

    def read(self) -> np.ndarray:
        """Every committed record from the consumer position on, as one array; the space
        is handed back to the kernel before returning."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        if prod <= cons:
            return np.empty(0, dtype=self.dtype)
        span = prod - cons
        start = cons & self.mask
        if span % self.stride:
            return self._read_walk(cons, prod)
        recs = self._data[start : start + span].reshape(-1, self.stride)
        hdr = recs[:, :4].copy().view("<u4").ravel()
        busy = np.flatnonzero(hdr & BUSY_BIT)
        n = int(busy[0]) if len(busy) else len(hdr)
        hdr = hdr[:n]
        lengths = hdr & ~np.uint32(BUSY_BIT | DISCARD_BIT)
        if n and (lengths != self.sample_size).any():
            return self._read_walk(cons, prod)
        keep = (hdr & DISCARD_BIT) == 0
        out = recs[:n, HDR_SIZE : HDR_SIZE + self.sample_size][keep].copy()
        self.discarded += int(n - keep.sum())
        self._cons[0] = cons + n * self.stride
        return out.view(self.dtype).ravel()

    def _read_walk(self, cons: int, prod: int) -> np.ndarray:
        """Record by record (a record of another size: not ours, skipped and counted)."""
        chunks = []
        data = self._data
        while cons < prod:
            off = cons & self.mask
            length = int(data[off : off + 4].view("<u4")[0])
            if length & BUSY_BIT:
                break
            size = length & ~(BUSY_BIT | DISCARD_BIT)
            if not length & DISCARD_BIT and size == self.sample_size:
                chunks.append(bytes(data[off + HDR_SIZE : off + HDR_SIZE + size]))
            else:
                self.discarded += 1
            cons += (size + HDR_SIZE + 7) // 8 * 8
        self._cons[0] = cons
        return np.frombuffer(b"".join(chunks), dtype=self.dtype)

    def close(self) -> None:
        # numpy views keep the mmaps' buffers exported: drop them first.
        self._cons = self._prod = self._data = None  # type: ignore[assignment]
        for m in (self._cons_map, self._data_map):
            try:
                m.close()
            except BufferError:
                pass
