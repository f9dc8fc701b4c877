"""A capture spilled to disk by 4-tuple and classified a shard at a time (analyze/spill.py)
gives what the capture read whole into memory gives: the same Parquet tables and
summary.json, through run_analysis, on corpus recordings of one and several 4-tuples,
read in many small chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from retranscope.analyze import shards, spill
from retranscope.analyze.capture import chunks
from retranscope.analyze.run import run_analysis

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus"
RECORDINGS = [
    "multi_flow_rtt50",
    "multi_flow_rtt100",
    "random_loss_v6_notso",
    "nosack_heavy_rtt30",
    "reno_ts_off_loss",
    "tail_drop_tlp",
    "syn_drop_v6",
]


def _outputs(out: Path) -> dict[str, object]:
    got: dict[str, object] = {
        name: pq.read_table(out / name) for name in ("retransmits.parquet", "flows.parquet")
    }
    got["summary.json"] = (out / "summary.json").read_text()
    return got


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("name", RECORDINGS)
def test_spilled_capture_gives_what_the_whole_capture_gives(name, jobs, tmp_path, monkeypatch):
    """Spilled, in many blocks and shards, classified in turn or on two forked workers:
    the outputs of the whole capture classified at once."""
    pcap = CORPUS / name / "capture.pcap"
    run_analysis(pcap, None, tmp_path / "memory", spill=False)
    want = _outputs(tmp_path / "memory")
    monkeypatch.setattr(chunks, "DECODE_CHUNK_RECORDS", 300)  # many chunks, many blocks
    monkeypatch.setattr(spill, "SHARD_PACKETS", 500)  # several shards
    forked: list[int] = []  # shards classified on workers
    on_workers = spill.SpilledCapture._classify_forked

    def counted(self, groups, *args):
        forked.append(len(groups))
        return on_workers(self, groups, *args)

    monkeypatch.setattr(spill.SpilledCapture, "_classify_forked", counted)
    run_analysis(pcap, None, tmp_path / "spilled", spill=True, jobs=jobs)
    if jobs == 1:
        assert not forked
    elif name.startswith("multi_flow"):  # several connections, so several shards
        assert forked and forked[0] >= 2
    got = _outputs(tmp_path / "spilled")
    for key, value in want.items():
        if key == "summary.json":
            assert got[key] == value
        else:
            assert value.equals(got[key]), key
    # the spill files are gone; only the outputs are left
    assert sorted(p.name for p in (tmp_path / "spilled").iterdir()) == sorted(
        p.name for p in (tmp_path / "memory").iterdir()
    )


def test_shards_follow_the_packet_budget(tmp_path, monkeypatch):
    from retranscope.analyze.capture import open_capture

    monkeypatch.setattr(chunks, "DECODE_CHUNK_RECORDS", 300)
    monkeypatch.setattr(shards, "SHARD_PACKETS", 600)
    monkeypatch.setattr(spill, "SHARD_PACKETS", 600)
    with open_capture(CORPUS / "multi_flow_rtt50" / "capture.pcap") as stream:
        spilled = spill.spill_capture(stream, tmp_path)
    try:
        n = spilled.n_packets
        assert n == spilled.meta.tcp_packets
        groups = spilled.shards()
        assert len(groups) == -(-n // 600)  # 4 tuples, 2,363 packets: 4 shards of one each
        assert sorted(i for g in groups for i in g) == [
            i for i, b in enumerate(spilled.buckets) if b.rows
        ]
        table, borrowed = spilled.load(groups[0])
        assert (table["frame"][1:] > table["frame"][:-1]).all()  # capture order
        assert int(table["ts_ns"].min()) == int(spilled.anchor["ts_ns"][0])
    finally:
        spilled.close()
    assert not list(tmp_path.iterdir())


def test_a_refused_capture_leaves_no_output_directory(tmp_path):
    from retranscope.errors import NotACapture

    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    with pytest.raises(NotACapture):
        run_analysis(bad, None, tmp_path / "out", spill=True)
    assert not (tmp_path / "out").exists()


def test_empty_capture_spilled(tmp_path):
    """A capture without a TCP packet gives the empty outputs either way."""
    import struct

    empty = tmp_path / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    run_analysis(empty, None, tmp_path / "memory", spill=False)
    run_analysis(empty, None, tmp_path / "spilled", spill=True)
    assert _outputs(tmp_path / "memory")["summary.json"] == _outputs(tmp_path / "spilled")[
        "summary.json"
    ].replace(str(tmp_path / "spilled"), str(tmp_path / "memory"))


def test_no_space_to_spill_is_one_clear_error(tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    from retranscope.cli import app

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill.tempfile, "TemporaryDirectory", full)
    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    r = CliRunner().invoke(
        app, ["analyze", "--pcap", str(pcap), "-o", str(tmp_path / "o"), "--spill"]
    )
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "--no-spill" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("direct", [0, 10, spill.TupleNumbers.DIRECT_TUPLES])
@pytest.mark.parametrize("recent", [3, spill.TupleNumbers.RECENT_TUPLES])
def test_tuple_numbers_name_each_rows_tuple_and_direction_across_chunks(
    monkeypatch, recent, direct
):
    """A spilled row carries its 4-tuple's number instead of its addresses: over chunks
    that bring new tuples and old ones, both directions, v4 and v6, every number names
    the row's own tuple and the direction bit its sender; also when the table of recent
    tuples is merged into the big one as chunks come, and whether rows are looked up one
    by one (few tuples known), once a tuple, or first one way then the other."""
    monkeypatch.setattr(spill.TupleNumbers, "RECENT_TUPLES", recent)
    monkeypatch.setattr(spill.TupleNumbers, "DIRECT_TUPLES", direct)
    from retranscope.analyze.flows import _mix64
    from retranscope.analyze.shards import canonical_tuple

    rng = np.random.default_rng(7)
    ends = [(0, (0xFFFF << 32) | int(a), int(p)) for a, p in rng.integers(1, 9, (6, 2))]
    ends += [(0x20010DB8 << 32, int(a), 443) for a in rng.integers(1, 4, 3)]
    numbers = spill.TupleNumbers()
    for chunk_no in range(4):
        n = 500
        i, j = rng.integers(0, len(ends), n), rng.integers(0, len(ends), n)
        keep = i != j
        src = [ends[k] for k in i[keep]]
        dst = [ends[k] for k in j[keep]]
        chunk = {
            "saddr_hi": np.array([e[0] for e in src], np.uint64),
            "saddr_lo": np.array([e[1] for e in src], np.uint64),
            "sport": np.array([e[2] for e in src], np.uint16),
            "daddr_hi": np.array([e[0] for e in dst], np.uint64),
            "daddr_lo": np.array([e[1] for e in dst], np.uint64),
            "dport": np.array([e[2] for e in dst], np.uint16),
        }
        first, canon = canonical_tuple(chunk)
        code = numbers.code(_mix64(canon), canon, first)
        assert code.dtype == np.uint32
        table = numbers.table()
        number, by_b = code >> 1, (code & 1) == 1
        for col, name in zip(canon, spill.TupleNumbers.FIELDS):
            assert np.array_equal(table[name][number], col), (chunk_no, name)
        s_lo = np.where(by_b, table["b_lo"][number], table["a_lo"][number])
        assert np.array_equal(s_lo, chunk["saddr_lo"])
    known = np.concatenate([numbers._hash, numbers._recent_hash])
    assert numbers.n == len(np.unique(known)) == len(known)
    if recent == 3:
        assert len(numbers._hash) > 0  # merged at least once


def test_two_tuples_with_one_hash_are_one_clear_error():
    """Rows find their number by a 64-bit hash; a collision would merge two connections,
    so each row is checked against its number's tuple and a collision refuses the spill."""
    from retranscope.errors import RetranscopeError

    canon = [
        np.array(v, dtype)
        for v, dtype in zip(
            ([0, 0], [1, 2], [80, 80], [0, 0], [3, 3], [9, 9]),
            (np.uint64, np.uint64, np.uint16, np.uint64, np.uint64, np.uint16),
        )
    ]
    same_hash = np.array([5, 5], np.uint64)
    with pytest.raises(RetranscopeError, match="--no-spill"):
        spill.TupleNumbers().code(same_hash, canon, np.array([True, True]))


