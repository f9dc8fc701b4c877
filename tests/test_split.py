"""One pcap file read in parts by several processes (analyze/capture/split.py) gives what
one process reading it whole gives: the same spilled packets (frames, tuple numbers, the
anchor) and the same metadata, warnings included, whatever the file's damage and
wherever the parts were guessed to start. Every corpus recording is also analyzed split,
against the golden digests (tests/test_golden.py)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from retranscope.analyze import spill
from retranscope.analyze.capture import open_capture, split
from retranscope.analyze.capture.pcap import PCAP_FILE_HEADER_BYTES, record_start_near
from retranscope.errors import RetranscopeError

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus"
CAPTURE = CORPUS / "random_loss_notso" / "capture.pcap"  # 2.1 MB, one connection


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch):
    monkeypatch.setattr(split, "SPLIT_MIN_PART_BYTES", 1)


def _record_offsets(data: bytes) -> list[int]:
    offsets, off = [], PCAP_FILE_HEADER_BYTES
    while off + 16 <= len(data):
        offsets.append(off)
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    return offsets


def _spilled(path: Path, jobs: int, tmp: Path, progress=None) -> tuple[dict, dict, dict, list]:
    """(metadata, all packets loaded in capture order, tuples, parts joined)."""
    joined: list = []
    absorb = spill._Spiller.absorb

    def counted(self, later, frames_before):
        joined.append(frames_before)
        absorb(self, later, frames_before)

    spill._Spiller.absorb = counted  # type: ignore[method-assign]
    try:
        with open_capture(path, jobs=jobs, progress=progress) as stream:
            sp = spill.spill_capture(stream, tmp, jobs=jobs)
    finally:
        spill._Spiller.absorb = absorb  # type: ignore[method-assign]
    try:
        used = [i for i, b in enumerate(sp.buckets) if b.rows]
        packets, _ = sp.load(used)
        return sp.meta.to_dict(), packets, sp.tuples, joined
    finally:
        sp.close()


def _same_read(path: Path, tmp_path: Path, jobs: int = 3) -> list:
    whole = _spilled(path, 1, tmp_path)
    parts = _spilled(path, jobs, tmp_path)
    assert parts[0] == whole[0]  # metadata and warnings
    for got, want in ((parts[1], whole[1]), (parts[2], whole[2])):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    return parts[3]


@pytest.mark.parametrize("jobs", [2, 3, 5])
def test_parts_give_what_one_process_reads(jobs, tmp_path):
    joined = _same_read(CAPTURE, tmp_path, jobs)
    assert len(joined) == jobs - 1
    assert joined == sorted(joined) and joined[0] > 0  # frames before each part


def test_a_capture_of_many_connections(tmp_path):
    """Tuples first seen in a later part are numbered after the earlier parts' own, as
    one process numbers them; tuples seen in several parts keep one number."""
    data = b"".join(
        (CORPUS / name / "capture.pcap").read_bytes()[PCAP_FILE_HEADER_BYTES if i else 0 :]
        for i, name in enumerate(["multi_flow_rtt50", "multi_flow_rtt100", "multi_flow_rtt50"])
    )
    path = tmp_path / "many.pcap"
    path.write_bytes(data)
    assert len(_same_read(path, tmp_path, 4)) == 3


def test_a_capture_cut_inside_its_last_record(tmp_path):
    """The last part stops where the file ends inside a record: the warning numbers the
    record as one process reading the file does."""
    data = CAPTURE.read_bytes()
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: _record_offsets(data)[-1] + 20])
    _same_read(path, tmp_path)
    meta = _spilled(path, 3, tmp_path)[0]
    assert meta["truncated"] and any("ends inside record" in w for w in meta["warnings"])


def test_a_corrupt_record_in_a_middle_part(tmp_path):
    """A record header no writer produces, in the second of three parts: reading stops
    there, as one process stops, and the third part is dropped."""
    data = bytearray(CAPTURE.read_bytes())
    offsets = _record_offsets(bytes(data))
    bad = offsets[len(offsets) // 2 + 10]
    struct.pack_into("<I", data, bad + 8, 0x7FFFFFFF)  # caplen
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(bytes(data))
    assert len(_same_read(path, tmp_path, 3)) == 1
    meta = _spilled(path, 3, tmp_path)[0]
    assert any("is corrupt" in w for w in meta["warnings"])


def test_a_wrong_guess_is_read_on(tmp_path, monkeypatch):
    """A part guessed to start inside a record: the part before finds no record ending
    there, reads on to the file's end itself, and the later part is dropped."""
    monkeypatch.setattr(split, "record_start_near", lambda *a: record_start_near(*a) + 1)
    assert _same_read(CAPTURE, tmp_path, 2) == []


