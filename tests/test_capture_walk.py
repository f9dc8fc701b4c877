"""The capture reader's record walk compiled (analyze/capture/_walk.c) against its Python
fallback: the same records, offsets and stops on every reader fixture, on real captures
cut anywhere, and on garbage."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from test_pcap_reader import DECODABLE, FIXTURES, assert_same_capture

import retranscope.analyze.capture.pcap as pcap
import retranscope.analyze.capture.pcapng as pcapng
from retranscope.analyze.capture import read_capture

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
PCAPNG = [n for n in DECODABLE if n.endswith(".pcapng")]


def _python_walk(monkeypatch) -> None:
    monkeypatch.setattr(pcap, "pcap_caplens", None)
    monkeypatch.setattr(pcapng, "pcapng_epbs", None)


def test_the_compiled_walk_is_built():
    # setup.sh installs gcc and python3-dev and the editable install builds it. Without
    # it the reader gives the same answers in Python, ~100 ns a record slower: the speed
    # figures in docs/scale.md are of the compiled walk.
    assert pcap.pcap_caplens is not None
    assert pcapng.pcapng_epbs is not None


@pytest.mark.parametrize("name", DECODABLE + ["malformed_tcp_options.pcap"])
@pytest.mark.parametrize("chunk_bytes", [40, 333, 1 << 20])
def test_the_python_walk_reads_the_same(name, chunk_bytes, monkeypatch):
    compiled = read_capture(FIXTURES / name, chunk_bytes=chunk_bytes)
    _python_walk(monkeypatch)
    assert_same_capture(read_capture(FIXTURES / name, chunk_bytes=chunk_bytes), compiled)


def _corpus_pcaps() -> list[Path]:
    return sorted(CORPUS.glob("*/*.pcap"))[:12]


def _offsets_both(walker, mv: memoryview, monkeypatch) -> tuple:
    compiled = walker._offsets(mv)
    with monkeypatch.context() as m:
        m.setattr(pcap, "pcap_caplens", None)
        python = walker._offsets(mv)
    return compiled, python


@pytest.mark.parametrize("seed", range(4))
def test_pcap_walk_anywhere_in_real_and_damaged_bytes(seed, monkeypatch):
    # Blocks of real captures starting and ending anywhere (the walk then reads garbage
    # lengths from mid-record bytes, as it does in a damaged file), both byte orders, and
    # bytes with a record's length field overwritten: the same offsets and stop.
    rng = random.Random(seed)
    files = _corpus_pcaps() + [FIXTURES / "big_endian_us.pcap", FIXTURES / "corrupt_caplen.pcap"]
    assert len(files) > 4
    for path in files:
        data = bytearray(path.read_bytes())
        walker = pcap.PcapWalker(path.name, bytes(data[:24]))
        for _ in range(20):
            lo = rng.choice([24, rng.randrange(24, len(data))])
            hi = rng.randrange(lo, len(data) + 1)
            block = bytearray(data[lo:hi])
            if block and rng.random() < 0.3:
                at = rng.randrange(len(block))
                block[at : at + 4] = rng.randbytes(4)[: len(block) - at]
            (c_off, c_end), (p_off, p_end) = _offsets_both(walker, memoryview(block), monkeypatch)
            assert c_end == p_end
            assert np.array_equal(c_off, p_off)


def test_pcap_walk_of_a_record_longer_than_4_gib_field():
    # A captured length of 0xFFFFFFFF (garbage) steps past the block: no wrap-around of
    # the 32-bit field, the walk ends after one record.
    block = bytearray(32)
    block[8:12] = (0xFFFFFFFF).to_bytes(4, "little")
    walker = pcap.PcapWalker("x", bytes.fromhex("d4c3b2a1") + bytes(20))
    offsets, end = walker._offsets(memoryview(block))
    assert end == 16 + 0xFFFFFFFF
    assert offsets.tolist() == [0]


def _scan_both(path: Path, cut: int, eof: bool, monkeypatch) -> tuple:
    data = memoryview(path.read_bytes()[:cut])
    results = []
    for python in (False, True):
        with monkeypatch.context() as m:
            if python:
                m.setattr(pcapng, "pcapng_epbs", None)
            walker = pcapng.PcapngWalker(path.name)
            try:
                scan, end = walker._scan(data, 0, eof)
            except Exception as e:  # noqa: BLE001 - the two must fail alike
                results.append(("raised", type(e).__name__, str(e)))
                continue
            results.append(
                (
                    scan.epb.tolist(),
                    scan.simple,
                    scan.isb_at,
                    repr(scan.stop),
                    None if scan.more is None else (scan.more.offset, scan.more.need),
                    end,
                )
            )
    return tuple(results)


@pytest.mark.parametrize("name", PCAPNG)
def test_pcapng_scan_cut_anywhere(name, monkeypatch):
    # The file cut as a block whose end cuts a block: at every byte of the first 12 of
    # each block and at each block's last byte (where the walk's bounds lie), and at
    # random lengths. The same EPB offsets, other blocks, stop and request for more
    # bytes, in both walks.
    assert PCAPNG
    path = FIXTURES / name
    data = path.read_bytes()
    size = len(data)
    whole = pcapng.PcapngWalker(name)
    scan, _ = whole._scan(memoryview(data), 0, True)
    starts = sorted({*scan.epb.tolist(), *(o for o, _ in scan.simple), *scan.isb_at, 0})
    assert len(starts) > 2
    rng = random.Random(name)
    cuts = {size, *(rng.randrange(1, size) for _ in range(25))}
    for at, nxt in zip(starts, starts[1:] + [size]):
        cuts |= {at + k for k in range(13)} | {nxt - 1}
    for cut in sorted(c for c in cuts if 0 < c <= size):
        for eof in (False, True):
            compiled, python = _scan_both(path, cut, eof, monkeypatch)
            assert compiled == python, (cut, eof)


def test_pcapng_epb_of_the_smallest_length():
    # An EPB of 32 bytes (no packet data, no options) is the shortest the fast path takes
    # (EPB_MIN_BYTES): both walks take it, and stop at a 28-byte one.
    def block(btype: int, body: bytes) -> bytes:
        blen = (12 + len(body)).to_bytes(4, "little")
        return btype.to_bytes(4, "little") + blen + body + blen

    epb = block(pcapng.PCAPNG_EPB, bytes(20))
    short = block(pcapng.PCAPNG_EPB, bytes(16))
    data = memoryview(epb * 3 + short + epb)
    assert len(epb) == pcapng.EPB_MIN_BYTES
    room = np.empty(len(data) // pcapng.EPB_MIN_BYTES + 1, dtype=np.int64)
    count, end = pcapng.pcapng_epbs(
        data, 0, False, pcapng.PCAPNG_EPB, pcapng.EPB_MIN_BYTES, pcapng.MAX_BLOCK_BYTES, room
    )
    assert (count, end) == (3, 96)
    assert room[:count].tolist() == [0, 32, 64]
    walker = pcapng.PcapngWalker("x")
    scan = pcapng._Scan(pcapng.array("q"), [], [])
    assert walker._epbs_py(data, 0, scan) == 96
    assert scan.epb.tolist() == [0, 32, 64]