def test_workers_hold_no_more_shards_than_memory_allows(tmp_path, monkeypatch):
    """--jobs N asks for N processes; shards are cut N times smaller than one process's
    largest, and held at once no more than: by default (None) that largest shard, so
    that every core costs no memory; for an explicit N the memory available. Where no two
    shards fit at once: one process, the shards of one."""
    from retranscope.analyze.capture import open_capture

    monkeypatch.setattr(spill, "SHARD_PACKETS", 1200)
    with open_capture(CORPUS / "multi_flow_rtt50" / "capture.pcap") as stream:
        spilled = spill.spill_capture(stream, tmp_path)  # 4 tuples, 2,363 packets
    try:
        whole = spilled.shards()
        largest = max(spilled.packets_of(g) for g in whole)
        per = spill.SHARD_PEAK_BYTES_PER_PACKET
        monkeypatch.setattr(spill, "default_jobs", lambda: 2)
        for room, jobs, workers, budget in [
            (None, None, 2, largest),  # every core, in one process's memory
            (100 * largest * per, None, 2, largest),
            (None, 8, 4, None),  # an explicit N: the shards (4 tuples) bound it
            (100 * largest * per, 3, 3, 100 * largest),
            (1 * per, 8, 1, None),  # no two fit: one process, in turn
            (100 * largest * per, 1, 1, None),
        ]:
            monkeypatch.setattr(spill, "available_memory_bytes", lambda room=room: room)
            shards, got_workers, got_budget = spilled._plan(jobs)
            assert (got_workers, got_budget) == (workers, budget), (room, jobs)
            assert sorted(i for g in shards for i in g) == sorted(i for g in whole for i in g)
            if workers == 1:
                assert shards == whole
            else:
                assert max(spilled.packets_of(g) for g in shards) < largest
                # each of one process's shards is cut: its pieces fit at once
                for g in whole:
                    pieces = [p for p in shards if set(p) <= set(g)]
                    assert sum(spilled.packets_of(p) for p in pieces) <= largest
    finally:
        spilled.close()