def test_the_guess_finds_record_starts():
    data = CAPTURE.read_bytes()
    offsets = set(_record_offsets(data))
    with open(CAPTURE, "rb") as f:
        plan = split.plan_split(str(CAPTURE), 64)  # no more parts than SPLIT_MAX_PARTS
        assert plan is not None and len(plan.starts) == split.SPLIT_MAX_PARTS - 1
        assert all(s in offsets for s in plan.starts)
        walker = split.PcapWalker(str(CAPTURE), data[:64])
        near = len(data) // 2
        got = record_start_near(f.fileno(), walker, near, len(data))
    assert got == min(o for o in offsets if o >= near)


@pytest.mark.parametrize("path", [CAPTURE, CORPUS / "random_loss__any" / "capture.pcap"])
def test_the_first_look_gives_what_the_whole_search_gives(path, monkeypatch):
    """record_start_near looks in RESYNC_FIRST_READ_BYTES first and reads on only where
    that cannot decide: the same offset as the whole search, wherever it starts (here
    with first looks so small that chains are cut by them, and offsets near the end)."""
    import random

    from retranscope.analyze.capture import pcap

    data = path.read_bytes()
    walker = split.PcapWalker(str(path), data[:64])
    rng = random.Random(3)
    nears = [rng.randrange(24, len(data)) for _ in range(40)] + [len(data) - 3000]
    with open(path, "rb") as f:
        fd = f.fileno()
        whole = []
        for near in nears:
            got = pcap._start_in(
                os.pread(fd, pcap.RESYNC_READ_BYTES, near), walker, near, len(data), True
            )
            whole.append(None if got is None else near + got)
        for first in (pcap.RESYNC_FIRST_READ_BYTES, 4096, 600):
            monkeypatch.setattr(pcap, "RESYNC_FIRST_READ_BYTES", first)
            assert [record_start_near(fd, walker, n, len(data)) for n in nears] == whole


def test_a_false_chain_cut_by_the_first_look_is_judged_on_the_whole_read(tmp_path, monkeypatch):
    """A payload that holds 20 sane-looking record headers, then garbage: a chain the
    first look cuts after 18 (enough to be taken were the read all there is) and the
    whole read breaks; the start found is the next true record's."""
    from retranscope.analyze.capture import pcap

    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # Ethernet, µs
    fake = struct.pack("<IIII", 0, 1, 0, 1) * 20 + b"\xff" * 16
    recs = [
        struct.pack("<IIII", 1_700_000_000 + i, 0, 1000, 1000)
        + (fake + bytes(1000 - len(fake)) if i == 100 else bytes(1000))  # zeros: not sane
        for i in range(200)
    ]
    data = head + b"".join(recs)
    offsets = _record_offsets(data)
    at = offsets[100]
    path = tmp_path / "fake.pcap"
    path.write_bytes(bytes(data))
    walker = split.PcapWalker(str(path), data[:64])
    monkeypatch.setattr(pcap, "RESYNC_FIRST_READ_BYTES", 300)  # 18 of the fake headers
    with open(path, "rb") as f:
        got = record_start_near(f.fileno(), walker, at + 16, len(data))
    assert got == min(o for o in offsets if o > at)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x0a\x0d\x0d\x0a" + bytes(60), b"\x1f\x8b" + bytes(100)],
    ids=["empty", "pcapng", "gzip"],
)
def test_what_is_not_split(content, tmp_path):
    path = tmp_path / "x"
    path.write_bytes(content)
    assert split.plan_split(str(path), 4) is None


