"""Decoding chunks on several cores: worker processes, results in submission order.

The walk over the record headers is sequential (each record's length says where the next
one starts), so it stays in the reading process; what the workers do is the decoding of
the walked records (link layer, IP, TCP, options: the bulk of the CPU time). Each job
carries the bytes of its records (copied out of the reader's buffer, which is reused for
the next block) and returns its packet-table chunk, skip counts and notes. The output is
the same for any number of workers: jobs are independent and collected in order.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from retranscope.analyze.capture.decode import Notes, decode
from retranscope.analyze.capture.records import Records


def default_jobs() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _decode_job(data: bytes, recs: Records):
    notes = Notes()
    packets, skipped = decode(np.frombuffer(data, np.uint8), recs, notes)
    return packets, skipped, notes


class _Done:
    """A job decoded on the spot (the serial path): the same interface as a Future."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class Decoder:
    """Decodes Records into packet-table chunks, on ``jobs`` worker processes (1: in this
    process, no pool). ``window``: how many jobs a reader keeps in flight."""

    def __init__(self, jobs: int | None = 1):
        self.jobs = default_jobs() if jobs is None else max(1, int(jobs))
        self._pool: ProcessPoolExecutor | None = None
        self.window = 0 if self.jobs == 1 else 2 * self.jobs

    def submit(self, buf: np.ndarray, recs: Records) -> _Done | Future:
        if self.jobs == 1:
            notes = Notes()
            packets, skipped = decode(buf, recs, notes)
            return _Done((packets, skipped, notes))
        # the bytes of these records only, their offsets moved to match
        lo = int(recs.data_off[0])
        hi = int((recs.data_off + recs.caplen).max())
        part = Records(
            recs.frame,
            recs.data_off - lo,
            recs.caplen,
            recs.origlen,
            recs.ts_ns,
            recs.iface,
            recs.ifaces,
        )
        return self._executor().submit(_decode_job, buf[lo:hi].tobytes(), part)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # fork: the workers start with numpy and this package already imported
            ctx = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