def test_the_default_classifies_on_every_core_in_one_process_s_memory(tmp_path, monkeypatch):
    """With --jobs left out, the shards classified at once (as the parent waits on them)
    never hold more packets than the largest shard one process would classify; two run
    at once; the outputs are those of one process."""
    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    run_analysis(pcap, None, tmp_path / "one", spill=True, jobs=1)
    monkeypatch.setattr(spill, "SHARD_PACKETS", 1200)
    monkeypatch.setattr(spill, "default_jobs", lambda: 2)
    plans: list = []
    plan = spill.SpilledCapture._plan

    def planned(self, jobs):
        out = plan(self, jobs)
        plans.append((out, [self.packets_of(s) for s in out[0]]))
        return out

    held: list[tuple[int, int]] = []  # (shards running, their packets) at each wait
    wait = spill.wait

    def watched(running, **kw):
        rows = plans[0][1]
        held.append((len(running), sum(rows[i] for i in running.values())))
        return wait(running, **kw)

    monkeypatch.setattr(spill.SpilledCapture, "_plan", planned)
    monkeypatch.setattr(spill, "wait", watched)
    run_analysis(pcap, None, tmp_path / "all", spill=True)
    (shards, workers, budget), rows = plans[0]
    assert workers == 2 and budget is not None and len(shards) >= 3
    assert max(n for n, _ in held) == 2
    assert all(packets <= budget for n, packets in held if n > 1)
    for name in ("retransmits.parquet", "flows.parquet"):
        assert pq.read_table(tmp_path / "all" / name).equals(pq.read_table(tmp_path / "one" / name))
    assert (tmp_path / "all" / "summary.json").read_text().replace("/all", "/one") == (
        tmp_path / "one" / "summary.json"
    ).read_text()


