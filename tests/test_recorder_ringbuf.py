"""record/ringbuf.py, the direct reader of a BPF ring buffer, against a real one: a
one-page ring (19 records) fed on demand by a BPF program (tests/bpf/ring_feeder.bpf.c,
one record per getppid() of this process), so records wrap around its end again and
again, some are discarded, and some are of another size."""

from __future__ import annotations

import ctypes as ct
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent


@pytest.fixture
def feeder():
    from bcc import BPF

    from retranscope.bpf import BPF_DIR
    from retranscope.record.probe import ensure_tracefs
    from retranscope.record.ringbuf import RingReader, available
    from retranscope.schemas.events import RAW_DTYPE

    if available() is not None:
        pytest.skip(available())
    ensure_tracefs()
    b = BPF(
        src_file=str(HERE / "bpf" / "ring_feeder.bpf.c").encode(),
        cflags=[f"-I{BPF_DIR}", f"-DFEEDER_TGID={os.getpid()}"],
    )
    reader = RingReader(b[b"ring"].map_fd, RAW_DTYPE)

    def feed(n: int, mode: int = 0) -> None:
        b[b"ctl"][ct.c_int(0)] = ct.c_uint64(mode)
        for _ in range(n):
            os.getppid()

    yield reader, feed
    reader.close()
    b.cleanup()


def test_records_come_out_in_order_across_many_wraps(feeder):
    reader, feed = feeder
    assert reader.size == 4096 and reader.stride == 208  # a 200-byte event + 8-byte header
    got = []
    for _ in range(30):  # 30 x 13 records through a ring of 19: it wraps ~20 times
        feed(13)
        got.append(reader.read()["ts_mono_ns"])
    seq = np.concatenate(got)
    assert seq.tolist() == list(range(30 * 13))
    assert reader.pending_bytes() == 0 and len(reader.read()) == 0


def test_a_full_ring_refuses_and_the_reader_frees_it(feeder):
    reader, feed = feeder
    feed(25)  # 6 more than fit (4096 // 208): the kernel refuses them
    first = reader.read()["ts_mono_ns"].tolist()
    assert first == list(range(19))
    feed(3)
    assert reader.read()["ts_mono_ns"].tolist() == [25, 26, 27]


def test_discarded_and_foreign_records_are_skipped_and_counted(feeder):
    reader, feed = feeder
    feed(3)
    feed(2, mode=2)  # discarded by the program
    feed(2)
    out = reader.read()["ts_mono_ns"].tolist()
    assert out == [0, 1, 2, 5, 6] and reader.discarded == 2
    feed(2, mode=1)  # records of another size: the record-by-record walk
    feed(2)
    out = reader.read()["ts_mono_ns"].tolist()
    assert out == [9, 10] and reader.discarded == 4


def test_wait_blocks_until_a_record_lands(feeder):
    reader, feed = feeder
    t0 = time.monotonic()
    assert reader.wait(100) is False
    assert time.monotonic() - t0 >= 0.09
    feed(1)
    assert reader.wait(1000) is True and len(reader.read()) == 1