def test_progress_counts_every_part(tmp_path):
    seen = []
    _spilled(CAPTURE, 3, tmp_path, progress=seen.append)
    last = seen[-1]
    assert last.bytes_done == last.bytes_total == os.path.getsize(CAPTURE)
    whole = _spilled(CAPTURE, 1, tmp_path)[0]
    assert last.records_done == whole["records"]
    assert last.tcp_packets_done == whole["tcp_packets"]


def test_a_part_whose_process_fails_is_one_line(tmp_path, monkeypatch):
    """The error of a part's process is raised here, the spill's files removed."""

    def fails(plan, k, chunk_bytes=0):
        raise RetranscopeError(f"cannot read part {k}")

    monkeypatch.setattr(spill, "part_reader", fails)
    with pytest.raises(RetranscopeError, match="cannot read part 1"):
        _spilled(CAPTURE, 2, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("given", ["file", "set"])
def test_a_part_whose_process_dies_is_read_again_here(given, tmp_path, monkeypatch):
    """A part's (or run's) process that ends without its packets (killed: out of memory,
    say): the capture is read again by this process, with what one process reads and a
    warning that says so; no spill file is left."""
    source = CAPTURE if given == "file" else _rotated(tmp_path)
    for d in ("one", "parts"):
        (tmp_path / d).mkdir()
    whole = _spilled(source, 1, tmp_path / "one")  # type: ignore[arg-type]
    monkeypatch.setattr(spill, "part_reader", lambda *a, **k: os._exit(3))
    monkeypatch.setattr(spill, "_spill_run", lambda *a, **k: os._exit(3))
    got = _spilled(source, 2, tmp_path / "parts")  # type: ignore[arg-type]
    said = [w for w in got[0]["warnings"] if "exit code 3" in w]
    assert len(said) == 1 and "read again, by one process" in said[0]
    got[0]["warnings"].remove(said[0])
    assert got[0] == whole[0]
    for name in whole[1]:
        np.testing.assert_array_equal(got[1][name], whole[1][name], err_msg=name)
    assert not list((tmp_path / "parts").iterdir())


# -- capture sets: runs of files, a process each --------------------------------------


def _records(path: Path) -> tuple[bytes, list[bytes]]:
    data = path.read_bytes()
    offsets = _record_offsets(data)
    ends = [*offsets[1:], len(data)]
    return data[:PCAP_FILE_HEADER_BYTES], [data[a:b] for a, b in zip(offsets, ends)]


def _write_set(d: Path, files: list[tuple[str, bytes, list[bytes]]]) -> list[Path]:
    """Files of a set (name, pcap header, records); a name ending in .gz is compressed."""
    import gzip

    d.mkdir(exist_ok=True)
    paths = []
    for name, header, recs in files:
        body = header + b"".join(recs)
        (d / name).write_bytes(gzip.compress(body, mtime=0) if name.endswith(".gz") else body)
        paths.append(d / name)
    return paths


def _rotated(tmp_path: Path) -> list[Path]:
    """Two recordings, one Ethernet, one Linux cooked (SLL2), each cut in consecutive
    files as tcpdump -C rotates them, two of them gzip-compressed: their interfaces are
    numbered through the set, and their flows span files."""
    eth_head, eth = _records(CAPTURE)
    sll_head, sll = _records(CORPUS / "random_loss__any" / "capture.pcap")
    cut = [0, len(eth) // 3, len(eth) // 2, len(eth)]
    files = [(f"eth.pcap{k}", eth_head, eth[cut[k] : cut[k + 1]]) for k in range(3)]
    files[1] = ("eth.pcap1.gz", *files[1][1:])
    half = len(sll) // 2
    files += [("sll.pcap0", sll_head, sll[:half]), ("sll.pcap1.gz", sll_head, sll[half:])]
    return _write_set(tmp_path / "set", files)


@pytest.mark.parametrize("jobs", [2, 3, 5])
def test_a_set_read_in_runs_of_files_gives_what_one_process_reads(jobs, tmp_path):
    paths = _rotated(tmp_path)
    from retranscope.analyze.capture.sets import order_by_first_packet

    plan = split.plan_set_split(order_by_first_packet([str(p) for p in paths]), jobs)
    assert plan is not None and 2 <= len(plan.bounds) <= jobs  # runs of about equal bytes
    assert len({n for m in plan.maps for n in m}) >= 2  # Ethernet's, then SLL2's
    joined = _same_read(paths, tmp_path, jobs)  # type: ignore[arg-type]
    assert len(joined) == len(plan.bounds) - 1 and joined == sorted(joined)


def test_runs_that_overlap_in_time_are_read_again_by_one_process(tmp_path, monkeypatch):
    """A set whose files are not one after the other where the runs meet (the last
    files interleave): one stream merges them by timestamp, and so the set is read
    again by one process, with the outputs and warnings of one."""
    head, recs = _records(CAPTURE)
    cut = len(recs) * 4 // 10
    files = [("a.pcap", head, recs[:cut])]
    files += [("b.pcap", head, recs[cut::2]), ("c.pcap", head, recs[cut + 1 :: 2])]
    paths = _write_set(tmp_path / "set", files)
    restarts = []
    restart = spill.CaptureStream.restart
    monkeypatch.setattr(
        spill.CaptureStream, "restart", lambda self: restarts.append(1) or restart(self)
    )
    _same_read(paths, tmp_path, 3)  # type: ignore[arg-type]
    assert restarts == [1]
    meta = _spilled(paths, 3, tmp_path)[0]  # type: ignore[arg-type]
    assert any("overlap in time" in w for w in meta["warnings"])


def test_what_a_set_is_cut_into(tmp_path):
    """Runs of consecutive files of about equal bytes, a compressed file counted at
    COMPRESSED_EXPANSION times its size; pcap and pcapng alike; one file is no set."""
    from retranscope.analyze.capture.sets import InputFile

    big, small = tmp_path / "big", tmp_path / "small"
    big.write_bytes(bytes(1000))
    small.write_bytes(bytes(100))
    files = [
        InputFile(str(big), 1, "pcap"),
        InputFile(str(small), 2, "pcapng", compression="gzip"),  # counts 1,000
        InputFile(str(small), 3, "pcap"),
        InputFile(str(big), 4, "pcap"),
    ]
    plan = split.plan_set_split(files, 3)
    assert plan is not None and plan.bounds == [0, 1, 3]
    assert split.plan_set_split(files[:1], 2) is None


def test_progress_counts_every_run(tmp_path):
    paths = _rotated(tmp_path)
    seen = []
    meta = _spilled(paths, 3, tmp_path, progress=seen.append)[0]  # type: ignore[arg-type]
    last = seen[-1]
    assert last.bytes_done == last.bytes_total == sum(os.path.getsize(p) for p in paths)
    assert (last.records_done, last.tcp_packets_done) == (meta["records"], meta["tcp_packets"])


@pytest.mark.parametrize("given", ["file", "set"])
def test_analyze_reads_a_spilled_capture_in_parts_by_default(given, tmp_path, monkeypatch):
    """run_analysis (the CLI's) with no --decode-jobs: a pcap file it spills is read in
    as many parts as there are cores, a set of pcap files in as many runs of files,
    with the outputs of one process reading it."""
    import pyarrow.parquet as pq

    from retranscope.analyze.capture import parallel
    from retranscope.analyze.run import run_analysis

    monkeypatch.setattr(spill, "SPILL_MIN_BYTES", 1)
    monkeypatch.setattr(parallel, "default_jobs", lambda: 3)
    source = CAPTURE if given == "file" else _rotated(tmp_path)
    joined = []
    absorb = spill._Spiller.absorb
    monkeypatch.setattr(
        spill._Spiller, "absorb", lambda self, *a: joined.append(1) or absorb(self, *a)
    )
    run_analysis(source, None, tmp_path / "parts")  # type: ignore[arg-type]
    assert len(joined) == 2
    run_analysis(source, None, tmp_path / "one", decode_jobs=1)  # type: ignore[arg-type]
    assert len(joined) == 2
    for name in ("retransmits.parquet", "flows.parquet"):
        assert pq.read_table(tmp_path / "parts" / name).equals(
            pq.read_table(tmp_path / "one" / name)
        )
    summaries = [
        (tmp_path / d / "summary.json").read_text().replace(str(tmp_path / d), "")
        for d in ("parts", "one")
    ]
    assert summaries[0] == summaries[1]


def _ng_generator():
    import importlib.util

    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location(
        "make_reader_fixtures", here / "fixtures" / "make_reader_fixtures.py"
    )
    gen = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    return gen


def _as_pcapng(
    header: bytes, recs: list[bytes], late_idb: int | None = None, snaplen: int = 262144
) -> bytes:
    """The records as one pcapng section (µs, the pcap header's link type); with
    ``late_idb``, a second interface described after that many records."""
    ng = _ng_generator().NgWriter("<")
    ng.shb()
    linktype = struct.unpack_from("<I", header, 20)[0] & 0xFFFF
    ng.idb(linktype, snaplen=snaplen)
    for i, r in enumerate(recs):
        if i == late_idb:
            ng.idb(linktype, snaplen=1000)  # described the way no file's first one is
        sec, usec, caplen, wire = struct.unpack_from("<IIII", r)
        ng.epb(0, sec * 10**6 + usec, r[16 : 16 + caplen], wirelen=wire)
    return b"".join(ng.blocks)


@pytest.mark.parametrize("late", [False, True])
def test_a_pcapng_set_is_read_in_runs_unless_an_interface_comes_late(late, tmp_path, monkeypatch):
    """A set of pcapng files is numbered from the interfaces their first blocks describe
    (where dumpcap and tcpdump write them). A file that describes another one later on
    numbers the set's interfaces otherwise: the set is then read again by one process.
    Either way, what one process reads."""
    head, recs = _records(CAPTURE)
    cut = [0, len(recs) // 3, 2 * len(recs) // 3, len(recs)]
    d = tmp_path / "set"
    d.mkdir()
    paths = []
    for k in range(3):
        body = recs[cut[k] : cut[k + 1]]
        late_at = len(body) * 2 // 3 if late and k == 1 else None
        paths.append(d / f"cap_{k}.pcapng")
        # the last file's interface is its own in the set: numbered after the late one
        snaplen = 65535 if k == 2 else 262144
        paths[-1].write_bytes(_as_pcapng(head, body, late_at, snaplen))
    restarts = []
    restart = spill.CaptureStream.restart
    monkeypatch.setattr(
        spill.CaptureStream, "restart", lambda self: restarts.append(1) or restart(self)
    )
    _same_read(paths, tmp_path, 3)  # type: ignore[arg-type]
    assert restarts == ([1] if late else [])


def test_compressed_files_are_read_ahead_only_by_a_process_reading_alone(tmp_path):
    """The decompressing thread (ByteStream.read_ahead) where one process reads the set,
    not where each reads a run of it beside the others: the cores are taken there."""
    paths = [str(p) for p in _rotated(tmp_path)]
    gz = [i for i, p in enumerate(paths) if p.endswith(".gz")]
    with open_capture(paths) as alone:
        for _ in alone:
            pass
        order = [r.stream.name for r in alone.readers]
        assert all(alone.readers[order.index(paths[i])].read_ahead for i in gz)
    with open_capture(paths) as first:
        plan = first.split(2)
        assert isinstance(plan, split.SetPlan)
        for _ in first:
            pass
        assert first.readers and not any(r.read_ahead for r in first.readers)
    with open_capture([f.path for f in plan.run(1)]) as run:  # as spill._spill_run
        run.set_run(plan, 1)
        for _ in run:
            pass
        assert run.readers and not any(r.read_ahead for r in run.readers)