def test_available_memory_sees_the_memory_cgroup_the_process_is_in(tmp_path):
    """Under a memory cgroup's limit (v1 here: memory.limit_in_bytes), what the process
    may still use is at most that limit, whatever the machine has free."""
    import os
    import subprocess
    import sys
    import uuid

    root = Path("/sys/fs/cgroup/memory")
    if os.geteuid() != 0 or not (root / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and a cgroup v1 memory controller")
    group = root / f"retranscope-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(300 << 20))
        code = "from retranscope.analyze.memory import available_memory_bytes as a; print(a())"
        script = f'echo $$ > "{group}/cgroup.procs" && exec "$@"'
        out = subprocess.run(
            ["sh", "-c", script, "sh", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        room = int(out)
        assert 0 < room <= 300 << 20
    finally:
        group.rmdir()  # empty: its one process has exited and been waited for


def test_outputs_written_a_row_group_at_a_time_are_the_same_tables(tmp_path, monkeypatch):
    """The outputs are converted to Arrow and written a row group at a time (so that a
    capture of many connections never holds all its flows as Arrow arrays at once): the
    tables read back are those written whole, nulls, strings and metadata included."""
    from retranscope.analyze import outputs

    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    run_analysis(pcap, None, tmp_path / "whole")
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 3)
    run_analysis(pcap, None, tmp_path / "groups")
    for name in ("retransmits.parquet", "flows.parquet"):
        whole, groups = (pq.ParquetFile(tmp_path / d / name) for d in ("whole", "groups"))
        assert groups.metadata.num_row_groups > 1
        assert groups.read().equals(whole.read())
        assert groups.schema_arrow.metadata == whole.schema_arrow.metadata


@pytest.mark.parametrize("jobs", [1, 2])
def test_spilled_outputs_are_streamed_from_the_shards_in_row_groups(tmp_path, monkeypatch, jobs):
    """A spilled capture's outputs are written from its shards' stored rows a row group at
    a time (analyze/streamed.py): with groups of a few rows, each read from several
    shards' files, and the object columns' pickled runs shorter than a group, the tables
    are those of the capture classified whole in memory. And nothing the shards stored is
    left behind."""
    from retranscope.analyze import outputs, stored

    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    run_analysis(pcap, None, tmp_path / "memory", spill=False)
    want = _outputs(tmp_path / "memory")
    monkeypatch.setattr(spill, "SHARD_PACKETS", 400)
    monkeypatch.setattr(spill, "SPILL_BUCKETS_MIN", spill.SPILL_BUCKETS)  # the most buckets
    monkeypatch.setattr(outputs, "ROW_GROUP_ROWS", 3)
    monkeypatch.setattr(stored, "OBJECT_RUN_ROWS", 2)
    finished: list[int] = []
    finish = spill.finish_part

    def counted(part, directory, number, shards):
        finished.append(number)
        return finish(part, directory, number, shards)

    monkeypatch.setattr(spill, "finish_part", counted)
    run_analysis(pcap, None, tmp_path / "spilled", spill=True, jobs=jobs)
    if jobs == 1:  # forked workers' calls are not seen here
        assert sorted(finished) == list(range(len(finished))) and len(finished) >= 3
    got = _outputs(tmp_path / "spilled")
    for name in ("retransmits.parquet", "flows.parquet"):
        assert pq.ParquetFile(tmp_path / "spilled" / name).metadata.num_row_groups > 2
        assert got[name].equals(want[name]), name
    assert got["summary.json"] == want["summary.json"]
    assert sorted(p.name for p in (tmp_path / "spilled").iterdir()) == sorted(
        p.name for p in (tmp_path / "memory").iterdir()
    )


def test_a_block_written_short_goes_on_from_where_it_stopped(tmp_path, monkeypatch):
    """A bucket's block is one writev of its columns; one that stops short (a signal,
    a disk filling) is finished a column at a time from the byte it stopped at."""
    import os

    parts = [np.arange(10, dtype=np.uint16), np.arange(5, dtype=np.int64), np.array([True, False])]
    want = b"".join(p.tobytes() for p in parts)
    for stop in (0, 7, 20, 21, 59):
        path = tmp_path / f"b{stop}"
        monkeypatch.setattr(os, "writev", lambda fd, views, n=stop: os.write(fd, want[:n]))
        with open(path, "wb", buffering=0) as f:
            spill._write_all(f, parts)
        assert path.read_bytes() == want, stop


@pytest.mark.root
def test_a_disk_that_fills_under_the_analysis_is_one_line_and_leaves_nothing(tmp_path):
    """A real full disk (a small tmpfs, filled but for a little room) under --out, at
    every step of a spilled analysis: the spill, the shards' stored rows, the outputs.
    Each run ends with exit 0 and a complete analysis, or exit 1, one line, no
    traceback, and no output left behind (nothing presented as an analysis)."""
    import subprocess
    import sys

    from filesystems import small_fs

    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    seen: dict[str, int] = {}
    with small_fs(tmp_path / "fs", "1200k") as fs:
        for free_kb in range(100, 330, 10):
            for p in fs.iterdir():
                subprocess.run(["rm", "-rf", str(p)], check=True)
            (fs / "fill").write_bytes(bytes((1200 - free_kb) * 1024))
            out = fs / "o"
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "retranscope",
                    "analyze",
                    "--pcap",
                    str(pcap),
                    "-o",
                    str(out),
                    "--spill",
                    "-q",
                ],
                capture_output=True,
                text=True,
            )
            lines = r.stderr.strip().splitlines()
            if r.returncode == 0:
                seen["complete"] = seen.get("complete", 0) + 1
                assert sorted(p.name for p in out.iterdir()) == [
                    "flows.parquet",
                    "retransmits.parquet",
                    "summary.json",
                ]
                continue
            assert r.returncode == 1 and len(lines) == 1, (free_kb, r.stderr[-600:])
            assert "No space left on device" in lines[0] and "Traceback" not in r.stderr
            assert not out.exists(), (free_kb, sorted(p.name for p in out.iterdir()))
            step = "spill" if "cannot spill" in lines[0] else "finish"
            assert step == "spill" or "cannot finish the analysis" in lines[0]
            seen[step] = seen.get(step, 0) + 1
    # every step was reached by some room left: refused at the spill, at the shards'
    # rows or the outputs, and complete
    assert seen.keys() == {"spill", "finish", "complete"}, seen


@pytest.mark.parametrize("spilled", ["--spill", "--no-spill"])
def test_an_out_that_is_a_file_is_one_line(tmp_path, spilled):
    from typer.testing import CliRunner

    from retranscope.cli import app

    (tmp_path / "f").write_text("mine")
    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    r = CliRunner().invoke(
        app, ["analyze", "--pcap", str(pcap), "-o", str(tmp_path / "f"), spilled]
    )
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"retranscope: error: --out {tmp_path / 'f'} is a file: give a directory (made if it "
        "does not exist)"
    ]
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.root
@pytest.mark.parametrize("spilled", ["--spill", "--no-spill"])
def test_an_out_on_a_read_only_filesystem_is_one_line(tmp_path, spilled):
    """Root writes anywhere but on a read-only mount: a real one (tmpfs, remounted ro)."""
    import subprocess

    from filesystems import small_fs
    from typer.testing import CliRunner

    from retranscope.cli import app

    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    with small_fs(tmp_path / "fs", "1m") as fs:
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        r = CliRunner().invoke(app, ["analyze", "--pcap", str(pcap), "-o", str(fs / "o"), spilled])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0], r.output[-500:]
    assert "give an --out this user can write to" in lines[0]


def test_the_buckets_follow_the_open_file_limit(tmp_path):
    """The spill keeps up to SPILL_BUCKETS files open: a soft limit below that is raised
    towards the hard one; where the hard one is lower, fewer buckets (a power of two) and
    the same outputs. In a process of its own, whose limits are its own."""
    import subprocess
    import sys

    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    run_analysis(pcap, None, tmp_path / "memory", spill=False)
    code = f"""
import resource
from pathlib import Path
from retranscope.analyze import spill
from retranscope.analyze.run import run_analysis
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 2000))
print(spill._open_files_for(512), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
resource.setrlimit(resource.RLIMIT_NOFILE, (150, 150))
print(spill._open_files_for(512), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
spill.SHARD_PACKETS = 500
run_analysis(Path({str(pcap)!r}), None, Path({str(tmp_path / "spilled")!r}), spill=True)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
    assert r.stdout.split() == ["512", "576", "64", "150"]
    want, got = _outputs(tmp_path / "memory"), _outputs(tmp_path / "spilled")
    assert got["summary.json"] == want["summary.json"]
    for name in ("retransmits.parquet", "flows.parquet"):
        assert got[name].equals(want[name]), name


def test_buckets_follow_the_capture_size(tmp_path, monkeypatch):
    """A power of two from SPILL_BUCKETS_MIN to SPILL_BUCKETS, one per BUCKET_INPUT_BYTES
    of capture; the most for a compressed capture or one of unknown size (a pipe)."""
    import gzip
    from types import SimpleNamespace

    plain = tmp_path / "c.pcap"
    plain.write_bytes((CORPUS / "multi_flow_rtt50" / "capture.pcap").read_bytes())
    packed = tmp_path / "c.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    mib = spill.BUCKET_INPUT_BYTES
    for size, want in [(1, 64), (64 * mib, 64), (65 * mib, 128), (300 * mib, 512), (10**12, 512)]:
        stream = SimpleNamespace(input_bytes=size, paths=[str(plain)])
        assert spill._buckets_for(stream) == want, size
    assert spill._buckets_for(SimpleNamespace(input_bytes=1, paths=[str(packed)])) == 512
    assert spill._buckets_for(SimpleNamespace(input_bytes=None, paths=["-"])) == 512


def test_sack_edges_are_spilled_for_the_rows_that_carry_them(tmp_path):
    """A shard holds the SACK edges of the rows that carry SACK blocks only
    (schemas/packets.SACK_ROWS): read back from buckets of several 4-tuples each, in many
    blocks, reordered into capture order, and with the capture's first packet borrowed,
    here an ACK that carries SACK blocks, they are the edges each row was read with."""
    import tempfile

    from packet_builder import Trace

    from retranscope.schemas.packets import SACK_EDGE_COLUMNS, SACK_ROWS

    tr = Trace()
    for k in range(6):
        c = tr.conn(cport=40000 + k)
        # the capture starts late: each connection's first packet is a SACK-carrying ACK
        c.ack(k * 0.1, 1, sack=((1001, 2001),))
        for i in range(12):
            c.send(1 + k * 0.1 + i, 1 + 1000 * i, 1000)
            blocks = tuple((1 + 1000 * j, 1001 + 1000 * j) for j in range(i + 1, i + 1 + k % 5))
            c.ack(1.5 + k * 0.1 + i, 1 + 1000 * (i // 2), sack=blocks)
    pk = tr.packets()
    spiller = spill._Spiller(tmp_path, 3, "")
    for lo in range(0, len(pk["frame"]), 7):  # chunks of 7 rows: many small blocks
        spiller.add({name: col[lo : lo + 7] for name, col in pk.items()})
    spiller.close()
    assert spiller.anchor is not None and spiller.anchor["sack_n"][0] == 1
    spilled = spill.SpilledCapture(
        None,  # type: ignore[arg-type]
        spiller.buckets,
        spiller.tuples.table(),
        spiller.anchor,
        spiller.anchor_bucket,
        tempfile.TemporaryDirectory(dir=tmp_path),
    )
    used = [i for i, b in enumerate(spilled.buckets) if b.rows]
    assert len(used) >= 2
    borrowed_seen = False
    for shard in [used, *([i] for i in used)]:
        table, borrowed = spilled.load(shard)
        borrowed_seen |= borrowed >= 0
        row_of = table["frame"] - 1  # frames number pk's rows from 1
        for name in ("ts_ns", "seq", "ack", "sack_n", "payload_len"):
            np.testing.assert_array_equal(table[name], pk[name][row_of], err_msg=name)
        rows = table[SACK_ROWS]
        np.testing.assert_array_equal(rows, np.flatnonzero(table["sack_n"] > 0))
        for name in SACK_EDGE_COLUMNS:
            np.testing.assert_array_equal(table[name], pk[name][row_of[rows]], err_msg=name)
    assert borrowed_seen


@pytest.mark.parametrize("source", ["gzip", "pipe"])
def test_compressed_and_piped_captures_are_spilled_by_their_decompressed_size(
    source, tmp_path, monkeypatch
):
    """Whether to spill goes by what the capture decompresses to (COMPRESSED_EXPANSION
    times a compressed file's size, before reading it), and a pipe, whose size is not
    known, is spilled: memory follows neither. The outputs are those in memory."""
    import gzip
    import io
    import sys

    from retranscope.analyze.capture import stream as byte_stream

    pcap = CORPUS / "multi_flow_rtt50" / "capture.pcap"
    data = pcap.read_bytes()
    given = tmp_path / "capture.pcap.gz"
    given.write_bytes(gzip.compress(data, mtime=0))
    stored = given.stat().st_size
    # more than the file as stored, less than it counts for
    monkeypatch.setattr(spill, "SPILL_MIN_BYTES", stored * byte_stream.COMPRESSED_EXPANSION)
    spilled = []
    real = spill.spill_capture
    monkeypatch.setattr(spill, "spill_capture", lambda *a, **k: spilled.append(1) or real(*a, **k))
    source_arg: object = given
    if source == "pipe":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        source_arg = "-"
    run_analysis(source_arg, None, tmp_path / "default")  # type: ignore[arg-type]
    assert spilled == [1]
    if source == "pipe":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    run_analysis(source_arg, None, tmp_path / "memory", spill=False)  # type: ignore[arg-type]
    assert spilled == [1]
    for name in ("retransmits.parquet", "flows.parquet"):
        assert pq.read_table(tmp_path / "default" / name).equals(
            pq.read_table(tmp_path / "memory" / name)
        )
